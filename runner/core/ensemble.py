"""Ensembles: average the softmax outputs of the top runs (or chosen runs), and record the result.

The members must share the test split (same data manifest hash) and the
class list. Their saved test-split probabilities (`predictions.csv`) are
averaged, evaluated with the notebook's metrics, and recorded as a record of
kind `ensemble` listing its members: it is ranked on the leaderboard like any
run, and `runner.core.predict.load_run` loads it (predicting with every member and
averaging). A grid's `ensembles:` are built at the end of its sweep
(`build_grid_ensembles`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence


import numpy as np
import pandas as pd

from runner.errors import ConfigError, RunnerError
from models.hashing import sha256_json
from models.names import DEFAULT_METRIC
from runner.core.execute import prepare_run
from runner.records.groups import by_validation
from runner.records.query import find, parse_metric, rank_groups, read_all
from runner.records import (
    COMPLETED, ENSEMBLE, EXPERIMENTS_DIR, LOGS_DIR, RANKING_METRICS, RUN, RunLoadError, RunRecord, SplitMetrics, build_record,
    write_record, write_text_atomic,
)

if TYPE_CHECKING:
    from runner.grid import GridSpec


def choose_members(runs: Sequence[str], top: Optional[int], logs_dir: Path, metric: str) -> list[tuple[Path, RunRecord]]:
    """The member records: the runs named, or the runs of the `top` configurations by `metric`.

    `top` ranks configurations by the mean of their repeats
    (`runner.records.groups`; a run without repeats is a configuration of
    one) and takes from each its best run on the validation split that shares
    the test split of the first member (repeats with other seeds have other
    splits, and an ensemble averages predictions of the same test images).

    Every member's files are checked as `runner.core.predict.load_run` checks them
    (`runner.core.predict.check_run_files`: its weights file, `trained_weights.h5`
    or `model.keras`, exists and its sha256 matches the record, and the base
    weights file a `trained_weights.h5` records is there, unchanged) and its
    `predictions.csv` must exist, so that the
    ensemble can be averaged now and loaded later.

    Args:
        runs: member run ids / prefixes / record paths; empty to use `top`.
        top: with no `runs`, how many of the best configurations to take
            one run of; runs whose files fail the check are skipped (a
            `UserWarning` names each with its problems) and the group's next
            best, or the next configuration, is taken. `None` takes one run
            of every configuration. Fewer eligible than `top` (but 2 or
            more): a `UserWarning` says how many were taken, and which.
        logs_dir: folder of the records.
        metric: what `top` ranks by, one of `RANKING_METRICS`.

    Returns:
        `(record path, record)` per member, best first for `top`.

    Raises:
        ConfigError: `metric` is unknown; fewer than 2 members (for `top`,
            after skipping, the message names the runs skipped); a named
            member that did not complete, is itself an ensemble, or whose
            files fail the check (the message names the run and each file);
            or members with different test splits or classes.
    """
    ranking = parse_metric(metric, "--metric")
    found = read_all(logs_dir)
    unloadable: dict[str, str] = {}
    if runs:
        members = _find_named_members(runs, found)
    else:
        members = _pick_top_members(found, ranking, top, unloadable)
    if len(members) < 2:
        skipped = f" ({len(unloadable)} skipped: {', '.join(unloadable)})" if unloadable else ""
        raise ConfigError(f"an ensemble needs at least 2 completed runs, got {len(members)}{skipped}")
    _check_members(members, check_files=bool(runs))
    return members


def _find_named_members(runs: Sequence[str], found) -> list[tuple[Path, RunRecord]]:
    """The records of the runs named (each once, in order).

    Raises:
        ConfigError: a reference names no run, or more than one.
    """
    try:
        named = [find(str(ref), found) for ref in runs]
    except RunLoadError as exc:
        raise ConfigError(str(exc)) from exc
    return [(found.path_of(rec), rec) for rec in {rec.run_id: rec for rec in named}.values()]


def _pick_top_members(found, ranking, top: Optional[int], unloadable: dict[str, str]) -> list[tuple[Path, RunRecord]]:
    """The best run of each of the `top` best configurations that fits the first (see `choose_members`).

    Args:
        found: the records of the logs folder.
        ranking: the parsed `--metric`.
        top: configurations to take, or `None` for all.
        unloadable: filled with run id -> the problems of each run skipped
            because its files cannot be loaded.

    Returns:
        `(record path, record)` per member, best first; the `UserWarning`s of
        `choose_members` are issued (pointing at its caller).
    """
    import warnings

    from runner.core.predict import check_run_files

    members: list[tuple[Path, RunRecord]] = []
    other_split: list[str] = []
    for group in rank_groups(found.records, ranking, kinds=(RUN,)):
        if top is not None and len(members) >= top:
            break
        if members and all(_test_split(rec) != _test_split(members[0][1]) for rec in group.runs):
            other_split.append(group.best.run_id)
            continue
        for rec in by_validation(group.runs, ranking):
            if members and _test_split(rec) != _test_split(members[0][1]):
                continue  # another seed's split
            path = found.path_of(rec)
            problems = check_run_files(rec, path, predictions=True)
            if problems:
                unloadable[rec.run_id] = "; ".join(problems)
                continue
            members.append((path, rec))
            break
    if unloadable:
        warnings.warn(f"--top {top}: skipped {len(unloadable)} run(s) whose files cannot be loaded, took the "
                      f"next best instead: " + "; ".join(f"run {run_id}: {problems}"
                                                         for run_id, problems in unloadable.items()),
                      UserWarning, stacklevel=3)
    if other_split:
        warnings.warn(f"--top {top}: skipped {len(other_split)} configuration(s) with no run on the test split "
                      f"of {members[0][1].run_id} (another seed or data): {', '.join(other_split)}",
                      UserWarning, stacklevel=3)
    if top is not None and 2 <= len(members) < top:  # fewer than asked for: say so, never silently
        warnings.warn(f"--top {top}: only {len(members)} configuration(s) have an eligible run (completed, "
                      f"files loadable, on the test split and classes of the best, {members[0][1].run_id}); "
                      f"the ensemble has {len(members)} members: {', '.join(rec.run_id for _, rec in members)}",
                      UserWarning, stacklevel=3)
    return members


def _check_members(members: Sequence[tuple[Path, RunRecord]], check_files: bool) -> None:
    """Refuse members that are not completed notebook runs, or (`check_files`) whose files cannot be loaded,
    or that differ from the first in test split or classes.

    Raises:
        ConfigError: as `choose_members` says.
    """
    from runner.core.predict import check_run_files

    for path, rec in members:
        if rec.status != COMPLETED or rec.kind != RUN:
            raise ConfigError(f"run {rec.run_id}: a member must be a completed notebook run "
                              f"(status {rec.status!r}, kind {rec.kind!r})")
        problems = check_run_files(rec, path, predictions=True) if check_files else []
        if problems:
            raise ConfigError(f"run {rec.run_id}: cannot be an ensemble member, its files cannot be loaded: "
                              f"{'; '.join(problems)}")
    first = members[0][1]
    for _, rec in members[1:]:
        for key in ("manifest_hash", "class_names"):
            mine, theirs = getattr(first.data, key, None), getattr(rec.data, key, None)
            if mine != theirs:
                raise ConfigError(f"runs {first.run_id} and {rec.run_id} have different {key} "
                                  f"({mine!r} vs {theirs!r}): an ensemble needs the same test split and classes")


def _test_split(record: RunRecord) -> tuple:
    """What an ensemble's members must share: the data manifest (the split) and the classes."""
    return (getattr(record.data, "manifest_hash", None), tuple(getattr(record.data, "class_names", None) or ()))


