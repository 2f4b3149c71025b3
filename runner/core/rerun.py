"""Rerun a recorded run: the same parameters again, as a new run linked to the original.

`plan_rerun` finds the record, rebuilds its run with `runner.grid.RunBuilder` (the
notebook's parameters checked, `config_hash` from `runner.grid.Fingerprinter`) and
names what changed since the original ran (`changes_since`): the notebook's code,
each changed file of `models/` (and any other project file its kernel imports), the
versions of the packages the record lists, the data manifest (the split's files,
listed afresh) and the weights files. `execute_rerun` then executes it with
`runner.core.execute.execute_run`, always (a rerun is never skipped as done), with
`rerun_of` in its record; `compare_outcomes` gives the difference of every
validation and test metric and the largest absolute difference of the predicted
probabilities on the test split. The command line around them (`nbsweep rerun`) is in
`runner.cli`.

A warm-started run is rerun from the same parent's weights: its `warm_start`
(`best`, a name or a prefix) is pinned to the parent the original resolved.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from models.hashing import sha256_file
from models.names import DEFAULT_METRIC
from runner.errors import ConfigError
from runner.records import EXPERIMENTS_DIR, LOGS_DIR, RANKING_METRICS, RUN, RunLoadError, RunRecord, package_version
from runner.records.query import find_path, parse_metric

UNKNOWN_CODE = ("unknown: the original record has no code hashes (it was recorded before they were), "
                "so edits to the notebook or to models/ cannot be named")


@dataclass
class RerunPlan:
    """A recorded run, ready to execute again.

    Attributes:
        original: the original's record.
        logs_dir: its folder.
        notebook: the notebook the rerun executes.
        run: the rerun's `runner.grid.RunSpec` (parameters as recorded, a
            warm start pinned to the original's parent).
        same_config_hash: whether the original's parameters hash to its
            recorded `config_hash` today (nothing that decides the result changed).
        changes: one line per thing that changed since the original ran.
        unknown: what could not be compared (records older than the code hashes...).
        notes: other things worth saying (a warm start pinned, a new notebook parameter).
    """

    original: RunRecord
    logs_dir: Path
    notebook: Path
    run: Any
    same_config_hash: bool
    changes: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _notebook_of(original: RunRecord, notebook: Optional[Path], default: Optional[Path]) -> tuple[Path, list[str]]:
    """The notebook to rerun: `notebook` if given, else the one the record names, else `default`."""
    from runner.grid import DEFAULT_NOTEBOOK

    if notebook is not None:
        return Path(notebook).resolve(), []
    if original.code is not None:
        recorded = Path(original.code.notebook)
        if not recorded.is_file():
            raise ConfigError(f"run {original.run_id} ran the notebook {recorded}, which no longer exists; "
                              f"give the notebook to rerun with --notebook")
        return recorded, []
    default = Path(default or DEFAULT_NOTEBOOK).resolve()
    return default, [f"the record does not name its notebook (recorded before notebooks were): "
                     f"running {default} (--notebook chooses another)"]


def changes_since(original: RunRecord, logs_dir: Path, notebook: Path) -> tuple[list[str], list[str]]:
    """What changed since `original` ran: code, packages, data manifest, weights.

    Args:
        original: the original's record.
        logs_dir: its folder (a warm start's weights path is relative to it).
        notebook: the notebook the rerun executes.

    Returns:
        `(changes, unknown)`: one line per change (`"models/heads.py: code changed"`),
        and one per part that cannot be compared (`"models/ code: unknown: ..."`).
    """
    from runner.grid import code_hashes

    changes: list[str] = []
    unknown: list[str] = []
    now = code_hashes(notebook)
    before = original.code
    if before is None:
        unknown.append(f"notebook and models/ code: {UNKNOWN_CODE}")
    else:
        if Path(before.notebook) != Path(now["notebook"]):
            changes.append(f"notebook: the original ran {before.notebook}, this rerun runs {now['notebook']}")
        if before.notebook_sha256 != now["notebook_sha256"]:
            changes.append(f"{now['notebook']}: notebook code changed")
        for rel in sorted(set(before.files) | set(now["files"])):
            old, new = before.files.get(rel), now["files"].get(rel)
            if old == new:
                continue
            what = "file added (imported by the kernel now)" if old is None else (
                "file removed (or no longer imported)" if new is None else "code changed")
            changes.append(f"{rel}: {what}")

    packages = original.environment.get("packages") if isinstance(original.environment, dict) else None
    if not packages:
        unknown.append("package versions: unknown: the original record lists none")
    else:
        for name, version in sorted(packages.items()):
            current = package_version(name)
            if current != version:
                changes.append(f"package {name}: {version or 'not installed'} -> {current or 'not installed'}")

    changes += _data_change(original, unknown)
    changes += _weights_changes(original, logs_dir)
    return changes, unknown


def _data_change(original: RunRecord, unknown: list[str]) -> list[str]:
    """The data manifest listed afresh (`models.load_data`: the same split of the same files?)."""
    if "data_dir" not in original.params:
        return []  # a notebook without a data_dir parameter: nothing to list
    if original.data is None:
        unknown.append("data manifest: unknown: the original recorded no data (it failed before listing it)")
        return []
    from models import load_data
    from models.errors import ModelConfigError
    from models.spec import experiment_spec

    try:
        spec = experiment_spec(original.params)
        with warnings.catch_warnings():  # skipped files are the record's business, not a rerun's
            warnings.simplefilter("ignore")
            manifest = load_data(spec).manifest_hash
    except (ModelConfigError, ValueError, OSError) as exc:
        return [f"data {original.params['data_dir']}: cannot be listed now ({exc})"]
    if manifest != original.data.manifest_hash:
        return [f"data {original.params['data_dir']}: the split's manifest changed (files added, removed or "
                f"resized: {original.data.manifest_hash[:12]} -> {manifest[:12]})"]
    return []


def _file_change(path: Path, recorded_sha: str, what: str) -> list[str]:
    if not path.is_file():
        return [f"{what} {path}: missing now"]
    if sha256_file(path) != recorded_sha:
        return [f"{what} {path}: content changed (sha256 differs from the record's)"]
    return []


def _weights_changes(original: RunRecord, logs_dir: Path) -> list[str]:
    """The base weights file and a warm start's weights, hashed now and compared with the record."""
    out: list[str] = []
    model = original.model
    if model is not None and model.weights_path and model.weights_sha256:
        out += _file_change(Path(model.weights_path), model.weights_sha256, "weights file")
    warm = original.warm_start
    if warm is not None:
        out += _file_change((logs_dir / warm.weights_path).resolve(), warm.weights_sha256,
                            f"warm-start weights of {warm.parent_run_id}")
    return out


def plan_rerun(ref: str, logs_dir: str | Path = LOGS_DIR, notebook: Optional[Path] = None,
               default_notebook: Optional[Path] = None) -> RerunPlan:
    """Find the run `ref` names and prepare its rerun: the run spec and what changed since.

    Args:
        ref: a run id, a unique prefix, a run name, `best`, or a record path.
        logs_dir: folder of the records. Defaults to `runner.records.LOGS_DIR`.
        notebook: the notebook to execute. Defaults to the one the record names.
        default_notebook: the notebook for a record that names none (older
            records). Defaults to the project's base notebook.

    Returns:
        The `RerunPlan`.

    Raises:
        ConfigError: unknown run, an ensemble, a notebook that no longer has
            one of the recorded parameters (each named), or a notebook that
            no longer exists.
    """
    from runner.grid import GridSpec, RunBuilder

    try:
        record_path, original = find_path(ref, logs_dir, kinds=(RUN,))
    except RunLoadError as exc:
        raise ConfigError(str(exc)) from exc
    if original.kind != RUN:
        raise ConfigError(f"run {original.run_id} is an {original.kind}, not a notebook run: "
                          f"build it again with nbsweep ensemble {' '.join(original.members)}")
    logs = record_path.parent
    path, notes = _notebook_of(original, notebook, default_notebook)
    builder = RunBuilder(GridSpec(notebook=path), f"rerun of {original.run_id}")
    where = f"the record of {original.run_id}"
    same, errors = builder.build(where, dict(original.params))
    if same is None:
        raise ConfigError("\n".join(errors) + f"\nthe notebook {path} no longer takes the recorded parameters: "
                          f"the run cannot be repeated exactly")
    params = dict(original.params)
    if original.parent_run_id and params.get("warm_start") != original.parent_run_id:
        notes.append(f"warm_start {params.get('warm_start')!r} pinned to the original's parent "
                     f"{original.parent_run_id}")
        params["warm_start"] = original.parent_run_id
    run, _ = builder.build(where, params)
    new = sorted(set(run.params) - set(original.params))
    notes += [f"notebook parameter {name} is new since the original: its default {run.params[name]!r} is used"
              for name in new]
    if original.params.get("deterministic") is False:
        notes.append("the original ran with deterministic: false, so its figures are not expected to repeat exactly")
    changes, unknown = changes_since(original, logs, path)
    return RerunPlan(original=original, logs_dir=logs, notebook=path, run=run,
                     same_config_hash=same.config_hash == original.config_hash,
                     changes=changes, unknown=unknown, notes=notes)


@dataclass(frozen=True)
class MetricDelta:
    """One figure of the original and of its rerun: `column` like `val_accuracy`; `None` where absent."""

    column: str
    original: Optional[float]
    rerun: Optional[float]

    @property
    def difference(self) -> Optional[float]:
        """`rerun - original`, or `None` when either is absent."""
        return None if self.original is None or self.rerun is None else self.rerun - self.original

    @property
    def same(self) -> bool:
        """Exactly equal (both absent counts as equal)."""
        return self.original == self.rerun


@dataclass(frozen=True)
class RerunOutcome:
    """How far a rerun's figures moved from the original's.

    Attributes:
        deltas: every validation and test metric (`RANKING_METRICS`).
        max_abs_prob_diff: the largest `|p_rerun - p_original|` over the test
            split's images and classes (`predictions.csv`), or `None` when
            they cannot be compared.
        prob_note: what was compared, or why nothing was.
        probabilities: `"compared"`, `"absent"` (neither run saved any) or
            `"not comparable"` (one run has none, or other images or classes).
        same_status: both runs ended with the same status.
    """

    deltas: list[MetricDelta]
    max_abs_prob_diff: Optional[float]
    prob_note: str
    probabilities: str
    same_status: bool

    @property
    def identical(self) -> bool:
        """Same status, every figure equal, and the same probabilities (0.0 apart, or absent from both)."""
        probs_same = self.max_abs_prob_diff == 0.0 if self.probabilities == "compared" else self.probabilities == "absent"
        return self.same_status and all(d.same for d in self.deltas) and probs_same


def _probability_difference(original: RunRecord, rerun: RunRecord, logs_dir: Path
                            ) -> tuple[Optional[float], str, str]:
    import numpy as np

    from runner.reports.stats import read_predictions

    paths = [rec.path_of("predictions", logs_dir) for rec in (original, rerun)]
    present = [p is not None and p.is_file() for p in paths]
    if not any(present):
        return None, "neither run saved test-split predictions (predictions.csv)", "absent"
    if not all(present):
        missing = original.run_id if not present[0] else rerun.run_id
        return None, f"run {missing} saved no test-split predictions (predictions.csv)", "not comparable"
    a, b = (read_predictions(rec, logs_dir) for rec in (original, rerun))  # the one reader of predictions.csv
    columns = [c for c in a.columns if c.startswith("prob_")]
    if set(a.index) != set(b.index) or columns != [c for c in b.columns if c.startswith("prob_")]:
        return None, "the two predictions.csv list other images or classes", "not comparable"
    diff = float(np.max(np.abs(a[columns].to_numpy(float) - b.loc[a.index, columns].to_numpy(float)))) \
        if len(a) else 0.0
    return diff, f"over {len(a)} test images x {len(columns)} classes", "compared"


def compare_outcomes(original: RunRecord, rerun: RunRecord, logs_dir: str | Path) -> RerunOutcome:
    """The difference of every validation and test metric, and of the test split's probabilities.

    Args:
        original, rerun: the two records.
        logs_dir: the folder of both.

    Returns:
        The `RerunOutcome`.
    """
    deltas = []
    for split, attribute in (("val", "val_metrics"), ("test", "metrics")):
        a, b = getattr(original, attribute), getattr(rerun, attribute)
        deltas += [MetricDelta(f"{split}_{m}", None if a is None else getattr(a, m), None if b is None else getattr(b, m))
                   for m in RANKING_METRICS]
    diff, note, state = _probability_difference(original, rerun, Path(logs_dir))
    return RerunOutcome(deltas=deltas, max_abs_prob_diff=diff, prob_note=note, probabilities=state,
                        same_status=original.status == rerun.status)


def execute_rerun(plan: RerunPlan, experiments_dir: Optional[Path] = None, *, verbose: bool = False,
                  timeout_s: Optional[float] = None, cell_timeout_s: Optional[float] = None,
                  metric: str = DEFAULT_METRIC, should_stop=None) -> RunRecord:
    """Execute the plan's run (never skipped) with `runner.core.execute.execute_run`; its record has `rerun_of`.

    Args:
        plan: from `plan_rerun`.
        experiments_dir: parent of the new run folder. Defaults to the
            original's (the parent of its run folder), else `experiments`.
        verbose, timeout_s, cell_timeout_s: as for a sweep.
        metric: what a warm start's `best` would rank by (a rerun pins it). Defaults to `models.names.DEFAULT_METRIC`.
        should_stop: polled while the notebook runs; true stops it (recorded interrupted).

    Returns:
        The rerun's record (written to the original's logs folder).
    """
    from runner.core.execute import execute_run
    from runner.core.warm_start import warm_start_for

    if experiments_dir is None:
        folder = plan.original.path_of("notebook", plan.logs_dir)
        experiments_dir = folder.parent.parent if folder is not None else EXPERIMENTS_DIR
    warm_start, refusal = warm_start_for(plan.run.params, plan.logs_dir, ranking=parse_metric(metric))
    return execute_run(plan.run, plan.notebook, Path(experiments_dir), plan.logs_dir, warm_start=warm_start,
                       refusal=refusal, verbose=verbose, timeout_s=timeout_s, cell_timeout_s=cell_timeout_s,
                       should_stop=should_stop, rerun_of=plan.original.run_id)


def plan_text(plan: RerunPlan) -> str:
    """What the command prints before it runs: the original, what changed since, what is unknown."""
    lines = [f"rerun of {plan.original.run_id} ({plan.original.status}), notebook {plan.notebook}"]
    lines += [f"note: {note}" for note in plan.notes]
    if plan.changes:
        lines.append(f"changed since the original ran ({len(plan.changes)}):")
        lines += [f"  - {change}" for change in plan.changes]
    else:
        lines.append("nothing changed since the original ran that can be checked (notebook code, models/ code, "
                     "package versions, data manifest, weights)")
    lines += [f"  ? {what}" for what in plan.unknown]
    lines.append("config_hash: " + ("the same as the original's" if plan.same_config_hash else
                                    "differs from the original's (something that decides the result changed)"))
    return "\n".join(lines)


def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.6f}"


