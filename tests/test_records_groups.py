"""Repeats over seeds (`runner.records.groups`): groups ranked by their mean, shown as one leaderboard row
(mean ± sample standard deviation, n, min-max, the runs under a <details>), and chosen by `warm_start: best` and
`ensembles: {top: N}` by their mean (each represented by its best run on the validation split). Means and
standard deviations are checked against numpy on the record files, not against the code under test."""

import csv
import json
import re
import statistics

import numpy as np
import pytest

from helpers import _make_record, write_faults_grid
from runner.core.ensemble import choose_members
from runner.core.warm_start import resolve_warm_start
from runner.records import COMPLETED, DataSection, write_record
from runner.records.groups import format_spread, group_key, group_ranked
from runner.records.query import find, parse_metric, rank, read_all
from runner.reports.leaderboard import metric_plot_data, write_leaderboard

RANKING = parse_metric("weighted_recall")

# configuration -> [(run id, seed, validation weighted recall)]; by single run Y's seed 0 is the best,
# by mean X (0.83) > Z (0.82) > Y (0.7733...)
RUNS = {
    "X": [("20261121-120000-aaaaaaa0", 0, 0.80), ("20261121-120001-aaaaaaa1", 1, 0.86),
          ("20261121-120002-aaaaaaa2", 2, 0.83)],
    "Y": [("20261121-120003-bbbbbbb0", 0, 0.90), ("20261121-120004-bbbbbbb1", 1, 0.70),
          ("20261121-120005-bbbbbbb2", 2, 0.72)],
    "Z": [("20261121-120006-ccccccc0", 0, 0.82)],
}


def write_runs(logs, *, split_by_seed: bool = False) -> dict[str, str]:
    """The records of `RUNS`, each with a model file and predictions (so an ensemble may take it); the test
    split is the same for all, or one per seed. Returns run id -> configuration."""
    config_of = {}
    for config, runs in RUNS.items():
        for run_id, seed, val in runs:
            folder = logs.parent / "experiments" / run_id
            folder.mkdir(parents=True)
            (folder / "model.keras").write_bytes(b"weights")
            (folder / "predictions.csv").write_text(  # as the notebook writes it: the same 4 test images
                "path,true_label,predicted_label,confidence,prob_a,prob_b\n"
                + "".join(f"/d/{c}/img_{i}.png,{c},a,0.6,0.6,0.4\n" for i, c in enumerate("aabb")))
            rec = _make_record(run_id, val - 0.05, val_recall=val, base="simple_cnn_small", config=config, seed=seed)
            rec = rec.model_copy(update={
                "group_hash": f"{config}" * 64, "config_hash": run_id,
                "paths": {"model": f"../experiments/{run_id}/model.keras",
                          "predictions": f"../experiments/{run_id}/predictions.csv"},
                "data": DataSection(dir="/d", class_names=["a", "b"],
                                    manifest_hash=(str(seed) if split_by_seed else "0") * 64)})
            write_record(rec, logs)
            config_of[run_id] = config
    return config_of


def recorded_values(logs) -> dict[str, list[float]]:
    """Configuration -> the validation weighted recalls read from the JSON files themselves."""
    values: dict[str, list[float]] = {}
    for path in sorted(logs.glob("*.json")):
        payload = json.loads(path.read_text())
        values.setdefault(payload["params"]["config"], []).append(payload["val_metrics"]["weighted_recall"])
    return values


