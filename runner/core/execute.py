"""Execute one run: its steps, each a function, in the order papermill's `execute_notebook` reads.

`execute_run` is the list of them:

1. `prepare_run`: the run id and its folder `experiments/<run_id>/`;
2. `execute_notebook`: papermill in a fresh kernel (started ahead: `runner.core.kernels`),
   parameters injected, the warm start among them (resolved by the caller when the run
   starts: `runner.core.warm_start.warm_start_for`);
3. `cap_outputs`: stream outputs over the cap are trimmed (with a warning);
4. `export_html`: the executed notebook as a standalone page;
5. `read_result` (`runner.records`): the notebook's typed `result.json`;
6. `check_outputs`: a run missing a file the sweep depends on is failed;
7. `build_record` + `write_record` (`runner.records`).

A notebook that raises still gets its executed `.ipynb` (with papermill's
error banner at the failing cell), its `.html` and a `failed` record; nothing
is raised for it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from runner.grid import RunSpec, code_hashes
from runner.grid.expand import literal_path
from runner.grid.schema import RunnerParams
from runner.core.kernels import (
    KERNEL_ARGUMENTS, KERNEL_NAME, WARM_UP_TIMEOUT_S, Kernel, KernelNotReady, KernelSetup, discard_next_kernel,
    kernel_environment, start_next_kernel, take_next_kernel,
)
from runner.records import (
    COMPLETED, FAILED, INTERRUPTED, KERNEL_LOG_FILE, PRUNED, REQUIRED_FILES, RESULT_FILE, RUN_FILES, TIMEOUT,
    NotebookResult, RunError, RunRecord, build_record, read_result, write_record, write_text_atomic,
)

if TYPE_CHECKING:
    from runner.core.warm_start import WarmStart

MAX_OUTPUT_BYTES = 10 * 2**20
"""Default cap on a saved notebook's stream output (stdout/stderr text), bytes: 10 MiB."""
STOP_GRACE_S = 30
"""Seconds a stopped run may take to end before its kernel's process group is killed."""
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class RunFolder:
    """Where one run's files go (`prepare_run`).

    Attributes:
        run_id: `YYYYmmdd-HHMMSS-<hash8>`.
        run_dir: `experiments/<run_id>/`, created.
        started: UTC start time.
    """

    run_id: str
    run_dir: Path
    started: datetime

    @property
    def notebook_path(self) -> Path:
        """`<run_dir>/<run_id>.ipynb`."""
        return self.run_dir / f"{self.run_id}.ipynb"

    def files(self) -> dict[str, Path]:
        """Every `RUN_FILES` key -> its path in the run folder."""
        return {key: self.run_dir / name.format(run_id=self.run_id) for key, name in RUN_FILES.items()}


RUN_ID_TIME = "%Y%m%d-%H%M%S"
"""The start time (UTC) in a run id, a `strftime` format: the id's first part (`make_run_id`)."""
RUN_ID_HASH_DIGITS = 8
"""Hex digits of the `config_hash` that follow the time in a run id."""
_RUN_ID_TIME_CHARS = len(datetime(2000, 1, 1).strftime(RUN_ID_TIME))
_RUN_ID_REST = re.compile(rf"-[0-9a-f]{{{RUN_ID_HASH_DIGITS}}}(-\d+)?")


def is_run_id(name: str) -> bool:
    """Whether `name` is a run id as `make_run_id` writes them: the time (`RUN_ID_TIME`), `-`, the hash's
    first `RUN_ID_HASH_DIGITS` hex digits, and `-<n>` when the id was taken."""
    try:
        datetime.strptime(name[:_RUN_ID_TIME_CHARS], RUN_ID_TIME)
    except ValueError:
        return False
    return _RUN_ID_REST.fullmatch(name[_RUN_ID_TIME_CHARS:]) is not None


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
    run_id = f"{now:{RUN_ID_TIME}}-{config_hash[:RUN_ID_HASH_DIGITS]}"
    candidate, n = run_id, 1
    while (experiments_dir / candidate).exists():
        n += 1
        candidate = f"{run_id}-{n}"
    return candidate


