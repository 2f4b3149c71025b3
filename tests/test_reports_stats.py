"""Significance tests (`runner.reports.stats`): McNemar's exact test and Welch's t-test, checked against
scipy called here on counts and values worked out by hand, and against the binomial arithmetic itself."""

from math import comb

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from runner.errors import ConfigError
from runner.records import DataSection, RunRecord, SplitMetrics
from runner.reports.stats import (P_VALUE_MEANING, mcnemar_exact, mcnemar_runs, welch_groups, welch_t)

#  image:   0    1    2    3    4    5    6    7    8    9   10   11
TRUTH = ["a", "a", "b", "b", "c", "c", "a", "b", "c", "a", "b", "c"]
PRED_A = ["a", "a", "b", "b", "c", "c", "a", "b", "a", "b", "c", "a"]  # right on 0-7
PRED_B = ["a", "b", "c", "b", "a", "c", "c", "a", "c", "b", "c", "a"]  # right on 0, 3, 5, 8
# both right: 0, 3, 5 (3); only A: 1, 2, 4, 6, 7 (5); only B: 8 (1); neither: 9, 10, 11 (3)


def test_mcnemar_counts_and_p_value_equal_scipys_binomial_test_on_the_discordant_pairs():
    result = mcnemar_exact(TRUTH, PRED_A, PRED_B)
    assert (result.both, result.only_a, result.only_b, result.neither, result.n) == (3, 5, 1, 3, 12)
    expected = scipy_stats.binomtest(5, 6, 0.5, alternative="two-sided").pvalue
    assert result.p_value == pytest.approx(expected, rel=1e-12)
    # by hand: two-sided exact p = 2 * P(X <= 1), X ~ Binomial(6, 1/2) = 2 * (1 + 6) / 64
    assert result.p_value == pytest.approx(14 / 64, rel=1e-12)
    swapped = mcnemar_exact(TRUTH, PRED_B, PRED_A)
    assert (swapped.only_a, swapped.only_b, swapped.p_value) == (1, 5, result.p_value)  # symmetric


@pytest.mark.parametrize("only_a, only_b", [(0, 9), (2, 8), (10, 3), (7, 7), (25, 11)])
def test_mcnemar_on_generated_predictions_equals_scipy_and_the_binomial_sum(only_a, only_b):
    truth = ["x"] * (only_a + only_b + 4)
    a = ["x"] * only_a + ["y"] * only_b + ["x", "x", "y", "y"]
    b = ["y"] * only_a + ["x"] * only_b + ["x", "x", "y", "y"]
    result = mcnemar_exact(truth, a, b)
    n, k = only_a + only_b, min(only_a, only_b)
    assert result.p_value == pytest.approx(scipy_stats.binomtest(only_a, n, 0.5).pvalue, rel=1e-12)
    assert result.p_value == pytest.approx(min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n), rel=1e-12)


def test_mcnemar_without_discordant_pairs_is_1_and_refuses_ragged_input():
    assert mcnemar_exact(["a", "b"], ["a", "a"], ["a", "a"]).p_value == 1.0
    with pytest.raises(ValueError, match="same, non-zero number"):
        mcnemar_exact(["a", "b"], ["a"], ["a", "b"])


def test_welch_p_value_equals_scipys_and_the_welch_satterthwaite_formula():
    a, b = [0.892, 0.914, 0.901, 0.907], [0.871, 0.880, 0.902]
    result = welch_t(a, b)
    expected = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert result.t == pytest.approx(expected.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-12)
    # the same by hand: t = (ma - mb) / sqrt(va/na + vb/nb), df by Welch-Satterthwaite
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    assert result.t == pytest.approx(t, rel=1e-9) and result.df == pytest.approx(df, rel=1e-9)
    assert result.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(t), df), rel=1e-9)
    assert (result.n_a, result.n_b) == (4, 3) and result.mean_a == pytest.approx(np.mean(a))
    with pytest.raises(ValueError, match="at least 2 values per group"):
        welch_t([0.9], [0.8, 0.7])


def _record(run_id: str, test_values: float, manifest: str = "1" * 64, paths: dict | None = None) -> RunRecord:
    m = SplitMetrics(accuracy=test_values, weighted_precision=0.5, weighted_recall=test_values, weighted_f1=0.5,
                     macro_precision=0.5, macro_recall=0.5, macro_f1=0.5)
    return RunRecord(run_id=run_id, config_hash="ab" * 32, status="completed", started_at="s", finished_at="f",
                     params={}, metrics=m, val_metrics=m, paths=paths or {},
                     data=DataSection(dir="/d", class_names=["a", "b", "c"], manifest_hash=manifest))


