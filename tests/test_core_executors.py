"""The executors (`runner.core.executors`): `--workers N` (local worker processes, the activation cache
shared) and `--executor dask` (runs as tasks on a real `dask.distributed` LocalCluster: worker
processes on the loopback interface).

Each real sweep's recorded test and validation figures are recomputed from the runs'
`predictions.csv` and `val_predictions.csv` with scikit-learn (`conftest.check_split_metrics`),
so a worker that records another run's figures, or figures of the wrong split, fails.
"""

import os
import signal
import subprocess
import time
from datetime import datetime

import pytest

from runner import PROJECT_ROOT
from runner.core.executors import assign_gpus, discover_gpus, gpu_environment, parse_gpu_list, thread_limits
from runner.errors import ConfigError
from runner.records import collect_environment
from runner.records.query import read_all
from runner.records import COMPLETED, INTERRUPTED
from helpers import sweep_main

from helpers import SWEEP, check_split_metrics, kernels_running_in, write_faults_grid


def check_completed_run(rec, logs_dir, n_images: int = 36) -> None:
    """A completed tiny-image run: its files, and its test and validation figures recomputed."""
    assert rec.status == COMPLETED and rec.error is None
    for key in ("notebook", "html", "predictions", "val_predictions", "result"):
        assert rec.path_of(key, logs_dir).is_file(), key
    assert rec.weights_path(logs_dir).is_file()  # trained_weights.h5 (frozen pretrained base) or model.keras
    assert sum(sum(split.values()) for split in rec.data.counts.values()) == n_images
    check_split_metrics(rec, logs_dir, "test")
    check_split_metrics(rec, logs_dir, "val")
    assert rec.epochs_run == sum(len(phase["loss"]) for phase in rec.history.values()) == rec.params["epochs"]


def test_thread_limits_share_the_cores_between_the_workers():
    assert thread_limits(2, cores=16) == {"TF_NUM_INTRAOP_THREADS": "8", "OMP_NUM_THREADS": "8",
                                          "TF_NUM_INTEROP_THREADS": "1"}
    assert thread_limits(3, cores=16)["TF_NUM_INTRAOP_THREADS"] == "5"
    assert thread_limits(32, cores=16)["OMP_NUM_THREADS"] == "1"  # never 0


def test_workers_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sweep_main([str(write_faults_grid(tmp_path, "[{action: ok}]")), "--workers", "0"])
    assert "Invalid value for '--workers': 0 is not in the range x>=1." in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]


def test_dask_options_are_checked(tmp_path, capsys):
    grid = str(write_faults_grid(tmp_path, "[{action: ok}]"))
    for argv, message in (([grid, "--executor", "dask"], "--executor dask needs --scheduler"),
                          ([grid, "--scheduler", "tcp://127.0.0.1:1"], "--scheduler needs --executor dask"),
                          ([grid, "--executor", "dask", "--scheduler", "tcp://x:1", "--workers", "2"],
                           "--workers is for --executor local"),
                          ([grid, "--executor", "dask", "--scheduler", "tcp://x:1", "--gpus-per-worker", "1"],
                           "--gpus-per-worker is for --executor local")):
        with pytest.raises(SystemExit):
            sweep_main(argv)
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]


# GPUs: the assignment on a simulated device list -------------------------------------------------


@pytest.mark.parametrize("workers, gpus, per_worker, expected", [
    (2, [], None, [[], []]),  # no GPU: nothing changes
    (2, ["0", "1", "2", "3"], None, [["0"], ["1"]]),  # one each
    (3, ["0", "1"], None, [["0"], ["1"], ["0"]]),  # more workers than GPUs: in turn
    (2, ["0", "1", "2", "3"], 2, [["0", "1"], ["2", "3"]]),
    (4, ["0", "1"], 0.5, [["0"], ["0"], ["1"], ["1"]]),
    (3, ["0", "1"], 0.5, [["0"], ["0"], ["1"]]),
    (2, ["0"], 0.25, [["0"], ["0"]]),
    (3, ["0", "1"], 1 / 3, [["0"], ["0"], ["0"]]),
    (1, ["MIG-a", "MIG-b"], 1, [["MIG-a"]]),
])
def test_assign_gpus_gives_each_worker_its_gpus_or_a_share(workers, gpus, per_worker, expected):
    assert assign_gpus(workers, gpus, per_worker) == expected


