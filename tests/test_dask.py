"""`--executor dask`: runs as tasks on a real `dask.distributed` LocalCluster (worker processes, loopback)."""

import signal
import subprocess
import time

import pytest

from runner import PROJECT_ROOT
from runner.records import COMPLETED, INTERRUPTED, read_records

from test_faults import SWEEP, kernels_running_in, write_grid

distributed = pytest.importorskip("dask.distributed", reason="dask[distributed] is not installed")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes on 127.0.0.1, as `dask worker --nthreads 1` would run."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as local:
        yield local


def test_a_three_run_sweep_through_a_local_cluster(tmp_path, tiny_image_dir, cluster):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"""
notebook: {PROJECT_ROOT / 'notebooks' / 'base_experiment.ipynb'}
data_dir: {tiny_image_dir}
fixed: {{base: simple_cnn_small, weights: null, image_size: 32, epochs: 1, batch_size: 8, dense_units: [8],
        val_fraction: 0.2, test_fraction: 0.25}}
grid:
  - head: [flatten, gap]
runs:
  - {{head: gap, dropout: 0.1}}
""", encoding="utf-8")
    command = [*SWEEP, str(grid), "--executor", "dask", "--scheduler", cluster.scheduler_address]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 completed" in done.stdout
    records, unreadable = read_records(tmp_path / "logs")
    assert unreadable == {} and len(records) == 3
    assert sorted((r.params["head"], r.params["dropout"]) for r in records) == [
        ("flatten", 0.5), ("gap", 0.1), ("gap", 0.5)]
    for rec in records:
        assert rec.status == COMPLETED and 0 <= rec.metrics["weighted_recall"] <= 1
        assert (tmp_path / "logs" / rec.paths["html"]).is_file()
        # the worker capped its kernel's threads for the 2 worker processes on this host
        assert rec.environment["thread_limits"]["TF_NUM_INTEROP_THREADS"] == "1"
    assert "sweep" in done.stderr and "3/3" in done.stderr  # the bar advanced with the tasks
    # the same command again: skip-by-hash holds on this executor too
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 completed, 3 skipped" in again.stdout, again.stderr[-2000:]
    assert len(read_records(tmp_path / "logs")[0]) == 3


def test_ctrl_c_marks_running_tasks_interrupted_and_starts_no_more(tmp_path, cluster):
    grid = write_grid(tmp_path, "[{action: busy, seconds: 120, score: 0.1}, {action: busy, seconds: 120, score: 0.2}, "
                                "{action: ok, score: 0.3}]")
    proc = subprocess.Popen([*SWEEP, str(grid), "--executor", "dask", "--scheduler", cluster.scheduler_address],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "experiments").glob("*/*.ipynb"))) < 2:
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err[-2000:]
    assert kernels_running_in(tmp_path) == []
    records, _ = read_records(tmp_path / "logs")
    assert sorted((r.params["score"], r.status) for r in records) == [(0.1, INTERRUPTED), (0.2, INTERRUPTED)]


def test_dask_options_are_checked(tmp_path, capsys):
    from runner.sweep import main

    grid = str(write_grid(tmp_path, "[{action: ok}]"))
    for argv, message in (([grid, "--executor", "dask"], "--executor dask needs --scheduler"),
                          ([grid, "--scheduler", "tcp://127.0.0.1:1"], "--scheduler needs --executor dask"),
                          ([grid, "--executor", "dask", "--scheduler", "tcp://x:1", "--workers", "2"],
                           "--workers is for --executor local")):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err
