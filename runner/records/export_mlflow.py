"""Export the run records to MLflow: one MLflow run per record, parents linked.

Every record of a logs folder (every status: completed, failed, interrupted,
timeout; both kinds: run and ensemble) becomes an MLflow run named after its
`run_id`, in one MLflow experiment (`export_records`):

- params: the record's `params`, nested mappings flattened with dotted keys
  (`augmentation.flip`), values as text (strings as they are, anything else
  as JSON, like the leaderboard's columns), cut to MLflow's 6000 characters;
- metrics: the test-split metrics (`accuracy`, `weighted_recall`, `macro_f1`,
  ...), `per_class.<class>.<precision|recall|f1|support>`, the timings
  (`train_s`, `eval_s`, `total_s`), `best_epoch`, `epochs_run`,
  `trainable_params` and `total_params`; and the per-epoch history as metric
  steps `history.<name>` (`history.loss`, `history.val_loss`, ...), step =
  the 1-based epoch counted across the phases (head, then fine-tune), the
  numbering of `best_epoch` and of the checkpoints `epoch_<k>.weights.h5`;
- tags: `nbsweep.run_id`, `nbsweep.config_hash`, `nbsweep.status`,
  `nbsweep.kind`, `nbsweep.record_sha256`, `nbsweep.history_phases`
  (e.g. `head:1-5,fine_tune:6-8`), `nbsweep.error` for runs that did not
  complete, `mlflow.source.git.commit`; for warm starts
  `nbsweep.parent_run_id`, `nbsweep.warm_start_checkpoint` and
  `mlflow.parentRunId` = the MLflow run id of the parent (the MLflow UI nests
  the child under it); for ensembles `nbsweep.members` (comma-separated run
  ids) and `nbsweep.member_mlflow_run_ids` (their MLflow run ids, same order);
  for reruns `nbsweep.rerun_of` (the original's run id);
- artifacts: the run's files the record lists (executed notebook, html,
  training curves, confusion matrix, predictions.csv, result.json,
  kernel.log) and the record itself (`<run_id>.json`); not the run's weights
  (`model.keras` / `trained_weights.h5`: they stay in `experiments/`;
  `nbsweep export` writes a standalone model);
- start and end time from the record's `started_at` / `finished_at`; MLflow
  status FINISHED (completed), FAILED (failed) or KILLED (interrupted,
  timeout).

Runs are exported parents first (a warm start after the run it started from,
an ensemble after its members), so a child can point at its parent's MLflow
run id.

Idempotent: a record whose `run_id` is already the `nbsweep.run_id` tag of an
active MLflow run of the experiment is not exported again ("already
present"); only its link tags (`mlflow.parentRunId`, member ids) are
corrected if they point at a run that was since replaced. An MLflow run left
RUNNING by an export that was cut short, or exported from a record whose
bytes have changed since (`nbsweep.record_sha256`), is deleted and exported
anew ("replaced"; MLflow params cannot be overwritten).

The default tracking URI is the local file store `mlruns/` (relative to the
current folder, like the logs folder; git-ignored). MLflow 3 refuses its file
store ("maintenance mode") unless `MLFLOW_ALLOW_FILE_STORE=true`: this module
sets that variable (`os.environ.setdefault`, so an explicit value wins) only
when the tracking URI is a file store. Any other URI MLflow accepts
(`http://...`, `sqlite:///...` with the full `mlflow` package) is used as is.
"""

from __future__ import annotations

import graphlib
import json
import os
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence


from runner.errors import ConfigError
from runner.records.query import read_all
from runner.records import COMPLETED, FAILED, INTERRUPTED, LOGS_DIR, PRUNED, RANKING_METRICS, TIMEOUT, RunRecord, sha256_file

DEFAULT_TRACKING_DIR = "mlruns"
DEFAULT_EXPERIMENT = "nbsweep"
ALLOW_FILE_STORE_ENV = "MLFLOW_ALLOW_FILE_STORE"

TAG_RUN_ID = "nbsweep.run_id"
TAG_RECORD_SHA = "nbsweep.record_sha256"
TAG_PARENT = "mlflow.parentRunId"
TAG_MEMBER_IDS = "nbsweep.member_mlflow_run_ids"

MLFLOW_STATUS = {COMPLETED: "FINISHED", PRUNED: "FINISHED", FAILED: "FAILED", INTERRUPTED: "KILLED", TIMEOUT: "KILLED"}
"""Record status -> MLflow run status (an unknown status exports as FAILED)."""

