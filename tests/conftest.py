"""Shared fixtures: tiny generated image folders, and the optional ../shared folder."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner import PROJECT_ROOT
from runner.records import COMPLETED, FAILED, RunRecord, read_records

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
"""`../shared` beside the project: real TrashNet photos and ImageNet weights (absent in CI)."""


def make_image_folder(root: Path, n_per_class: int = 12, classes=("red", "green", "blue"),
                      size=(40, 30), seed: int = 0) -> Path:
    """Write an ImageFolder-style folder of small learnable images.

    Each class is a noisy image dominated by one colour channel, saved as PNG
    and JPEG alternately, `size` = (width, height) pixels.
    """
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 90, size=(size[1], size[0], 3), dtype=np.uint8)
            pixels[..., c % 3] += 150
            suffix = "png" if i % 2 else "jpg"
            Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.{suffix}")
    return root


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
    resolved when it starts) and fails at run time: no completed
    `simple_cnn_medium` run to start from.

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
  - {{base: mobilenet_v2, base_kwargs: {{alpha: 0.35}}, head: gap, dropout: 0.25}}
  - {{base: simple_cnn_medium, head: gap, warm_start: best}}
metric: weighted_recall
""", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "runner" / "sweep.py"), str(grid)],
                          cwd=work, capture_output=True, text=True, timeout=600)
    records, unreadable = read_records(work / "logs")
    return work, proc, {r.params["base"]: r for r in records}, unreadable


def _make_record(run_id: str, recall: float | None, **params) -> RunRecord:
    """A synthetic record: completed with `recall` as weighted recall, or failed when `None`."""
    metrics = {} if recall is None else {
        "accuracy": recall - 0.01, "weighted_recall": recall, "weighted_precision": 0.5,
        "weighted_f1": 0.5, "macro_precision": 0.5, "macro_recall": 0.5, "macro_f1": 0.5,
        "confusion_matrix": [[3, 1], [0, 4]],
    }
    return RunRecord(
        run_id=run_id, config_hash="ab" * 32, status=COMPLETED if recall is not None else FAILED,
        started_at="2026-11-21T12:00:00+00:00", finished_at="2026-11-21T12:01:00+00:00",
        params={"head": "gap", "dropout": 0.5, "dense_units": [256], **params},
        metrics=metrics, history={"head": {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]}},
        best_epoch=2, timings={"train_s": 12.5, "eval_s": 1.0, "total_s": 20.0},
        paths={"html": f"../experiments/{run_id}/{run_id}.html"},
        error=None if recall is not None else {"ename": "ValueError", "evalue": "bad <base>",
                                                "traceback": "...", "cell_index": 3},
    )


@pytest.fixture
def make_record():
    """The `_make_record` factory of synthetic run records."""
    return _make_record
