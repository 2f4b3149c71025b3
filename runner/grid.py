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
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from sklearn.model_selection import ParameterGrid

from models.spec import ExperimentSpec
from runner import PROJECT_ROOT
from runner.errors import ConfigError
from models.hashing import sha256_file, sha256_json
from runner.query import METRIC_NAMES
from runner.search import SearchSpec
from runner.records import RANKING_METRICS, package_version

DEFAULT_NOTEBOOK = PROJECT_ROOT / "notebooks" / "base_experiment.ipynb"
RESERVED_PARAMS = ("output_dir", "resolved_warm_start", "pruning")
"""Notebook parameters set by the runner, never by a grid."""

PATH_PARAMS = ("data_dir", "weights", "weights_dir")
"""Parameters holding paths: made absolute (from the working folder) before a
run, because the kernel runs inside the run folder."""
NON_PATH_VALUES = {"weights": ("imagenet",), "data_dir": ("builtin:",)}


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
        metric: the metric that ranks runs on the leaderboard.
        top_n: how many runs the leaderboard shows.
        experiments_dir: folder of the run folders.
        logs_dir: folder of the JSON run records.
        leaderboard: path of the leaderboard html (a `.csv` goes beside it).
        search: a `runner.search.SearchSpec`: sample `grid` (lists, or
            distributions) with an Optuna study instead of running every
            point; `None` (default) runs the grid as it is.
        ensembles: ensembles built and evaluated at the end of the sweep
            (`EnsembleSpec`: `{top: 3}` or `{runs: [exp_001, exp_002]}`), as
            `runner.ensemble.build_ensemble` does.

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
    sample: Optional[int] = Field(None, ge=1)
    seed: int = 0
    metric: str = "weighted_recall"
    top_n: int = Field(10, ge=1)
    experiments_dir: Path = Field(Path("experiments"), strict=False)
    logs_dir: Path = Field(Path("logs"), strict=False)
    leaderboard: Path = Field(Path("leaderboard.html"), strict=False)

    @field_validator("notebook", "experiments_dir", "logs_dir", "leaderboard")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # From the working folder, now: papermill changes the process's working
        # folder while a notebook runs, so a relative path would move.
        return Path(value).expanduser().resolve()

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
    trial: Optional[dict[str, Any]] = None
    """For a search run with a pruner: the notebook's `pruning` parameter (its Optuna trial); not hashed."""

    def with_trial(self, trial: Optional[dict[str, Any]]) -> "RunSpec":
        """This run with `trial` attached (see `runner.search`)."""
        return replace(self, trial=trial)


def _tree_listing(folder: Path) -> str:
    """sha256 of (relative path, size, mtime in ns) of every file below `folder`, sorted."""
    if not folder.is_dir():
        return f"missing:{folder}"
    entries = sorted((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns)
                     for p in folder.rglob("*") if p.is_file() and (st := p.stat()))
    return sha256_json(entries)


RESULT_PACKAGES = ("tensorflow", "keras", "numpy")
"""Installed packages whose versions change a run's numbers, so they are part of `config_hash`."""


