"""The base registry (`models.bases`): every registry base builds, names resolve (real Keras). Weights
(resolved, loaded and hashed): test_bases_weights.py."""

from __future__ import annotations

import keras
import pytest

from models import ModelConfigError
from models.bases import BASES, build_base, offline_weights_file, resolve_base

from helpers import make_spec


QUICK_TO_BUILD = {"simple_cnn_small", "simple_cnn_medium", "vgg16", "vgg19", "mobilenet"}
"""Bases built in about a second or less; the others take 1.5 to 8 s each and are marked slow."""


@pytest.mark.parametrize("name", [pytest.param(name, marks=() if name in QUICK_TO_BUILD else pytest.mark.slow)
                                  for name in sorted(BASES)
                                  if not BASES[name].is_saved_model])  # those need their file: test_bases_saved
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

    names = {*BASES, *(info.constructor_name for info in BASES.values() if info.constructor_name),
             *(attr for attr, value in vars(keras.applications).items() if attr[:1].isupper() and callable(value))}
    for name in sorted(names):
        assert canonical_base(name) == resolve_base(name).name, name
        assert canonical_base(name.upper()) == canonical_base(name.replace("_", "-")) == resolve_base(name).name


def test_generic_keras_base_gets_defaults():
    info = resolve_base("EfficientNetB3")
    assert (info.module_name, info.min_size, info.has_imagenet) == (
        "keras.applications.efficientnet", 32, True)


@pytest.mark.parametrize("name, match", [
    ("vgg61", r"got 'vgg61', expected a keras.applications model name, one of efficientnet_lite0, "
              r"efficientnet_lite2, simple_cnn_small, simple_cnn_medium, or the path of a saved Keras model "
              r"\(\*\.keras\); close matches: vgg16, vgg19"),
    ("simple_cnn_large", "close matches: .*simple_cnn_small"),
])
def test_unknown_base_lists_close_matches(name, match):
    with pytest.raises(ModelConfigError, match=match):
        resolve_base(name)
