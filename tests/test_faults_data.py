"""Faults in the data and the records found by trying to break the tool (issue 31): a JPEG whose Huffman table is
corrupt, class folders with `$` in their names, records whose metrics are `NaN` or `Infinity`.

Each test sets the situation up as a user's folder or a hand-edited record would, on real files: tiny image
folders (`helpers.make_image_folder`), real PIL, TensorFlow and Keras, records written as JSON text.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import warnings
from pathlib import Path

import matplotlib
import pytest
from PIL import Image

from helpers import _make_record, make_image_folder, make_spec, sweep_main
from models.data import list_image_folder, load_data
from models.data.folders import check_image_file
from runner.core.warm_start import resolve_warm_start
from runner.errors import ConfigError
from runner.records import DataSection, write_record
from runner.records.query import find, parse_metric, rank, rank_groups, read_all
from runner.reports.leaderboard import metric_plot_data, write_leaderboard

DOLLAR_CLASSES = ("100$", "x$_{$y")
"""Class folder names that matplotlib's mathtext would parse (`x$_{$y` does not parse)."""


def corrupt_huffman_table(jpeg: bytes) -> bytes:
    """`jpeg` with the 16 code-length counts of its first Huffman table (DHT segment, FF C4) set to 255 each:
    more codes than the code space holds. The header, every segment's length and the end marker stay."""
    data = bytearray(jpeg)
    dht = data.index(b"\xff\xc4")
    counts = dht + 5  # after the marker, the 2-byte segment length and the table class / id byte
    data[counts:counts + 16] = b"\xff" * 16
    return bytes(data)


def write_corrupt_jpeg(path: Path, seed: int = 0) -> Path:
    """A 40x30 JPEG (PIL) with a corrupt Huffman table (`corrupt_huffman_table`)."""
    import numpy as np

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path.write_bytes(corrupt_huffman_table(buffer.getvalue()))
    return path


# 1. A JPEG with a corrupt Huffman table -----------------------------------------------------------------------


def test_a_corrupt_huffman_table_is_refused_by_the_listing_as_tensorflow_refuses_it(tmp_path):
    """Was: the header opened, `verify` passed and the end marker was there, so the listing kept the file and
    `tf.io.decode_image` failed the run."""
    import tensorflow as tf

    bad = write_corrupt_jpeg(tmp_path / "bad.jpg")
    with Image.open(bad) as image:  # what the old check looked at: all fine
        assert (image.format, image.size) == ("JPEG", (40, 30))
        image.verify()
    assert bad.read_bytes().endswith(b"\xff\xd9")
    with pytest.raises(tf.errors.InvalidArgumentError, match="jpeg::Uncompress failed"):
        tf.io.decode_image(tf.io.read_file(str(bad)), channels=3, expand_animations=False)
    with Image.open(bad) as image, pytest.raises(OSError, match="broken data stream"):
        image.load()  # PIL agrees with TensorFlow's decoder
    assert check_image_file(bad) == "corrupt or truncated image: broken data stream when reading image file"


SEGMENTS = {"DHT": b"\xff\xc4", "DQT": b"\xff\xdb", "SOF": b"\xff\xc0", "scan": b"\xff\xda"}
"""JPEG markers of the segments `damaged_jpegs` overwrites bytes in (the scan: the entropy-coded data after SOS)."""


def damaged_jpegs(folder: Path, per_segment: int = 25) -> list[Path]:
    """JPEGs (48x64, PIL, baseline) with 1 to 3 random bytes overwritten inside one segment each, seeded."""
    import numpy as np

    rng = np.random.default_rng(31)
    folder.mkdir()
    paths = []
    for segment, marker in SEGMENTS.items():
        for i in range(per_segment):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=85)
            data = bytearray(buffer.getvalue())
            start = data.index(marker) + 4
            length = int.from_bytes(data[start - 2:start], "big")
            end = len(data) - 2 if segment == "scan" else start + length - 2
            start = start + length - 2 if segment == "scan" else start
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(start, end))] = int(rng.integers(0, 256))
            paths.append(folder / f"{segment}_{i:02d}.jpg")
            paths[-1].write_bytes(bytes(data))
    return paths


