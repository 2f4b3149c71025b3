"""Random augmentation of training batches with Keras preprocessing layers.

Two stages, both applied by `models.data.make_dataset` to training batches
only (validation and test images are never augmented):

1. `build_augmentation`: per-image transforms, a `keras.Sequential` of Keras 3
   preprocessing layers (and `RandomResizedCrop`, written here because Keras
   has no such layer), in the order of `models.spec.Augmentation`'s fields.
2. `build_batch_mixing`: `keras.layers.MixUp` or `keras.layers.CutMix`, which
   mix each batch's images and its one-hot labels (soft labels).

Images are float32 `(batch, height, width, 3)` RGB in [0, 255] before and
after each stage; every layer that needs it is given `value_range=(0, 255)`.
"""

from __future__ import annotations

import itertools
import math

import keras
import tensorflow as tf

from .spec import Augmentation

VALUE_RANGE = (0, 255)
"""Pixel values of the images the layers see (raw RGB, float32)."""
RESIZED_CROP_ATTEMPTS = 10
"""Crops drawn per image before `RandomResizedCrop` falls back to a centre crop (torchvision's 10)."""


@keras.saving.register_keras_serializable(package="nbsweep")
class RandomResizedCrop(keras.layers.Layer):
    """Crops a random area and aspect ratio of each image and resizes it back.

    torchvision's `transforms.RandomResizedCrop` (the "Inception" crop of
    Szegedy et al. 2015): per image, draw an area fraction uniformly in
    `scale` and a width / height ratio log-uniformly in `ratio`; the crop is
    `w = round(sqrt(area * ratio))` by `h = round(sqrt(area / ratio))`
    pixels at a uniformly random position. Up to 10 draws are made; if none
    fits inside the image, the largest centred crop whose ratio is clamped to
    `ratio` is taken, as torchvision does. The crop is resized to
    `(height, width)` with bilinear interpolation (`tf.image.crop_and_resize`,
    corner pixels aligned), so values stay in the input's range.

    Random numbers come from a `keras.random.SeedGenerator(seed)`, so a fixed
    `seed` repeats the same sequence of crops. Written with TensorFlow ops
    (`tf.image.crop_and_resize`); this project runs Keras on TensorFlow.

    Args:
        height: output height, pixels.
        width: output width, pixels.
        scale: `(min, max)` fraction of the image area, 0 < min <= max <= 1.
            Defaults to `(0.08, 1.0)`.
        ratio: `(min, max)` width / height ratio, 0 < min <= max. Defaults
            to `(3 / 4, 4 / 3)`.
        seed: seed of the random crops, or `None`. Defaults to `None`.
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).

    Call arguments:
        images: float `(batch, in_height, in_width, channels)`.
        training: crop when `True`; otherwise the images are only resized to
            `(height, width)`. Defaults to `True`.

    Returns:
        float32 `(batch, height, width, channels)`.

    Raises:
        ValueError: `scale` or `ratio` is out of bounds.
    """

    def __init__(self, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        scale, ratio = tuple(float(v) for v in scale), tuple(float(v) for v in ratio)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale: got {scale}, expected (min, max) with 0 < min <= max <= 1")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio: got {ratio}, expected (min, max) with 0 < min <= max")
        self.height, self.width, self.scale, self.ratio, self.seed = height, width, scale, ratio, seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        images = tf.cast(images, "float32")
        shape = tf.shape(images)
        batch = shape[0]
        image_h, image_w = tf.cast(shape[1], "float32"), tf.cast(shape[2], "float32")
        if not training:
            return tf.image.resize(images, (self.height, self.width))
        draws = (batch, RESIZED_CROP_ATTEMPTS)
        area = image_h * image_w * keras.random.uniform(draws, *self.scale, seed=self.generator)
        aspect = tf.exp(keras.random.uniform(draws, math.log(self.ratio[0]), math.log(self.ratio[1]),
                                             seed=self.generator))
        crop_w, crop_h = tf.round(tf.sqrt(area * aspect)), tf.round(tf.sqrt(area / aspect))
        fits = (crop_w >= 1) & (crop_w <= image_w) & (crop_h >= 1) & (crop_h <= image_h)
        first = tf.argmax(tf.cast(fits, "int32"), axis=1, output_type="int32")[:, None]
        crop_w = tf.gather(crop_w, first, batch_dims=1)[:, 0]
        crop_h = tf.gather(crop_h, first, batch_dims=1)[:, 0]
        # torchvision's fallback: the whole image, its ratio clamped to `ratio`, centred
        image_ratio = image_w / image_h
        fallback_w = tf.where(image_ratio > self.ratio[1], tf.round(image_h * self.ratio[1]), image_w)
        fallback_h = tf.where(image_ratio < self.ratio[0], tf.round(image_w / self.ratio[0]), image_h)
        any_fits = tf.reduce_any(fits, axis=1)
        crop_w = tf.where(any_fits, crop_w, fallback_w)
        crop_h = tf.where(any_fits, crop_h, fallback_h)
        position = keras.random.uniform((batch, 2), 0.0, 1.0, seed=self.generator)
        top = tf.where(any_fits, tf.floor(position[:, 0] * (image_h - crop_h + 1)),
                       tf.floor((image_h - crop_h) / 2))
        left = tf.where(any_fits, tf.floor(position[:, 1] * (image_w - crop_w + 1)),
                        tf.floor((image_w - crop_w) / 2))
        top, left = tf.minimum(top, image_h - crop_h), tf.minimum(left, image_w - crop_w)  # uniform() == 1
        span_h, span_w = tf.maximum(image_h - 1, 1.0), tf.maximum(image_w - 1, 1.0)
        boxes = tf.stack([top / span_h, left / span_w,
                          (top + crop_h - 1) / span_h, (left + crop_w - 1) / span_w], axis=1)
        boxes = tf.ensure_shape(boxes, (images.shape[0], 4))
        return tf.image.crop_and_resize(images, boxes, tf.range(batch), (self.height, self.width))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width,
                "scale": list(self.scale), "ratio": list(self.ratio), "seed": self.seed}


