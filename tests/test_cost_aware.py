"""runner.cost_aware: TPE ranking its candidates by expected improvement per predicted second, on Optuna's real sampler."""

import math

import numpy as np
import optuna
import pytest

from conftest import timed_search_source
from runner.cost_aware import CostAwareTPESampler
from runner.errors import ConfigError
from runner.grid import load_grid
from runner.search import predict_duration_s

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"x": optuna.distributions.CategoricalDistribution(["cheap", "dear"]),
         "y": optuna.distributions.FloatDistribution(0.0, 1.0)}
SECONDS = {"cheap": 1.0, "dear": 100.0}
SECONDS_BY_SIZE = {64: 500.0, 32: 10.0}
"""Seconds of the earlier run at each image size."""


def proposals(sampler, trials: int = 40) -> list[dict]:
    """Ask-and-tell `trials` trials on `SPACE`; the objective is `y` alone, so `x` is as good either way."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    asked = []
    for _ in range(trials):
        trial = study.ask(SPACE)
        asked.append(dict(trial.params))
        study.tell(trial, trial.params["y"])
    return asked


def test_of_two_equally_good_choices_it_proposes_the_cheap_one():
    """Plain TPE proposes `dear` about half the time (it cannot tell the two apart); per second, `dear`
    is 100 times worse, so after the start-up runs the cost-aware sampler proposes it at most rarely."""
    plain = proposals(optuna.samplers.TPESampler(seed=3, multivariate=True))
    costly = proposals(CostAwareTPESampler(lambda p: SECONDS[p["x"]], seed=3, multivariate=True))
    dear_plain = sum(p["x"] == "dear" for p in plain[10:])
    dear_costly = sum(p["x"] == "dear" for p in costly[10:])
    assert dear_plain >= 8, dear_plain
    assert dear_costly <= 2, dear_costly
    # the start-up draws are cost-weighted too (1 : 1/100), after the first (no relative space yet)
    assert sum(p["x"] == "dear" for p in costly[1:10]) <= 1
    # y is still searched: the best proposals are near the objective's top
    assert max(p["y"] for p in costly) > 0.95


def test_with_the_budget_spent_it_proposes_exactly_what_plain_tpe_does():
    """`α = 0` (no budget left to save): the same proposals, in the same order, as Optuna's TPE."""
    plain = proposals(optuna.samplers.TPESampler(seed=5, multivariate=True), trials=25)
    cooled = proposals(CostAwareTPESampler(lambda p: SECONDS[p["x"]], lambda: 0.0, seed=5, multivariate=True),
                       trials=25)
    assert cooled == plain


def test_without_a_known_cost_it_proposes_exactly_what_plain_tpe_does():
    plain = proposals(optuna.samplers.TPESampler(seed=7, multivariate=True), trials=15)
    unknown = proposals(CostAwareTPESampler(lambda p: None, seed=7, multivariate=True), trials=15)
    assert unknown == plain


class _Estimator:
    """A Parzen estimator's stand-in with fixed log densities (only `log_pdf` is read)."""

    def __init__(self, log_pdf):
        self._log_pdf = np.asarray(log_pdf, dtype=float)

    def log_pdf(self, samples):
        return self._log_pdf


def test_the_acquisition_is_expected_improvement_per_cooled_second():
    """EI ∝ 1 / (γ + (1 - γ) g / l) (Bergstra et al. 2011), divided by c^α; computed here by hand."""
    sampler = CostAwareTPESampler(lambda p: {"cheap": 2.0, "dear": 50.0}[p["x"]], lambda: 0.5, multivariate=True)
    sampler._space, sampler._n_finished, sampler._relative = {"x": SPACE["x"]}, 20, True
    sampler._gamma = lambda n: 2  # 2 of 20 runs taken as good: γ = 0.1
    samples = {"x": np.array([0.0, 1.0, 0.0])}  # cheap, dear, cheap (CategoricalDistribution's indices)
    log_l, log_g = [-1.0, -0.5, -2.0], [-1.5, -2.5, -1.0]
    got = sampler._compute_acquisition_func(samples, _Estimator(log_l), _Estimator(log_g))
    expected = [math.log(1 / (0.1 + 0.9 * math.exp(g - l))) - 0.5 * math.log(c)
                for l, g, c in zip(log_l, log_g, (2.0, 50.0, 2.0))]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(sampler.last_costs, [2.0, 50.0, 2.0])


def test_a_cost_aware_search_ranks_by_the_predicted_seconds_of_each_run(tmp_path):
    source, builder = timed_search_source(tmp_path, "search: {sampler: tpe, cost_aware: true, budget: 1000}\n"
                                          "grid:\n  image_size: [64, 32]\n  dropout: [0.2, 0.5]\n", SECONDS_BY_SIZE)
    sampler = source.study.sampler
    assert isinstance(sampler, CostAwareTPESampler) and sampler._cost == source.trial_cost
    for size, seconds in SECONDS_BY_SIZE.items():
        params = builder.build("check", {"image_size": size, "dropout": 0.5})[0].params
        assert predict_duration_s(params, source.found.records) == pytest.approx(seconds)
        assert source.trial_cost({"image_size": size, "dropout": 0.5}) == pytest.approx(seconds)
    assert source.trial_cost({"image_size": 7, "dropout": 0.5}) is None  # not a valid run: no cost
    share = source.budget_left_share()
    assert 0.99 < share <= 1.0
    source.started -= 750.0  # 750 s of the 1000 s budget spent
    assert source.budget_left_share() == pytest.approx(share - 0.75, abs=1e-3)
    source.started -= 1000.0
    assert source.budget_left_share() == 0.0
    source.close()


def test_plain_tpe_is_not_cost_aware(tmp_path):
    source, _ = timed_search_source(tmp_path, "search: {sampler: tpe}\ngrid:\n  image_size: [64, 32]\n",
                                    SECONDS_BY_SIZE)
    assert type(source.study.sampler) is optuna.samplers.TPESampler
    assert source.budget_left_share() == 1.0  # no budget: EI per second, uncooled


def test_cost_aware_needs_the_tpe_sampler(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text("search: {sampler: random, cost_aware: true}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cost_aware: true ranks TPE's candidates: it needs sampler: tpe, "
                                          r"got 'random'"):
        load_grid(path)
