"""The sweep loop: plan the runs, feed them to an executor, stop in order on a signal.

`run_sweep` takes one source of runs, a grid's (`ListSource`, planned by
`plan_runs`) or a search's (`runner.search.SearchSource`), feeds them to the
executor `make_executor` chooses, counts each run on a progress bar as it
finishes, then runs the grid's refit (`runner.core.refit`) and ensembles
(`runner.core.ensemble`) and writes the leaderboard. `StopSignals` turns
SIGINT and SIGTERM into an orderly stop.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

from tqdm import tqdm

from runner.errors import FatalError, shorten
from runner.core.ensemble import build_grid_ensembles
from runner.core.executors import (DaskExecutor, InlineExecutor, LocalExecutor, RunTask, gpu_environment,
                                   worker_gpus)
from runner.core.execute import DATA_CHANGED, orphan_run_folders
from runner.core.refit import run_refit
from runner.grid import GridSpec, RunSpec
from runner.reports.leaderboard import write_leaderboard
from runner.records.query import RecordSet
from runner.records import COMPLETED, DONE_STATUSES, INTERRUPTED, PRUNED, RUN, SKIPPED, STATUSES, RunRecord


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
            process of its own when > 1 (`runner.core.executors.LocalExecutor`).
        executor: `"local"` (this machine, `workers`) or `"dask"` (a
            `dask.distributed` cluster, `runner.core.executors.DaskExecutor`).
        scheduler: the Dask scheduler's address, with `executor="dask"`.
        clean_orphans: remove run folders that have no record (left by a
            SIGKILL or a failed record write); they are listed either way.
        retry_pruned: also run again the runs a pruner stopped (they count
            as done otherwise, `retry_failed` included).
        prestart: start each run's kernel (and its imports) while the run
            before it executes (`runner.core.kernels`); `False` is `--no-prestart`.
        gpus_per_worker: `--gpus-per-worker` (`runner.core.executors.assign_gpus`),
            or `None`: with `workers` > 1 on a machine with GPUs, one each (or in turn).
    """

    verbose: bool = False
    force: bool = False
    retry_failed: bool = False
    timeout_s: Optional[float] = None
    cell_timeout_s: Optional[float] = None
    workers: int = 1
    executor: str = "local"
    scheduler: Optional[str] = None
    clean_orphans: bool = False
    retry_pruned: bool = False
    prestart: bool = True
    gpus_per_worker: Optional[float] = None


def plan_runs(runs: list[RunSpec], found: RecordSet, options: SweepOptions) -> list[tuple[RunSpec, Optional[str]]]:
    """Decide for every run whether to execute it: `(run, None)` or `(run, reason to skip)`.

    By default a run whose `config_hash` has a completed (or pruned) record
    is skipped, if that record trained on the data the run expects
    (`RunSpec.data_matches`: a run whose data changed under it is run again); `force` runs everything; `retry_failed` runs only those that
    have a record but none completed or pruned (failed, interrupted or timed
    out); `retry_pruned` runs the pruned ones (with `retry_failed`: both).

    Args:
        runs: the expanded runs.
        found: the records of the logs folder (`runner.records.query.read_all`).
        options: `force` and `retry_failed`.

    Returns:
        One `(run, reason)` per run, in order; `reason` is `None` for runs to execute.
    """
    notebook_runs = [rec for rec in found.records if rec.kind == RUN]
    recorded = {rec.config_hash for rec in notebook_runs}
    done_statuses = (COMPLETED,) if options.retry_pruned else DONE_STATUSES
    done: dict[str, list[RunRecord]] = {}
    for rec in notebook_runs:
        if rec.status in done_statuses:
            done.setdefault(rec.config_hash, []).append(rec)
    plan = []
    for run in runs:
        same_data = [rec for rec in done.get(run.config_hash, []) if run.data_matches(rec)]
        if options.force:
            plan.append((run, None))
        elif same_data:
            plan.append((run, f"{same_data[-1].status} as {same_data[-1].run_id}"))
        elif options.retry_failed and run.config_hash not in recorded:
            plan.append((run, "never run (--retry-failed only re-runs failed runs)"))
        elif options.retry_pruned and not options.retry_failed and run.config_hash not in {
                rec.config_hash for rec in notebook_runs if rec.status == PRUNED}:
            plan.append((run, "not pruned (--retry-pruned only re-runs pruned runs)"))
        else:
            plan.append((run, None))
    return plan


