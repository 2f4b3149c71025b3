"""Warm starts and lineage (`runner.reports.lineage`): the one resolution of `warm_start`, and the tree of runs.

The synthetic tests use records and files written here; the slow ones a real sweep (real papermill
and Keras, tiny data) where a child is warm-started from its parent's epoch-2 checkpoint.
"""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runner import PROJECT_ROOT
from runner.errors import ConfigError
from runner.core.warm_start import WarmStart, resolve_warm_start
from runner.reports.lineage import lineage_nodes, lineage_text
from models.saving import load_weights_into
from runner.core.predict import load_run
from runner.records.query import parse_metric, read_all
from runner.records import COMPLETED, FAILED, DataSection, WarmStartSection, write_record

ARCH = dict(base="simple_cnn_small", base_kwargs={}, head="gap", dense_units=[16], image_size=32)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _warm(parent_run_id: str, checkpoint) -> WarmStartSection:
    return WarmStartSection(parent_run_id=parent_run_id, checkpoint=checkpoint, weights_path="w.weights.h5",
                            weights_sha256="0" * 64)


@pytest.fixture
def parents(tmp_path, make_record):
    """Three completed runs of one architecture with a `model.keras` each, and one of another head.

    `high_test` is best on the test split, `high_val` on the validation split.
    """
    logs = tmp_path / "logs"
    data = DataSection(dir="/d", class_names=["blue", "green", "red"], manifest_hash="0" * 64)
    runs = {"high_test": ("20260101-000000-aaaaaaaa", 0.95, 0.70, ARCH),
            "high_val": ("20260101-000001-bbbbbbbb", 0.80, 0.90, ARCH),
            "other_head": ("20260101-000002-cccccccc", 0.99, 0.99, dict(ARCH, head="flatten"))}
    records = {}
    for key, (run_id, test, val, arch) in runs.items():
        folder = tmp_path / "experiments" / run_id
        folder.mkdir(parents=True)
        (folder / "model.keras").write_bytes(run_id.encode())
        rec = make_record(run_id, test, val_recall=val, **arch)
        rec.data = data
        rec.paths = {"model": f"../experiments/{run_id}/model.keras"}
        write_record(rec, logs)
        records[key] = rec
    return logs, records


def test_best_is_the_best_fitting_run_on_the_validation_split(parents):
    logs, records = parents
    warm = resolve_warm_start(dict(ARCH, warm_start="best"), read_all(logs))
    parent = records["high_val"]  # not high_test (test split), not other_head (its weights do not fit)
    model = logs.parent / "experiments" / parent.run_id / "model.keras"
    assert warm == WarmStart(parent_run_id=parent.run_id, checkpoint="best", weights_path=str(model.resolve()),
                             weights_sha256=sha256(model), class_names=["blue", "green", "red"])
    assert warm.section() == WarmStartSection(parent_run_id=parent.run_id, checkpoint="best",
                                              weights_path=str(model.resolve()), weights_sha256=sha256(model))
    assert warm.to_dict()["weights_sha256"] == sha256(model)
    # ranked by the test split on request
    by_test = resolve_warm_start(dict(ARCH, warm_start="best"), read_all(logs),
                                 ranking=parse_metric("test_weighted_recall"))
    assert by_test.parent_run_id == records["high_test"].run_id
    # an explicit reference: a unique prefix
    assert resolve_warm_start(dict(ARCH, warm_start="20260101-000000"), read_all(logs)).parent_run_id == \
        records["high_test"].run_id
    assert resolve_warm_start(dict(ARCH, warm_start=None), read_all(logs)) is None


@pytest.mark.parametrize("params, class_names, match", [
    (dict(ARCH, warm_start="best", head="pyramid"), None,
     r"warm_start: got 'best': best: no completed matching run with val_weighted_recall in "),
    (dict(ARCH, warm_start="20260101-000002-cccccccc"), None,
     r"has head='flatten', this run has head='gap'; a warm start needs the same base, base_kwargs, head"),
    (dict(ARCH, warm_start="best"), ["cat", "dog"],
     r"warm_start: run 20260101-000001-bbbbbbbb has classes \['blue', 'green', 'red'\], this run has \['cat', 'dog'\]"),
    (dict(ARCH, warm_start="best", warm_start_checkpoint=3), None,
     r"checkpoint 3: .*epoch_3.trained_weights.h5 does not exist: epoch 3 of run 20260101-000001-bbbbbbbb was not "
     r"kept \(kept: none;"),
    (dict(ARCH, warm_start="2026"), None, r"warm_start: got '2026': warm_start: '2026' matches 3 runs"),
    (dict(ARCH, warm_start="../x"), None, r"expected a run id"),
])
def test_resolution_refusals(parents, params, class_names, match):
    logs, _ = parents
    with pytest.raises(ConfigError, match=match):
        resolve_warm_start(params, read_all(logs), class_names=class_names)