@keras.saving.register_keras_serializable(package="nbsweep")
class RandomSaturation(keras.layers.Layer):
    """`keras.layers.RandomSaturation` on [0, 255] images, with outputs kept in [0, 255].

    Keras 3.15's `RandomSaturation` clips the HSV saturation to its
    `value_range` rather than to [0, 1], so with `value_range=(0, 255)` a
    saturation above 1 makes pixels negative (down to about -700 on random
    images). This layer scales the images to [0, 1], applies Keras's layer
    with `value_range=(0, 1)` (where that clip is the right one), and scales
    back, clipping float rounding to [0, 255].

    Args:
        factor: Keras's `RandomSaturation` factor: `(min, max)` in [0, 1],
            0.5 leaves an image unchanged; `f` multiplies the saturation by
            `f / (1 - f)`.
        seed: seed, or `None`. Defaults to `None`.
        **kwargs: `keras.layers.Layer` arguments.

    Call arguments:
        images: float32 `(batch, height, width, 3)` RGB in [0, 255].
        training: transform when `True`. Defaults to `True`.

    Returns:
        float32 `(batch, height, width, 3)` in [0, 255].
    """

    def __init__(self, factor, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.factor, self.seed = tuple(factor), seed
        self.saturation = keras.layers.RandomSaturation(self.factor, value_range=(0, 1), seed=seed)

    def call(self, images, training=True):
        if not training:
            return images
        high = VALUE_RANGE[1]
        images = self.saturation(keras.ops.cast(images, "float32") / high, training=True)
        return keras.ops.clip(images * high, 0.0, float(high))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor), "seed": self.seed}


