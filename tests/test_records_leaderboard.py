"""Run records (schema, atomic writes) and the leaderboard (ranking, escaping)."""

import base64
import json
import os
import re

import pytest

from runner.errors import ConfigError, FatalError
from runner.leaderboard import main as leaderboard_main
from runner.leaderboard import base_head_groups, rank_runs, records_frame, write_leaderboard
from runner.records import read_record, read_records, write_record


def test_record_round_trip(tmp_path, make_record):
    record = make_record("20261121-120000-aaaaaaaa", 0.8)
    path = write_record(record, tmp_path / "logs")
    assert path == tmp_path / "logs" / "20261121-120000-aaaaaaaa.json"
    assert read_record(path) == record
    assert json.loads(path.read_text())["metrics"]["weighted_recall"] == 0.8
    assert [p.name for p in (tmp_path / "logs").iterdir()] == [path.name]  # no temp file left


def test_unknown_schema_version_and_broken_json_are_reported_not_raised(tmp_path, make_record):
    write_record(make_record("20261121-120000-aaaaaaaa", 0.8), tmp_path)
    (tmp_path / "20261121-130000-bbbbbbbb.json").write_text("{not json")
    payload = make_record("20261121-140000-cccccccc", 0.7).model_dump(mode="json") | {"schema_version": 99}
    (tmp_path / "20261121-140000-cccccccc.json").write_text(json.dumps(payload))
    records, unreadable = read_records(tmp_path)
    assert [r.run_id for r in records] == ["20261121-120000-aaaaaaaa"]
    assert "not valid JSON" in unreadable["20261121-130000-bbbbbbbb.json"]
    assert "schema_version: got 99, expected 1" in unreadable["20261121-140000-cccccccc.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_logs_dir_is_fatal_and_leaves_existing_records(tmp_path, make_record):
    old = write_record(make_record("20261121-120000-aaaaaaaa", 0.8), tmp_path)
    before = old.read_bytes()
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(FatalError, match="cannot write run record"):
            write_record(make_record("20261121-130000-bbbbbbbb", 0.9), tmp_path)
    finally:
        tmp_path.chmod(0o700)
    assert old.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_failed_write_is_fatal_and_leaves_no_partial_file(tmp_path, make_record):
    old = write_record(make_record("20261121-110000-oooooooo", 0.6), tmp_path)
    (tmp_path / "20261121-120000-aaaaaaaa.json").mkdir()  # the rename onto it fails
    with pytest.raises(FatalError, match="cannot write run record .*20261121-120000-aaaaaaaa.json"):
        write_record(make_record("20261121-120000-aaaaaaaa", 0.8), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.name, "20261121-120000-aaaaaaaa.json"]
    assert read_record(old).metrics["weighted_recall"] == 0.6
    with pytest.raises(FatalError):  # a file where the logs folder should be
        write_record(make_record("20261121-120000-aaaaaaaa", 0.8), old)


def test_ranking_orders_completed_runs_by_metric_and_keeps_ties_stable(tmp_path, make_record):
    records = [make_record("20261121-120000-aaaaaaaa", 0.70), make_record("20261121-120100-bbbbbbbb", 0.90),
               make_record("20261121-120200-cccccccc", None), make_record("20261121-120300-dddddddd", 0.70)]
    ranked = rank_runs(records_frame(records, tmp_path), "weighted_recall")
    assert list(ranked["run_id"]) == ["20261121-120100-bbbbbbbb", "20261121-120000-aaaaaaaa",
                                      "20261121-120300-dddddddd"]
    assert list(ranked["rank"]) == [1, 2, 3]
    by_acc = rank_runs(records_frame(records, tmp_path), "accuracy")
    assert by_acc.iloc[0]["accuracy"] == pytest.approx(0.89)
    with pytest.raises(ConfigError, match="metric: got 'recall'"):
        rank_runs(records_frame(records, tmp_path), "recall")


def test_leaderboard_html_and_csv(tmp_path, make_record):
    logs = tmp_path / "logs"
    for rec in [make_record("20261121-120000-aaaaaaaa", 0.70, dropout=0.2),
                make_record("20261121-120100-bbbbbbbb", 0.90, dropout="<script>alert('x')</script>"),
                make_record("20261121-120200-cccccccc", 0.80, dropout=0.4),
                make_record("20261121-120300-dddddddd", None)]:
        write_record(rec, logs)
    (logs / "broken.json").write_text("[")
    ranked = write_leaderboard(logs, tmp_path / "leaderboard.html", "weighted_recall", top_n=2)
    assert len(ranked) == 3
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
    csv = (tmp_path / "leaderboard.csv").read_text().splitlines()
    assert csv[0].startswith("run_id,status,") and len(csv) == 4
    assert csv[1].startswith("20261121-120100-bbbbbbbb")


def test_leaderboard_cli(tmp_path, capsys, make_record):
    write_record(make_record("20261121-120000-aaaaaaaa", 0.75), tmp_path / "logs")
    out = tmp_path / "board.html"
    assert leaderboard_main(["--logs-dir", str(tmp_path / "logs"), "--out", str(out)]) == 0
    assert "best weighted_recall 0.7500 (20261121-120000-aaaaaaaa)" in capsys.readouterr().out
    assert out.exists() and out.with_suffix(".csv").exists()
    assert leaderboard_main(["--logs-dir", str(tmp_path / "logs"), "--metric", "nope"]) == 2


def test_empty_logs_dir_gives_an_empty_board(tmp_path, make_record):
    ranked = write_leaderboard(tmp_path / "none", tmp_path / "leaderboard.html")
    assert len(ranked) == 0
    assert "No completed runs yet" in (tmp_path / "leaderboard.html").read_text()


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_leaderboard_page_is_self_contained_with_figures_and_links(tmp_path, make_record):
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
    # the metric plot and the best run's confusion matrix (drawn from its numbers: no png file) as PNGs
    figures = embedded_pngs(page)
    assert len(figures) == 2 and all(f.startswith(b"\x89PNG") for f in figures)
    assert f'alt="confusion matrix of {child.run_id}"' in page
    # rows are anchors; a run links to its html and its lineage node, a child to its parent's row
    assert f'<tr id="run-{child.run_id}">' in page
    assert f'href="lineage.html#run-{child.run_id}"' in page
    assert f'<a href="#run-{root.run_id}">{root.run_id}</a>' in page
    assert f'<a href="experiments/{root.run_id}/{root.run_id}.html" id="run-{root.run_id}">' in (
        tmp_path / "lineage.html").read_text()
    assert '<th aria-sort="descending">weighted_recall</th>' in page
    assert '<th>base</th>' in page and '<th class="same">dropout</th>' in page


def test_best_runs_saved_confusion_matrix_png_is_embedded_as_is(tmp_path, make_record):
    from PIL import Image

    record = make_record("20261121-120000-aaaaaaaa", 0.8).model_copy(
        update={"paths": {"confusion_matrix": "../experiments/20261121-120000-aaaaaaaa/confusion_matrix.png"}})
    png = tmp_path / "experiments" / record.run_id / "confusion_matrix.png"
    png.parent.mkdir(parents=True)
    Image.new("RGB", (7, 5), "purple").save(png)
    write_record(record, tmp_path / "logs")
    write_leaderboard(tmp_path / "logs", tmp_path / "leaderboard.html")
    assert png.read_bytes() in embedded_pngs((tmp_path / "leaderboard.html").read_text())


def test_base_head_groups_name_ensembles(tmp_path, make_record):
    records = [make_record("20261121-120000-aaaaaaaa", 0.7, base="vgg16", head="gap"),
               make_record("20261121-120100-bbbbbbbb", 0.8).model_copy(update={"kind": "ensemble", "params": {}})]
    assert list(base_head_groups(records_frame(records, tmp_path))) == ["vgg16 + gap", "ensemble"]
