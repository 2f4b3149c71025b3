"""Optimisers, learning-rate schedules per phase and the mixed-precision policy."""

from __future__ import annotations

import keras
import tensorflow as tf
from ..errors import ModelConfigError
from ..spec import ExperimentSpec
from .callbacks import LinearWarmup
from .fine_tuning import base_of


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


def check_precision(model: keras.Model, spec: ExperimentSpec) -> None:
    """Sets the dtype policy to `spec.precision` and refuses a model whose base was built under another.

    Called before training: the parts `train_model` builds itself (the top
    part of a cut model, `models.cache`) follow the policy set here.

    Args:
        model: a model from `build_model` (its layer `"base"` is read) or
            the base itself.
        spec: the run's parameters; reads `precision`.

    Raises:
        ModelConfigError: mixed precision is asked and TensorFlow sees no GPU
            (`set_precision_policy`), or the base's `dtype_policy.name`
            differs from `spec.precision`.
    """
    set_precision_policy(spec)  # the parts train_model builds (models.cache's top part) follow it too
    built = base_of(model).dtype_policy.name
    if built != spec.precision:
        raise ModelConfigError(
            f"precision: the model was built with dtype policy {built!r}, the spec asks {spec.precision!r}; "
            f"build it with models.build_model(spec), which sets the policy first")


def make_optimizer(spec: ExperimentSpec, learning_rate) -> keras.optimizers.Optimizer:
    """A phase's optimizer, `spec.optimizer` at `learning_rate`.

    `"sgd"`: `SGD` with `momentum=spec.momentum`; `"adamw"`: `AdamW` with
    `weight_decay=spec.weight_decay`; else `Adam`. With `spec.ema`, the
    optimizer keeps the exponential moving average of the weights
    (`use_ema=True`, `ema_momentum=spec.ema`; `models.training.averaging`).
    With `spec.gradient_clip_norm`, each step's gradients are scaled down to
    that global L2 norm (`global_clipnorm`).

    Args:
        spec: the run's parameters; reads `optimizer`, `momentum`,
            `weight_decay`, `gradient_clip_norm` and `ema`.
        learning_rate: a float, or a `keras.optimizers.schedules.LearningRateSchedule`
            (`phase_schedule`).

    Returns:
        A new, unbuilt `keras.optimizers.Optimizer`.
    """
    common = {"use_ema": True, "ema_momentum": spec.ema} if spec.ema is not None else {}
    if spec.gradient_clip_norm is not None:
        common["global_clipnorm"] = spec.gradient_clip_norm
    if spec.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=spec.momentum, **common)
    if spec.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=spec.weight_decay, **common)
    return keras.optimizers.Adam(learning_rate, **common)


def phase_schedule(spec: ExperimentSpec, schedule, rate: float, epochs: int, steps_per_epoch: int,
                   first_epoch: int):
    """A phase's learning rate (a float or a `LearningRateSchedule`) and schedule callbacks.

    `step`: `LearningRateScheduler` multiplying by `lr_step_gamma` at each
    milestone epoch (counted from the phase's first epoch); `plateau`:
    `ReduceLROnPlateau` on `val_loss` (none with `train_on_val`: there is no
    validation split); `cosine`: `CosineDecay` over the
    phase's steps. With `warmup_epochs`, `cosine` uses `CosineDecay`'s own
    linear warm-up from 0 (`warmup_target`, `warmup_steps`) and decays over
    the steps left; the others get `LinearWarmup` after their callback.

    Args:
        spec: the run's parameters; reads `warmup_epochs`, `lr_step_milestones`,
            `lr_step_gamma`, `lr_plateau_factor`, `lr_plateau_patience` and
            `train_on_val`.
        schedule: the phase's schedule, `None`, `"step"`, `"plateau"` or
            `"cosine"` (`spec.lr_schedule` or `spec.fine_tune_lr_schedule`).
        rate: the phase's learning rate (after the warm-up).
        epochs: the phase's epochs.
        steps_per_epoch: training steps (batches) an epoch.
        first_epoch: the phase's first epoch, 0-based across both phases
            (`fit`'s `initial_epoch`).

    Returns:
        `(learning_rate, callbacks)`: the rate to give `make_optimizer` and
        the callbacks to give `fit`.
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
    elif schedule == "plateau" and not spec.train_on_val:  # train_on_val: no val_loss to follow
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=spec.lr_plateau_factor, patience=spec.lr_plateau_patience))
    if warmup_steps:
        callbacks.append(LinearWarmup(warmup_steps))
    return rate, callbacks
