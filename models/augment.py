"""Random augmentation of training batches with Keras preprocessing layers."""

from __future__ import annotations

import itertools

import keras

from .spec import Augmentation


def build_augmentation(aug: Augmentation, image_size: int, seed: int) -> keras.Sequential:
    """Builds the augmentation pipeline of `aug`, in a fixed order.

    `RandomFlip`, `RandomRotation`, `RandomZoom` (same factor on both axes),
    a second `RandomZoom` on the width only (`stretch`, an aspect-ratio
    change), `RandomTranslation`, then a `RandomCrop` to
    `round(image_size * (1 - crop))` pixels resized back with `Resizing`.
    Transforms whose factor is 0 (or `flip` `None`) are left out. Geometric
    transforms with reflect padding and bilinear interpolation keep pixel
    values in their input range ([0, 255] here). Layer `i` is seeded with
    `seed + i`, so the layers draw independent random numbers.

    Args:
        aug: the augmentation parameters.
        image_size: side of the square input images, pixels.
        seed: seed of the first random layer.

    Returns:
        A `keras.Sequential` mapping float32 `(batch, image_size, image_size, 3)`
        to the same shape; call it with `training=True`. It has no layers when
        every transform is off.
    """
    seeds = itertools.count(seed)
    layers = []
    if aug.flip:
        layers.append(keras.layers.RandomFlip(aug.flip, seed=next(seeds)))
    if aug.rotation:
        layers.append(keras.layers.RandomRotation(aug.rotation, seed=next(seeds)))
    if aug.zoom:
        layers.append(keras.layers.RandomZoom(aug.zoom, seed=next(seeds)))
    if aug.stretch:
        layers.append(keras.layers.RandomZoom(0.0, width_factor=aug.stretch, seed=next(seeds)))
    if aug.translation:
        layers.append(keras.layers.RandomTranslation(aug.translation, aug.translation,
                                                     seed=next(seeds)))
    if aug.crop:
        side = max(1, round(image_size * (1 - aug.crop)))
        layers += [keras.layers.RandomCrop(side, side, seed=next(seeds)),
                   keras.layers.Resizing(image_size, image_size)]
    return keras.Sequential(layers, name="augmentation")