def _saturation_factor(saturation: float) -> tuple[float, float]:
    """Keras's `RandomSaturation` factor range for torchvision's `ColorJitter(saturation=s)`.

    torchvision multiplies the saturation by `m` in [max(0, 1 - s), 1 + s];
    Keras draws `f` and multiplies by `f / (1 - f)`, so `f = m / (1 + m)`.
    """
    low, high = max(0.0, 1.0 - saturation), 1.0 + saturation
    return low / (1 + low), high / (1 + high)


def build_augmentation(aug: Augmentation, image_size: int, seed: int) -> keras.Sequential:
    """Builds the per-image augmentation pipeline of `aug`, in a fixed order.

    The order is that of `Augmentation`'s fields (geometry, then colour, then
    erasing), each transform with per-image random parameters:

    1. `random_resized_crop`: `RandomResizedCrop` (torchvision's
       `RandomResizedCrop`) to `image_size`.
    2. `flip`: `keras.layers.RandomFlip`.
    3. `rotation`: `keras.layers.RandomRotation`.
    4. `shear`: `keras.layers.RandomShear(x, y)`.
    5. `zoom`: `keras.layers.RandomZoom` (same factor on both axes).
    6. `stretch`: a second `RandomZoom` on the width only (an aspect-ratio
       change).
    7. `translation`: `keras.layers.RandomTranslation`.
    8. `perspective`: `keras.layers.RandomPerspective(factor=1, scale=...)`
       (every image; outside pixels filled with 0).
    9. `crop`: `keras.layers.RandomCrop` to `round(image_size * (1 - crop))`
       pixels, resized back with `Resizing`.
    10. `rand_augment`: `keras.layers.RandAugment(value_range=(0, 255),
        num_ops, factor=(magnitude, magnitude))` (Cubuk et al. 2020; Keras
        picks the same `num_ops` operations for the whole batch).
    11. `color_jitter`: `RandomBrightness`, `RandomContrast`,
        `RandomSaturation` (this module's, on [0, 1]) and `RandomHue`, in
        that order, with `value_range=(0, 255)`; ranges as documented in
        `models.spec.ColorJitterFactors`.
    12. `grayscale`: `keras.layers.RandomGrayscale(p)`.
    13. `erasing`: `keras.layers.RandomErasing(factor=(p, p))` (Zhong et al.
        2020: a rectangle of 2-33 % of the image, filled with noise).

    Transforms that are off (0 or `None`) are left out. Geometric transforms
    use bilinear interpolation and reflect padding (zeros for
    `perspective`); colour transforms clip to [0, 255]; so values stay in
    [0, 255]. Layer `i` is seeded with `seed + i`, so the layers draw
    independent random numbers. Batch mixing (`mixup`, `cutmix`) is not part
    of this pipeline: see `build_batch_mixing`.

    Args:
        aug: the augmentation parameters.
        image_size: side of the square input images, pixels.
        seed: seed of the first random layer.

    Returns:
        A `keras.Sequential` mapping float32 `(batch, image_size, image_size, 3)`
        in [0, 255] to the same shape, dtype and range; call it with
        `training=True`. It has no layers when every per-image transform is
        off.
    """
    seeds = itertools.count(seed)
    layers = []
    if aug.random_resized_crop is not None:
        layers.append(RandomResizedCrop(image_size, image_size, aug.random_resized_crop.scale,
                                        aug.random_resized_crop.ratio, seed=next(seeds)))
    if aug.flip:
        layers.append(keras.layers.RandomFlip(aug.flip, seed=next(seeds)))
    if aug.rotation:
        layers.append(keras.layers.RandomRotation(aug.rotation, seed=next(seeds)))
    if aug.shear is not None and (aug.shear.x or aug.shear.y):
        layers.append(keras.layers.RandomShear(aug.shear.x, aug.shear.y, seed=next(seeds)))
    if aug.zoom:
        layers.append(keras.layers.RandomZoom(aug.zoom, seed=next(seeds)))
    if aug.stretch:
        layers.append(keras.layers.RandomZoom(0.0, width_factor=aug.stretch, seed=next(seeds)))
    if aug.translation:
        layers.append(keras.layers.RandomTranslation(aug.translation, aug.translation,
                                                     seed=next(seeds)))
    if aug.perspective:
        layers.append(keras.layers.RandomPerspective(factor=(1.0, 1.0), scale=aug.perspective,
                                                     seed=next(seeds)))
    if aug.crop:
        side = max(1, round(image_size * (1 - aug.crop)))
        layers += [keras.layers.RandomCrop(side, side, seed=next(seeds)),
                   keras.layers.Resizing(image_size, image_size)]
    if aug.rand_augment is not None:
        magnitude = aug.rand_augment.magnitude
        layers.append(keras.layers.RandAugment(value_range=VALUE_RANGE, num_ops=aug.rand_augment.num_ops,
                                               factor=(magnitude, magnitude), seed=next(seeds)))
    jitter = aug.color_jitter
    if jitter is not None:
        if jitter.brightness:
            layers.append(keras.layers.RandomBrightness(jitter.brightness, value_range=VALUE_RANGE,
                                                        seed=next(seeds)))
        if jitter.contrast:
            layers.append(keras.layers.RandomContrast(jitter.contrast, value_range=VALUE_RANGE,
                                                      seed=next(seeds)))
        if jitter.saturation:
            layers.append(RandomSaturation(_saturation_factor(jitter.saturation), seed=next(seeds)))
        if jitter.hue:
            # Keras shifts the hue by up to factor / 2 of the circle either way
            layers.append(keras.layers.RandomHue(2 * jitter.hue, value_range=VALUE_RANGE, seed=next(seeds)))
    if aug.grayscale:
        layers.append(keras.layers.RandomGrayscale(aug.grayscale, seed=next(seeds)))
    if aug.erasing:
        layers.append(keras.layers.RandomErasing(factor=(aug.erasing, aug.erasing), value_range=VALUE_RANGE,
                                                 seed=next(seeds)))
    return keras.Sequential(layers, name="augmentation")


