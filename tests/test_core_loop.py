"""The sweep (`runner.core.loop`): end to end through real papermill kernels and real Keras, resume by
config hash, Ctrl-C / SIGTERM, the logs lock held by a sweep, and a record that cannot be written.

The end-to-end sweep (the `sweep` fixture of conftest.py) runs tiny generated
images (3 classes), random weights, 32 px, 1 epoch: two runs that complete and
one that fails when it starts (a warm start from a run that does not exist
yet), so the sweep must record the failure and go on. Its recorded figures are
recomputed independently from the files the runs wrote. The sweep-level fault
tests use `tests/assets/faults.ipynb` (no TensorFlow, about a second a run).
"""

import hashlib
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from runner.grid import RunSpec
from runner.records.query import RecordSet, read_all
from runner.records import COMPLETED, FAILED, INTERRUPTED, PRUNED, RANKING_METRICS
from runner.core.loop import ListSource, StopSignals, SweepOptions, plan_grid, plan_runs
from helpers import sweep_main

from helpers import SWEEP, check_split_metrics, kernels_running_in, write_faults_grid


def statuses(work: Path) -> list:
    found = read_all(work / "logs")
    assert found.unreadable == {}
    return found.records


# The sweep loop without a kernel -------------------------------------------------------------------


def test_plan_runs_skips_done_hashes_and_honours_force_and_the_retry_options(make_record):
    def spec(i, config_hash):
        return RunSpec(index=i, params={}, config_hash=config_hash, origin=f"runs[{i}]")

    runs = [spec(0, "done"), spec(1, "failed"), spec(2, "pruned"), spec(3, "new")]
    records = [make_record("20260101-000000-00000001", 0.8), make_record("20260101-000000-00000002", None),
               make_record("20260101-000000-00000003", 0.7)]
    records[0].config_hash, records[1].config_hash, records[2].config_hash = "done", "failed", "pruned"
    records[2].status = PRUNED
    found = RecordSet(Path("logs"), records=records)

    def plan(**options):
        return [reason for _, reason in plan_runs(runs, found, SweepOptions(**options))]

    assert plan() == ["completed as 20260101-000000-00000001", None, "pruned as 20260101-000000-00000003", None]
    assert plan(force=True) == [None] * 4
    assert plan(retry_failed=True) == ["completed as 20260101-000000-00000001", None,
                                       "pruned as 20260101-000000-00000003",
                                       "never run (--retry-failed only re-runs failed runs)"]
    assert plan(retry_pruned=True) == ["completed as 20260101-000000-00000001",
                                       "not pruned (--retry-pruned only re-runs pruned runs)", None,
                                       "not pruned (--retry-pruned only re-runs pruned runs)"]
    assert plan(retry_failed=True, retry_pruned=True) == [
        "completed as 20260101-000000-00000001", None, None, "never run (--retry-failed only re-runs failed runs)"]


def test_plan_grid_gives_one_source_of_the_runs_to_execute_and_the_skipped_ones_apart(make_record):
    runs = [RunSpec(index=i, params={}, config_hash=h, origin=f"runs[{i}]") for i, h in enumerate(["done", "new", "x"])]
    record = make_record("20260101-000000-00000001", 0.8)
    record.config_hash = "done"
    found = RecordSet(Path("logs"), records=[record])
    source, skipped = plan_grid(runs, found, SweepOptions())
    assert isinstance(source, ListSource) and source.found is found
    assert [(run.index, reason) for run, reason in skipped] == [(0, "completed as 20260101-000000-00000001")]
    assert source.runs_remaining() == 2 and source.proposed is None and source.predicted_s(runs[1]) is None
    assert source.pop() is runs[1] and source.runs_remaining() == 1  # another run follows: a kernel starts ahead
    assert source.peek() is runs[2] and source.pop() is runs[2]
    assert source.runs_remaining() == 0 and source.peek() is None


def test_stop_signals_set_the_event_never_raise_and_restore_the_handlers():
    lines = []
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopSignals(lines.append) as stop:
        assert signal.getsignal(signal.SIGINT) is stop and signal.getsignal(signal.SIGTERM) is stop
        assert not stop.event.is_set()
        signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt: the handler only sets the event
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
        assert stop.event.is_set() and stop.count == 3
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert lines[0] == ("SIGINT: stopping; running runs are killed, saved and recorded as 'interrupted' "
                        "(no new run starts)")
    assert lines[1].startswith("SIGTERM again (2): still stopping") and lines[2].startswith("SIGINT again (3)")


