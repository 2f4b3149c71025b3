"""Run records (schema, atomic writes) and the leaderboard (ranking through `runner.records.query`, escaping, faults)."""

import base64
import csv
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from runner.errors import ConfigError, FatalError
from runner.reports.leaderboard import MAX_LISTED, base_head_group, render_leaderboard, write_leaderboard
from helpers import leaderboard_main
from runner.reports.lineage import lineage_text
from runner.records.query import RecordSet, parse_metric, rank, read_all
from runner.records import (
    COMPLETED, ENSEMBLE, FAILED, PRUNED, DataSection, RunRecord, SplitMetrics, read_record, write_record,
)

ASSETS = Path(__file__).resolve().parent / "assets"
V1_RUN_ID = "20261202-025738-b692e854"


def split_metrics(recall: float) -> SplitMetrics:
    """Metrics of one split with `recall` as weighted recall and accuracy 0.01 below it."""
    return SplitMetrics(accuracy=round(recall - 0.01, 4), weighted_recall=recall, weighted_precision=0.5,
                        weighted_f1=0.5, macro_precision=0.5, macro_recall=0.5, macro_f1=0.5,
                        per_class={"a": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 4}},
                        confusion_matrix=[[3, 1], [0, 4]])


def make_record(run_id: str, val: float | None, test: float | None = None, *, status: str | None = None,
                paths: dict | None = None, **params) -> RunRecord:
    """A schema-2 record: completed with validation weighted recall `val` (test: `test`, else `val` - 0.05),
    or failed when `val` is `None` (or `status` as given)."""
    done = val is not None and status in (None, COMPLETED)
    test = round(val - 0.05, 4) if test is None and val is not None else test
    return RunRecord(
        run_id=run_id, config_hash="ab" * 32, status=status or (COMPLETED if val is not None else FAILED),
        started_at="2026-11-21T12:00:00+00:00", finished_at="2026-11-21T12:01:00+00:00",
        params={"head": "gap", "dropout": 0.5, "dense_units": [256], **params},
        metrics=split_metrics(test) if done else None, val_metrics=split_metrics(val) if done else None,
        history={"head": {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]}}, best_epoch=2, best_phase="head",
        epochs_run=2, timings={"train_s": 12.5, "eval_s": 1.0, "total_s": 20.0},
        paths={"html": f"../experiments/{run_id}/{run_id}.html"} if paths is None else paths,
        error=None if done or status == PRUNED else {"ename": "ValueError", "evalue": "bad <base>",
                                                     "traceback": "...", "cell_index": 3},
    )


def test_record_round_trip(tmp_path):
    record = make_record("20261121-120000-aaaaaaaa", 0.8)
    path = write_record(record, tmp_path / "logs")
    assert path == tmp_path / "logs" / "20261121-120000-aaaaaaaa.json"
    assert read_record(path) == record
    assert json.loads(path.read_text())["val_metrics"]["weighted_recall"] == 0.8
    assert [p.name for p in (tmp_path / "logs").iterdir()] == [path.name]  # no temp file left


