"""Two small from-scratch CNNs with the `keras.applications` factory signature (no ImageNet weights)."""

from __future__ import annotations

import keras


def preprocess_input(x, data_format=None):
    """Rescales raw RGB in [0, 255] to [0, 1], the input of the simple CNNs.

    Args:
        x: float tensor or array, RGB in [0, 255].
        data_format: unused, for the `keras.applications` signature. Defaults
            to `None`.

    Returns:
        `x / 255`, in [0, 1].
    """
    return x / 255.0


def _simple_cnn(filters, convs_per_block, include_top, weights, input_shape, name, dropout):
    if include_top:
        raise ValueError(f"{name} has no classifier top; use include_top=False")
    if weights == "imagenet":
        raise ValueError(f"{name} has no ImageNet weights; use weights=None or a file path")
    inputs = x = keras.Input(input_shape or (None, None, 3))
    for block, width in enumerate(filters, start=1):
        for conv in range(1, convs_per_block + 1):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False,
                                    name=f"block{block}_conv{conv}")(x)
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn{conv}")(x)
            x = keras.layers.ReLU(name=f"block{block}_relu{conv}")(x)
        x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
        x = keras.layers.Dropout(dropout, name=f"block{block}_dropout")(x)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model


def simple_cnn_small(include_top=False, weights=None, input_shape=None, name="simple_cnn_small",
                     dropout=0.25):
    """A small CNN trained from scratch: 2 blocks (32, 64 filters).

    Each block is Conv3x3-BatchNorm-ReLU, MaxPooling 2x2 and Dropout (0.25).

    Args:
        include_top: must be `False` (the head is added by `models.heads`).
            Defaults to `False`.
        weights: `None` (random initialisation) or a weights file path.
            Defaults to `None`.
        input_shape: `(height, width, 3)`, inputs in [0, 1] (see
            `preprocess_input`). Defaults to `None` (any size).
        name: model name. Defaults to `"simple_cnn_small"`.
        dropout: rate of each block's `Dropout` (kept as a layer when 0, so
            weights files fit either way); `base_kwargs: {dropout: 0}` makes
            a frozen base deterministic in `fit`. Defaults to `0.25`.

    Returns:
        A functional `keras.Model` mapping `(batch, h, w, 3)` to
        `(batch, h // 4, w // 4, 64)`.

    Raises:
        ValueError: if `include_top` is true or `weights == "imagenet"`.
    """
    return _simple_cnn((32, 64), 1, include_top, weights, input_shape, name, dropout)


def simple_cnn_medium(include_top=False, weights=None, input_shape=None, name="simple_cnn_medium",
                     dropout=0.25):
    """A medium CNN trained from scratch: 3 blocks (32, 64, 128 filters).

    Each block is Conv3x3-BatchNorm-ReLU twice, MaxPooling 2x2 and Dropout (0.25).

    Args:
        include_top: must be `False` (the head is added by `models.heads`).
            Defaults to `False`.
        weights: `None` (random initialisation) or a weights file path.
            Defaults to `None`.
        input_shape: `(height, width, 3)`, inputs in [0, 1] (see
            `preprocess_input`). Defaults to `None` (any size).
        name: model name. Defaults to `"simple_cnn_medium"`.
        dropout: rate of each block's `Dropout` (kept as a layer when 0, so
            weights files fit either way); `base_kwargs: {dropout: 0}` makes
            a frozen base deterministic in `fit`. Defaults to `0.25`.

    Returns:
        A functional `keras.Model` mapping `(batch, h, w, 3)` to
        `(batch, h // 8, w // 8, 128)`.

    Raises:
        ValueError: if `include_top` is true or `weights == "imagenet"`.
    """
    return _simple_cnn((32, 64, 128), 2, include_top, weights, input_shape, name, dropout)
