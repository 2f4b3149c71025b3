"""End to end: `python runner/sweep.py` through real papermill kernels and real Keras.

Tiny generated images (3 classes), random weights, 32 px, 1 epoch: two runs that
complete and one that fails at run time (a warm start from a run that does not
exist yet), so the sweep must
record the failure and go on.
"""

import json

import pandas as pd
import pytest

from runner.records import COMPLETED, FAILED

pytestmark = pytest.mark.slow


def test_sweep_goes_on_after_a_failed_run_and_exits_non_zero(sweep):
    work, proc, records, unreadable = sweep
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 completed, 1 failed" in proc.stdout
    assert unreadable == {}
    assert records["simple_cnn_small"].status == COMPLETED
    assert records["mobilenet_v2"].status == COMPLETED
    assert records["simple_cnn_medium"].status == FAILED


def test_completed_run_files_and_real_values(sweep):
    work, _, records, _ = sweep
    rec = records["simple_cnn_small"]
    run_dir = work / "experiments" / rec.run_id
    for name in (f"{rec.run_id}.ipynb", f"{rec.run_id}.html", "model.keras", "training_curves.png",
                 "confusion_matrix.png", "predictions.csv", "result.json"):
        assert (run_dir / name).is_file(), name
    for key, rel in rec.paths.items():
        assert rel is not None, key
        path = (work / "logs" / rel).resolve()
        assert path.is_dir() if key == "tensorboard" else path.is_file(), key
    assert list((run_dir / "tensorboard").glob("*/events.out.tfevents.*"))
    assert rec.run_id.endswith(rec.config_hash[:8])
    m = rec.metrics
    for key in ("accuracy", "weighted_recall", "weighted_precision", "weighted_f1", "macro_f1"):
        assert 0.0 <= m[key] <= 1.0
    n_test = sum(rec.data["counts"]["test"].values())
    assert sum(map(sum, m["confusion_matrix"])) == n_test
    assert len(m["confusion_matrix"]) == len(rec.data["class_names"]) == 3
    assert set(m["per_class"]) == set(rec.data["class_names"])
    assert len(rec.history["head"]["loss"]) == rec.params["epochs"] == 1
    assert rec.best_epoch == 1
    assert rec.model["total_params"] >= rec.model["trainable_params"] > 0
    assert rec.timings["train_s"] > 0 and rec.timings["total_s"] > rec.timings["train_s"]
    assert rec.environment["packages"]["tensorflow"] and rec.environment["python"]
    assert len(rec.data["manifest_hash"]) == 64
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert len(predictions) == n_test
    assert {f"prob_{c}" for c in rec.data["class_names"]} <= set(predictions.columns)


def test_html_shows_the_injected_parameters(sweep):
    work, _, records, _ = sweep
    rec = records["mobilenet_v2"]
    page = (work / "experiments" / rec.run_id / f"{rec.run_id}.html").read_text(encoding="utf-8")
    assert "Injected parameters" in page or "injected-parameters" in page
    assert "mobilenet_v2" in page and "alpha" in page
    assert rec.params["base_kwargs"] == {"alpha": 0.35} and rec.params["dropout"] == 0.25


def test_failed_run_keeps_notebook_html_and_error(sweep):
    work, _, records, _ = sweep
    rec = records["simple_cnn_medium"]
    run_dir = work / "experiments" / rec.run_id
    assert (run_dir / f"{rec.run_id}.ipynb").is_file() and (run_dir / f"{rec.run_id}.html").is_file()
    assert "warm_start: got 'best'" in rec.error["evalue"] and rec.error["traceback"]
    assert rec.metrics == {} and rec.paths["model"] is None
    nb = json.loads((run_dir / f"{rec.run_id}.ipynb").read_text())
    assert any("papermill-error-cell" in json.dumps(cell.get("metadata", {})) or "An Exception was encountered"
               in "".join(cell.get("source", "")) for cell in nb["cells"])


def test_leaderboard_ranks_completed_runs_by_the_metric(sweep):
    work, _, records, _ = sweep
    page = (work / "leaderboard.html").read_text(encoding="utf-8")
    board = pd.read_csv(work / "leaderboard.csv")
    assert list(board["weighted_recall"]) == sorted(board["weighted_recall"], reverse=True)
    assert set(board["run_id"]) == {records["simple_cnn_small"].run_id, records["mobilenet_v2"].run_id}
    first, second = board["run_id"]
    assert page.index(first) < page.index(second)
    assert "Runs that did not complete (1)" in page and records["simple_cnn_medium"].run_id in page
