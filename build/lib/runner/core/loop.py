"""Run a sweep: expand a grid file into papermill runs of one notebook.

    python runner/sweep.py grid.yaml [--dry-run] [--verbose] [--force | --retry-failed]
                                     [--data-dir DIR] [--weights-dir DIR]
                                     [--timeout S] [--cell-timeout S]
                                     [--workers N [--gpus-per-worker G] | --executor dask --scheduler tcp://HOST:8786]
                                     [--no-prestart] [--max-runs N --yes]

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

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional


import pandas as pd
from tqdm import tqdm

from runner.errors import ConfigError, FatalError, shorten
from runner.core.executors import (DaskExecutor, InlineExecutor, LocalExecutor, RunTask, gpu_environment,
                                   worker_gpus)
from runner.grid import GridSpec, RunBuilder, RunSpec, expand_runs, load_grid
from runner.reports.leaderboard import write_leaderboard
from runner.core.preflight import check_runs
from runner.core.execute import DATA_CHANGED, orphan_run_folders
from models.hashing import sha256_json
from models.names import FINE_TUNE, HEAD
from runner.records.query import RecordSet, parse_metric, rank_groups, read_all
from runner.records import COMPLETED, DONE_STATUSES, FAILED, INTERRUPTED, PRUNED, RUN, TIMEOUT, SKIPPED, STATUSES, RunRecord


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


class ListSource:
    """The runs of a grid, in order, for `_execute` (a `runner.search.SearchSource` has the same methods).

    Args:
        runs: the runs to execute.
    """

    def __init__(self, runs: list[RunSpec]):
        self._queue = list(runs)
        self.notes: list[str] = []

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


def run_sweep(spec: GridSpec, runs: list[RunSpec], options: Optional[SweepOptions] = None,
              search=None) -> dict[str, list]:
    """Execute the runs not done yet on the chosen executor; then write the leaderboard.

    Runs start in grid order, up to the executor's number of slots at once
    (`--workers`); a run with a `warm_start` starts only once every run
    before it has finished, so `warm_start: best` sees them. The progress bar
    advances as runs finish.

    SIGINT and SIGTERM (`StopSignals`) end the same way: runs not started
    are dropped, running notebooks are stopped (their kernels killed, also
    during kernel start-up), saved and recorded as interrupted, the
    leaderboard is regenerated, and `KeyboardInterrupt` goes up to the
    caller. Running the same sweep again continues with the runs that have
    no completed record.

    Args:
        spec: the validated grid (notebook, output folders, metric, top_n).
        runs: the expanded runs (ignored with `search`).
        options: see `SweepOptions`. Defaults to `SweepOptions()`.
        search: a `runner.search.SearchSource` proposing the runs instead,
            or `None` (the grid's `runs`). Defaults to `None`.

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
    found = search.found if search is not None else read_all(spec.logs_dir)
    plan = [] if search is not None else plan_runs(runs, found, options)
    task = RunTask(spec.notebook, spec.experiments_dir, spec.logs_dir, verbose=options.verbose,
                   timeout_s=options.timeout_s, cell_timeout_s=options.cell_timeout_s, metric=spec.metric,
                   prestart=options.prestart)
    try:
        # The bar writes to a copy of stderr: fd 2 itself goes to each run's kernel.log.
        bar_file = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured)
        bar_file = sys.stderr
    try:
        total = search.runs_remaining() if search is not None else len(plan)
        with tqdm(total=total, desc="search" if search else "sweep", unit="run", file=bar_file,
                  dynamic_ncols=True) as bar, \
                StopSignals(lambda line: bar.write(line, file=bar_file)) as stop:
            orphans = orphan_run_folders(spec.experiments_dir, {rec.run_id for rec in found.records}
                                         | set(found.unreadable_ids()))
            if orphans:
                bar.write(_orphans_line(orphans, options.clean_orphans), file=bar_file)
                if options.clean_orphans:
                    for folder in orphans:
                        shutil.rmtree(folder, ignore_errors=True)
            if found.unreadable:  # their runs cannot be recognised as done: say so before running any again
                bar.write(_unreadable_line(found), file=bar_file)

            def finished(record: RunRecord) -> None:
                source.finished(record)
                outcome[record.status].append(record)
                if record.error is not None and record.status != INTERRUPTED:
                    bar.write(f"run {record.run_id} {record.status}: {record.error.ename}: "
                              f"{record.error.evalue[:200]}", file=bar_file)
                for warning in record.warnings:
                    if warning.startswith(DATA_CHANGED):
                        bar.write(f"warning: run {record.run_id}: {warning}", file=bar_file)
                bar.update()
                bar.set_postfix_str(_counts(outcome) + _eta(search, bar))

            pending: list[RunSpec] = []
            for run, skip in plan:
                if skip:
                    outcome[SKIPPED].append(run)
                    bar.write(f"skip run {run.index + 1} ({run.origin}): {skip}", file=bar_file)
                    bar.update()
                else:
                    pending.append(run)
            source = search if search is not None else ListSource(pending)
            try:
                if source.peek() is not None:
                    _execute(make_executor(options, stop.event), task, source, finished, stop.event)
            finally:
                source.close()
                for note in source.notes:
                    bar.write(f"note: {note}", file=bar_file)
            if spec.refit:  # before the ensembles: an ensemble may name the refit
                run_refit(spec, options, task, stop.event, lambda line: bar.write(line, file=bar_file))
            for line in build_grid_ensembles(spec):
                bar.write(line, file=bar_file)
    finally:
        if bar_file is not sys.stderr:
            bar_file.close()
        write_leaderboard(spec.logs_dir, spec.leaderboard, spec.metric, spec.top_n)
    return outcome


