"""Training: the head on a frozen base, then optional fine-tuning of the base's top layers.

The two phases follow Keras's transfer-learning guide ("Transfer learning &
fine-tuning", keras.io/guides/transfer_learning): train the new head with the
pretrained base frozen, then unfreeze the top of the base (BatchNormalization
layers stay frozen unless `unfreeze_batchnorm`) and go on at a low learning
rate. `epochs: 0` skips the head phase and fine-tunes from the first epoch.
One best-weights tracker spans both phases, so the weights with the best
`checkpoint_monitor` value (`val_loss` by default) of the whole run are the
ones kept.

Each phase has its own schedule (`lr_schedule`, `fine_tune_lr_schedule`) and
an optional linear warm-up (`warmup_epochs`; Goyal et al. 2017, "Accurate,
Large Minibatch SGD: Training ImageNet in 1 Hour"); `label_smoothing` smooths
the cross-entropy targets (Szegedy et al. 2016, "Rethinking the Inception
Architecture for Computer Vision").
"""

from __future__ import annotations

import difflib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from . import cache
from .errors import ModelConfigError
from .pruning import pruning_callback
from .data import DataSplit, batch_arrays, make_dataset
from .spec import ExperimentSpec, FineTuneFrom

from .names import CHECKPOINT_DIR, CHECKPOINT_PATTERN, FINE_TUNE, HEAD, MODEL_FILE, TENSORBOARD_DIR, checkpoint_path


_MONITORS = {"val_loss": ("val_loss", "min"), "val_accuracy": ("val_accuracy", "max"),
             "val_weighted_recall": ("val_accuracy", "max")}


def monitor_of(name: str) -> tuple[str, str]:
    """The Keras log key and mode of a monitor (`early_stopping_monitor`, `checkpoint_monitor`).

    For single-label classification the weighted recall is the accuracy:
    `sum_c (n_c / n) * TP_c / n_c = sum_c TP_c / n`, so `"val_weighted_recall"`
    follows Keras's `val_accuracy`.

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


def _best_index(values, mode: str) -> int:
    """Index of the first best finite value (0 when none is finite), as `_BestWeights` keeps it."""
    ranks = [_rank_value(v, mode) for v in values]
    return int(np.argmin(ranks)) if ranks else 0


class _FullModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """A `ModelCheckpoint` that saves the full model while the top part of a cut model is fitted.

    The top part (`models.cache.FrozenSplit.top`) shares its layers with the
    full model, so the full model's weights are the trained ones; saving
    them keeps the per-epoch checkpoints loadable into the full model
    whichever path trained it.
    """

    def __init__(self, full_model: keras.Model, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._full_model = full_model

    def set_model(self, model):
        super().set_model(self._full_model)


class _BestWeights(keras.callbacks.Callback):
    """Keeps a copy, in memory, of the full model's weights at the best finite monitored value so far.

    One instance spans both phases; the first epoch of a tie wins. In memory
    rather than a `ModelCheckpoint` file: writing the whole model (59 MB for
    VGG16) at every improvement cost more than an epoch of head training on
    cached activations.

    Args:
        full_model: the model whose weights are kept.
        monitor: a `monitor_of` name. Defaults to `"val_loss"`.
    """

    def __init__(self, full_model: keras.Model, monitor: str = "val_loss"):
        super().__init__()
        self.key, self.mode = monitor_of(monitor)
        self.full_model, self.best, self.weights = full_model, np.inf, None

    def on_epoch_end(self, epoch, logs=None):
        rank = _rank_value((logs or {}).get(self.key, np.nan), self.mode)
        if rank < self.best:
            self.best, self.weights = rank, self.full_model.get_weights()


class _EpochTimer(keras.callbacks.Callback):
    """Adds `epoch_s`, the epoch's wall-clock seconds (training + validation), to the logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["epoch_s"] = time.perf_counter() - self._start


