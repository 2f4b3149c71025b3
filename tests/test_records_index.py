"""runner.records.index: the SQLite index of a logs folder gives what `read_all` gives, and never outlives a file.

Every check compares `read_summaries` with `read_all` on the same files (the JSON records are the truth), and
counts the files the index reads (`read_record`) to show what it re-reads and what it trusts."""

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from runner.records import COMPLETED, ENSEMBLE, FAILED, PRUNED, RANKING_METRICS, RunRecord, write_record
from runner.records import index as index_module
from runner.records.index import INDEX_FILE, RunSummary, read_summaries
from runner.records.query import parse_metric, rank, read_all

V1_LOGS = Path(__file__).parent / "assets" / "v1_run" / "logs"
RANKING = parse_metric("weighted_recall")


def metrics(value: float) -> dict:
    return {key: round(value + i / 100, 4) for i, key in enumerate(RANKING_METRICS)}


def record(run_id: str, val, test=None, status=COMPLETED, **changes) -> RunRecord:
    done = status == COMPLETED and val is not None
    changes.setdefault("params", {"base": "vgg16", "seed": 1, "units": [256]})
    return RunRecord(run_id=run_id, config_hash=run_id, status=status, started_at="2026-11-21T12:00:00+00:00",
                     finished_at="2026-11-21T12:01:00+00:00",
                     metrics=metrics(test if test is not None else val) if done else None,
                     val_metrics=metrics(val) if done else None, epochs_run=3, timings={"train_s": 1.5},
                     paths={"html": f"../experiments/{run_id}/{run_id}.html"},
                     error=None if done or status == PRUNED else {"ename": "ValueError", "evalue": "bad"}, **changes)


def age(folder: Path, seconds: float = 60) -> None:
    """Set every file's modification time `seconds` back (older than the index's racy window)."""
    then = time.time() - seconds
    for path in folder.iterdir():
        os.utime(path, (then, then))


@pytest.fixture
def logs(tmp_path) -> Path:
    folder = tmp_path / "logs"
    for rec in (record("20261121-120000-aaaaaaaa", 0.7, group_hash="a" * 64, name="first"),
                record("20261121-120100-bbbbbbbb", 0.9, 0.6, parent_run_id="20261121-120000-aaaaaaaa",
                       warm_start={"parent_run_id": "20261121-120000-aaaaaaaa", "checkpoint": "final",
                                   "weights_path": "../w.keras", "weights_sha256": "0" * 64}),
                record("20261121-120200-cccccccc", None, status=FAILED),
                record("20261121-120300-dddddddd", None, status=PRUNED),
                record("20261121-120400-eeeeeeee", 0.8, kind=ENSEMBLE, params={"members": ["a", "b"]})):
        write_record(rec, folder)
    shutil.copy(next(V1_LOGS.glob("*.json")), folder)  # schema 1: test metrics only
    (folder / "broken.json").write_text("{", encoding="utf-8")
    (folder / "20261121-130000-ffffffff.json").write_text(
        record("20261121-999999-ffffffff", 0.5).model_dump_json(), encoding="utf-8")  # another run's id
    age(folder)
    return folder