def build_grid_ensembles(spec: GridSpec) -> list[str]:
    """Build the grid's `ensembles:` (`runner.core.ensemble.build_ensemble`), each once per set of members.

    Args:
        spec: the grid (`ensembles`, `metric`, output folders).

    Returns:
        One line per ensemble: built (with its figures), already recorded,
        or why it could not be built (fewer than 2 fitting runs...); a
        problem never fails the sweep.
    """
    from runner.core.ensemble import build_ensemble, choose_members
    from runner.errors import RunnerError

    lines = []
    for i, entry in enumerate(spec.ensembles):
        where = f"ensembles[{i}]"
        try:
            members = [rec.run_id for _, rec in choose_members(entry.runs, entry.top, spec.logs_dir, spec.metric)]
            existing = {rec.config_hash: rec.run_id for rec in read_all(spec.logs_dir).records if rec.kind == "ensemble"}
            digest = sha256_json({"ensemble": sorted(members)})
            if digest in existing:
                lines.append(f"{where}: the ensemble of {', '.join(members)} is recorded already ({existing[digest]})")
                continue
            record = build_ensemble(entry.runs, entry.top, logs_dir=spec.logs_dir,
                                    experiments_dir=spec.experiments_dir, metric=spec.metric)
        except (RunnerError, ValueError) as exc:
            lines.append(f"{where}: not built: {exc}")
            continue
        ranking = parse_metric(spec.metric)
        value = ranking.value(record)
        lines.append(f"{where}: ensemble {record.run_id} of {', '.join(record.members)}: "
                     f"{ranking.column} {value if value is None else round(value, 4)}, "
                     f"test_{ranking.metric} {getattr(record.metrics, ranking.metric):.4f}")
    return lines


REFIT_NAME_SUFFIX = "-refit"
"""A refit of a named run is named `<name>-refit` (so `nbsweep predict <name>-refit` finds it)."""


