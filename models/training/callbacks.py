"""The training callbacks: the best-weights tracker across phases, per-epoch checkpoints of the trained weights and
their retention, epoch timing, linear warm-up, early stopping.

`models.training.loop` assembles them per phase; `models.training.schedules` adds `LinearWarmup` after a
phase's schedule callback.
"""

from __future__ import annotations

import time
from pathlib import Path
import keras
import numpy as np
from ..spec import ExperimentSpec
from .. import saving
from ..names import EPOCH_LOG_KEYS, checkpoint_path


_MONITORS = {name: (key, "min" if key == "val_loss" else "max") for name, key in EPOCH_LOG_KEYS.items()}


def monitor_of(name: str) -> tuple[str, str]:
    """The Keras log key and mode of a monitor (`early_stopping_monitor`, `checkpoint_monitor`).

    For single-label classification the weighted recall is the accuracy:
    `sum_c (n_c / n) * TP_c / n_c = sum_c TP_c / n`, so `"val_weighted_recall"`
    follows Keras's `val_accuracy` (`models.names.EPOCH_LOG_KEYS`).

    Args:
        name: `"val_loss"`, `"val_accuracy"` or `"val_weighted_recall"`.

    Returns:
        `(key, mode)`: the key of the epoch logs (`"val_loss"` or
        `"val_accuracy"`) and `"min"` (lower is better, the loss) or `"max"`.

    Raises:
        ValueError: `name` is none of those.
    """
    if name not in _MONITORS:
        raise ValueError(f"monitor: got {name!r}, expected one of {', '.join(map(repr, _MONITORS))}")
    return _MONITORS[name]


def _rank_value(value: float, mode: str) -> float:
    """A value to sort ascending (best first); non-finite values rank last."""
    return (value if mode == "min" else -value) if np.isfinite(value) else np.inf


def best_index(values, mode: str) -> int:
    """The index of the first best finite value, the epoch `BestWeights` keeps.

    Non-finite values (NaN, inf) rank last, so they are never the best while
    a finite value exists; of equal values the first wins, as `BestWeights`
    keeps the first epoch of a tie.

    Args:
        values: the monitored values, one float per epoch, in epoch order
            (across both phases).
        mode: `"min"` (lower is better) or `"max"`, as `monitor_of` gives it.

    Returns:
        The 0-based index of the best finite value; 0 when none is finite or
        `values` is empty.
    """
    ranks = [_rank_value(v, mode) for v in values]
    return int(np.argmin(ranks)) if ranks else 0


class TrainedWeightsCheckpoint(keras.callbacks.Callback):
    """Writes, after every epoch, the variables of the full model that training can change (`models.saving`).

    The file is `models.names.checkpoint_path(run_dir, k)` (k 1-based across
    both phases, as `epoch + 1` counts them): the full model's variables but
    those `models.saving.frozen_indices` leaves out (its base's frozen layers,
    as `build_model` built them), and the base's identity. The full model is
    the one written whatever was fitted (the top part of a cut model,
    `models.cache`, shares its layers), so a checkpoint loads into
    `build_model(spec)` either way (`models.saving.load_weights_into`). The
    frozen set is read at each epoch (fine-tuning unfreezes layers); the
    frozen weights' digest is computed once per set.

    Args:
        full_model: the model from `build_model(spec, ...)`.
        run_dir: the run folder.
        spec: the run's `ExperimentSpec`.
    """

    def __init__(self, full_model: keras.Model, run_dir: Path, spec: ExperimentSpec):
        super().__init__()
        self.full_model, self.run_dir, self.spec = full_model, Path(run_dir), spec
        self._identities: dict[tuple, object] = {}

    def on_epoch_end(self, epoch, logs=None):
        frozen = tuple(saving.frozen_indices(self.full_model, self.spec))
        if frozen not in self._identities:
            self._identities[frozen] = saving.base_identity(self.full_model, self.spec, frozen)
        saving.write_trained_weights(self.full_model, checkpoint_path(self.run_dir, epoch + 1), frozen,
                                     self._identities[frozen])


