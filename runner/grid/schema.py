"""The grid file's schema: `GridSpec` (a validated `grid.yaml`), `EnsembleSpec`, and `RunSpec` (one expanded run)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.bases.registry import is_saved_model_path
from models.data.folders import BUILTIN_PREFIX
from models.names import DEFAULT_METRIC
from models.spec import ExperimentSpec, experiment_spec
from runner import PROJECT_ROOT
from runner.records.query import METRIC_NAMES, parse_metric
from runner.search import SearchSpec, pruning_metric
from runner.records import EXPERIMENTS_DIR, LEADERBOARD_PATH, LOGS_DIR, RANKING_METRICS, TOP_N




def _default_notebook() -> Path:
    """The base notebook: `notebooks/base_experiment.ipynb` of a source checkout, else the copy that
    `pip install .` puts in the installed `runner` package (`runner/notebooks/`, see pyproject.toml)."""
    checkout = PROJECT_ROOT / "notebooks" / "base_experiment.ipynb"
    return checkout if checkout.is_file() else Path(__file__).resolve().parents[1] / "notebooks" / checkout.name


DEFAULT_NOTEBOOK = _default_notebook()
@dataclass(frozen=True)
class RunnerParams:
    """The notebook parameters the runner sets for each run, never a grid: what `execute_run` injects
    beside `RunSpec.params` (`asdict`).

    Attributes:
        output_dir: the run folder, absolute.
        resolved_warm_start: `runner.core.warm_start.WarmStart.to_dict()`, or `None`.
        pruning: the search trial's pruning settings (`RunSpec.trial`), or `None`.
    """

    output_dir: str
    resolved_warm_start: Optional[dict[str, Any]]
    pruning: Optional[dict[str, Any]]


RESERVED_PARAMS = tuple(f.name for f in fields(RunnerParams))
"""Notebook parameters set by the runner, never by a grid (`RunnerParams`)."""
RENAMED_PARAMS = {"sampler": ("batch_sampler", "search: {sampler: ...} is the search's Optuna sampler")}
"""Former run parameter name -> (its new name, why); refused with that message (`expand._check_names`)
unless the grid's notebook still declares the old name itself."""

PATH_PARAMS = ("data_dir", "weights", "weights_dir", "cache_dir")
"""Parameters holding paths: made absolute (from the working folder) before a
run, because the kernel runs inside the run folder (a relative `cache_dir`
would otherwise give every run an activation cache of its own)."""
NON_PATH_VALUES = {"weights": ("imagenet",), "data_dir": (BUILTIN_PREFIX,)}
"""Values of `PATH_PARAMS` that are not paths (by prefix): left as they are."""


def path_value(name: str, value: Any) -> bool:
    """Whether parameter `name`'s `value` is a path to make absolute before a run: a string of
    `PATH_PARAMS` other than its `NON_PATH_VALUES`, or a `base` that is the path of a saved Keras model
    (`models.bases.registry.is_saved_model_path`; any other base is a name)."""
    if not isinstance(value, str):
        return False
    if name == "base":
        return is_saved_model_path(value)
    return name in PATH_PARAMS and not value.startswith(NON_PATH_VALUES.get(name, ()))


