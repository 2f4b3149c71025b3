"""Shared fixtures: the activation cache folder, tiny generated image folders, a finished tiny sweep.
Plain helpers live in `helpers.py`."""

import subprocess
import sys
from pathlib import Path

import pytest

from runner import PROJECT_ROOT
from runner.records.query import read_all

from helpers import *  # noqa: F401,F403  (names the fixtures use)
from helpers import _make_record


@pytest.fixture(scope="session", autouse=True)
def activation_cache_dir(tmp_path_factory) -> Path:
    """Every test's activation cache (runs and sweeps inherit it): a session folder, not the project's."""
    folder = tmp_path_factory.mktemp("activation_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NBSWEEP_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def tiny_image_dir(tmp_path_factory) -> Path:
    """3 classes x 12 images of 40x30 pixels (read-only by convention)."""
    return make_image_folder(tmp_path_factory.mktemp("tiny_images"))


@pytest.fixture(scope="session")
def base_weights_file(tmp_path_factory) -> str:
    """A weights file of `simple_cnn_small` (random, 32 px): a 'pretrained' base that runs freeze."""
    from models import ExperimentSpec
    from models.bases import build_base

    base, _ = build_base(ExperimentSpec(base="simple_cnn_small", weights=None, image_size=32))
    path = tmp_path_factory.mktemp("weights") / "simple_cnn_small.weights.h5"
    base.save_weights(path)
    return str(path)


@pytest.fixture(scope="session")
def sweep(tmp_path_factory, tiny_image_dir):
    """A real 3-run sweep through `python runner/sweep.py` (2 complete, 1 fails).

    The failing run passes the pre-flight check (its `warm_start: best` is only
    resolved when it starts) and fails when it starts, before any kernel: no
    completed `simple_cnn_medium` run to start from. The `keras.applications` base is MobileNet (v1) at
    alpha 0.25, the cheapest one with `base_kwargs` and BatchNormalization, rebuilt and reloaded by
    predict and ensemble.

    Returns `(work_dir, completed_process, {base: record}, unreadable_records)`.
    """
    work = tmp_path_factory.mktemp("sweep")
    grid = work / "grid.yaml"
    grid.write_text(f"""
notebook: {PROJECT_ROOT / 'notebooks' / 'base_experiment.ipynb'}
data_dir: {tiny_image_dir}
fixed:
  weights: null
  image_size: 32
  epochs: 1
  batch_size: 8
  dense_units: [16]
  val_fraction: 0.2
  test_fraction: 0.25
grid:
  - base: [simple_cnn_small]
    head: [flatten]
runs:
  - {{base: mobilenet, base_kwargs: {{alpha: 0.25}}, head: gap, dropout: 0.25}}
  - {{base: simple_cnn_medium, head: gap, warm_start: best}}
metric: weighted_recall
""", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "runner" / "sweep.py"), str(grid)],
                          cwd=work, capture_output=True, text=True, timeout=600)
    found = read_all(work / "logs")
    return work, proc, {r.params["base"]: r for r in found.records}, found.unreadable


@pytest.fixture
def make_record():
    """The `_make_record` factory of synthetic run records."""
    return _make_record