def test_the_listing_refuses_exactly_the_jpegs_tensorflow_cannot_decode(tmp_path):
    """The check and TensorFlow's decoder agree file by file on JPEGs damaged at random (`check_image_file`
    cites this): every file the check keeps decodes, every file it refuses does not."""
    import tensorflow as tf

    refused = {}
    for path in damaged_jpegs(tmp_path / "damaged"):
        try:
            tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
            decodes = True
        except tf.errors.InvalidArgumentError:
            decodes = False
        reason = check_image_file(path)
        assert (reason is None) == decodes, (path.name, reason)
        refused[path.name] = reason is not None
    by_segment = {segment: sum(v for name, v in refused.items() if name.startswith(segment)) for segment in SEGMENTS}
    assert 0 < sum(by_segment.values()) < len(refused) and by_segment["DHT"] > 0  # both verdicts, Huffman included


def test_the_run_skips_the_file_lists_it_and_trains_evaluates_with_tta_and_predicts(tmp_path):
    """Training, evaluation (test-time augmentation included) and predicting on files all go on without it."""
    import models
    from runner.core.predict import LoadedRun

    root = make_image_folder(tmp_path / "photos", 8, ("red", "green"))
    write_corrupt_jpeg(root / "red" / "huffman.jpg")
    reason = "corrupt or truncated image: broken data stream when reading image file"
    spec = make_spec(root, tta=["flip"])
    with pytest.warns(UserWarning, match=re.escape(f"skipped 1 file(s) that are not usable images "
                                                   f"(red/huffman.jpg: {reason}); all are listed in the record's "
                                                   f"data.skipped_files")):
        data = load_data(spec)
    assert data.describe()["skipped_files"] == {"red/huffman.jpg": reason}
    assert sum(map(len, (data.train, data.val, data.test))) == 16  # every good image, the bad one in no part
    assert not any("huffman" in path for part in (data.train, data.val, data.test) for path in part.paths)

    model = models.build_model(spec, num_classes=len(data.class_names))
    training = models.train_model(model, data, spec, tmp_path / "run")
    evaluation = models.evaluate_model(model, data, spec, tmp_path / "run")
    assert training.epochs_run == 1 and evaluation.tta == ["flip"]
    assert sum(map(sum, evaluation.metrics["confusion_matrix"])) == len(data.test)

    run = LoadedRun(record=_make_record("20261121-120000-aaaaaaaa", 0.8).model_copy(update={"data": DataSection(
        dir=str(root), class_names=data.class_names, manifest_hash=data.manifest_hash)}),
        record_path=tmp_path / "logs" / "r.json", model=model, spec=spec)
    table = run.predict_paths([root / "red"])
    assert len(table) == 8 and str(root / "red" / "huffman.jpg") not in set(table["path"])
    assert table.attrs["skipped"][str(root / "red" / "huffman.jpg")] == (  # the listing's reason, as in training
        "corrupt or truncated image: broken data stream when reading image file")


def test_a_file_rewritten_after_a_listing_is_checked_again_by_the_next(tmp_path):
    """A listing keeps each file's verdict for the process (a sweep lists a folder twice), keyed on the file:
    a file corrupted in place afterwards is refused by the next listing."""
    root = make_image_folder(tmp_path / "photos", 4, ("a", "b"))
    victim = root / "a" / "a_000.jpg"
    assert list_image_folder(root).skipped_files == {}
    good, before = victim.read_bytes(), victim.stat().st_mtime_ns
    victim.write_bytes(corrupt_huffman_table(good))  # in place: the same size and inode
    os.utime(victim, ns=(before + 10**9, before + 10**9))  # a second later, on any file system's clock
    assert len(victim.read_bytes()) == len(good)
    assert list_image_folder(root).skipped_files == {
        "a/a_000.jpg": "corrupt or truncated image: broken data stream when reading image file"}


