"""Plain helpers shared by the test modules: tiny generated image folders, the optional ../shared
folder, the fault notebook's grids, records made by hand, the commands as the scripts run them, and
independent checks of recorded metrics."""

import os
import shutil
import time
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner import PROJECT_ROOT
from runner.records import COMPLETED, FAILED, RunRecord

from runner import cli


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
"""`../shared` beside the project: real TrashNet photos and ImageNet weights (absent in CI)."""

FAULTS_NOTEBOOK = Path(__file__).parent / "assets" / "faults.ipynb"
"""A notebook without TensorFlow that raises, exits, kills its kernel, sleeps or works on demand (`action`)."""
SWEEP = [sys.executable, str(PROJECT_ROOT / "runner" / "sweep.py")]
"""The sweep command line, for tests that run it as a process of its own (signals, locks)."""


def write_faults_grid(work: Path, runs: str, **extra) -> Path:
    """`<work>/grid.yaml` running `FAULTS_NOTEBOOK` with `runs` (YAML flow text) and extra top-level keys."""
    lines = [f"notebook: {FAULTS_NOTEBOOK}", f"runs: {runs}", *[f"{k}: {v}" for k, v in extra.items()]]
    (work / "grid.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return work / "grid.yaml"


def kernels_running_in(folder: Path) -> list[int]:
    """Pids of live processes, this one aside, whose working folder is below `folder` (the runs' kernels)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if (proc.name.isdigit() and int(proc.name) != os.getpid()
                    and Path(os.readlink(proc / "cwd")).is_relative_to(folder)):
                pids.append(int(proc.name))
        except OSError:  # gone, or not ours to read
            continue
    return pids


SPLIT_FILES = {"test": ("predictions", "metrics"), "val": ("val_predictions", "val_metrics")}
"""Split -> (record `paths` key of its predictions file, record attribute of its metrics)."""


def check_split_metrics(record: RunRecord, logs_dir: Path, split: str = "test"):
    """Recompute a completed run's metrics of `split` from its predictions file with scikit-learn; compare.

    Independent of the code under test: the true label of each row is its
    image's class folder, the predicted label the arg-max of its `prob_`
    columns, and the metrics are scikit-learn's own functions (not the
    `classification_report` that `models.evaluate` reads); the rows are
    exactly the images the record counts for that split.

    Args:
        record: a completed run (or ensemble) record with `data`.
        logs_dir: the record's folder.
        split: `"test"` (`predictions.csv`, `metrics`) or `"val"`
            (`val_predictions.csv`, `val_metrics`). Defaults to `"test"`.

    Returns:
        The predictions table (a `pandas.DataFrame`).
    """
    import numpy as np
    import pandas as pd
    from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_score,
                                 recall_score)

    key, attribute = SPLIT_FILES[split]
    names = record.data.class_names
    counts = record.data.counts[split]
    predictions = pd.read_csv(record.path_of(key, logs_dir))
    n_images = sum(counts.values())
    assert len(predictions) == n_images and predictions["path"].is_unique
    true = [Path(p).parent.name for p in predictions["path"]]
    assert true == list(predictions["true_label"])
    assert dict(pd.Series(true).value_counts()) == {c: n for c, n in counts.items() if n}
    probabilities = predictions[[f"prob_{c}" for c in names]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    predicted = [names[i] for i in probabilities.argmax(axis=1)]
    assert predicted == list(predictions["predicted_label"])
    np.testing.assert_allclose(predictions["confidence"], probabilities.max(axis=1), atol=1e-6)

    m = getattr(record, attribute)
    kwargs = dict(labels=names, zero_division=0)
    assert m.accuracy == pytest.approx(accuracy_score(true, predicted))
    for average in ("weighted", "macro"):
        assert getattr(m, f"{average}_recall") == pytest.approx(recall_score(true, predicted, average=average, **kwargs))
        assert getattr(m, f"{average}_precision") == pytest.approx(
            precision_score(true, predicted, average=average, **kwargs))
        assert getattr(m, f"{average}_f1") == pytest.approx(f1_score(true, predicted, average=average, **kwargs))
    matrix = confusion_matrix(true, predicted, labels=names)
    assert m.confusion_matrix == matrix.tolist()
    assert sum(map(sum, m.confusion_matrix)) == n_images
    assert {c: v["support"] for c, v in m.per_class.items()} == counts
    for i, c in enumerate(names):
        assert m.per_class[c]["recall"] == pytest.approx(matrix[i, i] / matrix[i].sum() if matrix[i].sum() else 0.0)
    return predictions


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


def write_corrupt_files(root: Path) -> dict[str, str]:
    """A truncated JPEG, text named .png, a text file and a nested folder; relative path -> reason start."""
    jpeg = next((root / "red").glob("*.jpg")).read_bytes()
    (root / "red" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "blue" / "fake.png").write_text("<html>not a picture</html>")
    (root / "green" / "notes.txt").write_text("labels checked by hand")
    make_image_folder(root / "blue" / "nested", 1, ("deeper",))
    return {"red/truncated.jpg": "corrupt or truncated image", "blue/fake.png": "not an image",
            "green/notes.txt": "not an image file name", "blue/nested": "a folder"}


def make_spec(data_dir, **overrides):
    """An `ExperimentSpec` for tiny images: simple_cnn_small, random weights, 32 px, 1 epoch, batches of 8,
    a quarter each for validation and test, no early stopping, seed 0; `overrides` change any of it."""
    from models import ExperimentSpec

    params = dict(data_dir=str(data_dir), base="simple_cnn_small", weights=None, image_size=32,
                  val_fraction=0.25, test_fraction=0.25, dense_units=[16], epochs=1,
                  batch_size=8, early_stopping_patience=None, seed=0)
    return ExperimentSpec(**{**params, **overrides})


def _make_record(run_id: str, recall: float | None, val_recall: float | None = None, **params) -> RunRecord:
    """A synthetic record: completed with `recall` as weighted recall (test split; validation:
    `val_recall`, defaulting to `recall`), or failed when `recall` is `None`."""
    def split(value):
        return {"accuracy": value - 0.01, "weighted_recall": value, "weighted_precision": 0.5,
                "weighted_f1": 0.5, "macro_precision": 0.5, "macro_recall": 0.5, "macro_f1": 0.5,
                "confusion_matrix": [[3, 1], [0, 4]]}

    metrics = None if recall is None else split(recall)
    val_metrics = None if recall is None else split(recall if val_recall is None else val_recall)
    return RunRecord(
        run_id=run_id, config_hash="ab" * 32, status=COMPLETED if recall is not None else FAILED,
        started_at="2026-11-21T12:00:00+00:00", finished_at="2026-11-21T12:01:00+00:00",
        params={"head": "gap", "dropout": 0.5, "dense_units": [256], **params},
        metrics=metrics, val_metrics=val_metrics, history={"head": {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]}},
        best_epoch=2, best_phase="head", epochs_run=2, timings={"train_s": 12.5, "eval_s": 1.0, "total_s": 20.0},
        paths={"html": f"../experiments/{run_id}/{run_id}.html"},
        error=None if recall is not None else {"ename": "ValueError", "evalue": "bad <base>",
                                                "traceback": "...", "cell_index": 3},
    )


def timed_search_source(tmp_path: Path, text: str, seconds_by_size: dict[int, float]):
    """A `runner.search.SearchSource` of the grid `text` (written to `<tmp_path>/search.yaml`), whose records
    hold one earlier completed run per image size, each `total_s` seconds long.

    Returns:
        `(source, builder)`.
    """
    from runner.grid import RunBuilder, load_grid
    from runner.records.query import parse_metric, read_all
    from runner.search import SearchSource, open_study, parse_space

    path = tmp_path / "search.yaml"
    path.write_text(text, encoding="utf-8")
    spec = load_grid(path)
    builder = RunBuilder(spec, path, base_dir=tmp_path)
    dims = parse_space(spec, path, builder)
    found = read_all(tmp_path / "logs")
    for size, seconds in seconds_by_size.items():
        rec = _make_record(f"earlier-{size}", 0.8, **builder.build("earlier", {"image_size": size})[0].params)
        found.records.append(rec.model_copy(update={"timings": rec.timings.model_copy(update={"total_s": seconds})}))
    study = open_study(spec.search, dims, tmp_path / "logs" / "s.journal", "s", max_epochs=2)
    source = SearchSource(study=study, dims=dims, search=spec.search, builder=builder, found=found,
                          ranking=parse_metric("weighted_recall"), journal=tmp_path / "logs" / "s.journal")
    return source, builder


def write_grid(tmp_path: Path, text: str) -> Path:
    """`<tmp_path>/grid.yaml` with `text`."""
    path = tmp_path / "grid.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def expand(tmp_path: Path, text: str, **kwargs):
    """`expand_runs` of a grid file written from `text` (paths resolved from `tmp_path`)."""
    from runner.grid import expand_runs, load_grid

    path = write_grid(tmp_path, text)
    return expand_runs(load_grid(path), path, base_dir=tmp_path, **kwargs)


def command(name: str):
    """`name`'s command as `python runner/<script>.py` runs it: a function of argv returning the exit code
    (a usage error raises `SystemExit`, as the script exits)."""
    script = name.replace("-", "_")
    return lambda argv=None: cli.run_command(name, argv, prog_name=f"python runner/{script}.py")


sweep_main = command("sweep")
predict_main = command("predict")
ensemble_main = command("ensemble")
leaderboard_main = command("leaderboard")
export_mlflow_main = command("export-mlflow")


def wait_for(predicate, timeout: float = 120, step: float = 0.05) -> bool:
    """Poll `predicate()` every `step` seconds until it is true (returns `True`) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
