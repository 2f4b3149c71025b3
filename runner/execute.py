"""Execute one run: papermill, then nbconvert, then the record.

`execute_run` reads as its steps, as papermill's `execute_notebook` does:
make the run folder, execute the notebook with the run's parameters, export
the executed notebook to html, merge the notebook's `result.json`, and write
the record. A notebook that raises still gets its executed `.ipynb` (with
papermill's error banner at the failing cell), its `.html` and a `failed`
record; nothing is raised for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from jupyter_client.manager import AsyncKernelManager

from runner import PROJECT_ROOT
from runner.errors import RunnerError
from runner.grid import RunSpec
from runner.lineage import resolve_parent_id
from runner.records import (
    COMPLETED,
    FAILED,
    INTERRUPTED,
    TIMEOUT,
    RESULT_FILE,
    RunRecord,
    collect_environment,
    sha256_file,
    write_record,
)

KERNEL_NAME = "python3"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def make_run_id(config_hash: str, experiments_dir: Path, now: Optional[datetime] = None) -> str:
    """A unique, sortable, readable run id: `YYYYmmdd-HHMMSS-<hash8>` (UTC).

    Args:
        config_hash: the run's parameter hash (hex).
        experiments_dir: where run folders live; a taken id gets `-2`, `-3`...
        now: the start time. Defaults to the current UTC time.

    Returns:
        The run id, whose folder `experiments_dir/<run_id>` does not exist yet.
    """
    now = now or datetime.now(timezone.utc)
    run_id = f"{now:%Y%m%d-%H%M%S}-{config_hash[:8]}"
    candidate, n = run_id, 1
    while (experiments_dir / candidate).exists():
        n += 1
        candidate = f"{run_id}-{n}"
    return candidate


def _kernel_environment() -> None:
    """Let the kernel import `models`/`runner` and keep TensorFlow's C++ logs quiet."""
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(PROJECT_ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, paths)])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _stderr_to(path: Optional[Path]):
    """Send file descriptor 2 to `path` (the kernel inherits it), or leave it when `None`.

    The kernel's own stderr (TensorFlow's C++ start-up logs, ipykernel warnings)
    then lands in the run folder instead of the sweep's terminal.
    """
    if path is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class _RunTimeout(Exception):
    """The run exceeded its wall-clock limit."""


class _NotebookThread(threading.Thread):
    """Runs `papermill.execute_notebook` in a worker thread.

    In the main thread nbclient installs its own SIGINT/SIGTERM handlers on
    the event loop, which neither stop a kernel it does not own nor reach the
    sweep: Ctrl-C was swallowed and the run went on. In a worker thread
    nbclient cannot install them, so the main thread keeps the sweep's
    handlers, waits here, and stops the kernel itself on an interrupt or a
    timeout.
    """

    def __init__(self, **papermill_kwargs):
        super().__init__(name="papermill", daemon=True)
        self.kwargs, self.error = papermill_kwargs, None
        # Waited on instead of join(): a join interrupted by Ctrl-C can leave
        # is_alive() wrongly False on CPython < 3.13.
        self.done = threading.Event()

    def run(self) -> None:
        import papermill

        try:
            papermill.execute_notebook(**self.kwargs)
        except BaseException as exc:  # handed to the main thread by wait()
            self.error = exc
        finally:
            self.done.set()

    def wait(self, timeout_s: Optional[float], should_stop: Optional[Callable[[], bool]] = None
             ) -> Optional[BaseException]:
        """Wait for the notebook; its exception, or `None` when it succeeded.

        Raises:
            _RunTimeout: `timeout_s` seconds passed first.
            KeyboardInterrupt: Ctrl-C / SIGTERM in the main thread, or
                `should_stop()` returned true (polled every 0.2 s).
        """
        deadline = None if not timeout_s else time.monotonic() + timeout_s
        while not self.done.wait(0.2):
            if deadline is not None and time.monotonic() > deadline:
                raise _RunTimeout(f"the run exceeded --timeout {timeout_s:g} s")
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt("the sweep asked this run to stop")
        return self.error


