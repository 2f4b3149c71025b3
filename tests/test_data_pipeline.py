"""The balanced batch sampler (`batch_sampler: balanced`) on images and on cached features, and decoding once per run.

Decoding lives here too: the sampler gathers its batches from the images
`models.data.decode_images` decoded once, so both are one pipeline.
"""

import math
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from models import ExperimentSpec
import tensorflow as tf
from models.data import (SplitPart, batch_arrays, decode_images, index_batches, list_image_folder,
                         load_data, make_dataset)

COUNTS = {"red": 30, "green": 10, "blue": 5}
"""An imbalanced folder: 30 / 10 / 5 images."""
BATCH = 8


@pytest.fixture(scope="module")
def imbalanced_dir(tmp_path_factory):
    """Images of class `c` are dominated by colour channel `c` (classes sorted: blue, green, red)."""
    root = tmp_path_factory.mktemp("imbalanced")
    rng = np.random.default_rng(0)
    for name, count in COUNTS.items():
        channel = {"red": 0, "green": 1, "blue": 2}[name]
        (root / name).mkdir()
        for i in range(count):
            pixels = rng.integers(0, 60, size=(10, 12, 3), dtype=np.uint8)
            pixels[..., channel] += 180
            Image.fromarray(pixels).save(root / name / f"{name}_{i:02d}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def whole_folder(imbalanced_dir) -> SplitPart:
    """All 45 images as one part; labels 0 = blue (5), 1 = green (10), 2 = red (30)."""
    folder = list_image_folder(imbalanced_dir)
    paths = [str(p) for images in folder.images for p in images]
    labels = [label for label, images in enumerate(folder.images) for _ in images]
    return SplitPart(np.array(paths), np.array(labels, dtype=np.int32))


def _epochs(dataset, n):
    return [[(x.numpy(), y.numpy()) for x, y in dataset] for _ in range(n)]


def test_balanced_batches_draw_the_classes_evenly(whole_folder):
    assert np.bincount(whole_folder.labels).tolist() == [5, 10, 30]
    dataset = make_dataset(whole_folder, 16, BATCH, shuffle=True, seed=0, batch_sampler="balanced")
    epochs = _epochs(dataset, 40)
    steps = math.ceil(len(whole_folder) / BATCH)  # 6: an epoch as long as without the sampler
    assert all(len(epoch) == steps for epoch in epochs)
    assert all(x.shape == (BATCH, 16, 16, 3) and x.dtype == np.float32 and y.shape == (BATCH,)
               for epoch in epochs for x, y in epoch)
    labels = np.concatenate([y for epoch in epochs for _, y in epoch])
    images = np.concatenate([x for epoch in epochs for x, _ in epoch])
    n, p = len(labels), 1 / 3
    tolerance = 4 * math.sqrt(n * p * (1 - p))  # 4 binomial standard deviations: 1920 draws, +/- 83
    counts = np.bincount(labels, minlength=3)
    assert np.all(np.abs(counts - n * p) <= tolerance), counts
    # each image is the one of its label (blue, green, red: channels 2, 1, 0)
    assert (2 - images.mean(axis=(1, 2)).argmax(axis=1) == labels).all()
    # every blue image is drawn, epochs differ, and the same seed gives the same epochs
    blue = images[labels == 0].reshape(-1, 16 * 16 * 3)
    assert len(np.unique(blue, axis=0)) == 5
    assert any((a[1] != b[1]).any() for a, b in zip(epochs[0], epochs[1]))
    again = _epochs(make_dataset(whole_folder, 16, BATCH, shuffle=True, seed=0, batch_sampler="balanced"), 1)[0]
    assert all((a[1] == b[1]).all() for a, b in zip(epochs[0], again))

    plain = np.concatenate([y for _, y in make_dataset(whole_folder, 16, BATCH, shuffle=True, seed=0)])
    assert np.bincount(plain).tolist() == [5, 10, 30]  # without the sampler: each image once per epoch


def test_balanced_features_draw_as_images_do(whole_folder):
    """Stored features (`batch_arrays`) are drawn in the same batches as images, labels and rows matched."""
    labels = whole_folder.labels
    features = np.arange(len(labels), dtype=np.float16)[:, None] * np.ones((1, 4), np.float16)
    image_labels = [y.numpy() for _, y in make_dataset(whole_folder, 16, BATCH, shuffle=True, seed=3,
                                                       batch_sampler="balanced")]
    batches = list(batch_arrays([features], labels, BATCH, shuffle=True, seed=3, batch_sampler="balanced"))
    assert len(batches) == len(image_labels) == 6
    for (x, y), expected in zip(batches, image_labels):
        assert x.dtype == "float32" and x.shape == (BATCH, 4)
        np.testing.assert_array_equal(y.numpy(), expected)
        np.testing.assert_array_equal(labels[x.numpy()[:, 0].astype(int)], y.numpy())

    x, y = next(iter(batch_arrays([features], labels, BATCH, seed=3, batch_sampler="balanced", num_classes=3)))
    assert y.shape == (BATCH, 3) and y.dtype == "float32"  # one-hot, as make_dataset(..., num_classes=3)
    np.testing.assert_array_equal(y.numpy().argmax(1), labels[x.numpy()[:, 0].astype(int)])

    copies = [features, features + 100]  # two augmented copies: pooled, an epoch still 45 rows / 6 batches
    pooled = np.concatenate([y.numpy() for _, y in batch_arrays(copies, labels, BATCH, shuffle=True, seed=1,
                                                               batch_sampler="balanced")])
    assert len(pooled) == 6 * BATCH
    streamed = batch_arrays(copies, labels, BATCH, shuffle=True, seed=1)
    reference = in_memory_reference(copies, labels, BATCH, seed=1)
    for _ in range(2):  # two epochs: reshuffled alike
        plain, expected = list(streamed), list(reference)
        assert sum(len(y) for _, y in plain) == 45 and len(plain) == len(expected)
        for (x, y), (x_ref, y_ref) in zip(plain, expected):
            np.testing.assert_array_equal(x.numpy(), x_ref.numpy())
            np.testing.assert_array_equal(y.numpy(), y_ref.numpy())


def in_memory_reference(arrays, labels, batch_size, seed):
    """The in-memory reader the activation cache used before it streamed: every row copied into one
    constant, shuffled with a buffer of the whole pool, the first `len(labels)` rows an epoch."""
    x = np.concatenate(arrays).astype(np.float32)
    y = np.tile(np.asarray(labels, dtype=np.int32), len(arrays))
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=seed, reshuffle_each_iteration=True) \
        .take(len(labels)).batch(batch_size)


