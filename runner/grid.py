"""Grid files: load and validate `grid.yaml`, expand it into run specs.

A grid file holds the notebook to run, parameters shared by every run
(`fixed`), a parameter grid (`grid`: a mapping of name → list of values, or a
list of such mappings, expanded like scikit-learn's `ParameterGrid`), explicit
extra `runs`, an optional seeded `sample`, and where outputs go.

Every run's parameters (notebook defaults < `fixed` < grid point or run entry)
are checked before anything runs: each name against the notebook's
`parameters` cell (read with `papermill.inspect_notebook`), each value against
`models.spec.ExperimentSpec`. papermill itself only warns about unknown
parameters; here they are a `ConfigError`.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sklearn.model_selection import ParameterGrid

from models.spec import ExperimentSpec
from runner import PROJECT_ROOT
from runner.errors import ConfigError
from runner.records import RANKING_METRICS, sha256_file

DEFAULT_NOTEBOOK = PROJECT_ROOT / "notebooks" / "base_experiment.ipynb"
RESERVED_PARAMS = ("output_dir", "logs_dir")
"""Notebook parameters set by the runner, never by a grid."""

PATH_PARAMS = ("data_dir", "weights", "weights_dir")
"""Parameters holding paths: made absolute (from the working folder) before a
run, because the kernel runs inside the run folder."""
NON_PATH_VALUES = {"weights": ("imagenet",), "data_dir": ("builtin:",)}


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
        metric: the metric that ranks runs on the leaderboard.
        top_n: how many runs the leaderboard shows.
        experiments_dir: folder of the run folders.
        logs_dir: folder of the JSON run records.
        leaderboard: path of the leaderboard html (a `.csv` goes beside it).

    Paths are made absolute from the working folder when the grid is loaded.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)

    notebook: Path = DEFAULT_NOTEBOOK
    data_dir: Optional[str] = None
    fixed: dict[str, Any] = Field(default_factory=dict)
    grid: Union[dict[str, list[Any]], list[dict[str, list[Any]]]] = Field(default_factory=dict)
    runs: list[dict[str, Any]] = Field(default_factory=list)
    sample: Optional[int] = Field(None, ge=1)
    seed: int = 0
    metric: str = "weighted_recall"
    top_n: int = Field(10, ge=1)
    experiments_dir: Path = Path("experiments")
    logs_dir: Path = Path("logs")
    leaderboard: Path = Path("leaderboard.html")

    @field_validator("notebook", "experiments_dir", "logs_dir", "leaderboard")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # From the working folder, now: papermill changes the process's working
        # folder while a notebook runs, so a relative path would move.
        return Path(value).expanduser().resolve()

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in RANKING_METRICS:
            raise ValueError(f"expected one of {', '.join(RANKING_METRICS)}")
        return value

    @field_validator("grid")
    @classmethod
    def _non_empty_lists(cls, value):
        for sub in [value] if isinstance(value, dict) else value:
            for name, values in sub.items():
                if not values:
                    raise ValueError(f"{name}: empty list of values (give at least one)")
        return value


@dataclass(frozen=True)
class RunSpec:
    """One configuration to execute.

    Attributes:
        index: position in the expanded sweep (0-based).
        params: every notebook parameter after defaults, JSON-safe, paths
            absolute; the runner's own `RESERVED_PARAMS` excluded.
        config_hash: sha256 hex of everything that changes the run's result:
            `params`, the notebook's code, the data manifest, the weights
            file and the project's code (see `Fingerprinter`).
        origin: where the run came from, e.g. `grid[1]` or `runs[0]`.
    """

    index: int
    params: dict[str, Any]
    config_hash: str
    origin: str


def hash_params(params: dict[str, Any]) -> str:
    """sha256 hex digest of `params` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _tree_listing(folder: Path) -> str:
    """sha256 of (relative path, size, mtime in ns) of every file below `folder`, sorted."""
    if not folder.is_dir():
        return f"missing:{folder}"
    entries = sorted((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns)
                     for p in folder.rglob("*") if p.is_file() and (st := p.stat()))
    return hash_params(entries)


