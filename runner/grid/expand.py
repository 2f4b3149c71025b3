"""The expansion of a validated grid into run specs, each checked against the notebook's parameters.

A grid file holds the notebook to run, parameters shared by every run
(`fixed`), a parameter grid (`grid`: a mapping of name → list of values, or a
list of such mappings, expanded like scikit-learn's `ParameterGrid`), explicit
extra `runs`, an optional seeded `sample`, and where outputs go.

Every run's parameters (notebook defaults < `fixed` < grid point or run entry)
are checked before anything runs: each name against the notebook's
`parameters` cell (read with `papermill.inspect_notebook`), each value against
`models.spec.ExperimentSpec`. papermill itself only warns about unknown
parameters; here they are a `ConfigError`. A grid of more runs than the
sweep's limit is refused before any is built (`count_runs`, `too_many_runs`).
"""

from __future__ import annotations

import ast
import difflib
import os
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

from runner.grid.schema import RENAMED_PARAMS, RESERVED_PARAMS, GridSpec, RunSpec, path_value
from runner.grid.fingerprint import Fingerprinter, PathError
from runner.grid.strict_yaml import type_hint
from runner.records.groups import GROUP_FREE_PARAMS

def literal_path(path: str | os.PathLike) -> str:
    """`path` as papermill's `execute_notebook` and `inspect_notebook` must be given it to use it as it is.

    papermill formats its input and output paths with the run's parameters
    (`papermill.parameterize.parameterize_path`: `str.format(**parameters)`),
    which would read a folder named `exp{x}` as a template ("Missing
    parameter 'x'") and `exp{}` as a positional field (an `IndexError`).
    Each brace is doubled here, and that formatting turns it back into one:
    any legal folder name arrives as it is.

    Args:
        path: a file path.

    Returns:
        The path as a string, `{` and `}` doubled.
    """
    return str(path).replace("{", "{{").replace("}", "}}")


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
        inspected = papermill.inspect_notebook(literal_path(notebook))
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


def _subgrids(spec: GridSpec) -> list[tuple[str, ParameterGrid]]:
    """(origin, `ParameterGrid`) of each sub-grid of `spec.grid`, in file order; none for an empty grid."""
    if not spec.grid:
        return []
    if isinstance(spec.grid, dict):
        return [("grid", ParameterGrid(spec.grid))]
    return [(f"grid[{i}]", ParameterGrid(sub)) for i, sub in enumerate(spec.grid)]


def _expand_sources(spec: GridSpec) -> list[tuple[str, dict[str, Any]]]:
    """(origin, overrides) for every grid point, then every explicit run."""
    points: list[tuple[str, dict[str, Any]]] = []
    for label, subgrid in _subgrids(spec):
        points += [(label, dict(point)) for point in subgrid]
    points += [(f"runs[{i}]", dict(run)) for i, run in enumerate(spec.runs)]
    if not points:  # only fixed parameters: one run
        points = [("fixed", {})]
    return points


def count_runs(spec: GridSpec) -> tuple[int, int]:
    """The runs a grid makes, counted without building them (`len(ParameterGrid)`, as scikit-learn counts).

    Grid points plus explicit `runs` (one run when there are neither), or
    `sample` of them, times `repeats`; duplicates, which only expansion
    finds, are counted as the grid writes them.

    Args:
        spec: the validated grid (without `search:`).

    Returns:
        `(runs, configurations)`: runs = configurations x `spec.repeats`.
    """
    points = sum(len(subgrid) for _, subgrid in _subgrids(spec)) + len(spec.runs) or 1
    configurations = points if spec.sample is None else min(spec.sample, points)
    return configurations * spec.repeats, configurations