def test_a_failed_parent_is_refused(parents, make_record):
    logs, _ = parents
    write_record(make_record("20260101-000003-dddddddd", None, **ARCH), logs)
    with pytest.raises(ConfigError, match=r"run 20260101-000003-dddddddd has status 'failed'; only completed"):
        resolve_warm_start(dict(ARCH, warm_start="20260101-000003-dddddddd"), read_all(logs))


def test_lineage_tree_of_three_generations(make_record):
    a = make_record("20261121-120000-aaaaaaaa", 0.91, val_recall=0.81, base="vgg16", head="gap")
    b = make_record("20261121-130000-bbbbbbbb", 0.86, base="vgg16", head="gap", fine_tune_layers=4,
                    fine_tune_learning_rate=1e-5)
    c = make_record("20261121-140000-cccccccc", 0.88, base="vgg16", head="gap", fine_tune_layers=8,
                    fine_tune_learning_rate=5e-6)
    d = make_record("20261121-150000-dddddddd", 0.70, base="mobilenet", head="flatten")
    e = make_record("20261121-160000-eeeeeeee", None, base="mobilenet", head="flatten")
    b.parent_run_id, c.parent_run_id, e.parent_run_id = a.run_id, b.run_id, "20200101-000000-00000000"
    b.warm_start, c.warm_start = _warm(a.run_id, "best"), _warm(b.run_id, 3)
    # the figure is the validation split's (a: 0.81, its test figure is 0.91); a parent not among the records: a root
    assert lineage_text([d, c, b, e, a]).splitlines() == [
        "20261121-120000-aaaaaaaa  vgg16 gap  0.8100",
        "└── 20261121-130000-bbbbbbbb  warm start ckpt=best ft=4 lr=1e-05  0.8600",
        "    └── 20261121-140000-cccccccc  warm start ckpt=3 ft=8 lr=5e-06  0.8800",
        "20261121-150000-dddddddd  mobilenet flatten  0.7000",
        "20261121-160000-eeeeeeee  warm start ckpt=best  failed",
    ]
    assert lineage_text([a], metric="test_weighted_recall") == "20261121-120000-aaaaaaaa  vgg16 gap  0.9100"
    with pytest.raises(ConfigError, match="metric: got 'recall'"):
        lineage_text([a], metric="recall")


def test_lineage_draws_siblings_and_survives_a_cycle(make_record):
    root = make_record("20261121-120000-aaaaaaaa", 0.5)
    kids = [make_record(f"20261121-12000{i}-bbbbbbb{i}", 0.5) for i in (1, 2)]
    for kid in kids:
        kid.parent_run_id = root.run_id
    x, y = make_record("20261121-130000-cccccccc", 0.5), make_record("20261121-130001-dddddddd", 0.5)
    x.parent_run_id, y.parent_run_id = y.run_id, x.run_id  # hand-edited records: a cycle, no root
    assert [(prefix, rec.run_id) for prefix, rec in lineage_nodes([kids[1], root, kids[0], x, y])] == [
        ("", root.run_id), ("├── ", kids[0].run_id), ("└── ", kids[1].run_id)]


# A real warm start --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def warm_sweep(tmp_path_factory, tiny_image_dir):
    """root (2 epochs) → child warm-started from the root's epoch 2; a warm start with no fitting parent fails."""
    work = tmp_path_factory.mktemp("warm")
    (work / "grid.yaml").write_text(f"""
data_dir: {tiny_image_dir}
fixed: {{weights: null, image_size: 32, batch_size: 8, dense_units: [16], base: simple_cnn_small,
         head: flatten, val_fraction: 0.2, test_fraction: 0.25, early_stopping_patience: null}}
runs:
  - {{epochs: 2, keep_checkpoints: null}}
  - {{epochs: 1, warm_start: best, warm_start_checkpoint: 2, learning_rate: 0.0005}}
  - {{epochs: 1, warm_start: best, head: gap}}
""", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "runner" / "sweep.py"), "grid.yaml"],
                          cwd=work, capture_output=True, text=True, timeout=600)
    return work, proc, read_all(work / "logs").records


