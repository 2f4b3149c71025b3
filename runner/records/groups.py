"""Repeats: the runs of one configuration with different seeds, as one group (pure functions on records).

A grid's `repeats: k` runs each configuration with seeds `seed, seed + 1, ...`;
each run is recorded on its own, with the `group_hash` of its configuration
(`runner.grid.RunBuilder`: the parameters without `GROUP_FREE_PARAMS` and
the same code / data / weights fingerprint as `config_hash`). Runs of the
same parameters apart from the seed are one group whether they came from
`repeats:` or from a grid listing seeds.

Everything that chooses among runs by a metric goes through `group_ranked`:
the leaderboard (one row per group: mean ± standard deviation, n, min-max),
`warm_start: best` (`runner.records.query.find`) and `ensembles: {top: N}`
(`runner.core.ensemble.choose_members`): groups are ranked by the mean of
their runs' figures, and a group is represented by its best run on the
validation split. A run alone is a group of one (its mean is its figure).

These functions read only what a `runner.records.index.RunSummary` also has
(`run_id`, `kind`, `group_hash`, `rerun_of`, `params`, `metrics`,
`val_metrics`), so they group summaries from the index as they group records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from runner.records.schema import RUN, RunRecord

GROUP_FREE_PARAMS = ("seed", "name")
"""Parameters that differ between the repeats of one configuration: left out of its group."""


def group_key(record: RunRecord) -> str:
    """The group a record belongs to: its `group_hash`; a group of its own (`<kind>:<run id>`) for an
    ensemble, and for a record written before repeats, which has none.

    Such a record's group is not derived from its parameters: `group_hash`
    also covers the code, data and weights fingerprint, which an old record
    does not carry, and equal parameters under other code are not repeats.

    A rerun (`rerun_of`, `nbsweep rerun`) is a group of its own too: it repeats
    the original's seed, so it is no independent sample of the configuration.
    """
    if record.kind != RUN or not record.group_hash:
        return f"{record.kind}:{record.run_id}"
    if record.rerun_of:  # `nbsweep rerun`: the same seed again, a check of the original, not a repeat
        return f"rerun:{record.run_id}"
    return record.group_hash


@dataclass(frozen=True)
class Group:
    """The ranked runs of one configuration, with its statistics computed once, when it is made.

    Attributes:
        key: `group_key` of its runs.
        runs: its runs, best first by the ranking figure (ties in run-id order).
        values: their ranking figures (floats in [0, 1]), in the same order; at least one.
        best: the run that stands for the group: the best on the validation split
            (`validation_value`), ties to the earlier in `runs`.
        n: how many runs (seeds) the group has, `len(values)`.
        mean: the arithmetic mean of `values` (correctly rounded sum, `math.fsum`, over n).
        std: the sample standard deviation of `values`, n - 1 in the denominator
            (`sample_std`, as `numpy.std(values, ddof=1)`); `None` for a group of one.
        min, max: the smallest and largest of `values`.

    Raises:
        ValueError: `values` is empty, or not as long as `runs`.
    """

    key: str
    runs: tuple[RunRecord, ...]
    values: tuple[float, ...]
    best: RunRecord
    n: int = field(init=False)
    mean: float = field(init=False)
    std: Optional[float] = field(init=False)
    min: float = field(init=False)
    max: float = field(init=False)

    def __post_init__(self) -> None:
        if not self.values or len(self.values) != len(self.runs):
            raise ValueError(f"group {self.key}: got {len(self.values)} values for {len(self.runs)} runs, "
                             f"expected one per run and at least one")
        # each statistic once per group: a page or csv row reads these fields, it never recomputes them
        n = len(self.values)
        mean = math.fsum(self.values) / n
        stats = {"n": n, "mean": mean, "std": sample_std(self.values, mean) if n > 1 else None,
                 "min": min(self.values), "max": max(self.values)}
        for name, value in stats.items():
            object.__setattr__(self, name, value)  # a frozen dataclass: set once, here

    @property
    def seeds(self) -> list[Any]:
        """The `seed` parameter of each run, in `runs` order."""
        return [rec.params.get("seed") for rec in self.runs]


def sample_std(values: Sequence[float], mean: float) -> float:
    """The sample standard deviation, sqrt(sum((x - mean)^2) / (n - 1)), of at least two values.

    The two-pass algorithm (Chan, Golub and LeVeque, "Algorithms for computing the sample variance",
    The American Statistician 37(3), 1983), with `math.fsum` for both sums: what `numpy.std(values, ddof=1)`
    and `scipy.stats.tstd` compute, to within rounding, without `statistics.stdev`'s exact rational
    arithmetic (about 20 times slower per group).

    Args:
        values: the floats, at least 2.
        mean: their mean.

    Returns:
        The standard deviation (same unit as `values`), >= 0.

    Raises:
        ZeroDivisionError: fewer than 2 values.
    """
    return math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (len(values) - 1))


def finite_figure(value: Any) -> Optional[float]:
    """A recorded figure, or `None` when there is none or it is not a finite number.

    Records are JSON, and Python's `json` reads the tokens `NaN`, `Infinity`
    and `-Infinity` as floats. Such a value measures nothing (a metric lies in
    [0, 1]): read through here it is missing, so it ranks nothing, is never
    `best` and is never shown as a figure.

    Args:
        value: a metric as a record or a summary holds it (a float), or `None`.

    Returns:
        `value`, or `None` when it is `None`, NaN or infinite.
    """
    return value if value is not None and math.isfinite(value) else None


def validation_value(record: RunRecord, ranking) -> Optional[float]:
    """The record's figure of `ranking.metric` on the validation split, else its ranking figure
    (a schema-1 record has no validation metrics); `None` where that figure is missing or not finite
    (`finite_figure`)."""
    if record.val_metrics is not None:
        return finite_figure(getattr(record.val_metrics, ranking.metric))
    return ranking.value(record)


def by_validation(runs: Sequence[RunRecord], ranking) -> list[RunRecord]:
    """`runs` best first by `validation_value` (stable: ties keep their order); runs without one last."""
    def key(rec: RunRecord) -> float:
        value = validation_value(rec, ranking)
        return float("-inf") if value is None else value

    return sorted(runs, key=key, reverse=True)


def group_ranked(ranked: Sequence[RunRecord], ranking) -> list[Group]:
    """The groups of ranked runs, best mean first.

    Args:
        ranked: `runner.records.query.rank`'s output (best first, every run
            with a figure for `ranking`).
        ranking: what they were ranked by (`runner.records.query.Ranking`:
            `value(record)`, `metric`).

    Returns:
        One `Group` per `group_key`, sorted by mean, best first; equal means
        keep the order of their best runs in `ranked`.
    """
    members: dict[str, list[RunRecord]] = {}
    for rec in ranked:
        members.setdefault(group_key(rec), []).append(rec)
    groups = [Group(key, tuple(runs), tuple(ranking.value(rec) for rec in runs), by_validation(runs, ranking)[0])
              for key, runs in members.items()]
    return sorted(groups, key=lambda group: group.mean, reverse=True)


def has_repeats(groups: Sequence[Group]) -> bool:
    """True when a group has more than one run."""
    return any(group.n > 1 for group in groups)


def format_spread(group: Group, digits: int = 4) -> str:
    """`0.9012 ± 0.0113` (mean ± sample standard deviation), or the figure alone for a group of one."""
    if group.std is None:
        return f"{group.mean:.{digits}f}"
    return f"{group.mean:.{digits}f} ± {group.std:.{digits}f}"