def prepare_run(config_hash: str, experiments_dir: Path) -> RunFolder:
    """Step 1: a new run id and its folder.

    Args:
        config_hash: the run's `config_hash`.
        experiments_dir: parent of the run folders (absolute).

    Returns:
        The `RunFolder` (its folder exists, empty).

    Raises:
        OSError: the folder cannot be created.
    """
    started = datetime.now(timezone.utc)
    run_id = make_run_id(config_hash, experiments_dir, started)
    run_dir = experiments_dir / run_id
    run_dir.mkdir(parents=True)
    return RunFolder(run_id, run_dir, started)


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


def _stop_kernel(kernel: Kernel, thread: Optional[_NotebookThread], grace_s: float = STOP_GRACE_S) -> bool:
    """Kill the run's kernel (its whole process group), until the notebook thread ends and once after.

    The kernel runs in a session of its own (jupyter_client starts it with
    `start_new_session`), so `killpg` reaches it and whatever it started. A
    stop during kernel start-up is why this loops: the process may appear
    only after the first look, and it is killed as soon as it does, so the
    notebook never starts its cells.

    Returns:
        Whether the notebook thread ended within `grace_s` seconds.
    """
    deadline = time.monotonic() + grace_s
    ended = True
    while thread is not None and thread.ident is not None and not thread.done.wait(0.05):
        kernel.kill()
        if time.monotonic() > deadline:
            ended = False
            break
    kernel.kill()  # also after a run that ended on its own: papermill does not own our kernel
    return ended


def _kernel_for(setup: Optional[KernelSetup], run_dir: Path, log: Optional[Path],
                should_stop: Optional[Callable[[], bool]]) -> Kernel:
    """The run's kernel: this process's kernel started ahead, taken into `run_dir`, when `setup` is
    given and one of that setup answers; else a new one, which papermill starts."""
    ahead = take_next_kernel(setup) if setup is not None else None
    if ahead is not None:
        try:
            return ahead.take(run_dir, log, WARM_UP_TIMEOUT_S, should_stop)
        except KernelNotReady:  # it died or never answered: a kernel of the run's own instead
            ahead.discard()
        except BaseException:
            ahead.discard()
            raise
    return Kernel()


def _error(ename: str, evalue: str, traceback_text: str = "", cell_index: Optional[int] = None) -> RunError:
    return RunError(ename=ename, evalue=evalue, traceback=traceback_text, cell_index=cell_index)


