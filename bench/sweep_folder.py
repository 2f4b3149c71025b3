"""Run one real `python runner/sweep.py` in a fresh work folder of its own (shared by the benchmarks).

Each call gets its own folder (removed first), its own activation cache
(`NBSWEEP_CACHE_DIR` inside it, so no benchmark arm starts with features
another arm computed) and the project on `PYTHONPATH`; the sweep's console
output is kept in `sweep.log` there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from runner.records.query import read_all  # noqa: E402
from runner.records import RUN, RunRecord  # noqa: E402

STOPPED_RCS = (0, -signal.SIGTERM, 128 + signal.SIGTERM, 130)
"""Exit codes of a sweep that finished or was stopped by its time limit."""


@dataclass
class SweepRun:
    """What one benchmark sweep did.

    Attributes:
        records: its run records (ensembles left out), in `read_all`'s order.
        start: epoch seconds (UTC) at which the sweep process started.
        wall_s: seconds until it exited (or was stopped).
        returncode: the sweep's exit code.
    """

    records: list[RunRecord]
    start: float
    wall_s: float
    returncode: int


def run_sweep_in(work: Path, grid_text: str, timeout_s: float | None = None, label: str = "") -> SweepRun:
    """Writes `grid_text` to `work/grid.yaml` and runs the sweep there, stopped with SIGTERM after `timeout_s`.

    Args:
        work: the folder (deleted and re-created).
        grid_text: the grid file's YAML text.
        timeout_s: wall-clock seconds after which the sweep gets SIGTERM
            (it finishes the record of the run it stops); `None`: no limit.
        label: name printed with the end of the output when the sweep
            exits with an unexpected code.

    Returns:
        A `SweepRun`.
    """
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    grid = work / "grid.yaml"
    grid.write_text(grid_text, encoding="utf-8")
    start = time.time()
    proc, output = run_until([sys.executable, str(PROJECT / "runner" / "sweep.py"), str(grid), "--yes"], work,
                             timeout_s)
    wall = time.time() - start
    (work / "sweep.log").write_text(output or "", encoding="utf-8")
    if proc.returncode not in STOPPED_RCS:
        print(f"{label or work.name}: the sweep exited with {proc.returncode}; the end of its output:\n"
              f"{(output or '')[-3000:]}", flush=True)
    return SweepRun(_run_records(work), start, wall, proc.returncode)


def run_until(command: list[str], work: Path, timeout_s: float | None):
    """Runs `command` in `work` with the project on `PYTHONPATH` and `NBSWEEP_CACHE_DIR` in `work/cache`,
    sent SIGTERM after `timeout_s` seconds (`None`: no limit).

    Returns:
        `(process, output)`: the finished `subprocess.Popen` and its stdout and stderr together.
    """
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "NBSWEEP_CACHE_DIR": str(work / "cache")}
    proc = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output = proc.communicate(timeout=timeout_s)[0]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=180)[0]
    return proc, output


def _run_records(work: Path) -> list[RunRecord]:
    return [rec for rec in read_all(work / "logs").records if rec.kind == RUN]


def read_sweep_in(work: Path, grid_text: str) -> SweepRun | None:
    """The sweep `run_sweep_in(work, grid_text, ...)` ran earlier, read back instead of run again, or `None`.

    `start` and `wall_s` come from the files `run_sweep_in` writes just
    before the sweep starts (`grid.yaml`) and just after it exits
    (`sweep.log`), so they are the same to within milliseconds.

    Returns:
        A `SweepRun` (`returncode` -1: not known), or `None` when `work`
        holds no finished sweep of exactly `grid_text`.
    """
    grid, log = work / "grid.yaml", work / "sweep.log"
    if not (grid.is_file() and log.is_file()) or grid.read_text(encoding="utf-8") != grid_text:
        return None
    start = grid.stat().st_mtime
    return SweepRun(_run_records(work), start, log.stat().st_mtime - start, -1)