def build_batch_mixing(aug: Augmentation, seed: int):
    """The batch-mixing layer of `aug`: `keras.layers.MixUp`, `keras.layers.CutMix` or `None`.

    - `mixup` (Zhang et al. 2018, "mixup: Beyond Empirical Risk
      Minimization"): each image is blended with another image of the batch,
      `lam * x_i + (1 - lam) * x_j`, `lam ~ Beta(alpha, alpha)` per image,
      and so are the labels: `keras.layers.MixUp(alpha)`.
    - `cutmix` (Yun et al. 2019, "CutMix: Regularization Strategy to Train
      Strong Classifiers with Localizable Features"): a rectangle of another
      image of the batch, of area fraction `1 - lam`, `lam ~ Beta(alpha,
      alpha)`, is pasted in, and the labels are mixed by the pasted area:
      `keras.layers.CutMix(factor=(alpha, alpha))` (Keras draws its Beta
      parameter uniformly in `factor`; equal bounds give the paper's fixed
      alpha; Keras keeps the rectangle inside the image).

    Args:
        aug: the augmentation parameters.
        seed: seed of the layer (`make_dataset` passes the one after the
            per-image layers' seeds).

    Returns:
        `None` when neither is on; else a layer to call as
        `layer({"images": images, "labels": labels}, training=True)` with
        images float32 `(batch, height, width, 3)` in [0, 255] and labels
        float32 one-hot `(batch, num_classes)`; it returns the same dict, the
        images still in [0, 255] (convex combinations or pasted pixels), the
        labels soft, each row summing to 1.
    """
    if aug.mixup:
        return keras.layers.MixUp(alpha=aug.mixup, seed=seed)
    if aug.cutmix:
        return keras.layers.CutMix(factor=(aug.cutmix, aug.cutmix), seed=seed)
    return None