@pytest.mark.slow
def test_warm_started_child_records_its_parent_and_checkpoint(warm_sweep):
    work, proc, records = warm_sweep
    assert proc.returncode == 1, proc.stderr[-2000:]  # the mismatched warm start fails
    root, child, mismatched = records
    assert root.status == child.status == COMPLETED and root.parent_run_id is None and root.warm_start is None
    # the user's reference stays in params; the run it resolved to is parent_run_id (schema 2)
    assert child.params["warm_start"] == "best" and child.parent_run_id == root.run_id
    ckpt = work / "experiments" / root.run_id / "checkpoints" / "epoch_2.trained_weights.h5"
    assert child.warm_start == WarmStartSection(parent_run_id=root.run_id, checkpoint=2,
                                                weights_path=child.warm_start.weights_path,
                                                weights_sha256=sha256(ckpt))
    assert (work / "logs" / child.warm_start.weights_path).resolve() == ckpt
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["epoch_1.trained_weights.h5", "epoch_2.trained_weights.h5"]
    # the child keeps no checkpoint (keep_checkpoints: 0 by default): its best weights are its model.keras
    assert not (work / "experiments" / child.run_id / "checkpoints").exists()
    assert child.data.manifest_hash == root.data.manifest_hash
    page = child.path_of("html", work / "logs").read_text()
    assert f"warm start from {root.run_id}, checkpoint 2, sha256 {sha256(ckpt)[:12]}" in page
    # "best" only picks a run whose weights fit (same base, head, ...): there is none with head=gap
    assert mismatched.status == FAILED and mismatched.history == {} and mismatched.parent_run_id is None
    assert mismatched.error.ename == "ConfigError"
    assert mismatched.error.evalue.startswith("warm_start: got 'best': best: no completed matching run")
    assert mismatched.paths["notebook"] is None  # resolved by the runner before any kernel started
    # the leaderboard shows the parent; lineage.html draws the tree
    board = (work / "leaderboard.html").read_text()
    assert "<th>parent</th>" in board and 'href="lineage.html"' in board
    lineage = (work / "lineage.html").read_text()
    assert lineage.index(root.run_id) < lineage.index(f"└── <a href=\"experiments/{child.run_id}")


@pytest.mark.slow
def test_the_child_starts_from_the_parents_checkpoint(warm_sweep):
    """The child's first epoch starts where the root's epoch 2 ended: its first training loss is lower
    than the root's first, and its weights differ from both of the root's checkpoints (it trained on)."""
    import models

    work, _, records = warm_sweep
    root, child, _ = records
    assert child.history["head"]["loss"][0] < root.history["head"]["loss"][0]
    run = load_run(child.run_id, logs_dir=work / "logs")
    epoch_2 = models.build_model(run.spec, len(run.class_names))
    load_weights_into(epoch_2, work / "experiments" / root.run_id / "checkpoints" / "epoch_2.trained_weights.h5")
    assert any(not np.array_equal(a, b) for a, b in zip(run.model.get_weights(), epoch_2.get_weights()))


@pytest.mark.slow
def test_checkpoint_weights_are_the_epoch_weights(warm_sweep):
    """The best epoch's checkpoint holds exactly the weights saved in model.keras."""
    import models

    work, _, records = warm_sweep
    root = records[0]
    run = load_run(root.run_id, logs_dir=work / "logs")
    best = work / "experiments" / root.run_id / "checkpoints" / f"epoch_{root.best_epoch}.trained_weights.h5"
    other = models.build_model(run.spec, len(run.class_names))
    load_weights_into(other, best)
    for a, b in zip(run.model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_warm_start_refusals_against_real_runs(warm_sweep):
    work, _, records = warm_sweep
    root = records[0]
    found = read_all(work / "logs")
    params = dict(root.params, warm_start=root.run_id)
    names = root.data.class_names
    warm = resolve_warm_start(params, found, class_names=names)
    model = work / "experiments" / root.run_id / "model.keras"
    assert (warm.parent_run_id, warm.checkpoint, warm.weights_sha256) == (root.run_id, "best", sha256(model))
    assert warm.weights_sha256 == root.model.model_file_sha256
    cases = [
        (dict(params, base="simple_cnn_medium"), names, "has base='simple_cnn_small', this run has base='simple_cnn_medium'"),
        (params, ["a", "b", "c"], "has classes"),
        (dict(params, warm_start_checkpoint=7), names,
         rf"checkpoint 7: .*epoch_7.trained_weights.h5 does not exist: epoch 7 of run {root.run_id} was not kept "
         r"\(kept: epoch_1.trained_weights.h5, epoch_2.trained_weights.h5;"),
        (dict(params, warm_start="nope"), names, "warm_start: got 'nope': warm_start: no record for 'nope'"),
        (dict(params, warm_start=records[2].run_id), names, "has status 'failed'"),
    ]
    for p, classes, match in cases:
        with pytest.raises(ConfigError, match=match):
            resolve_warm_start(p, found, class_names=classes)
    assert resolve_warm_start(dict(params, warm_start=None), found, class_names=names) is None