class BestWeights(keras.callbacks.Callback):
    """Keeps a copy, in memory, of the full model's weights at the best finite monitored value so far.

    One instance spans both phases; the first epoch of a tie wins. In memory
    rather than a `ModelCheckpoint` file: writing the whole model (59 MB for
    VGG16) at every improvement cost more than an epoch of head training on
    cached activations.

    Attributes:
        best: the best value so far as it ranks (the value for mode `"min"`,
            its negation for `"max"`), `inf` before any finite value.
        weights: `full_model.get_weights()` (a list of NumPy arrays) at the
            best value, or `None` while no monitored value was finite.

    Args:
        full_model: the model whose weights are kept.
        monitor: a `monitor_of` name. Defaults to `"val_loss"`.

    Raises:
        ValueError: `monitor` is not a `monitor_of` name.
    """

    def __init__(self, full_model: keras.Model, monitor: str = "val_loss"):
        super().__init__()
        self.key, self.mode = monitor_of(monitor)
        self.full_model, self.best, self.weights = full_model, np.inf, None

    def on_epoch_end(self, epoch, logs=None):
        rank = _rank_value((logs or {}).get(self.key, np.nan), self.mode)
        if rank < self.best:
            self.best, self.weights = rank, self.full_model.get_weights()


class EpochTimer(keras.callbacks.Callback):
    """Adds `epoch_s`, the epoch's wall-clock seconds (training and validation, `time.perf_counter`), to the logs.

    Placed before the callbacks that read the logs (TensorBoard, a pruner), so
    they see `epoch_s` too.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["epoch_s"] = time.perf_counter() - self._start


class KeepCheckpoints(keras.callbacks.Callback):
    """Deletes the per-epoch checkpoints that neither rule keeps: the last `keep_last`, the `keep_best` best.

    One instance spans both phases (epochs are numbered across them) and
    runs after the `TrainedWeightsCheckpoint` that wrote the epoch's file.
    Best is by the monitored value (`monitor_of`), the earlier epoch first on
    a tie, non-finite values last.

    Args:
        run_dir: the run folder (`<run_dir>/checkpoints/`).
        keep_last: how many of the last epochs to keep (0: none by this rule).
        keep_best: how many of the best epochs to keep, or `None` (none by
            this rule).
        monitor: a `monitor_of` name. Defaults to `"val_loss"`.

    Raises:
        ValueError: `monitor` is not a `monitor_of` name.
    """

    def __init__(self, run_dir: Path, keep_last: int, keep_best: int | None, monitor: str = "val_loss"):
        super().__init__()
        self.run_dir, self.keep_last, self.keep_best = run_dir, keep_last, keep_best or 0
        self.key, self.mode = monitor_of(monitor)
        self.values: dict[int, float] = {}

    def kept_epochs(self) -> set[int]:
        """The 1-based epochs whose files are kept, of those seen so far."""
        epochs = sorted(self.values)
        last = epochs[max(0, len(epochs) - self.keep_last):] if self.keep_last else []
        ranked = sorted(epochs, key=lambda e: (_rank_value(self.values[e], self.mode), e))
        return set(last) | set(ranked[:self.keep_best])

    def on_epoch_end(self, epoch, logs=None):
        self.values[epoch + 1] = float((logs or {}).get(self.key, np.nan))
        kept = self.kept_epochs()
        for old in self.values:
            if old not in kept:
                checkpoint_path(self.run_dir, old).unlink(missing_ok=True)


def checkpoint_keeper(output_dir: Path, spec: ExperimentSpec) -> KeepCheckpoints | None:
    """The run's one `KeepCheckpoints`, shared by both phases, or `None` when it would delete nothing.

    Args:
        output_dir: the run folder.
        spec: the run's parameters; reads `keep_checkpoints`,
            `keep_best_checkpoints` and `checkpoint_monitor`.

    Returns:
        A `KeepCheckpoints` keeping the last `spec.keep_checkpoints` and the
        `spec.keep_best_checkpoints` best by `spec.checkpoint_monitor`; `None`
        when every checkpoint is kept (`keep_checkpoints: null`) or none is
        written (`keep_checkpoints: 0` without `keep_best_checkpoints`).
    """
    if spec.keep_checkpoints is None or not (spec.keep_checkpoints or spec.keep_best_checkpoints):
        return None
    return KeepCheckpoints(output_dir, spec.keep_checkpoints, spec.keep_best_checkpoints,
                           spec.checkpoint_monitor)


def checkpoint_callbacks(model: keras.Model, output_dir: Path, spec: ExperimentSpec,
                         keeper: KeepCheckpoints | None) -> list[keras.callbacks.Callback]:
    """A phase's per-epoch checkpoint callbacks: the writer, then the keeper that deletes what it does not keep.

    Args:
        model: the full model from `build_model` (its variables are written,
            whichever model a phase fits).
        output_dir: the run folder (`<output_dir>/checkpoints/`).
        spec: the run's parameters; reads `keep_checkpoints` and
            `keep_best_checkpoints`.
        keeper: the run's `checkpoint_keeper(output_dir, spec)`, or `None`.

    Returns:
        `[TrainedWeightsCheckpoint]`, followed by `keeper` when there is one;
        `[]` when no checkpoint is kept (`keep_checkpoints: 0`, the default,
        without `keep_best_checkpoints`).
    """
    if spec.keep_checkpoints == 0 and not spec.keep_best_checkpoints:
        return []
    return [TrainedWeightsCheckpoint(model, output_dir, spec)] + ([keeper] if keeper else [])


def learning_rate_of(model: keras.Model) -> float:
    """The learning rate of a compiled model's optimizer now.

    Args:
        model: a compiled model (`model.optimizer` set).

    Returns:
        The rate as a Python float: the optimizer's float32 variable, or, with
        a `LearningRateSchedule`, the schedule's value at the optimizer's
        current step.
    """
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class LinearWarmup(keras.callbacks.Callback):
    """Linear learning-rate warm-up over a phase's first `warmup_steps` steps (Goyal et al. 2017).

    Step `i` (0-based in the phase) trains at `rate * i / warmup_steps`, as
    `keras.optimizers.schedules.CosineDecay` warms up from 0 to its
    `warmup_target`; from step `warmup_steps` on, at `rate`. `rate` is the
    optimizer's rate at the start of each epoch, so a `step` schedule placed
    before this callback sets it; a `plateau` reduction during the warm-up
    (seen as a changed rate at the end of an epoch) scales it. Between
    epochs the optimizer holds the un-warmed rate; the epoch's logged
    `learning_rate` is the rate of its last step.

    Args:
        warmup_steps: steps (batches) of the warm-up, >= 1.
    """

    def __init__(self, warmup_steps: int):
        super().__init__()
        self.warmup_steps, self.step, self._last = warmup_steps, 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.rate = learning_rate_of(self.model)

    def on_train_batch_begin(self, batch, logs=None):
        if self.step <= self.warmup_steps:
            self._last = self.rate * self.step / self.warmup_steps
            self.model.optimizer.learning_rate = self._last
        self.step += 1

    def on_epoch_end(self, epoch, logs=None):
        if self._last is None:
            return
        current = learning_rate_of(self.model)
        used = float(np.float32(self._last))
        if used > 0 and not np.isclose(current, used, rtol=1e-5):  # a plateau reduction
            self.rate *= current / used
        if logs is not None:
            logs["learning_rate"] = used
        self.model.optimizer.learning_rate = self.rate
        self._last = None


def early_stopping_callback(spec: ExperimentSpec) -> keras.callbacks.EarlyStopping:
    """A phase's `EarlyStopping` on `spec.early_stopping_monitor`.

    Args:
        spec: the run's parameters; reads `early_stopping_monitor` and
            `early_stopping_patience` (epochs without improvement).

    Returns:
        A `keras.callbacks.EarlyStopping` on the monitor's log key and mode
        (`monitor_of`), e.g. `("val_accuracy", "max")` for
        `val_weighted_recall`, with `patience=spec.early_stopping_patience`.
    """
    key, mode = monitor_of(spec.early_stopping_monitor)
    return keras.callbacks.EarlyStopping(monitor=key, mode=mode, patience=spec.early_stopping_patience)
