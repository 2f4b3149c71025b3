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

Weight averaging (`models.training.averaging`): with `ema` the optimizers
keep an exponential moving average of the weights, and the averaged weights
are what every epoch validates, the best-weights tracker keeps, the
checkpoints hold and the run's weights file saves. With `swa_epochs` = k the
model ends with the mean of the last k fine-tuning epochs' weights (not the
best epoch's; `best_epoch` is then the last epoch), BatchNormalization
statistics recomputed on the phase's training batches for the layers that
trained in training mode.

With `train_on_val` (the validation split is empty) nothing is validated:
every epoch runs and the last epoch's weights (averaged, with `ema` /
`swa_epochs`) are kept; `best_epoch` is the last epoch.

With `activation_cache`, each phase whose lower layers are frozen (head
phase: the whole base; fine-tuning: all but the resolved last
`fine_tune_layers`) trains only the layers above the freeze boundary, on
that boundary's outputs from `models.cache` (computed once per input and
stored). The layers are the full model's own, so the checkpoints and the
run's weights file are the full model's either way;
`TrainingResult.activation_cache` says per phase what happened. When a
stored chunk fails its CRC-32 while read (`models.cache.CacheDamaged`, the
entry deleted), `train_model` puts back the model's variables and
`trainable` flags and trains once more from the start, on a rebuilt entry.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
import keras
import numpy as np
from sklearn.utils.class_weight import compute_class_weight
from .. import cache
from ..pruning import PruningCallback, pruning_callback
from ..data import DataSplit, batch_arrays, make_dataset
from ..spec import ExperimentSpec
from ..names import FINE_TUNE, HEAD, TENSORBOARD_DIR
from ..saving import save_run_weights
from .callbacks import (BestWeights, EpochTimer, KeepCheckpoints, best_index, checkpoint_callbacks,
                        checkpoint_keeper, early_stopping_callback, learning_rate_of, monitor_of)
from .fine_tuning import resolve_fine_tune_layers, unfreeze_base
from . import averaging
from .schedules import check_precision, make_optimizer, phase_schedule


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


def compile_model(model: keras.Model, spec: ExperimentSpec, learning_rate) -> None:
    """Compiles a phase's model: `make_optimizer(spec, learning_rate)`, a cross-entropy loss, `accuracy`.

    The loss is sparse categorical cross-entropy on integer labels, or
    categorical cross-entropy on one-hot labels when `mixup` / `cutmix`
    mixes batches or `spec.label_smoothing` > 0 (with that smoothing,
    Szegedy et al. 2016); `phase_inputs` gives labels of the matching form.
    The model is compiled with `jit_compile=spec.jit_compile`.

    Args:
        model: the model a phase fits (the full model, or the top part of a
            cut model, `models.cache`).
        spec: the run's parameters; reads `label_smoothing`, `augmentation`,
            `jit_compile` and what `make_optimizer` reads.
        learning_rate: a float, or a `LearningRateSchedule`
            (`phase_schedule`).
    """
    # mixup / cutmix give soft one-hot labels (and the val split one-hot ones): categorical loss
    if spec.label_smoothing > 0:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=spec.label_smoothing)
    else:
        loss = "categorical_crossentropy" if _mixes_batches(spec) else "sparse_categorical_crossentropy"
    model.compile(optimizer=make_optimizer(spec, learning_rate), loss=loss, metrics=["accuracy"],
                  jit_compile=spec.jit_compile)


