"""Warm starts with lineage, and ensembles of recorded runs (real papermill and Keras, tiny data)."""

import hashlib
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from runner import PROJECT_ROOT
from runner.ensemble import build_ensemble
from runner.ensemble import main as ensemble_main
from runner.errors import ConfigError
from runner.leaderboard import write_leaderboard
from runner.lineage import lineage_text, resolve_warm_start
from runner.predict import LoadedEnsemble, load_run
from runner.records import COMPLETED, ENSEMBLE, FAILED, read_records, write_record


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def warm_sweep(tmp_path_factory, tiny_image_dir):
    """root (2 epochs) → child warm-started from the root's epoch 2; a warm start with no fitting parent fails."""
    work = tmp_path_factory.mktemp("warm")
    (work / "grid.yaml").write_text(f"""
data_dir: {tiny_image_dir}
fixed: {{weights: null, image_size: 32, batch_size: 8, dense_units: [16], base: simple_cnn_small,
         head: flatten, val_fraction: 0.2, test_fraction: 0.25, early_stopping_patience: null}}
runs:
  - {{epochs: 2}}
  - {{epochs: 1, warm_start: best, warm_start_checkpoint: 2, learning_rate: 0.0005}}
  - {{epochs: 1, warm_start: best, head: gap}}
""", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "runner" / "sweep.py"), "grid.yaml"],
                          cwd=work, capture_output=True, text=True, timeout=600)
    records, _ = read_records(work / "logs")
    return work, proc, records


@pytest.mark.slow
def test_warm_started_child_records_its_parent_and_checkpoint(warm_sweep):
    work, proc, records = warm_sweep
    assert proc.returncode == 1, proc.stderr[-2000:]  # the mismatched warm start fails
    root, child, mismatched = records
    assert root.status == child.status == COMPLETED and root.parent_run_id is None
    assert child.parent_run_id == root.run_id
    assert child.params["warm_start"] == root.run_id  # "best" resolved when the child started
    ckpt = work / "experiments" / root.run_id / "checkpoints" / "epoch_2.weights.h5"
    assert child.warm_start["checkpoint"] == 2
    assert child.warm_start["weights_sha256"] == sha256(ckpt)
    assert (work / "logs" / child.warm_start["weights_path"]).resolve() == ckpt
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["epoch_1.weights.h5", "epoch_2.weights.h5"]
    page = (work / "experiments" / child.run_id / f"{child.run_id}.html").read_text()
    assert f"warm start from {root.run_id}, checkpoint 2" in page
    # "best" only picks a run whose weights fit (same base, head, ...): there is none with head=gap
    assert mismatched.status == FAILED and mismatched.history == {}
    assert "best: no completed matching run" in mismatched.error["evalue"]
    # the leaderboard shows the parent; lineage.html draws the tree
    board = (work / "leaderboard.html").read_text()
    assert "<th>parent</th>" in board and 'href="lineage.html"' in board
    lineage = (work / "lineage.html").read_text()
    assert lineage.index(root.run_id) < lineage.index(f"└── <a href=\"experiments/{child.run_id}")


