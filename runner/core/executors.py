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

Kernels started ahead (`RunTask.prestart`, `runner.core.kernels`): each
process that executes runs keeps its next run's kernel ready while a run
executes (the sweep's process inline, each local worker, each Dask worker
process); `close()` kills the ones no run took, and a local worker kills its
own when it exits.

GPUs (`--workers N` on a machine with GPUs, `--gpus-per-worker`): each
worker's kernels see only the worker's GPU(s) through `CUDA_VISIBLE_DEVICES`,
with TensorFlow's memory growth on (`assign_gpus`, `gpu_environment`).
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import multiprocessing.util
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from models.names import DEFAULT_METRIC
from runner.core.execute import MAX_OUTPUT_BYTES, execute_run
from runner.core.warm_start import warm_start_for
from runner.core.kernels import discard_next_kernel
from runner.errors import ConfigError
from runner.grid import RunSpec
from runner.records.environment import GPU_ENV
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
        prestart: start each run's kernel while the run before it executes
            (`--prestart`, the default of a sweep; `runner.core.kernels`).
    """

    notebook: Path
    experiments_dir: Path
    logs_dir: Path
    verbose: bool = False
    timeout_s: Optional[float] = None
    cell_timeout_s: Optional[float] = None
    metric: str = DEFAULT_METRIC
    max_output_bytes: int = MAX_OUTPUT_BYTES
    prestart: bool = False


def run_task(task: RunTask, run: RunSpec, should_stop: Optional[Callable[[], bool]] = None,
             more: bool = False) -> RunRecord:
    """Executes one run and returns its record, interrupted ones included: its warm start resolved as it
    starts (`runner.core.warm_start.warm_start_for`), then `execute_run`.

    `more`: runs may follow, so with `task.prestart` the next kernel starts ahead while this one runs.
    """
    warm_start, refusal = warm_start_for(run.params, task.logs_dir, ranking=parse_metric(task.metric))
    return execute_run(run, task.notebook, task.experiments_dir, task.logs_dir, warm_start=warm_start,
                       refusal=refusal, verbose=task.verbose, timeout_s=task.timeout_s,
                       cell_timeout_s=task.cell_timeout_s, max_output_bytes=task.max_output_bytes,
                       should_stop=should_stop, prestart=task.prestart, prepare_next=task.prestart and more)


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


GPU_SHARES = ("a whole number of GPUs per worker (1, 2, ...) or a share of one, 1/k for k workers per GPU "
              "(0.5, 0.25, 0.2, ...)")
"""The values `--gpus-per-worker` takes, as its error messages say them."""


def discover_gpus() -> list[str]:
    """The GPUs this machine's runs may use, found without importing TensorFlow.

    Returns:
        The ids in `CUDA_VISIBLE_DEVICES` when it is set (up to the first
        empty or `-1` entry, as CUDA reads it); else the GPUs `nvidia-smi -L`
        lists, by index (by MIG device UUID for a GPU split into MIG
        devices); else (no `nvidia-smi`, or it fails) none.
    """
    if GPU_ENV[0] in os.environ:
        ids = []
        for item in os.environ[GPU_ENV[0]].split(","):
            if item.strip() in ("", "-1"):
                break
            ids.append(item.strip())
        return ids
    command = shutil.which("nvidia-smi")
    if command is None:
        return []
    try:
        listed = subprocess.run([command, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if listed.returncode != 0:
        return []
    return parse_gpu_list(listed.stdout)


def parse_gpu_list(text: str) -> list[str]:
    """The device ids in `nvidia-smi -L`'s output: `GPU <index>:` lines, or the `MIG-...` UUIDs listed under a GPU."""
    ids: list[str] = []
    for line in text.splitlines():
        if gpu := re.match(r"GPU (\d+):", line):
            ids.append(gpu.group(1))
        elif (mig := re.search(r"\(UUID: (MIG-[^)\s]+)\)", line)) and ids:
            if not ids[-1].startswith("MIG-"):
                ids.pop()  # the GPU is split: its MIG devices are what CUDA_VISIBLE_DEVICES names
            ids.append(mig.group(1))
    return ids


