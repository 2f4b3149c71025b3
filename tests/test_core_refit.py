"""A grid's `refit: true` (`runner.core.refit`: `refit_best`, `run_refit`): the best configuration trained again on
train + validation for the epochs of its selected weights, recorded as a run of its own (`refit_of`), evaluated
on the test split only, kept out of the ranking and shown apart on the leaderboard."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import PROJECT_ROOT
from runner.core.refit import REFIT_NAME_SUFFIX, refit_best, refit_params, run_refit
from runner.grid import load_grid
from runner.records import DataSection, WarmStartSection
from runner.records.query import parse_metric, rank, read_all

from helpers import write_grid


def _grid(tmp_path, extra: str = ""):
    return load_grid(write_grid(tmp_path, f"data_dir: builtin:digits\nfixed: {{weights: null}}\nrefit: true\n{extra}"))


def test_refit_params_train_on_val_for_the_epochs_of_the_best_head_epoch(make_record):
    record = make_record("r1", 0.9, base="simple_cnn_small", weights=None, epochs=10, early_stopping_patience=3,
                         fine_tune_layers=0, fine_tune_epochs=0, name="best-one", keep_checkpoints=2,
                         keep_best_checkpoints=1)
    record = record.model_copy(update={"history": {"head": {"loss": [1.0] * 6}}, "best_epoch": 4,
                                       "best_phase": "head", "epochs_run": 6})
    params = refit_params(record)
    assert params["train_on_val"] is True and params["early_stopping_patience"] is None
    assert (params["epochs"], params["fine_tune_layers"], params["fine_tune_epochs"]) == (4, 0, 0)
    assert params["keep_best_checkpoints"] is None and params["keep_checkpoints"] == 2
    assert params["name"] == "best-one" + REFIT_NAME_SUFFIX == "best-one-refit" and params["base"] == "simple_cnn_small"


def test_refit_params_split_a_fine_tuning_best_epoch_and_pin_the_warm_start(make_record):
    record = make_record("r1", 0.9, weights="w.h5", epochs=5, fine_tune_layers=3, fine_tune_epochs=8,
                         swa_epochs=4, warm_start="best", best_of="roots")
    record = record.model_copy(update={
        "history": {"head": {"loss": [1.0] * 3}, "fine_tune": {"loss": [1.0] * 8}},  # the head stopped early
        "best_epoch": 5, "best_phase": "fine_tune", "epochs_run": 11, "parent_run_id": "parent-1",
        "warm_start": WarmStartSection(parent_run_id="parent-1", checkpoint=7, weights_path="x", weights_sha256="y")})
    params = refit_params(record)
    assert (params["epochs"], params["fine_tune_layers"], params["fine_tune_epochs"]) == (3, 3, 2)
    assert params["swa_epochs"] == 2  # no more than the fine-tuning epochs it keeps
    assert (params["warm_start"], params["warm_start_checkpoint"], params["best_of"]) == ("parent-1", 7, None)
    assert params.get("name") is None


def test_refit_best_chooses_the_configuration_with_the_best_mean(tmp_path, make_record):
    """Two seeds of configuration A (0.90, 0.80: mean 0.85) against one run of B at 0.88: B is refit,
    though A holds the single best run; never an ensemble, nor an earlier refit."""
    spec = _grid(tmp_path)
    found = read_all(tmp_path / "logs")
    a1, a2 = (make_record(f"a{i}", value, dense_units=[16]).model_copy(update={"group_hash": "A"})
              for i, value in ((1, 0.90), (2, 0.80)))
    b = make_record("b", 0.88, dense_units=[32]).model_copy(update={"group_hash": "B"})
    ensemble = make_record("e", 0.99).model_copy(update={"kind": "ensemble"})
    earlier = make_record("old-refit", 0.99, train_on_val=True, early_stopping_patience=None).model_copy(
        update={"refit_of": "b", "val_metrics": None})
    found.records.extend([a1, a2, b, ensemble, earlier])
    run, line = refit_best(spec, found)
    assert run is not None and run.refit_of == "b", line
    assert run.params["dense_units"] == [32] and run.params["train_on_val"] is True
    assert run.params["epochs"] == 2 and run.params["early_stopping_patience"] is None
    assert "refit of b (val_weighted_recall 0.8800)" in line and "2 epoch(s)" in line
    assert run.config_hash != b.config_hash
    # a refit never ranks, whatever the metric (even a test_ one, which it has)
    assert [rec.run_id for rec in rank(found.records, parse_metric("test_weighted_recall"))][:1] == ["e"]
    assert "old-refit" not in {rec.run_id for rec in rank(found.records, parse_metric("test_weighted_recall"))}


def test_refit_best_without_a_ranked_run_says_so(tmp_path, make_record):
    found = read_all(tmp_path / "logs")
    found.records.append(make_record("failed", None))
    run, line = refit_best(_grid(tmp_path), found)
    assert run is None and line == "refit: not run: no completed run has val_weighted_recall"


def test_run_refit_asks_the_sweep_whether_to_run_executes_and_says_how_it_went(tmp_path, monkeypatch, make_record):
    """`run_refit` knows nothing of executors: the sweep's planning and execution are handed in."""
    from runner.records import write_record

    monkeypatch.chdir(tmp_path)  # the grid's logs folder: tmp_path/logs
    spec = _grid(tmp_path)
    assert spec.logs_dir == tmp_path / "logs"
    best = make_record("20260101-000000-aaaaaaaa", 0.9, base="simple_cnn_small", weights=None, epochs=3)
    write_record(best, spec.logs_dir)
    lines, asked, executed = [], [], []
    assert run_refit(spec, lambda run, found: asked.append(found) or "completed as x", executed.append,
                     lines.append) is None
    assert executed == [] and [rec.run_id for rec in asked[0].records] == [best.run_id]
    assert lines[0].startswith(f"refit of {best.run_id} (val_weighted_recall 0.9000)")
    assert lines[1] == "refit: not run again: completed as x"

    lines.clear()
    done = make_record("20260101-000100-bbbbbbbb", 0.95)

    def execute(run):
        executed.append(run)
        return done

    assert run_refit(spec, lambda run, found: None, execute, lines.append) is done
    assert executed[0].refit_of == best.run_id and executed[0].params["train_on_val"] is True
    assert lines[1].startswith(f"refit {done.run_id}: test_weighted_recall 0.9500 (trained on ")


