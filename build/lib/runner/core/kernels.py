"""Each run's kernel, and the next one started ahead: while run k executes, run k+1's kernel starts and imports.

Every run still gets a fresh kernel of its own, shut down (its process group
killed) after its run. What changes with `--prestart` (the default) is when it
starts: each process that executes runs (the sweep's own with `--workers 1`,
each worker process with `--workers N`, each Dask worker) keeps at most one
kernel started ahead, `KernelAhead`, with the same command, environment,
thread caps, GPUs and Unix-socket transport as a kernel started for a run. It
starts in the experiments folder (the next run's folder does not exist yet)
and imports what the run's notebook imports first (`warm_up_modules`: with
`models`, TensorFlow and Keras), in a thread of its own at nice
`WARM_UP_NICE`, so the running run keeps the cores. When its run starts,
`KernelAhead.take` moves it into the run folder, sends its stderr to the
run's `kernel.log` (the warm-up's lines first) and waits for the imports;
both calls are silent (no execution count, no output, no name left in the
notebook's namespace).

papermill then uses that kernel as it is: `papermill.execute_notebook(km=...)`
hands the manager to nbclient (`PapermillNotebookClient.__init__` passes
`km=km` to `NotebookClient`), whose `async_setup_kernel` starts a kernel only
`if not self.km.has_kernel` (true once a process runs:
`KernelManager.has_kernel`) and, not owning the manager (`owns_km = km is
None`), never shuts it down; `runner.core.execute` kills it after the run,
as it kills every run's kernel.

A kernel started ahead whose run never comes (the sweep ends, a search's
budget is spent, the next run is refused or skipped, Ctrl-C) is killed by
`discard_next_kernel`: the executors call it when they close (and local
worker processes when they exit), a stopped run calls it, and so does this
process at exit.
"""

from __future__ import annotations

import ast
import asyncio
import atexit
import contextlib
import json
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from runner import PROJECT_ROOT
from runner.records.environment import GPU_ENV, THREAD_LIMIT_ENV

KERNEL_NAME = "python3"
KERNEL_ARGUMENTS = ["--IPKernelApp.capture_fd_output=False"]
"""ipykernel 6+ copies what the kernel's C++ libraries write to fd 1/2 (TensorFlow's start-up
logs) into the notebook; without that copy they go to the kernel's real stderr, `kernel.log`."""
HISTORY_ARGUMENT = "--HistoryManager.hist_file=:memory:"
"""What nbclient adds to the kernel command when it starts an ipykernel itself (`ipython_hist_file`)."""
WARM_UP_NICE = 10
"""Nice value of the thread that imports ahead (CPU time ~1/10 of a run's threads while they are busy)."""
KERNEL_ENV = ("PYTHONPATH", *THREAD_LIMIT_ENV, *GPU_ENV)
"""The environment variables a kernel started ahead must share with the run that takes it."""
WARM_UP_TIMEOUT_S = 600
"""Seconds a run waits for its kernel started ahead (its imports, on a busy machine) before starting its own."""
AHEAD_LOG = "ahead.log"
"""The stderr of a kernel started ahead, in its socket folder until its run takes it."""

_WARM_UP = """\
def _nbsweep_warm_up(modules, nice):
    import importlib, os, sys, threading

    def imports():
        try:  # this thread only (Linux): the threads it starts inherit it
            me = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + nice))
        except (AttributeError, OSError):
            pass
        for name in modules:
            try:
                importlib.import_module(name)
            except BaseException:
                pass

    thread = threading.Thread(target=imports, name="nbsweep-warm-up", daemon=True)
    thread.start()
    sys._nbsweep_warm_up = thread
_nbsweep_warm_up({modules!r}, {nice!r})
del _nbsweep_warm_up
"""

_TAKE = """\
def _nbsweep_take(run_dir, log, ahead_log):
    import os, sys
    def renice():  # the warm-up thread and the threads it started (numpy's BLAS pool) back to the
        try:       # main thread's priority, where allowed (root, or a raised RLIMIT_NICE)
            base = os.getpriority(os.PRIO_PROCESS, 0)
            for task in os.listdir("/proc/self/task"):
                try:
                    if os.getpriority(os.PRIO_PROCESS, int(task)) > base:
                        os.setpriority(os.PRIO_PROCESS, int(task), base)
                except OSError:
                    pass
        except (AttributeError, OSError):
            pass

    thread = getattr(sys, "_nbsweep_warm_up", None)
    if thread is not None:
        renice()  # on the critical path now
        thread.join()
        del sys._nbsweep_warm_up
        renice()
    os.chdir(run_dir)
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            with open(ahead_log, "rb") as earlier:
                os.write(fd, earlier.read())
        except OSError:
            pass
        os.dup2(fd, 2)
        os.close(fd)
_nbsweep_take({run_dir!r}, {log!r}, {ahead_log!r})
del _nbsweep_take
"""


