"""`--workers N`: concurrent runs in local worker processes, with the activation cache shared."""

import signal
import subprocess
import time
from datetime import datetime

import pytest

from runner import PROJECT_ROOT
from runner.executors import thread_limits
from runner.records import COMPLETED, INTERRUPTED, read_records

from test_faults import SWEEP, kernels_running_in, write_grid

pytestmark = pytest.mark.slow


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
    records, unreadable = read_records(tmp_path / "logs")
    assert unreadable == {} and len(records) == 4
    assert sorted((r.params["head"], r.params["dropout"]) for r in records) == [
        ("flatten", 0.0), ("flatten", 0.3), ("gap", 0.0), ("gap", 0.3)]
    assert len({r.run_id for r in records}) == len({r.config_hash for r in records}) == 4
    for rec in records:
        assert rec.status == COMPLETED and 0 <= rec.metrics["weighted_recall"] <= 1
        assert (tmp_path / "logs" / rec.paths["html"]).is_file()
        assert (tmp_path / "logs" / rec.paths["model"]).is_file()
        assert rec.environment["thread_limits"] == thread_limits(2)
        assert rec.activation_cache["evaluation"] == {"from_cache": True}
    # one run built the frozen base's outputs, the other three (one of them waiting for it) read them
    assert sorted(r.activation_cache["head"]["status"] for r in records) == ["built", "hit", "hit", "hit"]
    assert len({r.activation_cache["head"]["key"] for r in records}) == 1
    # two runs at a time: the first two overlap
    spans = sorted((datetime.fromisoformat(r.started_at), datetime.fromisoformat(r.finished_at)) for r in records)
    assert spans[1][0] < spans[0][1]
    assert "leaderboard" in done.stdout and (tmp_path / "leaderboard.html").is_file()


def test_sigint_stops_every_worker_and_records_the_running_runs(tmp_path):
    grid = write_grid(tmp_path, "[{action: busy, seconds: 120, score: 0.1}, {action: busy, seconds: 120, score: 0.2}, "
                                "{action: ok, score: 0.3}]")
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
    records, _ = read_records(tmp_path / "logs")
    assert sorted((r.params["score"], r.status) for r in records) == [(0.1, INTERRUPTED), (0.2, INTERRUPTED)]
    for rec in records:
        assert (tmp_path / "logs" / rec.paths["notebook"]).is_file()


def test_workers_must_be_positive(tmp_path, capsys):
    from runner.sweep import main

    with pytest.raises(SystemExit):
        main([str(write_grid(tmp_path, "[{action: ok}]")), "--workers", "0"])
    assert "expected an integer >= 1, got 0" in capsys.readouterr().err