class EnsembleSpec(BaseModel):
    """One entry of a grid's `ensembles:` list: the `top` N runs by the grid's metric, or named `runs`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    top: Optional[int] = Field(None, ge=2)
    runs: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_of(self):
        if (self.top is None) == (not self.runs):
            raise ValueError("give either top: N (N >= 2) or runs: [names or ids]")
        if self.runs and len(self.runs) < 2:
            raise ValueError("runs: an ensemble needs at least 2 runs")
        return self


class GridSpec(BaseModel):
    """The validated content of a grid file.

    Attributes:
        notebook: the notebook to execute. Defaults to the project's
            `notebooks/base_experiment.ipynb`.
        data_dir: default `data_dir` parameter of every run, or `None` to keep
            the notebook's default.
        fixed: parameters of every run.
        grid: a mapping of parameter name → list of values, or a list of such
            mappings (sub-grids); each is expanded as a cartesian product, keys
            sorted, like `sklearn.model_selection.ParameterGrid`.
        runs: explicit parameter mappings, each added as one run (on top of
            `fixed`).
        sample: run only a seeded random subset of this many runs.
        seed: seed of `sample`.
        metric: the metric that ranks runs on the leaderboard (and a
            search's trials); with a `search.pruner`, also what the pruner
            follows after every epoch on the validation split, so it must be
            one of `runner.search.PRUNABLE_METRICS`. Defaults to
            `models.names.DEFAULT_METRIC`.
        top_n: how many runs the leaderboard shows.
        experiments_dir: folder of the run folders.
        logs_dir: folder of the JSON run records.
        leaderboard: path of the leaderboard html (a `.csv` goes beside it).
        search: a `runner.search.SearchSpec`: sample `grid` (lists, or
            distributions) with an Optuna study instead of running every
            point; `None` (default) runs the grid as it is.
        ensembles: ensembles built and evaluated at the end of the sweep
            (`EnsembleSpec`: `{top: 3}` or `{runs: [exp_001, exp_002]}`), as
            `runner.core.ensemble.build_ensemble` does.
        repeats: runs of each configuration, with seeds `seed, seed + 1, ...,
            seed + repeats - 1` (`seed` being the configuration's own); each
            repeat is a run of its own (its own `config_hash`), and the
            leaderboard, `warm_start: best` and `ensembles: {top: N}` treat the
            repeats of one configuration as one group, ranked by their mean
            (`runner.records.groups`). Defaults to `1`. With `search:`, give it
            inside the `search:` block instead.
        refit: after the sweep (and a search), train the configuration ranked
            first by `metric` on the validation split (with repeats, the one
            with the best mean, as `runner.records.groups` ranks them; of it,
            its best run on the validation split) once more on the training
            and validation splits together (`train_on_val`), for the epochs
            its selected weights had trained (`best_epoch`, split into head
            and fine-tuning epochs as they were), and record it as a run of
            its own with `refit_of` (scikit-learn's `GridSearchCV(refit=True)`;
            `runner.core.refit.refit_best`). Evaluated on the test split only,
            never ranked, shown apart on the leaderboard. Defaults to `False`.

    Paths are made absolute from the working folder when the grid is loaded.
    Types are strict (pydantic's strict mode): `sample: true` or
    `top_n: "5"` are refused rather than read as `1` and `5`; the path
    fields alone accept strings, as YAML has no path type.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, strict=True)

    notebook: Path = Field(DEFAULT_NOTEBOOK, strict=False)
    data_dir: Optional[str] = None
    fixed: dict[str, Any] = Field(default_factory=dict)
    grid: Union[dict[str, Union[list[Any], dict[str, Any]]], list[dict[str, list[Any]]]] = Field(default_factory=dict)
    runs: list[dict[str, Any]] = Field(default_factory=list)
    search: Optional[SearchSpec] = None
    ensembles: list[EnsembleSpec] = Field(default_factory=list)
    repeats: int = Field(1, ge=1)
    refit: bool = False
    sample: Optional[int] = Field(None, ge=1)
    seed: int = 0
    metric: str = DEFAULT_METRIC
    top_n: int = Field(TOP_N, ge=1)
    experiments_dir: Path = Field(EXPERIMENTS_DIR, strict=False)
    logs_dir: Path = Field(LOGS_DIR, strict=False)
    leaderboard: Path = Field(LEADERBOARD_PATH, strict=False)

    @field_validator("notebook", "experiments_dir", "logs_dir", "leaderboard")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # From the working folder, now: papermill changes the process's working
        # folder while a notebook runs, so a relative path would move.
        path = Path(value).expanduser()
        try:
            return path.resolve()
        except RuntimeError:  # a symbolic link loop on the way (Python < 3.13; later ones return the path
            return path.absolute()  # unresolved, as here): the pre-flight check names the link, exit 2

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in METRIC_NAMES:
            raise ValueError(f"expected one of {', '.join(RANKING_METRICS)} (validation split), "
                             f"or one of them prefixed with val_ or test_")
        return value

    @field_validator("grid")
    @classmethod
    def _non_empty_lists(cls, value):
        for sub in [value] if isinstance(value, dict) else value:
            for name, values in sub.items():
                if not values:
                    raise ValueError(f"{name}: empty list of values (give at least one)")
        return value

    @model_validator(mode="after")
    def _repeats_of_a_search(self):
        if self.search is not None and self.repeats != 1:
            raise ValueError(f"repeats: {self.repeats} with a search: block: give it as search.repeats "
                             f"(each proposal then runs {self.repeats} seeds and is scored by their mean)")
        return self

    @model_validator(mode="after")
    def _prunable_metric(self):
        if self.search is not None and self.search.pruner_kind.prunes and self.metric in METRIC_NAMES:
            pruning_metric(parse_metric(self.metric), self.search.pruner)  # a ConfigError names the allowed ones
        return self

    @model_validator(mode="after")
    def _distributions_need_search(self):
        if self.search is None and isinstance(self.grid, dict):
            ranges = [name for name, values in self.grid.items() if isinstance(values, dict)]
            if ranges:
                raise ValueError(f"grid.{ranges[0]}: got {self.grid[ranges[0]]!r}: a distribution "
                                 f"({{low, high}} or {{int: [low, high]}}) needs a search: block; "
                                 f"a plain grid takes a list of values")
        return self


@dataclass(frozen=True)
class RunSpec:
    """One configuration to execute.

    Attributes:
        index: position in the expanded sweep (0-based).
        params: every notebook parameter after defaults, JSON-safe, paths
            absolute; the runner's own `RESERVED_PARAMS` excluded: the JSON
            form of `spec` (plus any parameter of a custom notebook that is no
            `ExperimentSpec` field), which papermill injects, the record keeps
            and `config_hash` covers.
        spec: the validated, immutable `ExperimentSpec` of `params`, what the
            runner reads typed values from. Given by `runner.grid.RunBuilder`,
            which validated it; validated from `params` when not given.
        config_hash: sha256 hex of everything that changes the run's result:
            `params`, the notebook's code, the data manifest, the weights
            file and the project's code (see `Fingerprinter`).
        origin: where the run came from, e.g. `grid[1]` or `runs[0]`.
    """

    index: int
    params: dict[str, Any]
    config_hash: str
    origin: str
    trial: Optional[dict[str, Any]] = None
    """For a search run with a pruner: the notebook's `pruning` parameter (its Optuna trial); not hashed."""
    group_hash: Optional[str] = None
    """The configuration without its seed: sha256 of `params` less `runner.records.groups.GROUP_FREE_PARAMS`
    and of the same fingerprint as `config_hash`; the repeats of one configuration share it."""
    refit_of: Optional[str] = None
    """For the refit of a grid's best configuration (`refit: true`, `runner.core.refit.refit_best`): the run whose
    configuration it trains again on train + validation; recorded as `RunRecord.refit_of`. Not hashed."""
    manifest_hash: Optional[str] = None
    """The data manifest the run should train on, listed when it was built (`Fingerprinter.manifest`), or
    `None` when it cannot be told beforehand; not hashed. Its kernel's own is compared with it (`data_matches`)."""
    spec: ExperimentSpec = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self):
        if self.spec is None:
            object.__setattr__(self, "spec", experiment_spec(self.params))

    def with_trial(self, trial: Optional[dict[str, Any]]) -> "RunSpec":
        """This run with `trial` attached (see `runner.search`)."""
        return replace(self, trial=trial)

    def data_matches(self, record: Any) -> bool:
        """Whether `record` (a `RunRecord` of this configuration) trained on the data this run expects.

        The record's `data.manifest_hash` (what its kernel listed) must equal
        `manifest_hash`; a record or a run that cannot tell (no data section,
        no expected manifest) matches. A completed record whose data changed
        under it is therefore not "done" for this run: the sweep runs it again.
        """
        recorded = getattr(getattr(record, "data", None), "manifest_hash", None)
        return self.manifest_hash is None or recorded is None or recorded == self.manifest_hash