# 2. Class folders with `$` in their names -------------------------------------------------------------------


def svg_texts(draw) -> str:
    """The text of the figures `draw()` saves, as SVG with text kept as text: `draw` runs with matplotlib's
    `Figure.savefig` spied on, and each figure it saves is saved again as SVG."""
    from matplotlib.figure import Figure

    saved, savefig = [], Figure.savefig

    def spy(figure, *args, **kwargs):
        saved.append(figure)
        return savefig(figure, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", spy)
        draw()
    assert saved
    texts = []
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        for figure in saved:
            buffer = io.StringIO()
            savefig(figure, buffer, format="svg")
            texts.append(buffer.getvalue())
    return "\n".join(texts)


def test_class_folders_with_dollars_are_drawn_and_written_literally(tmp_path):
    """Was: `ValueError: ... ParseSyntaxException: Expected end_group` from mathtext while drawing the
    confusion matrix, which failed the run."""
    import models
    from models.evaluate import evaluate_model, save_confusion_matrix

    root = make_image_folder(tmp_path / "photos", 8, DOLLAR_CLASSES)
    spec = make_spec(root)
    data = load_data(spec)
    assert data.class_names == ["100$", "x$_{$y"]
    model = models.build_model(spec, num_classes=2)
    evaluation = evaluate_model(model, data, spec, tmp_path / "run")
    assert (tmp_path / "run" / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")
    assert list(evaluation.metrics["per_class"]) == ["100$", "x$_{$y"]
    with open(tmp_path / "run" / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert set(rows[0]) >= {"prob_100$", "prob_x$_{$y"} and {r["true_label"] for r in rows} == set(DOLLAR_CLASSES)

    svg = svg_texts(lambda: save_confusion_matrix(evaluation.metrics["confusion_matrix"], data.class_names,
                                                  tmp_path / "cm.png"))
    assert svg.count(">100$<") == 2 and svg.count(">x$_{$y<") == 2  # each class on both axes, as written


def test_dollars_in_run_names_and_class_names_on_the_leaderboard(tmp_path):
    """The metric plot (run names label its spread panel), the page's confusion table and the csv."""
    from runner.reports import plots

    logs = tmp_path / "logs"
    for i, recall in enumerate((0.8, 0.7)):  # two seeds of one configuration named x$_{$y
        rec = _make_record(f"20261121-12000{i}-aaaaaaaa", recall, name="x$_{$y", seed=i)
        write_record(rec.model_copy(update={"name": "x$_{$y", "group_hash": "g" * 64, "data": DataSection(
            dir="/d", class_names=list(DOLLAR_CLASSES), manifest_hash="0" * 64)}), logs)
    board = write_leaderboard(logs, tmp_path / "leaderboard.html")
    assert [rec.run_id for rec in board.ranked] == ["20261121-120000-aaaaaaaa", "20261121-120001-aaaaaaaa"]
    page = board.page_path.read_text(encoding="utf-8")
    assert 'src="data:image/png;base64,' in page  # the metric plot was drawn
    assert "<th>100$</th><th>x$_{$y</th>" in page  # the confusion table's labels
    with open(board.csv_path, newline="", encoding="utf-8") as handle:
        assert [row["name"] for row in csv.DictReader(handle)] == ["x$_{$y", "x$_{$y"]

    svg = svg_texts(lambda: plots.draw(metric_plot_data(board.ranked, board.ranking)))
    assert ">#1 x$_{$y (n=2)<" in svg  # the spread panel's label, as written


@pytest.mark.slow  # one papermill run of the base notebook
def test_a_sweep_over_such_a_folder_completes_and_records_the_skipped_file(tmp_path, monkeypatch, capsys):
    """Both faults in one folder, through the sweep and the real notebook: the run completes."""
    from runner import PROJECT_ROOT

    monkeypatch.chdir(tmp_path)
    data = make_image_folder(tmp_path / "data", 8, DOLLAR_CLASSES)
    write_corrupt_jpeg(data / "100$" / "huffman.jpg")
    (tmp_path / "grid.yaml").write_text(
        f"notebook: {PROJECT_ROOT / 'notebooks' / 'base_experiment.ipynb'}\ndata_dir: {data}\n"
        "fixed: {base: simple_cnn_small, weights: null, image_size: 32, epochs: 1, batch_size: 8, "
        "dense_units: [16], val_fraction: 0.25, test_fraction: 0.25, tta: [flip]}\nruns: [{head: gap}]\n",
        encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = sweep_main(["grid.yaml"])
    out = capsys.readouterr()
    assert code == 0 and "1 completed" in out.out + out.err, out
    (record,) = read_all(tmp_path / "logs").records
    assert record.status == "completed" and record.data.class_names == list(DOLLAR_CLASSES)
    assert record.data.skipped_files == {
        "100$/huffman.jpg": "corrupt or truncated image: broken data stream when reading image file"}
    assert record.path_of("confusion_matrix", tmp_path / "logs").read_bytes().startswith(b"\x89PNG")


# 3. Records whose metrics are NaN or Infinity ------------------------------------------------------------------

FINITE, INFINITE, NOT_A_NUMBER = "20261121-120000-aaaaaaaa", "20261121-130000-bbbbbbbb", "20261121-140000-cccccccc"


def write_json_record(logs: Path, run_id: str, val_recall: str, **update) -> Path:
    """A completed run's record (`_make_record`, with a run folder holding `model.keras`) written as JSON text
    whose `val_metrics.weighted_recall` is the token `val_recall` (`0.8`, `Infinity`, `NaN`)."""
    folder = logs.parent / "experiments" / run_id
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"weights of " + run_id.encode())
    record = _make_record(run_id, 0.6, base="simple_cnn_small", image_size=32).model_copy(update={
        "data": DataSection(dir="/d", class_names=["a", "b"], manifest_hash="0" * 64),
        "paths": {"html": f"../experiments/{run_id}/{run_id}.html", "model": f"../experiments/{run_id}/model.keras"},
        **update})
    payload = record.model_dump(mode="json")
    payload["val_metrics"]["weighted_recall"] = "<figure>"
    text = json.dumps(payload, indent=2).replace('"<figure>"', val_recall)
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{run_id}.json").write_text(text, encoding="utf-8")
    return logs / f"{run_id}.json"


@pytest.fixture
def non_finite_logs(tmp_path) -> Path:
    """Three completed runs: validation weighted recall 0.25, Infinity and NaN."""
    logs = tmp_path / "logs"
    for run_id, token in ((FINITE, "0.25"), (INFINITE, "Infinity"), (NOT_A_NUMBER, "NaN")):
        write_json_record(logs, run_id, token)
    return logs


def test_a_non_finite_figure_never_ranks_and_never_is_best(non_finite_logs):
    """Was: the Infinity run ranked first and was `best`; the NaN run ranked last."""
    found = read_all(non_finite_logs)
    assert not found.unreadable and len(found.records) == 3  # Python's json reads the tokens
    ranking = parse_metric("weighted_recall")
    by_id = found.by_id()
    assert by_id[INFINITE].val_metrics.weighted_recall == float("inf")
    assert [rec.run_id for rec in rank(found.records, ranking)] == [FINITE]
    assert find("best", found).run_id == FINITE
    assert ranking.not_finite(by_id[INFINITE]) == ("val_weighted_recall is Infinity in its record, not a finite "
                                                   "number: not ranked")
    assert ranking.not_finite(by_id[NOT_A_NUMBER]) == ("val_weighted_recall is NaN in its record, not a finite "
                                                       "number: not ranked")
    assert ranking.not_finite(by_id[FINITE]) is None

    params = {"base": "simple_cnn_small", "head": "gap", "dense_units": [256], "image_size": 32,
              "warm_start": "best"}
    warm = resolve_warm_start(params, found)
    assert warm.parent_run_id == FINITE
    assert Path(warm.weights_path) == non_finite_logs.parent / "experiments" / FINITE / "model.keras"


def test_warm_start_best_among_only_non_finite_runs_is_refused(tmp_path):
    logs = tmp_path / "logs"
    write_json_record(logs, INFINITE, "Infinity")
    params = {"base": "simple_cnn_small", "head": "gap", "dense_units": [256], "image_size": 32,
              "warm_start": "best"}
    with pytest.raises(ConfigError, match=r"warm_start: got 'best': best: no completed matching run with "
                                          r"val_weighted_recall in "):
        resolve_warm_start(params, read_all(logs))


def test_a_test_ranking_never_picks_a_run_by_its_non_finite_validation_figure(tmp_path):
    """Two repeats of one configuration ranked on the test split: the run that stands for the group is the
    best on the validation split, and an Infinity there is no figure."""
    logs = tmp_path / "logs"
    write_json_record(logs, FINITE, "0.5", group_hash="g" * 64)
    write_json_record(logs, INFINITE, "Infinity", group_hash="g" * 64)
    found = read_all(logs)
    (group,) = rank_groups(found.records, parse_metric("test_weighted_recall"))
    assert group.n == 2 and group.best.run_id == FINITE


def page_text(html: str) -> str:
    """The page's visible text: no scripts, styles or images, tags as spaces."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    html = re.sub(r'src="data:[^"]*"', "", html)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_leaderboard_lists_non_finite_runs_with_the_reason_and_no_figure(non_finite_logs, tmp_path):
    """Was: `inf` ranked first on the page (`wrote leaderboard.html (3 ranked runs; best val_weighted_recall
    inf ...)`) and `nan` shown as a figure. The index is read twice: SQLite keeps a NaN as NULL."""
    for _ in range(2):  # the first write builds the records index, the second reads it
        board = write_leaderboard(non_finite_logs, tmp_path / "leaderboard.html")
        assert [rec.run_id for rec in board.ranked] == [FINITE]
        assert board.summary() == f"wrote leaderboard.html (1 ranked runs; best val_weighted_recall 0.2500 ({FINITE}))"
        text = page_text(board.page_path.read_text(encoding="utf-8"))
        assert "Runs that did not complete (2)" in text
        for run_id, token in ((INFINITE, "Infinity"), (NOT_A_NUMBER, "NaN")):
            assert (f"{run_id} completed val_weighted_recall is {token} in its record, not a finite number: "
                    f"not ranked") in text
        assert "Completed runs without" not in text  # listed once, with the reason
        assert not re.search(r"\b(inf|nan)\b", text)  # Python's spelling of the floats
        with open(board.csv_path, newline="", encoding="utf-8") as handle:
            rows = {row["run_id"]: row for row in csv.DictReader(handle)}
        assert rows[FINITE]["rank"] == "1" and rows[FINITE]["val_weighted_recall"] == "0.25"
        assert rows[FINITE]["unranked_reason"] == ""
        for run_id, token in ((INFINITE, "Infinity"), (NOT_A_NUMBER, "NaN")):
            row = rows[run_id]
            assert row["rank"] == "" and row["val_weighted_recall"] == "" and row["group_mean"] == ""
            assert row["unranked_reason"] == (f"val_weighted_recall is {token} in its record, not a finite number: "
                                              f"not ranked")
            assert row["test_weighted_recall"] == "0.6"  # its finite figures stay
        assert not re.search(r"\b(inf|nan)\b", board.csv_path.read_text(encoding="utf-8"))
