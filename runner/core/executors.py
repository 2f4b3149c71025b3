"""Where the runs of a sweep execute: in the sweep's process, in local worker processes, or on Dask.

Every executor runs the same task, `run_task` (papermill in a fresh kernel,
html export, atomic record: `runner.core.execute.execute_run`), and hands back
`concurrent.futures`-style futures whose result is the run's `RunRecord`;
`runner.core.loop` feeds them, skips what is done, and writes the leaderboard.

- `InlineExecutor` (`--workers 1`, the default): one run at a time in the
  sweep's own process; Ctrl-C reaches the run directly.
- `LocalExecutor` (`--workers N`): N worker processes from
  `concurrent.futures.ProcessPoolExecutor` (spawned, so no state is shared;
  papermill changes the working folder of its process, so runs need
  processes, not threads). Each kernel talks to its worker over its own
  Unix sockets (no TCP ports to clash) and gets `C // N` TensorFlow threads
  on `C` cores, so N runs do not oversubscribe the CPU.
- `DaskExecutor` (`--executor dask --scheduler tcp://HOST:8786`): one
  `dask.distributed` task per run; see its docstring for the cluster set-up.

Stopping: `stop()` sets a flag every running task polls; the task then
stops its kernel and records the run as interrupted. Pending runs are never
started.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from runner.core.execute import MAX_OUTPUT_BYTES, execute_run
from runner.grid import RunSpec
from runner.records.query import parse_metric
from runner.records import RunRecord


@dataclass(frozen=True)
class RunTask:
    """Everything a worker needs to execute runs of one sweep (picklable).

    Attributes:
        notebook: the base notebook.
        experiments_dir: parent of the run folders.
        logs_dir: folder of the records.
        verbose: stream cell output to the worker's log.
        timeout_s: wall-clock limit per run, seconds, or `None`.
        cell_timeout_s: limit per cell, seconds, or `None`.
        metric: the grid's ranking metric (what `warm_start: best` ranks by).
        max_output_bytes: cap of a saved notebook's stream output, bytes.
    """

    notebook: Path
    experiments_dir: Path
    logs_dir: Path
    verbose: bool = False
    timeout_s: Optional[float] = None
    cell_timeout_s: Optional[float] = None
    metric: str = "weighted_recall"
    max_output_bytes: int = MAX_OUTPUT_BYTES


def run_task(task: RunTask, run: RunSpec, should_stop: Optional[Callable[[], bool]] = None) -> RunRecord:
    """Executes one run (`execute_run`) and returns its record, interrupted ones included."""
    return execute_run(run, task.notebook, task.experiments_dir, task.logs_dir,
                       ranking=parse_metric(task.metric), verbose=task.verbose, timeout_s=task.timeout_s,
                       cell_timeout_s=task.cell_timeout_s, max_output_bytes=task.max_output_bytes,
                       should_stop=should_stop)


def thread_limits(workers: int, cores: Optional[int] = None) -> dict[str, str]:
    """Per-kernel thread caps so `workers` concurrent runs share `cores` without oversubscription.

    Args:
        workers: concurrent runs on this machine, >= 1.
        cores: CPU cores available; defaults to the ones this process may
            use (`os.sched_getaffinity`).

    Returns:
        `{name: value}`: `TF_NUM_INTRAOP_THREADS` and `OMP_NUM_THREADS`
        (TensorFlow's per-op thread pool, OpenMP) `max(1, cores // workers)`,
        and `TF_NUM_INTEROP_THREADS` `1` (ops run one after another within a
        run; the other runs use the other cores).
    """
    limit = str(max(1, (cores or len(os.sched_getaffinity(0))) // workers))
    return {"TF_NUM_INTRAOP_THREADS": limit, "OMP_NUM_THREADS": limit, "TF_NUM_INTEROP_THREADS": "1"}


class InlineExecutor:
    """Runs one run at a time in this process (`--workers 1`).

    Args:
        stop: set on Ctrl-C / SIGTERM (`runner.core.loop.StopSignals`); the
            running run polls it. Defaults to `None` (never stopped).
    """

    slots = 1

    def __init__(self, stop: Optional[threading.Event] = None):
        self._should_stop = stop.is_set if stop is not None else None

    def submit(self, task: RunTask, run: RunSpec) -> concurrent.futures.Future:
        """Executes the run now; returns a finished future holding its record."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(run_task(task, run, should_stop=self._should_stop))
        return future

    def wait_first(self, futures, timeout_s: Optional[float] = None):
        """The finished futures (all of them: `submit` finishes each run)."""
        return set(futures)

    def stop(self) -> None:
        """Nothing to do: the run in this process polls the stop event itself."""

    def close(self) -> None:
        """Nothing to release."""


_stop_event = None  # set in each local worker process by _init_worker


def _init_worker(stop_event, env: dict[str, str]) -> None:
    global _stop_event
    _stop_event = stop_event
    os.environ.update(env)  # inherited by every kernel this worker starts
    # Ctrl-C reaches the whole process group; the sweep decides and sets stop_event.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _local_task(task: RunTask, run: RunSpec) -> RunRecord:
    return run_task(task, run, should_stop=_stop_event.is_set)


class LocalExecutor:
    """`workers` local worker processes (`--workers N`); see the module docstring.

    Args:
        workers: concurrent runs, >= 2.
    """

    def __init__(self, workers: int):
        context = multiprocessing.get_context("spawn")
        self.slots = workers
        self._stop = context.Event()
        self._pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker,
            initargs=(self._stop, thread_limits(workers)))

    def submit(self, task: RunTask, run: RunSpec) -> concurrent.futures.Future:
        """Queues the run on a worker; the future's result is its `RunRecord`."""
        return self._pool.submit(_local_task, task, run)

    def wait_first(self, futures, timeout_s: Optional[float] = None):
        """Blocks until one of `futures` is done or `timeout_s` passed; returns the done ones."""
        return concurrent.futures.wait(futures, timeout=timeout_s,
                                       return_when=concurrent.futures.FIRST_COMPLETED).done

    def stop(self) -> None:
        """Asks every running run to stop and record itself as interrupted."""
        self._stop.set()

    def close(self) -> None:
        """Waits for the workers to exit, dropping runs never started."""
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """One `dask.distributed` task per run (`--executor dask --scheduler tcp://HOST:8786`).

    Each task runs `run_task` on a worker: papermill starts a kernel there,
    and the worker writes the run folder and the record itself, atomically,
    into the sweep's `experiments/` and `logs/` folders, so every worker
    must see those folders (and the project, data and weights) at the same
    paths: a shared filesystem, as Hydra's submitit launcher and Guild's
    Dask plugin require. Start each worker from the project with one thread
    per worker process (papermill changes its process's working folder):
    `PYTHONPATH=$PWD dask worker tcp://HOST:8786 --nworkers N --nthreads 1`.
    A task caps its kernel's threads to the host's cores divided by the
    worker processes on that host (`thread_limits`).

    The sweep never queues more tasks than the cluster has worker threads,
    so Ctrl-C leaves nothing queued: it sets a `distributed.Event` that
    running tasks poll (their runs are recorded as interrupted), and a task
    that starts after it returns without running.

    Args:
        scheduler: the scheduler's address (`tcp://HOST:8786`).

    Raises:
        ConfigError: no scheduler answers at that address within 30 s.
    """

    def __init__(self, scheduler: str):
        from dask.distributed import Client, Event

        from runner.errors import ConfigError

        try:
            self.client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"--scheduler {scheduler}: no Dask scheduler answered ({exc}); start one "
                              f"with `dask scheduler` and workers with `dask worker {scheduler}`") from None
        self._event_name = f"nbsweep-stop-{uuid.uuid4().hex}"
        self._stop = Event(self._event_name, client=self.client)

    @property
    def slots(self) -> int:
        """Runs at once: the cluster's worker threads now (at least 1, so a sweep waits for workers)."""
        return max(1, sum(self.client.nthreads().values()))

    def submit(self, task: RunTask, run: RunSpec):
        """Submits the run as a task; the future's result is its `RunRecord`, or `None` if stopped first."""
        return self.client.submit(_dask_task, task, run, self._event_name, pure=False,
                                  key=f"nbsweep-run-{run.index + 1}-{run.config_hash[:8]}-{uuid.uuid4().hex[:6]}")

    def wait_first(self, futures, timeout_s: Optional[float] = None):
        """Blocks until one of `futures` is done or `timeout_s` passed; returns the done ones."""
        from dask.distributed import wait

        if not futures:
            return set()
        try:
            return wait(futures, timeout=timeout_s, return_when="FIRST_COMPLETED").done
        except TimeoutError:
            return set()

    def stop(self) -> None:
        """Asks every running task to stop and record its run as interrupted."""
        self._stop.set()

    def close(self) -> None:
        """Disconnects from the scheduler (the cluster keeps running)."""
        self.client.close()


def _dask_task(task: RunTask, run: RunSpec, event_name: str) -> Optional[RunRecord]:
    from dask.distributed import Event, get_client, get_worker
    from distributed.comm import get_address_host

    stop = Event(event_name)
    if stop.is_set():
        return None
    host = get_address_host(get_worker().address)
    workers = get_client().scheduler_info(n_workers=-1)["workers"].values()
    os.environ.update(thread_limits(max(1, sum(info["host"] == host for info in workers))))
    checked = {"at": 0.0, "stop": False}

    def should_stop() -> bool:  # asks the scheduler at most every 2 s
        if time.monotonic() - checked["at"] > 2:
            checked.update(at=time.monotonic(), stop=stop.is_set())
        return checked["stop"]

    return run_task(task, run, should_stop=should_stop)