# End to end: the `sweep` fixture ------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_goes_on_after_a_failed_run_and_exits_non_zero(sweep):
    work, proc, records, unreadable = sweep
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 completed, 1 failed" in proc.stdout
    assert unreadable == {}
    assert {base: rec.status for base, rec in records.items()} == {
        "simple_cnn_small": COMPLETED, "mobilenet": COMPLETED, "simple_cnn_medium": FAILED}
    assert len({rec.config_hash for rec in records.values()}) == 3


@pytest.mark.slow
def test_completed_run_files_and_values_recomputed_from_them(sweep, tiny_image_dir):
    work, _, records, _ = sweep
    logs = work / "logs"
    for base in ("simple_cnn_small", "mobilenet"):
        rec = records[base]
        run_dir = work / "experiments" / rec.run_id
        for name in (f"{rec.run_id}.ipynb", f"{rec.run_id}.html", "model.keras", "training_curves.png",
                     "confusion_matrix.png", "predictions.csv", "val_predictions.csv", "result.json",
                     "kernel.log"):
            assert (run_dir / name).is_file(), name
        # from scratch: the full model.keras; the run's weights are in one file, `trained_weights` is null
        assert rec.paths["trained_weights"] is None and rec.weights_path(logs) == run_dir / "model.keras"
        for key, rel in rec.paths.items():
            if key == "trained_weights":
                continue
            assert rel is not None, key
            path = rec.path_of(key, logs)
            assert path.parent == run_dir, key
            assert path.is_dir() if key == "tensorboard" else path.is_file(), key
        assert list((run_dir / "tensorboard").glob("*/events.out.tfevents.*"))
        assert rec.run_id.endswith(rec.config_hash[:8]) and rec.schema_version == 2 and rec.error is None

        # the data: every image of the folder in exactly one split, as the kernel saw it
        assert rec.data.dir == str(tiny_image_dir) and rec.data.class_names == ["blue", "green", "red"]
        assert rec.data.skipped_files == {} and len(rec.data.manifest_hash) == 64
        for c in rec.data.class_names:
            assert sum(rec.data.counts[split][c] for split in ("train", "val", "test")) == 12
        assert set(rec.data.counts) == {"train", "val", "test"}

        # test and validation metrics: recomputed with scikit-learn from predictions.csv, val_predictions.csv
        check_split_metrics(rec, logs, "test")
        check_split_metrics(rec, logs, "val")
        # the splits are disjoint: no image is in both files
        test_paths = set(pd.read_csv(rec.path_of("predictions", logs))["path"])
        assert test_paths.isdisjoint(pd.read_csv(rec.path_of("val_predictions", logs))["path"])
        # validation metrics: consistent with their confusion matrix
        val = rec.val_metrics
        matrix = np.array(val.confusion_matrix)
        assert matrix.shape == (3, 3) and matrix.sum() == sum(rec.data.counts["val"].values())
        assert list(matrix.sum(axis=1)) == [rec.data.counts["val"][c] for c in rec.data.class_names]
        assert val.accuracy == pytest.approx(np.trace(matrix) / matrix.sum())
        assert val.weighted_recall == pytest.approx(val.accuracy)  # recall weighted by support is accuracy
        assert val.macro_recall == pytest.approx(np.mean(np.diag(matrix) / matrix.sum(axis=1)))
        # Keras's own validation accuracy of the only (hence best) epoch is the same figure
        assert rec.history["head"]["val_accuracy"] == [pytest.approx(val.accuracy, abs=1e-6)]

        assert len(rec.history["head"]["loss"]) == rec.params["epochs"] == 1 and "fine_tune" not in rec.history
        assert (rec.best_epoch, rec.best_phase, rec.epochs_run) == (1, "head", 1)
        assert rec.model.base == base and rec.model.image_size == 32 and rec.model.weights_source == "random"
        assert rec.model.total_params >= rec.model.trainable_params > 0
        assert rec.model.model_file_sha256 == hashlib.sha256((run_dir / "model.keras").read_bytes()).hexdigest()
        assert 0 < rec.timings.train_s < rec.timings.total_s and rec.timings.eval_s > 0
        assert rec.environment["packages"]["tensorflow"] and rec.environment["python"]
        assert rec.parent_run_id is None and rec.warm_start is None and rec.params["warm_start"] is None