class KernelNotReady(Exception):
    """A kernel did not answer (it died, raised, or `should_stop` said stop) before it was ready."""


def kernel_environment() -> None:
    """Let kernels import `models`/`runner`: the project root on `PYTHONPATH`, which kernels inherit."""
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(PROJECT_ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, paths)])


class Kernel:
    """One run's kernel: its manager (`AsyncKernelManager`, Unix sockets in a temporary folder of its own).

    papermill starts it when nothing else did (`launch` not called); the
    connection file lives in the socket folder and goes with it (`remove`).
    """

    def __init__(self):
        from jupyter_client.manager import AsyncKernelManager

        self.sockets = Path(tempfile.mkdtemp(prefix="nbsweep-kernel-"))  # short: Unix socket paths are limited
        self.manager = AsyncKernelManager(kernel_name=KERNEL_NAME, transport="ipc", ip=str(self.sockets / "kernel"),
                                          connection_file=str(self.sockets / "kernel.json"))

    @property
    def pid(self) -> Optional[int]:
        """The kernel process's id (its process group's too), or `None` before it started."""
        provisioner = getattr(self.manager, "provisioner", None)
        return getattr(provisioner, "pid", None) if provisioner is not None else None

    def launch(self, cwd: Path, stderr: Optional[Path]) -> None:
        """Starts the kernel process now (as nbclient would: same command and arguments), without waiting for it.

        Args:
            cwd: its working folder.
            stderr: where its stderr goes, or `None`: this process's fd 2.
        """
        with contextlib.ExitStack() as stack:
            log = stack.enter_context(open(stderr, "ab")) if stderr is not None else None
            asyncio.run(self.manager.start_kernel(extra_arguments=[*KERNEL_ARGUMENTS, HISTORY_ARGUMENT],
                                                  cwd=str(cwd), stderr=log))

    def execute(self, code: str, timeout_s: float, should_stop: Optional[Callable[[], bool]] = None) -> None:
        """Runs `code` silently (no execution count, no output) and waits for its reply.

        Raises:
            KernelNotReady: the kernel died, the code raised, `timeout_s`
                passed, or `should_stop()` became true (polled every 0.1 s).
        """
        from jupyter_client.blocking import BlockingKernelClient

        client = BlockingKernelClient()
        client.load_connection_info(self.manager.get_connection_info())
        client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
        try:
            msg_id = client.execute(code, silent=True, store_history=False)
            deadline = time.monotonic() + timeout_s
            while True:
                if should_stop is not None and should_stop():
                    raise KernelNotReady("stopped")
                if not self.alive():
                    raise KernelNotReady("the kernel died before it was ready")
                if time.monotonic() > deadline:
                    raise KernelNotReady(f"the kernel did not answer within {timeout_s:g} s")
                try:
                    reply = client.get_shell_msg(timeout=0.1)
                except queue.Empty:
                    continue
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
            if reply["content"].get("status") != "ok":
                raise KernelNotReady(f"{reply['content'].get('ename')}: {reply['content'].get('evalue')}")
        finally:  # the shell channel only (stop_channels would open the others to close them)
            client.shell_channel.stop()
            client.context.destroy(linger=0)  # the client's own context (`_created_context`)

    def alive(self) -> bool:
        """Whether the kernel process runs."""
        provisioner = getattr(self.manager, "provisioner", None)
        process = getattr(provisioner, "process", None)
        return process is not None and process.poll() is None

    def kill(self) -> None:
        """Kills the kernel's process group (it runs in a session of its own), if it started."""
        pid = self.pid
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(Exception):  # reap it: no zombie left behind
                self.manager.provisioner.process.wait(timeout=5)

    def remove(self) -> None:
        """Deletes the socket folder (sockets, connection file, the warm-up's log)."""
        shutil.rmtree(self.sockets, ignore_errors=True)


def warm_up_modules(notebook: Path) -> tuple[str, ...]:
    """The modules a run of `notebook` imports first, for a kernel started ahead to import.

    The notebook's own top-level imports (in order, each once); where it
    imports the `models` package itself, also `tensorflow` and `keras` and
    the submodules of `models` that its `models.<name>` calls load on first
    use (`models.build_model` -> `models.build`). An unreadable notebook
    gives `()`: its run fails in papermill with papermill's message.

    Args:
        notebook: the base notebook.

    Returns:
        Module names, e.g. `("pandas", "IPython.display", "models", ..., "tensorflow", "keras", "models.build")`.
    """
    import models

    try:
        cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        return ()
    names: list[str] = []
    lazy_of = {**{name: f"models.{module}" for name, module in getattr(models, "_MODULE_OF", {}).items()},
               **{module: f"models.{module}" for module in getattr(models, "_LAZY", {})}}
    used: list[str] = []
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        try:
            tree = ast.parse("".join(source) if isinstance(source, list) else source)
        except SyntaxError:  # IPython magics, shell lines: not ours to read
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.append(node.module)
        used += [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                 and isinstance(node.value, ast.Name) and node.value.id == "models" and node.attr in lazy_of]
    if "models" in names:
        names += ["tensorflow", "keras", *(lazy_of[name] for name in used)]
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class KernelSetup:
    """What a kernel started ahead shares with the run that takes it; another setup discards it.

    Attributes:
        start_dir: its working folder until a run takes it (the experiments folder).
        log: whether its stderr goes to the run's `kernel.log` (else to this process's stderr, `--verbose`).
        modules: what it imports ahead (`warm_up_modules`).
        env: the `KERNEL_ENV` variables it inherits (thread caps, GPUs, `PYTHONPATH`).
    """

    start_dir: Path
    log: bool
    modules: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, experiments_dir: Path, notebook: Path, verbose: bool) -> "KernelSetup":
        """The setup of a run of `notebook` in `experiments_dir` now (this process's environment)."""
        return cls(Path(experiments_dir), not verbose, warm_up_modules(notebook),
                   tuple((name, os.environ[name]) for name in KERNEL_ENV if name in os.environ))


