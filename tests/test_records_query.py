"""runner.records.query: read all records, validate a metric once, rank on the validation split, find by reference."""

import shutil
from pathlib import Path

import pytest

from runner.errors import ConfigError
from runner.records.query import find, find_path, parse_metric, rank, read_all, top
from runner.records import COMPLETED, ENSEMBLE, FAILED, PRUNED, RUN, RunLoadError, RunRecord, write_record

V1_LOGS = Path(__file__).parent / "assets" / "v1_run" / "logs"
KEYS = ("accuracy", "weighted_precision", "weighted_recall", "weighted_f1", "macro_precision",
        "macro_recall", "macro_f1")


def metrics(value: float) -> dict:
    return {key: value for key in KEYS}


def record(run_id: str, val: float, test: float, status=COMPLETED, kind=RUN, name=None, **params) -> RunRecord:
    return RunRecord(run_id=run_id, config_hash=run_id, status=status, kind=kind, name=name,
                     started_at="t", finished_at="t", params=params,
                     metrics=metrics(test), val_metrics=metrics(val))


@pytest.fixture
def logs(tmp_path) -> Path:
    folder = tmp_path / "logs"
    for rec in (record("20260101-000000-aaaaaaaa", 0.70, 0.95),   # best on test, worst on val
                record("20260101-000001-bbbbbbbb", 0.90, 0.80, name="exp_002"),
                record("20260101-000002-cccccccc", 0.90, 0.70),   # tie on val: the earlier run first
                record("20260101-000003-dddddddd", 0.99, 0.99, status=PRUNED),
                record("20260101-000004-eeeeeeee", 0.99, 0.99, status=FAILED),
                record("20260101-000005-ffffffff", 0.95, 0.60, kind=ENSEMBLE)):
        write_record(rec, folder)
    (folder / "broken.json").write_text("{", encoding="utf-8")
    return folder


def test_parse_metric_is_the_one_check():
    assert (parse_metric("weighted_recall").split, parse_metric("weighted_recall").column) == ("val", "val_weighted_recall")
    assert parse_metric("val_macro_f1").metric == "macro_f1"
    assert parse_metric("test_accuracy").split == "test"
    with pytest.raises(ConfigError, match=r"--metric: got 'recall', expected one of accuracy, .*val_ or test_"):
        parse_metric("recall", where="--metric")


def test_rank_by_validation_keeps_only_completed_and_breaks_ties_by_run_id(logs):
    found = read_all(logs)
    assert list(found.unreadable) == ["broken.json"]
    ranked = [r.run_id[-8:] for r in rank(found.records, parse_metric("weighted_recall"))]
    assert ranked == ["ffffffff", "bbbbbbbb", "cccccccc", "aaaaaaaa"]  # pruned and failed never rank
    by_test = [r.run_id[-8:] for r in rank(found.records, parse_metric("test_weighted_recall"), kinds=(RUN,))]
    assert by_test == ["aaaaaaaa", "bbbbbbbb", "cccccccc"]
    assert [r.run_id[-8:] for r in top(found.records, parse_metric("weighted_recall"), 2, kinds=(RUN,))] == [
        "bbbbbbbb", "cccccccc"]


def test_find_by_best_id_name_and_prefix(logs):
    found = read_all(logs)
    assert find("best", found, kinds=(RUN,)).run_id.endswith("bbbbbbbb")
    assert find("best", found, ranking=parse_metric("test_weighted_recall"), kinds=(RUN,)).run_id.endswith("aaaaaaaa")
    assert find("exp_002", found).run_id.endswith("bbbbbbbb")
    assert find("20260101-000003", found).status == PRUNED  # by id, a pruned run is found
    with pytest.raises(RunLoadError, match="matches 6 runs"):
        find("20260101", found)
    with pytest.raises(RunLoadError, match="no record for 'zzz'"):
        find("zzz", found)
    with pytest.raises(RunLoadError, match="expected a run id"):
        find("../logs/x", found)
    path, rec = find_path(str(logs / "20260101-000002-cccccccc.json"), logs)
    assert rec.run_id.endswith("cccccccc") and path.name == "20260101-000002-cccccccc.json"


def test_a_schema_1_record_ranks_by_its_test_figure_marked(tmp_path, logs):
    shutil.copy(next(V1_LOGS.glob("*.json")), logs)
    found = read_all(logs)
    ranking = parse_metric("weighted_recall")
    old = next(r for r in found.records if r.schema_version == 1)
    assert ranking.value(old) == old.metrics.weighted_recall and ranking.split_of(old) == "test (schema 1)"
    assert old in rank(found.records, ranking)
    new = next(r for r in found.records if r.run_id.endswith("bbbbbbbb"))
    assert ranking.split_of(new) == "val"


def test_a_copied_record_file_is_unreadable_not_a_duplicate(logs):
    shutil.copy(logs / "20260101-000001-bbbbbbbb.json", logs / "20260101-000009-99999999.json")
    found = read_all(logs)
    assert "does not match the file name" in found.unreadable["20260101-000009-99999999.json"]


def test_load_gives_a_summarys_full_record_and_refuses_a_file_changed_since(logs):
    from runner.records.index import read_summaries

    found, indexed = read_all(logs), read_summaries(logs)
    assert found.load(found.records[0]) is found.records[0]  # a record is its own full record
    summary = indexed.records[1]
    assert indexed.load(summary) == found.records[1] and indexed.load(summary).metrics is not None
    (logs / f"{summary.run_id}.json").write_text("{", encoding="utf-8")
    with pytest.raises(RunLoadError, match="not valid JSON"):
        indexed.load(summary)
    (logs / f"{summary.run_id}.json").unlink()
    with pytest.raises(RunLoadError, match="No such file"):
        indexed.load(summary)