ARTIFACT_KEYS = ("notebook", "html", "training_curves", "confusion_matrix", "predictions", "result", "kernel_log")
"""The `RunRecord.paths` entries logged as artifacts (not `model` / `trained_weights`: the weights stay in `experiments/`)."""

from models.names import PHASES as PHASE_ORDER

# MLflow's limits (mlflow.utils.validation), repeated so this module imports without mlflow.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
_TRUNCATED = "...[truncated]"


@dataclass
class ExportSummary:
    """What `export_records` did.

    Attributes:
        tracking_uri: the tracking URI used.
        experiment_id: the MLflow experiment the runs are in.
        exported: run ids exported now (new or replaced), in export order.
        replaced: those of `exported` that replaced an earlier, incomplete or
            outdated MLflow run.
        present: run ids already in MLflow, left as they were.
        relinked: run ids (of `present`) whose link tags were corrected.
        unreadable: record file name -> reason, skipped.
        failed: run id -> reason, for runs whose export raised (partly
            exported runs stay RUNNING and are replaced by the next export).
        warnings: notes, e.g. artifacts a record lists that do not exist.
        mlflow_ids: run id -> MLflow run id, for every exported or present run.
    """

    tracking_uri: str
    experiment_id: str
    exported: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    relinked: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    mlflow_ids: dict[str, str] = field(default_factory=dict)

    def counts_line(self) -> str:
        """One line: `exported N (R replaced), already present M, unreadable K[, failed F]`."""
        text = f"exported {len(self.exported)}"
        if self.replaced:
            text += f" ({len(self.replaced)} replaced)"
        text += f", already present {len(self.present)}, unreadable {len(self.unreadable)}"
        if self.failed:
            text += f", failed {len(self.failed)}"
        return text


def resolve_tracking_uri(uri: Optional[str] = None) -> tuple[str, Optional[Path]]:
    """The tracking URI to use, and the folder of its file store if it is one.

    A plain path (or `None`: `mlruns` in the current folder) becomes an
    absolute `file://` URI; a `file:` URI is kept; any other URI is returned
    unchanged (MLflow decides whether it supports it).

    Args:
        uri: a path, a `file:` URI, another tracking URI, or `None`.

    Returns:
        `(tracking_uri, store_folder)`; `store_folder` is `None` for stores
        other than the file store.

    Raises:
        ConfigError: `uri` is empty, or a file store path that exists and is
            not a folder.
    """
    if uri is not None and not uri.strip():
        raise ConfigError("--tracking-uri: got an empty string, expected a folder or a tracking URI")
    uri = DEFAULT_TRACKING_DIR if uri is None else uri.strip()
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme == "file":
        folder = Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))
    elif scheme == "" or (len(scheme) == 1 and os.name == "nt"):  # a path (or C:\... on Windows)
        folder = Path(uri).expanduser().resolve()
        uri = folder.as_uri()
    else:
        return uri, None
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--tracking-uri: {folder} exists and is not a folder; expected an MLflow file store folder")
    return uri, folder


def _client(tracking_uri: str, file_store: bool):
    """An `MlflowClient` for `tracking_uri`; allows the file store when it is one."""
    if file_store:
        # MLflow 3 raises on its file store ("maintenance mode") unless this is set;
        # setdefault: a value the user chose (e.g. "false") is respected.
        os.environ.setdefault(ALLOW_FILE_STORE_ENV, "true")
    try:
        from mlflow import MlflowClient
    except ImportError as exc:
        raise ConfigError(f"mlflow is not installed ({exc}); pip install mlflow-skinny==3.17.2") from exc
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient(tracking_uri=tracking_uri)
    except (MlflowException, OSError) as exc:
        raise ConfigError(f"--tracking-uri {tracking_uri}: cannot use the tracking store: {exc}") from exc


