"""Augmentation: the per-image Keras layers, RandomResizedCrop, mixup / CutMix and their parameters."""

import keras
import numpy as np
import pytest
from pydantic import ValidationError

from models import cache
from models.augment import RandomResizedCrop, build_augmentation, build_batch_mixing
from models.build import build_model
from models.data import load_data, make_dataset
from models.spec import Augmentation, ExperimentSpec
from models.training import train_model

from helpers import make_image_folder

SIZE = 16


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """4 images float32 (4, 16, 16, 3) in [0, 255]: a colour gradient in [40, 200] plus noise."""
    y = np.mgrid[0:SIZE, 0:SIZE][0] / (SIZE - 1)
    gradient = 40 + 160 * y[..., None] * np.array([1.0, 0.5, 0.2])
    noise = np.random.default_rng(0).normal(0, 10, (4, SIZE, SIZE, 3))
    return np.clip(gradient[None] + noise, 0, 255).astype("float32")


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp("augment_images"), 8, ("red", "green", "blue"))
    return load_data(_spec(root))


def _spec(data_dir, **overrides) -> ExperimentSpec:
    params = dict(data_dir=str(data_dir), base="simple_cnn_small", weights=None, image_size=SIZE,
                  val_fraction=0.25, test_fraction=0.25, dense_units=[8], epochs=1, batch_size=6,
                  early_stopping_patience=None, seed=0)
    return ExperimentSpec(**{**params, **overrides})


NEW_TRANSFORMS = [
    ({"random_resized_crop": {}}, ["RandomResizedCrop"]),
    ({"random_resized_crop": {"scale": [0.2, 0.5], "ratio": [0.5, 2]}}, ["RandomResizedCrop"]),
    ({"shear": 0.3}, ["RandomShear"]),
    ({"shear": {"x": 0.0, "y": 0.4}}, ["RandomShear"]),
    ({"perspective": 0.5}, ["RandomPerspective"]),
    ({"color_jitter": {"brightness": 0.3, "contrast": 0.5, "saturation": 0.9, "hue": 0.2}},
     ["RandomBrightness", "RandomContrast", "RandomSaturation", "RandomHue"]),
    ({"color_jitter": {"saturation": 2.0}}, ["RandomSaturation"]),  # Keras's own goes negative here
    ({"grayscale": 1.0}, ["RandomGrayscale"]),
    ({"erasing": 1.0}, ["RandomErasing"]),
    ({"rand_augment": {"num_ops": 2, "magnitude": 0.5}}, ["RandAugment"]),
]


@pytest.mark.parametrize("params, layers", NEW_TRANSFORMS, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_each_transform_changes_a_batch_and_keeps_shape_dtype_and_range(images, params, layers):
    augment = build_augmentation(Augmentation(**params), SIZE, seed=0)
    assert [type(layer).__name__ for layer in augment.layers] == layers
    out = keras.ops.convert_to_numpy(augment(images, training=True))
    assert out.shape == images.shape and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 255
    assert np.abs(out - images).mean() > 1
    again = keras.ops.convert_to_numpy(build_augmentation(Augmentation(**params), SIZE, seed=0)(
        images, training=True))
    np.testing.assert_allclose(again, out, atol=1e-3)  # a fixed seed repeats the batch


def test_all_transforms_together_in_the_documented_order(images):
    aug = Augmentation(random_resized_crop={}, flip="horizontal", rotation=0.1, shear=0.1, zoom=0.1,
                       stretch=0.1, translation=0.1, perspective=0.2, crop=0.1,
                       rand_augment={"num_ops": 1}, color_jitter={"brightness": 0.1, "hue": 0.05},
                       grayscale=0.2, erasing=0.5)
    augment = build_augmentation(aug, SIZE, seed=0)
    assert [type(layer).__name__ for layer in augment.layers] == [
        "RandomResizedCrop", "RandomFlip", "RandomRotation", "RandomShear", "RandomZoom", "RandomZoom",
        "RandomTranslation", "RandomPerspective", "RandomCrop", "Resizing", "RandAugment",
        "RandomBrightness", "RandomHue", "RandomGrayscale", "RandomErasing"]
    out = keras.ops.convert_to_numpy(augment(images, training=True))
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 255


def test_random_resized_crop_is_per_image_seeded_and_follows_torchvision():
    gradient = np.repeat(np.arange(SIZE, dtype="float32")[:, None] * 17, SIZE, axis=1)  # row y = 17 y
    batch = np.repeat(gradient[None, ..., None], 3, axis=-1).repeat(4, axis=0)
    out = keras.ops.convert_to_numpy(RandomResizedCrop(SIZE, SIZE, seed=1)(batch))
    assert not np.allclose(out[0], out[1])  # each image its own crop
    same = keras.ops.convert_to_numpy(RandomResizedCrop(SIZE, SIZE, seed=1)(batch))
    other = keras.ops.convert_to_numpy(RandomResizedCrop(SIZE, SIZE, seed=2)(batch))
    np.testing.assert_array_equal(same, out)
    assert not np.allclose(other, out)
    # the whole image at ratio 1: unchanged
    whole = RandomResizedCrop(SIZE, SIZE, scale=(1, 1), ratio=(1, 1), seed=0)(batch)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(whole), batch, atol=1e-4)
    # no draw fits (area 1 at ratio 2): torchvision's fallback, the centred crop at ratio 2 (rows 4-11)
    fallback = keras.ops.convert_to_numpy(RandomResizedCrop(SIZE, SIZE, scale=(1, 1), ratio=(2, 2))(batch))
    np.testing.assert_allclose(fallback[:, 0, :, :], 4 * 17, atol=1e-3)
    np.testing.assert_allclose(fallback[:, -1, :, :], 11 * 17, atol=1e-3)
    # not training: only resized
    assert RandomResizedCrop(8, 8)(batch, training=False).shape == (4, 8, 8, 3)


