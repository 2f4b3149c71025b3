"""Search: an Optuna study proposes the runs of a sweep and decides which to prune.

A grid file with a `search:` block (`SearchSpec`) turns its `grid` mapping
into a search space: a list is a categorical choice, `{low, high, log, step}`
a float range, `{int: [low, high], step, log}` an integer range
(`parse_space`). Optuna is the oracle and nothing else, as keras-tuner's
`Oracle` is: it proposes parameters (`grid`: `GridSampler`, `random`:
`RandomSampler`, `tpe`: `TPESampler` with `constant_liar`, so runs in
parallel sample different points) and decides pruning (`median`,
`successive_halving`, `hyperband`: Optuna's pruners). Each proposal becomes
a `RunSpec` through the same `runner.grid.RunBuilder` as a grid point, so
execution, records, resume and the leaderboard do not care where a run came
from. The run's trial reaches its kernel as the notebook parameter
`pruning`; `models.pruning` reports each epoch's validation value there and
asks whether to stop.

The study lives in `logs/<grid file stem>.optuna.journal` (Optuna's
`JournalFileBackend`, which works for Dask workers on a shared filesystem
too), so the same command again continues it: `n_runs` counts completed and
pruned trials; a trial left running by a killed sweep, or whose run was
interrupted or failed, is marked failed and its parameters are enqueued to be
run again.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.spec import ExperimentSpec, bypass_reason
from runner.errors import ConfigError
from runner.records import COMPLETED, DONE_STATUSES, PRUNED, RUN

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
STUDY_SUFFIX = ".optuna.journal"
MAX_DUPLICATE_PROPOSALS = 50
"""Proposals in a row that repeat a finished run before the search is taken as exhausted."""
DUPLICATE_ATTR = "nbsweep_duplicate_of"
"""User attribute of a trial that repeated a finished run (told its result; not counted in `n_runs`)."""
MAX_OVER_BUDGET_PROPOSALS = 20
"""Proposals in a row predicted not to fit in the budget's remaining time before no more runs start."""
OVER_BUDGET_ATTR = "nbsweep_over_budget_s"
"""User attribute of a trial failed unrun because its predicted seconds exceeded what was left of the budget
(or `max_run_share` of it)."""
CACHE_PARAMS = ("base", "base_kwargs", "weights", "image_size", "augmentation", "augmented_copies",
                "fine_tune_layers", "data_dir", "max_images_per_class", "val_fraction", "test_fraction", "seed",
                "activation_cache", "activation_cache_dtype")
"""Parameters that decide a run's activation-cache entries (`models.cache.cache_key` hashes what they decide):
an earlier run that agrees on all of them has built the entries a new run would read."""