class _KeepCheckpoints(keras.callbacks.Callback):
    """Deletes the per-epoch checkpoints that neither rule keeps: the last `keep_last`, the `keep_best` best.

    One instance spans both phases (epochs are numbered across them) and
    runs after the `ModelCheckpoint` that wrote the epoch's file. Best is by
    the monitored value (`monitor_of`), the earlier epoch first on a tie,
    non-finite values last.

    Args:
        run_dir: the run folder (`<run_dir>/checkpoints/`).
        keep_last: how many of the last epochs to keep (0: none by this rule).
        keep_best: how many of the best epochs to keep, or `None` (none by
            this rule).
        monitor: a `monitor_of` name. Defaults to `"val_loss"`.
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


def _checkpoint_keeper(output_dir: Path, spec: ExperimentSpec) -> _KeepCheckpoints | None:
    """The run's one `_KeepCheckpoints`, or `None` when every checkpoint is kept (or none written)."""
    if spec.keep_checkpoints is None or not (spec.keep_checkpoints or spec.keep_best_checkpoints):
        return None
    return _KeepCheckpoints(output_dir, spec.keep_checkpoints, spec.keep_best_checkpoints,
                            spec.checkpoint_monitor)


def _checkpoint_callbacks(model: keras.Model, output_dir: Path, spec: ExperimentSpec,
                          keeper: _KeepCheckpoints | None) -> list[keras.callbacks.Callback]:
    if spec.keep_checkpoints == 0 and not spec.keep_best_checkpoints:
        return []
    callbacks = [_FullModelCheckpoint(
        model, output_dir / CHECKPOINT_DIR / CHECKPOINT_PATTERN, save_weights_only=True)]
    return callbacks + ([keeper] if keeper else [])


def _learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class _LinearWarmup(keras.callbacks.Callback):
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
        self.rate = _learning_rate(self.model)

    def on_train_batch_begin(self, batch, logs=None):
        if self.step <= self.warmup_steps:
            self._last = self.rate * self.step / self.warmup_steps
            self.model.optimizer.learning_rate = self._last
        self.step += 1

    def on_epoch_end(self, epoch, logs=None):
        if self._last is None:
            return
        current = _learning_rate(self.model)
        used = float(np.float32(self._last))
        if used > 0 and not np.isclose(current, used, rtol=1e-5):  # a plateau reduction
            self.rate *= current / used
        if logs is not None:
            logs["learning_rate"] = used
        self.model.optimizer.learning_rate = self.rate
        self._last = None


@dataclass
class TrainingResult:
    """What `train_model` did.

    Attributes:
        history: per phase (`"head"` unless `epochs` is 0, then
            `"fine_tune"` if it ran), the per-epoch `loss`, `accuracy`,
            `val_loss`, `val_accuracy`, `learning_rate` (of the epoch's last
            step) and `epoch_s` (seconds) as lists of floats.
        best_epoch: epoch of the best `checkpoint_monitor` value (lowest
            `val_loss` by default), 1-based, counted across both phases; its
            weights are the model's final weights.
        best_phase: the phase of `best_epoch`.
        epochs_run: epochs actually run in both phases (early stopping
            included).
        train_s: wall-clock time of both phases, seconds (building cache
            entries included).
        activation_cache: per phase, how its inputs were obtained
            (`models.cache`): `status` `"hit"` or `"built"` (with `key`,
            `cut_layer`, `dtype`, `augmented_copies`, `build_s`, `entry`,
            `shapes`), or `"bypassed"` / `"off"` with the `reason`.
        pruned_epoch: the epoch (1-based, across phases) after which a
            search's pruner stopped training, or `None`.
        fine_tune_layers_resolved: how many of the base's last layers
            `fine_tune_layers` (a count, a fraction or `from_layer`) unfreezes
            (`resolve_fine_tune_layers`), or `None` without fine-tuning.
    """

    history: dict[str, dict[str, list[float]]]
    best_epoch: int
    best_phase: str
    epochs_run: int
    train_s: float
    activation_cache: dict[str, dict]
    pruned_epoch: int | None = None
    fine_tune_layers_resolved: int | None = None

    def to_dict(self) -> dict:
        """Returns the fields as a JSON-safe dict."""
        return asdict(self)


def _base_of(model_or_base: keras.Model) -> keras.Model:
    try:
        return model_or_base.get_layer("base")
    except ValueError:  # the base itself
        return model_or_base


