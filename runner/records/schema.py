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

Reading, finding and ranking records: `runner.records.query`.

Both are written atomically (temporary file in the same folder, fsync, then
`os.replace`), so a reader never sees half a file.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, get_args

from pydantic import BaseModel, ConfigDict, field_validator

from models import names
from models.bases.registry import canonical_base
from models.contract import (DataSection, ModelSection, NotebookResult, Section, SplitMetrics, WarmStartSection,
                             History)
from models.hashing import sha256_file
from models.names import FINE_TUNE, HEAD
from runner.errors import RunnerError
from runner.records.environment import collect_environment

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


class RunLoadError(RunnerError):
    """A recorded run cannot be found or rebuilt (unknown id, failed run, missing or altered files)."""


class Timings(Section):
    """Seconds: `train_s` (both phases), `eval_s`, `cache_build_s` (the part of
    `train_s` spent building cache entries), `total_s` (kernel start to record)."""

    train_s: Optional[float] = None
    eval_s: Optional[float] = None
    cache_build_s: Optional[float] = None
    total_s: Optional[float] = None


class RunError(Section):
    """Why a run did not complete: exception name and message, traceback, failing cell."""

    ename: str
    evalue: str
    traceback: str = ""
    cell_index: Optional[int] = None


class CodeHashes(Section):
    """The code a run executed, hashed per part when it started (`runner.grid.code_hashes`),
    so that `nbsweep rerun` can name what changed since: the notebook (its path and the
    sha256 of its code cells) and each project file its kernel imports
    (`runner.grid.kernel_code_files`, `models.hashing.sha256_code`: code, not docstrings)."""

    notebook: str
    notebook_sha256: str
    files: dict[str, str] = {}


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
        environment: python, package versions, git commit, hostname, thread caps;
            for notebooks that report it (`models.contract.RuntimeSection`), also
            `deterministic`, `op_determinism`, `device` and `devices` as the kernel saw them.
        paths: the run's files (`RUN_FILES` keys), relative to the record's
            folder, `None` for a file that is missing.
        error: a `RunError` unless completed.
        warnings: problems that did not fail the run.
        parent_run_id: the run this one was warm-started from (resolved), or `None`.
        warm_start: the weights loaded (`WarmStartSection`), or `None`.
        members: for ensembles: the member run ids.
        activation_cache: per phase a `CacheUse`, and `evaluation`: `{"from_cache": bool}`.
        code: the code hashes of the notebook and of each file its kernel
            imports (`CodeHashes`), or `None` (ensembles, records written
            before they were recorded).
        rerun_of: the run this one re-executed (`nbsweep rerun`), or `None`.
        weight_averaging: what `ema` / `swa_epochs` did (`models.contract.TrainingSection`), or `None`.
        refit_of: for the refit of a grid with `refit: true` (`runner.core.refit.refit_best`), the run
            whose configuration it trained again on the training and validation splits; `None`
            otherwise. A refit has no validation figures (`val_metrics` is `None`: it trained on the
            validation split) and never ranks (`runner.records.query.rank`).
        group_hash: the configuration this run repeats (`runner.grid.RunBuilder`:
            the sha256 of its parameters without `seed` and `name`, and of what else
            decides its result); `None` in records written before repeats, each then
            a group of its own (`runner.records.groups.group_key`).
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
    code: Optional[CodeHashes] = None
    rerun_of: Optional[str] = None
    group_hash: Optional[str] = None
    weight_averaging: Optional[dict[str, Any]] = None
    refit_of: Optional[str] = None

    @field_validator("params")
    @classmethod
    def _canonical_base(cls, params: dict[str, Any]) -> dict[str, Any]:
        """`base` in its one spelling (`models.bases.canonical_base`), as `ExperimentSpec` validates it: a
        record written by a version that stored the spelling given (`VGG16`) reads as `vgg16`."""
        base = params.get("base")
        if isinstance(base, str) and canonical_base(base) != base:
            return {**params, "base": canonical_base(base)}
        return params

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

    def weights_path(self, logs_dir: str | os.PathLike) -> Optional[Path]:
        """The absolute path of the file holding the run's kept weights, or `None` when none is recorded.

        `paths["trained_weights"]` (`trained_weights.h5`: the base frozen as
        built, only what trained) when recorded, else `paths["model"]`
        (`model.keras`: the full model; every run recorded before
        `trained_weights` existed). `model.model_file_sha256` is this file's
        sha256.

        Args:
            logs_dir: the folder of this record.

        Returns:
            The path (which may since have been deleted), or `None`.
        """
        return next(filter(None, (self.path_of(key, logs_dir) for key in WEIGHTS_KEYS)), None)