def test_groups_are_ranked_by_their_mean_with_the_sample_standard_deviation(tmp_path):
    logs = tmp_path / "logs"
    write_runs(logs)
    found = read_all(logs)
    ranked = rank(found.records, RANKING)
    assert ranked[0].run_id == RUNS["Y"][0][0]  # the best single run is Y's
    groups = group_ranked(ranked, RANKING)
    values = recorded_values(logs)
    assert [g.runs[0].params["config"] for g in groups] == ["X", "Z", "Y"]
    for group in groups:
        expected = values[group.runs[0].params["config"]]
        assert group.n == len(expected)
        assert group.mean == pytest.approx(np.mean(expected), abs=1e-12)
        assert group.min == min(expected) and group.max == max(expected)
        if len(expected) > 1:
            assert group.std == pytest.approx(np.std(expected, ddof=1), abs=1e-12)
        else:
            assert group.std is None
    x = groups[0]
    assert x.best.run_id == RUNS["X"][1][0]  # its best on the validation split
    assert sorted(x.seeds) == [0, 1, 2]
    assert format_spread(x) == f"{np.mean(values['X']):.4f} ± {np.std(values['X'], ddof=1):.4f}"
    # a record without group_hash (written before repeats) and an ensemble are groups of their own
    old = _make_record("20261121-130000-dddddddd", 0.5, base="simple_cnn_small", config="X")
    assert group_key(old) == "run:20261121-130000-dddddddd"
    assert group_key(old.model_copy(update={"kind": "ensemble", "group_hash": "X" * 64})).startswith("ensemble:")
    rerun = x.runs[0].model_copy(update={"run_id": "20261121-140000-ffffffff", "rerun_of": x.best.run_id})
    assert group_key(rerun) != group_key(x.runs[0])  # the same seed again: not a repeat


def test_warm_start_best_takes_the_best_mean_and_its_best_validation_run(tmp_path):
    logs = tmp_path / "logs"
    write_runs(logs)
    found = read_all(logs)
    assert find("best", found, ranking=RANKING).run_id == RUNS["X"][1][0]
    folder = tmp_path / "experiments" / RUNS["X"][1][0]
    warm = resolve_warm_start({"warm_start": "best", "base": "simple_cnn_small", "head": "gap",
                               "dense_units": [256]}, found, ranking=RANKING)
    assert warm.parent_run_id == RUNS["X"][1][0] and warm.weights_path == str((folder / "model.keras").resolve())
    # restricted to Y (best_of: a name prefix): Y's best run on validation, though Y's mean is the worst
    for run_id, _, _ in RUNS["Y"]:
        path = logs / f"{run_id}.json"
        payload = json.loads(path.read_text())
        payload["name"] = f"why-{run_id[-1]}"
        path.write_text(json.dumps(payload))
    warm = resolve_warm_start({"warm_start": "best", "best_of": "why", "base": "simple_cnn_small", "head": "gap",
                               "dense_units": [256]}, read_all(logs), ranking=RANKING)
    assert warm.parent_run_id == RUNS["Y"][0][0]


def test_ensemble_top_takes_one_run_of_each_best_configuration(tmp_path):
    logs = tmp_path / "logs"
    write_runs(logs)
    members = [rec.run_id for _, rec in choose_members((), 2, logs, "weighted_recall")]
    assert members == [RUNS["X"][1][0], RUNS["Z"][0][0]]  # by run, it would have been Y's seed 0 and X's seed 1
    assert [rec.run_id for _, rec in choose_members((), None, logs, "weighted_recall")] == [
        RUNS["X"][1][0], RUNS["Z"][0][0], RUNS["Y"][0][0]]


def test_ensemble_top_keeps_to_the_first_members_test_split(tmp_path):
    """Repeats with other seeds have other splits: each configuration gives its best run on the first's split."""
    logs = tmp_path / "logs"
    write_runs(logs, split_by_seed=True)
    with pytest.warns(UserWarning, match=rf"skipped 1 configuration\(s\) with no run on the test split of "
                                         rf"{RUNS['X'][1][0]} .*: {RUNS['Z'][0][0]}"):
        members = [rec for _, rec in choose_members((), 2, logs, "weighted_recall")]
    assert [rec.run_id for rec in members] == [RUNS["X"][1][0], RUNS["Y"][1][0]]  # Y's seed 1: X's split
    assert len({rec.data.manifest_hash for rec in members}) == 1