class StopSignals:
    """SIGINT / SIGTERM while a sweep runs: an orderly stop that later signals cannot cut short.

    The handler never raises: it sets `event`, which every running run polls
    (its kernel is killed, its notebook saved and it is recorded
    `interrupted`) and the feeding loop reads (no run starts after it). So a
    second or third Ctrl-C, whenever it lands, cannot interrupt the writing
    of a record; it only says what is going on. A run whose notebook thread
    does not end within `runner.core.execute.STOP_GRACE_S` seconds of its kernel
    being killed is recorded anyway.

    Args:
        write: prints a line for the user (the progress bar's `write`).
    """

    def __init__(self, write: Callable[[str], None]):
        self.event = threading.Event()
        self.count = 0
        self._write = write
        self._previous: dict = {}

    def __call__(self, signum, frame) -> None:
        self.count += 1
        self.event.set()
        name = signal.Signals(signum).name
        if self.count == 1:
            self._write(f"{name}: stopping; running runs are killed, saved and recorded as '{INTERRUPTED}' "
                        f"(no new run starts)")
        else:
            self._write(f"{name} again ({self.count}): still stopping; the records are being written, "
                        f"the sweep exits as soon as they are")

    def __enter__(self) -> "StopSignals":
        # SIGINT too: a sweep started in the background by a script inherits an ignored SIGINT
        self._previous = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class RunSource(Protocol):
    """What `run_sweep` pulls runs from: a grid's `ListSource`, or a `runner.search.SearchSource`.

    Attributes:
        found: the records of the logs folder the runs were planned against.
        notes: lines for the user, written once the source is closed.
        proposed: the run to show an ETA for (`predicted_s`), or `None` for no ETA.
    """

    found: RecordSet
    notes: list[str]

    @property
    def proposed(self) -> Optional[RunSpec]: ...

    def runs_remaining(self) -> int:
        """Runs still to start; after `pop`, more than 0 when another run may follow."""

    def predicted_s(self, run: RunSpec) -> Optional[float]:
        """The predicted seconds of `run`, or `None`."""

    def peek(self) -> Optional[RunSpec]:
        """The next run, or `None` when none is left."""

    def pop(self) -> RunSpec:
        """Takes the run `peek` returned."""

    def finished(self, record: RunRecord) -> None:
        """Told how each run ended."""

    def close(self) -> None:
        """Releases what the source holds; runs before `notes` are written."""


class ListSource:
    """The runs of a grid, in order: a `RunSource` whose runs are known in advance.

    Args:
        runs: the runs to execute (`plan_runs` chose them).
        found: the records they were planned against.
    """

    def __init__(self, runs: Sequence[RunSpec], found: RecordSet):
        self._queue = list(runs)
        self.found = found
        self.notes: list[str] = []

    @property
    def proposed(self) -> None:
        """No ETA of its own: the progress bar's, for runs of the same grid, fits."""
        return None

    def runs_remaining(self) -> int:
        """The runs not taken yet."""
        return len(self._queue)

    def predicted_s(self, run: RunSpec) -> None:
        """No prediction."""
        return None

    def peek(self) -> Optional[RunSpec]:
        """The next run, or `None` when none is left."""
        return self._queue[0] if self._queue else None

    def pop(self) -> RunSpec:
        """Takes the next run."""
        return self._queue.pop(0)

    def finished(self, record: RunRecord) -> None:
        """Nothing to tell: a grid's runs are fixed."""

    def close(self) -> None:
        """Nothing to release."""


def plan_grid(runs: list[RunSpec], found: RecordSet,
              options: SweepOptions) -> tuple[ListSource, list[tuple[RunSpec, str]]]:
    """A grid's runs as `run_sweep` takes them: the source of those to execute, and the skipped ones.

    Args:
        runs: the grid's expanded runs.
        found: the records of its logs folder (`runner.records.query.read_all`).
        options: see `plan_runs`.

    Returns:
        `(source, skipped)`: a `ListSource` of the runs `plan_runs` executes,
        in order, and `(run, reason)` for each of the others.
    """
    plan = plan_runs(runs, found, options)
    return (ListSource([run for run, reason in plan if reason is None], found),
            [(run, reason) for run, reason in plan if reason is not None])