class KernelAhead:
    """A kernel started for a run not assigned yet: launched and warmed up in a background thread.

    Args:
        setup: its environment, folder, log and imports.
        start_timeout_s: seconds it may take to answer once launched.
    """

    def __init__(self, setup: KernelSetup, start_timeout_s: float):
        self.setup, self.kernel = setup, Kernel()
        self._start_timeout_s = start_timeout_s
        self._cancelled = threading.Event()
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._start, name="nbsweep-kernel-ahead", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self.setup.start_dir.mkdir(parents=True, exist_ok=True)
            self.kernel.launch(self.setup.start_dir, self.kernel.sockets / AHEAD_LOG if self.setup.log else None)
            if not self._cancelled.is_set():
                self.kernel.execute(_WARM_UP.format(modules=self.setup.modules, nice=WARM_UP_NICE),
                                    self._start_timeout_s, self._cancelled.is_set)
        except BaseException as exc:  # handed to take()
            self._error = exc
        finally:
            self._ready.set()

    def take(self, run_dir: Path, log: Optional[Path], timeout_s: float,
             should_stop: Optional[Callable[[], bool]] = None) -> Kernel:
        """Hands the kernel to a run: its folder, its `kernel.log`, its imports done.

        Args:
            run_dir: the run's folder: the kernel's working folder from now on.
            log: the run's `kernel.log` (the warm-up's stderr is copied to its
                start), or `None` to leave stderr where it is.
            timeout_s: seconds to wait for the start and the imports.
            should_stop: polled while waiting; true raises `KeyboardInterrupt`.

        Raises:
            KernelNotReady: it failed to start, died, or did not answer in time.
            KeyboardInterrupt: `should_stop()` became true.
        """
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.1):
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt("the sweep asked this run to stop")
            if time.monotonic() > deadline:
                raise KernelNotReady(f"the kernel started ahead did not answer within {timeout_s:g} s")
        if self._error is not None:
            raise KernelNotReady(f"the kernel started ahead failed: {type(self._error).__name__}: {self._error}")
        code = _TAKE.format(run_dir=str(run_dir), log=None if log is None else str(log),
                            ahead_log=str(self.kernel.sockets / AHEAD_LOG))
        try:
            self.kernel.execute(code, max(1.0, deadline - time.monotonic()), should_stop)
        except KernelNotReady:
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt("the sweep asked this run to stop") from None
            raise
        return self.kernel

    def discard(self, grace_s: float = 30) -> None:
        """Kills the kernel (also while it starts: until the starting thread ends) and removes its sockets."""
        self._cancelled.set()
        deadline = time.monotonic() + grace_s
        while not self._ready.wait(0.05) and time.monotonic() < deadline:
            self.kernel.kill()
        self.kernel.kill()
        self.kernel.remove()


_lock = threading.Lock()
_ahead: Optional[KernelAhead] = None


def start_next_kernel(setup: KernelSetup, start_timeout_s: float) -> None:
    """Starts this process's next kernel in the background, unless one with the same setup is there already."""
    global _ahead
    with _lock:
        if _ahead is not None and _ahead.setup == setup:
            return
        previous, _ahead = _ahead, KernelAhead(setup, start_timeout_s)
    if previous is not None:
        previous.discard()


def take_next_kernel(setup: KernelSetup) -> Optional[KernelAhead]:
    """This process's kernel started ahead, now the caller's, if its setup is `setup`; else `None`
    (one of another setup is discarded)."""
    global _ahead
    with _lock:
        ahead, _ahead = _ahead, None
    if ahead is not None and ahead.setup != setup:
        ahead.discard()
        return None
    return ahead


def discard_next_kernel() -> None:
    """Kills this process's kernel started ahead, if any (its run will not come)."""
    global _ahead
    with _lock:
        ahead, _ahead = _ahead, None
    if ahead is not None:
        ahead.discard()


atexit.register(discard_next_kernel)