def train_model(model: keras.Model, data: DataSplit, spec: ExperimentSpec, output_dir, *, verbose=2,
                pruning=None) -> TrainingResult:
    """Trains a model from `build_model`: head phase, then optional fine-tuning.

    Head phase (skipped when `spec.epochs` is 0): `spec.epochs` epochs of
    `spec.optimizer` at `spec.learning_rate` with `spec.lr_schedule` after a
    linear warm-up over `spec.warmup_epochs` epochs (`phase_schedule`), the
    cross-entropy of `compile_model` (one-hot labels with `mixup` / `cutmix`
    or `spec.label_smoothing`; `jit_compile=spec.jit_compile`), training
    batches shuffled and augmented with `spec.augmentation`,
    `class_weight="balanced"` from scikit-learn's `compute_class_weight` when
    asked, `early_stopping_callback(spec)` on `spec.early_stopping_monitor`
    when `spec.early_stopping_patience` is set.

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

    Weight averaging (`ema`, `swa_epochs`), `train_on_val` and `activation_cache` (with its retry on a
    damaged entry) work as the docstring of `models.training.loop` describes.

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
    check_precision(model, spec)
    fine_tune_layers = resolve_fine_tune_layers(model, spec) if spec.fine_tunes else None
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    run = _prepare_run(model, data, spec, output_dir, verbose=verbose, pruning=pruning)
    start = time.perf_counter()
    history, batchnorm_before = _fit_phases(run, fine_tune_layers)
    epochs_run = sum(len(phase["loss"]) for phase in history.values())
    weight_averaging = _apply_weight_averaging(run, history, batchnorm_before)
    train_s = time.perf_counter() - start
    best = _restore_best_weights(run, history, epochs_run, weight_averaging)
    _save_weights(model, spec, output_dir)
    head_epochs = len(history[HEAD]["loss"]) if HEAD in history else 0
    return TrainingResult(
        history=history, best_epoch=best + 1,
        best_phase=HEAD if best < head_epochs else FINE_TUNE,
        epochs_run=epochs_run, train_s=train_s,
        activation_cache=run.cache_use, pruned_epoch=run.pruner.pruned_epoch if run.pruner else None,
        fine_tune_layers_resolved=fine_tune_layers, weight_averaging=weight_averaging,
        train_on_val=spec.train_on_val)


@dataclass
class _Run:
    """What the phases of one attempt share (`_prepare_run`).

    Attributes:
        model: the full model from `build_model`.
        data: the split.
        spec: the run's parameters.
        output_dir: the run folder.
        verbose: `model.fit` verbosity.
        best_weights: the one best-weights tracker of both phases.
        keeper: the one checkpoint keeper of both phases, or `None`.
        pruner: a search's pruning callback (`models.pruning`), or `None`.
        class_weight: `fit`'s `{class index: weight}`, or `None`.
        steps_per_epoch: training steps (batches) an epoch.
        validates: whether there is a validation split (none with `train_on_val`).
        swa: the keeper of the last fine-tuning epochs' weights (`swa_epochs`), or `None`.
        cache_use: per phase, its `TrainingResult.activation_cache` entry.
        fitted: per phase, `(model fitted, its training batches)`, for the BatchNorm pass.
    """

    model: keras.Model
    data: DataSplit
    spec: ExperimentSpec
    output_dir: Path
    verbose: int | str
    best_weights: BestWeights
    keeper: KeepCheckpoints | None
    pruner: PruningCallback | None
    class_weight: dict[int, float] | None
    steps_per_epoch: int
    validates: bool
    swa: averaging.LastEpochs | None
    cache_use: dict[str, dict] = field(default_factory=dict)
    fitted: dict[str, tuple] = field(default_factory=dict)


def _prepare_run(model: keras.Model, data: DataSplit, spec: ExperimentSpec, output_dir: Path, *, verbose,
                 pruning) -> _Run:
    """The callbacks and figures both phases share, in a `_Run`."""
    best_weights = BestWeights(model, spec.checkpoint_monitor)
    keeper = checkpoint_keeper(output_dir, spec)
    pruner = pruning_callback(pruning)
    class_weight = _make_class_weight(data, spec)
    return _Run(model=model, data=data, spec=spec, output_dir=output_dir, verbose=verbose,
                best_weights=best_weights, keeper=keeper, pruner=pruner, class_weight=class_weight,
                steps_per_epoch=math.ceil(len(data.train) / spec.batch_size),
                validates=len(data.val) > 0,  # no validation split with train_on_val
                swa=averaging.LastEpochs(model, spec.swa_epochs) if spec.swa_epochs else None)


def _make_class_weight(data: DataSplit, spec: ExperimentSpec) -> dict[int, float] | None:
    """`fit`'s `class_weight`: scikit-learn's `"balanced"` weights by class index with `class_weight: balanced`,
    else `None`."""
    if spec.class_weight != "balanced":
        return None
    classes = np.arange(len(data.class_names))
    return dict(enumerate(compute_class_weight("balanced", classes=classes, y=data.train.labels).tolist()))


def _fit_phases(run: _Run, fine_tune_layers: int | None) -> tuple[dict[str, dict[str, list[float]]], dict | None]:
    """Fits the head phase (unless `epochs` is 0), then unfreezes the base's top and fine-tunes, unless pruned.

    Returns:
        `(history, batchnorm_before)`: `TrainingResult.history`, and the
        BatchNormalization moving statistics as fine-tuning began (`None`
        without it).
    """
    spec = run.spec
    history = {}
    if spec.epochs:
        history[HEAD] = _fit_phase(run, HEAD, 0, spec.learning_rate, spec.lr_schedule, spec.epochs, 0)
    head_epochs = len(history[HEAD]["loss"]) if HEAD in history else 0
    batchnorm_before = None
    if fine_tune_layers is not None and not (run.pruner and run.pruner.pruned_epoch):
        unfreeze_base(run.model, fine_tune_layers, unfreeze_batchnorm=spec.unfreeze_batchnorm)
        batchnorm_before = averaging.moving_statistics(averaging.batchnorm_layers(run.model))
        history[FINE_TUNE] = _fit_phase(run, FINE_TUNE, fine_tune_layers, spec.fine_tune_learning_rate,
                                        spec.fine_tune_lr_schedule, spec.fine_tune_epochs, head_epochs)
    return history, batchnorm_before


def _fit_phase(run: _Run, phase: str, trainable_base_layers: int, rate: float, schedule, epochs: int,
               initial_epoch: int) -> dict[str, list[float]]:
    """Fits one phase's `epochs` from `initial_epoch` (0-based across phases) and returns its history."""
    fit_model, train_ds, val_ds, run.cache_use[phase] = phase_inputs(
        run.model, run.data, run.spec, trainable_base_layers)
    learning_rate, schedule_callbacks = phase_schedule(
        run.spec, schedule, rate, epochs, run.steps_per_epoch, initial_epoch)
    compile_model(fit_model, run.spec, learning_rate)
    run.fitted[phase] = (fit_model, train_ds)
    callbacks = _make_callbacks(run, phase, fit_model, schedule_callbacks)
    history = fit_model.fit(train_ds, validation_data=val_ds, epochs=initial_epoch + epochs,
                            initial_epoch=initial_epoch, class_weight=run.class_weight,
                            callbacks=callbacks, verbose=run.verbose,
                            shuffle=False)  # train_ds reshuffles itself every epoch
    return {key: [float(v) for v in values] for key, values in history.history.items()}


