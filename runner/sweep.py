"""Run a sweep: expand a grid file into papermill runs of one notebook.

    python runner/sweep.py grid.yaml [--dry-run] [--verbose] [--force | --retry-failed]
                                     [--data-dir DIR] [--weights-dir DIR]
                                     [--timeout S] [--cell-timeout S]
                                     [--workers N | --executor dask --scheduler tcp://HOST:8786]
                                     [--max-runs N --yes]

Every configuration of the grid is validated against the notebook's
parameters before anything runs. Each run is executed with papermill into
`experiments/<run_id>/<run_id>.ipynb`, exported to `.html` beside it, and
recorded in `logs/<run_id>.json`; a failed run is recorded as failed and the
sweep goes on. At the end `leaderboard.html` ranks every recorded run.

A run whose completed record has the same config_hash (parameters, notebook
code, data manifest, weights, project code) is skipped, so re-running the
same command after an interruption continues where it stopped.

Exit codes: 0 every run completed (or was skipped); 1 at least one run failed
or timed out; 2 invalid grid file or option, or another sweep holds the logs
folder (nothing ran); 130 interrupted (Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import signal
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd
from tqdm import tqdm

from models.spec import ExperimentSpec
from runner.errors import ConfigError, FatalError
from runner.executors import DaskExecutor, InlineExecutor, LocalExecutor, RunTask
from runner.grid import GridSpec, RunSpec, expand_runs, load_grid
from runner.leaderboard import write_leaderboard
from runner.preflight import check_runs
from runner.records import COMPLETED, INTERRUPTED, RUN, SKIPPED, STATUSES, RunRecord, read_records


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


@dataclass
class SweepOptions:
    """How `run_sweep` treats runs.

    Attributes:
        verbose: stream each notebook's cell output.
        force: re-run runs that already have a completed record.
        retry_failed: run only the runs that have a record but no completed
            one (failed, interrupted or timed out).
        timeout_s: wall-clock limit per run, seconds, or `None`.
        cell_timeout_s: limit per notebook cell, seconds, or `None`.
        workers: runs executed at once on this machine, each in a worker
            process of its own when > 1 (`runner.executors.LocalExecutor`).
        executor: `"local"` (this machine, `workers`) or `"dask"` (a
            `dask.distributed` cluster, `runner.executors.DaskExecutor`).
        scheduler: the Dask scheduler's address, with `executor="dask"`.
    """

    verbose: bool = False
    force: bool = False
    retry_failed: bool = False
    timeout_s: Optional[float] = None
    cell_timeout_s: Optional[float] = None
    workers: int = 1
    executor: str = "local"
    scheduler: Optional[str] = None


def plan_runs(runs: list[RunSpec], logs_dir: Path, options: SweepOptions) -> list[tuple[RunSpec, Optional[str]]]:
    """Decide for every run whether to execute it: `(run, None)` or `(run, reason to skip)`.

    By default a run whose `config_hash` has a completed record is skipped;
    `force` runs everything; `retry_failed` runs only those that have a record
    but no completed one (failed, interrupted or timed out).
    """
    records, _ = read_records(logs_dir)
    recorded = {rec.config_hash for rec in records if rec.kind == RUN}
    done = {rec.config_hash: rec.run_id for rec in records if rec.kind == RUN and rec.status == COMPLETED}
    plan = []
    for run in runs:
        if options.force:
            plan.append((run, None))
        elif run.config_hash in done:
            plan.append((run, f"completed as {done[run.config_hash]}"))
        elif options.retry_failed and run.config_hash not in recorded:
            plan.append((run, "never run (--retry-failed only re-runs failed runs)"))
        else:
            plan.append((run, None))
    return plan


def run_sweep(spec: GridSpec, runs: list[RunSpec], options: Optional[SweepOptions] = None) -> dict[str, list]:
    """Execute the runs not done yet on the chosen executor; then write the leaderboard.

    Runs start in grid order, up to the executor's number of slots at once
    (`--workers`); a run with a `warm_start` starts only once every run
    before it has finished, so `warm_start: best` sees them. The progress bar
    advances as runs finish.

    SIGINT and SIGTERM raise `KeyboardInterrupt` while the sweep runs, so
    Ctrl-C and `kill` end the same way: runs not started are dropped, running
    notebooks are stopped, saved and recorded as interrupted, the leaderboard
    is regenerated, and the `KeyboardInterrupt` goes up to the caller.
    Running the same sweep again continues with the runs that have no
    completed record.

    Args:
        spec: the validated grid (notebook, output folders, metric, top_n).
        runs: the expanded runs.
        options: see `SweepOptions`. Defaults to `SweepOptions()`.

    Returns:
        `{status: [record or run spec]}`: records by status, and the skipped
        run specs under `SKIPPED`.

    Raises:
        KeyboardInterrupt: Ctrl-C or SIGTERM; running runs are recorded.
        FatalError: a record could not be written, or a worker process
            died; the leaderboard is still regenerated from what was recorded.
    """
    options = options or SweepOptions()
    outcome: dict[str, list] = {status: [] for status in (*STATUSES, SKIPPED)}
    plan = plan_runs(runs, spec.logs_dir, options)
    task = RunTask(spec.notebook, spec.experiments_dir, spec.logs_dir, verbose=options.verbose,
                   timeout_s=options.timeout_s, cell_timeout_s=options.cell_timeout_s)
    try:
        # The bar writes to a copy of stderr: fd 2 itself goes to each run's kernel.log.
        bar_file = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured)
        bar_file = sys.stderr
    # SIGINT too: a sweep started in the background by a script inherits an ignored SIGINT
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with tqdm(total=len(plan), desc="sweep", unit="run", file=bar_file, dynamic_ncols=True) as bar:
            def finished(record: RunRecord) -> None:
                outcome[record.status].append(record)
                if record.status not in (COMPLETED, INTERRUPTED):
                    bar.write(f"run {record.run_id} {record.status}: {record.error['ename']}: "
                              f"{record.error['evalue'][:200]}", file=bar_file)
                bar.update()
                bar.set_postfix_str(_counts(outcome))

            pending: list[RunSpec] = []
            for run, skip in plan:
                if skip:
                    outcome[SKIPPED].append(run)
                    bar.write(f"skip run {run.index + 1} ({run.origin}): {skip}", file=bar_file)
                    bar.update()
                else:
                    pending.append(run)
            if pending:
                _execute(make_executor(options), task, pending, finished)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if bar_file is not sys.stderr:
            bar_file.close()
        write_leaderboard(spec.logs_dir, spec.leaderboard, spec.metric, spec.top_n)
    return outcome


def make_executor(options: SweepOptions):
    """The executor of `options`: `DaskExecutor`, or `InlineExecutor` for 1 local worker, else `LocalExecutor`.

    Raises:
        ConfigError: no Dask scheduler answers at `options.scheduler`.
    """
    if options.executor == "dask":
        return DaskExecutor(options.scheduler)
    return InlineExecutor() if options.workers == 1 else LocalExecutor(options.workers)


def _execute(executor, task: RunTask, pending: list[RunSpec], finished) -> None:
    """Feeds `pending` to `executor` in order, calling `finished(record)` as each run ends.

    Raises:
        KeyboardInterrupt: after the running runs are recorded as interrupted.
        FatalError: a worker process died (its run has no record).
    """
    running: dict = {}
    queue = list(pending)
    try:
        while queue or running:
            # a warm start waits for every earlier run, so `best` and explicit parents are there
            while queue and len(running) < executor.slots and not (running and queue[0].params.get("warm_start")):
                run = queue.pop(0)
                running[executor.submit(task, run)] = run
            for future in executor.wait_first(list(running)):
                record = _result(future, running.pop(future))
                finished(record)
                if record.status == INTERRUPTED:  # Ctrl-C reached the run first
                    raise KeyboardInterrupt(f"run {record.run_id} interrupted")
    except KeyboardInterrupt:
        executor.stop()
        for future in list(running):
            with contextlib.suppress(FatalError):
                record = _result(future, running.pop(future))
                if record is not None:  # None: stopped before it started
                    finished(record)
        raise
    finally:
        executor.close()


def _result(future, run: RunSpec) -> RunRecord:
    try:
        return future.result()
    except (FatalError, KeyboardInterrupt):
        raise
    except Exception as exc:  # the worker process or machine died: the run has no record
        raise FatalError(f"run {run.index + 1} ({run.origin}): its worker died "
                         f"({type(exc).__name__}: {exc}); it has no record and runs again next time") from exc


def _counts(outcome: dict[str, list]) -> str:
    return ", ".join(f"{len(items)} {status}" for status, items in outcome.items() if items or status == COMPLETED)


@contextlib.contextmanager
def sweep_lock(logs_dir: Path):
    """Hold an exclusive lock on `<logs_dir>/.sweep.lock` for one sweep at a time.

    The lock is an `fcntl.flock`, released by the kernel when the process
    ends, so a crashed sweep never leaves a stale lock; the file records the
    holder's pid for the message.

    Raises:
        ConfigError: another process holds the lock ("another sweep is
            running (pid N)").
    """
    logs_dir.mkdir(parents=True, exist_ok=True)
    with open(logs_dir / ".sweep.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            raise ConfigError(f"another sweep is running (pid {handle.read().strip() or '?'}) on "
                              f"{logs_dir}; wait for it or use other logs_dir/experiments_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield


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
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--force", action="store_true",
                       help="re-run runs that already have a completed record with the same config_hash")
    again.add_argument("--retry-failed", action="store_true",
                       help="run only the runs whose records all failed, were interrupted or timed out")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="wall-clock limit of each run; a run over it is stopped and recorded as 'timeout'")
    parser.add_argument("--cell-timeout", type=float, metavar="SECONDS",
                        help="limit of each notebook cell (papermill's execution timeout)")
    parser.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                        help="run N notebooks at once, each in its own worker process and kernel, with "
                        "TensorFlow threads = cores / N (default: 1, in this process)")
    parser.add_argument("--executor", choices=("local", "dask"), default="local",
                        help="where runs execute: this machine (default) or a dask.distributed cluster "
                        "(needs --scheduler and a filesystem shared with the workers; see README)")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="the Dask scheduler, e.g. tcp://HOST:8786 (with --executor dask)")
    parser.add_argument("--max-runs", type=int, default=1000,
                        help="refuse a grid of more runs than this unless --yes (default: 1000)")
    parser.add_argument("--yes", action="store_true", help="run a grid larger than --max-runs")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; returns the exit code (0 all completed, 1 a run failed, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.executor == "dask" and not args.scheduler:
        parser.error("--executor dask needs --scheduler ADDRESS (e.g. tcp://HOST:8786)")
    if args.executor == "dask" and args.workers != 1:
        parser.error("--workers is for --executor local; a Dask cluster runs as many runs as its workers have threads")
    if args.scheduler and args.executor != "dask":
        parser.error("--scheduler needs --executor dask")
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
    if len(runs) > args.max_runs and not args.yes:
        print(f"error: {args.grid}: the grid expands to {len(runs)} runs, more than --max-runs "
              f"{args.max_runs}; pass --yes to run them all, or narrow the grid / use sample:", file=sys.stderr)
        return 2
    options = SweepOptions(verbose=args.verbose, force=args.force, retry_failed=args.retry_failed,
                           timeout_s=args.timeout, cell_timeout_s=args.cell_timeout, workers=args.workers,
                           executor=args.executor, scheduler=args.scheduler)
    try:
        with sweep_lock(spec.logs_dir):
            outcome = run_sweep(spec, runs, options)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FatalError as exc:
        print(f"error: {exc}; the sweep stopped, every record written so far is intact", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: running runs are recorded as '{INTERRUPTED}' and {spec.leaderboard} is up to date; "
              f"run the same command again to continue with the remaining runs", file=sys.stderr)
        return 130
    print(f"{_counts(outcome)}; leaderboard: {spec.leaderboard}")
    return 0 if len(outcome[COMPLETED]) + len(outcome[SKIPPED]) == len(runs) else 1

if __name__ == "__main__":
    sys.exit(main())
