"""Training: the head on a frozen base, then optional fine-tuning of the base's top layers.

The two phases follow Keras's transfer-learning guide ("Transfer learning &
fine-tuning", keras.io/guides/transfer_learning): train the new head with the
pretrained base frozen, then unfreeze the top of the base (BatchNormalization
layers stay frozen) and go on at a low learning rate. One best-weights
tracker spans both phases, so the weights with the best `val_loss` of the
whole run are the ones kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from . import cache
from .data import DataSplit, make_dataset
from .spec import ExperimentSpec

HEAD, FINE_TUNE = "head", "fine_tune"
MODEL_FILE = "model.keras"
TENSORBOARD_DIR = "tensorboard"
"""Per-run TensorBoard logs, `<output_dir>/tensorboard/{train,validation}/` (epoch scalars)."""
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PATTERN = "epoch_{epoch}.weights.h5"
"""Per-epoch weights: `<output_dir>/checkpoints/epoch_<k>.weights.h5`, k 1-based across phases."""


def checkpoint_path(run_dir, epoch: int) -> Path:
    """The weights file of epoch `epoch` (1-based, across phases) of a run folder."""
    return Path(run_dir) / CHECKPOINT_DIR / CHECKPOINT_PATTERN.format(epoch=epoch)


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
    """Keeps a copy, in memory, of the full model's weights at the lowest finite `val_loss` so far.

    One instance spans both phases. In memory rather than a `ModelCheckpoint`
    file: writing the whole model (59 MB for VGG16) at every improvement
    cost more than an epoch of head training on cached activations.
    """

    def __init__(self, full_model: keras.Model):
        super().__init__()
        self.full_model, self.best, self.weights = full_model, np.inf, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_loss", np.nan)
        if np.isfinite(value) and value < self.best:
            self.best, self.weights = value, self.full_model.get_weights()


class _EpochTimer(keras.callbacks.Callback):
    """Adds `epoch_s`, the epoch's wall-clock seconds (training + validation), to the logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["epoch_s"] = time.perf_counter() - self._start


class _KeepLastCheckpoints(keras.callbacks.Callback):
    """Deletes per-epoch checkpoints older than the last `keep` epochs."""

    def __init__(self, run_dir: Path, keep: int):
        super().__init__()
        self.run_dir, self.keep = run_dir, keep

    def on_epoch_end(self, epoch, logs=None):
        checkpoint_path(self.run_dir, epoch + 1 - self.keep).unlink(missing_ok=True)


def _checkpoint_callbacks(model: keras.Model, output_dir: Path, keep) -> list[keras.callbacks.Callback]:
    if keep == 0:
        return []
    callbacks = [_FullModelCheckpoint(
        model, output_dir / CHECKPOINT_DIR / CHECKPOINT_PATTERN, save_weights_only=True)]
    return callbacks + ([_KeepLastCheckpoints(output_dir, keep)] if keep else [])


@dataclass
class TrainingResult:
    """What `train_model` did.

    Attributes:
        history: per phase (`"head"`, then `"fine_tune"` if it ran), the
            per-epoch `loss`, `accuracy`, `val_loss`, `val_accuracy`,
            `learning_rate` and `epoch_s` (seconds) as lists of floats.
        best_epoch: epoch of the lowest `val_loss`, 1-based, counted across
            both phases; its weights are the model's final weights.
        best_phase: the phase of `best_epoch`.
        epochs_run: epochs actually run in both phases (early stopping
            included).
        train_s: wall-clock time of both phases, seconds (building cache
            entries included).
        activation_cache: per phase, how its inputs were obtained
            (`models.cache`): `status` `"hit"` or `"built"` (with `key`,
            `cut_layer`, `dtype`, `augmented_copies`, `build_s`, `entry`,
            `shapes`), or `"bypassed"` / `"off"` with the `reason`.
    """

    history: dict[str, dict[str, list[float]]]
    best_epoch: int
    best_phase: str
    epochs_run: int
    train_s: float
    activation_cache: dict[str, dict]

    def to_dict(self) -> dict:
        """Returns the fields as a JSON-safe dict."""
        return asdict(self)