def resolve_fine_tune_layers(model_or_base: keras.Model, spec: ExperimentSpec) -> int:
    """How many of the base's last layers `spec.fine_tune_layers` unfreezes.

    The base's layers are `base.layers` without its `InputLayer` (n of
    them). An int N gives `min(N, n)`; a float f in [0, 1] gives `f * n`
    rounded half up, at least 1 when f > 0 (`0.3` of VGG16's 18 layers: 5,
    block5's three convolutions, its pooling and block4's pooling); `{from_layer:
    name}` gives the count from that layer to the last one, itself
    included. Resolve once and pass the int on (`unfreeze_base`,
    `models.cache.split_model`), so training and evaluation cut the model
    at the same layer.

    Args:
        model_or_base: a model from `build_model` (its layer `"base"` is
            used) or the base itself.
        spec: the run's parameters; reads `fine_tune_layers`.

    Returns:
        The layer count, in [0, n].

    Raises:
        ModelConfigError: `from_layer` names no layer of the base; the
            message lists the closest names (`difflib`).
    """
    base = _base_of(model_or_base)
    layers = [layer for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]
    value = spec.fine_tune_layers
    if isinstance(value, FineTuneFrom):
        names = [layer.name for layer in layers]
        if value.from_layer not in names:
            close = difflib.get_close_matches(value.from_layer, names, n=5, cutoff=0.5)
            raise ModelConfigError(
                f"fine_tune_layers.from_layer: got {value.from_layer!r}, not a layer of base {spec.base} "
                f"({len(names)} layers, {names[0]!r} ... {names[-1]!r}); close names: "
                f"{', '.join(map(repr, close)) or 'none'}")
        return len(names) - names.index(value.from_layer)
    if isinstance(value, float):
        return 0 if value == 0 else min(len(layers), max(1, math.floor(value * len(layers) + 0.5)))
    return min(value, len(layers))


def unfreeze_base(model: keras.Model, num_layers: int, *, unfreeze_batchnorm: bool = False) -> list[str]:
    """Unfreezes the last `num_layers` layers of the base for fine-tuning.

    The rest of the base stays frozen, and so, unless `unfreeze_batchnorm`,
    do all BatchNormalization layers (Keras transfer-learning guide). Either
    way the base is called with `training=False` (`build_model`), so
    BatchNormalization layers keep their moving statistics: unfrozen, only
    their scale and offset train. Recompile the model afterwards.

    Args:
        model: a model from `build_model`, with a layer named `"base"`.
        num_layers: how many of the base's last layers (`base.layers[-n:]`)
            to unfreeze, e.g. from `resolve_fine_tune_layers`; more than the
            base has unfreezes all of them.
        unfreeze_batchnorm: unfreeze the BatchNormalization layers among
            them too. Defaults to `False`.

    Returns:
        The names of the base layers now trainable.
    """
    base = model.get_layer("base")
    base.trainable = True
    first = len(base.layers) - num_layers
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= first and (
            unfreeze_batchnorm or not isinstance(layer, keras.layers.BatchNormalization))
    return [layer.name for layer in base.layers if layer.trainable]


def set_precision_policy(spec: ExperimentSpec) -> None:
    """Sets Keras's global dtype policy to `spec.precision`; call it before building the model.

    Mixed precision computes in float16 / bfloat16 and keeps float32
    variables (Keras mixed-precision guide); the classifier's softmax stays
    float32 (`models.heads.add_head`), and Keras wraps the optimizer of a
    `mixed_float16` model in a `LossScaleOptimizer` when it compiles.

    Args:
        spec: the run's parameters; reads `precision`.

    Raises:
        ModelConfigError: mixed precision is asked and TensorFlow sees no
            GPU (`tf.config.list_physical_devices("GPU")` is empty).
    """
    if spec.precision != "float32" and not tf.config.list_physical_devices("GPU"):
        raise ModelConfigError(
            f"precision: got {spec.precision!r} but TensorFlow sees no GPU: on a CPU mixed precision is "
            f"unsupported or slower than float32 (no float16 / bfloat16 matrix units); use "
            f"precision: float32 here, or run on a machine with a GPU")
    keras.mixed_precision.set_global_policy(spec.precision)


def _check_precision(model: keras.Model, spec: ExperimentSpec) -> None:
    """Refuses a model whose base was built under another dtype policy than `spec.precision`."""
    set_precision_policy(spec)  # the parts train_model builds (models.cache's top part) follow it too
    built = _base_of(model).dtype_policy.name
    if built != spec.precision:
        raise ModelConfigError(
            f"precision: the model was built with dtype policy {built!r}, the spec asks {spec.precision!r}; "
            f"build it with models.build_model(spec), which sets the policy first")


