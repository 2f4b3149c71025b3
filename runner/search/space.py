"""The search space: the `search:` block of a grid file (`SearchSpec`) and its dimensions (`parse_space`).

`SAMPLERS` and `PRUNERS` are the one table of the samplers and pruners a
`search:` block may name: `SearchSpec` takes its allowed values from them, the
study builds Optuna's objects from their rows (`runner.search.study`), the
search loop reads their properties (`SamplerKind.enumerates_grid`), and
`runner.grid.docs_tables` writes their table in `docs/search.md`. A new
sampler or pruner is one row here (and a test).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.spec import ExperimentSpec
from runner.errors import ConfigError, shorten



_NUMBER = r"(\d+(?:\.\d+)?)"
_WITH_UNITS = re.compile(rf"(?:{_NUMBER}h)?\s*(?:{_NUMBER}m)?\s*(?:{_NUMBER}s)?")
"""Hours, minutes, seconds, in that order, each optional and each number with its unit."""
DURATION_FORMS = "45m, 2h, 90s, 1h30m, 1h30m15s, or a plain number of seconds"
"""The durations `parse_duration` reads, as its messages name them."""


def parse_duration(text: Union[str, int, float]) -> float:
    """Seconds in a duration such as `45m`, `1h30m`, `90s`, `2h` or a plain number of seconds.

    Units are `h`, `m` and `s`, in that order, each with its number (`1h30m15s`);
    a number without a unit is seconds only when it is the whole duration
    (`5400`, `"90"`). A number after a unit without its own (`1h30`, `2m30`) is
    refused as ambiguous (`1h30` reads as 1 h 30 min on a clock, as 1 h 30 s by
    the plain-number rule), the message giving both readings.

    Args:
        text: the duration.

    Returns:
        Seconds, > 0.

    Raises:
        ValueError: not a duration, or an ambiguous one.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a duration such as 45m, 1h30m or 90s, got {text!r}")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        stripped = str(text).strip()
        match = _WITH_UNITS.fullmatch(stripped)
        if re.fullmatch(_NUMBER, stripped):
            seconds = float(stripped)
        elif match and any(match.groups()):
            hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
            seconds = hours * 3600 + minutes * 60 + secs
        else:
            _refuse_bare_number(text, stripped)
            raise ValueError(f"expected a duration such as 45m, 1h30m or 90s, got {shorten(text)}")
    if not seconds > 0 or math.isinf(seconds):  # NaN fails `> 0`
        raise ValueError(f"expected a positive, finite duration, got {shorten(text)}")
    return seconds


def _refuse_bare_number(text: str, stripped: str) -> None:
    """Raises the ambiguity of `1h30` (a duration with units, then a number without one); returns otherwise."""
    tail = re.fullmatch(rf"(.*([hm]))\s*{_NUMBER}", stripped)
    head = tail and _WITH_UNITS.fullmatch(tail.group(1))
    if not (head and any(head.groups())):
        return
    number, readings = tail.group(3), []
    for unit in "hms"["hms".index(tail.group(2)) + 1:]:  # the units that may follow the last one given
        reading = f"{tail.group(1)}{number}{unit}"
        if _WITH_UNITS.fullmatch(reading):
            readings.append(f"{reading} ({parse_duration(reading):g} s)")
    raise ValueError(f"ambiguous duration {shorten(text)}: {number} has no unit; write {' or '.join(readings)}. "
                     f"Accepted: {DURATION_FORMS}; a number after a unit needs a unit of its own")


@dataclass(frozen=True)
class SamplerKind:
    """One value of `search.sampler`: the Optuna sampler that proposes the runs, and how it is built.

    Attributes:
        optuna_class: the sampler's class name in `optuna.samplers`.
        kwargs: `(search, dims) -> keyword arguments of that class`, from the
            `search:` block (`SearchSpec`) and the space (`Dimension`s).
        summary: its arguments and what it does, in Markdown (the table in
            `docs/search.md`).
        enumerates_grid: the sampler walks a finite grid of every dimension's
            values (`Dimension.grid_values`) instead of drawing from their
            distributions: each float range needs a `step` (`parse_space`),
            `n_runs` defaults to the number of grid points
            (`SearchSource.n_runs`), and no random point is run in place of
            proposals over the budget (`SearchSource.peek`: it would be off
            the grid). Defaults to `False`.
        cheap_start: the sampler's first `runner.search.study.CHEAP_START_RUNS`
            points are chosen by the search, not drawn by the sampler: each the
            cheapest by `runner.search.prior_cost` of a few uniform draws, the
            first the cheapest of many (`SearchSource.peek`). For a model-based
            sampler, whose own first points are uniform draws that may cost
            100x more than others. Defaults to `False`.
    """

    optuna_class: str
    kwargs: Callable[["SearchSpec", Sequence["Dimension"]], dict[str, Any]]
    summary: str
    enumerates_grid: bool = False
    cheap_start: bool = False

    def build(self, search: "SearchSpec", dims: Sequence["Dimension"]):
        """The sampler for `search` over `dims`: `optuna.samplers.<optuna_class>(**kwargs(search, dims))`."""
        import optuna

        return getattr(optuna.samplers, self.optuna_class)(**self.kwargs(search, dims))