def too_many_runs(grid_path: str | Path, runs: int, max_runs: int, *, configurations: Optional[int] = None,
                  repeats: int = 1) -> str:
    """The refusal of a grid of more runs than `--max-runs`, naming `repeats` when it multiplies the count.

    Args:
        grid_path: the grid file.
        runs: the runs the grid makes.
        max_runs: the `--max-runs` limit.
        configurations: the configurations they repeat. Defaults to `None` (not said).
        repeats: runs per configuration. Defaults to `1`.

    Returns:
        The message: `"<grid>: the grid expands to N runs, more than --max-runs M; pass --yes ..."`.
    """
    if repeats > 1:
        return (f"{grid_path}: the grid expands to {runs} runs ({configurations} configuration"
                f"{'s' * (configurations != 1)} x repeats: {repeats}), more than --max-runs {max_runs}; pass --yes "
                f"to run them all, or lower repeats: / narrow the grid / use sample:")
    return (f"{grid_path}: the grid expands to {runs} runs, more than --max-runs {max_runs}; pass --yes to run "
            f"them all, or narrow the grid / use sample:")


def _absolute_paths(params: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """`params` with each path (`runner.grid.schema.path_value`) absolute from `base_dir`; a path below a
    symbolic link loop is kept absolute but unresolved, for the pre-flight check to name the loop."""
    out = dict(params)
    for name, value in params.items():
        if not path_value(name, value):
            continue
        path = Path(value).expanduser()
        if not path.is_absolute():
            try:
                path = (base_dir / path).resolve()
            except RuntimeError:  # a symbolic link loop (Python < 3.13 raises; later versions keep the path)
                path = base_dir / path
        out[name] = str(path)
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
            `(runs, [])`, or `([], errors)` as `build`; also when the last
            repeat's seed passes `ExperimentSpec.SEED_RANGE` (the line names
            `repeats`, or `search.repeats` in a search).
        """
        repeats = self.spec.repeats if repeats is None else repeats
        first, errors = self.build(origin, point, index)
        if first is None or repeats == 1:
            return ([first] if first is not None else []), errors
        seed = first.params.get("seed")
        if "seed" not in self.allowed or type(seed) is not int:
            return [], [f"{self.grid_path}: repeats: {repeats} runs each configuration with seeds seed, seed + 1, "
                        f"...: the notebook needs an integer parameter 'seed' (got {seed!r})"]
        seeds = ExperimentSpec.SEED_RANGE
        if seed + repeats - 1 not in seeds:  # `seed` is in range (validated): the last repeat's is not
            key = "search.repeats" if self.spec.search is not None else "repeats"
            return [], [f"{self.grid_path}: {key}: {repeats} runs seeds {seed} to {seed + repeats - 1} (seed, "
                        f"seed + 1, ...), past the largest seed {seeds.stop - 1} (0 <= seed < 2**32); give "
                        f"{key} at most {seeds.stop - seed} or seed at most {seeds.stop - repeats}"]
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
    max_runs: Optional[int] = None,
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
        max_runs: refuse a grid that makes more runs than this (`count_runs`,
            before anything is expanded: the sweep's `--max-runs` without
            `--yes`), or `None` for no limit. Defaults to `None`.

    Returns:
        `(runs, notes)`: the run specs, and human-readable notes (e.g.
        duplicates removed).

    Raises:
        ConfigError: the grid makes more than `max_runs` runs (`too_many_runs`,
            raised first); or a parameter is unknown to the notebook or
            reserved, a value is invalid, a repeat's seed passes the seed
            range, or `sample` exceeds the number of runs; all problems are
            listed, each naming the grid file, where the key was set, the
            value received and what is allowed.
    """
    if max_runs is not None:
        count, configurations = count_runs(spec)
        if count > max_runs:
            raise ConfigError(too_many_runs(grid_path, count, max_runs, configurations=configurations,
                                            repeats=spec.repeats))
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
        runs = _repeat_runs(builder, runs, points, notes)
    return [replace(run, index=i) for i, run in enumerate(runs)], notes


def _repeat_runs(builder: RunBuilder, runs: list[RunSpec], points: list[dict[str, Any]], notes: list[str]
                 ) -> list[RunSpec]:
    """Each run's repeats (`RunBuilder.build_repeats` of its point), one after the other; a repeat that
    duplicates an earlier run is dropped with a line in `notes`.

    Raises:
        ConfigError: every problem of every configuration's repeats, one line each.
    """
    repeated: list[RunSpec] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
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
    return repeated


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