RUN_FILES = {
    "notebook": "{run_id}.ipynb", "html": "{run_id}.html", "result": names.RESULT_FILE, "model": names.MODEL_FILE,
    "trained_weights": names.TRAINED_WEIGHTS_FILE,
    "training_curves": names.TRAINING_CURVES_FILE, "confusion_matrix": names.CONFUSION_MATRIX_FILE,
    "predictions": names.PREDICTIONS_FILE, "val_predictions": names.VAL_PREDICTIONS_FILE,
    "kernel_log": names.KERNEL_LOG_FILE, "tensorboard": names.TENSORBOARD_DIR,
}
"""The files of a run folder `experiments/<run_id>/`, by record `paths` key (names formatted with the run id).
A run's kept weights are in one of `model` (the full model) and `trained_weights` (only what it trained,
`models.saving`); `RunRecord.weights_path` finds it."""

WEIGHTS_KEYS = ("trained_weights", "model")
"""The `paths` keys that can hold a run's kept weights (`models.names.RUN_WEIGHTS_FILES`, in its order)."""

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
                 data: Optional[DataSection] = None, code: Optional[dict[str, Any]] = None,
                 rerun_of: Optional[str] = None, group_hash: Optional[str] = None,
                 refit_of: Optional[str] = None) -> RunRecord:
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
        environment: defaults to `collect_environment()`; the result's `runtime`
            (determinism, devices), when there is one, is added to it.
        metrics, val_metrics, data: for ensembles (no notebook result):
            their test and validation metrics and data. Defaults to the result's.
        code: the code hashes (`runner.grid.code_hashes`), or `None`.
        rerun_of: the run this one re-executes, or `None`.
        group_hash: the run's configuration without its seed (`RunSpec.group_hash`), or `None`.
        refit_of: the run a refit trained again on train + validation (`RunSpec.refit_of`), or `None`.

    Returns:
        The `RunRecord` (not yet written).
    """
    training = result.training if result else None
    evaluation = result.evaluation if result else None
    cache_use: dict[str, Any] = {k: v.model_dump(exclude_none=True) for k, v in (training.activation_cache if training else {}).items()}
    if evaluation is not None:
        cache_use["evaluation"] = {"from_cache": evaluation.from_cache,
                                   **({"reason": evaluation.cache_bypass_reason} if evaluation.cache_bypass_reason else {})}
    weights_file = next((files[key] for key in WEIGHTS_KEYS if files.get(key) is not None and Path(files[key]).is_file()),
                        None)
    model = result.model.model_copy(update={"model_file_sha256": _sha256_if_file(weights_file)}) if result else None
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
        environment={**(collect_environment() if environment is None else environment),
                     **(result.runtime.model_dump(mode="json") if result and result.runtime else {})},
        paths={key: os.path.relpath(path, logs_dir) if path is not None and Path(path).exists() else None
               for key, path in files.items()},
        error=error, warnings=list(warnings),
        parent_run_id=warm_start.parent_run_id if warm_start else None, warm_start=warm_start,
        members=list(members), activation_cache=cache_use,
        code=None if code is None else CodeHashes.model_validate(code), rerun_of=rerun_of, group_hash=group_hash,
        weight_averaging=training.weight_averaging if training else None, refit_of=refit_of,
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
            out["best_phase"] = HEAD if out["best_epoch"] <= lengths[0] else FINE_TUNE
    for key in ("warm_start", "model", "data", "metrics"):
        if not out.get(key):
            out[key] = None
    if out.get("error") is not None:
        out["error"] = {"traceback": "", "cell_index": None, **out["error"]}
    return out


