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
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
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
    """The ranked runs of one configuration.

    Attributes:
        key: `group_key` of its runs.
        runs: its runs, best first by the ranking figure (ties in run-id order).
        values: their ranking figures, in the same order.
        best: the run that stands for the group: the best on the validation split
            (`validation_value`), ties to the earlier in `runs`.
    """

    key: str
    runs: tuple[RunRecord, ...]
    values: tuple[float, ...]
    best: RunRecord

    @property
    def n(self) -> int:
        """How many runs (seeds) the group has."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """The mean of `values`."""
        return statistics.fmean(self.values)

    @property
    def std(self) -> Optional[float]:
        """The sample standard deviation of `values` (n - 1 in the denominator), `None` for one run."""
        return statistics.stdev(self.values) if self.n > 1 else None

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    @property
    def seeds(self) -> list[Any]:
        """The `seed` parameter of each run, in `runs` order."""
        return [rec.params.get("seed") for rec in self.runs]


def validation_value(record: RunRecord, ranking) -> Optional[float]:
    """The record's figure of `ranking.metric` on the validation split, else its ranking figure
    (a schema-1 record has no validation metrics)."""
    if record.val_metrics is not None:
        return getattr(record.val_metrics, ranking.metric)
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
