"""Run records: the JSON file `logs/<run_id>.json` that describes one run.

Two files carry a run's results:

- `experiments/<run_id>/result.json`, written by the notebook at its end with
  `write_result` (what only the kernel knows: data, model, metrics, history);
- `logs/<run_id>.json`, the `RunRecord`, written by `runner.execute` after the
  notebook has run or failed (params, status, error, timings, environment,
  paths). A run that failed has a record too.

Both are written atomically (temporary file in the same folder, fsync, then
`os.replace`), so a reader never sees half a file.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from runner import PROJECT_ROOT
from runner.errors import FatalError, RunnerError

SCHEMA_VERSION = 1

COMPLETED = "completed"
FAILED = "failed"
INTERRUPTED = "interrupted"
TIMEOUT = "timeout"
STATUSES = (COMPLETED, FAILED, INTERRUPTED, TIMEOUT)
"""Statuses a record can have."""
SKIPPED = "skipped"
"""A run not executed because a completed record with its `config_hash` exists (never recorded)."""

RUN = "run"
ENSEMBLE = "ensemble"
KINDS = (RUN, ENSEMBLE)

RESULT_FILE = "result.json"
THREAD_LIMIT_ENV = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
"""Environment variables capping a kernel's compute threads (set per worker by `--workers`)."""

# Metrics a sweep can rank by: the scalar keys of `RunRecord.metrics`.
RANKING_METRICS = (
    "accuracy",
    "weighted_precision",
    "weighted_recall",
    "weighted_f1",
    "macro_precision",
    "macro_recall",
    "macro_f1",
)


class RunLoadError(RunnerError):
    """A recorded run cannot be found or rebuilt (unknown id, failed run, missing or altered files)."""


class RunRecord(BaseModel):
    """One run, as stored in `logs/<run_id>.json`.

    Attributes:
        schema_version: version of this layout (`SCHEMA_VERSION`).
        run_id: `YYYYmmdd-HHMMSS-<first 8 hex of config_hash>`, UTC start time.
        config_hash: sha256 hex of the run's parameters (after defaults).
        status: one of `STATUSES`: `COMPLETED`, `FAILED` (the notebook
            raised or the kernel died), `INTERRUPTED` (Ctrl-C / SIGTERM) or
            `TIMEOUT` (`--timeout` or `--cell-timeout` exceeded).
        started_at: ISO 8601 UTC start time.
        finished_at: ISO 8601 UTC end time.
        params: every notebook parameter of the run, after defaults.
        model: base, weights source and sha256, parameter counts (from the
            notebook; empty for runs that failed before building a model).
        data: data folder, class names, counts per split, manifest hash.
        metrics: test-split metrics: `RANKING_METRICS` keys (floats in
            [0, 1]), `per_class` and `confusion_matrix` (rows = true class).
        history: per phase (`head`, `fine_tune`), per Keras metric, one float
            per epoch.
        best_epoch: 1-based epoch (across phases) whose weights were kept.
        timings: `train_s`, `eval_s`, `total_s` in seconds (`total_s` covers
            kernel start to html export); `cache_build_s`, the part of
            `train_s` spent building activation cache entries.
        environment: python, package versions, git commit, hostname.
        paths: the run's files, relative to the folder of the record.
        error: for failed runs: `ename`, `evalue`, `traceback`, `cell_index`.
        warnings: problems that did not fail the run (e.g. html export).
        kind: `RUN` (a notebook execution) or `ENSEMBLE` (averaged members).
        parent_run_id: the run this one was warm-started from, or `None`.
        warm_start: for warm starts: `checkpoint` (`"best"` or an epoch),
            `weights_path` (relative to the record's folder) and
            `weights_sha256` of the weights loaded.
        members: for ensembles: the member run ids.
        activation_cache: per training phase, how the frozen layers' outputs
            were obtained (`status` `hit`, `built`, `bypassed` or `off`, with
            the `reason`, `key`, `cut_layer`, `dtype`, `augmented_copies`,
            `build_s`; see `models.cache`), and `evaluation`: whether the
            test split was read from the cache.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    run_id: str
    config_hash: str
    status: str
    started_at: str
    finished_at: str
    params: dict[str, Any]
    model: dict[str, Any] = {}
    data: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    history: dict[str, dict[str, list[float]]] = {}
    best_epoch: Optional[int] = None
    timings: dict[str, Optional[float]] = {}
    environment: dict[str, Any] = {}
    paths: dict[str, Optional[str]] = {}
    error: Optional[dict[str, Any]] = None
    warnings: list[str] = []
    kind: str = RUN
    parent_run_id: Optional[str] = None
    warm_start: dict[str, Any] = {}
    members: list[str] = []
    activation_cache: dict[str, Any] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes (read in chunks by `hashlib.file_digest`).

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically (temp file in the same folder, fsync, `os.replace`).

    Args:
        path: destination file; its folder is created if missing.
        text: the content, written as UTF-8.

    Returns:
        The destination path.

    Raises:
        OSError: the folder cannot be created or written; no partial file is
            left behind and an existing file at `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Write `payload` as indented JSON to `path` with `write_text_atomic`.

    Raises:
        OSError: as `write_text_atomic`.
        ValueError: `payload` holds NaN or infinity (not valid JSON).
    """
    return write_text_atomic(path, json.dumps(payload, indent=2, allow_nan=False, default=str) + "\n")