@pytest.mark.parametrize("params", [{"mixup": 0.4}, {"cutmix": 1.0}], ids=["mixup", "cutmix"])
def test_batch_mixing_gives_soft_labels_summing_to_one(images, params):
    assert build_batch_mixing(Augmentation(), seed=0) is None
    mix = build_batch_mixing(Augmentation(**params), seed=0)
    labels = keras.ops.one_hot(np.array([0, 1, 2, 0]), 3)
    out = {k: keras.ops.convert_to_numpy(v) for k, v in mix({"images": images, "labels": labels},
                                                             training=True).items()}
    assert out["images"].shape == images.shape and out["images"].dtype == np.float32
    assert 0 <= out["images"].min() and out["images"].max() <= 255
    assert out["labels"].shape == (4, 3)
    np.testing.assert_allclose(out["labels"].sum(axis=1), 1, atol=1e-5)
    assert ((out["labels"] > 1e-3) & (out["labels"] < 1 - 1e-3)).any()  # soft
    assert np.abs(out["images"] - images).mean() > 0.1


def test_make_dataset_one_hot_labels_and_mixing(tiny_split):
    aug = Augmentation(mixup=0.4, flip="horizontal")
    with pytest.raises(ValueError, match="needs num_classes"):
        make_dataset(tiny_split.train, SIZE, 6, augmentation=aug)
    labels = np.concatenate([y.numpy() for _, y in make_dataset(
        tiny_split.train, SIZE, 6, shuffle=True, augmentation=aug, num_classes=3)])
    assert labels.shape == (len(tiny_split.train), 3) and labels.dtype == np.float32
    np.testing.assert_allclose(labels.sum(axis=1), 1, atol=1e-5)
    assert ((labels > 1e-3) & (labels < 1 - 1e-3)).any()
    val = np.concatenate([y.numpy() for _, y in make_dataset(tiny_split.val, SIZE, 6, num_classes=3)])
    np.testing.assert_array_equal(val, np.eye(3)[tiny_split.val.labels])  # hard, one-hot


