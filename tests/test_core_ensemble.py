"""Ensembles of recorded runs (`runner.core.ensemble`): the mean of the members' saved probabilities,
recorded and ranked like a run and loaded like one; members are checked as `load_run` checks them,
so a run whose files are gone is never taken. Real runs from the `sweep` fixture of conftest.py.
"""

import shutil

import numpy as np
import pandas as pd
import pytest

from runner.core.ensemble import build_ensemble, choose_members
from helpers import ensemble_main
from runner.errors import ConfigError
from runner.reports.leaderboard import write_leaderboard
from runner.core.predict import LoadedEnsemble, RunLoadError, check_run_files, load_run
from runner.records.query import read_all
from runner.records import COMPLETED, ENSEMBLE, write_record

from helpers import check_split_metrics

pytestmark = pytest.mark.slow

CLONE_ID = "20991231-000000-c10ne000"


@pytest.fixture
def logs(sweep, tmp_path):
    """A copy of the sweep's 2 completed runs (A: simple_cnn_small, B: mobilenet) plus C, a clone of A
    with its own run folder and a later run id (same metrics: C ranks right after A).

    Returns `(logs_dir, {"A" | "B" | "C": run_id})`.
    """
    work, _, records, _ = sweep
    shutil.copytree(work / "logs", tmp_path / "logs")
    shutil.copytree(work / "experiments", tmp_path / "experiments")
    a, b = records["simple_cnn_small"], records["mobilenet"]
    clone = a.model_copy(deep=True)
    clone.run_id = CLONE_ID
    clone.paths = {key: rel.replace(a.run_id, CLONE_ID) if rel else rel for key, rel in a.paths.items()}
    shutil.copytree(tmp_path / "experiments" / a.run_id, tmp_path / "experiments" / CLONE_ID)
    write_record(clone, tmp_path / "logs")
    return tmp_path / "logs", {"A": a.run_id, "B": b.run_id, "C": CLONE_ID}


def _model_file(logs_dir, run_id):
    return (logs_dir.parent / "experiments" / run_id / "model.keras").resolve()


def _ids(members):
    return [rec.run_id for _, rec in members]


def test_top_skips_a_run_whose_model_keras_was_deleted(logs, capsys):
    """Was: `--top 2` took A (rc 0) and loading the ensemble then failed with 'weights file missing'."""
    logs_dir, ids = logs
    assert ids["A"] in _ids(choose_members((), 2, logs_dir, "weighted_recall"))  # A ranks ahead of its clone C
    model = _model_file(logs_dir, ids["A"])
    model.unlink()
    with pytest.warns(UserWarning, match=rf"--top 2: skipped 1 run\(s\) whose files cannot be loaded, took the "
                                         rf"next best instead: run {ids['A']}: weights file missing: {model}"):
        members = choose_members((), 2, logs_dir, "weighted_recall")
    assert sorted(_ids(members)) == sorted([ids["B"], ids["C"]])
    # through the command line: an ensemble of the next best runs, which loads
    args = ["--logs-dir", str(logs_dir), "--experiments-dir", str(logs_dir.parent / "experiments"),
            "--leaderboard", str(logs_dir.parent / "leaderboard.html")]
    capsys.readouterr()
    assert ensemble_main(["--top", "2", *args]) == 0  # the command line prints the warning as one line
    assert (f"warning: --top 2: skipped 1 run(s) whose files cannot be loaded, took the next best instead: "
            f"run {ids['A']}: weights file missing") in capsys.readouterr().err
    ensembles = [r for r in read_all(logs_dir).records if r.kind == "ensemble"]
    assert len(ensembles) == 1 and sorted(ensembles[0].members) == sorted([ids["B"], ids["C"]])
    loaded = load_run(ensembles[0].run_id, logs_dir=logs_dir)
    assert isinstance(loaded, LoadedEnsemble) and len(loaded.members) == 2


