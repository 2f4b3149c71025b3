"""runner.records: the typed contract (NotebookResult, RunRecord), build_record, schema-1 upgrade, atomic writes."""

import json
import os
import stat
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from runner.records import (
    COMPLETED, FAILED, SCHEMA_VERSION, NotebookResult, RunRecord, build_record, read_record, read_result,
    write_record, write_result, write_text_atomic,
)

V1_LOGS = Path(__file__).parent / "assets" / "v1_run" / "logs"
V1_ID = "20261202-025738-b692e854"
"""A record written by the schema-1 code (commit b8f4a9d) on builtin digits, kept with its files."""

METRICS = {"accuracy": 0.9, "weighted_precision": 0.91, "weighted_recall": 0.9, "weighted_f1": 0.905,
           "macro_precision": 0.89, "macro_recall": 0.88, "macro_f1": 0.885,
           "per_class": {"a": {"precision": 1.0, "recall": 0.8, "f1": 0.89, "support": 5}},
           "confusion_matrix": [[4, 1], [0, 5]]}


def result_sections(**changes) -> dict:
    sections = {
        "data": {"dir": "/d", "class_names": ["a", "b"], "counts": {"test": {"a": 5, "b": 5}},
                 "manifest_hash": "0" * 64, "skipped_files": {}},
        "model": {"base": "simple_cnn_small", "weights": None, "trainable_params": 10, "total_params": 12},
        "training": {"history": {"head": {"loss": [1.0, 0.5, 0.4], "val_loss": [1.1, 0.6, 0.7]},
                                 "fine_tune": {"loss": [0.3], "val_loss": [0.65]}},
                     "best_epoch": 2, "best_phase": "head", "epochs_run": 4, "train_s": 3.5,
                     "activation_cache": {"head": {"status": "built", "build_s": 1.25, "key": "k"},
                                          "fine_tune": {"status": "hit", "build_s": 0.0}}},
        "evaluation": {"metrics": METRICS, "val_metrics": {**METRICS, "weighted_recall": 0.7}, "eval_s": 0.5,
                       "from_cache": True},
        "warm_start": None,
    }
    sections.update(changes)
    return sections


def test_write_result_validates_the_contract(tmp_path):
    write_result(tmp_path, **result_sections())
    result = read_result(tmp_path)
    assert isinstance(result, NotebookResult)
    assert result.evaluation.val_metrics.weighted_recall == 0.7
    assert result.training.activation_cache["head"].key == "k"  # extra cache keys are kept
    with pytest.raises(ValidationError, match="weighted_recall"):  # a metric missing: the notebook's bug, loudly
        write_result(tmp_path / "bad", **result_sections(evaluation={"metrics": {"accuracy": 1.0}}))
    assert not (tmp_path / "bad").exists()
    (tmp_path / "result.json").write_text("{not json", encoding="utf-8")
    assert read_result(tmp_path) is None


def test_build_record_stores_each_fact_once(tmp_path):
    run_dir, logs = tmp_path / "experiments" / "r1", tmp_path / "logs"
    run_dir.mkdir(parents=True)
    (run_dir / "model.keras").write_bytes(b"weights")
    write_result(run_dir, **result_sections())
    files = {"model": run_dir / "model.keras", "result": run_dir / "result.json", "html": run_dir / "r1.html"}
    record = build_record(run_id="r1", config_hash="c" * 64, status=COMPLETED,
                          started_at=datetime(2026, 1, 1, tzinfo=timezone.utc), params={"warm_start": "best"},
                          result=read_result(run_dir), files=files, logs_dir=logs, total_s=9.87654,
                          environment={})
    assert record.schema_version == SCHEMA_VERSION == 2
    assert record.epochs_run == 4 and record.best_phase == "head" and record.best_epoch == 2
    assert record.metrics.weighted_recall == 0.9 and record.val_metrics.weighted_recall == 0.7
    assert record.timings.cache_build_s == 1.25 and record.timings.total_s == 9.877
    assert record.activation_cache["evaluation"] == {"from_cache": True}
    assert record.paths == {"model": "../experiments/r1/model.keras", "result": "../experiments/r1/result.json",
                            "html": None}  # the html does not exist: recorded as missing
    import hashlib
    assert record.model.model_file_sha256 == hashlib.sha256(b"weights").hexdigest()
    assert record.params == {"warm_start": "best"}  # the user's reference, not the resolved run
    path = write_record(record, logs)
    assert read_record(path) == record


def test_status_and_kind_are_checked():
    base = dict(run_id="r", config_hash="c", started_at="t", finished_at="t", params={})
    with pytest.raises(ValidationError, match="status"):
        RunRecord(status="done", **base)
    with pytest.raises(ValidationError, match="kind"):
        RunRecord(status=FAILED, kind="tree", **base)


def test_schema_1_record_from_the_previous_code_loads_ranks_and_predicts():
    record = read_record(V1_LOGS / f"{V1_ID}.json")
    raw = json.loads((V1_LOGS / f"{V1_ID}.json").read_text())
    assert raw["schema_version"] == 1 and "epochs_run" not in raw
    assert record.schema_version == 1 and record.status == COMPLETED
    assert record.val_metrics is None
    assert record.metrics.weighted_recall == raw["metrics"]["weighted_recall"]
    assert record.epochs_run == len(raw["history"]["head"]["val_loss"]) == 2
    assert record.best_phase == "head" and record.warm_start is None
    assert record.timings.train_s == raw["timings"]["train_s"]


@pytest.mark.slow
def test_schema_1_record_predicts_with_load_run(tmp_path):
    import shutil

    import numpy as np

    from runner.core.predict import load_run

    shutil.copytree(V1_LOGS.parent, tmp_path / "v1")
    run = load_run(V1_ID, logs_dir=tmp_path / "v1" / "logs")
    probabilities = run.predict(np.zeros((2, 32, 32, 3), dtype=np.uint8))
    assert probabilities.shape == (2, len(run.class_names)) == (2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_atomic_writes_use_the_users_file_mode(tmp_path, monkeypatch):
    """mkstemp creates 0600 files; a record or page gets 0666 minus the umask instead, like any output."""
    import models.contract as records

    assert records._UMASK == records._read_umask()  # read at import, unchanged by reading it
    monkeypatch.setattr(records, "_UMASK", 0o022)
    assert stat.S_IMODE(write_text_atomic(tmp_path / "page.html", "x").stat().st_mode) == 0o644
    monkeypatch.setattr(records, "_UMASK", 0o077)
    assert stat.S_IMODE(write_text_atomic(tmp_path / "private.json", "x").stat().st_mode) == 0o600


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "leaderboard.html"
    target.write_text("old", encoding="utf-8")

    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_text_atomic(target, "new")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["leaderboard.html"]  # no temp file left
