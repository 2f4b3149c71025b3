"""Run records: the JSON file `logs/<run_id>.json` that describes one run.

Two files carry a run's results, each a pydantic model (the contract between
the notebook and the runner):

- `experiments/<run_id>/result.json`, a `NotebookResult`, written by the
  notebook at its end with `write_result` (what only the kernel knows: data,
  model, training, evaluation on the validation and test splits, warm start);
- `logs/<run_id>.json`, the `RunRecord`, made by the pure `build_record` from
  it (or from an ensemble's members) and written by `write_record` after the
  notebook has run or failed (params, status, error, timings, environment,
  paths). A run that failed has a record too.

Reading, finding and ranking records: `runner.query`.

Both are written atomically (temporary file in the same folder, fsync, then
`os.replace`), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from datetime import datetime, timezone
from typing import Any, Literal, Optional, Sequence, Union, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from models.hashing import sha256_file
from runner import PROJECT_ROOT
from runner.errors import FatalError, RunnerError

SCHEMA_VERSION = 2
"""Version of the record layout written now. Records of version 1 (before the
typed sections and validation metrics) are upgraded when read (`upgrade_v1`)."""

COMPLETED = "completed"
FAILED = "failed"
INTERRUPTED = "interrupted"
TIMEOUT = "timeout"
PRUNED = "pruned"
Status = Literal["completed", "failed", "interrupted", "timeout", "pruned"]
STATUSES: tuple[str, ...] = get_args(Status)
"""Statuses a record can have."""
DONE_STATUSES = (COMPLETED, PRUNED)
"""Statuses whose run is not executed again by the next sweep (resume by `config_hash`)."""
SKIPPED = "skipped"
"""A run not executed because a completed record with its `config_hash` exists (never recorded)."""

RUN = "run"
ENSEMBLE = "ensemble"
Kind = Literal["run", "ensemble"]
KINDS: tuple[str, ...] = get_args(Kind)

RESULT_FILE = "result.json"
KERNEL_LOG_FILE = "kernel.log"
THREAD_LIMIT_ENV = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
"""Environment variables capping a kernel's compute threads (set per worker by `--workers`)."""

RANKING_METRICS = (
    "accuracy",
    "weighted_precision",
    "weighted_recall",
    "weighted_f1",
    "macro_precision",
    "macro_recall",
    "macro_f1",
)
"""The scalar metrics of a split (`SplitMetrics`), each a float in [0, 1]."""


