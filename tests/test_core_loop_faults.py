"""Faults of a sweep found by trying to break it: a full disk, a second Ctrl-C, a stop during
kernel start-up, leftovers, a notebook that prints too much. Each test shows the fault, then the
recovery: nothing lost, a clear message, and the same command again finishing the work.

They run the tiny `tests/assets/faults.ipynb` (no TensorFlow) through real papermill.
"""

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from runner import PROJECT_ROOT
from runner.grid import expand_runs, load_grid
from runner.records.query import read_all
from runner.records import COMPLETED, FAILED, INTERRUPTED
from runner.core.loop import SweepOptions, plan_runs

from helpers import wait_for

FAULTS = Path(__file__).parent / "assets" / "faults.ipynb"
pytestmark = pytest.mark.slow


def grid(work: Path, body: str, experiments: str = "experiments") -> Path:
    path = work / "grid.yaml"
    path.write_text(f"notebook: {FAULTS}\nexperiments_dir: {experiments}\nlogs_dir: logs\n"
                    f"leaderboard: leaderboard.html\n{body}", encoding="utf-8")
    return path


def sweep(work: Path, *extra: str, wait: bool = True, timeout: float = 300, env: dict | None = None):
    command = [sys.executable, str(PROJECT_ROOT / "runner" / "sweep.py"), "grid.yaml", *extra]
    if not wait:
        return subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
    return subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=timeout, env=env)



def run_folders(work: Path, experiments: str = "experiments") -> list[Path]:
    return sorted(p for p in (work / experiments).glob("2*") if p.is_dir())


@pytest.fixture
def tmpfs(tmp_path):
    """A 3 MB tmpfs (root only): a disk that really fills up."""
    folder = tmp_path / "small_disk"
    folder.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(folder)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip() or 'not root'})")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_full_disk_never_breaks_the_leaderboard_and_a_retry_recovers(tmp_path, tmpfs):
    """Case 1: runs whose html (or notebook) no longer fits are `failed` with the missing files named,
    no truncated page is left, the leaderboard is still written, and --retry-failed finishes the work."""
    # each run prints ~1 MB: the saved notebook and its page fill 3 MB after a run or two
    grid(tmp_path, "fixed: {action: spam, seconds: 0.6}\ngrid: {score: [0.1, 0.2, 0.3, 0.4]}\n",
         experiments=str(tmpfs))
    first = sweep(tmp_path)
    assert first.returncode == 1, first.stderr
    found = read_all(tmp_path / "logs")
    assert len(found.records) == 4 and not found.unreadable
    failed = [r for r in found.records if r.status == FAILED]
    assert failed, [r.status for r in found.records]
    for rec in failed:
        # the disk, nothing else, failed it: a missing output, or the ENOSPC that writing it raised
        assert rec.error.ename == "MissingOutput" or "No space left on device" in (
            rec.error.evalue + rec.error.traceback), rec.error
        html = tmpfs / rec.run_id / f"{rec.run_id}.html"
        if rec.error.ename == "MissingOutput":
            assert "html" in rec.error.evalue or "notebook" in rec.error.evalue
            assert not html.exists()  # atomic: no truncated page at the final path
    for rec in found.records:
        if rec.status == COMPLETED:
            assert (tmpfs / rec.run_id / f"{rec.run_id}.html").stat().st_size > 1000
    board = (tmp_path / "leaderboard.html").read_text(encoding="utf-8")
    assert all(rec.run_id in board for rec in failed)

    for folder in tmpfs.iterdir():  # free the space, then the same command with --retry-failed
        shutil.rmtree(folder, ignore_errors=True)
    again = sweep(tmp_path, "--retry-failed")
    assert again.returncode == 0, again.stderr
    latest = {}
    for rec in read_all(tmp_path / "logs").records:
        latest[rec.config_hash] = rec
    assert sorted(r.status for r in latest.values() if r.config_hash in {f.config_hash for f in failed}) == \
        [COMPLETED] * len({f.config_hash for f in failed})


def test_a_second_ctrl_c_cannot_lose_the_record(tmp_path):
    """Case 2: SIGINT, then another 0.3 s later: exit 130 and the run is recorded with its notebook and html."""
    grid(tmp_path, "fixed: {action: busy, seconds: 60}\n")
    proc = sweep(tmp_path, wait=False)
    assert wait_for(lambda: any((p / "kernel.log").exists() for p in run_folders(tmp_path)))
    time.sleep(4)  # the notebook is running its busy cell
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.7)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "again" in err  # the later signals only say the stop is under way
    (rec,) = read_all(tmp_path / "logs").records
    assert rec.status == INTERRUPTED
    assert rec.paths["notebook"] and rec.paths["html"]
    assert "step" in (tmp_path / "logs" / rec.paths["html"]).read_text(encoding="utf-8")