def _make_callbacks(run: _Run, phase: str, fit_model: keras.Model,
                    schedule_callbacks: list[keras.callbacks.Callback]) -> list[keras.callbacks.Callback]:
    """A phase's callbacks, in the order they run at each epoch's end."""
    spec = run.spec
    callbacks = [
        *([averaging.EmaInModel()] if spec.ema is not None else []),  # first: the others see the average
        EpochTimer(),
        keras.callbacks.TensorBoard(run.output_dir / TENSORBOARD_DIR, write_graph=False, profile_batch=0),
        run.best_weights,
        *schedule_callbacks,
        *checkpoint_callbacks(run.model, run.output_dir, spec, run.keeper),
        *([run.pruner] if run.pruner else []),
        *([run.swa] if run.swa is not None and phase == FINE_TUNE else []),
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.setdefault(
            "learning_rate", learning_rate_of(fit_model))),
    ]
    if spec.early_stopping_patience and run.validates:
        callbacks.append(early_stopping_callback(spec))
    return callbacks


def _apply_weight_averaging(run: _Run, history: dict, batchnorm_before: dict | None) -> dict | None:
    """Puts the `swa_epochs` mean into the model (`_apply_swa`) and returns `TrainingResult.weight_averaging`."""
    weight_averaging = None
    if run.spec.ema is not None:
        weight_averaging = {"method": averaging.EMA, "applied": True, "momentum": run.spec.ema,
                            "phases": list(history)}
    if run.swa is not None:
        weight_averaging = _apply_swa(run.model, run.swa, batchnorm_before, run.fitted.get(FINE_TUNE))
    return weight_averaging


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


