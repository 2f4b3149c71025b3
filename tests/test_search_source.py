"""A search with `repeats:` (`runner.search.source.SearchSource`): each proposal runs with seeds seed, seed + 1, ...
and the study is told the mean of their metric, computed here from the record files."""

import json
import statistics

import pytest

from helpers import FAULTS_NOTEBOOK, sweep_main, write_grid
from runner.records import COMPLETED

pytestmark = pytest.mark.slow


def test_a_proposal_with_repeats_is_scored_by_the_mean_of_its_seeds(tmp_path, monkeypatch):
    import optuna

    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, f"""
notebook: {FAULTS_NOTEBOOK}
search: {{sampler: grid, n_runs: 2, repeats: 3}}
fixed: {{seed: 4, seed_effect: 0.01}}
grid: {{score: [0.3, 0.6]}}
""")
    assert sweep_main([str(grid)]) == 0
    records: dict[float, list[dict]] = {}
    for path in sorted((tmp_path / "logs").glob("*.json")):
        payload = json.loads(path.read_text())
        records.setdefault(payload["params"]["score"], []).append(payload)
    assert sorted(records) == [0.3, 0.6]
    for payloads in records.values():
        assert sorted(p["params"]["seed"] for p in payloads) == [4, 5, 6]
        assert {p["status"] for p in payloads} == {COMPLETED} and len({p["group_hash"] for p in payloads}) == 1
    trials = []  # every study of the logs folder (its journal is named after the grid file and its space)
    for journal in (tmp_path / "logs").glob("*.optuna.journal"):
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        for study in optuna.get_all_study_summaries(storage):
            trials += optuna.load_study(study_name=study.study_name, storage=storage).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in trials:
        values = [p["val_metrics"]["weighted_recall"] for p in records[trial.params["score"]]]
        assert trial.value == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert trial.value == pytest.approx(trial.params["score"] + 0.05)  # seeds 4, 5, 6: + 0.04, 0.05, 0.06
        assert sorted(trial.user_attrs["nbsweep_repeat_values"]) == pytest.approx(sorted(values))