@pytest.mark.slow
def test_html_shows_the_injected_parameters(sweep):
    work, _, records, _ = sweep
    rec = records["mobilenet"]
    page = rec.path_of("html", work / "logs").read_text(encoding="utf-8")
    assert "Injected parameters" in page or "injected-parameters" in page
    assert '"mobilenet"' in page and "alpha" in page  # the injected cell's `base = "mobilenet"`
    assert rec.params["base_kwargs"] == {"alpha": 0.25} and rec.params["dropout"] == 0.25
    # the report's table shows the recorded test figure
    assert f"{rec.metrics.weighted_recall:.4f}".rstrip("0").rstrip(".") in page


@pytest.mark.slow
def test_a_warm_start_without_a_parent_fails_when_the_run_starts_before_any_kernel(sweep):
    """Warm starts are resolved once, by the runner, when the run starts: no notebook runs for this one.

    (Before schema 2 the notebook resolved it, so the failed run had a notebook and html; the
    notebook-failure case is `test_core_execute.py::test_faults_are_recorded_and_the_sweep_goes_on`.)
    """
    work, _, records, _ = sweep
    rec = records["simple_cnn_medium"]
    assert rec.error.ename == "ConfigError"
    assert rec.error.evalue == (f"warm_start: got 'best': best: no completed matching run with val_weighted_recall "
                                f"in {(work / 'logs').resolve()}")
    assert rec.params["warm_start"] == "best" and rec.parent_run_id is None and rec.warm_start is None
    assert rec.metrics is None and rec.val_metrics is None and rec.data is None and rec.model is None
    assert all(rel is None for rel in rec.paths.values())
    assert list((work / "experiments" / rec.run_id).iterdir()) == []


@pytest.mark.slow
def test_leaderboard_ranks_completed_runs_by_validation_weighted_recall(sweep):
    """`metric: weighted_recall` ranks on the validation split now (schema 2); the test figure is reported."""
    work, _, records, _ = sweep
    page = (work / "leaderboard.html").read_text(encoding="utf-8")
    board = pd.read_csv(work / "leaderboard.csv")
    completed = [records["simple_cnn_small"], records["mobilenet"]]
    expected = sorted(sorted(completed, key=lambda r: r.run_id), key=lambda r: r.val_metrics.weighted_recall,
                      reverse=True)
    assert list(board["run_id"]) == [r.run_id for r in expected]
    assert list(board["rank"]) == [1, 2]
    assert set(board["ranked_by"]) == {"val_weighted_recall"} and set(board["ranked_split"]) == {"val"}
    for _, row in board.iterrows():
        rec = records[row["param.base"]]
        for m in RANKING_METRICS:
            assert row[f"val_{m}"] == pytest.approx(getattr(rec.val_metrics, m))
            assert row[f"test_{m}"] == pytest.approx(getattr(rec.metrics, m))
        assert row["epochs_run"] == 1 and row["status"] == COMPLETED
    first, second = board["run_id"]
    assert page.index(first) < page.index(second)
    assert "Runs that did not complete (1)" in page and records["simple_cnn_medium"].run_id in page


# Resume, signals, the lock (faults notebook) ------------------------------------------------------


@pytest.mark.slow
def test_rerun_skips_completed_runs_force_and_retry_failed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    grid = write_faults_grid(tmp_path, "[{action: ok, score: 0.1}, {action: ok, score: 0.2}, {action: raise}]")
    assert sweep_main([str(grid)]) == 1
    first = statuses(tmp_path)
    assert sorted(r.status for r in first) == [COMPLETED, COMPLETED, FAILED]
    capsys.readouterr()
    # again: both completed runs are skipped, the failed one runs again
    assert sweep_main([str(grid)]) == 1
    out = capsys.readouterr()
    assert "0 completed, 1 failed, 2 skipped" in out.out and out.err.count("skip run") == 2
    again = statuses(tmp_path)
    assert len(again) == 4
    new = [r for r in again if r.run_id not in {f.run_id for f in first}]
    assert [(r.params["action"], r.status) for r in new] == [("raise", FAILED)]
    # --retry-failed with a new run added: only the failed one runs
    grid = write_faults_grid(tmp_path, "[{action: ok, score: 0.1}, {action: ok, score: 0.2}, {action: raise}, "
                                       "{action: ok, score: 0.3}]")
    assert sweep_main([str(grid), "--retry-failed"]) == 1
    assert "3 skipped" in capsys.readouterr().out
    assert [r.params["action"] for r in statuses(tmp_path)].count("raise") == 3
    assert len(statuses(tmp_path)) == 5
    # --force runs everything
    assert sweep_main([str(grid), "--force"]) == 1
    assert "3 completed, 1 failed" in capsys.readouterr().out
    assert len(statuses(tmp_path)) == 9