def _key(name: str) -> str:
    """An MLflow param or metric key: characters MLflow refuses become `_`, at most 250 characters."""
    key = re.sub(r"[^\w.\- ]", "_", str(name))
    if not key or key.startswith("."):  # "." and ".." would resolve to other paths in the file store
        key = "_" + key
    return key[:MAX_KEY]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(_TRUNCATED)] + _TRUNCATED


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The record's params as MLflow params: `{dotted key: text}`.

    Nested mappings are flattened (`{"augmentation": {"flip": "horizontal"}}`
    -> `{"augmentation.flip": "horizontal"}`; an empty mapping stays one
    param `"{}"`); strings are kept, other values become JSON (`null`,
    `[256]`, `0.001`); keys are made MLflow-safe and values cut to 6000
    characters (ending in `...[truncated]`).

    Args:
        params: a record's `params` (or any JSON-like mapping).
        prefix: key prefix, used for nested levels. Defaults to `""`.

    Returns:
        The flat mapping, in the order of `params`.
    """
    flat: dict[str, str] = {}
    for name, value in params.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{key}."))
        else:
            flat[_key(key)] = _cut(_text(value), MAX_PARAM_VALUE)
    return flat


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def final_metrics(record: RunRecord) -> dict[str, float]:
    """The record's numbers as MLflow metrics (one value each).

    Args:
        record: a run record.

    Returns:
        The test-split metrics under their names (accuracy, weighted/macro
        precision/recall/F1) and `per_class.<class>.<name>`, the validation
        split's as `val_<name>`, the `timings` that are set, `best_epoch`,
        `epochs_run` (the record's) and the model's `trainable_params` /
        `total_params` when known.
    """
    out: dict[str, float] = {}
    for prefix, metrics in (("", record.metrics), ("val_", record.val_metrics)):
        if metrics is None:
            continue
        for name in RANKING_METRICS:
            out[_key(prefix + name)] = float(getattr(metrics, name))
        for cls, report in metrics.per_class.items():
            for name, value in report.items():
                out[_key(f"{prefix}per_class.{cls}.{name}")] = float(value)
    for name, value in record.timings.model_dump().items():
        if (number := _number(value)) is not None:
            out[_key(name)] = number
    if record.best_epoch is not None:
        out["best_epoch"] = float(record.best_epoch)
    if record.epochs_run is not None:
        out["epochs_run"] = float(record.epochs_run)
    for name in ("trainable_params", "total_params"):
        if record.model is not None and (number := _number(getattr(record.model, name))) is not None:
            out[name] = number
    return out


def _phase_length(phase: Mapping[str, Sequence[float]]) -> int:
    return max((len(v) for v in phase.values()), default=0)


def _phases(record: RunRecord) -> list[str]:
    known = [p for p in PHASE_ORDER if p in record.history]
    return known + [p for p in record.history if p not in known]


def history_steps(record: RunRecord) -> tuple[list[tuple[str, float, int]], str]:
    """The per-epoch history as metric steps, and the phase ranges.

    Args:
        record: a run record; `history` is `{phase: {keras metric: [one float per epoch]}}`.

    Returns:
        `([(f"history.{name}", value, step), ...], phases)`: step is the
        1-based epoch across phases (head first, then fine-tune, then any
        other phase in record order), as `best_epoch`; `phases` is e.g.
        `"head:1-5,fine_tune:6-8"` (`""` without history).
    """
    steps, ranges, offset = [], [], 0
    for phase in _phases(record):
        series = record.history[phase]
        length = _phase_length(series)
        if not length:
            continue
        for name, values in series.items():
            for i, value in enumerate(values):
                if (number := _number(value)) is not None:
                    steps.append((_key(f"history.{name}"), number, offset + i + 1))
        ranges.append(f"{phase}:{offset + 1}-{offset + length}")
        offset += length
    return steps, ",".join(ranges)


def _millis(iso: str) -> Optional[int]:
    try:
        return int(datetime.fromisoformat(iso).timestamp() * 1000)
    except (TypeError, ValueError):
        return None


def record_tags(record: RunRecord, record_sha256: str, phases: str = "") -> dict[str, str]:
    """The tags of a record's MLflow run, except the links to other MLflow runs (see `link_tags`).

    Args:
        record: a run record.
        record_sha256: sha256 hex of the record file, kept to notice a changed record.
        phases: the phase ranges from `history_steps`. Defaults to `""` (no tag).

    Returns:
        `{tag: value}`, values cut to MLflow's 8000 characters.
    """
    tags = {
        TAG_RUN_ID: record.run_id,
        "nbsweep.config_hash": record.config_hash,
        "nbsweep.status": record.status,
        "nbsweep.kind": record.kind,
        TAG_RECORD_SHA: record_sha256,
        "nbsweep.started_at": record.started_at,
        "nbsweep.finished_at": record.finished_at,
    }
    if phases:
        tags["nbsweep.history_phases"] = phases
    if record.error:
        tags["nbsweep.error"] = f"{record.error.ename}: {record.error.evalue}"
    if record.warnings:
        tags["nbsweep.warnings"] = "\n".join(record.warnings)
    if record.parent_run_id:
        tags["nbsweep.parent_run_id"] = record.parent_run_id
    if record.warm_start:
        tags["nbsweep.warm_start_checkpoint"] = _text(record.warm_start.checkpoint)
    if record.members:
        tags["nbsweep.members"] = ",".join(record.members)
    if record.rerun_of:
        tags["nbsweep.rerun_of"] = record.rerun_of
    commit = record.environment.get("git_commit")
    if commit:
        tags["mlflow.source.git.commit"] = str(commit)
    return {k: _cut(str(v), MAX_TAG_VALUE) for k, v in tags.items()}


def link_tags(record: RunRecord, mlflow_ids: Mapping[str, str]) -> dict[str, str]:
    """The tags that point at other MLflow runs: the parent's and the members' run ids.

    Args:
        record: a run record.
        mlflow_ids: run id -> MLflow run id of the runs exported so far.

    Returns:
        `{"mlflow.parentRunId": ...}` for a warm start whose parent is in
        MLflow, `{"nbsweep.member_mlflow_run_ids": "id,id,..."}` for an
        ensemble (`""` for a member not in MLflow); `{}` otherwise.
    """
    tags = {}
    if record.parent_run_id and record.parent_run_id in mlflow_ids:
        tags[TAG_PARENT] = mlflow_ids[record.parent_run_id]
    if record.members:
        tags[TAG_MEMBER_IDS] = _cut(",".join(mlflow_ids.get(m, "") for m in record.members), MAX_TAG_VALUE)
    return tags


def export_order(records: Sequence[RunRecord]) -> list[RunRecord]:
    """`records` ordered so that a run comes after its parent and an ensemble after its members.

    A topological order (`graphlib.TopologicalSorter`), taken in rounds: each
    round is every record whose parent and members are all exported, in
    run-id order. A cycle (only possible in hand-edited records) is broken at
    one of its links, so every record is still exported once.

    Args:
        records: run records (dependencies outside `records` are ignored).

    Returns:
        The same records; among runs that are ready, run-id order.
    """
    by_id = {r.run_id: r for r in records}
    deps = {r.run_id: {d for d in [r.parent_run_id, *r.members] if d in by_id and d != r.run_id}
            for r in records}
    while True:
        sorter = graphlib.TopologicalSorter(deps)
        try:
            sorter.prepare()
        except graphlib.CycleError as exc:
            cycle = exc.args[1]  # each node is a dependency of the next one
            deps[cycle[1]].discard(cycle[0])
            continue
        break
    order: list[RunRecord] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        order.extend(by_id[rid] for rid in ready)
        sorter.done(*ready)
    return order


def _batches(params: dict[str, str], tags: dict[str, str], metrics: list) -> Iterator[tuple[list, list, list]]:
    """Split into `log_batch` calls within MLflow's limits (100 params+tags, 1000 entities)."""
    from mlflow.entities import Param, RunTag

    params_l = [Param(k, v) for k, v in params.items()]
    tags_l = [RunTag(k, v) for k, v in tags.items()]
    while params_l or tags_l or metrics:
        p, params_l = params_l[:MAX_PARAMS_TAGS_PER_BATCH], params_l[MAX_PARAMS_TAGS_PER_BATCH:]
        t, tags_l = tags_l[:MAX_PARAMS_TAGS_PER_BATCH - len(p)], tags_l[MAX_PARAMS_TAGS_PER_BATCH - len(p):]
        room = MAX_ENTITIES_PER_BATCH - len(p) - len(t)
        m, metrics = metrics[:room], metrics[room:]
        yield p, t, m


def _existing_runs(client, experiment_id: str) -> dict[str, Any]:
    """Active MLflow runs of the experiment carrying `nbsweep.run_id`, by that run id (the newest wins)."""
    from mlflow.entities import ViewType

    found: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string="", run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=1000, order_by=["attributes.start_time ASC"], page_token=token)
        for run in page:
            rid = run.data.tags.get(TAG_RUN_ID)
            if rid:
                found[rid] = run
        token = page.token
        if not token:
            return found