@dataclass(frozen=True)
class PrunerKind:
    """One value of `search.pruner`: the Optuna pruner that stops weak runs, and how it is built.

    The sweep and each run's kernel build the pruner from `config`'s
    description (`models.pruning.build_pruner`), because Optuna keeps a
    pruner with the study object, not in its storage.

    Attributes:
        optuna_class: the pruner's class name in `optuna.pruners`, or `None`:
            no pruning.
        kwargs: `(search, max_epochs) -> keyword arguments of that class`;
            `max_epochs` is the most epochs a run of the grid trains.
        summary: its arguments and what it does, in Markdown (the table in
            `docs/search.md`).
    """

    optuna_class: Optional[str]
    kwargs: Callable[["SearchSpec", int], dict[str, Any]]
    summary: str

    @property
    def prunes(self) -> bool:
        """True unless this is `none`: runs report each epoch to the study and may be stopped."""
        return self.optuna_class is not None

    def config(self, search: "SearchSpec", max_epochs: int) -> Optional[dict[str, Any]]:
        """`{"class": optuna_class, "kwargs": kwargs(search, max_epochs)}`, or `None` when it does not prune."""
        return {"class": self.optuna_class, "kwargs": self.kwargs(search, max_epochs)} if self.prunes else None


SAMPLERS: Mapping[str, SamplerKind] = {
    "grid": SamplerKind(
        "GridSampler", lambda search, dims: {"search_space": {d.name: d.grid_values() for d in dims},
                                             "seed": search.seed},
        "Every point of the grid once, in a seeded random order; a float range needs a `step`, and `n_runs` "
        "defaults to the number of points.", enumerates_grid=True),
    "random": SamplerKind(
        "RandomSampler", lambda search, dims: {"seed": search.seed},
        "Independent draws from each distribution (uniform, or log-uniform with `log: true`)."),
    "tpe": SamplerKind(
        "TPESampler", lambda search, dims: {"seed": search.seed, "constant_liar": True, "multivariate": True},
        "Tree-structured Parzen estimator (Bergstra et al. 2011), `multivariate=True`, "
        "`constant_liar=True`: runs in parallel sample different points. Its first 10 points (its "
        "`n_startup_trials`) are chosen by cost: the first the cheapest of 200 uniform draws, the others "
        "each the cheapest of 4 (`runner.search.prior_cost`).", cheap_start=True),
}
"""`search.sampler` value -> its sampler, in the order messages list them. `n_runs` defaults to 20 where
the sampler does not enumerate the grid."""

PRUNERS: Mapping[str, PrunerKind] = {
    "none": PrunerKind(None, lambda search, max_epochs: {}, "No pruning: every run trains all its epochs."),
    "median": PrunerKind(
        "MedianPruner", lambda search, max_epochs: {"n_startup_trials": 2, "n_warmup_steps": search.min_epochs - 1},
        "`n_startup_trials=2`, `n_warmup_steps=min_epochs - 1`: stops a run whose best value so far is below "
        "the median of earlier runs' values at the same epoch."),
    "successive_halving": PrunerKind(
        "SuccessiveHalvingPruner", lambda search, max_epochs: {"min_resource": search.min_epochs,
                                                               "reduction_factor": 3},
        "`min_resource=min_epochs`, `reduction_factor=3` (asynchronous successive halving, Li et al. 2020): "
        "at epochs `min_epochs` x 3^k, only the best third of the runs that reached that epoch go on."),
    "hyperband": PrunerKind(
        "HyperbandPruner", lambda search, max_epochs: {"min_resource": search.min_epochs, "reduction_factor": 3,
                                                       "max_resource": max(max_epochs, search.min_epochs)},
        "`min_resource=min_epochs`, `max_resource` the most epochs a run trains, `reduction_factor=3` (Li "
        "et al. 2018, as Optuna implements it): successive halving in several brackets of different "
        "aggressiveness."),
}
"""`search.pruner` value -> its pruner, in the order messages list them."""