def assert_same(summaries, records) -> None:
    """Every field a summary has equals the record's."""
    assert [s.run_id for s in summaries] == [r.run_id for r in records]
    for summary, rec in zip(summaries, records):
        assert isinstance(summary, RunSummary)
        for name in ("schema_version", "status", "kind", "name", "group_hash", "rerun_of", "refit_of",
                     "parent_run_id", "started_at", "finished_at", "params", "epochs_run", "best_epoch",
                     "best_phase"):
            assert getattr(summary, name) == getattr(rec, name), name
        for split in ("metrics", "val_metrics"):
            ours, theirs = getattr(summary, split), getattr(rec, split)
            assert (ours is None) == (theirs is None)
            if theirs is not None:
                assert [getattr(ours, m) for m in RANKING_METRICS] == [getattr(theirs, m) for m in RANKING_METRICS]
        assert (summary.timings.train_s, summary.timings.total_s) == (rec.timings.train_s, rec.timings.total_s)
        assert summary.paths == {"html": rec.paths.get("html")}
        assert (summary.error and tuple(summary.error)) == (rec.error and (rec.error.ename, rec.error.evalue))
        assert (summary.warm_start and summary.warm_start.checkpoint) == (rec.warm_start and rec.warm_start.checkpoint)


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The record files the index reads, by name."""
    names: list[str] = []
    real = index_module.read_record
    monkeypatch.setattr(index_module, "read_record", lambda path: names.append(Path(path).name) or real(path))
    return names


def test_summaries_are_what_read_all_reads_and_rank_the_same(logs, reads):
    found = read_all(logs)
    for attempt in range(2):  # built, then read back from the index alone
        indexed = read_summaries(logs)
        assert_same(indexed.records, found.records)
        assert indexed.unreadable == found.unreadable and "broken.json" in indexed.unreadable
        assert "does not match the file name" in indexed.unreadable["20261121-130000-ffffffff.json"]
        assert [r.run_id for r in rank(indexed.records, RANKING)] == [r.run_id for r in rank(found.records, RANKING)]
    assert len(reads) == 8  # every file once: the second pass read none
    assert (logs / INDEX_FILE).is_file()
    assert indexed.load(indexed.records[0]) == found.records[0]  # the full record, from its file


def test_a_changed_new_or_removed_file_is_read_again_and_nothing_else(logs, reads):
    read_summaries(logs)
    reads.clear()
    changed = record("20261121-120000-aaaaaaaa", 0.3)
    write_record(changed, logs)  # replaced atomically: another inode, size and time
    write_record(record("20261121-140000-gggggggg", 0.95), logs)
    (logs / "20261121-120300-dddddddd.json").unlink()
    found = read_summaries(logs)
    assert sorted(reads) == ["20261121-120000-aaaaaaaa.json", "20261121-140000-gggggggg.json"]
    assert_same(found.records, read_all(logs).records)
    assert found.records[0].val_metrics.accuracy == 0.3
    assert "20261121-120300-dddddddd" not in {s.run_id for s in found.records}


def test_a_rewrite_of_the_same_size_and_time_is_caught_within_the_racy_window(logs, reads):
    """A file rewritten in place with the same size in the same timestamp tick as its indexing is re-read."""
    path = logs / "20261121-120100-bbbbbbbb.json"
    now = time.time()
    os.utime(path, (now, now))
    read_summaries(logs)  # indexed within the window of its modification: not trusted next time
    text = path.read_text()
    stat = path.stat()
    path.write_text(text.replace('"weighted_recall": 0.92', '"weighted_recall": 0.29'))  # same size, in place
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same time
    assert path.stat().st_size == stat.st_size
    reads.clear()
    found = read_summaries(logs)
    assert reads == [path.name]
    assert {s.run_id: s for s in found.records}["20261121-120100-bbbbbbbb"].val_metrics.weighted_recall == 0.29


@pytest.mark.parametrize("damage", ["garbage", "old version", "other code"])
def test_an_unreadable_or_outdated_index_is_rebuilt_from_the_files(logs, reads, damage, monkeypatch):
    read_summaries(logs)
    if damage == "garbage":
        (logs / INDEX_FILE).write_bytes(b"not a database" * 100)
    elif damage == "old version":
        with sqlite3.connect(logs / INDEX_FILE) as db:
            db.execute("PRAGMA user_version = 1")
    else:  # the schema or the reading of records changed since: its summaries may differ
        monkeypatch.setattr(index_module, "summary_code_hash", lambda: "0" * 64)
    reads.clear()
    found = read_summaries(logs)
    assert len(reads) == 8
    assert_same(found.records, read_all(logs).records)
    with sqlite3.connect(logs / INDEX_FILE) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == index_module.INDEX_VERSION


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_logs_folder_gives_the_summaries_without_an_index(logs):
    logs.chmod(0o500)
    try:
        found = read_summaries(logs)
    finally:
        logs.chmod(0o700)
    assert_same(found.records, read_all(logs).records)
    assert not (logs / INDEX_FILE).exists()


def test_an_index_that_cannot_be_written_gives_the_summaries_and_is_left_as_it_was(logs, reads, monkeypatch):
    """A write refused half-way (a read-only database, a full disk: here its first insert) changes nothing in
    the index (one transaction), and the files read are read again next time. Runs as root too, unlike the
    read-only folder above."""
    read_summaries(logs)
    (logs / "20261121-120000-aaaaaaaa.json").unlink()
    write_record(record("20261121-140000-gggggggg", 0.6, params={"base": "resnet50", "seed": 2}), logs)

    def refuse(self, params):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    reads.clear()
    with monkeypatch.context() as patch:
        patch.setattr(index_module._ParamTable, "encode", refuse)
        found = read_summaries(logs)
    assert reads == ["20261121-140000-gggggggg.json"]
    assert_same(found.records, read_all(logs).records)
    with sqlite3.connect(logs / INDEX_FILE) as db:
        indexed = {name for (name,) in db.execute("SELECT file FROM records")}
    assert "20261121-120000-aaaaaaaa.json" in indexed and "20261121-140000-gggggggg.json" not in indexed
    reads.clear()
    assert_same(read_summaries(logs).records, found.records)
    assert reads == ["20261121-140000-gggggggg.json"]


def test_many_files_are_read_by_a_process_pool_with_the_same_result(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "PARALLEL_MIN_FILES", 10)
    monkeypatch.setattr(index_module, "_CHUNK", 7)
    logs = tmp_path / "logs"
    logs.mkdir()
    for i in range(40):
        rec = record(f"20261121-{i:06d}-aaaaaaaa", 0.5 + i / 100, group_hash=f"{i % 4:064d}")
        (logs / f"{rec.run_id}.json").write_text(rec.model_dump_json(), encoding="utf-8")
    (logs / "broken.json").write_text("[", encoding="utf-8")
    found = read_summaries(logs, use_index=False)
    assert_same(found.records, read_all(logs).records)
    assert list(found.unreadable) == ["broken.json"] and not (logs / INDEX_FILE).exists()
    assert json.loads((logs / f"{found.records[3].run_id}.json").read_text())["params"] == found.records[3].params


def test_a_missing_folder_has_no_records_and_no_index(tmp_path):
    found = read_summaries(tmp_path / "none")
    assert found.records == [] and found.unreadable == {} and not (tmp_path / "none").exists()