def assign_gpus(workers: int, gpus: Sequence[str], per_worker: Optional[float] = None) -> list[list[str]]:
    """The GPUs each of `workers` workers gets (a pure function of the device list).

    Args:
        workers: worker processes, >= 1.
        gpus: the device ids (`discover_gpus`).
        per_worker: `--gpus-per-worker`: a whole number n (each worker n
            GPUs of its own) or 1/k (k workers share each GPU, in order);
            `None`: one GPU each where there are enough, else the workers
            take the GPUs in turn (worker i: GPU i mod count). Defaults to `None`.

    Returns:
        One list of device ids per worker; empty lists without GPUs (and
        without `per_worker`).

    Raises:
        ConfigError: `per_worker` is neither a whole number nor 1/k, the
            machine has no GPU, or the workers need more GPUs than it has;
            the message names `--gpus-per-worker`, its values and what fits.
    """
    if per_worker is None:
        return [[gpus[i % len(gpus)]] if gpus else [] for i in range(workers)]
    k = round(1 / per_worker) if 0 < per_worker < 1 else 0
    whole = per_worker >= 1 and float(per_worker).is_integer()
    if not whole and not (k >= 2 and abs(1 / per_worker - k) < 0.01):
        raise ConfigError(f"--gpus-per-worker {per_worker:g}: expected {GPU_SHARES}")
    if not gpus:
        raise ConfigError(f"--gpus-per-worker {per_worker:g}: this machine has no GPU (nvidia-smi -L lists none, or "
                          f"{GPU_ENV[0]} is empty); leave the option out to run on the CPU")
    needed = workers * int(per_worker) if whole else math.ceil(workers / k)
    if needed > len(gpus):
        fits = len(gpus) // workers if workers <= len(gpus) else 1 / math.ceil(workers / len(gpus))
        most = len(gpus) // int(per_worker) if whole else len(gpus) * k
        raise ConfigError(f"--gpus-per-worker {per_worker:g} with --workers {workers} needs {needed} GPUs; this machine "
                          f"has {len(gpus)} ({', '.join(gpus)}): use --gpus-per-worker {fits:g}"
                          + (f" or --workers {most}" if most else "") + f" (allowed values: {GPU_SHARES})")
    if whole:
        n = int(per_worker)
        return [list(gpus[i * n:(i + 1) * n]) for i in range(workers)]
    return [[gpus[i // k]] for i in range(workers)]


def gpu_environment(devices: Sequence[str]) -> dict[str, str]:
    """What a worker's kernels inherit to see only `devices`, each kernel's TensorFlow taking GPU memory
    as it needs it (so kernels sharing a GPU do not each reserve all of it); `{}` for no devices."""
    if not devices:
        return {}
    return {GPU_ENV[0]: ",".join(devices), GPU_ENV[1]: "true"}


def worker_gpus(workers: int, per_worker: Optional[float] = None) -> list[list[str]]:
    """`assign_gpus` on this machine's GPUs (`discover_gpus`); one worker without `per_worker` gets none
    (nothing changes: its kernels see what the sweep sees)."""
    if workers == 1 and per_worker is None:
        return [[]]
    return assign_gpus(workers, discover_gpus(), per_worker)


class InlineExecutor:
    """Runs one run at a time in this process (`--workers 1`).

    Args:
        stop: set on Ctrl-C / SIGTERM (`runner.core.loop.StopSignals`); the
            running run polls it. Defaults to `None` (never stopped).
        env: set in this process's environment until `close()`, for its
            kernels (`gpu_environment`). Defaults to `None`.
    """

    slots = 1

    def __init__(self, stop: Optional[threading.Event] = None, env: Optional[dict[str, str]] = None):
        self._should_stop = stop.is_set if stop is not None else None
        self._saved_env = {name: os.environ.get(name) for name in env or {}}
        os.environ.update(env or {})

    def submit(self, task: RunTask, run: RunSpec, more: bool = False) -> concurrent.futures.Future:
        """Executes the run now; returns a finished future holding its record (`more`: see `run_task`)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(run_task(task, run, should_stop=self._should_stop, more=more))
        return future

    def wait_first(self, futures, timeout_s: Optional[float] = None):
        """The finished futures (all of them: `submit` finishes each run)."""
        return set(futures)

    def stop(self) -> None:
        """Nothing to do: the run in this process polls the stop event itself."""

    def close(self) -> None:
        """Kills the kernel started ahead that no run took; restores the environment."""
        discard_next_kernel()
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_stop_event = None  # set in each local worker process by _init_worker


def _init_worker(stop_event, envs, caps: dict[str, str]) -> None:
    global _stop_event
    _stop_event = stop_event
    try:  # this worker's own: thread caps, and its GPU(s)
        env = envs.get(timeout=10)
    except Exception:  # a replaced worker (none is, today): the caps without GPUs
        env = caps
    os.environ.update(env)  # inherited by every kernel this worker starts
    # Ctrl-C reaches the whole process group; the sweep decides and sets stop_event.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the kernel started ahead that no run took dies with the worker (at pool shutdown)
    multiprocessing.util.Finalize(None, discard_next_kernel, exitpriority=10)


def _local_task(task: RunTask, run: RunSpec, more: bool = False) -> RunRecord:
    return run_task(task, run, should_stop=_stop_event.is_set, more=more)


class LocalExecutor:
    """`workers` local worker processes (`--workers N`); see the module docstring.

    Args:
        workers: concurrent runs, >= 2.
        gpus: the GPU ids of each worker (`assign_gpus`), or `None`: none.
    """

    def __init__(self, workers: int, gpus: Optional[list[list[str]]] = None):
        context = multiprocessing.get_context("spawn")
        self.slots = workers
        self._stop = context.Event()
        envs = context.Queue()
        for devices in gpus or [[]] * workers:
            envs.put({**thread_limits(workers), **gpu_environment(devices)})
        self._pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker,
            initargs=(self._stop, envs, thread_limits(workers)))

    def submit(self, task: RunTask, run: RunSpec, more: bool = False) -> concurrent.futures.Future:
        """Queues the run on a worker; the future's result is its `RunRecord` (`more`: see `run_task`)."""
        return self._pool.submit(_local_task, task, run, more)

    def wait_first(self, futures, timeout_s: Optional[float] = None):
        """Blocks until one of `futures` is done or `timeout_s` passed; returns the done ones."""
        return concurrent.futures.wait(futures, timeout=timeout_s,
                                       return_when=concurrent.futures.FIRST_COMPLETED).done

    def stop(self) -> None:
        """Asks every running run to stop and record itself as interrupted."""
        self._stop.set()

    def close(self) -> None:
        """Waits for the workers to exit (killing their kernels started ahead), dropping runs never started."""
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

    def submit(self, task: RunTask, run: RunSpec, more: bool = False):
        """Submits the run as a task; the future's result is its `RunRecord`, or `None` if stopped first
        (`more`: see `run_task`)."""
        return self.client.submit(_dask_task, task, run, self._event_name, more, pure=False,
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
        """Kills the workers' kernels started ahead that no run took; disconnects (the cluster keeps running)."""
        try:
            self.client.run(discard_next_kernel, on_error="ignore")
        finally:
            self.client.close()


def _dask_task(task: RunTask, run: RunSpec, event_name: str, more: bool = False) -> Optional[RunRecord]:
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

    return run_task(task, run, should_stop=should_stop, more=more)