class Fingerprinter:
    """What besides its parameters decides a run's result, hashed for `RunSpec.config_hash`.

    Re-running a grid skips runs whose completed record has the same
    `config_hash`, so it must change whenever the result could: the notebook's
    code cells, the project's `models/` and `runner/` sources, the data
    manifest (every file's relative path, size and modification time: a
    stat per file, no reading), and the weights (sha256 of a weights file;
    for `imagenet`, the listing of the offline weights folder if one is
    set). Each distinct folder or file is hashed once per instance.

    Args:
        notebook: the notebook the runs execute.
    """

    def __init__(self, notebook: Path):
        import nbformat

        cells = nbformat.read(str(notebook), as_version=4).cells
        self._notebook = hash_params([c.source for c in cells if c.cell_type == "code"])
        sources = sorted(p for pkg in ("models", "runner") for p in (PROJECT_ROOT / pkg).glob("*.py"))
        self._code = hash_params([(p.relative_to(PROJECT_ROOT).as_posix(), sha256_file(p)) for p in sources])
        self._cache: dict[tuple[str, str], str] = {}

    def _cached(self, kind: str, key: str, compute) -> str:
        if (kind, key) not in self._cache:
            self._cache[kind, key] = compute()
        return self._cache[kind, key]

    def __call__(self, params: dict[str, Any]) -> dict[str, str]:
        """The fingerprint parts of one run's `params` (absolute paths)."""
        data_dir = params.get("data_dir")
        if not isinstance(data_dir, str) or data_dir.startswith("builtin:"):
            data = str(data_dir)
        else:
            data = self._cached("data", data_dir, lambda: _tree_listing(Path(data_dir)))
        weights = params.get("weights")
        if weights == "imagenet":
            folder = params.get("weights_dir") or os.environ.get("NBSWEEP_WEIGHTS_DIR")
            weights_part = "imagenet" + (f":{self._cached('dir', folder, lambda: _tree_listing(Path(folder)))}" if folder else "")
        elif weights:
            weights_part = self._cached("file", weights, lambda: sha256_file(Path(weights)) if Path(weights).is_file() else f"missing:{weights}")
        else:
            weights_part = "random"
        return {"notebook": self._notebook, "code": self._code, "data": data, "weights": weights_part}