def average_predictions(members: Sequence[tuple[Path, RunRecord]], key: str = "predictions") -> Optional[pd.DataFrame]:
    """Mean of the members' probabilities on one split, read from their saved predictions.

    Args:
        members: `(record path, record)` per member.
        key: `"predictions"` (the test split, `predictions.csv`) or
            `"val_predictions"` (the validation split). Defaults to `"predictions"`.

    Returns:
        Columns `path`, `true_label`, then `prob_<class>` per class (the
        mean over members), rows in the first member's order; `None` for
        `"val_predictions"` when a member has none (runs of schema 1).

    Raises:
        ConfigError: a member's test predictions file is missing, or a
            member's file lists other images.
    """
    first = members[0][1]
    columns = [f"prob_{c}" for c in first.data.class_names]
    frames = []
    for record_path, rec in members:
        path = rec.path_of(key, record_path.parent)
        if path is None or not path.is_file():
            if key != "predictions":
                return None
            raise ConfigError(f"run {rec.run_id}: predictions.csv missing")
        frames.append(pd.read_csv(path).set_index("path"))
    index = frames[0].index
    for (_, rec), frame in zip(members[1:], frames[1:]):
        if set(frame.index) != set(index):
            raise ConfigError(f"run {rec.run_id}: its {key} list other images than {first.run_id}'s")
    mean = np.mean([frame.loc[index, columns].to_numpy() for frame in frames], axis=0)
    return pd.concat([frames[0].loc[index, ["true_label"]].reset_index(),
                      pd.DataFrame(mean, columns=columns)], axis=1)


