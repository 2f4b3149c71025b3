"""The base registry and weights (`models.bases`): every registry base builds, names resolve, weights
are resolved, loaded and hashed (real Keras)."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import keras
import numpy as np
import pytest

from models import ModelConfigError
from models.bases import BASES, build_base, offline_weights_file, resolve_base, resolve_weights
from models.build import build_model, describe_model

from helpers import SHARED, make_spec


QUICK_TO_BUILD = {"simple_cnn_small", "simple_cnn_medium", "vgg16", "vgg19", "mobilenet"}
"""Bases built in about a second or less; the others take 1.5 to 8 s each and are marked slow."""


@pytest.mark.parametrize("name", [pytest.param(name, marks=() if name in QUICK_TO_BUILD else pytest.mark.slow)
                                  for name in sorted(BASES)])
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


def test_canonical_base_is_resolve_base_without_keras():
    """`models.bases.canonical_base` (Keras-free: what specs, config hashes, warm starts and the search's cost
    model compare) gives every spelling the name `resolve_base` gives it."""
    from models.bases.registry import canonical_base

    names = {*BASES, *(info.constructor_name for info in BASES.values()),
             *(attr for attr, value in vars(keras.applications).items() if attr[:1].isupper() and callable(value))}
    for name in sorted(names):
        assert canonical_base(name) == resolve_base(name).name, name
        assert canonical_base(name.upper()) == canonical_base(name.replace("_", "-")) == resolve_base(name).name


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


