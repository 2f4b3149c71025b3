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

import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
import keras
import numpy as np
from sklearn.utils.class_weight import compute_class_weight
from .. import cache
from ..pruning import pruning_callback
from ..data import DataSplit, batch_arrays, make_dataset
from ..spec import ExperimentSpec
from ..names import FINE_TUNE, HEAD, TENSORBOARD_DIR
from ..saving import save_run_weights
from .callbacks import _BestWeights, _EpochTimer, _best_index, _checkpoint_callbacks, _checkpoint_keeper, _early_stopping, _learning_rate, monitor_of
from .fine_tuning import resolve_fine_tune_layers, unfreeze_base
from . import averaging
from .schedules import _check_precision, _optimizer, _phase_schedule


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
        weight_averaging: what weight averaging did, or `None` without
            `ema` / `swa_epochs`: `{"method": "ema", "applied": True,
            "momentum", "phases"}`, or `{"method": "swa", "applied",
            "epochs"` (1-based, across phases, the epochs averaged; empty when
            the fine-tuning phase never ran, e.g. pruned, and `applied` is
            then `False`), `"batchnorm_recomputed"` (layer paths),
            `"batchnorm_rows"` (rows of the recomputation pass)`}`.
        train_on_val: trained on the training and validation splits
            (`ExperimentSpec.train_on_val`): no validation figures, the last
            epoch's weights kept.
    """

    history: dict[str, dict[str, list[float]]]
    best_epoch: int
    best_phase: str
    epochs_run: int
    train_s: float
    activation_cache: dict[str, dict]
    pruned_epoch: int | None = None
    fine_tune_layers_resolved: int | None = None
    weight_averaging: dict | None = None
    train_on_val: bool = False

    def to_dict(self) -> dict:
        """Returns the fields as a JSON-safe dict."""
        return asdict(self)


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

    Every epoch's trained weights go to
    `<output_dir>/checkpoints/epoch_<k>.trained_weights.h5` (k 1-based across
    both phases; `models.training.callbacks.TrainedWeightsCheckpoint`; kept:
    none by default (`keep_checkpoints: 0`), all when `spec.keep_checkpoints`
    is `None`, else the last `keep_checkpoints` and the
    `spec.keep_best_checkpoints` best by `spec.checkpoint_monitor`), so a
    later run can warm-start from any kept epoch.

    The weights of the best `spec.checkpoint_monitor` value of both phases
    (the first epoch of a tie) are kept in memory and restored at the end,
    then saved by `models.saving.save_run_weights`: to
    `<output_dir>/trained_weights.h5` (only what trained, plus the base's
    identity) when the base is frozen, in whole or part, as `build_model`
    built it, else the full model to `<output_dir>/model.keras`.

    Weight averaging (`models.training.averaging`): with `spec.ema` the
    optimizers keep an exponential moving average of the weights, and the
    averaged weights are what every epoch validates, the best-weights
    tracker keeps, the checkpoints hold and the run's weights file saves. With
    `spec.swa_epochs` = k the model ends with the mean of the last k
    fine-tuning epochs' weights (not the best epoch's; `best_epoch` is then
    the last epoch), BatchNormalization statistics recomputed on the
    phase's training batches for the layers that trained in training mode.

    With `spec.train_on_val` (`data.val` is empty) nothing is validated:
    every epoch runs and the last epoch's weights (averaged, with
    `ema` / `swa_epochs`) are kept; `best_epoch` is the last epoch.

    With `spec.activation_cache`, each phase whose lower layers are frozen
    (head phase: the whole base; fine-tuning: all but the resolved last
    `fine_tune_layers`) trains only the layers above the freeze boundary, on
    that boundary's outputs from `models.cache` (computed once per input and
    stored). The layers are the full model's own, so the checkpoints and
    the run's weights file are the full model's either way; `TrainingResult.activation_cache`
    says per phase what happened.

    Args:
        model: a model from `build_model(spec, len(data.class_names))`.
        data: the split; trains on `data.train`, validates on `data.val`.
        spec: the run's parameters.
        output_dir: the run folder, for the weights, checkpoints and TensorBoard
            logs (created if missing).
        verbose: `model.fit` verbosity: `"auto"`, 0, 1 (progress bar) or 2
            (one line per epoch). Defaults to `2`.
        pruning: a search's trial (the notebook's `pruning` parameter, see
            `models.pruning`): after each epoch its `metric` (the sweep's
            ranking metric on the validation split, e.g.
            `val_weighted_recall`) is reported and, when the pruner says so,
            training stops there (fine-tuning too). Defaults to `None`.

    Returns:
        A `TrainingResult`.

    Raises:
        ModelConfigError: before any epoch, when `fine_tune_layers.from_layer`
            names no layer of the base, mixed precision is asked without a
            GPU, or the model was built under another dtype policy than
            `spec.precision`.
    """
    cache.take_damage_reports()  # only damage found while this run reads counts
    initial = _ModelState(model)
    try:
        return _train(model, data, spec, output_dir, verbose=verbose, pruning=pruning)
    except Exception:
        damage = cache.take_damage_reports()
        if not damage:
            raise
    # a stored chunk failed its CRC-32 while read (the entry is deleted): train again on a rebuilt entry
    warnings.warn(f"activation cache: {'; '.join(damage)}; training again from the start on a rebuilt entry",
                  RuntimeWarning, stacklevel=2)
    initial.restore(model)
    return _train(model, data, spec, output_dir, verbose=verbose, pruning=pruning)