def test_unknown_schema_version_and_broken_json_are_reported_not_raised(tmp_path):
    write_record(make_record("20261121-120000-aaaaaaaa", 0.8), tmp_path)
    (tmp_path / "20261121-130000-bbbbbbbb.json").write_text("{not json")
    payload = make_record("20261121-140000-cccccccc", 0.7).model_dump(mode="json") | {"schema_version": 99}
    (tmp_path / "20261121-140000-cccccccc.json").write_text(json.dumps(payload))
    found = read_all(tmp_path)
    assert [r.run_id for r in found.records] == ["20261121-120000-aaaaaaaa"]
    assert "not valid JSON" in found.unreadable["20261121-130000-bbbbbbbb.json"]
    assert "schema_version: got 99, expected 1" in found.unreadable["20261121-140000-cccccccc.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_logs_dir_is_fatal_and_leaves_existing_records(tmp_path):
    old = write_record(make_record("20261121-120000-aaaaaaaa", 0.8), tmp_path)
    before = old.read_bytes()
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(FatalError, match="cannot write run record"):
            write_record(make_record("20261121-130000-bbbbbbbb", 0.9), tmp_path)
    finally:
        tmp_path.chmod(0o700)
    assert old.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_failed_write_is_fatal_and_leaves_no_partial_file(tmp_path):
    old = write_record(make_record("20261121-110000-oooooooo", 0.6), tmp_path)
    (tmp_path / "20261121-120000-aaaaaaaa.json").mkdir()  # the rename onto it fails
    with pytest.raises(FatalError, match="cannot write run record .*20261121-120000-aaaaaaaa.json"):
        write_record(make_record("20261121-120000-aaaaaaaa", 0.8), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.name, "20261121-120000-aaaaaaaa.json"]
    assert read_record(old).val_metrics.weighted_recall == 0.6
    with pytest.raises(FatalError):  # a file where the logs folder should be
        write_record(make_record("20261121-120000-aaaaaaaa", 0.8), old)


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def board_rows(page: str) -> list[str]:
    """The run ids of the ranked table, in page order."""
    table = page[page.index('<table id="board"'):]
    return re.findall(r'<tr id="run-([^"]+)">', table[:table.index("</table>")])


def test_the_board_ranks_on_the_validation_split_and_reports_test_figures(tmp_path):
    # validation and test disagree: the board follows validation, stable on ties
    logs = tmp_path / "logs"
    for rec in [make_record("20261121-120000-aaaaaaaa", 0.70, test=0.95),
                make_record("20261121-120100-bbbbbbbb", 0.90, test=0.60),
                make_record("20261121-120200-cccccccc", None),
                make_record("20261121-120300-dddddddd", 0.70, test=0.10)]:
        write_record(rec, logs)
    board = write_leaderboard(logs, tmp_path / "leaderboard.html")
    assert [r.run_id for r in board.ranked] == ["20261121-120100-bbbbbbbb", "20261121-120000-aaaaaaaa",
                                                "20261121-120300-dddddddd"]
    page = (tmp_path / "leaderboard.html").read_text()
    assert board_rows(page) == [r.run_id for r in board.ranked]
    assert ("Ranked by <b>weighted_recall</b> on the validation split; test figures are for reporting."
            in page) and "optimistic" not in page
    assert ('<th aria-sort="descending">val_weighted_recall</th><th>test_weighted_recall</th>'
            '<th>test_accuracy</th><th>epochs_run</th>') in page
    first = page[page.index('<tr id="run-20261121-120100-bbbbbbbb">'):]
    assert "<td>0.9000</td><td>0.6000</td><td>0.5900</td><td>2</td><td>12.5</td>" in first[:first.index("</tr>")]
    # the csv: every completed run, ranked, with both splits and every parameter
    header, *rows = read_csv(tmp_path / "leaderboard.csv")
    assert header[:7] == ["rank", "run_id", "name", "status", "kind", "ranked_by", "ranked_split"]
    assert {"val_weighted_recall", "test_weighted_recall", "val_accuracy", "test_macro_f1", "epochs_run",
            "param.head", "param.dropout", "param.dense_units"} <= set(header)
    assert [row[:2] for row in rows] == [
        ["1", "20261121-120100-bbbbbbbb"], ["2", "20261121-120000-aaaaaaaa"], ["3", "20261121-120300-dddddddd"]]
    row = dict(zip(header, rows[0]))
    assert (row["ranked_by"], row["ranked_split"], row["val_weighted_recall"], row["test_weighted_recall"]) == (
        "val_weighted_recall", "val", "0.9", "0.6")
    assert row["param.dense_units"] == "[256]" and row["param.head"] == "gap"  # JSON, strings as they are


def test_a_test_split_metric_ranks_on_test_with_a_warning(tmp_path):
    logs = tmp_path / "logs"
    for rec in [make_record("20261121-120000-aaaaaaaa", 0.70, test=0.95),
                make_record("20261121-120100-bbbbbbbb", 0.90, test=0.60)]:
        write_record(rec, logs)
    board = write_leaderboard(logs, tmp_path / "leaderboard.html", "test_weighted_recall")
    assert [r.run_id for r in board.ranked] == ["20261121-120000-aaaaaaaa", "20261121-120100-bbbbbbbb"]
    page = (tmp_path / "leaderboard.html").read_text()
    assert "Ranked by <b>weighted_recall</b> on the test split." in page
    assert "makes the chosen run's test figure optimistic" in page
    assert '<th aria-sort="descending">test_weighted_recall</th><th>val_weighted_recall</th>' in page


@pytest.mark.parametrize("metric", ["recall", "val_recall", "test_", 3])
def test_an_unknown_metric_is_refused_before_anything_is_read_or_written(tmp_path, metric):
    with pytest.raises(ConfigError, match=f"metric: got {metric!r}, expected one of accuracy"):
        write_leaderboard(tmp_path / "logs", tmp_path / "leaderboard.html", metric)
    assert list(tmp_path.iterdir()) == []


def copy_v1_run(tmp_path: Path) -> Path:
    """The real schema-1 record (and its run folder) under `tmp_path/logs` and `tmp_path/experiments`."""
    shutil.copytree(ASSETS / "v1_run" / "logs", tmp_path / "logs")
    shutil.copytree(ASSETS / "v1_run" / "experiments", tmp_path / "experiments")
    return tmp_path / "logs"


def test_schema_1_records_rank_by_their_test_figure_marked(tmp_path):
    logs = copy_v1_run(tmp_path)  # weighted recall 0.1 on the test split, no validation metrics
    write_record(make_record("20261121-120000-aaaaaaaa", 0.30, test=0.05), logs)
    write_record(make_record("20261121-120100-bbbbbbbb", 0.05, test=0.90), logs)
    board = write_leaderboard(logs, tmp_path / "leaderboard.html")
    assert [r.run_id for r in board.ranked] == ["20261121-120000-aaaaaaaa", V1_RUN_ID, "20261121-120100-bbbbbbbb"]
    page = (tmp_path / "leaderboard.html").read_text()
    row = page[page.index(f'<tr id="run-{V1_RUN_ID}">'):]
    row = row[:row.index("</tr>")]
    assert ('<td data-sort="0.1000">0.1000<sup class="mark" title="schema 1: no validation metrics, '
            'ranked by test">*</sup></td>') in row
    assert '<sup>*</sup> schema 1: no validation metrics, ranked by test.' in page
    assert page.count('<sup class="mark"') == 1  # only the schema-1 row is marked
    header, *rows = read_csv(tmp_path / "leaderboard.csv")
    v1 = dict(zip(header, next(row for row in rows if row[1] == V1_RUN_ID)))
    assert (v1["rank"], v1["ranked_split"], v1["val_weighted_recall"], v1["test_weighted_recall"]) == (
        "2", "test (schema 1)", "", "0.1")
    assert v1["epochs_run"] == "2"  # from the record's field (upgraded from the history)


def test_pruned_runs_have_their_own_section_with_the_epoch_they_reached(tmp_path):
    logs = tmp_path / "logs"
    write_record(make_record("20261121-120000-aaaaaaaa", 0.8), logs)
    write_record(make_record("20261121-120100-bbbbbbbb", None, status=PRUNED).model_copy(update={"epochs_run": 3}),
                 logs)
    write_record(make_record("20261121-120200-cccccccc", None), logs)
    board = write_leaderboard(logs, tmp_path / "leaderboard.html")
    assert [r.run_id for r in board.ranked] == ["20261121-120000-aaaaaaaa"]
    page = (tmp_path / "leaderboard.html").read_text()
    pruned = page[page.index("<h2>Pruned runs (1)</h2>"):page.index("<h2>Runs that did not complete (1)</h2>")]
    assert "20261121-120100-bbbbbbbb" in pruned and "<td>3</td>" in pruned
    assert "20261121-120200-cccccccc" not in pruned
    failed = page[page.index("<h2>Runs that did not complete (1)</h2>"):]
    assert "20261121-120200-cccccccc" in failed and "20261121-120100-bbbbbbbb" not in failed


def test_unranked_completed_runs_and_long_lists_are_counted_not_embedded(tmp_path):
    records = [make_record("20261121-120000-aaaaaaaa", 0.8)]
    records += [make_record(f"20261121-13{i:04d}-ffffffff", None) for i in range(MAX_LISTED + 7)]
    records += [make_record("20261121-140000-eeeeeeee", None).model_copy(
        update={"status": COMPLETED, "kind": ENSEMBLE, "error": None, "params": {"members": ["x", "y"]},
                "metrics": split_metrics(0.7)})]  # test metrics only: no validation figure to rank by
    found = RecordSet(tmp_path, records, {f"broken{i}.json": "not valid JSON" for i in range(MAX_LISTED + 1)})
    ranking = parse_metric("weighted_recall")
    page = render_leaderboard(found, ranking, rank(found.records, ranking), 10, tmp_path)
    failed = page[page.index(f"<h2>Runs that did not complete ({MAX_LISTED + 7})</h2>"):]
    failed = failed[:failed.index("</table>")]
    assert failed.count("<tr id=") == MAX_LISTED and "7 more runs that did not complete" in failed
    assert f"20261121-13{MAX_LISTED + 6:04d}-ffffffff" in failed and "20261121-130000-ffffffff" not in failed
    unranked = page[page.index("<h2>Completed runs without val_weighted_recall (1)</h2>"):]
    assert "20261121-140000-eeeeeeee" in unranked[:unranked.index("</table>")]
    assert f"Unreadable records ({MAX_LISTED + 1})" in page and page.count("not valid JSON") == MAX_LISTED


def page_section_runs(page: str, heading: str) -> set[str]:
    """The run ids with a row (`id="run-<id>"`) in the page's section whose `<h2>` starts with `heading`."""
    start = page.find(heading)
    if start < 0:
        return set()
    section = page[start:page.index("</table>", start)]
    return set(re.findall(r'<tr id="run-([^"]+)"', section))


@pytest.mark.parametrize("metric", ["weighted_recall", "test_weighted_recall"])
def test_a_run_unranked_on_the_page_is_unranked_in_the_csv_and_vice_versa(tmp_path, metric):
    """One rule (`unranked_runs`) for the page's "Completed runs without <metric>" section and the csv's rows with
    an empty `rank` and `refit_of`: a refit is never unranked (it has its own section, and its `refit_of` in the
    csv), even under a test ranking where it has the figure; an ensemble is unranked only under a validation one."""
    from runner.reports.leaderboard import refit_runs, unranked_runs

    logs = tmp_path / "logs"
    ensemble = make_record("20261121-130000-eeeeeeee", None).model_copy(update={
        "status": COMPLETED, "kind": ENSEMBLE, "error": None, "params": {"members": ["x", "y"]},
        "metrics": split_metrics(0.95)})  # test figures only
    refit = make_record("20261121-140000-ffffffff", 0.99).model_copy(update={
        "refit_of": "20261121-120000-aaaaaaaa", "val_metrics": None})  # test figures only, never ranked
    no_figures = make_record("20261121-150000-gggggggg", 0.5).model_copy(update={"metrics": None, "val_metrics": None})
    for rec in (make_record("20261121-120000-aaaaaaaa", 0.8), make_record("20261121-120100-bbbbbbbb", 0.7),
                make_record("20261121-120200-cccccccc", None), make_record("20261121-120300-dddddddd", None,
                                                                           status=PRUNED),
                ensemble, refit, no_figures):
        write_record(rec, logs)
    shutil.copy(ASSETS / "v1_run" / "logs" / f"{V1_RUN_ID}.json", logs)  # schema 1: ranks by its test figure
    board = write_leaderboard(logs, tmp_path / "leaderboard.html", metric)
    page = (tmp_path / "leaderboard.html").read_text(encoding="utf-8")
    header, *rows = read_csv(tmp_path / "leaderboard.csv")
    rows = [dict(zip(header, row)) for row in rows]

    expected = {no_figures.run_id} | ({ensemble.run_id} if metric == "weighted_recall" else set())
    assert {rec.run_id for rec in board.unranked} == expected
    assert {rec.run_id for rec in unranked_runs(read_all(logs).records, board.ranked)} == expected
    page_unranked = page_section_runs(page, "<h2>Completed runs without ")
    csv_unranked = {row["run_id"] for row in rows if not row["rank"] and not row["refit_of"]}
    assert page_unranked == csv_unranked == expected
    page_refits = page_section_runs(page, '<h2 id="refits">')
    csv_refits = {row["run_id"] for row in rows if row["refit_of"]}
    assert page_refits == csv_refits == {rec.run_id for rec in refit_runs(read_all(logs).records)} == {refit.run_id}
    assert all(not row["rank"] for row in rows if row["refit_of"])
    csv_ranked = [row["run_id"] for row in rows if row["rank"]]
    assert csv_ranked == [rec.run_id for rec in board.ranked] and refit.run_id not in csv_ranked
    assert board_rows(page) == csv_ranked  # all of them within the top 10
    assert len(rows) == len(csv_ranked) + len(expected) + 1  # every completed run, once


def test_leaderboard_html_and_csv(tmp_path):
    logs = tmp_path / "logs"
    for rec in [make_record("20261121-120000-aaaaaaaa", 0.70, dropout=0.2),
                make_record("20261121-120100-bbbbbbbb", 0.90, dropout="<script>alert('x')</script>"),
                make_record("20261121-120200-cccccccc", 0.80, dropout=0.4),
                make_record("20261121-120300-dddddddd", None)]:
        write_record(rec, logs)
    (logs / "broken.json").write_text("[")
    board = write_leaderboard(logs, tmp_path / "leaderboard.html", "weighted_recall", top_n=2)
    assert len(board.ranked) == 3
    page = (tmp_path / "leaderboard.html").read_text()
    # top 2 only, best first, linked to the saved html relative to the page
    assert page.index("20261121-120100-bbbbbbbb") < page.index("20261121-120200-cccccccc")
    assert '<a href="experiments/20261121-120100-bbbbbbbb/20261121-120100-bbbbbbbb.html">' in page
    assert "0.9000" in page and "0.7000" not in page
    # parameters that differ are columns; equal ones are hidden columns (shown by a toggle); everything
    # escaped: the only script is the page's own
    assert "<th>dropout</th>" in page and "<th>head</th>" not in page and '<th class="same">head</th>' in page
    assert page.count("<script>") == 1 and "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    # failed runs and unreadable records have their own sections
    assert "Runs that did not complete (1)" in page and "ValueError: bad &lt;base&gt;" in page
    assert "Unreadable records (1)" in page and "broken.json" in page
    lines = (tmp_path / "leaderboard.csv").read_text().splitlines()
    assert lines[0].startswith("rank,run_id,name,status,")
    assert len(lines) == 4 and lines[1].startswith("1,20261121-120100-bbbbbbbb")


def test_markup_in_parameters_is_escaped_in_the_lineage_page(tmp_path):
    logs = tmp_path / "logs"
    write_record(make_record("20261121-120000-aaaaaaaa", 0.7, base="<script>alert('x')</script>"), logs)
    write_leaderboard(logs, tmp_path / "leaderboard.html")
    lineage = (tmp_path / "lineage.html").read_text()
    assert "<script>" not in lineage and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; gap  0.7000" in lineage


def test_markup_in_class_names_is_escaped_in_the_confusion_matrix(tmp_path):
    record = make_record("20261121-120000-aaaaaaaa", 0.7).model_copy(update={"data": DataSection(
        dir="/data", class_names=["<script>alert('x')</script>", "b&c"], manifest_hash="0" * 64)})
    write_record(record, tmp_path / "logs")
    write_leaderboard(tmp_path / "logs", tmp_path / "leaderboard.html")
    page = (tmp_path / "leaderboard.html").read_text()
    assert page.count("<script>") == 1 and "<script>alert" not in page
    assert "<th>&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;</th>" in page and "<th>b&amp;c</th>" in page


def test_markup_in_class_names_and_members_is_escaped_in_the_ensemble_report():
    from runner.core.ensemble import _report

    metrics = split_metrics(0.8).model_copy(update={"per_class": {
        "<script>x</script>": {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}, "x&y": {
            "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}}})
    report = _report("20261121-150000-eeeeeeee", ["<i>a</i>", "b"], metrics.model_dump(), "weighted_recall")
    assert "<script>" not in report and "<i>" not in report
    assert "<td>&lt;script&gt;x&lt;/script&gt;</td>" in report and "<td>x&amp;y</td>" in report
    assert "<li>&lt;i&gt;a&lt;/i&gt;</li>" in report and "<b>weighted_recall</b>" in report


def test_leaderboard_cli(tmp_path, capsys):
    write_record(make_record("20261121-120000-aaaaaaaa", 0.75), tmp_path / "logs")
    out = tmp_path / "board.html"
    assert leaderboard_main(["--logs-dir", str(tmp_path / "logs"), "--out", str(out)]) == 0
    assert "best val_weighted_recall 0.7500 (20261121-120000-aaaaaaaa)" in capsys.readouterr().out
    assert out.exists() and out.with_suffix(".csv").exists()
    assert leaderboard_main(["--logs-dir", str(tmp_path / "logs"), "--metric", "nope"]) == 2


def test_empty_logs_dir_gives_an_empty_board(tmp_path):
    board = write_leaderboard(tmp_path / "none", tmp_path / "leaderboard.html")
    assert len(board.ranked) == 0 and board.best is None
    assert "No completed runs yet" in (tmp_path / "leaderboard.html").read_text()
    assert "No runs yet." in (tmp_path / "lineage.html").read_text()


def test_missing_optional_paths_are_tolerated(tmp_path):
    """A record with `paths.html: null` among others used to crash the page (a pandas NaN reached the link)."""
    logs = tmp_path / "logs"
    write_record(make_record("20261121-120000-aaaaaaaa", 0.7), logs)
    write_record(make_record("20261121-120100-bbbbbbbb", 0.9, paths={
        "html": None, "confusion_matrix": None, "predictions": None, "notebook": None}), logs)
    write_record(make_record("20261121-120200-cccccccc", None, paths={"html": None}), logs)
    write_record(make_record("20261121-120300-dddddddd", None, status=PRUNED, paths={}), logs)
    write_record(make_record("20261121-120400-eeeeeeee", 0.8).model_copy(
        update={"parent_run_id": "20261121-120100-bbbbbbbb"}), logs)
    board = write_leaderboard(logs, tmp_path / "leaderboard.html", top_n=1)
    assert board.best.run_id == "20261121-120100-bbbbbbbb"
    page = (tmp_path / "leaderboard.html").read_text()
    # the best run is on the page, not linked; its confusion matrix is drawn from its numbers
    assert ('<tr id="run-20261121-120100-bbbbbbbb"><td>1</td><td class="run"><input type="checkbox" class="pick" '
            'value="20261121-120100-bbbbbbbb" aria-label="compare 20261121-120100-bbbbbbbb"> 20261121-120100-bbbbbbbb '
            '<a class="tree"') in page
    assert 'aria-label="confusion matrix of 20261121-120100-bbbbbbbb"' in page
    for run_id in ("20261121-120200-cccccccc", "20261121-120300-dddddddd"):
        assert f'<tr id="run-{run_id}"><td>{run_id}</td>' in page  # listed, without a link
    lineage = (tmp_path / "lineage.html").read_text()
    assert '<span id="run-20261121-120100-bbbbbbbb">20261121-120100-bbbbbbbb</span>' in lineage
    assert "└── <a href=\"experiments/20261121-120400-eeeeeeee/20261121-120400-eeeeeeee.html\"" in lineage


def test_a_failed_write_raises_fatal_and_leaves_the_previous_page(tmp_path, monkeypatch, capsys):
    logs, out = tmp_path / "logs", tmp_path / "leaderboard.html"
    write_record(make_record("20261121-120000-aaaaaaaa", 0.7), logs)
    write_leaderboard(logs, out)
    before = {name: (tmp_path / name).read_bytes() for name in ("leaderboard.html", "leaderboard.csv", "lineage.html")}
    write_record(make_record("20261121-120100-bbbbbbbb", 0.9), logs)

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(FatalError, match=r"cannot write .*leaderboard\.html: No space left on device"):
        write_leaderboard(logs, out)
    assert leaderboard_main(["--logs-dir", str(logs), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write ") and "No space left on device" in err and "Traceback" not in err
    monkeypatch.undo()
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "logs"])  # no temp file left


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_leaderboard_page_is_self_contained_with_figures_and_links(tmp_path):
    logs = tmp_path / "logs"
    root = make_record("20261121-120000-aaaaaaaa", 0.70, base="vgg16", head="flatten")
    child = make_record("20261121-120100-bbbbbbbb", 0.90, base="vgg16", head="flatten").model_copy(
        update={"parent_run_id": root.run_id})
    other = make_record("20261121-120200-cccccccc", 0.80, base="mobilenet", head="gap")
    for rec in (root, child, other):
        write_record(rec, logs)
    write_leaderboard(logs, tmp_path / "leaderboard.html")
    page = (tmp_path / "leaderboard.html").read_text()
    # nothing from another host: no http(s) or protocol-relative src/href, no CSS url()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page, re.IGNORECASE) and "url(" not in page
    # the metric plot as a PNG; the best run's confusion matrix (no png file) as a table of its numbers
    figures = embedded_pngs(page)
    assert len(figures) == 1 and figures[0].startswith(b"\x89PNG")
    assert f'<table class="confusion" aria-label="confusion matrix of {child.run_id}">' in page
    assert ('<tr><th>0</th><td class="dark" style="background:rgba(31,78,140,0.75)">3</td>'
            '<td style="background:rgba(31,78,140,0.25)">1</td></tr>') in page
    assert "val_weighted_recall (validation split) of every ranked run (3)" in page
    # rows are anchors; a run links to its html and its lineage node, a child to its parent's row
    assert f'<tr id="run-{child.run_id}">' in page
    assert f'href="lineage.html#run-{child.run_id}"' in page
    assert f'<a href="#run-{root.run_id}">{root.run_id}</a>' in page
    lineage = (tmp_path / "lineage.html").read_text()
    assert f'<a href="experiments/{root.run_id}/{root.run_id}.html" id="run-{root.run_id}">' in lineage
    assert "<b>val_weighted_recall</b> (validation split)" in lineage
    assert '<th aria-sort="descending">val_weighted_recall</th>' in page
    assert '<th>base</th>' in page and '<th class="same">dropout</th>' in page


def test_best_runs_saved_confusion_matrix_png_is_embedded_as_is(tmp_path):
    from PIL import Image

    record = make_record("20261121-120000-aaaaaaaa", 0.8).model_copy(
        update={"paths": {"confusion_matrix": "../experiments/20261121-120000-aaaaaaaa/confusion_matrix.png"}})
    png = tmp_path / "experiments" / record.run_id / "confusion_matrix.png"
    png.parent.mkdir(parents=True)
    Image.new("RGB", (7, 5), "purple").save(png)
    write_record(record, tmp_path / "logs")
    write_leaderboard(tmp_path / "logs", tmp_path / "leaderboard.html")
    assert png.read_bytes() in embedded_pngs((tmp_path / "leaderboard.html").read_text())


def test_base_head_group_names_ensembles():
    records = [make_record("20261121-120000-aaaaaaaa", 0.7, base="vgg16", head="gap"),
               make_record("20261121-120100-bbbbbbbb", 0.8).model_copy(update={"kind": ENSEMBLE, "params": {}})]
    assert [base_head_group(r) for r in records] == ["vgg16 + gap", "ensemble"]


def test_lineage_of_a_long_chain_of_warm_starts_is_drawn_without_recursion():
    chain = [make_record(f"20261121-{i:06d}-aaaaaaaa", 0.5, base="vgg16") for i in range(3000)]
    for parent, child in zip(chain, chain[1:]):
        child.parent_run_id = parent.run_id
    lines = lineage_text(chain[::-1]).splitlines()
    assert len(lines) == 3000 and lines[0] == "20261121-000000-aaaaaaaa  vgg16 gap  0.5000"
    assert lines[2].startswith("    └── 20261121-000002-aaaaaaaa")


def test_the_page_stays_small_with_thousands_of_records_and_links_the_full_table(tmp_path):
    """3,000 records: two configurations of 600 seeds (the best two), 1,500 runs in groups of 3, 150 failed,
    150 pruned. The page lists the top configurations with at most `MAX_REPEATS_LISTED` runs each and
    `MAX_LISTED` rows per other section; the csv it links has every ranked run."""
    from runner.reports.leaderboard import MAX_REPEATS_LISTED

    logs = tmp_path / "logs"
    logs.mkdir()
    records = []
    for i in range(1200):  # two large groups, the best by mean
        config = "big" + "ab"[i % 2]
        records.append(make_record(f"20261121-{i:06d}-aaaaaaaa", 0.95 - (i % 2) * 0.01 - (i % 7) / 1000,
                                   config=config, seed=i // 2).model_copy(update={"group_hash": config * 16}))
    for i in range(1500):
        config = f"small{i // 3}"
        records.append(make_record(f"20261122-{i:06d}-bbbbbbbb", 0.5 + (i % 97) / 1000, config=config, seed=i % 3)
                       .model_copy(update={"group_hash": f"{i // 3:064d}"}))
    records += [make_record(f"20261123-{i:06d}-cccccccc", None, status=FAILED) for i in range(150)]
    records += [make_record(f"20261124-{i:06d}-dddddddd", None, status=PRUNED) for i in range(150)]
    for rec in records:
        (logs / f"{rec.run_id}.json").write_text(rec.model_dump_json())
    board = write_leaderboard(logs, tmp_path / "leaderboard.html", top_n=10)
    page = (tmp_path / "leaderboard.html").read_text()
    assert len(page.encode()) < 1_000_000  # 5 MB is the limit at any number of records; this board is far below
    assert len(board.ranked) == 2700 and len(board.groups) == 502
    assert len(board_rows(page)) == 10
    # the top row: the large configuration, its best runs listed, the rest counted and linked
    top = page[page.index('<table id="board"'):]
    top = top[:top.index("</tr>", top.index("<tbody>"))]
    assert "<td>600</td>" in top and top.count('class="pick"') == MAX_REPEATS_LISTED
    assert f'+{600 - MAX_REPEATS_LISTED} more seeds in <a href="leaderboard.csv">leaderboard.csv</a>' in top
    assert '<a href="leaderboard.csv" id="full-table">leaderboard.csv</a>' in page
    compare = json.loads(re.search(r'<script type="application/json" id="compare-data">(.*?)</script>', page).group(1))
    assert len(compare["runs"]) == 2 * MAX_REPEATS_LISTED + 8 * 3  # the runs listed, each with its curves
    assert all(run["curves"]["loss"] == [1.0, 0.5] for run in compare["runs"])
    failed = page[page.index("<h2>Runs that did not complete (150)</h2>"):]
    assert failed[:failed.index("</table>")].count("<tr id=") == MAX_LISTED
    # the csv: every ranked run, by configuration, with the group statistics
    header, *rows = read_csv(tmp_path / "leaderboard.csv")
    assert len(rows) == 2700 and [row[0] for row in rows] == [str(i) for i in range(1, 2701)]
    group_n = header.index("group_n")
    assert [row[group_n] for row in rows[:1200]] == ["600"] * 1200 and rows[1200][group_n] == "3"


def test_csv_cells_read_back_as_written_whatever_the_characters(tmp_path):
    """Names and parameters with commas, quotes and line breaks, `None`, `""`, booleans, nested values, and a
    parameter only some runs have: `csv.reader` reads every cell back as the value (or its JSON)."""
    from runner.reports.leaderboard import leaderboard_csv

    odd = {"comma": "a,b", "quote": 'say "hi"', "newline": "two\nlines", "empty": "", "none": None, "flag": True,
           "nested": {"b": [1, 2], "a": "x,y"}, "number": 1e-05}
    records = [make_record("20261121-120000-aaaaaaaa", 0.9, **odd).model_copy(update={"name": 'n,"1"\nx'}),
               make_record("20261121-120100-bbbbbbbb", 0.8, **{**odd, "only_here": "z"}),
               make_record("20261121-120200-cccccccc", 0.7, **odd).model_copy(update={"params": {"base": "vgg16"}})]
    ranking = parse_metric("weighted_recall")
    header, *rows = list(csv.reader(io.StringIO(leaderboard_csv(rank(records, ranking), ranking))))
    assert len(rows) == 3 and all(len(row) == len(header) for row in rows)
    by_id = {row[1]: dict(zip(header, row)) for row in rows}
    assert by_id["20261121-120000-aaaaaaaa"]["name"] == 'n,"1"\nx'
    for rec in records:
        row = by_id[rec.run_id]
        for name in {*odd, "only_here", "base", "head", "dropout", "dense_units"}:
            value = rec.params.get(name, "<missing>")
            expected = "" if value == "<missing>" else value if isinstance(value, str) else json.dumps(
                value, sort_keys=True)
            assert row[f"param.{name}"] == expected, (rec.run_id, name)