class RunLoadError(RunnerError):
    """A recorded run cannot be found or rebuilt (unknown id, failed run, missing or altered files)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitMetrics(_Section):
    """Classification metrics of one split, from scikit-learn (`models.evaluate.classification_metrics`).

    Attributes:
        accuracy, weighted_precision, weighted_recall, weighted_f1,
        macro_precision, macro_recall, macro_f1: floats in [0, 1]
            (`classification_report`, `zero_division=0`).
        per_class: `{class name: {"precision", "recall", "f1", "support"}}`.
        confusion_matrix: `[[int]]`, rows true classes, columns predicted, in
            `class_names` order.
    """

    accuracy: float
    weighted_precision: float
    weighted_recall: float
    weighted_f1: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: dict[str, dict[str, float]] = {}
    confusion_matrix: list[list[int]] = []


class DataSection(_Section):
    """The data a run used (`models.data.DataSplit.describe`).

    Attributes:
        dir: the data folder, absolute.
        class_names: label `i` is `class_names[i]`.
        counts: `{"train" | "val" | "test": {class name: images}}`.
        manifest_hash: sha256 hex of the split manifest (files, split, labels, sizes).
        skipped_files: files in the folder that were not used, `relative path -> reason`.
    """

    model_config = ConfigDict(extra="allow")  # later pipeline versions may describe more

    dir: str
    class_names: list[str]
    counts: dict[str, dict[str, int]] = {}
    manifest_hash: str
    skipped_files: dict[str, str] = {}


class ModelSection(_Section):
    """The model a run built (`models.build.describe_model`), plus the saved file's sha256.

    Attributes:
        base: canonical base name. weights: the `weights` parameter.
        weights_source: `"random"`, `"file"`, `"weights_dir"` or `"keras"`.
        weights_path, weights_sha256: the base weights file and its sha256, or `None`.
        trainable_params, total_params: parameter counts.
        image_size: input side, pixels.
        model_file_sha256: sha256 of `model.keras` (set by the runner).
    """

    base: str
    weights: Optional[str] = None
    weights_source: Optional[str] = None
    weights_path: Optional[str] = None
    weights_sha256: Optional[str] = None
    trainable_params: Optional[int] = None
    total_params: Optional[int] = None
    image_size: Optional[int] = None
    model_file_sha256: Optional[str] = None


class CacheUse(BaseModel):
    """How one training phase got its frozen layers' outputs (`models.cache`).

    Attributes:
        status: `"hit"`, `"built"`, `"bypassed"` or `"off"`.
        reason: why bypassed or off. Other keys (`key`, `cut_layer`, `dtype`,
            `augmented_copies`, `build_s` seconds, `entry`, `shapes`) as
            `models.cache` reports them.
    """

    model_config = ConfigDict(extra="allow")

    status: Optional[str] = None
    reason: Optional[str] = None
    build_s: Optional[float] = None


History = dict[str, dict[str, list[float]]]
"""Per phase (`"head"`, `"fine_tune"`), per Keras metric (`loss`, `val_loss`, ..., `epoch_s`), one float per epoch."""


class TrainingSection(_Section):
    """What training did (`models.train.TrainingResult.to_dict`).

    Attributes:
        history: see `History`.
        best_epoch: 1-based epoch across phases whose weights were kept.
        best_phase: the phase of `best_epoch`.
        epochs_run: epochs run in both phases (early stopping and pruning included).
        train_s: seconds of both phases.
        activation_cache: per phase, a `CacheUse`.
        pruned_epoch: the epoch (1-based, across phases) after which a
            pruner stopped the run (it is then recorded `PRUNED`), or `None`.
        fine_tune_layers_resolved: the base layers fine-tuning unfroze
            (`fine_tune_layers` given as a count, a fraction or a layer name), or `None`.
    """

    history: History = {}
    best_epoch: Optional[int] = None
    best_phase: Optional[str] = None
    epochs_run: int = 0
    train_s: Optional[float] = None
    activation_cache: dict[str, CacheUse] = {}
    pruned_epoch: Optional[int] = None
    fine_tune_layers_resolved: Optional[int] = None


class EvaluationSection(_Section):
    """Evaluation of the kept weights (`models.evaluate.EvaluationResult.to_dict`).

    Attributes:
        metrics: on the test split (reported).
        val_metrics: the same on the validation split (what runs are selected by).
        eval_s: seconds.
        from_cache: whether the frozen layers' outputs came from the activation cache.
        tta: the test-time augmentation views averaged (`None`: none).
        cache_bypass_reason: why evaluation ran the full model although
            training used the cache (e.g. `tta`), or `None`.
    """

    metrics: SplitMetrics
    val_metrics: Optional[SplitMetrics] = None
    eval_s: Optional[float] = None
    from_cache: bool = False
    tta: Optional[list[str]] = None
    cache_bypass_reason: Optional[str] = None


class WarmStartSection(_Section):
    """The weights a warm-started run loaded.

    Attributes:
        parent_run_id: the run they come from.
        checkpoint: `"best"` (the parent's `model.keras`) or an epoch (1-based).
        weights_path: in a record, relative to the record's folder; in the
            notebook, absolute.
        weights_sha256: sha256 hex of that file.
    """

    parent_run_id: str
    checkpoint: Union[int, str] = "best"
    weights_path: str
    weights_sha256: str


class NotebookResult(_Section):
    """`result.json`: what only the kernel knows, written by the notebook's last cell (`write_result`)."""

    data: DataSection
    model: ModelSection
    training: TrainingSection
    evaluation: EvaluationSection
    warm_start: Optional[WarmStartSection] = None


class Timings(_Section):
    """Seconds: `train_s` (both phases), `eval_s`, `cache_build_s` (the part of
    `train_s` spent building cache entries), `total_s` (kernel start to record)."""

    train_s: Optional[float] = None
    eval_s: Optional[float] = None
    cache_build_s: Optional[float] = None
    total_s: Optional[float] = None


class RunError(_Section):
    """Why a run did not complete: exception name and message, traceback, failing cell."""

    ename: str
    evalue: str
    traceback: str = ""
    cell_index: Optional[int] = None


class RunRecord(BaseModel):
    """One run, as stored in `logs/<run_id>.json`.

    Attributes:
        schema_version: version of this layout (`SCHEMA_VERSION`; 1 for an
            upgraded old record, which has no `val_metrics`).
        run_id: `YYYYmmdd-HHMMSS-<first 8 hex of config_hash>`, UTC start time.
        config_hash: sha256 hex of what decides the result (`runner.grid.Fingerprinter`).
        status: `COMPLETED`, `FAILED` (the notebook raised, the kernel
            died, or an output could not be written), `INTERRUPTED` (Ctrl-C /
            SIGTERM), `TIMEOUT` or `PRUNED` (stopped early by a pruner).
        kind: `RUN` (a notebook execution) or `ENSEMBLE` (averaged members).
        started_at, finished_at: ISO 8601 UTC times.
        params: every notebook parameter of the run, after defaults, as the
            user gave them (a `warm_start` of `"best"` stays `"best"`).
        name: the run's user-given name, or `None`.
        model, data: see `ModelSection`, `DataSection` (`None` when the run
            failed before them).
        metrics: test-split metrics (`SplitMetrics`), or `None`.
        val_metrics: validation-split metrics, or `None` (schema 1, failures).
        history, best_epoch, best_phase, epochs_run, pruned_epoch,
        fine_tune_layers_resolved: see `TrainingSection`.
        timings: see `Timings`.
        environment: python, package versions, git commit, hostname, thread caps.
        paths: the run's files (`RUN_FILES` keys), relative to the record's
            folder, `None` for a file that is missing.
        error: a `RunError` unless completed.
        warnings: problems that did not fail the run.
        parent_run_id: the run this one was warm-started from (resolved), or `None`.
        warm_start: the weights loaded (`WarmStartSection`), or `None`.
        members: for ensembles: the member run ids.
        activation_cache: per phase a `CacheUse`, and `evaluation`: `{"from_cache": bool}`.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    run_id: str
    config_hash: str
    status: Status
    kind: Kind = RUN
    started_at: str
    finished_at: str
    params: dict[str, Any]
    name: Optional[str] = None
    model: Optional[ModelSection] = None
    data: Optional[DataSection] = None
    metrics: Optional[SplitMetrics] = None
    val_metrics: Optional[SplitMetrics] = None
    history: History = {}
    best_epoch: Optional[int] = None
    best_phase: Optional[str] = None
    epochs_run: Optional[int] = None
    pruned_epoch: Optional[int] = None
    fine_tune_layers_resolved: Optional[int] = None
    timings: Timings = Timings()
    environment: dict[str, Any] = {}
    paths: dict[str, Optional[str]] = {}
    error: Optional[RunError] = None
    warnings: list[str] = []
    parent_run_id: Optional[str] = None
    warm_start: Optional[WarmStartSection] = None
    members: list[str] = []
    activation_cache: dict[str, Any] = {}

    def path_of(self, key: str, logs_dir: str | os.PathLike) -> Optional[Path]:
        """The absolute path of the run's file `key` (a `RUN_FILES` key), or `None` when not recorded.

        Args:
            key: e.g. `"html"`, `"model"`, `"predictions"`.
            logs_dir: the folder of this record (its paths are relative to it).

        Returns:
            The path (which may since have been deleted), or `None`.
        """
        rel = self.paths.get(key)
        return (Path(logs_dir) / rel).resolve() if isinstance(rel, str) and rel else None


RUN_FILES = {
    "notebook": "{run_id}.ipynb", "html": "{run_id}.html", "result": RESULT_FILE, "model": "model.keras",
    "training_curves": "training_curves.png", "confusion_matrix": "confusion_matrix.png",
    "predictions": "predictions.csv", "val_predictions": "val_predictions.csv",
    "kernel_log": KERNEL_LOG_FILE, "tensorboard": "tensorboard",
}
"""The files of a run folder `experiments/<run_id>/`, by record `paths` key (names formatted with the run id)."""

REQUIRED_FILES = ("notebook", "html", "result")
"""The files every completed notebook run has (the runner writes or reads them); a run
missing one is recorded `FAILED` with the missing files named, and `--retry-failed` re-runs it."""


def build_record(*, run_id: str, config_hash: str, status: str, started_at: datetime, params: dict[str, Any],
                 result: Optional[NotebookResult], files: dict[str, Optional[Path]], logs_dir: Path,
                 total_s: float, kind: str = RUN, error: Optional[RunError] = None,
                 warnings: Sequence[str] = (), warm_start: Optional[WarmStartSection] = None,
                 members: Sequence[str] = (), name: Optional[str] = None,
                 environment: Optional[dict[str, Any]] = None,
                 metrics: Optional[SplitMetrics] = None, val_metrics: Optional[SplitMetrics] = None,
                 data: Optional[DataSection] = None) -> RunRecord:
    """The record of one run or ensemble from what it produced (pure: reads nothing but `files`' existence).

    Args:
        run_id, config_hash, status, kind, name: as in `RunRecord`.
        started_at: UTC start time; `finished_at` is now.
        params: the run's parameters as the user gave them (after defaults).
        result: the notebook's `result.json`, or `None` when it wrote none
            (failed runs, ensembles).
        files: `RUN_FILES` key -> path (absolute, or `None`); a path that does
            not exist is recorded as `None`.
        logs_dir: the record's folder; paths are stored relative to it.
        total_s: seconds from start to now.
        error: why the run did not complete, or `None`.
        warnings: problems that did not fail the run.
        warm_start: the weights a warm start loaded (absolute path; stored
            relative to `logs_dir`), or `None`.
        members: ensemble members.
        environment: defaults to `collect_environment()`.
        metrics, val_metrics, data: for ensembles (no notebook result):
            their test and validation metrics and data. Defaults to the result's.

    Returns:
        The `RunRecord` (not yet written).
    """
    training = result.training if result else None
    evaluation = result.evaluation if result else None
    cache_use: dict[str, Any] = {k: v.model_dump(exclude_none=True) for k, v in (training.activation_cache if training else {}).items()}
    if evaluation is not None:
        cache_use["evaluation"] = {"from_cache": evaluation.from_cache,
                                   **({"reason": evaluation.cache_bypass_reason} if evaluation.cache_bypass_reason else {})}
    model = result.model.model_copy(update={"model_file_sha256": _sha256_if_file(files.get("model"))}) if result else None
    if warm_start is not None:
        warm_start = warm_start.model_copy(update={"weights_path": os.path.relpath(warm_start.weights_path, logs_dir)})
    return RunRecord(
        run_id=run_id, config_hash=config_hash, status=status, kind=kind, name=name,
        started_at=started_at.isoformat(timespec="seconds"),
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        params=params, model=model, data=data or (result.data if result else None),
        metrics=metrics or (evaluation.metrics if evaluation else None),
        val_metrics=val_metrics or (evaluation.val_metrics if evaluation else None),
        history=training.history if training else {},
        best_epoch=training.best_epoch if training else None,
        best_phase=training.best_phase if training else None,
        epochs_run=training.epochs_run if training else None,
        pruned_epoch=training.pruned_epoch if training else None,
        fine_tune_layers_resolved=training.fine_tune_layers_resolved if training else None,
        timings=Timings(train_s=training.train_s if training else None,
                        eval_s=evaluation.eval_s if evaluation else None,
                        cache_build_s=sum(use.build_s or 0.0 for use in training.activation_cache.values())
                        if training else None,
                        total_s=round(total_s, 3)),
        environment=collect_environment() if environment is None else environment,
        paths={key: os.path.relpath(path, logs_dir) if path is not None and Path(path).exists() else None
               for key, path in files.items()},
        error=error, warnings=list(warnings),
        parent_run_id=warm_start.parent_run_id if warm_start else None, warm_start=warm_start,
        members=list(members), activation_cache=cache_use,
    )


def _sha256_if_file(path: Optional[Path]) -> Optional[str]:
    return sha256_file(path) if path is not None and Path(path).is_file() else None


def upgrade_v1(payload: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 record's JSON as schema 2 (kept `schema_version: 1`, so readers can tell).

    Schema 1 had free-form sections: `metrics` (test split) stays, there are
    no `val_metrics`; `epochs_run` and `best_phase` are derived from the
    history as version 1's readers did; empty `warm_start` / `model` / `data`
    mappings become `None`.

    Args:
        payload: the parsed JSON of a version-1 record.

    Returns:
        A mapping `RunRecord.model_validate` accepts.
    """
    out = dict(payload)
    history = out.get("history") or {}
    lengths = [len(phase.get("val_loss", phase.get("loss", []))) for phase in history.values()]
    if history:
        out["epochs_run"] = sum(lengths)
        if out.get("best_epoch"):
            out["best_phase"] = "head" if out["best_epoch"] <= lengths[0] else "fine_tune"
    for key in ("warm_start", "model", "data", "metrics"):
        if not out.get(key):
            out[key] = None
    if out.get("error") is not None:
        out["error"] = {"traceback": "", "cell_index": None, **out["error"]}
    return out


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically (temp file in the same folder, fsync, `os.replace`).

    The file gets the user's normal mode (0666 minus the umask, like `open`),
    not `mkstemp`'s private 0600, so colleagues on a shared filesystem can read it.

    Args:
        path: destination file; its folder is created if missing.
        text: the content, written as UTF-8.

    Returns:
        The destination path.

    Raises:
        OSError: the folder cannot be created or written (disk full,
            read-only); no partial file is left behind and an existing file
            at `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_UMASK)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_page(path: str | os.PathLike, text: str) -> Path:
    """Write a page the sweep produces (leaderboard, csv, lineage) with `write_text_atomic`.

    Raises:
        FatalError: it cannot be written (disk full, read-only); the previous
            file is left as it was.
    """
    try:
        return write_text_atomic(path, text)
    except OSError as exc:
        raise FatalError(f"cannot write {path}: {exc.strerror or exc}; the previous file is left as it was") from exc


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Write `payload` as indented JSON to `path` with `write_text_atomic`.

    Raises:
        OSError: as `write_text_atomic`.
        ValueError: `payload` holds NaN or infinity (not valid JSON).
    """
    return write_text_atomic(path, json.dumps(payload, indent=2, allow_nan=False, default=str) + "\n")


def write_result(output_dir: str | os.PathLike, **sections: Any) -> Path:
    """Validate the notebook's results against `NotebookResult` and write `<output_dir>/result.json`.

    Called by the last cell of the base notebook; `runner.execute` reads the
    file back with `read_result`.

    Args:
        output_dir: the run folder (`experiments/<run_id>/`).
        **sections: `data=`, `model=`, `training=`, `evaluation=` (mappings,
            e.g. `TrainingResult.to_dict()`), and `warm_start=` (or `None`).

    Returns:
        Path of the written file.

    Raises:
        pydantic.ValidationError: a section does not match its model (the
            notebook and the runner disagree: a bug, shown in the notebook).
    """
    result = NotebookResult.model_validate(sections)
    return write_json_atomic(Path(output_dir) / RESULT_FILE, result.model_dump(mode="json"))


def read_result(run_dir: str | os.PathLike) -> Optional[NotebookResult]:
    """The notebook's `result.json` in `run_dir`, or `None` when it is missing or invalid."""
    try:
        return NotebookResult.model_validate_json((Path(run_dir) / RESULT_FILE).read_bytes())
    except (OSError, ValidationError):
        return None


def write_record(record: RunRecord, logs_dir: str | os.PathLike) -> Path:
    """Write `record` to `<logs_dir>/<run_id>.json` atomically.

    Args:
        record: the run record.
        logs_dir: folder of the records; created if missing.

    Returns:
        Path of the written record.

    Raises:
        FatalError: the record cannot be written (read-only folder, disk
            full); no partial file is left and existing records are untouched.
    """
    path = Path(logs_dir) / f"{record.run_id}.json"
    try:
        return write_json_atomic(path, record.model_dump(mode="json"))
    except OSError as exc:
        raise FatalError(f"cannot write run record {path}: {exc}") from exc


def read_record(path: str | os.PathLike) -> RunRecord:
    """Read and validate one run record (schema 1 records are upgraded with `upgrade_v1`).

    Args:
        path: a `logs/<run_id>.json` file.

    Returns:
        The parsed `RunRecord`.

    Raises:
        ValueError: the file is not valid JSON, does not match the schema, or
            has a `schema_version` other than 1 or `SCHEMA_VERSION`.
        OSError: the file cannot be read.
    """
    data = Path(path).read_bytes()
    try:  # the common case, parsed and validated in one pass by pydantic-core
        record = RunRecord.model_validate_json(data)
        if record.schema_version == SCHEMA_VERSION:
            return record
    except ValidationError:
        pass
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    version = payload.get("schema_version") if isinstance(payload, dict) else None
    if version not in (1, SCHEMA_VERSION):
        raise ValueError(f"{path}: schema_version: got {version!r}, expected 1 or {SCHEMA_VERSION}")
    try:
        return RunRecord.model_validate(upgrade_v1(payload) if version == 1 else payload)
    except ValidationError as exc:
        raise ValueError(f"{path}: not a run record: {exc}") from exc


def package_version(name: str) -> Optional[str]:
    """The installed version of distribution `name` (from its metadata, no import), or `None`."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def collect_environment() -> dict[str, Any]:
    """Describe where runs execute: versions, git commit, host.

    Package versions are read from installed metadata (no TensorFlow import).

    Returns:
        `{"python", "platform", "hostname", "git_commit", "packages": {name: version},
        "cpu_count", "thread_limits": {variable: value}}`: `thread_limits` are the
        thread caps the run's kernel inherited (`--workers`), empty when none.
    """
    packages = ("tensorflow", "keras", "papermill", "nbconvert", "scikit-learn", "numpy", "pandas")
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "git_commit": _git_commit(),
        "packages": {name: package_version(name) for name in packages},
        "cpu_count": os.cpu_count(),
        "thread_limits": {name: os.environ[name] for name in THREAD_LIMIT_ENV if name in os.environ},
    }
