"""Run a sweep: expand a grid file into papermill runs of one notebook.

    python runner/sweep.py grid.yaml [--dry-run] [--verbose]
                                     [--data-dir DIR] [--weights-dir DIR]

Every configuration of the grid is validated against the notebook's
parameters before anything runs. Each run is executed with papermill into
`experiments/<run_id>/<run_id>.ipynb`, exported to `.html` beside it, and
recorded in `logs/<run_id>.json`; a failed run is recorded as failed and the
sweep goes on. At the end `leaderboard.html` ranks every recorded run.

Exit codes: 0 every run completed; 1 at least one run failed; 2 invalid grid
file or option (nothing ran).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd
from tqdm import tqdm

from models.spec import ExperimentSpec
from runner.errors import ConfigError, FatalError
from runner.execute import execute_run
from runner.grid import GridSpec, RunSpec, expand_runs, load_grid
from runner.leaderboard import write_leaderboard
from runner.preflight import check_runs
from runner.records import COMPLETED, RunRecord


def runs_table(runs: list[RunSpec]) -> pd.DataFrame:
    """The expanded runs as a table: index, origin, hash, and the parameters that vary.

    Args:
        runs: expanded run specs.

    Returns:
        One row per run; parameter columns only for parameters whose value
        differs between runs (all parameters when there is one run).
    """
    params = pd.DataFrame([{k: v if isinstance(v, (str, int, float)) else str(v)
                            for k, v in run.params.items()} for run in runs])
    varying = [c for c in params.columns if params[c].astype(str).nunique() > 1] if len(runs) > 1 else list(params.columns)
    meta = pd.DataFrame({"run": [r.index for r in runs], "origin": [r.origin for r in runs],
                         "config_hash": [r.config_hash[:8] for r in runs]})
    return pd.concat([meta, params[varying]], axis=1)


def run_sweep(spec: GridSpec, runs: list[RunSpec], *, verbose: bool = False) -> list[RunRecord]:
    """Execute `runs` one after another, then write the leaderboard.

    Args:
        spec: the validated grid (notebook, output folders, metric, top_n).
        runs: the expanded runs.
        verbose: stream notebook output. Defaults to `False`.

    Returns:
        The records, in run order.

    Raises:
        FatalError: a record could not be written; the leaderboard is still
            regenerated from what was recorded.
    """
    records: list[RunRecord] = []
    counts = {"completed": 0, "failed": 0}
    try:
        # The bar writes to a copy of stderr: fd 2 itself goes to each run's kernel.log.
        bar_file = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured)
        bar_file = sys.stderr
    try:
        with tqdm(runs, desc="sweep", unit="run", file=bar_file, dynamic_ncols=True) as bar:
            for run in bar:
                bar.set_postfix_str(f"run {run.index + 1}/{len(runs)} ({run.origin}) "
                                    f"{counts['completed']} ok {counts['failed']} failed")
                record = execute_run(run, spec.notebook, spec.experiments_dir, spec.logs_dir, verbose=verbose)
                records.append(record)
                counts["completed" if record.status == COMPLETED else "failed"] += 1
                if record.status != COMPLETED:
                    bar.write(f"run {record.run_id} failed: {record.error['ename']}: "
                              f"{record.error['evalue'][:200]}")
            bar.set_postfix_str(f"{counts['completed']} ok {counts['failed']} failed")
    finally:
        if bar_file is not sys.stderr:
            bar_file.close()
        write_leaderboard(spec.logs_dir, spec.leaderboard, spec.metric, spec.top_n)
    return records


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of `python runner/sweep.py`."""
    parser = argparse.ArgumentParser(
        prog="python runner/sweep.py",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.fill("grid file keys: " + ", ".join(GridSpec.model_fields), 79) + "\n\n"
        + textwrap.fill("notebook parameters (in fixed, grid, runs): " + ", ".join(ExperimentSpec.model_fields), 79)
        + "\n\nEvery key and parameter is described in README.md (\"grid.yaml reference\").",
    )
    parser.add_argument("grid", type=Path, help="the grid file (YAML), e.g. grid.yaml; see README")
    parser.add_argument("--dry-run", action="store_true", help="print the expanded runs as a table and exit")
    parser.add_argument("--verbose", action="store_true", help="show each notebook's cell output while it runs")
    parser.add_argument("--data-dir", help="use this ImageFolder-style folder as data_dir of every run")
    parser.add_argument("--weights-dir", help="folder of offline ImageNet weights files used when weights is "
                        "'imagenet' (default: $NBSWEEP_WEIGHTS_DIR, else Keras downloads them)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; returns the exit code (0 all completed, 1 a run failed, 2 bad input)."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = {k: v for k, v in {"data_dir": args.data_dir, "weights_dir": args.weights_dir}.items() if v}
    try:
        spec = load_grid(args.grid)
        runs, notes = expand_runs(spec, args.grid, overrides=overrides)
        notes += check_runs(spec, runs, args.grid)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.dry_run:
        with pd.option_context("display.width", 200, "display.max_columns", None, "display.max_colwidth", 40):
            print(runs_table(runs).to_string(index=False))
        print(f"{len(runs)} runs (dry run: nothing executed)")
        return 0
    try:
        records = run_sweep(spec, runs, verbose=args.verbose)
    except FatalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    completed = sum(r.status == COMPLETED for r in records)
    failed = len(records) - completed
    print(f"{completed} completed, {failed} failed; leaderboard: {spec.leaderboard}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
