"""The `tf.data` input of a run: decoded, resized images, class-balanced batch sampling, augmentation."""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from typing import Optional
import numpy as np
import tensorflow as tf
from ..augment import build_augmentation, build_batch_mixing
from ..spec import Augmentation
from .folders import SplitPart


BATCH_SAMPLERS = ("balanced",)
"""`ExperimentSpec.batch_sampler` values other than `None` (`index_batches`)."""
DECODED_CACHE_BYTES = 2 * 1024 ** 3
"""Decoded images kept in memory per process (`decode_images`), bytes: TrashNet's 2155 photos
take 324 MB at 224 px (uint8), 106 MB at 128 px."""

_decoded: "OrderedDict[tuple, tf.Tensor]" = OrderedDict()
_decoded_lock = threading.Lock()


def _load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """One file, decoded and resized: uint8 `(image_size, image_size, 3)` RGB in [0, 255].

    `tf.io.decode_image` (3 channels, the first frame of an animation), then
    `tf.image.resize` (bilinear, float32), rounded half to even and clipped
    back to uint8: the pixels a resized image file would hold, in a quarter
    of float32's memory.
    """
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    resized = tf.image.resize(image, (image_size, image_size))
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def decode_images(paths, image_size: int) -> tf.Tensor:
    """The images of a list of files, decoded and resized once per process.

    Decoding is most of the cost of an input pipeline: on TrashNet's
    training split (1507 photos, 224 px, 2 busy CPU cores) an epoch that
    decodes every file took 6.5 s, decoding once 3.8 s, and an epoch that
    gathers from the decoded copy 0.61 s (`bench/decode_bench.py`). Every
    `make_dataset` of the same files at the same size shares one decoded
    copy: the training phases, the evaluation and the activation-cache
    builds of a run decode each file once. Copies are kept, most recently
    used first, up to `DECODED_CACHE_BYTES`; they are keyed on `image_size`
    and each file's path, size and modification time, so a rewritten file
    is decoded again.

    Args:
        paths: image file paths (`str` or `pathlib.Path`), in the order wanted.
        image_size: side of the square images, pixels.

    Returns:
        A uint8 `tf.Tensor` `(len(paths), image_size, image_size, 3)`, RGB
        in [0, 255] (`_load_image`: bilinear resize, rounded). Treat it as
        read-only: it is shared.

    Raises:
        FileNotFoundError: a file does not exist.
        tf.errors.InvalidArgumentError: a file is not a decodable image.
    """
    paths = [str(path) for path in paths]
    key = (int(image_size), tuple((path, stat.st_size, stat.st_mtime_ns)
                                  for path in paths for stat in [os.stat(path)]))
    with _decoded_lock:
        if key in _decoded:
            _decoded.move_to_end(key)
            return _decoded[key]
    if paths:  # files decoded in parallel, gathered into one tensor by `batch`
        images = tf.data.Dataset.from_tensor_slices(tf.constant(paths, dtype=tf.string)).map(
            lambda path: _load_image(path, image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        ).batch(len(paths)).get_single_element()
    else:
        images = tf.zeros((0, image_size, image_size, 3), dtype=tf.uint8)
    with _decoded_lock:
        _decoded[key] = images
        while _decoded and sum(int(np.prod(t.shape)) for t in _decoded.values()) > DECODED_CACHE_BYTES:
            _decoded.popitem(last=False)  # the least recently used (this one too when it alone is too big)
    return images


def clear_decoded_images() -> int:
    """Drops every decoded copy `decode_images` keeps (to free memory, or to time a cold start).

    Datasets already built keep their own reference until they are deleted.

    Returns:
        The bytes released from the store.
    """
    with _decoded_lock:
        released = sum(int(np.prod(t.shape)) for t in _decoded.values())
        _decoded.clear()
    return released


def index_batches(
    labels,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    batch_sampler: Optional[str] = None,
    epoch_size: Optional[int] = None,
) -> tf.data.Dataset:
    """Batches of row indices into a split part: the order (and, balanced, the draw) of an epoch.

    `make_dataset` (images) and `batch_arrays` (stored features) both gather
    their batches with these indices, so the same labels and seed give the
    same batches on both paths.

    - `batch_sampler=None`: each row once per epoch (the first `epoch_size` rows
      of a permutation, reshuffled every epoch, when `shuffle`), in batches
      of `batch_size`, the last one smaller.
    - `batch_sampler="balanced"`: every batch is drawn evenly from the classes
      present in `labels`. Each class is an endless stream of its rows,
      reshuffled at each pass (`shuffle(...).repeat()`); each row of a batch
      comes from a class picked uniformly at random
      (`tf.data.Dataset.sample_from_datasets`, equal weights, redrawn every
      epoch). An epoch is `ceil(epoch_size / batch_size)` full batches, as
      many steps as without the sampler: small classes are repeated, large
      ones subsampled within the epoch. Always random (`shuffle` is not
      read).

    Args:
        labels: int `(n,)` class indices of the rows.
        batch_size: rows per batch, >= 1.
        shuffle: reshuffle every epoch (`batch_sampler=None` only). Defaults to
            `False`.
        seed: seed of the shuffles and of the class draws. Defaults to `0`.
        batch_sampler: `None` or `"balanced"`. Defaults to `None`.
        epoch_size: rows per epoch; `None` is `n`. Smaller than `n` when
            `labels` pools several augmented copies of the same images.
            Defaults to `None`.

    Returns:
        A `tf.data.Dataset` of int64 `(batch,)` row indices in `[0, n)`.

    Raises:
        ValueError: `batch_sampler` is not `None` or one of `BATCH_SAMPLERS`.
    """
    labels = np.asarray(labels)
    n = len(labels)
    epoch_size = n if epoch_size is None else epoch_size
    if batch_sampler is None:
        dataset = tf.data.Dataset.range(n)
        if shuffle:
            dataset = dataset.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        return dataset.take(epoch_size).batch(batch_size)
    if batch_sampler not in BATCH_SAMPLERS:
        raise ValueError(f"batch_sampler: got {batch_sampler!r}, expected None or one of "
                         f"{', '.join(map(repr, BATCH_SAMPLERS))}")
    classes = np.unique(labels)
    streams = [tf.data.Dataset.from_tensor_slices(np.flatnonzero(labels == c).astype(np.int64))
               .shuffle(int((labels == c).sum()), seed=seed + 1 + i, reshuffle_each_iteration=True).repeat()
               for i, c in enumerate(classes)]
    drawn = tf.data.Dataset.sample_from_datasets(streams, weights=[1.0 / len(classes)] * len(classes),
                                                 seed=seed, rerandomize_each_iteration=True)
    return drawn.batch(batch_size).take(math.ceil(epoch_size / batch_size))


def batch_arrays(
    arrays,
    labels,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    batch_sampler: Optional[str] = None,
    num_classes: Optional[int] = None,
) -> tf.data.Dataset:
    """Batches of stored rows (e.g. the activation cache's features), read batch by batch, as `make_dataset` batches images.

    The batches follow `index_batches`: with the same labels, seed and
    sampler they hold the same rows as `make_dataset`'s batches of the
    images. Several arrays (augmented copies of the same images) are pooled:
    row `r` of the pool is row `r % n` of copy `r // n`, and an epoch still
    draws `len(labels)` rows (or, balanced, `ceil(len(labels) / batch_size)`
    batches) from them.

    Nothing is copied up front: each batch's rows are taken from the arrays
    when the batch is produced (`array.take(rows, axis=0)` inside a
    `tf.numpy_function`), so memory-mapped arrays stay on disk and in the
    page cache. What this pipeline holds in memory is the epoch's index
    order (8 bytes per pooled row, `index_batches`), the labels (4 bytes
    per pooled row) and the batches `tf.data.AUTOTUNE` prefetches.

    Args:
        arrays: a list of arrays `(n, ...)` of the same rows, float32 or
            float16 (cast to float32 per batch): `np.ndarray`, `np.memmap` or
            any object with `shape`, `dtype` and numpy's
            `take(indices, axis=0)` (e.g. `models.cache.VerifiedArray`, which
            checks each chunk's checksum the first time it is read).
        labels: int `(n,)` labels of the rows.
        batch_size: rows per batch.
        shuffle: reshuffle every epoch. Defaults to `False`.
        seed: seed of the shuffle or of the balanced draw. Defaults to `0`.
        batch_sampler: `None` or `"balanced"` (`index_batches`). Defaults to
            `None`.
        num_classes: when given, labels are one-hot float32, as
            `make_dataset(..., num_classes=)` gives them. Defaults to `None`.

    Returns:
        A `tf.data.Dataset` of `(float32 (batch, ...) rows, labels)`: labels
        int32 `(batch,)`, or float32 `(batch, num_classes)` with `num_classes`.
        Iterating it raises what `take` raises (wrapped in a
        `tf.errors.OpError`).
    """
    arrays = list(arrays)
    n = len(labels)
    row_shape = tuple(int(d) for d in arrays[0].shape[1:])
    y = np.tile(np.asarray(labels, dtype=np.int32), len(arrays))
    y_tensor = tf.constant(y)

    def take(index: np.ndarray) -> np.ndarray:
        copy, row = np.divmod(index, n)
        rows = np.empty((len(index), *row_shape), dtype=np.float32)
        for c in np.unique(copy):
            chosen = copy == c
            rows[chosen] = arrays[c].take(row[chosen], axis=0)
        return rows

    def gather(index):
        rows = tf.numpy_function(take, [index], tf.float32, stateful=False)
        return tf.ensure_shape(rows, (None, *row_shape)), tf.gather(y_tensor, index)

    indices = index_batches(y, batch_size, shuffle=shuffle, seed=seed, batch_sampler=batch_sampler, epoch_size=n)
    dataset = indices.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if num_classes is not None:
        dataset = dataset.map(lambda x, labels: (x, tf.one_hot(labels, num_classes)))
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_dataset(
    part: SplitPart,
    image_size: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    augmentation: Augmentation | None = None,
    num_classes: int | None = None,
    batch_sampler: Optional[str] = None,
    stream: Optional[bool] = None,
) -> tf.data.Dataset:
    """Builds the input pipeline of one split part.

    The files are decoded and resized once per process (`decode_images`:
    uint8, shared by every dataset of the same files and size), never per
    epoch, when the part's decoded images fit in `DECODED_CACHE_BYTES`;
    otherwise (or with `stream=True`) each batch's files are read and decoded
    when the batch is produced, so memory does not grow with the part. Both
    sources give the same pixels (`_load_image`). Then, per epoch: the rows of each batch are chosen
    (`index_batches`: in order, reshuffled when `shuffle`, or drawn evenly
    from the classes with `batch_sampler="balanced"`), gathered and cast to
    float32, augmented (when `augmentation` has any transform: Keras
    preprocessing layers called with `training=True`; then `mixup` /
    `cutmix` mixing each batch's images and one-hot labels,
    `models.augment.build_batch_mixing`) and prefetched, following the
    `tf.data` performance guide. Shuffling indices instead of images gives
    the same order for the same seed and moves no pixels. Every parallel
    `map` keeps its input order (`deterministic=True`) and every random draw
    is seeded from `seed` (the shuffle, the balanced draw, each augmentation
    layer, mixup / CutMix); with TensorFlow's op determinism
    (`models.reproducibility`) the augmentation maps also run serially, so
    their draws do not depend on thread timing.

    Args:
        part: the paths and labels to load.
        image_size: side of the square images, pixels.
        batch_size: images per batch; without a sampler the last batch may
            be smaller.
        shuffle: reshuffle the whole part every epoch. Defaults to `False`.
        seed: seed of the shuffle (or of the balanced draw) and of the
            augmentation layers. Defaults to `0`.
        augmentation: random transforms of training batches, or `None`.
            Defaults to `None`.
        num_classes: when given, labels are one-hot float32 (needed, and
            then soft, with `mixup` or `cutmix`). Defaults to `None`.
        batch_sampler: `None`, or `"balanced"`: every batch drawn evenly from the
            classes, `ceil(len(part) / batch_size)` full batches an epoch
            (`index_batches`). Defaults to `None`.
        stream: `True` reads and decodes each batch's files when it is
            produced (for one pass over the files, such as an activation-cache
            build); `False` uses the decoded copy (`decode_images`); `None`
            streams only when the part's decoded size
            (`n * image_size**2 * 3` bytes) exceeds `DECODED_CACHE_BYTES`.
            Defaults to `None`.

    Returns:
        A `tf.data.Dataset` of `(images, labels)`: images float32
        `(batch, image_size, image_size, 3)` RGB in [0, 255] (whole
        numbers before augmentation), labels int32 `(batch,)`, or float32
        `(batch, num_classes)` with `num_classes` (each row sums to 1).

    Raises:
        ValueError: `augmentation` mixes batches and `num_classes` is
            `None`, or `batch_sampler` is unknown.
    """
    if augmentation is not None and augmentation.mixes_batches and num_classes is None:
        raise ValueError("mixup / cutmix mix the labels too: make_dataset needs num_classes")
    labels = tf.constant(np.asarray(part.labels, dtype=np.int32))
    indices = index_batches(part.labels, batch_size, shuffle=shuffle, seed=seed, batch_sampler=batch_sampler)
    if stream is None:
        stream = len(part) * image_size * image_size * 3 > DECODED_CACHE_BYTES
    if stream:  # one row at a time, decoded in parallel in order, then batched again at the same boundaries
        paths = tf.constant([str(path) for path in part.paths] or [""], dtype=tf.string)
        dataset = indices.unbatch().map(
            lambda index: (_load_image(tf.gather(paths, index), image_size), tf.gather(labels, index)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size).map(
            lambda images, labels: (tf.cast(images, tf.float32), labels))
    else:
        images = decode_images(part.paths, image_size)
        dataset = indices.map(
            lambda index: (tf.cast(tf.gather(images, index), tf.float32), tf.gather(labels, index)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augmentation is not None:
        augment = build_augmentation(augmentation, image_size, seed)
        if augment.layers:
            dataset = dataset.map(lambda images, labels: (augment(images, training=True), labels),
                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if num_classes is not None:
        dataset = dataset.map(lambda images, labels: (images, tf.one_hot(labels, num_classes)))
    if augmentation is not None and augmentation.mixes_batches:
        mix = build_batch_mixing(augmentation, seed + len(augment.layers))

        def mix_batch(images, labels):
            mixed = mix({"images": images, "labels": labels}, training=True)
            return mixed["images"], mixed["labels"]

        dataset = dataset.map(mix_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def load_images(paths, image_size: int) -> np.ndarray:
    """Loads image files the way `make_dataset` does, for predicting on files.

    Each file is decoded and resized as `decode_images` does (the same
    rounded pixels), but not kept: these are a user's files, read once.

    Args:
        paths: an iterable of image file paths (`str` or `pathlib.Path`).
        image_size: side of the square images, pixels.

    Returns:
        float32 `np.ndarray` `(n, image_size, image_size, 3)`, RGB in [0, 255]
        (whole numbers).

    Raises:
        tf.errors.InvalidArgumentError: if a file is not a decodable image.
        tf.errors.NotFoundError: if a file does not exist.
    """
    images = [_load_image(tf.constant(str(path)), image_size).numpy() for path in paths]
    return np.array(images, dtype=np.float32).reshape(-1, image_size, image_size, 3)