def load_grid(path: str | Path) -> GridSpec:
    """Read and validate a grid file.

    Args:
        path: a YAML file.

    Returns:
        The validated `GridSpec`.

    Raises:
        ConfigError: the file is missing, is not valid YAML, is not a mapping,
            or breaks the schema (unknown key, wrong type); the message names
            the file and the key.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read grid file ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys ({', '.join(GridSpec.model_fields)}), "
            f"got {type(raw).__name__}"
        )
    try:
        return GridSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation(path, exc, allowed=tuple(GridSpec.model_fields))) from exc


def _format_validation(path: Path, exc: ValidationError, prefix: str = "", allowed=()) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in (prefix, *err["loc"]) if part != "")
        msg = err["msg"].replace("Input should be", "expected").replace("Value error, ", "")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            if allowed:
                msg += f", expected one of {', '.join(allowed)}"
        got = err.get("input")
        lines.append(f"{path}: {where or '(top)'}: got {got!r}, {msg}" if err["type"] != "missing"
                     else f"{path}: {where}: {msg}")
    return "\n".join(lines)


def notebook_parameters(notebook: Path) -> dict[str, Any]:
    """Read the parameters cell of a notebook: names and default values.

    Args:
        notebook: path of an `.ipynb` with a cell tagged `parameters`.

    Returns:
        Parameter name → default value (Python literal, evaluated with
        `ast.literal_eval` from papermill's inspection).

    Raises:
        ConfigError: the notebook is missing, unreadable, or has no
            `parameters` cell.
    """
    import papermill

    if not Path(notebook).is_file():
        raise ConfigError(f"notebook: {notebook} does not exist")
    try:
        inspected = papermill.inspect_notebook(str(notebook))
    except Exception as exc:  # papermill/nbformat raise many types for a bad file
        raise ConfigError(f"notebook: cannot read {notebook}: {exc}") from exc
    if not inspected:
        raise ConfigError(f"notebook: {notebook} has no cell tagged 'parameters'")
    defaults = {}
    for name, info in inspected.items():
        try:
            defaults[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError) as exc:
            raise ConfigError(
                f"{notebook}: parameter {name}: default {info['default']!r} is not a literal"
            ) from exc
    return defaults


def _expand_sources(spec: GridSpec) -> list[tuple[str, dict[str, Any]]]:
    """(origin, overrides) for every grid point, then every explicit run."""
    points: list[tuple[str, dict[str, Any]]] = []
    if spec.grid:
        subgrids = [spec.grid] if isinstance(spec.grid, dict) else spec.grid
        for i, sub in enumerate(subgrids):
            label = "grid" if isinstance(spec.grid, dict) else f"grid[{i}]"
            points += [(label, dict(point)) for point in ParameterGrid(sub)]
    points += [(f"runs[{i}]", dict(run)) for i, run in enumerate(spec.runs)]
    if not points:  # only fixed parameters: one run
        points = [("fixed", {})]
    return points


def _absolute_paths(params: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    out = dict(params)
    for name in PATH_PARAMS:
        value = out.get(name)
        if not isinstance(value, str) or value.startswith(NON_PATH_VALUES.get(name, ())):
            continue
        path = Path(value).expanduser()
        out[name] = str(path if path.is_absolute() else (base_dir / path).resolve())
    return out


def expand_runs(
    spec: GridSpec,
    grid_path: str | Path,
    *,
    overrides: Optional[dict[str, Any]] = None,
    base_dir: Optional[Path] = None,
) -> tuple[list[RunSpec], list[str]]:
    """Expand a grid into validated, de-duplicated run specs.

    Order: grid points in `ParameterGrid` order (sub-grids in file order),
    then explicit `runs`; `sample` then keeps a seeded random subset in that
    order.

    Args:
        spec: the validated grid.
        grid_path: the grid file, named in error messages.
        overrides: parameters forced on every run (CLI `--data-dir`,
            `--weights-dir`). Defaults to `None`.
        base_dir: folder that relative paths are resolved from. Defaults to
            the current working folder.

    Returns:
        `(runs, notes)`: the run specs, and human-readable notes (e.g.
        duplicates removed).

    Raises:
        ConfigError: a parameter is unknown to the notebook or reserved, a
            value is invalid, or `sample` exceeds the number of runs; all
            problems are listed, each naming the grid file, where the key was
            set, the value received and what is allowed.
    """
    grid_path = Path(grid_path)
    base_dir = Path.cwd() if base_dir is None else base_dir
    try:
        defaults = notebook_parameters(spec.notebook)
    except ConfigError as exc:
        raise ConfigError(f"{grid_path}: {exc}") from exc
    fingerprint = Fingerprinter(spec.notebook)
    allowed = sorted(name for name in defaults if name not in RESERVED_PARAMS)
    shared = dict(spec.fixed)
    if spec.data_dir is not None:
        shared.setdefault("data_dir", spec.data_dir)

    errors: list[str] = []
    runs: list[RunSpec] = []
    notes: list[str] = []
    seen: dict[str, str] = {}
    for origin, point in _expand_sources(spec):
        sources = {name: "fixed" for name in spec.fixed} | {name: origin for name in point}
        if "data_dir" not in spec.fixed and spec.data_dir is not None:
            sources.setdefault("data_dir", "data_dir")
        merged = {**shared, **point, **(overrides or {})}
        run_errors = _check_names(merged, sources, allowed, grid_path)
        if run_errors:
            errors += [e for e in run_errors if e not in errors]
            continue
        params = {name: value for name, value in {**defaults, **merged}.items()
                  if name not in RESERVED_PARAMS}
        try:
            params = _validate_values(_absolute_paths(params, base_dir))
        except ValidationError as exc:
            for err in exc.errors():
                key = str(err["loc"][0]) if err["loc"] else "(params)"
                where = f"{sources.get(key, 'params')}.{'.'.join(map(str, err['loc']))}" if err["loc"] else origin
                msg = err["msg"].replace("Input should be", "expected").replace("Value error, ", "")
                line = f"{grid_path}: {where}: got {err.get('input')!r}, {msg}"
                if line not in errors:
                    errors.append(line)
            continue
        digest = hash_params({"params": params, **fingerprint(params)})
        if digest in seen:
            notes.append(f"{origin} duplicates {seen[digest]} after expansion: run once")
            continue
        seen[digest] = origin
        runs.append(RunSpec(index=len(runs), params=params, config_hash=digest, origin=origin))
    if errors:
        raise ConfigError("\n".join(errors))
    if spec.sample is not None:
        if spec.sample > len(runs):
            raise ConfigError(
                f"{grid_path}: sample: got {spec.sample}, expected at most {len(runs)} "
                f"(the number of runs in the grid)"
            )
        keep = sorted(random.Random(spec.seed).sample(range(len(runs)), spec.sample))
        runs = [RunSpec(i, runs[k].params, runs[k].config_hash, runs[k].origin) for i, k in enumerate(keep)]
    return runs, notes


def _check_names(params: dict, sources: dict, allowed: list[str], grid_path: Path) -> list[str]:
    errors = []
    for name in params:
        where = f"{sources.get(name, 'params')}.{name}"
        if name in RESERVED_PARAMS:
            errors.append(f"{grid_path}: {where}: {name} is set by the runner, remove it")
        elif name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            errors.append(
                f"{grid_path}: {where}: unknown notebook parameter{hint}; "
                f"expected one of {', '.join(allowed)}"
            )
    return errors


def _validate_values(params: dict[str, Any]) -> dict[str, Any]:
    """Validate the `ExperimentSpec` fields of `params`, normalised to JSON values."""
    fields = ExperimentSpec.model_fields
    known = {k: v for k, v in params.items() if k in fields}
    normalised = ExperimentSpec.model_validate(known).model_dump(mode="json")
    return {name: normalised.get(name, value) for name, value in params.items()}