@pytest.mark.parametrize("workers, gpus, per_worker, message", [
    (2, ["0", "1"], 0.3, "--gpus-per-worker 0.3: expected a whole number of GPUs per worker (1, 2, ...) or a share "
                         "of one, 1/k for k workers per GPU (0.5, 0.25, 0.2, ...)"),
    (2, ["0", "1"], 1.5, "--gpus-per-worker 1.5: expected a whole number"),
    (2, [], 1, "--gpus-per-worker 1: this machine has no GPU"),
    (4, ["0", "1"], 1, "--gpus-per-worker 1 with --workers 4 needs 4 GPUs; this machine has 2 (0, 1): use "
                       "--gpus-per-worker 0.5 or --workers 2 (allowed values: a whole number"),
    (2, ["0", "1", "2"], 2, "--gpus-per-worker 2 with --workers 2 needs 4 GPUs; this machine has 3 (0, 1, 2): use "
                            "--gpus-per-worker 1 or --workers 1"),
    (5, ["0", "1"], 0.5, "--gpus-per-worker 0.5 with --workers 5 needs 3 GPUs; this machine has 2 (0, 1): use "
                         "--gpus-per-worker 0.333333 or --workers 4"),
])
def test_impossible_gpu_shares_are_refused_with_what_fits(workers, gpus, per_worker, message):
    with pytest.raises(ConfigError) as error:
        assign_gpus(workers, gpus, per_worker)
    assert str(error.value).startswith(message)


def test_gpu_discovery_reads_cuda_visible_devices_or_nvidia_smi_and_the_record_names_them(monkeypatch, tmp_path):
    listing = ("GPU 0: NVIDIA H200 (UUID: GPU-1111)\n"
               "GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-2222)\n"
               "  MIG 3g.20gb     Device  0: (UUID: MIG-aaaa)\n"
               "  MIG 3g.20gb     Device  1: (UUID: MIG-bbbb)\n"
               "GPU 2: NVIDIA H200 (UUID: GPU-3333)\n")
    assert parse_gpu_list(listing) == ["0", "MIG-aaaa", "MIG-bbbb", "2"]
    assert parse_gpu_list("") == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,-1,5")
    assert discover_gpus() == ["2", "3"]  # as CUDA reads it: up to the first invalid entry
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert discover_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\nprintf '{listing}'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert discover_gpus() == ["0", "MIG-aaaa", "MIG-bbbb", "2"]
    fake.write_text("#!/bin/sh\nexit 9\n")  # a driver that fails: no GPU
    assert discover_gpus() == []

    assert gpu_environment([]) == {}
    env = gpu_environment(["1", "3"])
    assert env == {"CUDA_VISIBLE_DEVICES": "1,3", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    assert "gpus" not in collect_environment()  # without GPUs the record is as before
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env["CUDA_VISIBLE_DEVICES"])
    assert collect_environment()["gpus"] == ["1", "3"]