def outcome_text(original: RunRecord, rerun: RunRecord, outcome: RerunOutcome) -> str:
    """What the command prints after the run: each figure, original and rerun, and their difference."""
    lines = [f"rerun {rerun.run_id}: {rerun.status}" + (f" ({rerun.error.ename}: {rerun.error.evalue[:200]})"
                                                         if rerun.error else "")]
    width = max(len(d.column) for d in outcome.deltas)
    lines.append(f"{'metric':<{width}}  {'original':>10}  {'rerun':>10}  {'difference':>11}")
    for d in outcome.deltas:
        diff = d.difference
        lines.append(f"{d.column:<{width}}  {_number(d.original):>10}  {_number(d.rerun):>10}  "
                     f"{'-' if diff is None else '0' if diff == 0 else format(diff, '+.6g'):>11}")
    if outcome.max_abs_prob_diff is not None:
        lines.append(f"test predictions: max |probability difference| = {outcome.max_abs_prob_diff:.6g} "
                     f"({outcome.prob_note})")
    else:
        lines.append(f"test predictions: not compared: {outcome.prob_note}")
    if not outcome.same_status:
        lines.append(f"status: {original.status} -> {rerun.status}")
    lines.append("identical: " + ("yes" if outcome.identical else "no"))
    return "\n".join(lines)