def refit_params(record: RunRecord) -> dict[str, Any]:
    """The parameters of the refit of `record`: its own, trained on train + validation for its selected epochs.

    The epochs are those its kept weights had trained (`best_epoch`, the last
    epoch for a run that averaged with `swa_epochs`), split as they were: a
    best epoch in the head phase gives `epochs = best_epoch` and no
    fine-tuning (`fine_tune_layers: 0`, `fine_tune_epochs: 0`, `swa_epochs:
    null`); one in the fine-tuning phase gives the head epochs the run ran
    (early stopping included) and `fine_tune_epochs = best_epoch - head
    epochs` (`swa_epochs` at most that many). With nothing left to validate
    on, `train_on_val: true`, `early_stopping_patience: null` and
    `keep_best_checkpoints: null`. A warm start is pinned to the parent and
    checkpoint the run loaded (a `warm_start: best` would be resolved anew),
    and a name gets `REFIT_NAME_SUFFIX`.

    Args:
        record: a completed notebook run.

    Returns:
        Every parameter of the refit (the notebook's parameter names).
    """
    params = dict(record.params)
    head_run = len((record.history.get(HEAD) or {}).get("loss", []))
    best = record.best_epoch or record.epochs_run or 1
    if record.best_phase == FINE_TUNE or best > head_run:
        epochs, fine_tune_epochs = head_run, best - head_run
    else:
        epochs, fine_tune_epochs = best, 0
    params.update(train_on_val=True, early_stopping_patience=None, keep_best_checkpoints=None, epochs=epochs,
                  fine_tune_epochs=fine_tune_epochs)
    if not fine_tune_epochs:
        params.update(fine_tune_layers=0, swa_epochs=None)
    elif params.get("swa_epochs"):
        params["swa_epochs"] = min(params["swa_epochs"], fine_tune_epochs)
    if record.parent_run_id is not None:
        params.update(warm_start=record.parent_run_id, best_of=None,
                      warm_start_checkpoint=record.warm_start.checkpoint if record.warm_start else "best")
    if params.get("name"):
        params["name"] = params["name"][:80 - len(REFIT_NAME_SUFFIX)] + REFIT_NAME_SUFFIX
    return params


def refit_best(spec: GridSpec, found: RecordSet) -> tuple[Optional[RunSpec], str]:
    """The refit run of a grid with `refit: true`: its best configuration again, on train + validation.

    The configuration is the first by the grid's metric on the validation
    split (a `test_` metric ranks by its validation figure here: the refit is
    evaluated on the test split), with repeats the best by mean
    (`runner.records.query.rank_groups`); of it, its best run on the
    validation split gives the parameters and the epochs (`refit_params`).
    Notebook runs only: ensembles and earlier refits never rank.

    Args:
        spec: the grid.
        found: the records of its logs folder.

    Returns:
        `(run, line)`: the refit's `RunSpec` (`refit_of` set) and a line
        saying which run it refits, or `(None, why not)`.
    """
    ranking = parse_metric(parse_metric(spec.metric).metric)  # the validation split's figure
    groups = rank_groups(found.records, ranking, kinds=(RUN,))
    if not groups:
        return None, f"refit: not run: no completed run has {ranking.column}"
    group = groups[0]
    best = group.best
    run, errors = RunBuilder(spec, Path("refit")).build(f"refit of {best.run_id}", refit_params(best))
    if run is None:
        return None, f"refit: not run: the refit of {best.run_id} is not a valid run: {'; '.join(errors)}"
    mean = f" (mean of {group.n} seeds {group.mean:.4f})" if group.n > 1 else ""
    epochs = run.params["epochs"] + (run.params["fine_tune_epochs"] if run.params["fine_tune_layers"] else 0)
    return (replace(run, refit_of=best.run_id),
            f"refit of {best.run_id} ({ranking.column} {ranking.value(best):.4f}{mean}): {epochs} epoch(s) "
            f"on train + validation, the epochs of its best weights (best_epoch {best.best_epoch})")


def run_refit(spec: GridSpec, options: SweepOptions, task: RunTask, stop: threading.Event,
              write: Callable[[str], None]) -> Optional[RunRecord]:
    """Execute the refit of a grid with `refit: true` (`refit_best`), unless recorded already (`plan_runs`).

    Args:
        spec, options, task: the sweep's.
        stop: set on Ctrl-C / SIGTERM.
        write: prints a line for the user: which run is refit and how (before it
            runs), then its test figure or why it did not run or complete. A
            refit that fails never fails the sweep.

    Returns:
        The refit's record, or `None` when it did not run.

    Raises:
        KeyboardInterrupt: the sweep was stopped (the refit is recorded interrupted).
    """
    found = read_all(spec.logs_dir)
    run, line = refit_best(spec, found)
    write(line)
    if run is None:
        return None
    [(_, skip)] = plan_runs([run], found, options)
    if skip:
        write(f"refit: not run again: {skip}")
        return None
    records: list[RunRecord] = []
    _execute(make_executor(options, stop), task, ListSource([run]), records.append, stop)
    if not records:
        return None
    record = records[0]
    if record.status != COMPLETED or record.metrics is None:
        why = f": {record.error.ename}: {record.error.evalue[:200]}" if record.error else ""
        write(f"refit {record.run_id}: {record.status}{why}")
    else:
        metric = parse_metric(spec.metric).metric
        write(f"refit {record.run_id}: test_{metric} {getattr(record.metrics, metric):.4f} (trained on "
              f"{_count(record, 'train')} images; not ranked: no validation split)")
    return record


