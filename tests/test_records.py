"""runner.records: the notebook's typed result (NotebookResult), a schema-1 run predicting, atomic writes.
The record itself and build_record: test_records_schema.py; reading and writing records: test_records_store.py."""

import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from runner.records import NotebookResult, read_result, write_result, write_text_atomic

from helpers import result_sections

V1_LOGS = Path(__file__).parent / "assets" / "v1_run" / "logs"
V1_ID = "20261202-025738-b692e854"
"""A record written by the schema-1 code (commit b8f4a9d) on builtin digits, kept with its files."""

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