def _stop_kernel(kernel: AsyncKernelManager, thread: _NotebookThread, grace_s: float = 60) -> None:
    """Kill the run's kernel (its whole process group) if it is still there, then let the worker end.

    The kernel runs in a session of its own (jupyter_client starts it with
    `start_new_session`), so `killpg` reaches it and whatever it started.
    """
    pid = getattr(kernel.provisioner, "pid", None) if kernel.has_kernel else None
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    thread.done.wait(grace_s)  # nbclient notices the dead kernel and returns


def _status_of(exc: Exception) -> str:
    from nbclient.exceptions import CellTimeoutError

    return TIMEOUT if isinstance(exc, CellTimeoutError) else FAILED


def _error(ename: str, evalue: str, traceback_text: str = "", cell_index: Optional[int] = None) -> dict[str, Any]:
    """The `error` of a record: exception name and message, traceback, failing cell."""
    return {"ename": ename, "evalue": evalue, "traceback": traceback_text, "cell_index": cell_index}


def _error_from(exc: BaseException) -> dict[str, Any]:
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return _error(exc.ename, _ANSI.sub("", str(exc.evalue)), _ANSI.sub("", "\n".join(exc.traceback)),
                      exc.cell_index)
    return _error(type(exc).__name__, f"kernel died: {exc}" if isinstance(exc, DeadKernelError) else str(exc),
                  "".join(traceback.format_exception(exc)))


def export_html(notebook_path: Path) -> Path:
    """Convert an executed notebook to a standalone html file beside it.

    Args:
        notebook_path: an `.ipynb` file.

    Returns:
        The `.html` path (same name, other suffix).

    Raises:
        Exception: whatever nbconvert raises for an unreadable notebook.
    """
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook_path, as_version=4))
    html_path = notebook_path.with_suffix(".html")
    html_path.write_text(body, encoding="utf-8")
    return html_path