def test_refit_is_a_grid_key_and_refused_when_not_a_bool(tmp_path):
    from runner.errors import ConfigError

    assert _grid(tmp_path).refit is True
    assert load_grid(write_grid(tmp_path, "fixed: {weights: null}\n")).refit is False
    with pytest.raises(ConfigError, match="refit"):
        load_grid(write_grid(tmp_path, "fixed: {weights: null}\nrefit: yes please\n"))


def test_the_leaderboard_shows_a_refit_apart_from_the_ranking(tmp_path, make_record):
    from runner.records import write_record
    from runner.reports.leaderboard import write_leaderboard

    logs = tmp_path / "logs"
    original = make_record("20260101-000000-aaaaaaaa", 0.85)
    refit = make_record("20260101-000100-bbbbbbbb", 0.93, train_on_val=True).model_copy(
        update={"refit_of": original.run_id, "val_metrics": None,
                "data": DataSection(dir="d", class_names=["a", "b"], manifest_hash="m", train_on_val=True, counts={
                    "train": {"a": 30, "b": 20}, "val": {"a": 0, "b": 0}, "test": {"a": 5, "b": 5}})})
    for record in (original, refit):
        write_record(record, logs)
    board = write_leaderboard(logs, tmp_path / "leaderboard.html", "test_weighted_recall")
    assert [rec.run_id for rec in board.ranked] == [original.run_id]
    page = board.page_path.read_text(encoding="utf-8")
    assert "Refits (1)" in page and "Completed runs without" not in page
    section = page[page.index('id="refits"'):]
    assert refit.run_id in section and "<td>50</td>" in section and "0.9300" in section and "0.8500" in section