class _ModelState:
    """A model's variables (weights and the seed generators' states) and every layer's `trainable` flag,
    to put back before training again."""

    def __init__(self, model: keras.Model):
        self.values = [(variable, keras.ops.convert_to_numpy(variable)) for variable in model.variables]
        self.trainable = [(layer, layer.trainable) for layer in _all_layers(model)]

    def restore(self, model: keras.Model) -> None:
        for layer, trainable in self.trainable:
            layer.trainable = trainable
        for variable, value in self.values:
            variable.assign(value)


def _all_layers(layer) -> list:
    """`layer` and every layer nested in it, depth first."""
    return [layer, *(nested for child in getattr(layer, "layers", []) for nested in _all_layers(child))]


def _train(model: keras.Model, data: DataSplit, spec: ExperimentSpec, output_dir, *, verbose,
           pruning) -> TrainingResult:
    """`train_model`'s one attempt (see there)."""
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
    validates = len(data.val) > 0  # no validation split with train_on_val
    swa = averaging.LastEpochs(model, spec.swa_epochs) if spec.swa_epochs else None
    fitted: dict[str, tuple] = {}  # phase -> (model fitted, its training batches), for the BatchNorm pass

    def fit(phase: str, trainable_base_layers: int, rate: float, schedule, epochs: int,
            initial_epoch: int) -> dict[str, list[float]]:
        fit_model, train_ds, val_ds, cache_use[phase] = _phase_inputs(
            model, data, spec, trainable_base_layers)
        learning_rate, schedule_callbacks = _phase_schedule(
            spec, schedule, rate, epochs, steps_per_epoch, initial_epoch)
        _compile(fit_model, spec, learning_rate)
        fitted[phase] = (fit_model, train_ds)
        callbacks = [
            *([averaging.EmaInModel()] if spec.ema is not None else []),  # first: the others see the average
            _EpochTimer(),
            keras.callbacks.TensorBoard(output_dir / TENSORBOARD_DIR, write_graph=False, profile_batch=0),
            best_weights,
            *schedule_callbacks,
            *_checkpoint_callbacks(model, output_dir, spec, keeper),
            *([pruner] if pruner else []),
            *([swa] if swa is not None and phase == FINE_TUNE else []),
            keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.setdefault(
                "learning_rate", _learning_rate(fit_model))),
        ]
        if spec.early_stopping_patience and validates:
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
    head_epochs = len(history[HEAD]["loss"]) if HEAD in history else 0
    batchnorm_before = None
    if fine_tune_layers is not None and not (pruner and pruner.pruned_epoch):
        unfreeze_base(model, fine_tune_layers, unfreeze_batchnorm=spec.unfreeze_batchnorm)
        batchnorm_before = averaging.moving_statistics(averaging.batchnorm_layers(model))
        history[FINE_TUNE] = fit(FINE_TUNE, fine_tune_layers, spec.fine_tune_learning_rate,
                                 spec.fine_tune_lr_schedule, spec.fine_tune_epochs, head_epochs)
    epochs_run = sum(len(phase["loss"]) for phase in history.values())
    weight_averaging = None
    if spec.ema is not None:
        weight_averaging = {"method": averaging.EMA, "applied": True, "momentum": spec.ema, "phases": list(history)}
    if swa is not None:
        weight_averaging = _apply_swa(model, swa, batchnorm_before, fitted.get(FINE_TUNE))
    train_s = time.perf_counter() - start

    best_key, best_mode = monitor_of(spec.checkpoint_monitor)
    monitored = [v for phase in history.values() for v in phase.get(best_key, [])]
    best = _best_index(monitored, best_mode)
    averaged_epochs = bool(weight_averaging and weight_averaging["method"] == averaging.SWA
                           and weight_averaging["applied"])
    if not validates or averaged_epochs:
        best = max(epochs_run - 1, 0)  # the last epoch's weights (averaged) are the model's: nothing selected them
    elif best_weights.weights is not None:  # None only if the monitored value was never finite
        model.set_weights(best_weights.weights)
    if getattr(model, "optimizer", None) is None:  # only the top part was fitted: save the full model compiled alike
        _compile(model, spec, spec.fine_tune_learning_rate if spec.fine_tunes else spec.learning_rate)
        model.optimizer.build(model.trainable_variables)  # so loading it does not warn of a missing state
    save_run_weights(model, spec, output_dir)  # trained_weights.h5 (base frozen as built) or model.keras
    return TrainingResult(
        history=history, best_epoch=best + 1,
        best_phase=HEAD if best < head_epochs else FINE_TUNE,
        epochs_run=epochs_run, train_s=train_s,
        activation_cache=cache_use, pruned_epoch=pruner.pruned_epoch if pruner else None,
        fine_tune_layers_resolved=fine_tune_layers, weight_averaging=weight_averaging,
        train_on_val=spec.train_on_val)


