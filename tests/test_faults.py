"""Faults a sweep must survive, and resuming by config hash.

Uses `tests/assets/faults.ipynb`, a real notebook executed by real papermill
kernels that raises, exits, kills its own kernel or sleeps on demand (no
TensorFlow, so each run takes about a second).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import PROJECT_ROOT
from runner.records import COMPLETED, FAILED, INTERRUPTED, TIMEOUT, read_records
from runner.sweep import main as sweep_main

FAULTS = Path(__file__).parent / "assets" / "faults.ipynb"
SWEEP = [sys.executable, str(PROJECT_ROOT / "runner" / "sweep.py")]

pytestmark = pytest.mark.slow


def write_grid(work: Path, runs: str, **extra) -> Path:
    lines = [f"notebook: {FAULTS}", f"runs: {runs}", *[f"{k}: {v}" for k, v in extra.items()]]
    (work / "grid.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return work / "grid.yaml"


def kernels_running_in(folder: Path) -> list[int]:
    """Pids of live processes, this one aside, whose working folder is below `folder` (the runs' kernels)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if (proc.name.isdigit() and int(proc.name) != os.getpid()
                    and Path(os.readlink(proc / "cwd")).is_relative_to(folder)):
                pids.append(int(proc.name))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def by_action(work: Path) -> dict:
    records, unreadable = read_records(work / "logs")
    assert unreadable == {}
    return {(r.params["action"], r.params["score"]): r for r in records}


def test_faults_are_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, "[{action: raise}, {action: memory}, {action: exit}, {action: kill}, "
                                "{action: sleep, seconds: 30}, {action: ok, score: 0.9}]")
    assert sweep_main([str(grid), "--timeout", "8"]) == 1
    records = by_action(tmp_path)
    assert len(records) == 6
    assert records["raise", 0.5].status == FAILED and "boom" in records["raise", 0.5].error["evalue"]
    assert records["memory", 0.5].error["ename"] == "MemoryError"
    for action in ("exit", "kill"):
        rec = records[action, 0.5]
        assert rec.status == FAILED and rec.error["evalue"].startswith("kernel died"), rec.error
        assert (tmp_path / "logs" / rec.paths["notebook"]).is_file()  # the partial notebook is kept
        assert (tmp_path / "logs" / rec.paths["html"]).is_file()
    assert records["sleep", 0.5].status == TIMEOUT and "--timeout 8 s" in records["sleep", 0.5].error["evalue"]
    assert records["sleep", 0.5].timings["total_s"] < 30  # stopped, not left to sleep its 30 s
    assert records["ok", 0.9].status == COMPLETED  # after all of that, the last run still ran
    page = (tmp_path / "leaderboard.html").read_text()
    assert "Runs that did not complete (5)" in page
    assert kernels_running_in(tmp_path) == []


def test_cell_timeout_is_recorded_as_timeout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, "[{action: sleep, seconds: 30}]")
    assert sweep_main([str(grid), "--cell-timeout", "3"]) == 1
    (rec,) = by_action(tmp_path).values()
    assert rec.status == TIMEOUT and rec.error["ename"] == "CellTimeoutError"


def test_rerun_skips_completed_runs_force_and_retry_failed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, "[{action: ok, score: 0.1}, {action: ok, score: 0.2}, {action: raise}]")
    assert sweep_main([str(grid)]) == 1
    first = read_records(tmp_path / "logs")[0]
    assert [r.status for r in first].count(COMPLETED) == 2
    capsys.readouterr()
    # again: both completed runs are skipped, the failed one runs again
    assert sweep_main([str(grid)]) == 1
    out = capsys.readouterr()
    assert "2 skipped" in out.out and "1 failed" in out.out and out.err.count("skip run") == 2
    assert len(read_records(tmp_path / "logs")[0]) == 4
    # --retry-failed with a new run added: only the failed one runs
    grid = write_grid(tmp_path, "[{action: ok, score: 0.1}, {action: ok, score: 0.2}, {action: raise}, "
                                "{action: ok, score: 0.3}]")
    assert sweep_main([str(grid), "--retry-failed"]) == 1
    assert "3 skipped" in capsys.readouterr().out
    assert len(read_records(tmp_path / "logs")[0]) == 5
    # --force runs everything
    assert sweep_main([str(grid), "--force"]) == 1
    assert len(read_records(tmp_path / "logs")[0]) == 9