def parse_duration(text: Union[str, int, float]) -> float:
    """Seconds in a duration such as `45m`, `1h30m`, `90s`, `2h` or a plain number of seconds.

    Args:
        text: the duration.

    Returns:
        Seconds, > 0.

    Raises:
        ValueError: not a duration.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a duration such as 45m, 1h30m or 90s, got {text!r}")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", str(text))
        if not match or not any(match.groups()):
            raise ValueError(f"expected a duration such as 45m, 1h30m or 90s, got {text!r}")
        hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise ValueError(f"expected a positive duration, got {text!r}")
    return seconds


class SearchSpec(BaseModel):
    """The `search:` block of a grid file.

    Attributes:
        sampler: `grid`, `random` or `tpe` (Optuna's `GridSampler`,
            `RandomSampler`, `TPESampler` with `constant_liar`).
        n_runs: runs to finish (completed + pruned), counted over every
            sweep of this grid file (the study is continued).
        budget: optional wall-clock budget (`45m`, `2h`, seconds): no run
            starts that is predicted not to finish in it. `None`: no budget.
        pruner: `none`, `median`, `successive_halving` or `hyperband`.
        max_run_share: with a budget, no run starts that is predicted to take more than this share of the
            budget's time left (`0.25`: a quarter), so the search spends a short budget on many affordable
            runs rather than a few expensive ones (cost-aware search, as in Snoek et al. 2012's expected
            improvement per second); `None` (the default): a run may use all the time left.
        cost_aware: with `sampler: tpe`, rank TPE's candidates by expected improvement per predicted second
            of the run (`predict_duration_s`), the seconds' exponent cooled from 1 to 0 as the budget is spent
            (`runner.cost_aware.CostAwareTPESampler`; Snoek et al. 2012, Lee et al. 2020), so a search
            prefers runs that reuse built activation caches and cheap bases until it has learnt where the
            good runs are. `False` (the default): Optuna's TPE.
        min_epochs: no run is pruned before this epoch (1-based).
        seed: seed of the sampler.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    sampler: Literal["grid", "random", "tpe"] = "tpe"
    n_runs: Optional[int] = Field(None, ge=1)
    budget: Optional[Union[str, int, float]] = None
    max_run_share: Optional[float] = Field(None, gt=0.0, le=1.0)
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = "none"
    cost_aware: bool = False
    min_epochs: int = Field(1, ge=1)
    seed: int = 0

    @field_validator("budget")
    @classmethod
    def _duration(cls, value):
        if value is not None:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _share_needs_budget(self):
        if self.max_run_share is not None and self.budget is None:
            raise ValueError("max_run_share is a share of the budget's time left: give a budget too")
        if self.cost_aware and self.sampler != "tpe":
            raise ValueError(f"cost_aware: true ranks TPE's candidates: it needs sampler: tpe, got {self.sampler!r}")
        return self

    @property
    def budget_s(self) -> Optional[float]:
        """The budget in seconds, or `None`."""
        return None if self.budget is None else parse_duration(self.budget)


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
            return CategoricalDistribution([_encode(c) for c in self.choices])
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def grid_values(self) -> list:
        """The values `GridSampler` walks (encoded like `distribution`).

        Raises:
            ValueError: a float range without a step (a grid needs a finite list).
        """
        if self.kind == "categorical":
            return [_encode(c) for c in self.choices]
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


def _encode(value: Any):
    return value if value is None or isinstance(value, (bool, int, float, str)) else "json:" + json.dumps(value)


def decode(value: Any) -> Any:
    """A trial's parameter value back as the grid wrote it (lists and mappings were JSON text)."""
    return json.loads(value[5:]) if isinstance(value, str) and value.startswith("json:") else value


def _dimension(name: str, value: Any, where: str) -> Dimension:
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: empty list of values (give at least one)")
        return Dimension(name, "categorical", choices=tuple(value))
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: got {value!r}, expected a list of values, {{low, high}} or {{int: [low, high]}}")
    keys = set(value)
    if "int" in keys:
        extra = keys - {"int", "step", "log"}
        bounds = value["int"]
        if extra or not (isinstance(bounds, list) and len(bounds) == 2 and all(type(b) is int for b in bounds)):
            raise ConfigError(f"{where}: got {value!r}, expected {{int: [low, high]}} with integer bounds and "
                              f"optional step (integer), log (true/false)")
        low, high = bounds
        step = value.get("step", 1)
        if type(step) is not int or step < 1:
            raise ConfigError(f"{where}.step: got {step!r}, expected an integer >= 1")
        kind = "int"
    else:
        extra = keys - {"low", "high", "step", "log"}
        if extra or not {"low", "high"} <= keys:
            raise ConfigError(f"{where}: got {value!r}, expected {{low, high}} with optional step, log; unknown "
                              f"or missing keys: {', '.join(sorted(extra or {'low', 'high'} - keys))}")
        low, high, step = value["low"], value["high"], value.get("step")
        for key, number in (("low", low), ("high", high), ("step", step)):
            if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))):
                raise ConfigError(f"{where}.{key}: got {number!r}, expected a number (write 1.0e-3, not 1e-3)")
        kind = "float"
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: got {log!r}, expected true or false")
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
    is, so the messages are the grid's.

    Args:
        spec: the `GridSpec` (its `grid` must be one mapping).
        grid_path: the grid file, named in messages.
        builder: the `RunBuilder` of the sweep.

    Returns:
        The dimensions, sorted by name (deterministic, like `ParameterGrid`).

    Raises:
        ConfigError: sub-grids or `runs`/`sample` with `search`, a malformed
            distribution, a bound or choice that is not a valid value, or a
            float range without a step for `sampler: grid`; every problem listed.
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
            if spec.search.sampler == "grid":
                dim.grid_values()
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        except ValueError as exc:
            errors.append(f"{grid_path}: grid.{name}: {exc}")
            continue
        for value in dim.bounds():
            _, problems = builder.build("grid", {name: value})
            errors += [p for p in problems if p not in errors]
        dims.append(dim)
    if errors:
        raise ConfigError("\n".join(errors))
    return dims


