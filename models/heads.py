"""Classification heads on top of a base's feature maps."""

from __future__ import annotations

import keras

from .spec import ExperimentSpec


def add_head(features, spec: ExperimentSpec, num_classes: int):
    """Adds the classification head to a base's output.

    `Flatten` (`spec.head == "flatten"`) or `GlobalAveragePooling2D` (`"gap"`),
    then for each width in `spec.dense_units`: `Dropout(spec.dropout)` (left
    out when 0) and `Dense(width, "relu")` with an L2 kernel penalty
    `spec.l2` (left out when 0); then `Dropout` and the `Dense(num_classes,
    "softmax")` classifier in float32, as in Keras's transfer-learning guide.

    Args:
        features: symbolic feature maps `(batch, h, w, channels)`, or vectors `(batch, features)` (a
            saved-model base's; `head` then has nothing to pool).
        spec: the run's parameters; reads `head`, `dense_units`, `dropout`
            and `l2`.
        num_classes: number of classes, >= 2.

    Returns:
        Symbolic class probabilities, float32 `(batch, num_classes)` in [0, 1]
        summing to 1 over classes.
    """
    if len(features.shape) == 2:  # a saved-model base whose output is already a vector: nothing to pool
        x = features
    else:
        pool = keras.layers.Flatten if spec.head == "flatten" else keras.layers.GlobalAveragePooling2D
        x = pool(name=spec.head)(features)
    regularizer = keras.regularizers.L2(spec.l2) if spec.l2 > 0 else None
    for index, units in enumerate(spec.dense_units):
        x = _dropout(x, spec.dropout, f"dropout_{index}")
        x = keras.layers.Dense(units, activation="relu", kernel_regularizer=regularizer,
                               name=f"dense_{index}")(x)
    x = _dropout(x, spec.dropout, "dropout_predictions")
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                              name="predictions")(x)


def _dropout(x, rate: float, name: str):
    return keras.layers.Dropout(rate, name=name)(x) if rate > 0 else x