def test_sigint_records_interrupted_and_the_same_command_continues(tmp_path):
    grid = write_grid(tmp_path, "[{action: ok, score: 0.1}, {action: busy, seconds: 60}, {action: ok, score: 0.3}]")
    proc = subprocess.Popen([*SWEEP, str(grid)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the second run is executing
        folders = [p for p in (tmp_path / "experiments").glob("*") if p.is_dir()] if (tmp_path / "experiments").exists() else []
        if len(folders) == 2 and any((f / f"{f.name}.ipynb").exists() for f in folders if not (tmp_path / "logs" / f"{f.name}.json").exists()):
            break
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "run the same command again" in err
    assert kernels_running_in(tmp_path) == []
    records = by_action(tmp_path)
    assert records["ok", 0.1].status == COMPLETED
    interrupted = records["busy", 0.5]
    assert interrupted.status == INTERRUPTED
    assert (tmp_path / "logs" / interrupted.paths["notebook"]).is_file()
    assert (tmp_path / "logs" / interrupted.paths["html"]).is_file()
    assert ("ok", 0.3) not in records
    assert interrupted.run_id in (tmp_path / "leaderboard.html").read_text()
    # the same command again: the completed run is skipped, the rest runs (SIGTERM this time, after it ends)
    grid = write_grid(tmp_path, "[{action: ok, score: 0.1}, {action: busy, seconds: 1}, {action: ok, score: 0.3}]")
    done = subprocess.run([*SWEEP, str(grid)], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    statuses = sorted((r.params["action"], r.status) for r in read_records(tmp_path / "logs")[0])
    assert statuses == [("busy", COMPLETED), ("busy", INTERRUPTED), ("ok", COMPLETED), ("ok", COMPLETED)]


def test_sigterm_is_an_interrupt_too(tmp_path):
    grid = write_grid(tmp_path, "[{action: sleep, seconds: 60}]")
    proc = subprocess.Popen([*SWEEP, str(grid)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "experiments").glob("*/*.ipynb")):
        time.sleep(0.5)
    time.sleep(3)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    (rec,) = read_records(tmp_path / "logs")[0]
    assert rec.status == INTERRUPTED


def test_second_sweep_on_the_same_logs_is_refused(tmp_path):
    grid = write_grid(tmp_path, "[{action: sleep, seconds: 20}]")
    first = subprocess.Popen([*SWEEP, str(grid)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / "logs" / ".sweep.lock").exists():
        time.sleep(0.2)
    time.sleep(1)
    second = subprocess.run([*SWEEP, str(grid)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    first.terminate()
    first.communicate(timeout=60)
    assert second.returncode == 2
    assert f"another sweep is running (pid {first.pid})" in second.stderr


def test_record_write_failure_stops_the_sweep_cleanly(tmp_path, monkeypatch, capsys):
    """Disk full while writing a record: the sweep stops, no partial file, earlier records intact."""
    import runner.records as records_module

    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, "[{action: ok, score: 0.1}, {action: ok, score: 0.2}, {action: ok, score: 0.3}]")
    assert sweep_main([str(grid)]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "logs").glob("*.json")}
    real = records_module.write_text_atomic

    def full_disk(path, text):
        if Path(path).suffix == ".json" and Path(path).parent.name == "logs":
            raise OSError(28, "No space left on device")
        return real(path, text)

    monkeypatch.setattr(records_module, "write_text_atomic", full_disk)
    assert sweep_main([str(grid), "--force"]) == 1
    err = capsys.readouterr().err
    assert "cannot write run record" in err and "No space left on device" in err
    after = {p.name: p.read_bytes() for p in (tmp_path / "logs").glob("*.json")}
    assert after == before  # nothing new, nothing changed
    assert not list((tmp_path / "logs").glob(".*.tmp"))


def test_max_runs_needs_yes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, "[{score: 0.1}, {score: 0.2}, {score: 0.3}]")
    assert sweep_main([str(grid), "--max-runs", "2"]) == 2
    assert "expands to 3 runs, more than --max-runs 2; pass --yes" in capsys.readouterr().err
    assert not (tmp_path / "experiments").exists()
    assert sweep_main([str(grid), "--max-runs", "2", "--yes"]) == 0
