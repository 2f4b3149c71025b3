"""Weight averaging: an exponential moving average of the weights (`ema`) and stochastic weight averaging (`swa_epochs`).

- `ema` (Polyak averaging): Keras's optimizers keep the average themselves (`use_ema=True`,
  `ema_momentum`; `models.training.schedules.make_optimizer`): after each step
  `average = m * average + (1 - m) * weights`, the first step of an optimizer (of a phase) setting
  `average = weights`. `EmaInModel` puts the average into the model for everything but the
  training steps: each epoch's validation, the epoch-end callbacks (the best-weights tracker, the
  checkpoints, a pruner) and the end of the phase, so the weights validated, kept, checkpointed and
  saved are the averaged ones. Keras's own `keras.callbacks.SwapEMAWeights(swap_on_epoch=True)`
  does the same by swapping, but leaves the raw weights in the model when early stopping ends a
  phase before its last epoch (`finalize_variable_values` then copies back the raw weights it
  swapped into the average); here the raw weights are kept aside instead, so the average is never
  overwritten.
- `swa_epochs` (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and Better
  Generalization"): `LastEpochs` keeps the trainable weights of the last k epochs of the
  fine-tuning phase, `average` takes their mean, and `recompute_batchnorm` recomputes the moving
  statistics of the BatchNormalization layers that trained in training mode (their statistics
  moved during the phase): the averaged weights' activations differ from any epoch's, and so do
  their statistics.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Optional

import keras
import numpy as np

EMA = "ema"
SWA = "swa"


def _ema_optimizer(model: keras.Model):
    """The optimizer that holds the average: the model's, or the one a `LossScaleOptimizer` wraps."""
    optimizer = model.optimizer
    return getattr(optimizer, "inner_optimizer", optimizer)


class EmaInModel(keras.callbacks.Callback):
    """Keeps the optimizer's moving average of the weights in the model outside the training steps.

    Put it first among a fit's callbacks: at the start of validation
    (`on_test_begin`) and at the end of every epoch (before the other
    callbacks' `on_epoch_end`) the model's trainable variables take the
    average's values, the raw ones being kept aside; at the start of the
    next epoch the raw values come back and training goes on from them. At
    the end of the fit the model holds the average (Keras's
    `finalize_variable_values` then writes the same values again).

    Needs a model compiled with an optimizer built with `use_ema=True`.
    """

    def __init__(self):
        super().__init__()
        self._raw: Optional[list[np.ndarray]] = None

    def _pairs(self):
        optimizer = _ema_optimizer(self.model)
        averages = getattr(optimizer, "_model_variables_moving_average", None)
        if not getattr(optimizer, "use_ema", False) or averages is None:
            raise ValueError("EmaInModel needs a model compiled with an optimizer built with use_ema=True")
        return [(var, average) for var, average in zip(optimizer._trainable_variables, averages)
                if average is not None]

    def _to_average(self) -> None:
        if self._raw is not None:
            return
        pairs = self._pairs()
        self._raw = [keras.ops.convert_to_numpy(var) for var, _ in pairs]
        for var, average in pairs:
            var.assign(average)

    def _to_raw(self) -> None:
        if self._raw is None:
            return
        for (var, _), raw in zip(self._pairs(), self._raw):
            var.assign(raw)
        self._raw = None

    def on_epoch_begin(self, epoch, logs=None):
        self._to_raw()

    def on_test_begin(self, logs=None):
        self._to_average()

    def on_epoch_end(self, epoch, logs=None):
        self._to_average()

    def on_train_end(self, logs=None):
        self._to_average()
        self._raw = None  # the average stays: the raw weights of the last step are dropped


class LastEpochs(keras.callbacks.Callback):
    """Keeps the trainable weights of the last `k` epochs of a fit (for `swa_epochs`), as float32 arrays.

    Args:
        full_model: the model whose `trainable_variables` are kept (the full
            model also when the top part of a cut model is fitted: the
            variables are shared).
        k: how many epochs are kept, >= 1. Epochs are numbered 1-based as the
            fit numbers them (across phases, from its `initial_epoch`).
    """

    def __init__(self, full_model: keras.Model, k: int):
        super().__init__()
        self.full_model = full_model
        self.epochs: deque[tuple[int, list[np.ndarray]]] = deque(maxlen=k)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append((epoch + 1, [keras.ops.convert_to_numpy(v) for v in self.full_model.trainable_variables]))

    def average(self) -> list[np.ndarray]:
        """The mean of the kept epochs' weights, variable by variable (in float64, cast back)."""
        return average([weights for _, weights in self.epochs])

    @property
    def epoch_numbers(self) -> list[int]:
        """The 1-based epochs kept, oldest first."""
        return [epoch for epoch, _ in self.epochs]