class SearchSpec(BaseModel):
    """The `search:` block of a grid file.

    Attributes:
        sampler: a name in `SAMPLERS`, the Optuna sampler that proposes the runs.
        n_runs: runs to finish (completed + pruned), counted over every
            sweep of this grid file (the study is continued).
        budget: optional wall-clock budget (`45m`, `2h`, seconds): no run
            starts that is predicted not to finish in it. `None`: no budget.
        pruner: a name in `PRUNERS`, the Optuna pruner that stops weak runs.
        max_run_share: with a budget, no run starts that is predicted to take more than this share of the
            budget's time left (`0.25`: a quarter), so the search spends a short budget on many affordable
            runs rather than a few expensive ones (cost-aware search, as in Snoek et al. 2012's expected
            improvement per second); `None` (the default): a run may use all the time left.
        min_epochs: no run is pruned before this epoch (1-based).
        seed: seed of the sampler, 0 <= seed < 2**32 (`ExperimentSpec.SEED_RANGE`: Optuna's samplers seed
            `numpy.random.RandomState` with it).
        repeats: runs of each proposal, with seeds `seed, seed + 1, ...` (the
            run's `seed` parameter, not the sampler's); the study is told the
            mean of their metric (a failed repeat fails the proposal).
            `n_runs` counts proposals. Not with a pruner (it judges one run's
            curve, a proposal then has several). Defaults to `1`.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    sampler: Literal[tuple(SAMPLERS)] = "tpe"
    n_runs: Optional[int] = Field(None, ge=1)
    budget: Optional[Union[str, int, float]] = None
    max_run_share: Optional[float] = Field(None, gt=0.0, le=1.0)
    pruner: Literal[tuple(PRUNERS)] = "none"
    min_epochs: int = Field(1, ge=1)
    seed: int = Field(0, ge=ExperimentSpec.SEED_RANGE.start, lt=ExperimentSpec.SEED_RANGE.stop)
    repeats: int = Field(1, ge=1)

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_in_range(cls, value):
        if type(value) is int and value not in ExperimentSpec.SEED_RANGE:
            raise ValueError(f"expected an integer with 0 <= seed < 2**32 = {ExperimentSpec.SEED_RANGE.stop}, "
                             f"the range of numpy.random.RandomState, which seeds Optuna's samplers")
        return value

    @field_validator("budget")
    @classmethod
    def _duration(cls, value):
        if value is not None:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _repeats_without_pruner(self):
        if self.repeats > 1 and self.pruner_kind.prunes:
            raise ValueError(f"repeats: {self.repeats} with pruner: {self.pruner}: a pruner stops one run by its "
                             f"curve, a proposal of {self.repeats} repeats has {self.repeats} curves; set "
                             f"pruner: none, or repeats: 1")
        return self

    @model_validator(mode="after")
    def _share_needs_budget(self):
        if self.max_run_share is not None and self.budget is None:
            raise ValueError("max_run_share is a share of the budget's time left: give a budget too")
        return self

    @property
    def budget_s(self) -> Optional[float]:
        """The budget in seconds, or `None`."""
        return None if self.budget is None else parse_duration(self.budget)

    @property
    def sampler_kind(self) -> SamplerKind:
        """`SAMPLERS[sampler]`."""
        return SAMPLERS[self.sampler]

    @property
    def pruner_kind(self) -> PrunerKind:
        """`PRUNERS[pruner]`."""
        return PRUNERS[self.pruner]


@dataclass(frozen=True)
class Dimension:
    """One parameter of the search space.

    Attributes:
        name: the notebook parameter.
        kind: `"categorical"`, `"float"` or `"int"`.
        choices: for categorical: the values (any JSON value).
        low, high: for ranges: the bounds (inclusive).
        log: log-uniform range.
        step: range step, or `None`.
    """

    name: str
    kind: Literal["categorical", "float", "int"]
    choices: tuple = ()
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None

    def distribution(self):
        """The Optuna distribution; categorical choices that are not scalars are JSON text."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "categorical":
            return CategoricalDistribution([encode(c) for c in self.choices])
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def grid_values(self) -> list:
        """The values `GridSampler` walks (encoded like `distribution`).

        Raises:
            ValueError: a float range without a step (a grid needs a finite list).
        """
        if self.kind == "categorical":
            return [encode(c) for c in self.choices]
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if not self.step:
            raise ValueError("a float range needs a step for sampler: grid")
        count = int(round((self.high - self.low) / self.step))
        return [round(self.low + i * self.step, 12) for i in range(count + 1)]

    def bounds(self) -> list:
        """Values that must all be valid parameters: the choices, or both ends of the range."""
        return list(self.choices) if self.kind == "categorical" else [
            int(self.low) if self.kind == "int" else self.low, int(self.high) if self.kind == "int" else self.high]


def encode(value: Any) -> Any:
    """A parameter value as an Optuna trial holds it: `decode` gives it back.

    Optuna's categorical choices must be `None`, bool, int, float or str, so
    any other JSON value (a list such as `dense_units: [512, 256]`, a mapping
    such as `{from_layer: block5_conv1}`) becomes the text `"json:"` +
    `json.dumps(value)`. A study's file name hashes its space in this form
    (`runner.search.study.study_path`).

    Args:
        value: a JSON value, as a grid gives it.

    Returns:
        `value` itself when it is `None`, a bool, an int, a float or a str; else its `"json:..."` text.
    """
    return value if value is None or isinstance(value, (bool, int, float, str)) else "json:" + json.dumps(value)