@pytest.mark.slow
def test_each_worker_kernel_sees_its_own_gpu(tmp_path, monkeypatch, capsys):
    """Two simulated GPUs (CUDA_VISIBLE_DEVICES=7,8 in the sweep's environment): each of 2 workers gets one,
    with --gpus-per-worker 0.5 both share the first; the records name them, thread caps unchanged."""
    write_faults_grid(tmp_path, "[{action: sleep, seconds: 2, score: 0.1}, {action: sleep, seconds: 2, score: 0.2}]")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "7,8"}
    done = subprocess.run([*SWEEP, "grid.yaml", "--workers", "2"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_all(tmp_path / "logs").records
    assert sorted(r.environment["gpus"] for r in records) == [["7"], ["8"]]
    assert all(r.environment["thread_limits"] == thread_limits(2) for r in records)
    shared = subprocess.run([*SWEEP, "grid.yaml", "--workers", "2", "--gpus-per-worker", "0.5", "--force"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert shared.returncode == 0, shared.stderr[-3000:]
    later = [r for r in read_all(tmp_path / "logs").records if r.run_id not in {rec.run_id for rec in records}]
    assert [r.environment["gpus"] for r in later] == [["7"], ["7"]]
    # refused before anything runs: in this process, with the same GPUs (no third sweep process to start)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7,8")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert sweep_main(["grid.yaml", "--workers", "3", "--gpus-per-worker", "1"]) == 2
    assert "needs 3 GPUs; this machine has 2 (7, 8)" in capsys.readouterr().err
    assert len(read_all(tmp_path / "logs").records) == 4
    assert kernels_running_in(tmp_path) == []


# --workers N ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_complete_a_four_run_sweep(tmp_path, tiny_image_dir, base_weights_file):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"""
notebook: {PROJECT_ROOT / 'notebooks' / 'base_experiment.ipynb'}
data_dir: {tiny_image_dir}
fixed: {{base: simple_cnn_small, weights: {base_weights_file}, image_size: 32, epochs: 2, batch_size: 8,
        dense_units: [8], val_fraction: 0.2, test_fraction: 0.25}}
grid:
  - head: [flatten, gap]
    dropout: [0.0, 0.3]
""", encoding="utf-8")
    done = subprocess.run([*SWEEP, str(grid), "--workers", "2"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 completed" in done.stdout
    found = read_all(tmp_path / "logs")
    records = found.records
    assert found.unreadable == {} and len(records) == 4
    assert sorted((r.params["head"], r.params["dropout"]) for r in records) == [
        ("flatten", 0.0), ("flatten", 0.3), ("gap", 0.0), ("gap", 0.3)]
    assert len({r.run_id for r in records}) == len({r.config_hash for r in records}) == 4
    for rec in records:
        check_completed_run(rec, tmp_path / "logs")
        assert rec.model.weights_source == "file" and rec.model.weights_path == base_weights_file
        assert rec.environment["thread_limits"] == thread_limits(2)
        assert rec.activation_cache["evaluation"] == {"from_cache": True}
    # one run built the frozen base's outputs, the other three (one of them waiting for it) read them
    assert sorted(r.activation_cache["head"]["status"] for r in records) == ["built", "hit", "hit", "hit"]
    assert len({r.activation_cache["head"]["key"] for r in records}) == 1
    built = next(r for r in records if r.activation_cache["head"]["status"] == "built")
    assert built.timings.cache_build_s == pytest.approx(built.activation_cache["head"]["build_s"])
    assert 0 < built.timings.cache_build_s < built.timings.train_s
    # the same frozen base and split: every run saw the same data
    assert len({r.data.manifest_hash for r in records}) == 1
    # two runs at a time: the first two overlap
    spans = sorted((datetime.fromisoformat(r.started_at), datetime.fromisoformat(r.finished_at)) for r in records)
    assert spans[1][0] < spans[0][1]
    assert "leaderboard" in done.stdout and (tmp_path / "leaderboard.html").is_file()


@pytest.mark.slow
def test_sigint_stops_every_worker_and_records_the_running_runs(tmp_path):
    grid = write_faults_grid(tmp_path, "[{action: busy, seconds: 120, score: 0.1}, {action: busy, seconds: 120, "
                                       "score: 0.2}, {action: ok, score: 0.3}]")
    proc = subprocess.Popen([*SWEEP, str(grid), "--workers", "2"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "experiments").glob("*/*.ipynb"))) < 2:
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)  # to the sweep only, as `kill -INT`: it must stop its workers itself
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err[-2000:]
    assert kernels_running_in(tmp_path) == []
    records = read_all(tmp_path / "logs").records
    assert sorted((r.params["score"], r.status) for r in records) == [(0.1, INTERRUPTED), (0.2, INTERRUPTED)]
    for rec in records:
        assert rec.error.ename == "KeyboardInterrupt" and rec.metrics is None
        assert rec.path_of("notebook", tmp_path / "logs").is_file()
        assert rec.timings.total_s < 120  # stopped, not left to work its 120 s


# --executor dask -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes on 127.0.0.1, as `dask worker --nthreads 1` would run."""
    distributed = pytest.importorskip("dask.distributed", reason="dask[distributed] is not installed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as local:
        yield local


@pytest.mark.slow
def test_a_three_run_sweep_through_a_local_cluster(tmp_path, tiny_image_dir, cluster):
    """3 real runs on the 2 Dask workers: correct records; a worker keeps its next kernel ready (runs 1 and 2
    are submitted with more to follow, so their workers start one ahead, and run 3 takes only one of them)
    and no kernel outlives the sweep; the same command again skips every run."""
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
    with open(tmp_path / "out.txt", "w+") as out_file, open(tmp_path / "err.txt", "w+") as err_file:
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=out_file, stderr=err_file, text=True)
        experiments, seen_ahead = tmp_path / "experiments", False
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:  # a kernel waiting in the experiments folder itself
            for pid in kernels_running_in(experiments):
                try:
                    seen_ahead = seen_ahead or os.readlink(f"/proc/{pid}/cwd") == str(experiments)
                except OSError:  # it ended meanwhile
                    pass
            time.sleep(0.2)
        proc.communicate(timeout=60)
    out, err = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert proc.returncode == 0, err[-3000:]
    assert "3 completed" in out and seen_ahead
    assert kernels_running_in(tmp_path) == []  # the one no run took was killed when the sweep closed
    found = read_all(tmp_path / "logs")
    records = found.records
    assert found.unreadable == {} and len(records) == 3
    assert sorted((r.params["head"], r.params["dropout"]) for r in records) == [
        ("flatten", 0.5), ("gap", 0.1), ("gap", 0.5)]
    for rec in records:
        check_completed_run(rec, tmp_path / "logs")
        assert rec.model.weights_source == "random"
        # the worker capped its kernel's threads for the 2 worker processes on this host
        assert rec.environment["thread_limits"] == thread_limits(2)
    assert "sweep" in err and "3/3" in err  # the bar advanced with the tasks
    # the same command again: skip-by-hash holds on this executor too
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 completed, 3 skipped" in again.stdout, again.stderr[-2000:]
    assert [r.run_id for r in read_all(tmp_path / "logs").records] == [r.run_id for r in records]


@pytest.mark.slow
def test_ctrl_c_marks_running_tasks_interrupted_and_starts_no_more(tmp_path, cluster):
    grid = write_faults_grid(tmp_path, "[{action: busy, seconds: 120, score: 0.1}, {action: busy, seconds: 120, "
                                       "score: 0.2}, {action: ok, score: 0.3}]")
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
    records = read_all(tmp_path / "logs").records
    assert sorted((r.params["score"], r.status) for r in records) == [(0.1, INTERRUPTED), (0.2, INTERRUPTED)]
    assert all(rec.timings.total_s < 120 for rec in records)
    assert len(list((tmp_path / "experiments").iterdir())) == 2  # the third run never started