# A real sweep -------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_refit_true_on_builtin_digits_records_a_refit_of_the_best_run(tmp_path, monkeypatch, capsys):
    """Two configurations on the digits (simple_cnn_small, 16 px, 20 images a class, 3 epochs with early
    stopping): the sweep ends with a refit of the best one, trained on its training and validation images
    for its best epoch count, evaluated on the test split only, loadable by predict, and not run again."""
    from runner.cli import main
    from runner.core.ensemble import build_ensemble
    from runner.core.predict import load_run

    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, f"""
notebook: {PROJECT_ROOT / 'notebooks' / 'base_experiment.ipynb'}
data_dir: builtin:digits
refit: true
fixed: {{base: simple_cnn_small, weights: null, image_size: 16, max_images_per_class: 20, epochs: 3,
        early_stopping_patience: 1, batch_size: 16, dense_units: [16], val_fraction: 0.25, test_fraction: 0.25,
        deterministic: false}}
grid: {{learning_rate: [0.003, 0.0003]}}
""")
    assert main(["sweep", str(grid), "--no-prestart"]) == 0
    err = capsys.readouterr().err
    records = read_all(tmp_path / "logs").records
    refits = [rec for rec in records if rec.refit_of]
    assert len(records) == 3 and len(refits) == 1, err
    refit = refits[0]
    by_id = {rec.run_id: rec for rec in records}
    original = by_id[refit.refit_of]
    ranked = rank(records, parse_metric("weighted_recall"))
    assert ranked[0].run_id == original.run_id  # the best configuration on the validation split
    assert f"refit {refit.run_id}: test_weighted_recall" in err
    # trained on train + validation: the counts of its record
    counts = refit.data.counts
    for name in original.data.class_names:
        assert counts["train"][name] == original.data.counts["train"][name] + original.data.counts["val"][name]
        assert counts["val"][name] == 0 and counts["test"][name] == original.data.counts["test"][name]
    assert refit.data.manifest_hash == original.data.manifest_hash  # the same split, the same test images
    # for the epochs of the original's selected weights, every one of them run
    assert refit.params["epochs"] == original.best_epoch == refit.epochs_run == refit.best_epoch
    assert refit.params["train_on_val"] is True and refit.params["early_stopping_patience"] is None
    assert set(refit.history["head"]) >= {"loss", "accuracy"} and "val_loss" not in refit.history["head"]
    # evaluated on the test split only
    assert refit.val_metrics is None and refit.metrics is not None and refit.paths["val_predictions"] is None
    assert refit.paths["html"] and (tmp_path / "logs" / refit.paths["html"]).resolve().is_file()
    # predict loads it
    loaded = load_run(refit.run_id, logs_dir=tmp_path / "logs")
    folder = Path(original.data.dir) / "3"
    table = loaded.predict_paths([str(folder)])
    assert len(table) == len(list(folder.iterdir())) and set(table["predicted_label"]) <= set(original.data.class_names)
    # the leaderboard shows it apart, and the same sweep again does not refit again
    assert refit.run_id in (tmp_path / "leaderboard.html").read_text(encoding="utf-8")
    assert main(["sweep", str(grid), "--no-prestart"]) == 0
    assert "refit: not run again: completed as" in capsys.readouterr().err
    assert len(read_all(tmp_path / "logs").records) == 3
    # an ensemble may take it: same split, same test images; no validation figures to rank it by
    other = next(rec for rec in records if rec.run_id not in (refit.run_id, original.run_id))
    ensemble = build_ensemble([refit.run_id, other.run_id], logs_dir=tmp_path / "logs",
                              experiments_dir=tmp_path / "experiments")
    assert ensemble.members == [refit.run_id, other.run_id]
    assert ensemble.metrics is not None and ensemble.val_metrics is None