def test_top_names_the_skipped_runs_when_too_few_are_left(logs):
    logs_dir, ids = logs
    for key in ("A", "C"):
        _model_file(logs_dir, ids[key]).unlink()
    with pytest.warns(UserWarning, match="skipped 2 run"):
        with pytest.raises(ConfigError, match=rf"at least 2 completed runs, got 1 \(2 skipped: "
                                              rf"({ids['A']}, {ids['C']}|{ids['C']}, {ids['A']})\)"):
            choose_members((), 3, logs_dir, "weighted_recall")


def test_named_member_whose_files_cannot_be_loaded_is_refused(logs, capsys):
    logs_dir, ids = logs
    args = ["--logs-dir", str(logs_dir), "--experiments-dir", str(logs_dir.parent / "experiments"),
            "--leaderboard", str(logs_dir.parent / "leaderboard.html")]
    model = _model_file(logs_dir, ids["A"])
    model.unlink()
    expected = (f"run {ids['A']}: cannot be an ensemble member, its files cannot be loaded: "
                f"weights file missing: {model}")
    with pytest.raises(ConfigError) as caught:
        choose_members([ids["A"], ids["B"]], None, logs_dir, "weighted_recall")
    assert str(caught.value) == expected
    assert ensemble_main([ids["A"], ids["B"], *args]) == 2
    assert f"error: {expected}" in capsys.readouterr().err
    assert not any(r.kind == "ensemble" for r in read_all(logs_dir).records)  # nothing recorded
    # the same check as load_run's, word for word
    with pytest.raises(RunLoadError) as loading:
        load_run(ids["A"], logs_dir=logs_dir)
    assert str(loading.value) == f"run {ids['A']}: weights file missing: {model}"

    # an altered model.keras, and a deleted predictions.csv
    with open(_model_file(logs_dir, ids["B"]), "ab") as handle:
        handle.write(b"\0")
    predictions = (logs_dir.parent / "experiments" / ids["C"] / "predictions.csv").resolve()
    predictions.unlink()
    with pytest.raises(ConfigError, match=rf"run {ids['B']}: cannot be an ensemble member, .*checksum mismatch "
                                          rf"for {_model_file(logs_dir, ids['B'])}: sha256 "):
        choose_members([ids["B"], ids["C"]], None, logs_dir, "weighted_recall")
    with pytest.raises(ConfigError, match=rf"run {ids['C']}: cannot be an ensemble member, its files cannot be "
                                          rf"loaded: predictions file missing: {predictions}"):
        choose_members([ids["C"], ids["B"]], None, logs_dir, "weighted_recall")
    records = {r.run_id: r for r in read_all(logs_dir).records}
    assert check_run_files(records[ids["C"]], logs_dir / f"{ids['C']}.json") == []  # load_run needs no predictions