def execute_run(
    run: RunSpec,
    notebook: Path,
    experiments_dir: Path,
    logs_dir: Path,
    *,
    verbose: bool = False,
    start_timeout_s: float = 120,
    timeout_s: Optional[float] = None,
    cell_timeout_s: Optional[float] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> RunRecord:
    """Execute one run of the notebook and record it.

    Steps: run folder → papermill execution (parameters injected, kernel cwd
    = run folder) → html export → `result.json` merge → atomic record.

    Args:
        run: the run spec.
        notebook: the base notebook.
        experiments_dir: parent of the run folder `experiments_dir/<run_id>/`.
        logs_dir: folder of the record `logs_dir/<run_id>.json`.
        verbose: stream the notebook's cell output to the log. Defaults to
            `False`.
        start_timeout_s: seconds to wait for the kernel to start. Defaults
            to `120`.
        timeout_s: wall-clock limit of the whole run in seconds, or `None`.
            Defaults to `None`.
        cell_timeout_s: limit of each cell in seconds (papermill's
            `execution_timeout`), or `None`. Defaults to `None`.
        should_stop: polled while the notebook runs; when it returns true
            the run is stopped as if interrupted (how worker processes
            learn of a Ctrl-C). Defaults to `None`.

    Returns:
        The written record: `COMPLETED`, `FAILED` (the notebook raised,
        e.g. MemoryError, or the kernel died), `TIMEOUT`, or `INTERRUPTED`
        (Ctrl-C or SIGTERM, see `runner.sweep`, or `should_stop`), with
        `error` unless completed. The kernel is shut down in every case; the
        partly executed notebook and its html are kept.

    Raises:
        FatalError: the record cannot be written.
    """
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    experiments_dir, logs_dir = Path(experiments_dir).resolve(), Path(logs_dir).resolve()
    run_id = make_run_id(run.config_hash, experiments_dir, started)
    run_dir = experiments_dir / run_id
    run_dir.mkdir(parents=True)
    ipynb_path = run_dir / f"{run_id}.ipynb"

    _kernel_environment()
    params = _resolve_warm_start_ref(run.params, logs_dir)
    error, status = None, COMPLETED
    # Ours, so we can always stop it; Unix sockets in a folder of its own: no TCP ports to clash
    # between concurrent runs (the short /tmp path keeps within the socket path limit).
    sockets = Path(tempfile.mkdtemp(prefix="nbsweep-kernel-"))
    kernel = AsyncKernelManager(kernel_name=KERNEL_NAME, transport="ipc", ip=str(sockets / "kernel"))
    thread = _NotebookThread(
        input_path=str(notebook),
        output_path=str(ipynb_path),
        parameters={**params, "output_dir": str(run_dir), "logs_dir": str(logs_dir)},
        kernel_name=KERNEL_NAME,
        cwd=str(run_dir),
        progress_bar=False,
        log_output=verbose,
        start_timeout=start_timeout_s,
        execution_timeout=cell_timeout_s,
        km=kernel,
    )
    with _stderr_to(None if verbose else run_dir / "kernel.log"):
        try:
            thread.start()
            exc = thread.wait(timeout_s, should_stop)
            if exc is not None:  # a failed run is recorded, never raised
                status, error = _status_of(exc), _error_from(exc)
        except KeyboardInterrupt:
            status = INTERRUPTED
            error = _error("KeyboardInterrupt", "the sweep was interrupted (Ctrl-C or SIGTERM)")
        except _RunTimeout as exc:
            status, error = TIMEOUT, _error("Timeout", str(exc))
        finally:
            _stop_kernel(kernel, thread)
            shutil.rmtree(sockets, ignore_errors=True)

    warnings, html_path = [], None
    if ipynb_path.exists():
        try:
            html_path = export_html(ipynb_path)
        except Exception as exc:  # keep the run; say the page is missing
            warnings.append(f"html export failed: {type(exc).__name__}: {exc}")

    result = _read_result(run_dir)
    if error is None and result is None:
        status, error = FAILED, _error("MissingResult", f"the notebook finished without writing {RESULT_FILE}")

    result = result or {}
    training, evaluation = result.get("training", {}), result.get("evaluation", {})
    cache_use = {**training.get("activation_cache", {}),
                 **({"evaluation": {"from_cache": evaluation["from_cache"]}} if "from_cache" in evaluation else {})}
    files = {
        "notebook": ipynb_path, "html": html_path, "result": run_dir / RESULT_FILE,
        "model": run_dir / "model.keras", "training_curves": run_dir / "training_curves.png",
        "confusion_matrix": run_dir / "confusion_matrix.png", "predictions": run_dir / "predictions.csv",
        "kernel_log": run_dir / "kernel.log", "tensorboard": run_dir / "tensorboard",
    }
    record = RunRecord(
        run_id=run_id,
        config_hash=run.config_hash,
        status=status,
        started_at=started.isoformat(timespec="seconds"),
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        params=params,
        model={**result.get("model", {}), **_model_file_checksum(files["model"])},
        data=result.get("data", {}),
        metrics=evaluation.get("metrics", {}),
        history=training.get("history", {}),
        best_epoch=training.get("best_epoch"),
        timings={"train_s": training.get("train_s"), "eval_s": evaluation.get("eval_s"),
                 "cache_build_s": sum(use.get("build_s", 0.0) for use in cache_use.values()),
                 "total_s": round(time.perf_counter() - t0, 3)},
        environment=collect_environment(),
        paths={key: os.path.relpath(path, logs_dir) if path and Path(path).exists() else None
               for key, path in files.items()},
        error=error,
        warnings=warnings,
        parent_run_id=(result.get("warm_start") or {}).get("parent_run_id"),
        warm_start=_relative_warm_start(result.get("warm_start"), logs_dir),
        activation_cache=cache_use,
    )
    write_record(record, logs_dir)
    return record


def _resolve_warm_start_ref(params: dict[str, Any], logs_dir: Path) -> dict[str, Any]:
    """Replace a `warm_start` of `"best"` or a prefix by the run id it names now.

    Resolved when the run starts, so `best` sees the runs of this sweep that
    finished before it. An unresolvable value is left as it is: the notebook
    then fails on it with the full message, and the run is recorded failed.
    """
    ref = params.get("warm_start")
    if ref is None:
        return params
    try:
        return {**params, "warm_start": resolve_parent_id(params, logs_dir)}
    except RunnerError:
        return params


def _relative_warm_start(warm: Optional[dict[str, Any]], logs_dir: Path) -> dict[str, Any]:
    if not warm:
        return {}
    return {**warm, "weights_path": os.path.relpath(warm["weights_path"], logs_dir)}


def _model_file_checksum(model_path: Path) -> dict[str, str]:
    return {"model_file_sha256": sha256_file(model_path)} if model_path.is_file() else {}


def _read_result(run_dir: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads((run_dir / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