def _optimizer(spec: ExperimentSpec, learning_rate) -> keras.optimizers.Optimizer:
    if spec.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=spec.momentum)
    if spec.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=spec.weight_decay)
    return keras.optimizers.Adam(learning_rate)


def _mixes_batches(spec: ExperimentSpec) -> bool:
    return spec.augmentation is not None and spec.augmentation.mixes_batches


def _one_hot_labels(spec: ExperimentSpec) -> bool:
    """True when the labels are one-hot and the loss categorical: mixup / cutmix, or label smoothing.

    Keras 3's `SparseCategoricalCrossentropy` has no `label_smoothing`.
    """
    return _mixes_batches(spec) or spec.label_smoothing > 0


def _compile(model: keras.Model, spec: ExperimentSpec, learning_rate) -> None:
    # mixup / cutmix give soft one-hot labels (and the val split one-hot ones): categorical loss
    if spec.label_smoothing > 0:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=spec.label_smoothing)
    else:
        loss = "categorical_crossentropy" if _mixes_batches(spec) else "sparse_categorical_crossentropy"
    model.compile(optimizer=_optimizer(spec, learning_rate), loss=loss, metrics=["accuracy"],
                  jit_compile=spec.jit_compile)


def _early_stopping(spec: ExperimentSpec) -> keras.callbacks.EarlyStopping:
    """A phase's `EarlyStopping` on `spec.early_stopping_monitor` (`monitor_of`: its key and mode)."""
    key, mode = monitor_of(spec.early_stopping_monitor)
    return keras.callbacks.EarlyStopping(monitor=key, mode=mode, patience=spec.early_stopping_patience)


def _phase_schedule(spec: ExperimentSpec, schedule, rate: float, epochs: int, steps_per_epoch: int,
                    first_epoch: int):
    """A phase's learning rate (a float or a `LearningRateSchedule`) and schedule callbacks.

    `step`: `LearningRateScheduler` multiplying by `lr_step_gamma` at each
    milestone epoch (counted from the phase's first epoch); `plateau`:
    `ReduceLROnPlateau` on `val_loss`; `cosine`: `CosineDecay` over the
    phase's steps. With `warmup_epochs`, `cosine` uses `CosineDecay`'s own
    linear warm-up from 0 (`warmup_target`, `warmup_steps`) and decays over
    the steps left; the others get `_LinearWarmup` after their callback.

    Returns:
        `(learning_rate, callbacks)` for `_compile` and `fit`.
    """
    warmup_steps = spec.warmup_epochs * steps_per_epoch
    if schedule == "cosine":
        if warmup_steps:
            return keras.optimizers.schedules.CosineDecay(
                0.0, decay_steps=(epochs - spec.warmup_epochs) * steps_per_epoch,
                warmup_target=rate, warmup_steps=warmup_steps), []
        return keras.optimizers.schedules.CosineDecay(rate, decay_steps=epochs * steps_per_epoch), []
    callbacks: list[keras.callbacks.Callback] = []
    if schedule == "step":
        milestones = set(spec.lr_step_milestones)
        callbacks.append(keras.callbacks.LearningRateScheduler(
            lambda epoch, lr: lr * spec.lr_step_gamma if epoch - first_epoch in milestones else lr))
    elif schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=spec.lr_plateau_factor, patience=spec.lr_plateau_patience))
    if warmup_steps:
        callbacks.append(_LinearWarmup(warmup_steps))
    return rate, callbacks