def _apply_swa(model: keras.Model, swa: averaging.LastEpochs, batchnorm_before, fitted) -> dict:
    """Puts the mean of the kept fine-tuning epochs' weights into `model` and recomputes the moving
    statistics of the BatchNormalization layers that moved during the phase, on its training batches.

    Returns:
        `TrainingResult.weight_averaging` for `swa_epochs`.
    """
    if not swa.epochs or fitted is None:  # the fine-tuning phase never ran (pruned before it)
        return {"method": averaging.SWA, "applied": False, "epochs": [], "batchnorm_recomputed": [],
                "batchnorm_rows": 0}
    for variable, value in zip(model.trainable_variables, swa.average()):
        variable.assign(value)
    moved = averaging.moved_since(model, batchnorm_before or {})
    fit_model, train_ds = fitted
    rows = averaging.recompute_batchnorm(fit_model, train_ds, moved)
    return {"method": averaging.SWA, "applied": True, "epochs": swa.epoch_numbers,
            "batchnorm_recomputed": [layer.path for layer in moved], "batchnorm_rows": rows}


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
                                batch_sampler=spec.batch_sampler)
        val_ds = make_dataset(data.val, spec.image_size, spec.batch_size, num_classes=num_classes) if len(
            data.val) else None  # train_on_val: nothing to validate on
        return model, train_ds, val_ds, {"status": status, "reason": str(exc)}
    train = [array for name, array in sorted(cached.arrays.items()) if name.startswith("train")]
    train_ds = batch_arrays(train, data.train.labels, spec.batch_size, shuffle=True, seed=spec.seed,
                            batch_sampler=spec.batch_sampler, num_classes=num_classes)
    val_ds = batch_arrays([cached.arrays["val"]], data.val.labels, spec.batch_size,
                          num_classes=num_classes) if len(data.val) else None
    return cached.split.top, train_ds, val_ds, cached.info