"""Headless Chromium and its driver for the browser tests (`tests/install_chromium.sh`), or `None`."""


def start_chromium(profile_dir: Path):
    """Headless Chromium through chromedriver (selenium), a fresh profile, no background network.

    Args:
        profile_dir: a new folder for the browser profile.

    Returns:
        The `selenium.webdriver.Chrome` driver (the caller quits it).
    """
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1000", f"--user-data-dir={profile_dir}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


METRICS = {"accuracy": 0.9, "weighted_precision": 0.91, "weighted_recall": 0.9, "weighted_f1": 0.905,
           "macro_precision": 0.89, "macro_recall": 0.88, "macro_f1": 0.885,
           "per_class": {"a": {"precision": 1.0, "recall": 0.8, "f1": 0.89, "support": 5}},
           "confusion_matrix": [[4, 1], [0, 5]]}


def result_sections(**changes) -> dict:
    """The sections of a valid `result.json` (`models.contract.write_result`), with `changes` on top."""
    sections = {
        "data": {"dir": "/d", "class_names": ["a", "b"], "counts": {"test": {"a": 5, "b": 5}},
                 "manifest_hash": "0" * 64, "skipped_files": {}},
        "model": {"base": "simple_cnn_small", "weights": None, "trainable_params": 10, "total_params": 12},
        "training": {"history": {"head": {"loss": [1.0, 0.5, 0.4], "val_loss": [1.1, 0.6, 0.7]},
                                 "fine_tune": {"loss": [0.3], "val_loss": [0.65]}},
                     "best_epoch": 2, "best_phase": "head", "epochs_run": 4, "train_s": 3.5,
                     "activation_cache": {"head": {"status": "built", "build_s": 1.25, "key": "k"},
                                          "fine_tune": {"status": "hit", "build_s": 0.0}}},
        "evaluation": {"metrics": METRICS, "val_metrics": {**METRICS, "weighted_recall": 0.7}, "eval_s": 0.5,
                       "from_cache": True},
        "warm_start": None,
    }
    sections.update(changes)
    return sections