def train_model(
    model: keras.Model,
    data: DataSplit,
    spec: ExperimentSpec,
    output_dir,
    *,
    verbose=2,
    pruning=None,
) -> TrainingResult:
    """Trains a model from `build_model`: head phase, then optional fine-tuning.

    Head phase (skipped when `spec.epochs` is 0): `spec.epochs` epochs of
    `spec.optimizer` at `spec.learning_rate` with `spec.lr_schedule` (`step`:
    `LearningRateScheduler` multiplying by `lr_step_gamma` at each milestone
    epoch; `plateau`: `ReduceLROnPlateau`; `cosine`: `CosineDecay` over the
    phase's steps) after a linear warm-up over `spec.warmup_epochs` epochs
    (Goyal et al. 2017), sparse categorical cross-entropy (categorical, on
    one-hot labels of the training and validation splits, when `mixup` or
    `cutmix` gives soft labels or `spec.label_smoothing` > 0 smooths them,
    Szegedy et al. 2016), training batches shuffled and augmented with
    `spec.augmentation`, `class_weight="balanced"` from scikit-learn's
    `compute_class_weight` when asked, `EarlyStopping` on
    `spec.early_stopping_monitor` (mode `min` for `val_loss`, `max` for
    `val_accuracy` / `val_weighted_recall`) when
    `spec.early_stopping_patience` is set. The model is compiled with
    `jit_compile=spec.jit_compile`.

    Fine-tuning phase (when `spec.fine_tune_layers` is not 0): `unfreeze_base`
    of the last `resolve_fine_tune_layers(model, spec)` layers of the base
    (BatchNormalization too with `spec.unfreeze_batchnorm`), recompile at
    `spec.fine_tune_learning_rate` with `spec.fine_tune_lr_schedule` and the
    same warm-up, and train `spec.fine_tune_epochs` more epochs, numbered on
    from the head phase (from 1 without one).

    Per-epoch scalars (loss, accuracy, learning rate; steps = epochs across
    both phases) go to TensorBoard logs in `<output_dir>/tensorboard/`, so
    `tensorboard --logdir experiments` compares the runs' curves.

    Every epoch's weights go to `<output_dir>/checkpoints/epoch_<k>.weights.h5`
    (k 1-based across both phases; kept: all when `spec.keep_checkpoints` is
    `None`, else the last `keep_checkpoints` and the
    `spec.keep_best_checkpoints` best by `spec.checkpoint_monitor`), so a
    later run can warm-start from any kept epoch.

    The weights of the best `spec.checkpoint_monitor` value of both phases
    (the first epoch of a tie) are kept in memory and restored at the end;
    the full model is then saved to `<output_dir>/model.keras`.

    With `spec.activation_cache`, each phase whose lower layers are frozen
    (head phase: the whole base; fine-tuning: all but the resolved last
    `fine_tune_layers`) trains only the layers above the freeze boundary, on
    that boundary's outputs from `models.cache` (computed once per input and
    stored). The layers are the full model's own, so the checkpoints and
    `model.keras` are the full model either way; `TrainingResult.activation_cache`
    says per phase what happened.

    Args:
        model: a model from `build_model(spec, len(data.class_names))`.
        data: the split; trains on `data.train`, validates on `data.val`.
        spec: the run's parameters.
        output_dir: folder for `model.keras` (created if missing).
        verbose: `model.fit` verbosity: `"auto"`, 0, 1 (progress bar) or 2
            (one line per epoch). Defaults to `2`.
        pruning: a search's trial (the notebook's `pruning` parameter, see
            `models.pruning`): after each epoch the validation accuracy (=
            weighted recall) is reported and, when the pruner says so,
            training stops there (fine-tuning too). Defaults to `None`.

    Returns:
        A `TrainingResult`.

    Raises:
        ModelConfigError: before any epoch, when `fine_tune_layers.from_layer`
            names no layer of the base, mixed precision is asked without a
            GPU, or the model was built under another dtype policy than
            `spec.precision`.
    """
    _check_precision(model, spec)
    fine_tune_layers = resolve_fine_tune_layers(model, spec) if spec.fine_tunes else None
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    best_weights = _BestWeights(model, spec.checkpoint_monitor)
    keeper = _checkpoint_keeper(output_dir, spec)
    pruner = pruning_callback(pruning)
    class_weight = None
    if spec.class_weight == "balanced":
        classes = np.arange(len(data.class_names))
        class_weight = dict(enumerate(compute_class_weight(
            "balanced", classes=classes, y=data.train.labels).tolist()))
    cache_use: dict[str, dict] = {}
    steps_per_epoch = math.ceil(len(data.train) / spec.batch_size)

    def fit(phase: str, trainable_base_layers: int, rate: float, schedule, epochs: int,
            initial_epoch: int) -> dict[str, list[float]]:
        fit_model, train_ds, val_ds, cache_use[phase] = _phase_inputs(
            model, data, spec, trainable_base_layers)
        learning_rate, schedule_callbacks = _phase_schedule(
            spec, schedule, rate, epochs, steps_per_epoch, initial_epoch)
        _compile(fit_model, spec, learning_rate)
        callbacks = [
            _EpochTimer(),
            keras.callbacks.TensorBoard(output_dir / TENSORBOARD_DIR, write_graph=False, profile_batch=0),
            best_weights,
            *schedule_callbacks,
            *_checkpoint_callbacks(model, output_dir, spec, keeper),
            *([pruner] if pruner else []),
            keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.setdefault(
                "learning_rate", _learning_rate(fit_model))),
        ]
        if spec.early_stopping_patience:
            callbacks.append(_early_stopping(spec))
        history = fit_model.fit(train_ds, validation_data=val_ds, epochs=initial_epoch + epochs,
                                initial_epoch=initial_epoch, class_weight=class_weight,
                                callbacks=callbacks, verbose=verbose,
                                shuffle=False)  # train_ds reshuffles itself every epoch
        return {key: [float(v) for v in values] for key, values in history.history.items()}

    start = time.perf_counter()
    history = {}
    if spec.epochs:
        history[HEAD] = fit(HEAD, 0, spec.learning_rate, spec.lr_schedule, spec.epochs, 0)
    head_epochs = len(history[HEAD]["val_loss"]) if HEAD in history else 0
    if fine_tune_layers is not None and not (pruner and pruner.pruned_epoch):
        unfreeze_base(model, fine_tune_layers, unfreeze_batchnorm=spec.unfreeze_batchnorm)
        history[FINE_TUNE] = fit(FINE_TUNE, fine_tune_layers, spec.fine_tune_learning_rate,
                                 spec.fine_tune_lr_schedule, spec.fine_tune_epochs, head_epochs)
    train_s = time.perf_counter() - start

    best_key, best_mode = monitor_of(spec.checkpoint_monitor)
    monitored = [v for phase in history.values() for v in phase.get(best_key, [])]
    best = _best_index(monitored, best_mode)
    if best_weights.weights is not None:  # None only if the monitored value was never finite
        model.set_weights(best_weights.weights)
    if getattr(model, "optimizer", None) is None:  # only the top part was fitted: save the full model compiled alike
        _compile(model, spec, spec.fine_tune_learning_rate if spec.fine_tunes else spec.learning_rate)
        model.optimizer.build(model.trainable_variables)  # so loading it does not warn of a missing state
    model.save(output_dir / MODEL_FILE)
    return TrainingResult(
        history=history, best_epoch=best + 1,
        best_phase=HEAD if best < head_epochs else FINE_TUNE,
        epochs_run=sum(len(phase["val_loss"]) for phase in history.values()), train_s=train_s,
        activation_cache=cache_use, pruned_epoch=pruner.pruned_epoch if pruner else None,
        fine_tune_layers_resolved=fine_tune_layers)