def _restore_best_weights(run: _Run, history: dict, epochs_run: int, weight_averaging: dict | None) -> int:
    """Puts the best-weights tracker's weights into the model, unless nothing selected the epoch.

    Returns:
        The 0-based index, across both phases, of the epoch whose weights
        the model holds: the best by `checkpoint_monitor`, or the last one
        without a validation split or after `swa_epochs` averaging.
    """
    best_key, best_mode = monitor_of(run.spec.checkpoint_monitor)
    monitored = [v for phase in history.values() for v in phase.get(best_key, [])]
    best = best_index(monitored, best_mode)
    averaged_epochs = bool(weight_averaging and weight_averaging["method"] == averaging.SWA
                           and weight_averaging["applied"])
    if not run.validates or averaged_epochs:
        best = max(epochs_run - 1, 0)  # the last epoch's weights (averaged) are the model's: nothing selected them
    elif run.best_weights.weights is not None:  # None only if the monitored value was never finite
        run.model.set_weights(run.best_weights.weights)
    return best


def _save_weights(model: keras.Model, spec: ExperimentSpec, output_dir: Path) -> None:
    """Saves the run's weights (`models.saving.save_run_weights`), compiling the full model first if only
    its top part was fitted."""
    if getattr(model, "optimizer", None) is None:  # only the top part was fitted: save the full model compiled alike
        compile_model(model, spec, spec.fine_tune_learning_rate if spec.fine_tunes else spec.learning_rate)
        model.optimizer.build(model.trainable_variables)  # so loading it does not warn of a missing state
    save_run_weights(model, spec, output_dir)  # trained_weights.h5 (base frozen as built) or model.keras


def phase_inputs(model: keras.Model, data: DataSplit, spec: ExperimentSpec, trainable_base_layers: int):
    """What a phase fits: the model and its training and validation batches.

    From the activation cache (`models.cache.cached_inputs`: the top part of
    the cut model on stored features) when it applies, else the full model on
    images (`models.data.make_dataset`, training batches shuffled with
    `spec.seed` and augmented with `spec.augmentation`). Labels are int32
    class indices `(batch,)`, or float32 `(batch, classes)` rows summing to 1
    (one-hot, mixed by `mixup` / `cutmix`) when batches are mixed or
    `spec.label_smoothing` > 0, on both paths, as `compile_model`'s loss
    expects.

    Args:
        model: the full model from `build_model`.
        data: the split.
        spec: the run's parameters.
        trainable_base_layers: how many of the base's last layers the phase
            trains (0 for the head phase; `resolve_fine_tune_layers` for
            fine-tuning); the cache cuts the model below them.

    Returns:
        `(fit_model, train_ds, val_ds, cache_use)`: the model to fit (`model`
        or the top part of the cut model, sharing its layers), the training
        and validation `tf.data.Dataset`s of `(inputs, labels)` batches of
        `spec.batch_size` (`val_ds` is `None` when `data.val` is empty,
        `train_on_val`), and the phase's `TrainingResult.activation_cache`
        entry.
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