def _outcome_of(exc: BaseException) -> tuple[str, RunError]:
    """The status and error of a run whose notebook thread raised `exc`."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return FAILED, _error(exc.ename, _ANSI.sub("", str(exc.evalue)), _ANSI.sub("", "\n".join(exc.traceback)),
                              exc.cell_index)
    status = TIMEOUT if isinstance(exc, CellTimeoutError) else FAILED
    return status, _error(type(exc).__name__, f"kernel died: {exc}" if isinstance(exc, DeadKernelError) else str(exc),
                          "".join(traceback.format_exception(exc)))


def execute_notebook(notebook: Path, folder: RunFolder, parameters: dict[str, Any], *, verbose: bool = False,
                     start_timeout_s: float = 120, timeout_s: Optional[float] = None,
                     cell_timeout_s: Optional[float] = None,
                     should_stop: Optional[Callable[[], bool]] = None, prestart: bool = False,
                     prepare_next: bool = False) -> tuple[str, Optional[RunError]]:
    """Step 3: papermill executes `notebook` into `folder.notebook_path` in a kernel of its own.

    The kernel talks over Unix sockets in a temporary folder of its own (no
    TCP ports to clash between concurrent runs), its connection file lives
    there too and goes with it, its cwd is the run folder, and its stderr
    goes to `kernel.log` unless `verbose`. It is killed (process group) on
    any stop, and the call returns only after the notebook thread has ended.

    With `prestart` the kernel is the one this process started ahead
    (`runner.core.kernels`: launched, its imports done) when there is one;
    with `prepare_next` too, the next run's kernel starts in the background
    as soon as this run has its own. A stopped run discards that one.

    Args:
        notebook: the base notebook.
        folder: the run folder.
        parameters: injected into the notebook's parameters cell.
        verbose: stream cell output to the log. Defaults to `False`.
        start_timeout_s: seconds to wait for the kernel to start. Defaults to `120`.
        timeout_s: wall-clock limit of the run, seconds, or `None`. Defaults to `None`.
        cell_timeout_s: limit of each cell (papermill's `execution_timeout`). Defaults to `None`.
        should_stop: polled every 0.2 s; true stops the run as interrupted. Defaults to `None`.
        prestart: use the kernel started ahead, if any. Defaults to `False`.
        prepare_next: with `prestart`, start the next run's kernel ahead. Defaults to `False`.

    Returns:
        `(status, error)`: `(COMPLETED, None)`, or `FAILED` / `TIMEOUT` /
        `INTERRUPTED` with a `RunError`.
    """
    kernel_environment()
    log = None if verbose else folder.run_dir / KERNEL_LOG_FILE
    setup = KernelSetup.of(folder.run_dir.parent, notebook, verbose) if prestart else None
    kernel, thread = None, None
    status, error = COMPLETED, None
    with _stderr_to(log):
        try:
            kernel = _kernel_for(setup, folder.run_dir, log, should_stop)
            if setup is not None and prepare_next:
                start_next_kernel(setup, start_timeout_s)
            thread = _NotebookThread(
                input_path=literal_path(notebook), output_path=literal_path(folder.notebook_path),
                parameters=parameters,
                kernel_name=KERNEL_NAME, cwd=str(folder.run_dir), progress_bar=False, log_output=verbose,
                start_timeout=start_timeout_s, execution_timeout=cell_timeout_s, km=kernel.manager,
                extra_arguments=KERNEL_ARGUMENTS,
            )
            thread.start()
            exc = thread.wait(timeout_s, should_stop)
            if exc is not None:  # a failed run is recorded, never raised
                status, error = _outcome_of(exc)
        except KeyboardInterrupt:
            status = INTERRUPTED
            error = _error("KeyboardInterrupt", "the sweep was interrupted (Ctrl-C or SIGTERM)")
        except _RunTimeout as exc:
            status, error = TIMEOUT, _error("Timeout", str(exc))
        finally:
            if kernel is not None:
                _stop_kernel(kernel, thread)
                kernel.remove()
    if status == INTERRUPTED:  # the sweep is stopping: no run will take the next kernel
        discard_next_kernel()
    return status, error


def cap_outputs(notebook_path: Path, max_bytes: int = MAX_OUTPUT_BYTES) -> Optional[str]:
    """Step 4: trim the saved notebook's stream outputs to `max_bytes` in all, keeping each one's start.

    nbclient has no output limit, so a cell that prints 50 MB makes a 56 MB
    notebook and a 51 MB page; this cuts stream outputs (stdout/stderr text)
    beyond the cap, in cell order, replacing the rest of each with a note.

    Args:
        notebook_path: the executed `.ipynb`.
        max_bytes: total stream text kept, bytes (UTF-8). Defaults to `MAX_OUTPUT_BYTES`.

    Returns:
        A warning for the record when something was trimmed, else `None`.

    Raises:
        OSError: the notebook cannot be rewritten.
    """
    import nbformat

    if notebook_path.stat().st_size <= max_bytes:
        return None
    nb = nbformat.read(notebook_path, as_version=4)
    budget, trimmed = max_bytes, 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") != "stream":
                continue
            text = output.get("text", "")
            size = len(text.encode("utf-8"))
            if size <= budget:
                budget -= size
                continue
            keep = text.encode("utf-8")[:budget].decode("utf-8", "ignore")
            output["text"] = keep + f"\n[nbsweep: {size - len(keep.encode('utf-8'))} bytes of output cut: over the {max_bytes} byte cap]\n"
            trimmed += size - len(keep.encode("utf-8"))
            budget = 0
    if not trimmed:
        return None
    write_text_atomic(notebook_path, nbformat.writes(nb))
    return f"notebook stream output over {max_bytes} bytes: {trimmed} bytes cut from the saved notebook"


def export_html(notebook_path: Path) -> Path:
    """Step 5: the executed notebook as a standalone html page beside it, written atomically.

    The parameters cell (the notebook's defaults) is left out of the page:
    papermill's injected cell right after it shows every parameter of the
    run, once. A page that cannot be written leaves no partial file.

    Args:
        notebook_path: an `.ipynb` file.

    Returns:
        The `.html` path (same name, other suffix).

    Raises:
        OSError: the page cannot be written (disk full...).
        Exception: whatever nbconvert raises for an unreadable notebook.
    """
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    config = Config()
    config.TagRemovePreprocessor.remove_cell_tags = ("parameters",)
    config.TagRemovePreprocessor.enabled = True
    body, _ = HTMLExporter(config=config).from_notebook_node(nbformat.read(notebook_path, as_version=4))
    return write_text_atomic(notebook_path.with_suffix(".html"), body)


def check_outputs(files: dict[str, Path], status: str, error: Optional[RunError]
                  ) -> tuple[str, Optional[RunError]]:
    """Step 7: a run the notebook finished is `COMPLETED` only if every `REQUIRED_FILES` file is there.

    Args:
        files: `RUN_FILES` key -> path.
        status, error: the outcome so far.

    Returns:
        `(status, error)`: unchanged, or `FAILED` with a `MissingOutput`
        error naming each missing file (so `--retry-failed` re-runs it).
    """
    if status != COMPLETED:
        return status, error
    missing = [f"{key} ({files[key].name})" for key in REQUIRED_FILES if not files[key].exists()]
    if not missing:
        return status, error
    return FAILED, _error("MissingOutput", f"the run finished but these files are missing: {', '.join(missing)}")


def execute_run(run: RunSpec, notebook: Path, experiments_dir: Path, logs_dir: Path, *,
                warm_start: Optional[WarmStart] = None, refusal: Optional[str] = None, verbose: bool = False,
                start_timeout_s: float = 120, timeout_s: Optional[float] = None,
                cell_timeout_s: Optional[float] = None, max_output_bytes: int = MAX_OUTPUT_BYTES,
                should_stop: Optional[Callable[[], bool]] = None, rerun_of: Optional[str] = None,
                prestart: bool = False, prepare_next: bool = False) -> RunRecord:
    """Execute one run of the notebook and record it: the steps of the module docstring.

    Args:
        run: the run spec.
        notebook: the base notebook.
        experiments_dir: parent of the run folder `experiments_dir/<run_id>/`.
        logs_dir: folder of the record `logs_dir/<run_id>.json`.
        warm_start: the weights the run starts from, resolved when it starts
            (`runner.core.warm_start.warm_start_for`). Defaults to `None`.
        refusal: why the run cannot start (its warm start could not be
            resolved): the run is recorded as failed (`ConfigError`) without
            a kernel. Defaults to `None`.
        verbose: stream the notebook's cell output to the log. Defaults to `False`.
        start_timeout_s: seconds to wait for the kernel to start. Defaults to `120`.
        timeout_s: wall-clock limit of the whole run in seconds, or `None`. Defaults to `None`.
        cell_timeout_s: limit of each cell in seconds, or `None`. Defaults to `None`.
        max_output_bytes: cap of the saved notebook's stream output (`cap_outputs`).
            Defaults to `MAX_OUTPUT_BYTES`.
        should_stop: polled while the notebook runs; true stops the run as
            interrupted (how worker processes learn of a Ctrl-C). Defaults to `None`.
        rerun_of: the run this one re-executes (`runner.core.rerun`), kept
            in the record. Defaults to `None`.
        prestart: run in this process's kernel started ahead, if there is one
            (`execute_notebook`). Defaults to `False`.
        prepare_next: with `prestart`, start the next run's kernel ahead while
            this one runs. Defaults to `False`.

    Returns:
        The written record: `COMPLETED`, `PRUNED` (a search's pruner stopped
        it; evaluated on its best weights so far), `FAILED` (the notebook raised, the
        kernel died, the warm start could not be resolved, or a required
        output is missing), `TIMEOUT`, or `INTERRUPTED`, with `error` unless
        completed. The kernel is shut down in every case; the partly executed
        notebook and its html are kept.

    Raises:
        FatalError: the record cannot be written.
    """
    t0 = time.perf_counter()
    experiments_dir, logs_dir = Path(experiments_dir).resolve(), Path(logs_dir).resolve()
    folder = prepare_run(run.config_hash, experiments_dir)
    warnings: list[str] = []
    code = _code_of(notebook, warnings)
    status, error, warm = COMPLETED, None, warm_start
    if refusal is not None:
        status, error = FAILED, _error("ConfigError", refusal)
    else:
        injected = RunnerParams(output_dir=str(folder.run_dir), resolved_warm_start=warm.to_dict() if warm else None,
                                pruning=run.trial)
        parameters = {**run.params, **asdict(injected)}
        status, error = execute_notebook(notebook, folder, parameters, verbose=verbose,
                                         start_timeout_s=start_timeout_s, timeout_s=timeout_s,
                                         cell_timeout_s=cell_timeout_s, should_stop=should_stop,
                                         prestart=prestart, prepare_next=prepare_next)
    status, error, result = _read_outputs(folder, status, error, max_output_bytes, warnings)
    if result is not None and not run.data_matches(result):
        warnings.append(data_changed_warning(run, result.data.manifest_hash))
    record = build_record(
        run_id=folder.run_id, config_hash=run.config_hash, status=status, started_at=folder.started,
        params=run.params, result=result, files=folder.files(), logs_dir=logs_dir, total_s=time.perf_counter() - t0,
        error=error, warnings=warnings, warm_start=warm.section() if warm else None,
        name=run.params.get("name"), code=code, rerun_of=rerun_of, group_hash=run.group_hash,
        refit_of=run.refit_of,
    )
    write_record(record, logs_dir)
    return record


def _code_of(notebook: Path, warnings: list[str]) -> Optional[dict[str, Any]]:
    """The code as the kernel is about to import it, per file (`code_hashes`), for `nbsweep rerun` to compare;
    `None`, with a line added to `warnings`, when it cannot be read (papermill then fails with its own message)."""
    try:
        return code_hashes(notebook)
    except Exception as exc:
        warnings.append(f"code hashes not recorded: {type(exc).__name__}: {exc}")
        return None


def _read_outputs(folder: RunFolder, status: str, error: Optional[RunError], max_output_bytes: int,
                  warnings: list[str]) -> tuple[str, Optional[RunError], Optional[NotebookResult]]:
    """Steps 3 to 6 after the notebook ran: cap its outputs, export its html, read its `result.json` and check the
    run's files. Returns the run's status and error after them (`PRUNED` for a completed run the pruner stopped),
    and its result (`None` when the notebook wrote none); problems with the first two are added to `warnings`."""
    result: Optional[NotebookResult] = None
    if folder.notebook_path.exists():
        warnings += _attempt(cap_outputs, folder.notebook_path, max_output_bytes, what="output cap")
        warnings += _attempt(export_html, folder.notebook_path, what="html export")
        result = read_result(folder.run_dir)
        if status == COMPLETED and result is None:
            status, error = FAILED, _error("MissingResult", f"the notebook finished without writing a valid {RESULT_FILE}")
    status, error = check_outputs(folder.files(), status, error)
    if status == COMPLETED and result is not None and result.training.pruned_epoch:
        status = PRUNED
    return status, error, result


DATA_CHANGED = "data changed under the run"
"""How a record's warning starts when its kernel listed other data than the sweep expected (`data_changed_warning`)."""


def data_changed_warning(run: RunSpec, listed: str) -> str:
    """The record's warning for a run whose kernel listed other data than the sweep did when it built the run.

    Args:
        run: the run (`run.manifest_hash`: the manifest when the sweep built it).
        listed: the manifest hash of the split the kernel trained on (`result.data.manifest_hash`).

    Returns:
        `"data changed under the run: ..."` (`DATA_CHANGED`), naming both manifests and
        the consequence: the run is not taken as done for the data it was meant to
        train on, so the same sweep again runs it.
    """
    return (f"{DATA_CHANGED}: its kernel trained on data manifest {listed[:12]}, but {run.params.get('data_dir')} "
            f"had manifest {str(run.manifest_hash)[:12]} when the sweep built the run (files added, removed or "
            f"changed meanwhile); the record keeps what it trained on, and the run is not counted as done for "
            f"{str(run.manifest_hash)[:12]}: the same sweep again runs it")


def _attempt(step: Callable[..., Any], *args, what: str) -> list[str]:
    """Run a step that must not fail the record; its failure (or its own warning) as a list of warnings."""
    try:
        outcome = step(*args)
    except Exception as exc:  # keep the run; say what is missing
        return [f"{what} failed: {type(exc).__name__}: {exc}"]
    return [outcome] if isinstance(outcome, str) else []


def orphan_run_folders(experiments_dir: Path, recorded_ids: set[str]) -> list[Path]:
    """Run folders without a record: left by a SIGKILL, a crash or a failed record write.

    Args:
        experiments_dir: parent of the run folders.
        recorded_ids: run ids that have a record.

    Returns:
        The folders named like run ids (`YYYYmmdd-HHMMSS-<hash8>[-n]`) with no
        record, sorted.
    """
    if not experiments_dir.is_dir():
        return []
    return sorted(p for p in experiments_dir.iterdir()
                  if p.is_dir() and is_run_id(p.name) and p.name not in recorded_ids)
