"""Tests of the `models/` pipeline with real Keras on tiny generated images."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import models
import models.train as models_train
from models import Augmentation, ExperimentSpec, ModelConfigError
from models.augment import build_augmentation
from models.bases import (BASES, build_base, offline_weights_file, resolve_base,
                          resolve_weights)
from models.build import build_model, describe_model
from models.data import DATA_HOME_ENV, load_data, load_images, make_dataset, resolve_data_dir
from models.evaluate import evaluate_model, plot_history
from models.train import train_model, unfreeze_base

from conftest import SHARED, make_image_folder

CLASSES = ("blue", "green", "red")
PER_CLASS = 12


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """3 classes x 12 images, one with an upper-case extension, plus entries to skip."""
    root = make_image_folder(tmp_path_factory.mktemp("images"), PER_CLASS, CLASSES)
    (root / "red" / "red_000.jpg").rename(root / "red" / "red_000.JPG")
    (root / "red" / "notes.txt").write_text("not an image")
    shutil.copy(root / "red" / "red_001.png", root / "red" / ".hidden.png")
    make_image_folder(root / ".cache", 3, ("skipped",))
    return root


def make_spec(data_dir, **overrides) -> ExperimentSpec:
    params = dict(data_dir=str(data_dir), base="simple_cnn_small", weights=None, image_size=32,
                  val_fraction=0.25, test_fraction=0.25, dense_units=[16], epochs=1,
                  batch_size=8, early_stopping_patience=None, seed=0)
    return ExperimentSpec(**{**params, **overrides})


@pytest.fixture(scope="session")
def split(image_dir):
    return load_data(make_spec(image_dir))


def test_package_import_is_light_and_lazy():
    code = ("import sys, models; models.ExperimentSpec(); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
    assert models.load_data is load_data and models.train is models_train
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        models.nope


# Data -----------------------------------------------------------------------------------


def test_split_is_deterministic_stratified_and_disjoint(image_dir, split):
    again = load_data(make_spec(image_dir))
    assert split.class_names == list(CLASSES)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(split, name).paths, getattr(again, name).paths)
        np.testing.assert_array_equal(getattr(split, name).labels, getattr(again, name).labels)
        assert getattr(split, name).labels.dtype == np.int32
    assert split.manifest_hash == again.manifest_hash
    counts = split.describe()["counts"]
    assert counts == {"train": dict.fromkeys(CLASSES, 6), "val": dict.fromkeys(CLASSES, 3),
                      "test": dict.fromkeys(CLASSES, 3)}
    parts = [set(split.train.paths), set(split.val.paths), set(split.test.paths)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    every = set().union(*parts)
    assert len(every) == 3 * PER_CLASS and any(p.endswith(".JPG") for p in every)
    assert all(Path(p).parent.name == split.class_names[y]
               for part in (split.train, split.val, split.test)
               for p, y in zip(part.paths, part.labels))
    assert not any(".hidden" in p or "notes" in p or ".cache" in p for p in every)
    other_seed = load_data(make_spec(image_dir, seed=1))
    assert set(other_seed.test.paths) != parts[2]
    assert other_seed.manifest_hash != split.manifest_hash


def test_max_images_per_class_takes_a_seeded_subset(image_dir):
    first = load_data(make_spec(image_dir, max_images_per_class=8))
    second = load_data(make_spec(image_dir, max_images_per_class=8))
    assert first.describe()["counts"]["train"] == dict.fromkeys(CLASSES, 4)
    assert sum(len(p) for p in (first.train, first.val, first.test)) == 24
    assert first.manifest_hash == second.manifest_hash


def test_manifest_hash_changes_when_a_file_is_added(image_dir, split, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(image_dir, copy)
    assert load_data(make_spec(copy)).manifest_hash == split.manifest_hash  # relative paths
    make_image_folder(copy / "blue", 1, ("more",))  # sub-sub-folders are ignored
    assert load_data(make_spec(copy)).manifest_hash == split.manifest_hash
    shutil.copy(copy / "blue" / "blue_000.jpg", copy / "blue" / "blue_099.jpeg")
    assert load_data(make_spec(copy)).manifest_hash != split.manifest_hash


def test_describe_is_json_safe(split):
    described = json.loads(json.dumps(split.describe()))
    assert described["class_names"] == list(CLASSES)
    assert described["manifest_hash"] == split.manifest_hash
    assert len(split.manifest_hash) == 64


def _small_class(root):
    make_image_folder(root, 12, ("big",))
    make_image_folder(root, 2, ("tiny",))


def _one_class(root):
    make_image_folder(root, 12, ("only",))


def _flat_folder(root):
    Image.new("RGB", (40, 30)).save(root / "loose.png")
    (root / "empty_class").mkdir()


def _empty_file(root):
    make_image_folder(root, 12, ("a", "b"))
    (root / "b" / "broken.png").write_bytes(b"")


def test_empty_image_file_is_skipped_and_listed(tmp_path):
    _empty_file(tmp_path)
    with pytest.warns(UserWarning, match="broken.png"):
        data = load_data(make_spec(str(tmp_path)))
    assert data.describe()["skipped_files"] == {"b/broken.png": "empty file (0 bytes)"}
    assert sum(len(p) for p in (data.train, data.val, data.test)) == 24


@pytest.mark.parametrize("make, data_dir, match", [
    (_small_class, "{tmp}", r"class folder .*tiny: 2 image\(s\), too few"),
    (_one_class, "{tmp}", r"has 1 class sub-folder\(s\) \['only'\]; need at least 2"),
    (_flat_folder, "{tmp}", "has no class sub-folders with images"),
    (None, "{tmp}/missing", r"folder .*missing does not exist"),
    (None, "builtin:mnist", "got 'builtin:mnist', expected a folder or one of builtin:digits"),
])
def test_bad_data_folders_raise(tmp_path, make, data_dir, match):
    if make:
        make(tmp_path)
    with pytest.raises(ModelConfigError, match=match):
        load_data(make_spec(data_dir.format(tmp=tmp_path)))


def test_digits_export(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("data_home")
    monkeypatch.setenv(DATA_HOME_ENV, str(home))
    folder = resolve_data_dir("builtin:digits")
    assert folder == home / "digits"
    assert sorted(p.name for p in folder.iterdir()) == [str(d) for d in range(10)]
    files = sorted(folder.rglob("*.png"))
    assert len(files) == 1797
    assert os.listdir(home) == ["digits"]  # the staging folder is gone
    image = Image.open(folder / "0" / "digit_0.png")
    assert (image.size, image.mode) == ((32, 32), "RGB")
    pixels = np.asarray(image)
    expected = np.rint(load_digits().images[0] * 255 / 16)  # ink 0..16 -> 0..255
    for row, column, channel in np.ndindex(4, 4, 3):  # 4x4 nearest-neighbour blocks, grey
        np.testing.assert_array_equal(pixels[row::4, column::4, channel], expected)
    mtime = (folder / "0" / "digit_0.png").stat().st_mtime_ns
    assert resolve_data_dir("builtin:digits") == folder
    assert (folder / "0" / "digit_0.png").stat().st_mtime_ns == mtime  # exported once
    data = load_data(make_spec("builtin:digits"))
    assert data.class_names == [str(d) for d in range(10)]
    assert sum(len(p) for p in (data.train, data.val, data.test)) == 1797


def test_make_dataset_yields_raw_rgb_batches(split):
    dataset = make_dataset(split.train, 24, 4, shuffle=True, seed=3)
    batches = list(dataset)
    images, labels = batches[0]
    assert images.shape == (4, 24, 24, 3) and images.dtype == "float32"
    assert labels.shape == (4,) and labels.dtype == "int32"
    every = np.concatenate([b[0].numpy() for b in batches])
    assert every.shape == (18, 24, 24, 3)
    assert 0 <= every.min() and every.max() <= 255 and every.max() > 150
    second_epoch = np.concatenate([b[1].numpy() for b in dataset])
    first_epoch = np.concatenate([b[1].numpy() for b in batches])
    assert sorted(first_epoch) == sorted(second_epoch) and (first_epoch != second_epoch).any()
    in_order = np.concatenate([b[0].numpy() for b in make_dataset(split.test, 24, 4)])
    np.testing.assert_array_equal(in_order, load_images(split.test.paths, 24))


def test_augmentation_keeps_shape_and_value_range(split):
    aug = Augmentation(flip="horizontal_and_vertical", rotation=0.1, zoom=0.2, stretch=0.2,
                       crop=0.25, translation=0.1)
    layers = build_augmentation(aug, 32, seed=0).layers
    assert [type(layer).__name__ for layer in layers] == [
        "RandomFlip", "RandomRotation", "RandomZoom", "RandomZoom", "RandomTranslation",
        "RandomCrop", "Resizing"]
    assert (layers[5].height, layers[5].width) == (24, 24)
    assert not build_augmentation(Augmentation(), 32, seed=0).layers
    plain = np.concatenate([b[0].numpy() for b in make_dataset(split.train, 32, 6)])
    augmented = np.concatenate([b[0].numpy() for b in make_dataset(
        split.train, 32, 6, augmentation=aug)])
    assert augmented.shape == plain.shape == (18, 32, 32, 3)
    assert 0 <= augmented.min() and augmented.max() <= 255
    assert np.abs(augmented - plain).mean() > 1


# Bases and weights ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BASES))
def test_every_registry_base_builds_at_its_min_size(name):
    info = BASES[name]
    base, weights = build_base(make_spec("unused", base=name, image_size=info.min_size))
    assert base.name == "base" and weights.source == "random" and weights.sha256 is None
    assert len(base.output.shape) == 4 and base.output.shape[1] >= 1
    assert base.input.shape[1:] == (info.min_size, info.min_size, 3)
    too_small = info.min_size - 1
    if too_small >= 8:  # ExperimentSpec's own lower bound
        with pytest.raises(ModelConfigError,
                           match=f"{name} needs image_size >= {info.min_size}, got {too_small}"):
            build_base(make_spec("unused", base=name, image_size=too_small))


def test_inception_resnet_v2_refuses_32_px():
    match = "inception_resnet_v2 needs image_size >= 75, got 32"
    with pytest.raises(ModelConfigError, match=match):
        build_base(make_spec("unused", base="InceptionResNetV2", image_size=32))


def test_mobilenet_v2_alpha_is_passed_to_keras():
    spec = make_spec("unused", base="mobilenet_v2", base_kwargs={"alpha": 0.35})
    base, _ = build_base(spec)
    assert base.get_layer("Conv1").filters == 16  # _make_divisible(32 * 0.35, 8)
    assert offline_weights_file(resolve_base("mobilenet_v2"), {"alpha": 0.35}) == \
        "mobilenet_v2_0.35_imagenet_notop.weights.h5"
    assert offline_weights_file(resolve_base("mobilenet"), {}) == \
        "mobilenet_1.0_imagenet_notop.weights.h5"
    assert offline_weights_file(resolve_base("vgg16"), {}) == "vgg16_imagenet_notop.weights.h5"
    with pytest.raises(ModelConfigError, match=r"base mobilenet_v2: cannot build it .*'depth'"):
        build_base(make_spec("unused", base="mobilenet_v2", base_kwargs={"depth": 3}))


@pytest.mark.parametrize("name, canonical, constructor", [
    ("vgg16", "vgg16", "VGG16"),
    ("VGG16", "vgg16", "VGG16"),
    ("MobileNet-V2", "mobilenet_v2", "MobileNetV2"),
    ("mobilenetv2", "mobilenet_v2", "MobileNetV2"),
    ("ResNet50V2", "resnet50_v2", "ResNet50V2"),
    ("Inception_ResNet_V2", "inception_resnet_v2", "InceptionResNetV2"),
    ("SIMPLE-CNN-SMALL", "simple_cnn_small", "simple_cnn_small"),
    ("EfficientNetB3", "efficientnetb3", "EfficientNetB3"),
    ("nasnetmobile", "nasnetmobile", "NASNetMobile"),
    ("MobileNetV3Small", "mobilenetv3small", "MobileNetV3Small"),  # only in keras.applications
])
def test_resolve_base_names(name, canonical, constructor):
    info = resolve_base(name)
    assert (info.name, info.constructor_name) == (canonical, constructor)
    assert callable(info.constructor) and callable(info.preprocess_input)


def test_generic_keras_base_gets_defaults():
    info = resolve_base("EfficientNetB3")
    assert (info.module_name, info.min_size, info.has_imagenet) == (
        "keras.applications.efficientnet", 32, True)


@pytest.mark.parametrize("name, match", [
    ("vgg61", "got 'vgg61', expected a keras.applications model name or one of "
              "simple_cnn_small, simple_cnn_medium; close matches: vgg16, vgg19"),
    ("simple_cnn_large", "close matches: .*simple_cnn_small"),
])
def test_unknown_base_lists_close_matches(name, match):
    with pytest.raises(ModelConfigError, match=match):
        resolve_base(name)


def test_weights_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("NBSWEEP_WEIGHTS_DIR", raising=False)
    vgg16 = resolve_base("vgg16")
    assert resolve_weights(make_spec("x", base="vgg16"), vgg16).source == "random"
    with pytest.raises(ModelConfigError, match=r"weights: file .*nope\.weights\.h5 does not exist"):
        resolve_weights(make_spec("x", weights=str(tmp_path / "nope.weights.h5")), vgg16)
    with pytest.raises(ModelConfigError, match="got 'imagenet' for simple_cnn_small"):
        resolve_weights(make_spec("x", weights="imagenet"), resolve_base("simple_cnn_small"))
    with pytest.raises(ModelConfigError, match=r"weights_dir: folder .*absent does not exist"):
        resolve_weights(make_spec("x", base="vgg16", weights="imagenet",
                                  weights_dir=str(tmp_path / "absent")), vgg16)
    # A folder without the file: Keras's download (cache) is the fallback.
    imagenet = make_spec("x", base="vgg16", weights="imagenet", weights_dir=str(tmp_path))
    assert resolve_weights(imagenet, vgg16).keras_arg == "imagenet"
    assert resolve_weights(imagenet, vgg16).source == "keras"
    offline = tmp_path / "vgg16_imagenet_notop.weights.h5"
    offline.write_bytes(b"weights")
    for spec in (imagenet, make_spec("x", base="vgg16", weights="imagenet")):
        monkeypatch.setenv("NBSWEEP_WEIGHTS_DIR", str(tmp_path))  # used when weights_dir is None
        choice = resolve_weights(spec, vgg16)
        assert (choice.keras_arg, choice.source, choice.path) == (str(offline), "weights_dir",
                                                                  str(offline))
        assert choice.sha256 == hashlib.sha256(b"weights").hexdigest()


def test_imagenet_download_failure_explains_the_fix(tmp_path, monkeypatch):
    """No network (forced: every proxy is a closed local port), no offline file."""
    cached = (Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "models"
              / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")
    if cached.exists():
        pytest.skip(f"{cached} is cached, so Keras would not try to download it")
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.setattr(urllib.request, "_opener", None)  # re-read the proxies
    spec = make_spec("x", base="mobilenet_v2", base_kwargs={"alpha": 0.35}, weights="imagenet",
                     weights_dir=str(tmp_path))
    with pytest.raises(ModelConfigError, match="--weights-dir") as error:
        build_base(spec)
    message = str(error.value)
    assert "no network and no offline file" in message
    assert "mobilenet_v2_0.35_imagenet_notop.weights.h5" in message
    assert "NBSWEEP_WEIGHTS_DIR" in message and "weights: null" in message


def test_weights_file_is_loaded_and_hashed(base_weights_file):
    base, choice = build_base(make_spec("x", weights=base_weights_file))
    assert (choice.source, choice.path) == ("file", base_weights_file)
    assert choice.sha256 == hashlib.sha256(Path(base_weights_file).read_bytes()).hexdigest()
    reference = keras.models.clone_model(base)
    reference.load_weights(base_weights_file)
    for ours, theirs in zip(base.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


def test_wrong_architecture_weights_file_raises(base_weights_file):
    with pytest.raises(ModelConfigError, match=r"weights: .*simple_cnn_small\.weights\.h5 does "
                                               r"not fit base simple_cnn_medium"):
        build_base(make_spec("x", base="simple_cnn_medium", weights=base_weights_file))


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED / "weights").is_dir(), reason=f"{SHARED / 'weights'} is absent")
def test_real_mobilenet_v2_weights_from_weights_dir():
    spec = make_spec("x", base="mobilenet_v2", base_kwargs={"alpha": 0.35}, image_size=96,
                     weights="imagenet", weights_dir=str(SHARED / "weights"))
    base, choice = build_base(spec)
    assert choice.source == "weights_dir"
    assert choice.sha256 == "04af0032331eca800a501cbd14b1861ef1d07bfa5728325084bbe295e7ffaecb"
    reference = keras.applications.MobileNetV2(
        include_top=False, input_shape=(96, 96, 3), alpha=0.35, weights=choice.path)
    for ours, theirs in zip(base.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    model = build_model(spec, 3)
    assert not model.get_layer("base").trainable
    assert describe_model(model, spec)["weights_sha256"] == choice.sha256


# Models ---------------------------------------------------------------------------------


def test_build_model_takes_raw_images_of_any_size():
    model = build_model(make_spec("x"), 3)
    images = np.random.default_rng(0).uniform(0, 255, (2, 50, 40, 3)).astype("float32")
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (2, 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-6)
    assert model.get_layer("base").trainable  # from scratch


def test_flatten_and_gap_heads_differ_by_the_flattened_width():
    gap = build_model(make_spec("x", head="gap"), 3)
    flatten = build_model(make_spec("x", head="flatten"), 3)
    # simple_cnn_small at 32 px: 8x8x64 features; the 16-unit dense layer sees 4096 vs 64.
    assert flatten.count_params() - gap.count_params() == (8 * 8 * 64 - 64) * 16
    assert gap.get_layer("dense_0").input.shape == (None, 64)


def test_pretrained_base_is_frozen_and_described(base_weights_file):
    spec = make_spec("x", weights=base_weights_file, dense_units=[16, 8], l2=1e-4)
    model = build_model(spec, 3)
    described = json.loads(json.dumps(describe_model(model, spec)))
    head_params = (64 * 16 + 16) + (16 * 8 + 8) + (8 * 3 + 3)
    assert described == {
        "base": "simple_cnn_small", "weights": base_weights_file, "weights_source": "file",
        "weights_path": base_weights_file, "weights_sha256": model.weights_choice.sha256,
        "trainable_params": head_params, "total_params": model.count_params(),
        "image_size": 32}
    assert len(model.losses) == 2  # one L2 penalty per hidden dense kernel


def test_unfreeze_base_leaves_batchnorm_frozen(tmp_path):
    weights = tmp_path / "mobilenet_v2.weights.h5"
    spec = make_spec("x", base="mobilenet_v2", base_kwargs={"alpha": 0.35})
    build_base(spec)[0].save_weights(weights)
    model = build_model(spec.model_copy(update={"weights": str(weights)}), 3)
    base = model.get_layer("base")
    assert not any(layer.trainable for layer in base.layers)
    unfrozen = unfreeze_base(model, 10)
    expected = [layer.name for layer in base.layers[-10:]
                if not isinstance(layer, keras.layers.BatchNormalization)]
    assert unfrozen == expected and 0 < len(expected) < 10
    assert [layer.name for layer in base.layers if layer.trainable] == expected


# Training and evaluation ----------------------------------------------------------------


@pytest.mark.slow
def test_train_and_evaluate_end_to_end(split, base_weights_file, tmp_path):
    spec = make_spec(split.data_dir, weights=base_weights_file, epochs=2, lr_schedule="step",
                     lr_step_milestones=[1], lr_step_gamma=0.5, class_weight="balanced",
                     augmentation={"flip": "horizontal"}, fine_tune_layers=5,
                     fine_tune_epochs=2, fine_tune_learning_rate=1e-4)
    model = build_model(spec, len(split.class_names))
    result = train_model(model, split, spec, tmp_path, verbose=0)

    # the per-epoch checkpoints (for warm starts) and TensorBoard logs stay
    assert {p.name for p in tmp_path.iterdir()} == {"model.keras", "checkpoints", "tensorboard"}
    assert list(result.history) == ["head", "fine_tune"]
    for phase, epochs in (("head", 2), ("fine_tune", 2)):
        assert set(result.history[phase]) == {"loss", "accuracy", "val_loss", "val_accuracy",
                                              "learning_rate", "epoch_s"}
        assert all(len(v) == epochs for v in result.history[phase].values())
    np.testing.assert_allclose(result.history["head"]["learning_rate"], [1e-3, 5e-4])
    np.testing.assert_allclose(result.history["fine_tune"]["learning_rate"], [1e-4, 1e-4])
    val_losses = result.history["head"]["val_loss"] + result.history["fine_tune"]["val_loss"]
    assert result.epochs_run == 4
    assert result.best_epoch == int(np.argmin(val_losses)) + 1
    assert result.best_phase == ("head" if result.best_epoch <= 2 else "fine_tune")
    assert result.train_s > 0
    json.dumps(result.to_dict())
    # TensorBoard: one step per epoch across both phases, the same values as the history
    for folder, key in (("train", "loss"), ("validation", "val_loss")):
        logged = _tensorboard_scalars(tmp_path / "tensorboard" / folder, "epoch_loss")
        assert [step for step, _ in logged] == [0, 1, 2, 3]
        np.testing.assert_allclose([v for _, v in logged],
                                   result.history["head"][key] + result.history["fine_tune"][key], rtol=1e-5)
    assert _val_loss(model, split) == pytest.approx(min(val_losses), rel=1e-4)  # best weights
    # Fine-tuning unfroze the last block (conv, BatchNorm, ReLU, pool, dropout) but its BatchNorm.
    base = model.get_layer("base")
    assert [type(layer).__name__ for layer in base.layers if layer.trainable] == [
        "Conv2D", "ReLU", "MaxPooling2D", "Dropout"]
    assert base.layers[-5].trainable and not base.layers[-6].trainable

    evaluation = evaluate_model(model, split, spec, tmp_path)
    metrics = json.loads(json.dumps(evaluation.to_dict()))["metrics"]
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert list(predictions.columns) == ["path", "true_label", "predicted_label", "confidence",
                                         "prob_blue", "prob_green", "prob_red"]
    assert len(predictions) == len(split.test) == 9
    assert sorted(predictions["path"]) == sorted(split.test.paths)
    np.testing.assert_allclose(predictions.filter(like="prob_").sum(axis=1), 1, atol=1e-5)
    assert metrics["accuracy"] == pytest.approx(
        (predictions["true_label"] == predictions["predicted_label"]).mean())
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 9 and matrix.trace() == round(
        9 * metrics["accuracy"])
    assert {c: v["support"] for c, v in metrics["per_class"].items()} == dict.fromkeys(CLASSES, 3)
    assert set(metrics) >= {"weighted_precision", "weighted_recall", "weighted_f1",
                            "macro_precision", "macro_recall", "macro_f1"}
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    curves = plot_history(result.history, tmp_path / "training_curves.png")
    assert curves.read_bytes()[:4] == b"\x89PNG"

    reloaded = keras.models.load_model(tmp_path / "model.keras")
    images = load_images(split.test.paths, 32)
    difference = np.abs(reloaded.predict(images, verbose=0) - model.predict(images, verbose=0))
    assert difference.max() <= 1e-6
    assert describe_model(reloaded, spec)["weights_source"] == "file"


def _tensorboard_scalars(folder, tag) -> list[tuple[int, float]]:
    """(step, value) of a scalar in a TensorBoard log folder, read back with TensorBoard's own reader."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0}).Reload()
    return sorted((e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag))