def unfreeze_base(model: keras.Model, num_layers: int) -> list[str]:
    """Unfreezes the last `num_layers` layers of the base for fine-tuning.

    The rest of the base stays frozen, and so do all BatchNormalization
    layers (their statistics would be ruined by small batches; Keras
    transfer-learning guide). Recompile the model afterwards.

    Args:
        model: a model from `build_model`, with a layer named `"base"`.
        num_layers: how many of the base's last layers (`base.layers[-n:]`)
            to unfreeze; more than the base has unfreezes all of them.

    Returns:
        The names of the base layers now trainable.
    """
    base = model.get_layer("base")
    base.trainable = True
    first = len(base.layers) - num_layers
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= first and not isinstance(layer, keras.layers.BatchNormalization)
    return [layer.name for layer in base.layers if layer.trainable]


def _optimizer(spec: ExperimentSpec, learning_rate) -> keras.optimizers.Optimizer:
    if spec.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=spec.momentum)
    if spec.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=spec.weight_decay)
    return keras.optimizers.Adam(learning_rate)


def _compile(model: keras.Model, spec: ExperimentSpec, learning_rate) -> None:
    model.compile(optimizer=_optimizer(spec, learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def _schedule_callbacks(spec: ExperimentSpec) -> list[keras.callbacks.Callback]:
    if spec.lr_schedule == "step":
        milestones = set(spec.lr_step_milestones)
        return [keras.callbacks.LearningRateScheduler(
            lambda epoch, lr: lr * spec.lr_step_gamma if epoch in milestones else lr)]
    if spec.lr_schedule == "plateau":
        return [keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=spec.lr_plateau_factor,
            patience=spec.lr_plateau_patience)]
    return []


def train_model(
    model: keras.Model,
    data: DataSplit,
    spec: ExperimentSpec,
    output_dir,
    *,
    verbose=2,
) -> TrainingResult:
    """Trains a model from `build_model`: head phase, then optional fine-tuning.

    Head phase: `spec.epochs` epochs of `spec.optimizer` at
    `spec.learning_rate` with `spec.lr_schedule` (`step`:
    `LearningRateScheduler` multiplying by `lr_step_gamma` at each milestone
    epoch; `plateau`: `ReduceLROnPlateau`; `cosine`: `CosineDecay` over the
    phase's steps), sparse categorical cross-entropy, training batches
    shuffled and augmented with `spec.augmentation`, `class_weight="balanced"`
    from scikit-learn's `compute_class_weight` when asked, `EarlyStopping` on
    `val_loss` when `spec.early_stopping_patience` is set.

    Fine-tuning phase (when `spec.fine_tune_layers > 0`): `unfreeze_base`
    (a from-scratch base, already trainable, is left as it is), recompile at
    a constant `spec.fine_tune_learning_rate` and train `spec.fine_tune_epochs`
    more epochs, numbered on from the head phase.

    Per-epoch scalars (loss, accuracy, learning rate; steps = epochs across
    both phases) go to TensorBoard logs in `<output_dir>/tensorboard/`, so
    `tensorboard --logdir experiments` compares the runs' curves.

    Every epoch's weights go to `<output_dir>/checkpoints/epoch_<k>.weights.h5`
    (k 1-based across both phases; the last `spec.keep_checkpoints` kept, all
    when `None`), so a later run can warm-start from any epoch.

    The weights of the lowest `val_loss` of both phases are kept (in memory)
    and restored at the end; the full model is then saved to
    `<output_dir>/model.keras`.

    With `spec.activation_cache`, each phase whose lower layers are frozen
    (head phase: the whole base; fine-tuning: all but the last
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

    Returns:
        A `TrainingResult`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    best_weights = _BestWeights(model)
    class_weight = None
    if spec.class_weight == "balanced":
        classes = np.arange(len(data.class_names))
        class_weight = dict(enumerate(compute_class_weight(
            "balanced", classes=classes, y=data.train.labels).tolist()))
    cache_use: dict[str, dict] = {}

    def fit(phase: str, trainable_base_layers: int, learning_rate, epochs: int, initial_epoch: int,
            schedule) -> dict[str, list[float]]:
        fit_model, train_ds, val_ds, cache_use[phase] = _phase_inputs(
            model, data, spec, trainable_base_layers)
        _compile(fit_model, spec, learning_rate)
        callbacks = [
            _EpochTimer(),
            keras.callbacks.TensorBoard(output_dir / TENSORBOARD_DIR, write_graph=False, profile_batch=0),
            best_weights,
            *schedule,
            *_checkpoint_callbacks(model, output_dir, spec.keep_checkpoints),
            keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.setdefault(
                "learning_rate", float(keras.ops.convert_to_numpy(fit_model.optimizer.learning_rate)))),
        ]
        if spec.early_stopping_patience:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=spec.early_stopping_patience))
        history = fit_model.fit(train_ds, validation_data=val_ds, epochs=epochs,
                                initial_epoch=initial_epoch, class_weight=class_weight,
                                callbacks=callbacks, verbose=verbose,
                                shuffle=False)  # train_ds reshuffles itself every epoch
        return {key: [float(v) for v in values] for key, values in history.history.items()}

    start = time.perf_counter()
    learning_rate = spec.learning_rate
    if spec.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            spec.learning_rate,
            decay_steps=spec.epochs * math.ceil(len(data.train) / spec.batch_size))
    history = {HEAD: fit(HEAD, 0, learning_rate, spec.epochs, 0, _schedule_callbacks(spec))}
    head_epochs = len(history[HEAD]["val_loss"])
    if spec.fine_tune_layers:
        if not spec.from_scratch:
            unfreeze_base(model, spec.fine_tune_layers)
        history[FINE_TUNE] = fit(FINE_TUNE, spec.fine_tune_layers, spec.fine_tune_learning_rate,
                                 head_epochs + spec.fine_tune_epochs, head_epochs, [])
    train_s = time.perf_counter() - start

    val_losses = np.array([v for phase in history.values() for v in phase["val_loss"]])
    best = int(np.argmin(np.where(np.isfinite(val_losses), val_losses, np.inf)))
    if best_weights.weights is not None:  # None only if val_loss was never finite
        model.set_weights(best_weights.weights)
    if getattr(model, "optimizer", None) is None:  # only the top part was fitted: save the full model compiled alike
        _compile(model, spec, spec.fine_tune_learning_rate if spec.fine_tune_layers else spec.learning_rate)
        model.optimizer.build(model.trainable_variables)  # so loading it does not warn of a missing state
    model.save(output_dir / MODEL_FILE)
    return TrainingResult(
        history=history, best_epoch=best + 1,
        best_phase=HEAD if best < head_epochs else FINE_TUNE,
        epochs_run=len(val_losses), train_s=train_s, activation_cache=cache_use)


def _phase_inputs(model: keras.Model, data: DataSplit, spec: ExperimentSpec, trainable_base_layers: int):
    """What a phase fits: `(model to fit, train dataset, val dataset, cache description)`.

    From the activation cache (the top part of the cut model on stored
    features) when it applies, else the full model on images.
    """
    try:
        cached = cache.cached_inputs(model, data, spec, trainable_base_layers)
    except cache.CacheBypass as exc:
        status = cache.OFF if not spec.activation_cache else cache.BYPASSED
        train_ds = make_dataset(data.train, spec.image_size, spec.batch_size, shuffle=True,
                                seed=spec.seed, augmentation=spec.augmentation)
        val_ds = make_dataset(data.val, spec.image_size, spec.batch_size)
        return model, train_ds, val_ds, {"status": status, "reason": str(exc)}
    train = [array for name, array in sorted(cached.arrays.items()) if name.startswith("train")]
    train_ds = cache.feature_dataset(train, data.train.labels, spec.batch_size, shuffle=True, seed=spec.seed)
    val_ds = cache.feature_dataset([cached.arrays["val"]], data.val.labels, spec.batch_size)
    return cached.split.top, train_ds, val_ds, cached.info
