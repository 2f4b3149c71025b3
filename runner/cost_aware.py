"""Cost-aware TPE: expected improvement per second of the run, cooled as the budget is spent.

Optuna's `TPESampler` proposes, among `n_ei_candidates` points drawn from
the Parzen estimator of the good runs `l(x)`, the one with the highest
`l(x) / g(x)`, which orders points like TPE's expected improvement
`EI(x) ∝ (γ + (1 - γ) g(x) / l(x))^-1` (Bergstra et al. 2011, "Algorithms for
Hyper-Parameter Optimization", section 4.1; `γ` is the share of runs taken as
good). Runs here differ in cost by two orders of magnitude: a MobileNet run on
cached features takes seconds, a VGG16 run at 224 px that builds its cache
minutes. `CostAwareTPESampler` ranks the same candidates by
`EI(x) / c(x)^α` instead, `c(x)` the predicted seconds of the run
(`runner.search.predict_duration_s`): expected improvement per second
(Snoek et al. 2012, "Practical Bayesian Optimization of Machine Learning
Algorithms", section 3.2) for `α = 1`, cooled towards plain EI as the budget is
spent (`α` = the share of the budget left: Lee et al. 2020, "Cost-aware
Bayesian Optimization", EI-cool), so a search starts on cheap runs and may
still afford an expensive promising one later.

The random start-up runs are cost-aware too: of `n_ei_candidates` points
drawn uniformly from the space, one is picked with probability proportional
to `c(x)^-α`, so cheap runs are likelier and no region is ruled out.

The hooks it overrides (`_sample`, `_compute_acquisition_func`,
`_sample_relative`'s start-up branch) are Optuna's internal ones, pinned by
`requirements.txt` (optuna 5.0.0); `tests/test_cost_aware.py` checks the
behaviour on the real sampler, so an Optuna upgrade that moves them fails
there rather than silently falling back to plain TPE.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

CostFn = Callable[[dict[str, Any]], Optional[float]]
"""Predicted seconds of the run a trial's parameters (Optuna's external values) describe, or `None` (unknown)."""


class CostAwareTPESampler(optuna.samplers.TPESampler):
    """`TPESampler` ranking its candidates by expected improvement per (cooled) second.

    Args:
        cost: `CostFn`, predicted seconds (> 0) of a candidate; `None` (or
            `None` for any candidate: no cost known yet) makes a proposal
            plain TPE. `set_cost` sets it later.
        cost_exponent: `α` in `[0, 1]` at the time of the proposal (`None`:
            always 1, EI per second; `runner.search` passes the share of the
            budget left).
        **kwargs: `optuna.samplers.TPESampler`'s arguments (`multivariate=True`
            for the cost to count after the start-up runs).
    """

    def __init__(self, cost: Optional[CostFn] = None, cost_exponent: Optional[Callable[[], float]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.set_cost(cost, cost_exponent)
        # the start-up candidates come from generators of their own, so TPE's draws are Optuna's exactly
        self._candidates = optuna.samplers.RandomSampler(seed=kwargs.get("seed"))
        self._pick_rng = np.random.default_rng(kwargs.get("seed"))
        self._space: dict[str, BaseDistribution] = {}
        self._n_finished = 0
        self._relative = False
        self.last_costs: Optional[np.ndarray] = None
        """The candidates' predicted seconds at the last proposal (`None`: none known), for tests and logs."""

    def set_cost(self, cost: Optional[CostFn], cost_exponent: Optional[Callable[[], float]] = None) -> None:
        """Use `cost` and `cost_exponent` (see the class) from the next proposal on."""
        self._cost = cost
        self._cost_exponent = cost_exponent or (lambda: 1.0)

    def _alpha(self) -> float:
        return min(1.0, max(0.0, float(self._cost_exponent())))

    def _costs(self, samples: dict[str, np.ndarray]) -> Optional[np.ndarray]:
        """Predicted seconds of each candidate (internal representation), or `None` if any is unknown."""
        if self._cost is None:
            return None
        count = next(iter(samples.values())).size
        costs = []
        for i in range(count):
            params = {name: self._space[name].to_external_repr(samples[name][i]) for name in samples}
            seconds = self._cost(params)
            if seconds is None or not math.isfinite(seconds) or seconds <= 0:
                return None
            costs.append(seconds)
        return np.asarray(costs, dtype=float)

    def _sample_relative(self, study, trial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """TPE's joint proposal of every parameter (`multivariate=True`; one parameter at a time, as
        `sample_independent` does, has no cost to rank by), or during the start-up runs one of
        `n_ei_candidates` uniform draws picked with probability proportional to `c(x)^-α` (cheap draws are
        likelier, none is ruled out)."""
        self._space = search_space
        self._n_finished = len(study._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED),
                                                 use_cache=True))
        alpha = self._alpha()
        if search_space and self._n_finished < self._n_startup_trials and alpha > 0:
            samples = {name: np.asarray([dist.to_internal_repr(self._candidates.sample_independent(
                study, trial, name, dist)) for _ in range(self._n_ei_candidates)])
                for name, dist in search_space.items()}
            costs = self.last_costs = self._costs(samples)
            if costs is None:
                return {}  # no cost known yet: Optuna's uniform start-up draw
            weights = costs ** -alpha
            pick = int(self._pick_rng.choice(len(costs), p=weights / weights.sum()))
            return {name: dist.to_external_repr(samples[name][pick]) for name, dist in search_space.items()}
        self._relative = True
        try:
            return super()._sample_relative(study, trial, search_space)
        finally:
            self._relative = False

    def _compute_acquisition_func(self, samples, mpe_below, mpe_above) -> np.ndarray:
        log_ratio = super()._compute_acquisition_func(samples, mpe_below, mpe_above)  # log l(x) - log g(x)
        alpha = self._alpha()
        costs = self._costs(samples) if alpha > 0 and self._relative else None
        self.last_costs = costs
        if costs is None or self._n_finished == 0:
            return log_ratio
        gamma = min(max(self._gamma(self._n_finished) / self._n_finished, 1e-6), 1 - 1e-6)
        log_ei = -np.logaddexp(math.log(gamma), math.log1p(-gamma) - log_ratio)
        return log_ei - alpha * np.log(costs)