def write_result(output_dir: str | os.PathLike, **sections: Any) -> Path:
    """Write the notebook's results to `<output_dir>/result.json` (atomically).

    Called by the last cell of the base notebook; `runner.execute` merges the
    file into the run record.

    Args:
        output_dir: the run folder (`experiments/<run_id>/`).
        **sections: JSON-safe mappings, e.g. `data=`, `model=`, `training=`,
            `evaluation=`.

    Returns:
        Path of the written file.
    """
    return write_json_atomic(Path(output_dir) / RESULT_FILE, sections)


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
    """Read and validate one run record.

    Args:
        path: a `logs/<run_id>.json` file.

    Returns:
        The parsed `RunRecord`.

    Raises:
        ValueError: the file is not valid JSON, does not match the schema, or
            has a `schema_version` other than `SCHEMA_VERSION`.
        OSError: the file cannot be read.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    version = payload.get("schema_version") if isinstance(payload, dict) else None
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema_version: got {version!r}, expected {SCHEMA_VERSION}"
        )
    try:
        return RunRecord.model_validate(payload)
    except ValidationError as exc:
        raise ValueError(f"{path}: not a run record: {exc}") from exc


def read_records(logs_dir: str | os.PathLike) -> tuple[list[RunRecord], dict[str, str]]:
    """Read every `*.json` record in `logs_dir`, in file-name (= run id) order.

    Args:
        logs_dir: folder of the records; a missing folder holds no records.

    Returns:
        `(records, unreadable)`: the valid records, and for every file that
        could not be read, its name mapped to the reason.
    """
    records, unreadable = [], {}
    folder = Path(logs_dir)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            records.append(read_record(path))
        except (OSError, ValueError) as exc:
            unreadable[path.name] = str(exc)
    return records, unreadable


def find_record(run: str, logs_dir: str | Path = "logs", metric: str = "weighted_recall",
                kinds: tuple[str, ...] = KINDS, accept: Optional[Callable[[RunRecord], bool]] = None) -> Path:
    """The record file that `run` names.

    Args:
        run: a record path, a run id, a unique run-id prefix, or `"best"`.
        logs_dir: folder of the records. Defaults to `"logs"`.
        metric: what `"best"` ranks by, one of `RANKING_METRICS`. Defaults to
            `"weighted_recall"`.
        kinds: record kinds `"best"` chooses from. Defaults to all (`KINDS`).
        accept: further filter of the records `"best"` chooses from. Defaults
            to `None` (all).

    Returns:
        Path of the record.

    Raises:
        RunLoadError: no record matches, the prefix is ambiguous, or there is
            no completed run for `"best"`.
        ValueError: `metric` is not one of `RANKING_METRICS`.
    """
    if run.endswith(".json") and Path(run).is_file():
        return Path(run)
    logs_dir = Path(logs_dir)
    if run == "best":
        if metric not in RANKING_METRICS:
            raise ValueError(f"metric: got {metric!r}, expected one of {', '.join(RANKING_METRICS)}")
        records, _ = read_records(logs_dir)
        done = [r for r in records if r.status == COMPLETED and r.kind in kinds and metric in r.metrics
                and (accept is None or accept(r))]
        if not done:
            raise RunLoadError(f"best: no completed{' matching' if accept else ''} run with {metric} in {logs_dir}")
        best = max(done, key=lambda r: r.metrics[metric])  # ties: the earliest run
        return logs_dir / f"{best.run_id}.json"
    if "/" in run or "\\" in run or run.startswith("."):
        raise RunLoadError(f"run: got {run!r}, expected a run id, a unique prefix, 'best' or a record path")
    matches = sorted(logs_dir.glob(f"{glob.escape(run)}*.json"))
    exact = [p for p in matches if p.stem == run]
    if exact or len(matches) == 1:
        return (exact or matches)[0]
    if not matches:
        raise RunLoadError(f"run: no record for {run!r} in {logs_dir}")
    raise RunLoadError(f"run: {run!r} matches {len(matches)} runs ({', '.join(p.stem for p in matches[:5])}"
                       f"{', ...' if len(matches) > 5 else ''}); give more of the id")


def _package_version(name: str) -> Optional[str]:
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
        "packages": {name: _package_version(name) for name in packages},
        "cpu_count": os.cpu_count(),
        "thread_limits": {name: os.environ[name] for name in THREAD_LIMIT_ENV if name in os.environ},
    }