def _val_loss(model, split) -> float:
    return model.evaluate(make_dataset(split.val, 32, 8), verbose=0, return_dict=True)["loss"]


@pytest.mark.slow
def test_head_phase_weights_win_over_a_worse_fine_tuning(split, base_weights_file, tmp_path):
    """A fine-tuning rate of 1.0 wrecks the model: the head phase's best weights are kept."""
    spec = make_spec(split.data_dir, weights=base_weights_file, epochs=2, fine_tune_layers=5,
                     fine_tune_epochs=1, fine_tune_learning_rate=1.0)
    model = build_model(spec, 3)
    result = train_model(model, split, spec, tmp_path, verbose=0)
    head, fine_tune = result.history["head"]["val_loss"], result.history["fine_tune"]["val_loss"]
    assert min(fine_tune) > 2 * min(head)
    assert (result.best_phase, result.best_epoch) == ("head", int(np.argmin(head)) + 1)
    assert _val_loss(model, split) == pytest.approx(min(head), rel=1e-4)


@pytest.mark.slow
def test_from_scratch_training_with_cosine_schedule_and_early_stopping(split, tmp_path):
    spec = make_spec(split.data_dir, base="simple_cnn_medium", optimizer="sgd",
                     lr_schedule="cosine", epochs=3, early_stopping_patience=1,
                     fine_tune_layers=2, fine_tune_epochs=1)
    model = build_model(spec, 3)
    result = train_model(model, split, spec, tmp_path, verbose=0)
    head = result.history["head"]
    assert 2 <= len(head["loss"]) <= 3 and result.epochs_run == len(head["loss"]) + 1
    assert head["learning_rate"] == sorted(head["learning_rate"], reverse=True)
    assert head["learning_rate"][0] < 1e-3
    # A from-scratch base stays trainable as a whole, BatchNormalization included.
    assert all(layer.trainable for layer in model.get_layer("base").layers)
    assert result.history["fine_tune"]["learning_rate"] == [pytest.approx(1e-5)]