def _write_predictions(folder, run_id: str, predicted: list[str], order: list[int]) -> dict:
    """A predictions.csv as the notebook writes it (rows in `order`, to check they are aligned by image)."""
    names = ["a", "b", "c"]
    rows = []
    for i in order:
        probs = [0.8 if c == predicted[i] else 0.1 for c in names]
        rows.append({"path": f"/data/{TRUTH[i]}/img_{i}.png", "true_label": TRUTH[i], "predicted_label": predicted[i],
                     "confidence": 0.8, **{f"prob_{c}": p for c, p in zip(names, probs)}})
    (folder / run_id).mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / run_id / "predictions.csv", index=False)
    return {"predictions": f"../experiments/{run_id}/predictions.csv"}


def test_mcnemar_of_two_recorded_runs_aligns_their_predictions_by_image(tmp_path):
    experiments = tmp_path / "experiments"
    a = _record("run-a", 0.6, paths=_write_predictions(experiments, "run-a", PRED_A, list(range(12))))
    b = _record("run-b", 0.3, paths=_write_predictions(experiments, "run-b", PRED_B, list(range(12))[::-1]))
    result = mcnemar_runs(a, b, tmp_path / "logs")
    assert (result.only_a, result.only_b, result.n) == (5, 1, 12)
    assert result.p_value == pytest.approx(scipy_stats.binomtest(5, 6, 0.5).pvalue, rel=1e-12)


def test_runs_tested_on_other_splits_are_refused_with_the_reason(tmp_path):
    experiments = tmp_path / "experiments"
    a = _record("run-a", 0.6, paths=_write_predictions(experiments, "run-a", PRED_A, list(range(12))))
    b = _record("run-b", 0.3, manifest="2" * 64, paths=_write_predictions(experiments, "run-b", PRED_B, list(range(12))))
    with pytest.raises(ConfigError, match="different splits .*same test split"):
        mcnemar_runs(a, b, tmp_path / "logs")
    missing = _record("run-c", 0.3)
    with pytest.raises(ConfigError, match="run run-c: no predictions.csv"):
        mcnemar_runs(a, missing, tmp_path / "logs")


def test_welch_between_groups_of_repeats_uses_each_records_figure():
    group_a = [_record(f"a{i}", v) for i, v in enumerate([0.892, 0.914, 0.901])]
    group_b = [_record(f"b{i}", v) for i, v in enumerate([0.871, 0.880, 0.902])]
    result = welch_groups(group_a, group_b, "weighted_recall", "test")
    expected = scipy_stats.ttest_ind([0.892, 0.914, 0.901], [0.871, 0.880, 0.902], equal_var=False).pvalue
    assert result.p_value == pytest.approx(expected, rel=1e-12)
    assert "probability" in P_VALUE_MEANING and "equally good" in P_VALUE_MEANING


def test_top_two_is_welch_for_two_groups_of_repeats_and_mcnemar_otherwise(tmp_path):
    from runner.reports.stats import top_two

    experiments = tmp_path / "experiments"
    a = _record("run-a", 0.6, paths=_write_predictions(experiments, "run-a", PRED_A, list(range(12))))
    b = _record("run-b", 0.3, paths=_write_predictions(experiments, "run-b", PRED_B, list(range(12))))
    single = top_two([a], [b], "accuracy", tmp_path / "logs")
    assert single["test"] == "McNemar's exact test" and single["error"] is None
    assert single["p"] == pytest.approx(scipy_stats.binomtest(5, 6, 0.5).pvalue, rel=1e-12)
    group_a = [_record(f"a{i}", v) for i, v in enumerate([0.892, 0.914, 0.901])]
    group_b = [_record(f"b{i}", v) for i, v in enumerate([0.871, 0.880])]
    groups = top_two(group_a, group_b, "accuracy", tmp_path / "logs")
    assert groups["test"] == "Welch's t-test" and (groups["a"], groups["b"]) == ("a0", "b0")
    assert groups["p"] == pytest.approx(scipy_stats.ttest_ind([0.892, 0.914, 0.901], [0.871, 0.880],
                                                              equal_var=False).pvalue, rel=1e-12)
    assert "(n = 3)" in groups["detail"] and "(n = 2)" in groups["detail"]
    refused = top_two([a], [_record("run-c", 0.3)], "accuracy", tmp_path / "logs")
    assert refused["p"] is None and "run run-c: no predictions.csv" in refused["error"]