def study_path(logs_dir: Path, grid_path: Path) -> Path:
    """`<logs_dir>/<grid file stem>.optuna.journal`, the study's file."""
    return Path(logs_dir) / f"{Path(grid_path).stem}{STUDY_SUFFIX}"


def _sampler(search: SearchSpec, dims: Sequence[Dimension]):
    import optuna

    if search.sampler == "grid":
        return optuna.samplers.GridSampler({d.name: d.grid_values() for d in dims}, seed=search.seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    if search.cost_aware:
        from runner.cost_aware import CostAwareTPESampler

        return CostAwareTPESampler(seed=search.seed, constant_liar=True, multivariate=True)
    return optuna.samplers.TPESampler(seed=search.seed, constant_liar=True, multivariate=True)


def pruner_config(search: SearchSpec, max_epochs: int) -> Optional[dict[str, Any]]:
    """The pruner as `{"class": name in optuna.pruners, "kwargs": {...}}`, or `None` for `pruner: none`.

    Built the same way in the sweep (`open_study`) and in each run's kernel
    (`models.pruning`), because Optuna keeps the pruner with the study
    object, not in its storage.

    Args:
        search: the `search:` block (`pruner`, `min_epochs`).
        max_epochs: the most epochs a run trains (Hyperband's `max_resource`).

    Returns:
        `median`: `MedianPruner(n_startup_trials=2, n_warmup_steps=min_epochs - 1)`;
        `successive_halving`: `SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=3)`;
        `hyperband`: `HyperbandPruner(min_resource=min_epochs, max_resource=max_epochs, reduction_factor=3)`
        (Li et al. 2018, as Optuna implements it); `none`: `None`.
    """
    if search.pruner == "median":
        return {"class": "MedianPruner", "kwargs": {"n_startup_trials": 2, "n_warmup_steps": search.min_epochs - 1}}
    if search.pruner == "successive_halving":
        return {"class": "SuccessiveHalvingPruner", "kwargs": {"min_resource": search.min_epochs, "reduction_factor": 3}}
    if search.pruner == "hyperband":
        return {"class": "HyperbandPruner", "kwargs": {"min_resource": search.min_epochs, "reduction_factor": 3,
                                                       "max_resource": max(max_epochs, search.min_epochs)}}
    return None


def open_study(search: SearchSpec, dims: Sequence[Dimension], path: Path, name: str, max_epochs: int):
    """Create or continue the study in `path`; trials a killed sweep left running are failed and re-enqueued.

    Args:
        search: the `search:` block.
        dims: the search space.
        path: the journal file (created with its folder).
        name: the study's name (the grid file's stem).
        max_epochs: the most epochs a run trains (Hyperband's `max_resource`).

    Returns:
        The `optuna.Study` (direction: maximize).
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(path)))
    from models.pruning import build_pruner

    try:  # a continued study: seed its sampler past the trials it has, so it does not replay them
        earlier = len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
    except KeyError:
        earlier = 0
    seeded = search.model_copy(update={"seed": search.seed + earlier})
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=_sampler(seeded, dims),
                                pruner=build_pruner(pruner_config(search, max_epochs)))
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
    return study


BASE_GMACS_224 = {"vgg16": 15.47, "vgg19": 19.63, "resnet50": 4.09, "resnet50_v2": 4.09, "resnet101": 7.80,
                  "densenet121": 2.83, "efficientnet_b0": 0.39, "convnext_tiny": 4.46, "mobilenet": 0.569,
                  "mobilenet_v2": 0.300}
"""Billions of multiply-adds of one 224 x 224 image through a base (torchvision's model table, "GFLOPS";
MobileNet: Howard et al. 2017, Table 8, 569 million). `mobilenet*` scale by `alpha**2` (their section 3.3).
Used only to guess a cache build's seconds for a base no earlier run has built, from the others'."""


def _gmacs(params: dict[str, Any]) -> Optional[float]:
    """`BASE_GMACS_224` of the run's base, times `alpha**2` for a MobileNet width multiplier; `None` if unknown."""
    gmacs = BASE_GMACS_224.get(str(params.get("base", "")).lower())
    alpha = (params.get("base_kwargs") or {}).get("alpha", 1.0)
    return None if gmacs is None else gmacs * float(alpha) ** 2


def _phase_epochs(params: dict[str, Any]) -> int:
    """Epochs a run trains at most: the head phase plus, with fine-tuning, the fine-tuning phase."""
    ft = (params.get("fine_tune_epochs", 0) or 0) if params.get("fine_tune_layers") else 0
    return max(1, (params.get("epochs", 0) or 0) + ft)


def _pixels(params: dict[str, Any]) -> float:
    """`image_size**2`: a CNN's cost per image grows with its input's area."""
    return float(params.get("image_size", 1) or 1) ** 2


def _build_units(params: dict[str, Any]) -> float:
    """Pixels the activation cache passes through the frozen base: `_pixels` per image, times
    `1 + augmented_copies` with augmentation (each copy is one more augmented pass)."""
    copies = (params.get("augmented_copies", 0) or 0) if params.get("augmentation") else 0
    return _pixels(params) * (1 + copies)


def predict_duration_s(params: dict[str, Any], records: Sequence) -> Optional[float]:
    """The expected wall time of a run: its training and evaluation, plus building its activation cache if no
    earlier run has built it.

    Training (`timings.total_s` less `timings.cache_build_s`, seconds) comes from, in order: the median of the
    earlier completed runs with the same `base`, `base_kwargs`, `image_size`, `epochs`, `fine_tune_epochs` and
    fine-tuning (`fine_tune_layers` > 0 or not); else the median seconds per epoch and pixel of earlier runs of
    the same base, times this run's epochs and `image_size**2` (a CNN's cost grows with its input's area); else
    the median seconds per epoch of all earlier runs times this run's epochs.

    The cache build is added when no earlier finished run agrees with this one on every `CACHE_PARAMS` value
    (its entries would be read, not built): the median `cache_build_s` per `_build_units` of earlier runs of the
    same base that built entries, times this run's units; for a base no run has built with, the other bases'
    seconds per unit and multiply-add (`BASE_GMACS_224`) times this base's; nothing when neither is known, or
    when this run bypasses the cache (`models.spec.bypass_reason`: `activation_cache: false`, mixup / cutmix, or
    augmentation with `augmented_copies: 0`).

    Args:
        params: the run's parameters, after defaults.
        records: earlier records (`runner.records.RunRecord`; completed and pruned runs count).

    Returns:
        Seconds, or `None` without earlier runs.
    """
    done = [r for r in records if r.kind == RUN and r.timings.total_s and r.status in DONE_STATUSES]
    if not done:
        return None

    def training_s(r) -> float:
        return max(0.0, r.timings.total_s - (r.timings.cache_build_s or 0.0))

    def per_epoch(r) -> float:
        return training_s(r) / max(1, r.epochs_run or _phase_epochs(r.params))

    same_base = [r for r in done if all(r.params.get(k) == params.get(k) for k in ("base", "base_kwargs"))]
    key = ("image_size", "epochs", "fine_tune_epochs")
    same = [training_s(r) for r in same_base if r.status == COMPLETED and all(r.params.get(k) == params.get(k)
            for k in key) and bool(r.params.get("fine_tune_layers")) == bool(params.get("fine_tune_layers"))]
    if same:
        training = statistics.median(same)
    elif same_base:
        rate = statistics.median(per_epoch(r) / _pixels(r.params) for r in same_base)
        training = rate * _pixels(params) * _phase_epochs(params)
    else:
        training = statistics.median(per_epoch(r) for r in done) * _phase_epochs(params)
    spec = ExperimentSpec.model_validate({k: v for k, v in params.items() if k in ExperimentSpec.model_fields})
    if bypass_reason(spec) or any(all(r.params.get(k) == params.get(k) for k in CACHE_PARAMS) for r in done):
        return training
    built = [r.timings.cache_build_s / _build_units(r.params) for r in same_base if r.timings.cache_build_s]
    if built:
        return training + statistics.median(built) * _build_units(params)
    gmacs = _gmacs(params)
    other = [r.timings.cache_build_s / (_build_units(r.params) * _gmacs(r.params)) for r in done
             if r.timings.cache_build_s and _gmacs(r.params)]
    return training + (statistics.median(other) * _build_units(params) * gmacs if gmacs and other else 0.0)


@dataclass
class SearchSource:
    """Feeds a sweep's loop from a study: the next run on demand, each result told back.

    `runner.sweep` pulls runs with `peek`/`pop` and reports each finished
    record with `finished`, exactly as it does a grid's list of runs.

    Args:
        study: from `open_study`.
        dims: the search space.
        search: the `search:` block.
        builder: a `runner.grid.RunBuilder`.
        found: the records already in the logs folder (`runner.query.RecordSet`).
        ranking: the grid's ranking metric (the objective told to the study).
        journal: the study's file (handed to each run for pruning).
        pruner: `pruner_config(...)`, handed to each run's kernel; `None`: no pruning.
        started: `time.monotonic()` at the sweep's start (for the budget).
        over_budget: proposals not started because they were predicted not to fit in the budget's time left.
    """

    study: Any
    dims: Sequence[Dimension]
    search: SearchSpec
    builder: Any
    found: Any
    ranking: Any
    journal: Path
    pruner: Optional[dict] = None
    started: float = field(default_factory=time.monotonic)
    notes: list[str] = field(default_factory=list)
    over_budget: int = 0
    _next: Any = None
    _last: Any = None
    _trials: dict = field(default_factory=dict)
    _index: int = 0
    _exhausted: bool = False

    def __post_init__(self):
        if hasattr(self.study.sampler, "set_cost"):  # `search.cost_aware`: the sampler ranks by predicted seconds
            self.study.sampler.set_cost(self.trial_cost, self.budget_left_share)

    def trial_cost(self, trial_params: dict[str, Any]) -> Optional[float]:
        """Predicted seconds (`predict_duration_s`) of the run of a trial's parameters (Optuna's values), or
        `None` (no earlier run to predict from, or the point is not a valid run)."""
        point = {name: decode(value) for name, value in trial_params.items()}
        run, errors = self.builder.build("candidate", point)
        return None if errors else self.predicted_s(run)

    def budget_left_share(self) -> float:
        """The share of the budget not spent yet, in `[0, 1]` (1 without a budget)."""
        if self.search.budget_s is None:
            return 1.0
        return max(0.0, 1.0 - (time.monotonic() - self.started) / self.search.budget_s)

    def done_count(self) -> int:
        """Runs completed or pruned in the study (all sweeps of this grid file); repeated proposals do not count."""
        from optuna.trial import TrialState

        return sum(DUPLICATE_ATTR not in t.user_attrs
                   for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    @property
    def n_runs(self) -> int:
        """The target of finished runs (`search.n_runs`, or the grid size for `sampler: grid`, else 20)."""
        if self.search.n_runs:
            return self.search.n_runs
        if self.search.sampler == "grid":
            return math.prod(len(d.grid_values()) for d in self.dims)
        return 20

    def remaining(self) -> int:
        """Runs still to finish."""
        return max(0, self.n_runs - self.done_count() - len(self._trials))

    def predicted_s(self, run) -> Optional[float]:
        """The predicted duration of `run` (`predict_duration_s` over the records read so far)."""
        return predict_duration_s(run.params, self.found.records)

    @property
    def proposed(self):
        """The run proposed and not started yet, else the last one started, or `None` (asks the study nothing)."""
        return self._last if self._next is None else self._next[0]

    def peek(self):
        """The next run to start, or `None` (enough runs, budget spent, or the space exhausted).

        With a budget, a proposal predicted not to finish in the time left
        (or in `max_run_share` of it) is not run: its trial is failed (user
        attribute `OVER_BUDGET_ATTR`, the predicted seconds; the sampler
        learns nothing from it) and the study is asked for another point, so
        a cheaper configuration can still use the time. After
        `MAX_OVER_BUDGET_PROPOSALS` such proposals in a row, or once the
        budget is spent, no more runs start.
        """
        over_budget = 0
        while True:
            if self._next is None and not self._exhausted and self.remaining() > 0:
                self._next = self._propose()
            if self._next is None or self.search.budget_s is None:
                break
            run, trial = self._next
            predicted = self.predicted_s(run) or 0.0
            left = self.search.budget_s - (time.monotonic() - self.started)
            limit = left * (self.search.max_run_share or 1.0)
            if predicted <= limit:
                break
            trial.set_user_attr(OVER_BUDGET_ATTR, round(predicted, 1))
            self._fail(trial)
            self._next = None
            over_budget += 1
            self.over_budget += 1
            if left <= 0 or over_budget >= MAX_OVER_BUDGET_PROPOSALS:
                self.notes.append(f"budget: {max(0, left):.0f} s are left and the last {over_budget} proposed runs "
                                  f"are predicted to take longer than {max(0, limit):.0f} s (the last "
                                  f"{predicted:.0f} s); no more runs start")
                self._exhausted = True
                break
        return None if self._next is None else self._next[0]

    def pop(self):
        """The run `peek` returned, now running."""
        run, trial = self._next
        self._next, self._last = None, run
        self._trials[run.config_hash] = trial
        return run

    def _propose(self):
        from optuna.trial import TrialState

        done = {rec.config_hash: rec for rec in self.found.records
                if rec.kind == RUN and rec.status in DONE_STATUSES}
        for _ in range(MAX_DUPLICATE_PROPOSALS):
            trial = self.study.ask({d.name: d.distribution() for d in self.dims})
            point = {name: decode(value) for name, value in trial.params.items()}
            run, errors = self.builder.build(f"trial {trial.number}", point, index=self._index)
            if errors:  # only reachable if a choice valid at its bounds is invalid inside them
                self._tell(trial, state=TrialState.FAIL)
                raise ConfigError("\n".join(errors))
            if run.config_hash in done:  # proposed again: tell the study what that run gave
                rec = done[run.config_hash]
                trial.set_user_attr(DUPLICATE_ATTR, rec.run_id)
                self._tell(trial, self.ranking.value(rec) if rec.status == COMPLETED else None,
                                state=TrialState.COMPLETE if rec.status == COMPLETED else TrialState.PRUNED)
                continue
            if run.config_hash in self._trials:  # running now (a parallel proposal repeated it)
                self._tell(trial, state=TrialState.FAIL)
                continue
            self._index += 1
            trial_info = {"storage": str(self.journal), "study_name": self.study.study_name,
                          "trial_id": trial._trial_id, "trial_number": trial.number,
                          "min_epochs": self.search.min_epochs, "pruner": self.pruner}
            return run.with_trial(trial_info if self.pruner else None), trial
        self.notes.append(f"search: {MAX_DUPLICATE_PROPOSALS} proposals in a row repeat finished runs; "
                          f"the space looks exhausted")
        self._exhausted = True
        return None

    def _tell(self, trial, *args, **kwargs) -> None:
        """`study.tell`, tolerating the `RuntimeError` GridSampler raises on the last grid point in ask-and-tell use.

        GridSampler's `after_trial` calls `study.stop()`, which raises outside
        `study.optimize` (optuna issues #4121 and #5141; the GridSampler docs'
        note); Optuna stores the trial's state in a `finally` first, so the
        tell itself has happened (Hydra's Optuna sweeper does the same).
        """
        try:
            self.study.tell(trial, *args, **kwargs)
        except RuntimeError as exc:
            if "Study.stop" not in str(exc):
                raise

    def _fail(self, trial) -> None:
        from optuna.trial import TrialState

        self._tell(trial, state=TrialState.FAIL)

    def finished(self, record) -> None:
        """Tell the study how a run ended: completed (its metric), pruned, or failed (re-enqueued if interrupted)."""
        from optuna.trial import TrialState

        trial = self._trials.pop(record.config_hash, None)
        if trial is None:
            return
        self.found.records.append(record)
        if record.status == COMPLETED and self.ranking.value(record) is not None:
            self._tell(trial, self.ranking.value(record), skip_if_finished=True)
        elif record.status == PRUNED:
            self._tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        else:
            self._tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            if record.status == "interrupted":  # run its configuration again next time
                self.study.enqueue_trial(trial.params)

    def close(self) -> None:
        """Fail a proposed run that never started (its configuration is enqueued again)."""
        if self.over_budget:
            self.notes.append(f"budget: {self.over_budget} proposed runs were not started, predicted not to finish "
                              f"in the time left (trials failed with user attribute {OVER_BUDGET_ATTR})")
        if self._next is not None:
            self._fail(self._next[1])
            self.study.enqueue_trial(self._next[1].params)
            self._next = None