def test_streamed_images_are_the_decoded_images(whole_folder):
    """`make_dataset(stream=True)` reads each batch's files when it is produced; same pixels, same batches."""
    for kwargs in ({}, {"shuffle": True, "seed": 4}, {"shuffle": True, "seed": 4, "batch_sampler": "balanced"}):
        streamed = list(make_dataset(whole_folder, 16, BATCH, stream=True, **kwargs))
        decoded = list(make_dataset(whole_folder, 16, BATCH, stream=False, **kwargs))
        assert len(streamed) == len(decoded) == math.ceil(len(whole_folder) / BATCH)
        for (x, y), (x_ref, y_ref) in zip(streamed, decoded):
            assert x.dtype == x_ref.dtype == tf.float32
            np.testing.assert_array_equal(x.numpy(), x_ref.numpy())
            np.testing.assert_array_equal(y.numpy(), y_ref.numpy())


def test_index_batches_without_a_sampler_cover_each_row_once():
    labels = np.array([0] * 7 + [1] * 3)
    batches = [b.numpy() for b in index_batches(labels, 4, shuffle=True, seed=0)]
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches)) == list(range(10))
    assert [b.numpy().tolist() for b in index_batches(labels, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="batch_sampler: got 'even'"):
        index_batches(labels, 4, batch_sampler="even")


@pytest.mark.parametrize("params, match", [
    ({"batch_sampler": "even"}, "balanced"),
    ({"batch_sampler": "balanced", "class_weight": "balanced"}, "both correct for class imbalance"),
    ({"sampler": "balanced"}, "sampler"),  # the old name: an unknown key of ExperimentSpec
])
def test_spec_refuses_bad_samplers(params, match):
    with pytest.raises(ValidationError, match=match):
        ExperimentSpec(**params)
    assert ExperimentSpec().batch_sampler is None
    assert ExperimentSpec(batch_sampler="balanced").batch_sampler == "balanced"


@pytest.mark.slow
@pytest.mark.parametrize("activation_cache", [True, False])
def test_training_with_the_balanced_sampler(imbalanced_dir, base_weights_file, tmp_path, activation_cache):
    """A frozen base trains on balanced batches of cached features (not bypassed), or of images."""
    from models import build_model, train_model

    spec = ExperimentSpec(data_dir=str(imbalanced_dir), base="simple_cnn_small", weights=base_weights_file,
                          image_size=32, epochs=2, batch_size=4, dense_units=[8], val_fraction=0.2,
                          test_fraction=0.2, seed=0, batch_sampler="balanced", activation_cache=activation_cache)
    data = load_data(spec)
    training = train_model(build_model(spec, 3), data, spec, tmp_path, verbose=0)
    use = training.activation_cache["head"]
    assert use["status"] == ("built" if activation_cache else "off"), use
    assert len(training.history["head"]["loss"]) == 2
    assert all(np.isfinite(training.history["head"]["loss"]))


# Decoding once ------------------------------------------------------------------------


def test_files_are_decoded_once_not_every_epoch(imbalanced_dir, tmp_path):
    folder = shutil.copytree(imbalanced_dir, tmp_path / "images")
    spec = ExperimentSpec(data_dir=str(folder), val_fraction=0.2, test_fraction=0.2, seed=0)
    data = load_data(spec)
    dataset = make_dataset(data.train, 16, BATCH, shuffle=True, seed=0)
    first = np.concatenate([x for x, _ in dataset.as_numpy_iterator()])
    decoded = decode_images(data.train.paths, 16)
    assert decoded.dtype == "uint8" and decoded.shape == (len(data.train), 16, 16, 3)
    assert decode_images(data.train.paths, 16) is decoded  # one decoded copy per files and size
    assert np.array_equal(first, np.round(first))  # whole numbers in [0, 255]: uint8 pixels
    for path in data.train.paths:  # later epochs read no file
        os.unlink(path)
    second = np.concatenate([x for x, _ in dataset.as_numpy_iterator()])
    assert sorted(map(bytes, first)) == sorted(map(bytes, second))


def test_a_rewritten_file_is_decoded_again(imbalanced_dir, tmp_path):
    folder = shutil.copytree(imbalanced_dir, tmp_path / "images")
    paths = sorted(str(p) for p in (folder / "red").iterdir())[:3]
    before = decode_images(paths, 8).numpy()
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(paths[0] + ".png", format="PNG")
    os.replace(paths[0] + ".png", paths[0])
    after = decode_images(paths, 8).numpy()
    assert after[0].max() == 0 and before[0].max() > 0
    np.testing.assert_array_equal(after[1:], before[1:])
    assert decode_images(paths, 12).shape == (3, 12, 12, 3)  # another size, another copy