def _experiment(client, name: str, tracking_uri: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return client.create_experiment(name)
    except (MlflowException, OSError) as exc:
        raise ConfigError(f"--tracking-uri {tracking_uri}: cannot use the tracking store: {exc}") from exc
    if experiment.lifecycle_stage != "active":
        raise ConfigError(f"--experiment-name: experiment {name!r} is deleted in {tracking_uri}; "
                          f"restore it (MlflowClient().restore_experiment({experiment.experiment_id!r})) "
                          f"or choose another name")
    return experiment.experiment_id


def _export_one(client, experiment_id: str, record: RunRecord, record_path: Path, record_sha: str,
                mlflow_ids: Mapping[str, str], warnings: list[str]) -> str:
    """Create the MLflow run of one record; returns its MLflow run id."""
    steps, phases = history_steps(record)
    tags = record_tags(record, record_sha, phases)
    start, end = _millis(record.started_at), _millis(record.finished_at)
    # The run carries its nbsweep.run_id from creation and stays RUNNING until everything is
    # logged: a run found RUNNING later was cut short and gets replaced.
    run = client.create_run(experiment_id, start_time=start, run_name=record.run_id,
                            tags={TAG_RUN_ID: record.run_id})
    mlflow_id = run.info.run_id

    from mlflow.entities import Metric

    stamp = end or start or 0
    metrics = [Metric(k, v, stamp, 0) for k, v in final_metrics(record).items()]
    metrics += [Metric(k, v, start or stamp, step) for k, v, step in steps]
    for params_b, tags_b, metrics_b in _batches(flatten_params(record.params),
                                                {**tags, **link_tags(record, mlflow_ids)}, metrics):
        client.log_batch(mlflow_id, metrics=metrics_b, params=params_b, tags=tags_b)
    for key in ARTIFACT_KEYS:
        rel = record.paths.get(key)
        if not rel:
            continue
        path = (record_path.parent / rel).resolve()
        if path.is_file():
            client.log_artifact(mlflow_id, str(path))
        else:
            warnings.append(f"{record.run_id}: {key} {path} does not exist; not logged")
    client.log_artifact(mlflow_id, str(record_path))
    client.set_terminated(mlflow_id, MLFLOW_STATUS.get(record.status, "FAILED"), end_time=end)
    return mlflow_id


def export_records(logs_dir: str | os.PathLike = LOGS_DIR, tracking_uri: Optional[str] = None,
                   experiment_name: str = DEFAULT_EXPERIMENT) -> ExportSummary:
    """Log every run record of `logs_dir` as an MLflow run (idempotent; see the module docstring).

    Args:
        logs_dir: folder of the JSON records. Defaults to `runner.records.LOGS_DIR`.
        tracking_uri: a folder (file store), a `file:` URI or another MLflow
            tracking URI. Defaults to `None`: the file store `mlruns` in the
            current folder. For a file store, `MLFLOW_ALLOW_FILE_STORE` is
            set to `true` in `os.environ` unless already set.
        experiment_name: the MLflow experiment, created if missing. Defaults
            to `"nbsweep"`.

    Returns:
        An `ExportSummary`. A record that cannot be read is listed in
        `unreadable`, a run whose export raised in `failed`; the others are
        exported all the same.

    Raises:
        ConfigError: `logs_dir` is not a folder, `experiment_name` is empty,
            mlflow is not installed, or the tracking store cannot be used
            (unreachable, unsupported scheme, not writable, the experiment is
            deleted).
    """
    from_dir = Path(logs_dir)
    if not from_dir.is_dir():
        raise ConfigError(f"--logs-dir: {from_dir} is not a folder of run records")
    if not experiment_name or not experiment_name.strip():
        raise ConfigError("--experiment-name: got an empty name")
    uri, store_folder = resolve_tracking_uri(tracking_uri)
    client = _client(uri, store_folder is not None)

    from mlflow.exceptions import MlflowException

    try:
        experiment_id = _experiment(client, experiment_name, uri)
        existing = _existing_runs(client, experiment_id)
    except MlflowException as exc:
        raise ConfigError(f"--tracking-uri {uri}: cannot use the tracking store: {exc}") from exc
    summary = ExportSummary(uri, experiment_id)
    found = read_all(from_dir)
    records, summary.unreadable = [(found.path_of(rec), rec) for rec in found.records], found.unreadable
    mlflow_ids = summary.mlflow_ids
    mlflow_ids.update({rid: run.info.run_id for rid, run in existing.items()})
    paths = {r.run_id: p for p, r in records}
    for record in export_order([r for _, r in records]):
        rid = record.run_id
        try:
            sha = sha256_file(paths[rid])
            old = existing.get(rid)
            if old is not None and old.info.status != "RUNNING" and old.data.tags.get(TAG_RECORD_SHA) == sha:
                wanted = link_tags(record, mlflow_ids)
                stale = {k: v for k, v in wanted.items() if old.data.tags.get(k) != v}
                for k, v in stale.items():
                    client.set_tag(old.info.run_id, k, v)
                if stale:
                    summary.relinked.append(rid)
                summary.present.append(rid)
                continue
            if old is not None:
                client.delete_run(old.info.run_id)
                mlflow_ids.pop(rid, None)
                summary.replaced.append(rid)
            mlflow_ids[rid] = _export_one(client, experiment_id, record, paths[rid], sha, mlflow_ids,
                                          summary.warnings)
            summary.exported.append(rid)
        except (MlflowException, OSError) as exc:
            summary.failed[rid] = f"{type(exc).__name__}: {exc}"
    return summary