def build_ensemble(runs: Sequence[str] = (), top: Optional[int] = None, *, logs_dir: str | Path = LOGS_DIR,
                   experiments_dir: str | Path = EXPERIMENTS_DIR, metric: str = DEFAULT_METRIC) -> RunRecord:
    """Average the members' probabilities on the test and validation splits, evaluate, and record an ensemble.

    Writes `experiments/<run_id>/` (`predictions.csv`, `val_predictions.csv`
    when every member has one, `confusion_matrix.png`, `<run_id>.html`) and
    `logs/<run_id>.json` with `kind: ensemble`, `members`, the test
    `metrics` and the `val_metrics` it is ranked by.

    Args:
        runs: member run ids / prefixes / record paths; empty to use `top`.
        top: number of best completed runs by `metric` when `runs` is empty.
        logs_dir: folder of the records. Defaults to `runner.records.LOGS_DIR`.
        experiments_dir: folder of the run folders. Defaults to `runner.records.EXPERIMENTS_DIR`.
        metric: what `top` ranks by. Defaults to `models.names.DEFAULT_METRIC`.

    Returns:
        The ensemble's record.

    Raises:
        ConfigError: see `choose_members` and `average_predictions`.
    """
    from models.evaluate import classification_metrics, predictions_frame, save_confusion_matrix

    start = time.perf_counter()
    logs_dir, experiments_dir = Path(logs_dir).resolve(), Path(experiments_dir).resolve()
    members = choose_members(runs, top, logs_dir, metric)
    first = members[0][1]
    names = first.data.class_names
    evaluated = {}
    for key in ("predictions", "val_predictions"):
        mean = average_predictions(members, key)
        if mean is None:
            continue
        probabilities = mean[[f"prob_{c}" for c in names]].to_numpy()
        labels = mean["true_label"].astype(str).map({str(c): i for i, c in enumerate(names)}).to_numpy()
        evaluated[key] = (mean["path"], probabilities, labels, classification_metrics(labels, probabilities, names))

    member_ids = [rec.run_id for _, rec in members]
    config_hash = sha256_json({"ensemble": sorted(member_ids)})
    folder = prepare_run(config_hash, experiments_dir)
    files = folder.files()
    for key, (paths, probabilities, labels, _) in evaluated.items():
        write_text_atomic(files[key], predictions_frame(paths, probabilities, names, labels).to_csv(index=False))
    metrics = evaluated["predictions"][3]
    val_metrics = evaluated["val_predictions"][3] if "val_predictions" in evaluated else None
    save_confusion_matrix(metrics["confusion_matrix"], names, files["confusion_matrix"])
    write_text_atomic(files["html"], _report(folder.run_id, member_ids, metrics, metric))
    record = build_record(
        run_id=folder.run_id, config_hash=config_hash, status=COMPLETED, kind=ENSEMBLE, members=member_ids,
        started_at=folder.started, params={"members": member_ids, "combine": "mean softmax"}, result=None,
        files={key: files[key] for key in ("html", "predictions", "val_predictions", "confusion_matrix")},
        logs_dir=logs_dir, total_s=time.perf_counter() - start, metrics=SplitMetrics.model_validate(metrics),
        val_metrics=None if val_metrics is None else SplitMetrics.model_validate(val_metrics), data=first.data,
    )
    write_record(record, logs_dir)
    return record


def build_grid_ensembles(spec: "GridSpec") -> list[str]:
    """Build the grid's `ensembles:` (`build_ensemble`), each once per set of members.

    Args:
        spec: the grid (`ensembles`, `metric`, output folders).

    Returns:
        One line per ensemble: built (with its figures), already recorded,
        or why it could not be built (fewer than 2 fitting runs...); a
        problem never fails the sweep.
    """
    lines = []
    for i, entry in enumerate(spec.ensembles):
        where = f"ensembles[{i}]"
        try:
            members = [rec.run_id for _, rec in choose_members(entry.runs, entry.top, spec.logs_dir, spec.metric)]
            existing = {rec.config_hash: rec.run_id for rec in read_all(spec.logs_dir).records if rec.kind == ENSEMBLE}
            digest = sha256_json({"ensemble": sorted(members)})
            if digest in existing:
                lines.append(f"{where}: the ensemble of {', '.join(members)} is recorded already ({existing[digest]})")
                continue
            record = build_ensemble(entry.runs, entry.top, logs_dir=spec.logs_dir,
                                    experiments_dir=spec.experiments_dir, metric=spec.metric)
        except (RunnerError, ValueError) as exc:
            lines.append(f"{where}: not built: {exc}")
            continue
        ranking = parse_metric(spec.metric)
        value = ranking.value(record)
        lines.append(f"{where}: ensemble {record.run_id} of {', '.join(record.members)}: "
                     f"{ranking.column} {value if value is None else round(value, 4)}, "
                     f"test_{ranking.metric} {getattr(record.metrics, ranking.metric):.4f}")
    return lines


def _report(run_id: str, member_ids: Sequence[str], metrics, metric: str) -> str:
    """The ensemble's report page, `experiments/<run_id>/<run_id>.html` (`runner/reports/templates/ensemble.html`).

    Args:
        run_id: the ensemble's run id.
        member_ids: its members, in order.
        metrics: its test-split metrics, a `SplitMetrics` or the mapping
            `models.evaluate.classification_metrics` returns.
        metric: the ranking metric (a `runner.records.query.METRIC_NAMES` name), shown in bold.

    Returns:
        A complete html document; every value (run ids, class names) escaped.
    """
    from runner.reports.templates import render

    scores = metrics if isinstance(metrics, SplitMetrics) else SplitMetrics.model_validate(metrics)
    bold = parse_metric(metric).metric  # the figure's name without its split
    return render("ensemble.html", run_id=run_id, members=list(member_ids), metric=bold,
                  figures=[(name, getattr(scores, name)) for name in RANKING_METRICS],
                  per_class=list(scores.per_class.items()))