@pytest.mark.slow
def test_sigint_records_interrupted_and_the_same_command_continues(tmp_path):
    grid = write_faults_grid(tmp_path, "[{action: ok, score: 0.1}, {action: busy, seconds: 60}, "
                                       "{action: ok, score: 0.3}]")
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
    records = {(r.params["action"], r.params["score"]): r for r in statuses(tmp_path)}
    assert records["ok", 0.1].status == COMPLETED
    interrupted = records["busy", 0.5]
    assert interrupted.status == INTERRUPTED and interrupted.error.ename == "KeyboardInterrupt"
    assert interrupted.metrics is None
    assert interrupted.path_of("notebook", tmp_path / "logs").is_file()
    assert interrupted.path_of("html", tmp_path / "logs").is_file()
    assert ("ok", 0.3) not in records
    assert interrupted.run_id in (tmp_path / "leaderboard.html").read_text()
    # the same command again: the completed run is skipped, the rest runs
    grid = write_faults_grid(tmp_path, "[{action: ok, score: 0.1}, {action: busy, seconds: 1}, "
                                       "{action: ok, score: 0.3}]")
    done = subprocess.run([*SWEEP, str(grid)], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted((r.params["action"], r.status) for r in statuses(tmp_path)) == [
        ("busy", COMPLETED), ("busy", INTERRUPTED), ("ok", COMPLETED), ("ok", COMPLETED)]


@pytest.mark.slow
def test_sigterm_is_an_interrupt_too(tmp_path):
    grid = write_faults_grid(tmp_path, "[{action: sleep, seconds: 60}]")
    proc = subprocess.Popen([*SWEEP, str(grid)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "experiments").glob("*/*.ipynb")):
        time.sleep(0.5)
    time.sleep(3)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    (rec,) = statuses(tmp_path)
    assert rec.status == INTERRUPTED and rec.timings.total_s < 60
    assert kernels_running_in(tmp_path) == []


@pytest.mark.slow
def test_second_sweep_on_the_same_logs_is_refused(tmp_path):
    grid = write_faults_grid(tmp_path, "[{action: sleep, seconds: 20}]")
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


@pytest.mark.slow
def test_record_write_failure_stops_the_sweep_cleanly(tmp_path, monkeypatch, capsys):
    """Disk full while writing a record: the sweep stops, no partial file, earlier records intact."""
    import models.contract as records_module  # the atomic writes every record goes through

    monkeypatch.chdir(tmp_path)
    grid = write_faults_grid(tmp_path, "[{action: ok, score: 0.1}, {action: ok, score: 0.2}, {action: ok, score: 0.3}]")
    assert sweep_main([str(grid)]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "logs").glob("*.json")}
    assert len(before) == 3
    real = records_module.write_text_atomic

    def full_disk(path, text):
        if Path(path).suffix == ".json" and Path(path).parent.name == "logs":
            raise OSError(28, "No space left on device")
        return real(path, text)

    monkeypatch.setattr(records_module, "write_text_atomic", full_disk)
    assert sweep_main([str(grid), "--force"]) == 1
    err = capsys.readouterr().err
    assert "cannot write run record" in err and "No space left on device" in err
    assert "the sweep stopped, every record written so far is intact" in err
    after = {p.name: p.read_bytes() for p in (tmp_path / "logs").glob("*.json")}
    assert after == before  # nothing new, nothing changed
    assert not list((tmp_path / "logs").glob(".*.tmp"))
    assert len(list((tmp_path / "experiments").iterdir())) == 4  # the stopped sweep's one run: an orphan folder


@pytest.mark.slow
def test_max_runs_needs_yes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    grid = write_faults_grid(tmp_path, "[{score: 0.1}, {score: 0.2}, {score: 0.3}]")
    assert sweep_main([str(grid), "--max-runs", "2"]) == 2
    assert "expands to 3 runs, more than --max-runs 2; pass --yes" in capsys.readouterr().err
    assert not (tmp_path / "experiments").exists()
    assert sweep_main([str(grid), "--max-runs", "2", "--yes"]) == 0
    assert len(statuses(tmp_path)) == 3
