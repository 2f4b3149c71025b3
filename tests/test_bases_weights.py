"""`models.bases.weights`: where a base's initial weights come from (`resolve_weights`, `WeightsChoice`), the
offline ImageNet file names (`offline_weights_file`, `imagenet_fix`), the file Keras would download
(`keras_imagenet_file`, `KerasWeightsFile`), and `build_base` loading and hashing them (real Keras, small
bases; the real ImageNet files of ../shared only where present)."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import keras
import numpy as np
import pytest

from models import ModelConfigError
from models.bases import build_base, resolve_base, resolve_weights
from models.bases.weights import (WEIGHTS_DIR_ENV, KerasWeightsFile, WeightsChoice, imagenet_fix, keras_imagenet_file,
                                  offline_weights_file)
from models.build import build_model, describe_model

from helpers import SHARED, make_spec

VGG16_SHA256 = "a2f51117308129c3de9a523c91d35160eb75a6a9e5db1e2afb4f48e48dfb733a"
"""sha256 of ../shared/weights/vgg16_imagenet_notop.weights.h5, as its README lists it."""


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


@pytest.mark.slow
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


# WeightsChoice, file names, messages ------------------------------------------------------------------


@pytest.mark.parametrize("choice, text", [
    (WeightsChoice(None, "random", None), "random initialisation"),
    (WeightsChoice("/w/mine.h5", "file", "0123456789abcdef" * 4, "/w/mine.h5"),
     "weights file /w/mine.h5 (sha256 0123456789ab)"),
    (WeightsChoice("/d/vgg16_imagenet_notop.weights.h5", "weights_dir", "f" * 64, "/d/vgg16_imagenet_notop.weights.h5"),
     "offline ImageNet weights /d/vgg16_imagenet_notop.weights.h5 (sha256 ffffffffffff)"),
    (WeightsChoice("imagenet", "keras", None), "Keras's ImageNet weights"),  # before the download
    (WeightsChoice("imagenet", "keras", "e" * 64, "/k/v.h5"), "Keras's ImageNet weights /k/v.h5 (sha256 eeeeeeeeeeee)"),
])
def test_weights_choice_describes_itself(choice, text):
    assert str(choice) == text


@pytest.mark.parametrize("base, kwargs, name", [
    ("vgg16", {}, "vgg16_imagenet_notop.weights.h5"),
    ("VGG16", {"alpha": 0.5}, "vgg16_imagenet_notop.weights.h5"),  # no alpha argument: none in the name
    ("resnet50", {}, "resnet50_imagenet_notop.weights.h5"),
    ("mobilenet", {}, "mobilenet_1.0_imagenet_notop.weights.h5"),  # alpha defaults to 1.0
    ("mobilenet", {"alpha": 1}, "mobilenet_1.0_imagenet_notop.weights.h5"),  # formatted as a float
    ("MobileNetV2", {"alpha": 0.35}, "mobilenet_v2_0.35_imagenet_notop.weights.h5"),
    ("mobilenet_v2", {"alpha": 0.75}, "mobilenet_v2_0.75_imagenet_notop.weights.h5"),
])
def test_offline_weights_file_names(base, kwargs, name):
    assert offline_weights_file(resolve_base(base), kwargs) == name


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED / "weights").is_dir(), reason=f"{SHARED / 'weights'} is absent")
def test_offline_weights_file_names_the_files_of_the_shared_folder():
    names = {offline_weights_file(resolve_base("vgg16"), {}), offline_weights_file(resolve_base("mobilenet"), {}),
             offline_weights_file(resolve_base("mobilenet_v2"), {"alpha": 0.35})}
    assert names <= {p.name for p in (SHARED / "weights").iterdir()}


def test_imagenet_fix_names_the_file_and_every_way_to_give_the_folder():
    assert imagenet_fix(resolve_base("mobilenet_v2"), {"alpha": 0.35}) == (
        "Fix: put mobilenet_v2_0.35_imagenet_notop.weights.h5 in a folder and pass --weights-dir FOLDER, "
        f"set {WEIGHTS_DIR_ENV}=FOLDER or weights_dir: FOLDER, or use weights: null")
    assert WEIGHTS_DIR_ENV == "NBSWEEP_WEIGHTS_DIR"


# resolve_weights --------------------------------------------------------------------------------------


def test_resolve_weights_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    (tmp_path / "mine.weights.h5").write_bytes(b"file")
    (tmp_path / "offline").mkdir()
    (tmp_path / "offline" / "vgg16_imagenet_notop.weights.h5").write_bytes(b"offline")
    vgg16 = resolve_base("vgg16")
    choice = resolve_weights(make_spec("x", base="vgg16", weights="~/mine.weights.h5"), vgg16)
    assert choice == WeightsChoice(str(tmp_path / "mine.weights.h5"), "file", hashlib.sha256(b"file").hexdigest(),
                                   str(tmp_path / "mine.weights.h5"))
    offline = resolve_weights(make_spec("x", base="vgg16", weights="imagenet", weights_dir="~/offline"), vgg16)
    assert (offline.source, offline.path) == (
        "weights_dir", str(tmp_path / "offline" / "vgg16_imagenet_notop.weights.h5"))
    assert offline.sha256 == hashlib.sha256(b"offline").hexdigest()


def test_weights_dir_comes_before_the_environment_variable(tmp_path, monkeypatch):
    vgg16 = resolve_base("vgg16")
    for folder, content in (("given", b"given"), ("env", b"env")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "vgg16_imagenet_notop.weights.h5").write_bytes(content)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "env"))
    choice = resolve_weights(make_spec("x", base="vgg16", weights="imagenet", weights_dir=str(tmp_path / "given")),
                             vgg16)
    assert choice.sha256 == hashlib.sha256(b"given").hexdigest()
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "gone"))  # the variable's folder is checked too
    with pytest.raises(ModelConfigError, match=rf"^weights_dir: folder {tmp_path / 'gone'} does not exist$"):
        resolve_weights(make_spec("x", base="vgg16", weights="imagenet"), vgg16)


def test_resolve_weights_refusals_name_the_file_and_the_base(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    a_file = tmp_path / "not_a_folder"
    a_file.write_bytes(b"x")
    with pytest.raises(ModelConfigError, match=rf"^weights_dir: folder {a_file} does not exist$"):
        resolve_weights(make_spec("x", base="vgg16", weights="imagenet", weights_dir=str(a_file)),
                        resolve_base("vgg16"))
    with pytest.raises(ModelConfigError) as info:
        resolve_weights(make_spec("x", base="mobilenet", weights=str(tmp_path)), resolve_base("mobilenet"))
    assert str(info.value) == (f"weights: file {tmp_path} does not exist; expected 'imagenet', null or a "
                               f"Keras weights file of base mobilenet")  # a folder is no weights file
    with pytest.raises(ModelConfigError) as info:
        resolve_weights(make_spec("x", base="simple_cnn_medium", weights="imagenet"),
                        resolve_base("simple_cnn_medium"))
    assert str(info.value) == ("weights: got 'imagenet' for simple_cnn_medium, which is trained from scratch; "
                               "expected null or a weights file path")


# keras_imagenet_file ----------------------------------------------------------------------------------


def test_keras_imagenet_file_names_the_download_without_fetching_it(tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    get_file = file_utils.get_file
    spec = make_spec("x", base="vgg16", weights="imagenet", image_size=32)
    wanted = keras_imagenet_file(spec, resolve_base("vgg16"))
    name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert wanted == KerasWeightsFile(
        name=name, url=f"https://storage.googleapis.com/tensorflow/keras-applications/vgg16/{name}",
        cache_paths=(tmp_path / "keras_home" / "models" / name, Path("/tmp/.keras/models") / name))
    assert file_utils.get_file is get_file  # Keras's own get_file is back
    assert not (tmp_path / "keras_home").exists()  # nothing fetched, nothing written
    if not wanted.cache_paths[1].is_file():
        assert wanted.cached_path is None
    cached = wanted.cache_paths[0]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cached")
    assert wanted.cached_path == cached  # the first that exists


def test_keras_imagenet_file_refuses_what_keras_refuses():
    spec = make_spec("x", base="mobilenet", weights="imagenet", image_size=128, base_kwargs={"alpha": 0.3})
    with pytest.raises(ModelConfigError, match=r"^base mobilenet: cannot build it with weights='imagenet', "
                                               r"image_size=128, base_kwargs=\{'alpha': 0\.3\}: .*alpha"):
        keras_imagenet_file(spec, resolve_base("mobilenet"))


# build_base -------------------------------------------------------------------------------------------


def test_build_base_with_random_weights(monkeypatch):
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    base, choice = build_base(make_spec("x", base="simple_cnn_small", image_size=40))
    assert choice == WeightsChoice(None, "random", None) and str(choice) == "random initialisation"
    assert base.name == "base" and isinstance(base, keras.Model)
    assert tuple(base.input.shape) == (None, 40, 40, 3)
    assert len(base.output.shape) == 4  # feature maps: no classifier


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED / "weights" / "vgg16_imagenet_notop.weights.h5").is_file(),
                    reason=f"{SHARED / 'weights' / 'vgg16_imagenet_notop.weights.h5'} is absent")
def test_real_vgg16_weights_from_weights_dir_are_the_files():
    """The kernels are those stored in the file, read here with h5py (the file names VGG16's 13 convolutions
    conv2d, conv2d_1, ..., conv2d_12 in order)."""
    import h5py

    spec = make_spec("x", base="vgg16", image_size=32, weights="imagenet", weights_dir=str(SHARED / "weights"))
    base, choice = build_base(spec)
    path = SHARED / "weights" / "vgg16_imagenet_notop.weights.h5"
    assert choice == WeightsChoice(str(path), "weights_dir", VGG16_SHA256, str(path))
    convolutions = [layer for layer in base.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convolutions) == 13
    with h5py.File(path, "r") as stored:
        for i, layer in enumerate(convolutions):
            group = stored["layers"]["conv2d" if i == 0 else f"conv2d_{i}"]["vars"]
            np.testing.assert_array_equal(layer.kernel.numpy(), group["0"][()])
            np.testing.assert_array_equal(layer.bias.numpy(), group["1"][()])