def _imported_modules(source: str) -> set[str]:
    """Absolute module names `source` imports (`from a.b import c` gives `a.b` and `a.b.c`)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a cell with IPython magics: its imports are not followed
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def kernel_code_files(sources: list[str]) -> list[Path]:
    """The project's Python files a notebook's kernel runs: all of `models/`, and the
    `runner` modules the notebook's code imports, followed transitively.

    Editing any other file (`runner/leaderboard.py`, the sweep loop) cannot
    change a run's result, so it is left out of `config_hash`.

    Args:
        sources: the notebook's code cells.

    Returns:
        Sorted absolute paths.
    """
    files = set((PROJECT_ROOT / "models").glob("*.py"))
    todo = [name for source in sources for name in _imported_modules(source)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or not (name == "runner" or name.startswith("runner.")):
            continue
        seen.add(name)
        parts = name.split(".")
        for candidate in (PROJECT_ROOT.joinpath(*parts).with_suffix(".py"), PROJECT_ROOT.joinpath(*parts, "__init__.py")):
            if candidate.is_file() and candidate not in files:
                files.add(candidate)
                todo += sorted(_imported_modules(candidate.read_text(encoding="utf-8")))
        todo.append(".".join(parts[:-1]) or "runner")  # the package's __init__ runs first
    return sorted(files)


class Fingerprinter:
    """What besides its parameters decides a run's result, hashed for `RunSpec.config_hash`.

    Re-running a grid skips runs whose completed record has the same
    `config_hash`, so it must change whenever the result could, and only
    then: the notebook's code cells, the code its kernel imports
    (`kernel_code_files`: `models/` and the `runner` modules the notebook
    imports, not the sweep loop or the leaderboard), the versions of
    `RESULT_PACKAGES` (TensorFlow, Keras, NumPy), the data manifest (every
    file's relative path, size and modification time: a stat per file, no
    reading), and the weights (sha256 of a weights file; for `imagenet`, the
    listing of the offline weights folder if one is set). Each distinct
    folder or file is hashed once per instance.

    Args:
        notebook: the notebook the runs execute.
    """

    def __init__(self, notebook: Path):
        import nbformat

        sources = [c.source for c in nbformat.read(str(notebook), as_version=4).cells if c.cell_type == "code"]
        self._notebook = sha256_json(sources)
        self._code = sha256_json([(p.relative_to(PROJECT_ROOT).as_posix(), sha256_file(p))
                                  for p in kernel_code_files(sources)])
        self._packages = {name: package_version(name) for name in RESULT_PACKAGES}
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
        return {"notebook": self._notebook, "code": self._code, "packages": self._packages,
                "data": data, "weights": weights_part}


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that records keys repeated within one mapping.

    PyYAML keeps the last value of a repeated key without a word (YAML itself
    requires the keys of a mapping to be unique), so `dropout: [0.1, 0.2]`
    followed by `dropout: [0.5]` would silently sweep one value. This loader
    builds the same Python objects as `yaml.safe_load` and lists each repeat
    in `duplicates`: `(key path, first key node, repeated key node)`, the
    path as the error messages write it (`grid.dropout`, `runs[0].head`).

    Keys are compared as constructed values (`1` and `"1"` differ, `true`
    and `yes` do not); merge keys (`<<`) and the keys they bring in are not
    repeats (overriding a merged key is what a merge is for).

    Args:
        stream: the YAML text.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[tuple[str, yaml.Node, yaml.Node]] = []
        self._paths: dict[yaml.Node, str] = {}
        self._checked: set[yaml.Node] = set()

    def construct_document(self, node):
        self._paths = {}
        self._index_paths(node, "")
        return super().construct_document(node)

    def _index_paths(self, root: yaml.Node, root_path: str) -> None:
        """Record the key path of every mapping below `root` (the first, for an aliased one)."""
        stack = [(root, root_path)]
        while stack:
            node, path = stack.pop()
            if node in self._paths:
                continue
            self._paths[node] = path
            children = []
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                    children.append((value_node, f"{path}.{key}" if path else str(key)))
            elif isinstance(node, yaml.SequenceNode):
                children = [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
            stack += reversed(children)  # popped in document order

    def flatten_mapping(self, node):
        # SafeConstructor.construct_mapping flattens merge keys (`<<`) into
        # `node.value` first, for the mapping and for each merged one: check
        # a mapping's own keys before that rewrites them.
        if node not in self._checked:
            self._checked.add(node)
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                try:
                    key = self.construct_object(key_node)
                    first = seen.setdefault(key, key_node)
                except TypeError:  # unhashable: PyYAML's own error follows
                    continue
                if first is not key_node:
                    path = self._paths.get(node, "")
                    self.duplicates.append((f"{path}.{key}" if path else str(key), first, key_node))
        super().flatten_mapping(node)


def _position(mark: yaml.Mark, other: yaml.Mark) -> str:
    """`line N` (1-based), with the column when both marks are on one line."""
    line = f"line {mark.line + 1}"
    return f"{line}, column {mark.column + 1}" if mark.line == other.line else line


def load_grid(path: str | Path) -> GridSpec:
    """Read and validate a grid file.

    Args:
        path: a YAML file.

    Returns:
        The validated `GridSpec`.

    Raises:
        ConfigError: the file is missing, is not valid YAML, repeats a key
            within one mapping (at any depth; the message gives the key's
            path and both line numbers, every repeat listed), is not a
            mapping, or breaks the schema (unknown key, wrong type: types are
            strict, e.g. `sample: true` is refused); the message names the
            file and the key.
    """
    path = Path(path)
    try:
        loader = _UniqueKeyLoader(path.read_text(encoding="utf-8"))
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read grid file ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if loader.duplicates:
        raise ConfigError("\n".join(
            f"{path}: {where}: duplicate key, at {_position(first.start_mark, again.start_mark)} and again "
            f"at {_position(again.start_mark, first.start_mark)} (YAML would silently keep only the last); "
            f"keep one"
            for where, first, again in sorted(loader.duplicates, key=lambda d: d[2].start_mark.index)
        ))
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys ({', '.join(GridSpec.model_fields)}), "
            f"got {type(raw).__name__}"
        )
    try:
        return GridSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation(path, exc, allowed=tuple(GridSpec.model_fields), sections={
            "search": tuple(SearchSpec.model_fields), "ensembles": tuple(EnsembleSpec.model_fields)})) from exc


def _format_validation(path: Path, exc: ValidationError, prefix: str = "", allowed=(), sections=None) -> str:
    """One line per pydantic error: `<file>: <key path>: got <value>, <what is allowed>`.

    Args:
        path: the grid file, named at the start of each line.
        exc: the validation error.
        prefix: key path the error locations are below, e.g. `fixed`.
            Defaults to `""`.
        allowed: the keys allowed where an unknown key was found, listed in
            its message. Defaults to `()`.
        sections: for an unknown key inside a section (`search.budgt`,
            `ensembles.0.topp`), the keys allowed there, by section name,
            instead of `allowed`. Defaults to none.

    Returns:
        The lines, joined with newlines; a string where a number or boolean
        was expected gets a hint (see `_type_hint`).
    """
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in (prefix, *err["loc"]) if part != "")
        got = err.get("input")
        msg = err["msg"].replace("Input should be", "expected").replace("Value error, ", "")
        msg += _type_hint(err["type"], got)
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            keys = (sections or {}).get(err["loc"][0], allowed) if len(err["loc"]) > 1 else allowed
            if keys:
                msg += f", expected one of {', '.join(keys)}"
        lines.append(f"{path}: {where or '(top)'}: got {got!r}, {msg}" if err["type"] != "missing"
                     else f"{path}: {where}: {msg}")
    return "\n".join(lines)


def _type_hint(error_type: str, value: Any) -> str:
    """Why a string was refused where a number or a boolean is expected, and the fix.

    PyYAML follows YAML 1.1, whose floats need a dot: `1e-3` is read as the
    string `'1e-3'` (`1.0e-3` is a float). A quoted `"32"` or `"yes"` is a
    string too. Strict validation refuses these rather than converting them.

    Args:
        error_type: the pydantic error type, e.g. `float_type`.
        value: the refused input.

    Returns:
        `" (...)"` to append to the message: for `int_type` / `float_type`
        and a string that is a decimal number (an `int_type` one only when
        the number is whole), or `bool_type` and one of `true`, `false`,
        `yes`, `no`, `on`, `off` (any case); `""` otherwise.
    """
    if not isinstance(value, str):
        return ""
    text = value.strip()
    if error_type in ("int_type", "float_type") and text and set(text) <= set("0123456789+-.eE"):
        try:
            number = float(text)
        except ValueError:
            return ""
        if error_type == "int_type" and not number.is_integer():
            return ""
        mantissa, exp, exponent = text.lower().partition("e")
        if exp and "." not in mantissa:
            fix = str(int(number)) if error_type == "int_type" else f"{mantissa}.0e{exponent}"
            return f" (YAML reads {text} as a string; write {fix})"
        return f" (a quoted number is a string; write {text} without quotes)"
    if error_type == "bool_type" and text.lower() in ("true", "false", "yes", "no", "on", "off"):
        return " (a quoted word is a string; write true or false without quotes)"
    return ""


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


class RunBuilder:
    """Turns one grid point, explicit run or search trial into a validated `RunSpec`.

    The one path from parameters to a run: the notebook's defaults, then
    `fixed` (and the top-level `data_dir`), then the point, then the CLI
    overrides; names checked against the notebook's parameters cell, values
    against `ExperimentSpec`, paths made absolute, and `config_hash` from the
    parameters and `Fingerprinter`. A sweep does not care where a run came from.

    Args:
        spec: the validated grid.
        grid_path: the grid file, named in error messages.
        overrides: parameters forced on every run (`--data-dir`, `--weights-dir`). Defaults to `None`.
        base_dir: folder relative paths are resolved from. Defaults to the working folder.

    Raises:
        ConfigError: the notebook has no readable parameters cell.
    """

    def __init__(self, spec: GridSpec, grid_path: str | Path, *, overrides: Optional[dict[str, Any]] = None,
                 base_dir: Optional[Path] = None):
        self.spec, self.grid_path = spec, Path(grid_path)
        self.base_dir = Path.cwd() if base_dir is None else base_dir
        self.overrides = dict(overrides or {})
        try:
            self.defaults = notebook_parameters(spec.notebook)
        except ConfigError as exc:
            raise ConfigError(f"{self.grid_path}: {exc}") from exc
        self.fingerprint = Fingerprinter(spec.notebook)
        self.allowed = sorted(name for name in self.defaults if name not in RESERVED_PARAMS)
        self.shared = dict(spec.fixed)
        if spec.data_dir is not None:
            self.shared.setdefault("data_dir", spec.data_dir)

    def build(self, origin: str, point: dict[str, Any], index: int = 0) -> tuple[Optional[RunSpec], list[str]]:
        """The run of `point`, or the problems that keep it from being one.

        Args:
            origin: where the point came from (`grid[1]`, `runs[0]`, `trial 7`), named in messages.
            point: the point's parameters (on top of `fixed`).
            index: the run's position in the sweep. Defaults to `0`.

        Returns:
            `(run, [])`, or `(None, errors)`: one line per problem, naming the
            grid file, where the key was set, the value received and what is allowed.
        """
        spec, grid_path = self.spec, self.grid_path
        sources = {name: "fixed" for name in spec.fixed} | {name: origin for name in point}
        if "data_dir" not in spec.fixed and spec.data_dir is not None:
            sources.setdefault("data_dir", "data_dir")
        merged = {**self.shared, **point, **self.overrides}
        errors = _check_names(merged, sources, self.allowed, grid_path)
        if errors:
            return None, errors
        params = {name: value for name, value in {**self.defaults, **merged}.items() if name not in RESERVED_PARAMS}
        try:
            params = _validate_values(_absolute_paths(params, self.base_dir))
        except ValidationError as exc:
            for err in exc.errors():
                key = str(err["loc"][0]) if err["loc"] else "(params)"
                where = f"{sources.get(key, 'params')}.{'.'.join(map(str, err['loc']))}" if err["loc"] else origin
                msg = err["msg"].replace("Input should be", "expected").replace("Value error, ", "")
                # a check across parameters has no key: its message names them, the input is every parameter
                line = f"{grid_path}: {where}: got {err.get('input')!r}, {msg}" if err["loc"] else f"{grid_path}: {origin}: {msg}"
                if line not in errors:
                    errors.append(line)
            return None, errors
        digest = sha256_json({"params": params, **self.fingerprint(params)})
        return RunSpec(index=index, params=params, config_hash=digest, origin=origin), []


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
    builder = RunBuilder(spec, grid_path, overrides=overrides, base_dir=base_dir)
    errors: list[str] = []
    runs: list[RunSpec] = []
    notes: list[str] = []
    seen: dict[str, str] = {}
    for origin, point in _expand_sources(spec):
        run, run_errors = builder.build(origin, point, index=len(runs))
        errors += [e for e in run_errors if e not in errors]
        if run is None:
            continue
        if run.config_hash in seen:
            notes.append(f"{origin} duplicates {seen[run.config_hash]} after expansion: run once")
            continue
        seen[run.config_hash] = origin
        runs.append(run)
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
    """Validate the `ExperimentSpec` fields of `params`, normalised to JSON values.

    Args:
        params: one run's parameters (notebook defaults, grid values and
            overrides merged); names that are not `ExperimentSpec` fields
            are passed through unchecked.

    Returns:
        `params` with each `ExperimentSpec` field as `model_dump(mode="json")`
        writes it (e.g. an int given for a float field becomes a float).

    Raises:
        ValidationError: a value breaks `ExperimentSpec` (strict types: no
            `true` for an int, no `"32"` for an int, no `"yes"` for a bool);
            a string refused where a number or boolean is expected has a
            hint appended to its message (see `_type_hint`).
    """
    fields = ExperimentSpec.model_fields
    known = {k: v for k, v in params.items() if k in fields}
    try:
        spec = ExperimentSpec.model_validate(known)
    except ValidationError as exc:
        errors = exc.errors()
        hints = [_type_hint(err["type"], err.get("input")) for err in errors]
        if not any(hints):
            raise
        raise ValidationError.from_exception_data(exc.title, [
            {"type": PydanticCustomError(err["type"], err["msg"] + hint), "loc": err["loc"], "input": err.get("input")}
            for err, hint in zip(errors, hints)
        ]) from exc
    normalised = spec.model_dump(mode="json")
    return {name: normalised.get(name, value) for name, value in params.items()}
