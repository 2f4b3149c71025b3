"""The expansion of a validated grid into run specs, each checked against the notebook's parameters.

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
import random
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from pydantic import ValidationError
from pydantic_core import PydanticCustomError
from sklearn.model_selection import ParameterGrid

from models.spec import ExperimentSpec
from runner.errors import ConfigError, shorten
from models.hashing import sha256_json

from runner.grid.schema import NON_PATH_VALUES, PATH_PARAMS, RENAMED_PARAMS, RESERVED_PARAMS, GridSpec, RunSpec
from runner.grid.fingerprint import Fingerprinter, PathError
from runner.grid.strict_yaml import type_hint
from runner.records.groups import GROUP_FREE_PARAMS

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
            run_spec, params = _validate_values(_absolute_paths(params, self.base_dir))
        except ValidationError as exc:
            for err in exc.errors():
                key = str(err["loc"][0]) if err["loc"] else "(params)"
                where = f"{sources.get(key, 'params')}.{'.'.join(map(str, err['loc']))}" if err["loc"] else origin
                msg = err["msg"].replace("Input should be", "expected").replace("Value error, ", "")
                # a check across parameters has no key: its message names them, the input is every parameter
                line = (f"{grid_path}: {shorten(where, quote=False)}: got {shorten(err.get('input'))}, {msg}"
                        if err["loc"] else f"{grid_path}: {origin}: {msg}")
                if line not in errors:
                    errors.append(line)
            return None, errors
        try:
            fingerprint = self.fingerprint(params)
        except PathError as exc:
            return None, [f"{grid_path}: {sources.get(exc.key, 'params')}.{exc.key}: {exc}"]
        digest = sha256_json({"params": params, **fingerprint})
        group = sha256_json({"params": {k: v for k, v in params.items() if k not in GROUP_FREE_PARAMS}, **fingerprint})
        return RunSpec(index=index, params=params, config_hash=digest, origin=origin, group_hash=group,
                       manifest_hash=self.fingerprint.manifest(params), spec=run_spec), []

    def build_repeats(self, origin: str, point: dict[str, Any], index: int = 0, repeats: Optional[int] = None
                      ) -> tuple[list[RunSpec], list[str]]:
        """The `repeats` runs of `point`: seeds `seed, seed + 1, ...` (`seed` as `build` resolves it).

        Every repeat has the same `group_hash` and its own `config_hash`. A
        `name` stays on the first repeat (so references to it keep working);
        the others are named `<name>-seed<seed>`, names being unique.

        Args:
            origin: where the point came from; repeat k > 1 is `<origin> repeat k`.
            point: the point's parameters.
            index: the first repeat's position in the sweep. Defaults to `0`.
            repeats: runs per configuration, >= 1. Defaults to the grid's `repeats`.

        Returns:
            `(runs, [])`, or `([], errors)` as `build`.
        """
        repeats = self.spec.repeats if repeats is None else repeats
        first, errors = self.build(origin, point, index)
        if first is None or repeats == 1:
            return ([first] if first is not None else []), errors
        seed = first.params.get("seed")
        if "seed" not in self.allowed or type(seed) is not int:
            return [], [f"{self.grid_path}: repeats: {repeats} runs each configuration with seeds seed, seed + 1, "
                        f"...: the notebook needs an integer parameter 'seed' (got {seed!r})"]
        runs = [first]
        for k in range(1, repeats):
            extra: dict[str, Any] = {"seed": seed + k}
            if first.params.get("name") is not None:
                extra["name"] = f"{first.params['name']}-seed{seed + k}"
            run, errors = self.build(f"{origin} repeat {k + 1}", {**point, **extra}, index + k)
            if run is None:
                return [], errors
            runs.append(run)
        return runs, []


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
    order; then each configuration is repeated `spec.repeats` times, with
    seeds `seed, seed + 1, ...` (`RunBuilder.build_repeats`), its repeats one
    after the other.

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
    points: list[dict[str, Any]] = []
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
        points.append(point)
    if errors:
        raise ConfigError("\n".join(errors))
    if spec.sample is not None:
        if spec.sample > len(runs):
            raise ConfigError(
                f"{grid_path}: sample: got {spec.sample}, expected at most {len(runs)} "
                f"(the number of runs in the grid)"
            )
        keep = sorted(random.Random(spec.seed).sample(range(len(runs)), spec.sample))
        runs, points = [runs[k] for k in keep], [points[k] for k in keep]
    if spec.repeats > 1:
        repeated: list[RunSpec] = []
        seen = {}
        for run, point in zip(runs, points):
            group, run_errors = builder.build_repeats(run.origin, point, index=len(repeated))
            errors += [e for e in run_errors if e not in errors]
            for each in group:
                if each.config_hash in seen:
                    notes.append(f"{each.origin} (seed {each.params.get('seed')}) duplicates {seen[each.config_hash]} "
                                 f"after repeats: run once")
                    continue
                seen[each.config_hash] = each.origin
                repeated.append(each)
        if errors:
            raise ConfigError("\n".join(errors))
        runs = repeated
    return [replace(run, index=i) for i, run in enumerate(runs)], notes


def _check_names(params: dict, sources: dict, allowed: list[str], grid_path: Path) -> list[str]:
    errors = []
    for name in params:
        where = shorten(f"{sources.get(name, 'params')}.{name}", quote=False)
        if name in RESERVED_PARAMS:
            errors.append(f"{grid_path}: {where}: {name} is set by the runner, remove it")
        elif name in RENAMED_PARAMS and name not in allowed:
            new_name, why = RENAMED_PARAMS[name]
            errors.append(f"{grid_path}: {where}: {name}: renamed to {new_name} ({why}); "
                          f"write {new_name}: instead")
        elif name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            errors.append(
                f"{grid_path}: {where}: unknown notebook parameter{hint}; "
                f"expected one of {', '.join(allowed)}"
            )
    return errors


def _validate_values(params: dict[str, Any]) -> tuple[ExperimentSpec, dict[str, Any]]:
    """Validate the `ExperimentSpec` fields of `params`: the spec, and `params` normalised to its JSON values.

    Args:
        params: one run's parameters (notebook defaults, grid values and
            overrides merged); names that are not `ExperimentSpec` fields
            are passed through unchecked.

    Returns:
        `(spec, params)`: the validated spec, and `params` with each `ExperimentSpec` field as
        `model_dump(mode="json")` writes it (e.g. an int given for a float field becomes a float).

    Raises:
        ValidationError: a value breaks `ExperimentSpec` (strict types: no
            `true` for an int, no `"32"` for an int, no `"yes"` for a bool);
            a string refused where a number or boolean is expected has a
            hint appended to its message (see `type_hint`).
    """
    fields = ExperimentSpec.model_fields
    known = {k: v for k, v in params.items() if k in fields}
    try:
        spec = ExperimentSpec.model_validate(known)
    except ValidationError as exc:
        errors = exc.errors()
        hints = [type_hint(err["type"], err.get("input")) for err in errors]
        if not any(hints):
            raise
        raise ValidationError.from_exception_data(exc.title, [
            {"type": PydanticCustomError(err["type"], err["msg"] + hint), "loc": err["loc"], "input": err.get("input")}
            for err, hint in zip(errors, hints)
        ]) from exc
    normalised = spec.model_dump(mode="json")
    return spec, {name: normalised.get(name, value) for name, value in params.items()}
