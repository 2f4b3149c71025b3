"""Fine-tuning: which base layers to unfreeze (a count, a fraction or a layer name) and unfreezing them."""

from __future__ import annotations

import difflib
import math
import keras
from ..errors import ModelConfigError
from ..spec import ExperimentSpec, FineTuneFrom


def base_of(model_or_base: keras.Model) -> keras.Model:
    """The base of a model from `build_model`, or the base itself.

    Args:
        model_or_base: a model from `build_model` (its layer named `"base"`)
            or a base (a model without a layer named `"base"`).

    Returns:
        The layer `"base"` of `model_or_base`, or `model_or_base` itself when
        it has none.
    """
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
    base = base_of(model_or_base)
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
    do all BatchNormalization layers (Keras transfer-learning guide): frozen,
    they run in inference mode and keep their moving statistics. Unfrozen,
    Keras 3 runs them in training mode during `fit` although `build_model`
    calls the base with `training=False` (checked with Keras 3.15): their
    scale and offset train and their moving statistics follow the training
    batches. Recompile the model afterwards.

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
