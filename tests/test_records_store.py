"""`runner.records.store`: run records written (`write_record`) and read back (`read_record`: validated,
schema-1 records upgraded, bad files refused naming the file), and the sweep's pages written atomically
(`write_page`), with a `FatalError` when a file cannot be written. Real files in `tmp_path`."""

import json
from pathlib import Path

import pytest

from runner.errors import FatalError, RunnerError
from runner.records import COMPLETED, FAILED, SCHEMA_VERSION, read_record, write_page, write_record

V1_LOGS = Path(__file__).parent / "assets" / "v1_run" / "logs"
V1_ID = "20261202-025738-b692e854"
"""A record written by the schema-1 code (commit b8f4a9d) on builtin digits, kept with its files."""

REQUIRED = dict(run_id="20261121-120000-abababab", config_hash="ab" * 32, status=FAILED,
                started_at="2026-11-21T12:00:00+00:00", finished_at="2026-11-21T12:01:00+00:00")


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


def names_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# write_record -----------------------------------------------------------------------------------------


def test_write_record_writes_run_id_json_and_reads_back_equal(tmp_path, make_record):
    record = make_record("20261121-120000-cdcdcdcd", 0.8, base="simple_cnn_small")
    logs = tmp_path / "deep" / "logs"  # created
    path = write_record(record, logs)
    assert path == logs / "20261121-120000-cdcdcdcd.json" and names_in(logs) == [path.name]
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == record.model_dump(mode="json")
    assert text.startswith('{\n  "schema_version": 2,') and text.endswith("}\n")  # indented, one line each
    assert read_record(path) == record
    assert read_record(str(path)) == record


def test_write_record_replaces_the_previous_record_whole(tmp_path, make_record):
    first = make_record("20261121-120000-efefefef", 0.5)
    write_record(first, tmp_path)
    second = first.model_copy(update={"warnings": ["rewritten"]})
    path = write_record(second, tmp_path)
    assert read_record(path).warnings == ["rewritten"]
    assert names_in(tmp_path) == [path.name]  # no temporary file left beside it


def test_write_record_failure_is_fatal_and_names_the_file(tmp_path, make_record):
    (tmp_path / "logs").write_text("a file where the folder should be", encoding="utf-8")
    record = make_record("20261121-120000-01010101", 0.5)
    with pytest.raises(FatalError, match=r"^cannot write run record .*/logs/20261121-120000-01010101\.json: ") as info:
        write_record(record, tmp_path / "logs")
    assert isinstance(info.value, RunnerError) and isinstance(info.value.__cause__, OSError)
    assert (tmp_path / "logs").read_text(encoding="utf-8") == "a file where the folder should be"


# read_record ------------------------------------------------------------------------------------------


def write_json(path: Path, payload) -> Path:
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def test_read_record_canonicalises_a_base_stored_in_another_spelling(tmp_path):
    """A record written by a version that stored the spelling given (`VGG16`) reads as `vgg16`."""
    path = write_json(tmp_path / "r.json", {**REQUIRED, "schema_version": 2, "params": {"base": "VGG16"}})
    assert read_record(path).params == {"base": "vgg16"}


def test_read_record_upgrades_a_schema_1_payload(tmp_path):
    payload = {**REQUIRED, "schema_version": 1, "params": {"base": "MobileNetV2"}, "model": {}, "data": {},
               "warm_start": {}, "metrics": {}, "best_epoch": 3,
               "history": {"head": {"loss": [1.0, 0.8], "val_loss": [1.0, 0.9]},
                           "fine_tune": {"loss": [0.7, 0.6], "val_loss": [0.8, 0.85]}},
               "error": {"ename": "ValueError", "evalue": "x"}}
    record = read_record(write_json(tmp_path / "v1.json", payload))
    assert (record.schema_version, record.epochs_run, record.best_phase) == (1, 4, "fine_tune")
    assert (record.model, record.data, record.warm_start, record.metrics) == (None, None, None, None)
    assert (record.error.traceback, record.error.cell_index) == ("", None)
    assert record.params == {"base": "mobilenet_v2"}


@pytest.mark.parametrize("version, expected", [
    (3, "got 3, expected 1 or 2 (written by a newer version of nbsweep: update this one to read it)"),
    (0, "got 0, expected 1 or 2"),
    ("two", "got 'two', expected 1 or 2"),
    (None, "got None, expected 1 or 2"),
])
def test_read_record_refuses_other_schema_versions(tmp_path, version, expected):
    path = write_json(tmp_path / "r.json", {**REQUIRED, "params": {}, "schema_version": version})
    with pytest.raises(ValueError) as info:
        read_record(path)
    assert str(info.value) == f"{path}: schema_version: {expected}"
    assert SCHEMA_VERSION == 2  # the versions the messages name


def test_read_record_of_json_that_is_not_a_mapping(tmp_path):
    listed = write_json(tmp_path / "b.json", [1, 2])
    with pytest.raises(ValueError, match=rf"^{listed}: schema_version: got None"):
        read_record(listed)


def test_read_record_refuses_what_is_not_json_or_not_a_record(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"run_id": "r", ', encoding="utf-8")  # cut short, as by a crash of another writer
    with pytest.raises(ValueError, match=rf"^{broken}: not valid JSON \("):
        read_record(broken)
    wrong = write_json(tmp_path / "wrong.json", {**REQUIRED, "schema_version": 2, "params": {}, "status": "done"})
    with pytest.raises(ValueError, match=rf"(?s)^{wrong}: not a run record: .*status") as info:
        read_record(wrong)
    assert "'completed', 'failed', 'interrupted', 'timeout' or 'pruned'" in str(info.value)  # the allowed ones
    with pytest.raises(FileNotFoundError):
        read_record(tmp_path / "absent.json")


def test_read_record_of_bytes_that_are_not_utf8_names_the_file(tmp_path):
    garbled = tmp_path / "garbled.json"
    garbled.write_bytes(b'{"run_id": "r\xff"}')
    with pytest.raises(ValueError, match=rf"^{garbled}: "):
        read_record(garbled)


# write_page -------------------------------------------------------------------------------------------


def test_write_page_writes_the_text_and_its_folder(tmp_path):
    path = write_page(tmp_path / "site" / "leaderboard.html", "<p>één</p>\n")
    assert path == tmp_path / "site" / "leaderboard.html"
    assert path.read_bytes() == "<p>één</p>\n".encode("utf-8")
    assert write_page(str(path), "second") == path and path.read_text(encoding="utf-8") == "second"
    assert names_in(path.parent) == ["leaderboard.html"]


def test_write_page_failure_is_fatal_and_keeps_what_was_there(tmp_path):
    taken = tmp_path / "leaderboard.html"
    taken.mkdir()  # a folder in the page's place: the rename onto it fails
    (taken / "keep.txt").write_text("kept", encoding="utf-8")
    with pytest.raises(FatalError) as info:
        write_page(taken, "<html>")
    assert str(info.value) == f"cannot write {taken}: Is a directory; the previous file is left as it was"
    assert names_in(tmp_path) == ["leaderboard.html"] and names_in(taken) == ["keep.txt"]  # no temp file left
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(FatalError, match=r"cannot write .*/file/page\.html: File exists; the previous file"):
        write_page(tmp_path / "file" / "page.html", "<html>")