def average(snapshots: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The element-wise mean of several lists of weights of the same shapes.

    Args:
        snapshots: one list of arrays per epoch, in the same order.

    Returns:
        One array per variable, the mean over snapshots (computed in float64,
        in each variable's dtype).
    """
    if not snapshots:
        raise ValueError("average: no weights to average")
    return [np.mean(np.stack([np.asarray(s[i], dtype=np.float64) for s in snapshots]), axis=0).astype(
        np.asarray(snapshots[0][i]).dtype) for i in range(len(snapshots[0]))]


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of a model, nested models included, each once, in layer order."""
    found: dict[int, keras.layers.BatchNormalization] = {}

    def walk(layer):
        if isinstance(layer, keras.layers.BatchNormalization):
            found.setdefault(id(layer), layer)
        for inner in getattr(layer, "layers", []) or []:
            walk(inner)

    for layer in model.layers:
        walk(layer)
    return list(found.values())


def moving_statistics(layers: Iterable[keras.layers.BatchNormalization]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{layer path: (moving_mean, moving_variance)}` of BatchNormalization layers, as NumPy copies."""
    return {layer.path: (keras.ops.convert_to_numpy(layer.moving_mean).copy(),
                         keras.ops.convert_to_numpy(layer.moving_variance).copy()) for layer in layers}


def moved_since(model: keras.Model, before: dict[str, tuple[np.ndarray, np.ndarray]]
                ) -> list[keras.layers.BatchNormalization]:
    """The BatchNormalization layers of `model` whose moving statistics differ from `before`
    (`moving_statistics` taken earlier): the ones that ran in training mode in between."""
    moved = []
    for layer in batchnorm_layers(model):
        mean, variance = moving_statistics([layer])[layer.path]
        old = before.get(layer.path)
        if old is None or not (np.array_equal(mean, old[0]) and np.array_equal(variance, old[1])):
            moved.append(layer)
    return moved


def recompute_batchnorm(model: keras.Model, batches, layers: list[keras.layers.BatchNormalization]) -> int:
    """Recomputes the moving statistics of `layers` for the model's current weights, in one pass.

    Each layer's statistics are reset and the model is called in training
    mode on every batch, with each layer's `momentum` set before a batch of
    `b` rows to `seen / (seen + b)`: its moving mean (variance) ends as the
    mean of the batches' means (variances) weighted by their rows, instead
    of an exponential average that forgets the first batches (PyTorch's
    `torch.optim.swa_utils.update_bn` does this with `momentum=None`). The
    other BatchNormalization layers' statistics, which a training-mode call
    would move too, are restored afterwards, and every momentum is put back.

    Args:
        model: maps the batches' inputs to outputs (the full model on images,
            or the top part of a cut model on stored features).
        batches: an iterable of input batches or of `(inputs, labels)` batches
            (labels are ignored), e.g. the phase's training dataset.
        layers: the BatchNormalization layers to recompute (`moved_since`).

    Returns:
        The number of rows (images or feature rows) seen; 0 leaves the
        statistics as they were.
    """
    if not layers:
        return 0
    others = [layer for layer in batchnorm_layers(model) if all(layer is not mine for mine in layers)]
    kept = moving_statistics(others)
    before = moving_statistics(layers)
    momenta = [layer.momentum for layer in layers]
    seen = 0
    try:
        for layer in layers:
            layer.moving_mean.assign(keras.ops.zeros_like(layer.moving_mean))
            layer.moving_variance.assign(keras.ops.ones_like(layer.moving_variance))
        for batch in batches:
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            rows = int(keras.ops.shape(inputs)[0])
            for layer in layers:
                layer.momentum = seen / (seen + rows)
            model(inputs, training=True)
            seen += rows
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        for layer in others:
            layer.moving_mean.assign(kept[layer.path][0])
            layer.moving_variance.assign(kept[layer.path][1])
        if not seen:
            for layer in layers:
                layer.moving_mean.assign(before[layer.path][0])
                layer.moving_variance.assign(before[layer.path][1])
    return seen