@pytest.mark.parametrize(
    "params, match",
    [
        ({"blur": 0.1}, r"unknown key augmentation\.blur; allowed keys of augmentation: "
                        r"random_resized_crop, flip, rotation, shear, zoom, stretch, translation, "
                        r"perspective, crop, rand_augment, color_jitter, grayscale, erasing, mixup, cutmix"),
        ({"blur": 1, "sharpen": 1}, r"unknown keys augmentation\.blur, augmentation\.sharpen"),
        ({"shear": {"z": 0.1}}, r"unknown key augmentation\.shear\.z; allowed keys of augmentation\.shear: x, y"),
        ({"color_jitter": {"gamma": 1}}, r"allowed keys of augmentation\.color_jitter: brightness, contrast, "
                                         r"saturation, hue"),
        ({"random_resized_crop": {"size": 1}}, r"allowed keys of augmentation\.random_resized_crop: scale, ratio"),
        ({"rand_augment": {"n": 2}}, r"allowed keys of augmentation\.rand_augment: num_ops, magnitude"),
    ],
)
def test_unknown_keys_are_refused_with_the_allowed_keys(params, match):
    with pytest.raises(ValidationError, match=match):
        ExperimentSpec(augmentation=params)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"random_resized_crop": {"scale": [0.5, 0.2]}}, r"scale: got \[0\.5, 0\.2\], expected \[min, max\]"),
        ({"random_resized_crop": {"scale": [0, 1]}}, r"0\.0 < min <= max <= 1\.0"),
        ({"random_resized_crop": {"scale": [0.5, 1.5]}}, r"scale: got"),
        ({"random_resized_crop": {"ratio": [0, 1]}}, r"ratio: got"),
        ({"random_resized_crop": {"ratio": [2, 1]}}, r"ratio: got"),
        ({"random_resized_crop": {"ratio": [1, 2, 3]}}, r"at most 2 items"),
        ({"shear": 1.5}, r"less than or equal to 1"),
        ({"shear": -0.1}, r"greater than or equal to 0"),
        ({"perspective": 1.1}, r"less than or equal to 1"),
        ({"color_jitter": {"hue": 0.6}}, r"less than or equal to 0\.5"),
        ({"color_jitter": {"brightness": -0.1}}, r"greater than or equal to 0"),
        ({"grayscale": 1.5}, r"less than or equal to 1"),
        ({"erasing": -0.5}, r"greater than or equal to 0"),
        ({"rand_augment": {"num_ops": 0}}, r"greater than or equal to 1"),
        ({"rand_augment": {"magnitude": 2}}, r"less than or equal to 1"),
        ({"mixup": -1}, r"greater than or equal to 0"),
        ({"cutmix": 2.0}, r"less than or equal to 1"),
        ({"mixup": 0.2, "cutmix": 0.5}, r"mixup \(0\.2\) and cutmix \(0\.5\) are exclusive"),
    ],
)
def test_bad_factors_are_refused(params, match):
    with pytest.raises(ValidationError, match=match):
        ExperimentSpec(augmentation=params)


def test_spec_normalises_and_round_trips():
    spec = ExperimentSpec(augmentation={"random_resized_crop": {"scale": [0.5, 1]}, "shear": 0.2,
                                        "color_jitter": {"hue": 0.1}, "cutmix": 1})
    aug = spec.augmentation
    assert aug.shear.x == aug.shear.y == 0.2 and aug.random_resized_crop.ratio == [3 / 4, 4 / 3]
    assert aug.mixes_batches and not Augmentation(erasing=0.5).mixes_batches
    assert ExperimentSpec.model_validate(spec.model_dump(mode="json")) == spec
    off = Augmentation(shear=0, color_jitter={"brightness": 0, "hue": 0.0})
    assert off.shear is None and off.color_jitter is None  # off, so no activation-cache bypass
    assert not build_augmentation(off, SIZE, seed=0).layers


def test_mixing_bypasses_the_activation_cache_with_a_reason():
    spec = ExperimentSpec(augmentation={"mixup": 0.2}, augmented_copies=2)
    assert "mixup / cutmix mix images and labels" in cache.bypass_reason(spec)
    assert cache.bypass_reason(ExperimentSpec(augmentation={"erasing": 0.5}, augmented_copies=2)) is None


@pytest.mark.slow
def test_fit_with_mixup_uses_soft_labels_and_categorical_loss(tiny_split, tmp_path):
    spec = _spec(tiny_split.data_dir, augmentation={"mixup": 0.4, "random_resized_crop": {}})
    model = build_model(spec, len(tiny_split.class_names))
    result = train_model(model, tiny_split, spec, tmp_path, verbose=0)
    assert model.loss == "categorical_crossentropy"
    history = result.history["head"]
    assert all(np.isfinite(history[key][0]) for key in ("loss", "accuracy", "val_loss", "val_accuracy"))
    assert 0 <= history["val_accuracy"][0] <= 1
    assert result.activation_cache["head"]["status"] == cache.BYPASSED
    assert "mixup / cutmix" in result.activation_cache["head"]["reason"]
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    assert reloaded.predict(np.zeros((1, SIZE, SIZE, 3), "float32"), verbose=0).shape == (1, 3)