def test_leaderboard_shows_one_row_per_configuration_and_the_csv_its_figures(tmp_path):
    logs = tmp_path / "logs"
    write_runs(logs)
    board = write_leaderboard(logs, tmp_path / "leaderboard.html")
    values = recorded_values(logs)
    page = (tmp_path / "leaderboard.html").read_text()
    rows = re.findall(r'<tr id="run-([^"]+)"><td>(\d+)</td>', page)
    assert rows == [(RUNS["X"][1][0], "1"), (RUNS["Z"][0][0], "2"), (RUNS["Y"][0][0], "3")]
    x_row = page[page.index(f'<tr id="run-{RUNS["X"][1][0]}">'):]
    x_row = x_row[:x_row.index("</tr>")]
    mean, std = np.mean(values["X"]), np.std(values["X"], ddof=1)
    assert f'<td data-sort="{mean:.4f}">{mean:.4f} ± {std:.4f}</td>' in x_row
    assert f"<td>3</td><td>{min(values['X']):.4f}–{max(values['X']):.4f}</td>" in x_row
    assert '<details class="repeats"><summary>3 seeds</summary>' in x_row
    for run_id, seed, val in RUNS["X"]:  # every run of the group, each seed and figure
        assert f"{run_id}</a> seed {seed}: {val:.4f}" in x_row or f"{run_id} seed {seed}: {val:.4f}" in x_row
    assert "<th>n</th><th>val_weighted_recall min–max</th>" in page
    assert "repeats: 3" not in page  # the advice is for boards without repeats
    assert "best configuration val_weighted_recall" in board.summary()
    # the csv: every run, by configuration, with its configuration's rank, n, mean, std, min and max
    with open(tmp_path / "leaderboard.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["run_id"] for row in table] == [r for c in "XZY" for r, _, _ in
                                                sorted(RUNS[c], key=lambda run: -run[2])]
    for row in table:
        expected = values[row["param.config"]]
        assert int(row["group_n"]) == len(expected)
        assert float(row["group_mean"]) == pytest.approx(np.mean(expected), abs=1e-12)
        assert row["group_std"] == "" if len(expected) == 1 else (
            float(row["group_std"]) == pytest.approx(np.std(expected, ddof=1), abs=1e-12))
        assert float(row["group_min"]) == min(expected) and float(row["group_max"]) == max(expected)
    assert [row["group_rank"] for row in table] == ["1", "1", "1", "2", "3", "3", "3"]
    # the plot's second panel: one box per configuration with repeats, best mean at the top, and its mean
    spread = metric_plot_data(board.ranked, RANKING)["spread"]
    assert spread["groups"] == [f"#3 {RUNS['Y'][0][0]} (n=3)", f"#1 {RUNS['X'][1][0]} (n=3)"]
    assert [sorted(v) for v in spread["values"]] == [sorted(values["Y"]), sorted(values["X"])]
    assert spread["means"] == pytest.approx([np.mean(values["Y"]), np.mean(values["X"])], abs=1e-12)


def test_a_board_without_repeats_says_how_to_measure_the_noise(tmp_path):
    logs = tmp_path / "logs"
    for i, val in enumerate((0.8, 0.81)):
        write_record(_make_record(f"20261121-12000{i}-eeeeeee{i}", val, dropout=0.1 * i), logs)
    write_leaderboard(logs, tmp_path / "leaderboard.html")
    page = (tmp_path / "leaderboard.html").read_text()
    assert "not meaningful" in page and "<code>repeats: 3</code>" in page
    assert "<th>n</th>" not in page and "<details" not in page
    board = read_all(logs)
    assert "spread" not in metric_plot_data(rank(board.records, RANKING), RANKING)