@pytest.mark.slow
def test_checkpoint_weights_are_the_epoch_weights(warm_sweep):
    """The best epoch's checkpoint holds exactly the weights saved in model.keras."""
    import models

    work, _, records = warm_sweep
    root = records[0]
    run = load_run(root.run_id, logs_dir=work / "logs")
    best = work / "experiments" / root.run_id / "checkpoints" / f"epoch_{root.best_epoch}.weights.h5"
    other = models.build_model(run.spec, len(run.class_names))
    other.load_weights(best)
    for a, b in zip(run.model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_warm_start_refusals(warm_sweep):
    work, _, records = warm_sweep
    root = records[0]
    params = dict(root.params, warm_start=root.run_id)
    names = root.data["class_names"]
    assert resolve_warm_start(params, names, work / "logs").parent_run_id == root.run_id
    cases = [
        (dict(params, base="simple_cnn_medium"), names, "has base='simple_cnn_small', this run has base='simple_cnn_medium'"),
        (params, ["a", "b", "c"], "has classes"),
        (dict(params, warm_start_checkpoint=7), names, r"checkpoint 7: .*epoch_7.weights.h5 does not exist \(kept: epoch_1"),
        (dict(params, warm_start="nope"), names, "warm_start: got 'nope': run: no record"),
        (dict(params, warm_start=records[2].run_id), names, "has status 'failed'"),
    ]
    for p, classes, match in cases:
        with pytest.raises(ConfigError, match=match):
            resolve_warm_start(p, classes, work / "logs")
    assert resolve_warm_start(dict(params, warm_start=None), names, work / "logs") is None


def test_lineage_tree_of_three_generations(make_record):
    a = make_record("20261121-120000-aaaaaaaa", 0.81, base="vgg16", head="gap")
    b = make_record("20261121-130000-bbbbbbbb", 0.86, base="vgg16", head="gap", fine_tune_layers=4,
                    fine_tune_learning_rate=1e-5)
    c = make_record("20261121-140000-cccccccc", 0.88, base="vgg16", head="gap", fine_tune_layers=8,
                    fine_tune_learning_rate=5e-6)
    d = make_record("20261121-150000-dddddddd", 0.70, base="mobilenet", head="flatten")
    b.parent_run_id, c.parent_run_id = a.run_id, b.run_id
    b.warm_start, c.warm_start = {"checkpoint": "best"}, {"checkpoint": 3}
    assert lineage_text([d, c, b, a]).splitlines() == [
        "20261121-120000-aaaaaaaa  vgg16 gap  0.8100",
        "└── 20261121-130000-bbbbbbbb  warm start ckpt=best ft=4 lr=1e-05  0.8600",
        "    └── 20261121-140000-cccccccc  warm start ckpt=3 ft=8 lr=5e-06  0.8800",
        "20261121-150000-dddddddd  mobilenet flatten  0.7000",
    ]


@pytest.mark.slow
def test_ensemble_of_two_runs_is_the_mean_and_ranks_on_the_leaderboard(sweep, tmp_path, tiny_image_dir):
    work, _, records, _ = sweep
    shutil.copytree(work / "logs", tmp_path / "logs")
    shutil.copytree(work / "experiments", tmp_path / "experiments")
    members = [records["simple_cnn_small"], records["mobilenet_v2"]]
    ens = build_ensemble([m.run_id for m in members], logs_dir=tmp_path / "logs",
                         experiments_dir=tmp_path / "experiments")
    assert ens.kind == ENSEMBLE and ens.members == [m.run_id for m in members]
    frames = [pd.read_csv(tmp_path / "experiments" / m.run_id / "predictions.csv").set_index("path")
              for m in members]
    mine = pd.read_csv(tmp_path / "experiments" / ens.run_id / "predictions.csv").set_index("path")
    cols = [f"prob_{c}" for c in ens.data["class_names"]]
    expected = (frames[0].loc[mine.index, cols] + frames[1].loc[mine.index, cols]) / 2
    assert np.abs(mine[cols].to_numpy() - expected.to_numpy()).max() <= 1e-9
    assert sum(map(sum, ens.metrics["confusion_matrix"])) == len(mine)
    # it loads like a run and predicts the mean of its members
    loaded = load_run(ens.run_id, logs_dir=tmp_path / "logs")
    assert isinstance(loaded, LoadedEnsemble)
    images = np.random.default_rng(1).integers(0, 256, size=(4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(images),
                               (loaded.members[0].predict(images) + loaded.members[1].predict(images)) / 2,
                               atol=1e-7)
    table = loaded.predict_paths([tiny_image_dir / "red"])
    assert len(table) == 12 and table.attrs["skipped"] == {}
    write_leaderboard(tmp_path / "logs", tmp_path / "leaderboard.html")
    page = (tmp_path / "leaderboard.html").read_text()
    assert f"{ens.run_id}</a> <b>(ensemble)</b>" in page
    # the ensemble has no notebook parameters: it does not make every parameter a "differing" column
    assert "<th>base</th>" in page and "<th>learning_rate</th>" not in page and "<th>members</th>" not in page


@pytest.mark.slow
def test_ensemble_cli_and_refusals(sweep, tmp_path, capsys):
    work, _, records, _ = sweep
    shutil.copytree(work / "logs", tmp_path / "logs")
    shutil.copytree(work / "experiments", tmp_path / "experiments")
    args = ["--logs-dir", str(tmp_path / "logs"), "--experiments-dir", str(tmp_path / "experiments"),
            "--leaderboard", str(tmp_path / "leaderboard.html")]
    assert ensemble_main(["--top", "3", *args]) == 0  # only 2 completed runs: both are used
    assert "ensemble " in capsys.readouterr().out
    logs, _ = read_records(tmp_path / "logs")
    assert sum(r.kind == ENSEMBLE for r in logs) == 1
    assert ensemble_main([records["simple_cnn_small"].run_id, records["simple_cnn_medium"].run_id, *args]) == 2
    assert "must be a completed notebook run" in capsys.readouterr().err
    assert ensemble_main([records["simple_cnn_small"].run_id, *args]) == 2
    assert "at least 2 completed runs, got 1" in capsys.readouterr().err
    other = records["mobilenet_v2"].model_copy(deep=True)
    other.run_id = "20991231-000000-0ther5p1"
    other.data["manifest_hash"] = "f" * 64  # another test split
    write_record(other, tmp_path / "logs")
    assert ensemble_main([records["simple_cnn_small"].run_id, other.run_id, *args]) == 2
    assert "different manifest_hash" in capsys.readouterr().err