def test_sigterm_during_kernel_start_up_takes_effect_at_once(tmp_path):
    """Case 3: SIGTERM the moment the run folder appears: the sweep exits within seconds, the sleeping
    cell never runs on (no ticks after the stop), and the next sweep runs the run again."""
    grid(tmp_path, "fixed: {action: sleep, seconds: 90}\n")
    proc = sweep(tmp_path, wait=False)
    assert wait_for(lambda: bool(run_folders(tmp_path)), step=0.01)
    stopped = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - stopped
    assert proc.returncode == 130, err
    assert took < 15, f"the stop took {took:.1f} s"
    (rec,) = read_all(tmp_path / "logs").records
    assert rec.status == INTERRUPTED
    notebook = tmp_path / "logs" / rec.paths["notebook"] if rec.paths["notebook"] else None
    ticks = notebook.read_text(encoding="utf-8").count("tick") if notebook else 0
    assert ticks <= 3
    # the interrupted run is not done: the next sweep plans to execute it again
    runs, _ = expand_runs(load_grid(tmp_path / "grid.yaml"), tmp_path / "grid.yaml")
    (planned,) = plan_runs(runs, read_all(tmp_path / "logs"), SweepOptions())
    assert planned == (runs[0], None) and runs[0].config_hash == rec.config_hash


def test_leftovers_connection_files_orphans_and_file_modes(tmp_path):
    """Case 9: no kernel connection file or socket folder is left; run folders without a record are
    listed and removed with --clean-orphans; records and pages have the umask's mode."""
    # the sweep's own temporary folder, so other tests' kernels stay out of it; short, as the kernels'
    # Unix sockets live below it and a socket path is limited to 107 bytes
    private_tmp = Path(tempfile.mkdtemp(prefix="nbs-"))
    grid(tmp_path, "grid: {score: [0.2, 0.4]}\n")
    (tmp_path / "experiments" / "20260101-000000-deadbeef").mkdir(parents=True)  # a SIGKILL's leftover
    old = os.umask(0o022)
    try:
        first = sweep(tmp_path, env={**os.environ, "TMPDIR": str(private_tmp)})
        leftovers = [*private_tmp.glob("tmp*.json"), *private_tmp.glob("nbsweep-kernel-*")]
    finally:
        os.umask(old)
        shutil.rmtree(private_tmp, ignore_errors=True)
    assert first.returncode == 0, first.stderr
    assert "1 run folder(s) from interrupted sweeps have no record: 20260101-000000-deadbeef" in first.stderr
    assert leftovers == []  # no connection file and no kernel socket folder left
    for path in [*(tmp_path / "logs").glob("*.json"), tmp_path / "leaderboard.html", tmp_path / "leaderboard.csv",
                 *(tmp_path / "experiments").glob("2*/result.json")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    second = sweep(tmp_path, "--clean-orphans")
    assert second.returncode == 0 and "removed (--clean-orphans)" in second.stderr
    assert not (tmp_path / "experiments" / "20260101-000000-deadbeef").exists()
    assert len(run_folders(tmp_path)) == 2  # the recorded runs are kept


def test_a_notebook_that_prints_50_mb_is_capped(tmp_path, monkeypatch):
    """Case 10: stream output over the cap is cut from the saved notebook and page, with a warning."""
    from runner.core.execute import execute_run
    from runner.grid import expand_runs, load_grid

    monkeypatch.chdir(tmp_path)  # the grid's logs and experiments folders are relative to it
    path = grid(tmp_path, "fixed: {action: spam, seconds: 3}\n")  # 3 MB of output
    spec = load_grid(path)
    (run,), _ = expand_runs(spec, path, base_dir=tmp_path)
    rec = execute_run(run, spec.notebook, spec.experiments_dir, spec.logs_dir, max_output_bytes=200_000)
    assert rec.status == COMPLETED
    notebook = spec.logs_dir / rec.paths["notebook"]
    assert notebook.stat().st_size < 400_000
    assert (spec.logs_dir / rec.paths["html"]).stat().st_size < 800_000
    assert any("bytes cut from the saved notebook" in w for w in rec.warnings)
    assert "over the 200000 byte cap" in notebook.read_text(encoding="utf-8")