@pytest.mark.slow
def test_a_sweep_with_repeats_records_every_seed_and_groups_them(tmp_path, monkeypatch):
    """`repeats: 3`: 3 runs per configuration with seeds 5, 6, 7 (one config_hash each, one group_hash);
    the leaderboard row's mean and standard deviation are those of the record files."""
    from helpers import sweep_main

    monkeypatch.chdir(tmp_path)  # logs/, experiments/ and the leaderboard here
    grid = write_faults_grid(tmp_path, "[{score: 0.5}, {score: 0.6}]", fixed="{seed: 5, seed_effect: 0.01}",
                             repeats=3)
    assert sweep_main([str(grid)]) == 0
    found = read_all(tmp_path / "logs")
    assert len(found.records) == 6 and all(rec.status == COMPLETED for rec in found.records)
    by_score: dict[float, list] = {}
    for path in sorted((tmp_path / "logs").glob("*.json")):
        payload = json.loads(path.read_text())
        by_score.setdefault(payload["params"]["score"], []).append(payload)
    for score, payloads in by_score.items():
        assert sorted(p["params"]["seed"] for p in payloads) == [5, 6, 7]
        assert len({p["config_hash"] for p in payloads}) == 3 and len({p["group_hash"] for p in payloads}) == 1
        values = [p["val_metrics"]["weighted_recall"] for p in payloads]
        assert values == pytest.approx([score + 0.01 * p["params"]["seed"] for p in payloads])
        page = (tmp_path / "leaderboard.html").read_text()
        mean, std = statistics.fmean(values), np.std(values, ddof=1)
        assert f'<td data-sort="{mean:.4f}">{mean:.4f} ± {std:.4f}</td>' in page
    assert len({p["group_hash"] for payloads in by_score.values() for p in payloads}) == 2
    rows = re.findall(r'<tr id="run-([^"]+)"><td>(\d+)</td>', (tmp_path / "leaderboard.html").read_text())
    assert len(rows) == 2  # one row per configuration
    best = max(by_score[0.6], key=lambda p: p["val_metrics"]["weighted_recall"])
    assert rows[0] == (best["run_id"], "1")  # the better configuration, named by its best seed


@pytest.mark.parametrize("n", [1, 2, 50])
def test_group_statistics_equal_numpy_and_scipy(n):
    """mean, sample standard deviation (ddof=1), n and min-max of a group of 1, 2 and 50 seeds, against
    `np.mean` and `scipy.stats.tstd` of the figures the records hold."""
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(n)
    values = [round(float(v), 6) for v in rng.uniform(0.6, 0.95, n)]
    runs = [_make_record(f"20261121-12{i:04d}-aaaaaaaa", v - 0.05, val_recall=v, config="X", seed=i)
            .model_copy(update={"group_hash": "X" * 64}) for i, v in enumerate(values)]
    (group,) = group_ranked(rank(runs, RANKING), RANKING)
    assert group.n == n and sorted(group.values, reverse=True) == sorted(values, reverse=True)
    assert group.mean == pytest.approx(np.mean(values), rel=1e-13, abs=1e-15)
    assert (group.min, group.max) == (min(values), max(values))
    if n == 1:
        assert group.std is None and format_spread(group) == f"{values[0]:.4f}"
    else:
        assert group.std == pytest.approx(scipy_stats.tstd(values), rel=1e-12)
        assert group.std == pytest.approx(np.std(values, ddof=1), rel=1e-12)


def test_group_statistics_are_computed_once_per_group_not_per_run(tmp_path, monkeypatch):
    """Two configurations of 50 seeds: the page and the csv (100 rows) read each group's standard deviation;
    it is computed when the group is made (a few times per group shown: its ranking figure and the two other
    figure columns), never once per run."""
    import runner.records.groups as groups_module

    calls = []
    real = groups_module.sample_std
    monkeypatch.setattr(groups_module, "sample_std",
                        lambda values, mean: calls.append(len(values)) or real(values, mean))
    logs = tmp_path / "logs"
    for config, level in (("A", 0.8), ("B", 0.7)):
        for seed in range(50):
            rec = _make_record(f"20261121-{ord(config)}{seed:05d}-aaaaaaaa", level, val_recall=level + seed / 1000,
                               config=config, seed=seed).model_copy(update={"group_hash": config * 64})
            (logs / f"{rec.run_id}.json").parent.mkdir(exist_ok=True)
            (logs / f"{rec.run_id}.json").write_text(rec.model_dump_json())
    write_leaderboard(logs, tmp_path / "leaderboard.html")
    assert len(calls) <= 2 * 3, calls  # 2 groups x (ranking column + 2 other figure columns)
    with open(tmp_path / "leaderboard.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 100 and {row["group_n"] for row in table} == {"50"}
    for config in "AB":
        expected = [float(row["val_weighted_recall"]) for row in table if row["param.config"] == config]
        stds = {float(row["group_std"]) for row in table if row["param.config"] == config}
        assert len(stds) == 1 and stds.pop() == pytest.approx(np.std(expected, ddof=1), rel=1e-12)