def test_ensemble_of_two_runs_is_the_mean_and_ranks_on_the_leaderboard(sweep, tmp_path, tiny_image_dir):
    work, _, records, _ = sweep
    shutil.copytree(work / "logs", tmp_path / "logs")
    shutil.copytree(work / "experiments", tmp_path / "experiments")
    members = [records["simple_cnn_small"], records["mobilenet"]]
    ens = build_ensemble([m.run_id for m in members], logs_dir=tmp_path / "logs",
                         experiments_dir=tmp_path / "experiments")
    assert ens.kind == ENSEMBLE and ens.status == COMPLETED and ens.members == [m.run_id for m in members]
    assert ens.data == members[0].data and ens.params == {"members": ens.members, "combine": "mean softmax"}
    frames = [pd.read_csv(tmp_path / "experiments" / m.run_id / "predictions.csv").set_index("path")
              for m in members]
    mine = pd.read_csv(tmp_path / "experiments" / ens.run_id / "predictions.csv").set_index("path")
    assert set(mine.index) == set(frames[0].index)
    cols = [f"prob_{c}" for c in ens.data.class_names]
    expected = (frames[0].loc[mine.index, cols] + frames[1].loc[mine.index, cols]) / 2
    assert np.abs(mine[cols].to_numpy() - expected.to_numpy()).max() <= 1e-9
    # its test figures, recomputed with scikit-learn from its predictions.csv
    check_split_metrics(ens, tmp_path / "logs", "test")
    # it is ranked like a run, on its validation figures: the mean of the members' validation probabilities
    val_frames = [pd.read_csv(m.path_of("val_predictions", tmp_path / "logs")).set_index("path") for m in members]
    val_mine = check_split_metrics(ens, tmp_path / "logs", "val").set_index("path")
    expected = (val_frames[0].loc[val_mine.index, cols] + val_frames[1].loc[val_mine.index, cols]) / 2
    assert np.abs(val_mine[cols].to_numpy() - expected.to_numpy()).max() <= 1e-9
    # it loads like a run and predicts the mean of its members
    loaded = load_run(ens.run_id, logs_dir=tmp_path / "logs")
    assert isinstance(loaded, LoadedEnsemble)
    assert [m.record.run_id for m in loaded.members] == ens.members
    images = np.random.default_rng(1).integers(0, 256, size=(4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(images),
                               (loaded.members[0].predict(images) + loaded.members[1].predict(images)) / 2,
                               atol=1e-7)
    table = loaded.predict_paths([tiny_image_dir / "red"])
    assert len(table) == 12 and table.attrs["skipped"] == {}
    write_leaderboard(tmp_path / "logs", tmp_path / "leaderboard.html")
    page = (tmp_path / "leaderboard.html").read_text()
    assert f"{ens.run_id}</a> <b>(ensemble)</b>" in page
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert ens.run_id in set(board["run_id"].dropna()) and len(board) == 3
    row = board.set_index("run_id").loc[ens.run_id]
    assert row["kind"] == ENSEMBLE and row["val_weighted_recall"] == pytest.approx(ens.val_metrics.weighted_recall)
    # the ensemble has no notebook parameters: it does not make every parameter a "differing" column
    assert "<th>base</th>" in page and "<th>learning_rate</th>" not in page and "<th>members</th>" not in page


def test_ensemble_cli_and_refusals(sweep, tmp_path, capsys):
    work, _, records, _ = sweep
    shutil.copytree(work / "logs", tmp_path / "logs")
    shutil.copytree(work / "experiments", tmp_path / "experiments")
    args = ["--logs-dir", str(tmp_path / "logs"), "--experiments-dir", str(tmp_path / "experiments"),
            "--leaderboard", str(tmp_path / "leaderboard.html")]
    assert ensemble_main(["--top", "3", *args]) == 0  # only 2 completed runs: both are used
    assert "ensemble " in capsys.readouterr().out
    ensembles = [r for r in read_all(tmp_path / "logs").records if r.kind == ENSEMBLE]
    assert len(ensembles) == 1
    assert sorted(ensembles[0].members) == sorted([records["simple_cnn_small"].run_id, records["mobilenet"].run_id])
    assert ensemble_main([records["simple_cnn_small"].run_id, records["simple_cnn_medium"].run_id, *args]) == 2
    assert "must be a completed notebook run" in capsys.readouterr().err
    assert ensemble_main([records["simple_cnn_small"].run_id, ensembles[0].run_id, *args]) == 2
    assert "must be a completed notebook run (status 'completed', kind 'ensemble')" in capsys.readouterr().err
    assert ensemble_main([records["simple_cnn_small"].run_id, *args]) == 2
    assert "at least 2 completed runs, got 1" in capsys.readouterr().err
    other = records["mobilenet"].model_copy(deep=True)
    other.run_id = "20991231-000000-0ther5p1"
    other.data = other.data.model_copy(update={"manifest_hash": "f" * 64})  # another test split
    write_record(other, tmp_path / "logs")
    assert ensemble_main([records["simple_cnn_small"].run_id, other.run_id, *args]) == 2
    assert "different manifest_hash" in capsys.readouterr().err
    assert sum(r.kind == ENSEMBLE for r in read_all(tmp_path / "logs").records) == 1  # refusals record nothing