def decode(value: Any) -> Any:
    """A trial's parameter value back as the grid wrote it: the inverse of `encode` (`"json:..."` text is parsed)."""
    return json.loads(value[5:]) if isinstance(value, str) and value.startswith("json:") else value


def _dimension(name: str, value: Any, where: str) -> Dimension:
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: empty list of values (give at least one)")
        return Dimension(name, "categorical", choices=tuple(value))
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: got {shorten(value)}, expected a list of values, {{low, high}} or {{int: [low, high]}}")
    keys = set(value)
    if "int" in keys:
        extra = keys - {"int", "step", "log"}
        bounds = value["int"]
        if extra or not (isinstance(bounds, list) and len(bounds) == 2 and all(type(b) is int for b in bounds)):
            raise ConfigError(f"{where}: got {shorten(value)}, expected {{int: [low, high]}} with integer bounds and "
                              f"optional step (integer), log (true/false)")
        low, high = bounds
        step = value.get("step", 1)
        if type(step) is not int or step < 1:
            raise ConfigError(f"{where}.step: got {shorten(step)}, expected an integer >= 1")
        kind = "int"
    else:
        extra = keys - {"low", "high", "step", "log"}
        if extra or not {"low", "high"} <= keys:
            raise ConfigError(f"{where}: got {shorten(value)}, expected {{low, high}} with optional step, log; unknown "
                              f"or missing keys: {', '.join(sorted(extra or {'low', 'high'} - keys))}")
        low, high, step = value["low"], value["high"], value.get("step")
        for key, number in (("low", low), ("high", high), ("step", step)):
            if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))):
                raise ConfigError(f"{where}.{key}: got {shorten(number)}, expected a number (write 1.0e-3, not 1e-3)")
            if number is not None and not math.isfinite(number):
                raise ConfigError(f"{where}.{key}: got {number}, expected a finite number")
        kind = "float"
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: got {shorten(log)}, expected true or false")
    if low > high:
        raise ConfigError(f"{where}: got low {low!r} > high {high!r}, expected low <= high")
    if log and low <= 0:
        raise ConfigError(f"{where}.low: got {low!r}, expected > 0 for log: true")
    if log and step not in (None, 1) and kind == "int" or (log and kind == "float" and step is not None):
        raise ConfigError(f"{where}: log: true cannot have a step (Optuna's distributions refuse it)")
    return Dimension(name, kind, low=float(low) if kind == "float" else low, high=float(high) if kind == "float" else high,
                     log=log, step=float(step) if (kind == "float" and step is not None) else step)


def parse_space(spec, grid_path: Path, builder) -> list[Dimension]:
    """The search space of a grid with a `search:` block, validated before anything runs.

    Each dimension's name must be a notebook parameter, and its choices, or
    both ends of its range, must be valid values of it: each is checked
    through `builder` (a `runner.grid.RunBuilder`) exactly as a grid point
    is, with its `search.repeats` seeds (`RunBuilder.build_repeats`), so the
    messages are the grid's.

    Args:
        spec: the `GridSpec` (its `grid` must be one mapping).
        grid_path: the grid file, named in messages.
        builder: the `RunBuilder` of the sweep.

    Returns:
        The dimensions, sorted by name (deterministic, like `ParameterGrid`).

    Raises:
        ConfigError: sub-grids or `runs`/`sample` with `search`, a malformed
            distribution, a bound or choice that is not a valid value, or a
            float range without a step for a sampler that enumerates the grid
            (`SamplerKind.enumerates_grid`); every problem listed.
    """
    if not isinstance(spec.grid, dict):
        raise ConfigError(f"{grid_path}: grid: with search:, give one mapping of parameter -> values or "
                          f"distribution (sub-grids are for plain grids)")
    for key in ("runs", "sample"):
        if getattr(spec, key):
            raise ConfigError(f"{grid_path}: {key}: not used with search: (the sampler chooses the runs); remove it")
    errors, dims = [], []
    for name in sorted(spec.grid):
        try:
            dim = _dimension(name, spec.grid[name], f"{grid_path}: grid.{name}")
            if spec.search.sampler_kind.enumerates_grid:
                dim.grid_values()
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        except ValueError as exc:
            errors.append(f"{grid_path}: grid.{name}: {exc}")
            continue
        for value in dim.bounds():  # with every repeat's seed (`search.repeats`)
            _, problems = builder.build_repeats("grid", {name: value}, repeats=spec.search.repeats)
            errors += [p for p in problems if p not in errors]
        dims.append(dim)
    if errors:
        raise ConfigError("\n".join(errors))
    return dims


