"""Building a model (`models.build`): base + head, raw images in, the pretrained base frozen and described;
and the `models` package's lazy import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import models
import models.training as models_train
from models.build import build_model, describe_model
from models.data import load_data

from helpers import make_spec


def test_package_import_is_light_and_lazy():
    code = ("import sys, models; models.ExperimentSpec(); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
    assert models.load_data is load_data and models.training is models_train
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        models.nope



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