def run_sweep(spec: GridSpec, source: RunSource, options: Optional[SweepOptions] = None,
              skipped: Sequence[tuple[RunSpec, str]] = ()) -> dict[str, list]:
    """Execute the runs of `source` on the chosen executor; then the refit, the ensembles and the leaderboard.

    Runs start in order, up to the executor's number of slots at once
    (`--workers`); a run with a `warm_start` starts only once every run
    before it has finished, so `warm_start: best` sees them. The progress bar
    advances as runs finish (and once for each of `skipped`).

    SIGINT and SIGTERM (`StopSignals`) end the same way: runs not started
    are dropped, running notebooks are stopped (their kernels killed, also
    during kernel start-up), saved and recorded as interrupted, the
    leaderboard is regenerated, and `KeyboardInterrupt` goes up to the
    caller. Running the same sweep again continues with the runs that have
    no completed record.

    Args:
        spec: the validated grid (notebook, output folders, metric, top_n,
            refit, ensembles).
        source: the runs to execute: `ListSource` for a grid's planned runs,
            a `runner.search.SearchSource` for a search's proposals.
        options: see `SweepOptions`. Defaults to `SweepOptions()`.
        skipped: `(run, reason)` for each run `plan_runs` chose not to
            execute; each is written and counted as skipped. Defaults to `()`.

    Returns:
        `{status: [record or run spec]}`: records by status, and the skipped
        run specs under `SKIPPED`.

    Raises:
        KeyboardInterrupt: Ctrl-C or SIGTERM; running runs are recorded.
        FatalError: a record could not be written, or a worker process
            died; the leaderboard is still regenerated from what was recorded.
    """
    options = options or SweepOptions()
    task = RunTask(spec.notebook, spec.experiments_dir, spec.logs_dir, verbose=options.verbose,
                   timeout_s=options.timeout_s, cell_timeout_s=options.cell_timeout_s, metric=spec.metric,
                   prestart=options.prestart)
    bar_file = _open_bar_file()
    try:
        with tqdm(total=len(skipped) + source.runs_remaining(), desc="sweep" if spec.search is None else "search",
                  unit="run", file=bar_file, dynamic_ncols=True) as bar, \
                StopSignals(lambda line: bar.write(line, file=bar_file)) as stop:
            progress = _Progress(bar, bar_file, source)
            _report_leftovers(spec.experiments_dir, source.found, options.clean_orphans, progress.write)
            for run, reason in skipped:
                progress.skip(run, reason)
            try:
                if source.peek() is not None:
                    _feed(make_executor(options, stop.event), task, source, progress.finished, stop.event)
            finally:
                source.close()
                for note in source.notes:
                    progress.write(f"note: {note}")
            if spec.refit:  # before the ensembles: an ensemble may name the refit
                run_refit(spec, lambda run, found: plan_runs([run], found, options)[0][1],
                          lambda run: _execute_one(run, source.found, options, task, stop.event), progress.write)
            for line in build_grid_ensembles(spec):
                progress.write(line)
    finally:
        if bar_file is not sys.stderr:
            bar_file.close()
        write_leaderboard(spec.logs_dir, spec.leaderboard, spec.metric, spec.top_n)
    return progress.outcome


def _open_bar_file():
    """Where the progress bar writes: a copy of stderr, since fd 2 itself goes to each run's kernel.log."""
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured)
        return sys.stderr


class _Progress:
    """The sweep's progress bar and outcome: each run skipped or finished is counted, its problems written.

    Args:
        bar: the `tqdm` bar.
        file: where the bar writes.
        source: told of every finished run.

    Attributes:
        outcome: `{status: [record or run spec]}`, `run_sweep`'s result.
    """

    def __init__(self, bar: tqdm, file, source: RunSource):
        self._bar, self._file, self._source = bar, file, source
        self.outcome: dict[str, list] = {status: [] for status in (*STATUSES, SKIPPED)}

    def write(self, line: str) -> None:
        """Prints `line` above the bar."""
        self._bar.write(line, file=self._file)

    def skip(self, run: RunSpec, reason: str) -> None:
        """Counts `run` as skipped, and says why."""
        self.outcome[SKIPPED].append(run)
        self.write(f"skip run {run.index + 1} ({run.origin}): {reason}")
        self._bar.update()

    def finished(self, record: RunRecord) -> None:
        """Tells the source, counts the record, and writes its error and any data-changed warning."""
        self._source.finished(record)
        self.outcome[record.status].append(record)
        if record.error is not None and record.status != INTERRUPTED:
            self.write(f"run {record.run_id} {record.status}: {record.error.ename}: {record.error.evalue[:200]}")
        for warning in record.warnings:
            if warning.startswith(DATA_CHANGED):
                self.write(f"warning: run {record.run_id}: {warning}")
        self._bar.update()
        self._bar.set_postfix_str(format_counts(self.outcome) + _eta(self._source, self._bar))


def _report_leftovers(experiments_dir: Path, found: RecordSet, clean: bool, write: Callable[[str], None]) -> None:
    """Write what earlier sweeps left: run folders without a record (removed with `clean`), unreadable records."""
    orphans = orphan_run_folders(experiments_dir, {rec.run_id for rec in found.records} | set(found.unreadable_ids()))
    if orphans:
        write(_orphans_line(orphans, clean))
        if clean:
            for folder in orphans:
                shutil.rmtree(folder, ignore_errors=True)
    if found.unreadable:  # their runs cannot be recognised as done: say so before running any again
        write(_unreadable_line(found))