def _count(record: RunRecord, split: str) -> int:
    return sum((record.data.counts.get(split) or {}).values()) if record.data else 0


def _eta(search, bar) -> str:
    """`, eta 12m` for a search: the predicted seconds of the runs left (the bar's own ETA assumes equal runs)."""
    if search is None or search.proposed is None:  # never ask the study for a run just to show the ETA
        return ""
    predicted = search.predicted_s(search.proposed)
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


def _execute(executor, task: RunTask, source, finished, stop: threading.Event) -> None:
    """Feeds the runs of `source` to `executor` in order, calling `finished(record)` as each run ends.

    `source` is a `ListSource` (a grid) or a `runner.search.SearchSource`
    (`peek`, `pop`). Polls `stop` (set by `StopSignals`) every 0.2 s: once it
    is set nothing more starts, the executor is told to stop its running
    runs, and their records are collected.

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
                # a grid knows whether a run follows; a search may propose one (a spare kernel is discarded)
                more = not isinstance(source, ListSource) or source.peek() is not None
                running[executor.submit(task, run, more=more)] = run
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


def space_table(dims) -> pd.DataFrame:
    """The search space as a table: parameter, kind, values or range."""
    return pd.DataFrame([{"parameter": d.name, "kind": d.kind,
                          "values": (", ".join(map(str, d.choices)) if d.kind == "categorical" else
                                     f"[{d.low}, {d.high}]" + (" log" if d.log else "")
                                     + (f" step {d.step}" if d.step else ""))} for d in dims])


def sweep_command(grid: Path, options: SweepOptions, *, dry_run: bool = False, data_dir: Optional[str] = None,
                  weights_dir: Optional[str] = None, max_runs: int = 1000, yes: bool = False) -> int:
    """Validate, expand and check a grid file, then run its sweep: `nbsweep sweep` once its options are parsed.

    Notes of the expansion and the checks go to stderr. A dry run prints the
    runs as a table; otherwise the runs execute (`run_sweep`) under
    `sweep_lock`, and the outcome is summed up on stdout.

    Args:
        grid: the grid file.
        options: how runs are treated and where they execute (`SweepOptions`);
            `options.verbose` also logs at INFO level.
        dry_run: print the expanded runs and return without running anything.
            Defaults to `False`.
        data_dir: `data_dir` of every run. Defaults to `None` (the grid's).
        weights_dir: `weights_dir` of every run. Defaults to `None` (the grid's).
        max_runs: refuse a grid of more runs than this unless `yes`. Defaults
            to `1000`.
        yes: run a grid larger than `max_runs`. Defaults to `False`.

    Returns:
        The exit code: 0 every run completed or was skipped (or a dry run), 1
        a run failed or timed out, or the sweep stopped on a `FatalError`; 130
        interrupted (Ctrl-C / SIGTERM).

    Raises:
        ConfigError: invalid grid file, parameters or inputs, more runs than
            `max_runs`, `--gpus-per-worker` that does not fit this machine's
            GPUs, or another sweep holds the logs folder; nothing ran.
            The CLI prints it without a traceback and exits 2.
    """
    if options.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    if options.gpus_per_worker is not None and options.executor != "dask":
        worker_gpus(options.workers, options.gpus_per_worker)  # a share that does not fit: refused before anything
    overrides = {k: v for k, v in {"data_dir": data_dir, "weights_dir": weights_dir}.items() if v}
    spec = load_grid(grid)
    if spec.search is not None:
        return _search_command(spec, grid, options, overrides, dry_run)
    runs, notes = expand_runs(spec, grid, overrides=overrides)
    notes += check_runs(spec, runs, grid)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if dry_run:
        with pd.option_context("display.width", 200, "display.max_columns", None, "display.max_colwidth", 40):
            print(runs_table(runs).to_string(index=False))
        print(f"{len(runs)} runs (dry run: nothing executed)")
        return 0
    if len(runs) > max_runs and not yes:
        raise ConfigError(f"{grid}: the grid expands to {len(runs)} runs, more than --max-runs "
                          f"{max_runs}; pass --yes to run them all, or narrow the grid / use sample:")
    outcome = _run_locked(spec, lambda: run_sweep(spec, runs, options))
    if isinstance(outcome, int):
        return outcome
    print(f"{_counts(outcome)}; leaderboard: {spec.leaderboard}")
    return 0 if len(outcome[COMPLETED]) + len(outcome[SKIPPED]) == len(runs) else 1


def _run_locked(spec: GridSpec, sweep: Callable[[], dict]) -> dict | int:
    """`sweep()` under `sweep_lock`: its outcome, or the exit code of a fatal error (1) or an interrupt (130)."""
    try:
        with sweep_lock(spec.logs_dir):
            return sweep()
    except FatalError as exc:
        print(f"error: {exc}; the sweep stopped, every record written so far is intact", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: running runs are recorded as '{INTERRUPTED}' and {spec.leaderboard} is up to date; "
              f"run the same command again to continue with the remaining runs", file=sys.stderr)
        return 130


def _search_command(spec: GridSpec, grid: Path, options: SweepOptions, overrides: dict, dry_run: bool) -> int:
    """`sweep_command` for a grid with a `search:` block: print the space, or run the study's proposals."""
    from runner.search import SearchSource, open_study, parse_space, pruner_config, study_path
    from runner.search.study import STUDY_SUFFIX, legacy_study_path

    builder = RunBuilder(spec, grid, overrides=overrides)
    dims = parse_space(spec, Path(grid), builder)
    first = {d.name: d.bounds()[0] for d in dims}
    corners = [builder.build("grid", {**first, d.name: value})[0] for d in dims for value in d.bounds()]
    for note in check_runs(spec, corners, grid):  # every choice and bound, with the others' first value
        print(f"note: {note}", file=sys.stderr)
    max_epochs = max(r.params.get("epochs", 0) + (r.params.get("fine_tune_epochs", 0) if r.params.get("fine_tune_layers")
                                                  else 0) for r in corners)
    if dry_run:
        with pd.option_context("display.width", 200, "display.max_colwidth", 60):
            print(space_table(dims).to_string(index=False))
        print(f"search: {spec.search.sampler} sampler, {spec.search.n_runs or 'default'} runs, pruner "
              f"{spec.search.pruner} (dry run: nothing executed)")
        return 0

    def search() -> dict:
        journal = study_path(spec.logs_dir, Path(grid), dims)
        repairs: list[str] = []
        study = open_study(spec.search, dims, journal, journal.name.removesuffix(STUDY_SUFFIX), max_epochs,
                           notes=repairs)
        for line in repairs:
            print(f"warning: {line}", file=sys.stderr)
        legacy = legacy_study_path(spec.logs_dir, Path(grid))
        if legacy.is_file() and not study.get_trials(deepcopy=False):
            print(f"note: the study of {grid} is now {journal.name} (named after the grid file's path and search "
                  f"space); {legacy.name} is no longer read: its finished runs come from the run records",
                  file=sys.stderr)
        source = SearchSource(study=study, dims=dims, search=spec.search, builder=builder,
                              found=read_all(spec.logs_dir), ranking=parse_metric(spec.metric), journal=journal,
                              pruner=pruner_config(spec.search, max_epochs))
        for line in source.restore():  # the records are the truth: what the study lacks of them
            print(f"note: {line}", file=sys.stderr)
        return run_sweep(spec, [], options, search=source)

    outcome = _run_locked(spec, search)
    if isinstance(outcome, int):
        return outcome
    print(f"{_counts(outcome)}; leaderboard: {spec.leaderboard}")
    return 0 if not any(outcome[status] for status in (FAILED, TIMEOUT)) else 1