def _phase_inputs(model: keras.Model, data: DataSplit, spec: ExperimentSpec, trainable_base_layers: int):
    """What a phase fits: `(model to fit, train dataset, val dataset, cache description)`.

    From the activation cache (the top part of the cut model on stored
    features) when it applies, else the full model on images. Labels are
    one-hot on both paths when `_one_hot_labels(spec)`.
    """
    num_classes = len(data.class_names) if _one_hot_labels(spec) else None
    try:
        cached = cache.cached_inputs(model, data, spec, trainable_base_layers)
    except cache.CacheBypass as exc:
        status = cache.OFF if not spec.activation_cache else cache.BYPASSED
        train_ds = make_dataset(data.train, spec.image_size, spec.batch_size, shuffle=True,
                                seed=spec.seed, augmentation=spec.augmentation, num_classes=num_classes,
                                sampler=spec.sampler)
        val_ds = make_dataset(data.val, spec.image_size, spec.batch_size, num_classes=num_classes)
        return model, train_ds, val_ds, {"status": status, "reason": str(exc)}
    train = [array for name, array in sorted(cached.arrays.items()) if name.startswith("train")]
    if spec.sampler:  # balanced batches of the stored features, drawn as make_dataset draws images
        train_ds = batch_arrays(train, data.train.labels, spec.batch_size, shuffle=True, seed=spec.seed,
                                sampler=spec.sampler, num_classes=num_classes)
    else:
        train_ds = cache.feature_dataset(train, data.train.labels, spec.batch_size, shuffle=True,
                                         seed=spec.seed, num_classes=num_classes)
    val_ds = cache.feature_dataset([cached.arrays["val"]], data.val.labels, spec.batch_size,
                                   num_classes=num_classes)
    return cached.split.top, train_ds, val_ds, cached.info