def _execute_one(run: RunSpec, found: RecordSet, options: SweepOptions, task: RunTask,
                 stop: threading.Event) -> Optional[RunRecord]:
    """Execute one run (the refit) as the sweep's runs are executed; its record, or `None` if it has none."""
    records: list[RunRecord] = []
    _feed(make_executor(options, stop), task, ListSource([run], found), records.append, stop)
    return records[0] if records else None


def format_counts(outcome: dict[str, list]) -> str:
    """`2 completed, 1 failed, 3 skipped`: the count of each status in `outcome` (completed always shown).

    Args:
        outcome: `run_sweep`'s result.

    Returns:
        The counts, in the order of `outcome`, joined by commas.
    """
    return ", ".join(f"{len(items)} {status}" for status, items in outcome.items() if items or status == COMPLETED)


def _eta(source: RunSource, bar: tqdm) -> str:
    """`, eta 12m` for a source that predicts its runs (the bar's own ETA assumes equal runs)."""
    if source.proposed is None:  # never ask a study for a run just to show the ETA
        return ""
    predicted = source.predicted_s(source.proposed)
    return f", eta {predicted * max(1, bar.total - bar.n) / 60:.0f}m" if predicted else ""


def _unreadable_line(found: RecordSet) -> str:
    """The warning for records that exist but cannot be read: their runs may run again beside them."""
    shown = "; ".join(f"{name}: {shorten(reason, quote=False)}" for name, reason in list(found.unreadable.items())[:5])
    more = f"; and {len(found.unreadable) - 5} more" if len(found.unreadable) > 5 else ""
    return (f"warning: {len(found.unreadable)} record(s) in {found.logs_dir} cannot be read, so their runs are not "
            f"known to be done and may run again beside them: {shown}{more}")


def _orphans_line(orphans: list[Path], removed: bool) -> str:
    names = ", ".join(p.name for p in orphans[:5]) + (", ..." if len(orphans) > 5 else "")
    action = "removed (--clean-orphans)" if removed else "remove them with --clean-orphans"
    return (f"{len(orphans)} run folder(s) from interrupted sweeps have no record: {names} "
            f"(in {orphans[0].parent}); {action}")


def make_executor(options: SweepOptions, stop: Optional[threading.Event] = None):
    """The executor of `options`: `DaskExecutor`, or `InlineExecutor` for 1 local worker, else `LocalExecutor`.

    Args:
        options: the sweep's options.
        stop: set on Ctrl-C / SIGTERM; the inline executor's run polls it.

    Raises:
        ConfigError: no Dask scheduler answers at `options.scheduler`, or
            `options.gpus_per_worker` does not fit this machine's GPUs.
    """
    if options.executor == "dask":
        return DaskExecutor(options.scheduler)
    gpus = worker_gpus(options.workers, options.gpus_per_worker)
    if options.workers == 1:
        return InlineExecutor(stop, env=gpu_environment(gpus[0]))
    return LocalExecutor(options.workers, gpus)


def _feed(executor, task: RunTask, source: RunSource, finished: Callable[[RunRecord], None],
          stop: threading.Event) -> None:
    """Feeds the runs of `source` to `executor` in order, calling `finished(record)` as each run ends.

    Polls `stop` (set by `StopSignals`) every 0.2 s: once it is set nothing
    more starts, the executor is told to stop its running runs, and their
    records are collected. A run is submitted with `more` (start the next
    kernel ahead) while the source has runs remaining after it.

    Raises:
        KeyboardInterrupt: `stop` was set; every run that ran is recorded.
        FatalError: a worker process died (its run has no record).
    """
    running: dict = {}
    stopping = False
    try:
        while running or (not stop.is_set() and source.peek() is not None):
            # a warm start waits for every earlier run, so `best` and explicit parents are there
            while (not stop.is_set() and len(running) < executor.slots and (nxt := source.peek()) is not None
                   and not (running and nxt.params.get("warm_start"))):
                run = source.pop()
                running[executor.submit(task, run, more=source.runs_remaining() > 0)] = run
            if stop.is_set() and not stopping:
                stopping = True
                executor.stop()
            for future in executor.wait_first(list(running), timeout_s=0.2):
                record = _result(future, running.pop(future))
                if record is not None:  # None: a Dask task stopped before it started
                    finished(record)
    finally:
        executor.close()
    if stop.is_set():
        raise KeyboardInterrupt("the sweep was stopped")


def _result(future, run: RunSpec) -> Optional[RunRecord]:
    try:
        return future.result()
    except FatalError:
        raise
    except Exception as exc:  # the worker process or machine died: the run has no record
        raise FatalError(f"run {run.index + 1} ({run.origin}): its worker died "
                         f"({type(exc).__name__}: {exc}); it has no record and runs again next time") from exc
