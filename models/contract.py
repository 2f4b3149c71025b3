"""The contract between a run's notebook and the runner: what the kernel writes.

The base notebook's last cell calls `write_result(output_dir, ...)`, which
validates the run's sections against `NotebookResult` and writes
`<output_dir>/result.json` atomically; the runner (`runner.records`) reads it
back into the run record. Everything here is imported by the kernel, so it is
covered by each run's `config_hash` (as code: docstrings and comments are not).

Both sides import the names of the ranking metrics from here: `RANKING_METRICS`
are the scalar fields of `SplitMetrics`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from models.names import RESULT_FILE

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


class Section(BaseModel):
    """Base of every section of a run's result and record: a key it does not define is refused
    (`extra="forbid"`), so a misspelt or unknown key fails validation instead of being dropped."""

    model_config = ConfigDict(extra="forbid")


class SplitMetrics(Section):
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


class DataSection(Section):
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


class ModelSection(Section):
    """The model a run built (`models.build.describe_model`), plus the saved file's sha256.

    Attributes:
        base: canonical base name. weights: the `weights` parameter.
        weights_source: `"random"`, `"file"`, `"weights_dir"`, `"keras"` or `"saved"` (a saved-model base's own).
        weights_path, weights_sha256: the base weights file and its sha256, or `None`.
        trainable_params, total_params: parameter counts.
        image_size: input side, pixels.
        model_file_sha256: sha256 of the file holding the run's kept weights:
            `trained_weights.h5` or `model.keras` (set by the runner).
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


class TrainingSection(Section):
    """What training did (`models.training.TrainingResult.to_dict`).

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
        weight_averaging: what `ema` / `swa_epochs` did (`models.training.averaging`): `method`
            (`"ema"` or `"swa"`), `applied`, and `momentum` and `phases` (ema) or `epochs` averaged,
            `batchnorm_recomputed` layers and `batchnorm_rows` (swa); `None` without either.
        train_on_val: the validation split was trained on (`train_on_val`, a refit): every epoch ran
            and the last one's weights were kept.
    """

    history: History = {}
    best_epoch: Optional[int] = None
    best_phase: Optional[str] = None
    epochs_run: int = 0
    train_s: Optional[float] = None
    activation_cache: dict[str, CacheUse] = {}
    pruned_epoch: Optional[int] = None
    fine_tune_layers_resolved: Optional[int] = None
    weight_averaging: Optional[dict[str, Any]] = None
    train_on_val: bool = False


class EvaluationSection(Section):
    """Evaluation of the kept weights (`models.evaluate.EvaluationResult.to_dict`).

    Attributes:
        metrics: on the test split (reported).
        val_metrics: the same on the validation split (what runs are selected by); `None` when it
            was trained on (`train_on_val`).
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


class WarmStartSection(Section):
    """The weights a warm-started run loaded.

    Attributes:
        parent_run_id: the run they come from.
        checkpoint: `"best"` (the parent's kept weights: `trained_weights.h5`
            or `model.keras`) or an epoch (1-based).
        weights_path: in a record, relative to the record's folder; in the
            notebook, absolute.
        weights_sha256: sha256 hex of that file.
    """

    parent_run_id: str
    checkpoint: Union[int, str] = "best"
    weights_path: str
    weights_sha256: str


class DeviceInfo(Section):
    """One device TensorFlow saw: `name` (`/physical_device:GPU:0`), `type` (`CPU`, `GPU`), `model` (`NVIDIA H200`)."""

    name: str
    type: str
    model: Optional[str] = None


class RuntimeSection(Section):
    """How the kernel computed (`models.reproducibility.set_determinism`); the runner copies it into the
    record's `environment`.

    Attributes:
        deterministic: the run's `deterministic` parameter.
        op_determinism: whether TensorFlow's op determinism was on.
        device: where Keras ran the model: `"GPU: <GPU:0's name>"` or `"CPU: <model name>"`.
        devices: every device TensorFlow saw.
    """

    deterministic: bool
    op_determinism: bool
    device: str
    devices: list[DeviceInfo] = []


class NotebookResult(Section):
    """`result.json`: what only the kernel knows, written by the notebook's last cell (`write_result`).

    `runtime` is `None` for notebooks that do not report it (written before it existed, or other notebooks).
    """

    data: DataSection
    model: ModelSection
    training: TrainingSection
    evaluation: EvaluationSection
    warm_start: Optional[WarmStartSection] = None
    runtime: Optional[RuntimeSection] = None


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


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Write `payload` as indented JSON to `path` with `write_text_atomic`.

    Raises:
        OSError: as `write_text_atomic`.
        ValueError: `payload` holds NaN or infinity (not valid JSON).
    """
    return write_text_atomic(path, json.dumps(payload, indent=2, allow_nan=False, default=str) + "\n")


def write_result(output_dir: str | os.PathLike, **sections: Any) -> Path:
    """Validate the notebook's results against `NotebookResult` and write `<output_dir>/result.json`.

    Called by the last cell of the base notebook; `runner.core.execute` reads the
    file back with `read_result`.

    Args:
        output_dir: the run folder (`experiments/<run_id>/`).
        **sections: `data=`, `model=`, `training=`, `evaluation=` (mappings,
            e.g. `TrainingResult.to_dict()`), `warm_start=` (or `None`), and
            `runtime=` (`models.reproducibility.set_determinism`'s result, or
            `None`).

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
