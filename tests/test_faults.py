"""Faults found by a second round of trying to break the sweep: a damaged or shared search study, data that
changes under a run, inputs that slipped past validation, lookups that did not say why.

One test per situation. Each sets the situation up as a user (or a hostile disk) would, then checks the
fixed behaviour: a clear message and no traceback, exit code 2 for bad input, nothing already recorded
lost, and the same command again recovering. Sweeps run the tiny `tests/assets/faults.ipynb` (no
TensorFlow) through real papermill, in this process.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import nbformat
import pytest

from helpers import (FAULTS_NOTEBOOK, SWEEP, _make_record, ensemble_main, leaderboard_main, make_image_folder,
                     predict_main, sweep_main, write_faults_grid)
from runner import cli
from runner.errors import shorten
from runner.records import DataSection, write_record
from runner.records.query import read_all


def run(main, args, capsys) -> tuple[int, str]:
    """`main(args)` (a usage error's `SystemExit` included): (exit code, stdout + stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def journals(logs: Path) -> list[Path]:
    return sorted(logs.glob("*.optuna.journal"))


def study_trials(journal: Path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal)))
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)


def counted(journal: Path) -> int:
    """Finished trials that count toward `n_runs` (repeated proposals do not)."""
    from runner.search.study import DUPLICATE_ATTR

    return sum(t.state.name in ("COMPLETE", "PRUNED") and DUPLICATE_ATTR not in t.user_attrs
               for t in study_trials(journal))


def search_grid(path: Path, grid: str, search: str = "sampler: random, n_runs: 2, seed: 1",
                logs: str = "logs") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"notebook: {FAULTS_NOTEBOOK}\nsearch: {{{search}}}\nfixed: {{action: ok}}\ngrid: {grid}\n"
                    f"logs_dir: {logs}\n", encoding="utf-8")
    return path


# 1. A truncated or overwritten study journal ------------------------------------------------------------


@pytest.mark.slow
def test_a_cut_or_garbage_study_journal_is_repaired_and_rebuilt_from_the_records(tmp_path, monkeypatch, capsys):
    """Was: the next sweep appended to the half-written last line and ended in a JSONDecodeError traceback
    (every later sweep too); a journal overwritten with garbage, a UnicodeDecodeError not naming the file."""
    monkeypatch.chdir(tmp_path)
    grid = search_grid(tmp_path / "sg.yaml", "{score: {low: 0.0, high: 1.0}}")
    assert run(sweep_main, [grid], capsys)[0] == 0
    (journal,) = journals(tmp_path / "logs")
    done = {r.run_id for r in read_all(tmp_path / "logs").records}
    assert len(done) == 2 and counted(journal) == 2

    journal.write_bytes(journal.read_bytes()[:-7])  # a sweep killed while writing its last line
    code, out = run(sweep_main, [grid], capsys)
    assert code == 0 and "Traceback" not in out, out
    assert f"warning: {journal}: its last line was unfinished" in out
    assert "added them from their records" in out  # the tell that was cut comes back from the record
    assert {r.run_id for r in read_all(tmp_path / "logs").records} == done  # no run lost, none run again
    assert counted(journal) == 2
    code, out = run(sweep_main, [grid], capsys)  # the same command again: nothing to repair
    assert code == 0 and "warning" not in out and len(read_all(tmp_path / "logs").records) == 2

    garbage = b"\x8b\xff garbage \x00\n\xfe not a journal\n"
    journal.write_bytes(garbage)
    code, out = run(sweep_main, [grid], capsys)
    assert code == 0 and "Traceback" not in out, out
    assert f"warning: {journal}: the search study cannot be read (line 1: byte 0x8b is not UTF-8 text); " \
           f"moved it aside to {journal.name}.damaged-" in out
    (aside,) = journal.parent.glob(f"{journal.name}.damaged-*")
    assert aside.read_bytes() == garbage  # kept for inspection
    assert "2 finished point(s) of the run records were missing from it" in out
    assert {r.run_id for r in read_all(tmp_path / "logs").records} == done and counted(journal) == 2
    code, out = run(sweep_main, [grid], capsys)
    assert code == 0 and "warning" not in out and len(read_all(tmp_path / "logs").records) == 2


# 2. Two grid files of the same name ---------------------------------------------------------------------


@pytest.mark.slow
def test_two_grid_files_of_the_same_name_have_studies_of_their_own(tmp_path, monkeypatch, capsys):
    """Was: b/sg.yaml ran nothing ("0 completed", exit 0): a/sg.yaml's trials counted toward its n_runs."""
    monkeypatch.chdir(tmp_path)
    logs = tmp_path / "logs"
    a = search_grid(tmp_path / "a" / "sg.yaml", "{score: {low: 0.0, high: 0.5}}", logs=str(logs))
    b = search_grid(tmp_path / "b" / "sg.yaml", "{score: [0.7, 0.9]}", search="sampler: grid", logs=str(logs))
    assert run(sweep_main, [a], capsys)[0] == 0
    code, out = run(sweep_main, [b], capsys)
    assert code == 0 and "2 completed" in out, out
    records = read_all(logs).records
    assert len(records) == 4 and sorted(r.params["score"] for r in records)[2:] == [0.7, 0.9]
    assert len(journals(logs)) == 2 and all(counted(j) == 2 for j in journals(logs))
    for grid in (a, b):  # each study is finished: the same commands again run nothing
        code, out = run(sweep_main, [grid], capsys)
        assert code == 0 and "0 completed" in out
    assert len(read_all(logs).records) == 4


# 3. An edited search space ------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_edited_search_space_starts_a_new_study_that_keeps_the_finished_runs(tmp_path, monkeypatch, capsys):
    """Was: a traceback from study.ask ("CategoricalDistribution does not support dynamic value space"),
    after the new distribution had been written into the journal."""
    monkeypatch.chdir(tmp_path)
    grid = search_grid(tmp_path / "sg.yaml", "{score: [0.2, 0.4]}", search="sampler: grid")
    assert run(sweep_main, [grid], capsys)[0] == 0
    (old,) = journals(tmp_path / "logs")
    before = old.read_bytes()
    search_grid(grid, "{score: [0.2, 0.4, 0.6]}", search="sampler: grid")  # one more choice
    code, out = run(sweep_main, [grid], capsys)
    assert code == 0 and "Traceback" not in out, out
    assert "2 finished point(s) of the run records were missing from it" in out  # the new study knows them
    assert "1 completed" in out
    assert sorted(r.params["score"] for r in read_all(tmp_path / "logs").records) == [0.2, 0.4, 0.6]
    assert old.read_bytes() == before  # the old study is untouched
    (new,) = set(journals(tmp_path / "logs")) - {old}
    assert counted(new) == 3
    code, out = run(sweep_main, [grid], capsys)
    assert code == 0 and "0 completed" in out and len(read_all(tmp_path / "logs").records) == 3


# 4. Data that changes under a run -----------------------------------------------------------------------


def data_notebook(path: Path) -> Path:
    """A notebook that lists `data_dir` as a run does (`models.data.folders.load_data`, no TensorFlow) and
    records its split; before that, the first time, it moves the file `hide` away to `hide_to` (another
    process deleting images while the sweep runs)."""
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('data_dir = "builtin:digits"\ntag = 0\nhide = ""\nhide_to = ""\n'
                                           'output_dir = "."\nresolved_warm_start = None\npruning = None\n')
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell(
        "import os\n"
        "from models.contract import RANKING_METRICS, write_result\n"
        "from models.data.folders import load_data\n"
        "from models.spec import ExperimentSpec\n"
        "if hide and not os.path.exists(hide_to):\n"
        "    os.makedirs(hide_to)\n"
        "    os.replace(hide, os.path.join(hide_to, os.path.basename(hide)))\n"
        "split = load_data(ExperimentSpec(data_dir=data_dir))\n"
        "m = {k: 0.5 for k in RANKING_METRICS}\n"
        "write_result(output_dir, data=split.describe(), model={'base': 'none'}, training={},\n"
        "             evaluation={'metrics': m, 'val_metrics': m})\n")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_a_run_whose_data_changed_under_it_is_recorded_with_a_warning_and_run_again(tmp_path, monkeypatch,
                                                                                     capsys):
    """Was: images deleted while the sweep ran and put back afterwards: the next sweep skipped both runs
    ("0 completed, 2 skipped"), whose records carried the full folder's manifest and no warning."""
    from models.data.folders import load_data
    from models.spec import ExperimentSpec

    monkeypatch.chdir(tmp_path)
    data = make_image_folder(tmp_path / "data", n_per_class=12, classes=("red", "green"))
    victim, hide_to = data / "red" / "red_001.png", tmp_path / "elsewhere"
    full = load_data(ExperimentSpec(data_dir=str(data))).manifest_hash
    notebook = data_notebook(tmp_path / "data.ipynb")
    (tmp_path / "grid.yaml").write_text(
        f"notebook: {notebook}\ndata_dir: {data}\nfixed: {{hide: {victim}, hide_to: {hide_to}}}\n"
        f"runs: [{{tag: 1}}, {{tag: 2}}]\n", encoding="utf-8")
    code, out = run(sweep_main, ["grid.yaml"], capsys)
    assert code == 0 and "2 completed" in out, out
    first = read_all(tmp_path / "logs").records
    assert len(first) == 2
    for rec in first:  # what they trained on is what their records say, with a warning
        assert rec.data.manifest_hash != full and sum(rec.data.counts["train"].values()) < 24 * 0.7
        (warning,) = [w for w in rec.warnings if w.startswith("data changed under the run")]
        assert f"had manifest {full[:12]}" in warning
        assert f"warning: run {rec.run_id}: data changed under the run" in out

    os.replace(hide_to / victim.name, victim)  # put back, with its modification time
    code, out = run(sweep_main, ["grid.yaml"], capsys)
    assert code == 0 and "2 completed" in out and "skip" not in out, out  # trained again, on the full folder
    records = read_all(tmp_path / "logs").records
    assert len(records) == 4 and {r.run_id for r in first} <= {r.run_id for r in records}  # nothing lost
    again = [r for r in records if r.run_id not in {f.run_id for f in first}]
    assert all(r.data.manifest_hash == full and not r.warnings for r in again)
    code, out = run(sweep_main, ["grid.yaml"], capsys)  # now done for this data
    assert code == 0 and out.count("skip run") == 2 and len(read_all(tmp_path / "logs").records) == 4


# 5. Symbolic links in a class folder --------------------------------------------------------------------


def test_dangling_and_looping_symlinks_are_reported_as_such(tmp_path):
    """Was: both skipped as "not an image file name (extension '.png' ...)"."""
    from models.data.folders import list_image_folder
    from runner.core.predict import expand_image_paths

    data = make_image_folder(tmp_path / "data", n_per_class=4, classes=("red", "green"))
    (data / "red" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (data / "red" / "loop.png").symlink_to(data / "red" / "loop.png")
    skipped = list_image_folder(data).skipped_files
    assert skipped["red/gone.png"] == f"dangling symbolic link: its target {tmp_path / 'nowhere.png'} does not exist"
    assert skipped["red/loop.png"].startswith("symbolic link loop")
    _, skipped = expand_image_paths([data / "red"])  # predict reports them the same way
    assert skipped[str(data / "red" / "gone.png")].startswith("dangling symbolic link")
    assert skipped[str(data / "red" / "loop.png")].startswith("symbolic link loop")


# 6. predict with no readable image ----------------------------------------------------------------------


def fake_loaded_run(tmp_path):
    """A `LoadedRun` of 2 classes whose model is never called (no image is readable)."""
    from models.spec import ExperimentSpec
    from runner.core.predict import LoadedRun

    record = _make_record("20261121-120000-aaaaaaaa", 0.8).model_copy(update={"data": DataSection(
        dir=str(tmp_path), class_names=["red", "green"], manifest_hash="0" * 64)})
    return LoadedRun(record=record, record_path=tmp_path / "logs" / "r.json", model=None,
                     spec=ExperimentSpec(image_size=32, weights=None))


def test_predict_with_no_readable_image_is_an_error_listing_the_skipped_files(tmp_path, monkeypatch, capsys):
    """Was: exit 0, pandas' "Empty DataFrame" and a header-only CSV; a readme.txt not listed as skipped."""
    import runner.core.predict as predict

    monkeypatch.setattr(predict, "load_run", lambda *args, **kwargs: fake_loaded_run(tmp_path))
    (tmp_path / "empty").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "readme.txt").write_text("no images here")
    out = tmp_path / "p.csv"
    code, text = run(predict_main, ["best", tmp_path / "empty", "--out", out], capsys)
    assert code == 2 and "Traceback" not in text and "Empty DataFrame" not in text
    assert f"error: {tmp_path / 'empty'}: no image files (expected .jpg, " in text
    code, text = run(predict_main, ["best", tmp_path / "text", "--out", out], capsys)
    assert code == 2 and (f"no image files (expected .jpg, .jpeg, .png, .bmp, .gif, .webp files); skipped 1 file(s): "
                          f"{tmp_path / 'text' / 'readme.txt'}: not an image file name (extension '.txt'") in text
    assert not out.exists()  # no header-only CSV


@pytest.mark.slow  # decoding the image imports TensorFlow
def test_predict_with_only_undecodable_images_is_an_error_listing_them(tmp_path, monkeypatch, capsys):
    import runner.core.predict as predict

    monkeypatch.setattr(predict, "load_run", lambda *args, **kwargs: fake_loaded_run(tmp_path))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "readme.txt").write_text("no images here")
    (tmp_path / "text" / "broken.png").write_bytes(b"not a png")  # an image name, not decodable
    out = tmp_path / "p.csv"
    code, text = run(predict_main, ["best", tmp_path / "text", "--out", out], capsys)
    assert code == 2 and f"{tmp_path / 'text'}: no readable image; skipped 2 file(s): " in text
    assert f"{tmp_path / 'text' / 'broken.png'}: " in text and "Empty DataFrame" not in text
    assert not out.exists()  # no header-only CSV


# 7. ensemble --top N -------------------------------------------------------------------------------------


def member(logs: Path, run_id: str, recall: float, manifest: str):
    """A completed run record with its model.keras and predictions (2 classes, 4 test images) on disk."""
    folder = logs.parent / "experiments" / run_id
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"weights")
    rows = "path,true_label,prob_a,prob_b\n" + "".join(f"/img/{i}.png,{'ab'[i % 2]},{recall},{1 - recall}\n"
                                                         for i in range(4))
    for name in ("predictions.csv", "val_predictions.csv"):
        (folder / name).write_text(rows, encoding="utf-8")
    rel = f"../experiments/{run_id}"
    record = _make_record(run_id, recall, head=run_id).model_copy(update={
        "data": DataSection(dir="/data", class_names=["a", "b"], manifest_hash=manifest),
        "paths": {"html": f"{rel}/{run_id}.html", "model": f"{rel}/model.keras",
                  "predictions": f"{rel}/predictions.csv", "val_predictions": f"{rel}/val_predictions.csv"}})
    write_record(record, logs)


@pytest.mark.slow  # the ensemble's evaluation imports TensorFlow
def test_ensemble_top_n_says_how_many_it_took_among_the_runs_compatible_with_the_best(tmp_path, capsys):
    """Was: `--top 10` with 2 eligible runs made a 2-member ensemble without a word, and over a logs folder
    mixing two datasets `--top N` was refused outright ("different manifest_hash")."""
    logs = tmp_path / "logs"
    member(logs, "20261121-120000-aaaaaaaa", 0.9, "a" * 64)
    member(logs, "20261121-120001-bbbbbbbb", 0.8, "b" * 64)  # another dataset
    member(logs, "20261121-120002-cccccccc", 0.7, "a" * 64)
    args = ["--logs-dir", logs, "--experiments-dir", tmp_path / "experiments", "--leaderboard",
            tmp_path / "leaderboard.html"]
    code, out = run(ensemble_main, ["--top", "10", *args], capsys)
    assert code == 0, out
    messages = [line.removeprefix("warning: ") for line in out.splitlines() if line.startswith("warning: ")]
    assert any("--top 10: skipped 1 configuration(s) with no run on the test split of 20261121-120000-aaaaaaaa"
               in m and "20261121-120001-bbbbbbbb" in m for m in messages), messages
    assert any(m.startswith("--top 10: only 2 configuration(s) have an eligible run") and "the ensemble has 2 "
               "members: 20261121-120000-aaaaaaaa, 20261121-120002-cccccccc" in m for m in messages), messages
    (ensemble,) = [r for r in read_all(logs).records if r.kind == "ensemble"]
    assert ensemble.members == ["20261121-120000-aaaaaaaa", "20261121-120002-cccccccc"]


# 8. --timeout / --cell-timeout that are not a limit ------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
@pytest.mark.parametrize("option", ["--timeout", "--cell-timeout"])
def test_a_timeout_must_be_a_finite_positive_number_of_seconds(tmp_path, monkeypatch, capsys, option, value):
    """Was: 0 and nan meant "no limit"; -1 started a kernel and recorded a `timeout`."""
    monkeypatch.chdir(tmp_path)
    grid = write_faults_grid(tmp_path, "[{action: ok}]")
    code, out = run(sweep_main, [grid, option, value], capsys)
    assert code == 2 and "Traceback" not in out
    assert f"Invalid value for '{option}': expected a finite number of seconds > 0" in out
    assert not (tmp_path / "logs").exists() and not (tmp_path / "experiments").exists()  # nothing ran
    code, out = run(lambda argv: cli.run_command("rerun", argv), ["some-run", option, value], capsys)
    assert code == 2 and f"Invalid value for '{option}'" in out
    assert run(sweep_main, [grid, option, "2.5", "--dry-run"], capsys)[0] == 0


# 9. A grid file that is not UTF-8 -----------------------------------------------------------------------


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfen\x00o\x00t\x00e\x00", "grid file is UTF-16 text (it starts with a UTF-16 byte-order mark); "
                                      "save it as UTF-8"),
    (b"fixed: {weights: null}\nseed: \x8b\x01\xff\n", "grid file is not UTF-8 text (byte 0x8b at line 2, byte 30, "
                                                      "is not UTF-8); save it as UTF-8"),
], ids=["utf-16", "random-bytes"])
def test_a_grid_file_that_is_not_utf8_is_refused_by_name(tmp_path, monkeypatch, capsys, content, message):
    """Was: a UnicodeDecodeError traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid.yaml").write_bytes(content)
    code, out = run(sweep_main, ["grid.yaml", "--dry-run"], capsys)
    assert code == 2 and "Traceback" not in out
    assert f"error: grid.yaml: {message}" in out
    (tmp_path / "grid.yaml").write_bytes(b"\xef\xbb\xbf" + f"notebook: {FAULTS_NOTEBOOK}\n".encode())  # a UTF-8 BOM: fine
    assert run(sweep_main, ["grid.yaml", "--dry-run"], capsys)[0] == 0


# 10. YAML aliases and long values -----------------------------------------------------------------------


def test_nested_yaml_aliases_are_refused_at_once_and_long_values_are_shortened(tmp_path, monkeypatch, capsys):
    """Was: a 790-byte "billion laughs" grid refused after 61 s with a 1.4 GB message; a 10,000-character
    name echoed whole."""
    monkeypatch.chdir(tmp_path)
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    lines += ["fixed: {weights: null, name: *a8}"]
    (tmp_path / "grid.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert len((tmp_path / "grid.yaml").read_bytes()) < 1000
    start = time.monotonic()
    code, out = run(sweep_main, ["grid.yaml", "--dry-run"], capsys)
    assert code == 2 and time.monotonic() - start < 10 and len(out) < 500, out[:2000]
    assert out.startswith("error: grid.yaml: line 2, column 10: YAML alias *a0: aliases are refused in grid files")
    (tmp_path / "grid.yaml").write_text(  # a merge key's alias stays allowed
        f"notebook: {FAULTS_NOTEBOOK}\nruns:\n  - &first {{action: ok, score: 0.1}}\n  - {{<<: *first, score: 0.2}}\n"
        "  - {<<: [*first], seconds: 0.5}\n", encoding="utf-8")
    code, out = run(sweep_main, ["grid.yaml", "--dry-run"], capsys)
    assert code == 0 and "3 runs" in out, out

    (tmp_path / "grid.yaml").write_text(f"fixed: {{weights: null, name: {'n' * 10000}}}\n", encoding="utf-8")
    code, out = run(sweep_main, ["grid.yaml", "--dry-run"], capsys)
    assert code == 2 and len(out) < 600, out[:2000]
    assert "grid.yaml: fixed.name: got 'nnnn" in out and "n...n" in out and "nnnn' (10000 characters)" in out
    (tmp_path / "grid.yaml").write_text(f"? {'k' * 10000}\n: 1\n", encoding="utf-8")  # an unknown key
    code, out = run(sweep_main, ["grid.yaml", "--dry-run"], capsys)
    assert code == 2 and len(out) < 1500 and "unknown key" in out, out[:2000]
    assert shorten("x" * 5000).endswith("' (5000 characters)") and len(shorten(list(range(10**6)))) < 300


# 11. Infinite floats -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("fixed: {weights: null, learning_rate: .inf}", "fixed.learning_rate: got inf, expected a finite number"),
    ("fixed: {weights: null, l2: .inf}", "fixed.l2: got inf, expected a finite number"),
    ("fixed: {weights: null, augmentation: {mixup: .inf}}", "fixed.augmentation.mixup: got inf, expected a finite"),
    ("fixed: {weights: null, weight_decay: .nan}", "fixed.weight_decay: got nan, expected a finite number"),
    ("search: {sampler: random}\nfixed: {weights: null}\ngrid: {learning_rate: {low: 1.0e-4, high: .inf}}",
     "grid.learning_rate.high: got inf, expected a finite number"),
    ("search: {sampler: random, budget: .inf}\ngrid: {dropout: [0.1]}", "search.budget: .*finite duration"),
], ids=["learning_rate", "l2", "mixup", "nan", "search-range", "budget"])
def test_infinite_floats_are_refused_before_anything_runs(tmp_path, monkeypatch, capsys, text, message):
    """Was: `learning_rate: .inf` and `l2: .inf` accepted; the runs trained, then failed ("Out of range
    float values are not JSON compliant")."""
    import re

    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid.yaml").write_text(text + "\n", encoding="utf-8")
    code, out = run(sweep_main, ["grid.yaml", "--dry-run"], capsys)
    assert code == 2 and "Traceback" not in out and re.search(message, out), out
    assert not (tmp_path / "logs").exists()


# 12. A path too long to stat ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["data_dir", "weights"])
def test_a_path_too_long_is_refused_naming_its_key(tmp_path, monkeypatch, capsys, key):
    """Was: `OSError: [Errno 36] File name too long` traceback from the fingerprinting."""
    monkeypatch.chdir(tmp_path)
    long = tmp_path / ("a" * 10000)
    fixed = {"data_dir": f"{{weights: null, data_dir: {long}}}", "weights": f"{{weights: {long}}}"}[key]
    (tmp_path / "grid.yaml").write_text(f"fixed: {fixed}\n", encoding="utf-8")
    code, out = run(sweep_main, ["grid.yaml", "--dry-run"], capsys)
    assert code == 2 and "Traceback" not in out and len(out) < 600, out[:2000]
    assert f"error: grid.yaml: fixed.{key}: got '{str(long)[:20]}" in out
    assert f"({len(str(long))} characters): cannot be read (File name too long)" in out


# 13. A missing logs folder ---------------------------------------------------------------------------------


def test_a_missing_logs_folder_is_an_error_for_every_command_that_reads_one(tmp_path, monkeypatch, capsys):
    """Was: `leaderboard --logs-dir nope` (and lineage) exited 0 and wrote an empty page."""
    monkeypatch.chdir(tmp_path)
    lineage = lambda argv: cli.run_command("lineage", argv)  # noqa: E731
    for main, args in ((leaderboard_main, []), (lineage, []), (ensemble_main, ["--top", "2"]),
                       (predict_main, ["best", tmp_path])):
        (tmp_path / "x.png").write_bytes(b"")
        code, out = run(main, [*args, "--logs-dir", "nope"], capsys)
        assert code == 2 and "error: --logs-dir: nope does not exist" in out, out
    assert not list(tmp_path.glob("*.html"))


# 14. A record that exists but cannot be read ---------------------------------------------------------------


@pytest.mark.slow
def test_an_unreadable_record_is_named_by_lookups_and_listed_by_the_sweep(tmp_path, monkeypatch, capsys):
    """Was: a record of `schema_version: 99` was "no record" for predict and warm starts, and the sweep
    silently trained the same configuration again next to it."""
    from runner.core.warm_start import resolve_warm_start
    from runner.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    grid = write_faults_grid(tmp_path, "[{action: ok}]")
    assert run(sweep_main, [grid], capsys)[0] == 0
    (record,) = read_all(tmp_path / "logs").records
    path = tmp_path / "logs" / f"{record.run_id}.json"
    payload = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**payload, "schema_version": 99}), encoding="utf-8")

    (tmp_path / "x.png").write_bytes(b"")
    code, out = run(predict_main, [record.run_id[:12], tmp_path / "x.png", "--logs-dir", "logs"], capsys)
    assert code == 2 and "no record" not in out
    assert (f"the record for '{record.run_id[:12]}', {path.name} in {tmp_path / 'logs'}, exists but cannot be read: "
            f"{path}: schema_version: got 99, expected 1 or 2 (written by a newer version of nbsweep") in out
    with pytest.raises(ConfigError, match="exists but cannot be read"):
        resolve_warm_start({"warm_start": record.run_id}, read_all(tmp_path / "logs"))

    code, out = run(sweep_main, [grid], capsys)
    assert code == 0 and (f"warning: 1 record(s) in {tmp_path / 'logs'} cannot be read, so their runs are not known "
                          f"to be done and may run again beside them: {path.name}: ") in out, out
    assert path.read_text(encoding="utf-8").count('"schema_version": 99') == 1  # left as it was


def test_shorten_keeps_messages_short():
    assert shorten("abc") == "'abc'" and shorten(0.5) == "0.5" and shorten(math.inf) == "inf"
    assert shorten("a" * 300, quote=False).endswith("a (300 characters)")
    assert len(shorten({str(i): "v" * 500 for i in range(100)})) < 320


# 15. Braces in an output path -----------------------------------------------------------------------------


@pytest.mark.slow
def test_braces_in_output_paths_are_taken_literally(tmp_path, monkeypatch, capsys):
    """Was: `experiments_dir: exp{x}` failed every run with "PapermillMissingParameterException: Missing
    parameter 'x'" (papermill formats its output path with the parameters), `exp{}` with an IndexError."""
    monkeypatch.chdir(tmp_path)
    experiments, logs, board = tmp_path / "exp{x}", tmp_path / "logs{}", tmp_path / "lb{x}" / "{}" / "board.html"
    earlier = _make_record("20260101-000000-aaaaaaaa", 0.4)
    write_record(earlier, logs)  # recorded before: must stay
    grid = write_faults_grid(tmp_path, "[{action: ok}, {action: ok, score: 0.7}]", experiments_dir='"exp{x}"',
                             logs_dir='"logs{}"', leaderboard='"lb{x}/{}/board.html"')
    code, out = run(sweep_main, [grid], capsys)
    assert code == 0 and "Traceback" not in out and "Missing parameter" not in out, out
    assert f"2 completed; leaderboard: {board}" in out
    records = read_all(logs).records
    assert [r.run_id for r in records][0] == earlier.run_id and len(records) == 3
    for record in records[1:]:
        assert record.status == "completed" and record.error is None
        notebook = experiments / record.run_id / f"{record.run_id}.ipynb"
        assert notebook.is_file() and notebook.with_suffix(".html").is_file()
        assert nbformat.read(notebook, as_version=4).metadata.papermill.output_path == str(notebook)
    assert sorted(r.metrics.weighted_recall for r in records[1:]) == [0.5, 0.7]
    assert board.is_file() and "20260101-000000-aaaaaaaa" in board.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp{x}", "grid.yaml", "lb{x}", "logs{}"]
    code, out = run(sweep_main, [grid], capsys)  # the same command again: both done
    assert code == 0 and "0 completed, 2 skipped" in out, out
    assert len(read_all(logs).records) == 3


# 16. Outputs below a symbolic link loop, or in a read-only or full place ----------------------------------


@pytest.mark.slow
def test_output_paths_below_a_symlink_loop_are_refused_naming_the_path(tmp_path, monkeypatch, capsys):
    """Was: a RuntimeError traceback ("Symlink loop from ...") from resolving `experiments_dir`."""
    monkeypatch.chdir(tmp_path)
    grid = write_faults_grid(tmp_path, "[{action: ok}]")
    assert run(sweep_main, [grid], capsys)[0] == 0
    (record,) = read_all(tmp_path / "logs").records
    board = (tmp_path / "leaderboard.html").read_bytes()
    (tmp_path / "loop").symlink_to("loop")
    paths = {"experiments_dir": "loop/experiments", "logs_dir": "loop/logs", "leaderboard": "loop/board.html"}
    looped = tmp_path / "looped.yaml"
    looped.write_text(grid.read_text(encoding="utf-8") + "".join(f"{k}: {v}\n" for k, v in paths.items()),
                      encoding="utf-8")
    code, out = run(sweep_main, [looped], capsys)
    assert code == 2 and "Traceback" not in out, out
    loop = f"{tmp_path / 'loop'} is a symbolic link loop (-> loop); give a path without the loop"
    assert out.startswith(f"error: {looped}: experiments_dir: got '{tmp_path / paths['experiments_dir']}': cannot "
                          f"create {tmp_path / paths['experiments_dir']}: {loop}\n"), out
    logs = tmp_path / "loop" / "logs"
    assert f"{looped}: logs_dir: got '{logs}': cannot create {logs}: {loop}" in out
    assert f"{looped}: leaderboard: got '{tmp_path / 'loop' / 'board.html'}': cannot create {tmp_path / 'loop'}: " \
           f"{loop}" in out
    assert [r.run_id for r in read_all(tmp_path / "logs").records] == [record.run_id]  # nothing lost
    assert (tmp_path / "leaderboard.html").read_bytes() == board
    assert [p.name for p in (tmp_path / "experiments").iterdir()] == [record.run_id]  # nothing ran
    code, out = run(sweep_main, [grid], capsys)  # the grid without the loop: as before
    assert code == 0 and "0 completed, 1 skipped" in out, out


def test_the_writable_folder_check_names_a_link_loop_and_a_link_to_nowhere(tmp_path):
    """A link whose target is missing is named too (the grid's own paths are resolved, so there it is
    followed; `writable_folder_problem` is public and takes any path)."""
    from runner.core.preflight import writable_folder_problem

    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "nowhere").symlink_to(tmp_path / "missing" / "deeper")
    assert writable_folder_problem(tmp_path / "loop" / "logs") == (
        f"cannot create {tmp_path / 'loop' / 'logs'}: {tmp_path / 'loop'} is a symbolic link loop (-> loop); "
        f"give a path without the loop")
    assert writable_folder_problem(tmp_path / "nowhere" / "logs") == (
        f"cannot create {tmp_path / 'nowhere' / 'logs'}: {tmp_path / 'nowhere'} is a symbolic link to "
        f"{tmp_path / 'missing' / 'deeper'}, which does not exist")
    assert writable_folder_problem(tmp_path / "fine" / "logs") is None
    assert sorted(tmp_path.iterdir()) == [tmp_path / "loop", tmp_path / "nowhere"]  # nothing left behind


def mount_namespace_available() -> bool:
    """Whether `unshare -rm` (a user and mount namespace of its own) works here: mounts for one command."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


MOUNTS = {
    # a bind mount of the folder onto itself, made read-only: file modes play no part (root included)
    "read-only": ("mount --bind {d} {d} && mount -o remount,bind,ro {d}", "Read-only file system",
                  "choose a writable folder"),
    # a 256 KiB tmpfs over the folder, its files copied in, then filled up
    "full": ("cp -a {d} {d}.saved && mount -t tmpfs -o size=256k tmpfs {d} && cp -a {d}.saved/. {d}/ && "
             "rm -r {d}.saved && (head -c 1M /dev/zero > {d}/filler 2>/dev/null; true)", "No space left on device",
             "free some space or choose another folder"),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", MOUNTS)
def test_a_read_only_or_full_logs_or_leaderboard_folder_is_refused_before_anything_runs(tmp_path, monkeypatch,
                                                                                         capsys, kind):
    """Was (full): the sweep ran the runs, then stopped at the lock file (an OSError traceback) or at the
    leaderboard; a read-only folder is tried without relying on file modes, which root ignores."""
    if not mount_namespace_available():
        pytest.skip("needs `unshare -rm` (user and mount namespaces) to mount a read-only or full folder")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "board").mkdir()
    grid = write_faults_grid(tmp_path, "[{action: ok}]", leaderboard="board/leaderboard.html")
    assert run(sweep_main, [grid], capsys)[0] == 0
    (record,) = read_all(tmp_path / "logs").records
    board = (tmp_path / "board" / "leaderboard.html").read_bytes()
    mount, reason, fix = MOUNTS[kind]
    grid.write_text(grid.read_text(encoding="utf-8").replace("{action: ok}", "{action: ok, score: 0.9}"),
                    encoding="utf-8")  # a new run: without the check it would run
    script = (f"{mount.format(d='logs')} && {mount.format(d='board')} && "
              f"{shlex.join(SWEEP)} grid.yaml; code=$?; ls logs; exit $code")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.startswith("error: grid.yaml: ")
    logs = tmp_path / "logs"
    assert f"logs_dir: got '{logs}': cannot write in {logs} ({reason}); {fix}" in proc.stderr
    assert (f"leaderboard: got '{tmp_path / 'board' / 'leaderboard.html'}': cannot write in {tmp_path / 'board'} "
            f"({reason}); {fix}") in proc.stderr
    assert f"{record.run_id}.json" in proc.stdout  # the record, as the refused sweep saw it
    assert [r.run_id for r in read_all(tmp_path / "logs").records] == [record.run_id]  # nothing lost
    assert (tmp_path / "board" / "leaderboard.html").read_bytes() == board
    assert [p.name for p in (tmp_path / "experiments").iterdir()] == [record.run_id]  # nothing ran
    code, out = run(sweep_main, [grid], capsys)  # writable again: the new run runs
    assert code == 0 and "1 completed" in out, out
    assert len(read_all(tmp_path / "logs").records) == 2


# 17. cache_dir: a file, below a file, relative ------------------------------------------------------------


@pytest.mark.slow  # two real Keras runs on a frozen base
def test_cache_dir_is_shared_from_where_the_command_runs_and_a_bad_one_is_refused(tmp_path, monkeypatch, capsys,
                                                                                 tiny_image_dir, base_weights_file):
    """Was: `cache_dir: mycache` was resolved from each run's own folder, so no run ever reused another's
    entry; a `cache_dir` that is a file, or `NBSWEEP_CACHE_DIR` below one, was found only inside the run."""
    monkeypatch.chdir(tmp_path)
    fixed = (f"{{base: simple_cnn_small, weights: {base_weights_file}, image_size: 32, epochs: 1, batch_size: 8, "
             f"dense_units: [8], early_stopping_patience: null, cache_dir: mycache}}")
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"data_dir: {tiny_image_dir}\nfixed: {fixed}\ngrid: {{dropout: [0.1, 0.2]}}\n", encoding="utf-8")
    code, out = run(sweep_main, [grid], capsys)
    assert code == 0 and "2 completed" in out, out
    first, second = read_all(tmp_path / "logs").records
    assert first.params["cache_dir"] == second.params["cache_dir"] == str(tmp_path / "mycache")
    assert (first.activation_cache["head"]["status"], second.activation_cache["head"]["status"]) == ("built", "hit")
    assert [p.name for p in (tmp_path / "mycache").iterdir() if not p.name.startswith(".")] == \
        [first.activation_cache["head"]["key"]]
    assert not list((tmp_path / "experiments").glob("*/mycache"))  # no cache of a run's own

    (tmp_path / "a_file").write_text("not a folder", encoding="utf-8")
    done = {r.run_id for r in read_all(tmp_path / "logs").records}

    def refused(text: str, message: str, **env) -> None:
        grid.write_text(text, encoding="utf-8")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        code, out = run(sweep_main, [grid], capsys)
        assert code == 2 and "Traceback" not in out, out
        assert out.startswith(f"error: {grid}: grid (2 runs): cache_dir: {message}"), out
        assert {r.run_id for r in read_all(tmp_path / "logs").records} == done  # nothing lost, nothing ran
        assert len(list((tmp_path / "experiments").iterdir())) == 2

    text = grid.read_text(encoding="utf-8")
    refused(text.replace("cache_dir: mycache", "cache_dir: a_file"),
            f"got '{tmp_path / 'a_file'}': {tmp_path / 'a_file'} is a file, expected a folder (or a path where one "
            f"can be created)")
    null = text.replace("cache_dir: mycache", "cache_dir: null")
    below = tmp_path / "a_file" / "sub"
    refused(null, f"null reads $NBSWEEP_CACHE_DIR, '{below}': cannot create {below}: {tmp_path / 'a_file'} is a file",
            NBSWEEP_CACHE_DIR=str(below))
    refused(null, "null reads $NBSWEEP_CACHE_DIR, 'mycache', a relative path: each run would resolve it from its "
                  "own folder and build a cache of its own; give an absolute path", NBSWEEP_CACHE_DIR="mycache")
    grid.write_text(text, encoding="utf-8")
    code, out = run(sweep_main, [grid], capsys)  # the first grid again: both done
    assert code == 0 and "0 completed, 2 skipped" in out, out


# 18. A named record of a newer schema ---------------------------------------------------------------------


def named_notebook(path: Path) -> Path:
    """`FAULTS_NOTEBOOK` with a `name` parameter (as the base notebook has)."""
    nb = nbformat.read(FAULTS_NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\nname = None"
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_a_name_held_by_a_record_of_a_newer_schema_is_named_by_predict_and_refused_by_the_sweep(
        tmp_path, monkeypatch, capsys):
    """Was: `predict fb` said "no record for 'fb'", and the sweep trained the run named fb again beside it."""
    from runner.records.query import find_path

    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"notebook: {named_notebook(tmp_path / 'named.ipynb')}\nruns: [{{action: ok, name: fb}}]\n",
                    encoding="utf-8")
    assert run(sweep_main, [grid], capsys)[0] == 0
    (record,) = read_all(tmp_path / "logs").records
    path = tmp_path / "logs" / f"{record.run_id}.json"
    original = path.read_text(encoding="utf-8")
    future = json.dumps({**json.loads(original), "schema_version": 99})
    path.write_text(future, encoding="utf-8")
    why = (f"{path}: schema_version: got 99, expected 1 or 2 (written by a newer version of nbsweep: update this "
           f"one to read it)")

    (tmp_path / "x.png").write_bytes(b"")
    code, out = run(predict_main, ["fb", tmp_path / "x.png"], capsys)
    assert code == 2 and "no record" not in out and "Traceback" not in out, out
    assert f"error: run: the record for 'fb', {path.name} in {tmp_path / 'logs'}, exists but cannot be read: " \
           f"{why}" in out

    code, out = run(sweep_main, [grid], capsys)
    assert code == 2 and "Traceback" not in out, out
    assert out.startswith(f"error: {grid}: runs[0]: name: got 'fb', the name of the record {path.name} in "
                          f"{tmp_path / 'logs'}, which this version cannot read ({why}); its run is not known to be "
                          f"done and a second record would share its name"), out
    assert sorted(p.name for p in (tmp_path / "logs").glob("*.json")) == [path.name]  # no second record of fb
    assert path.read_text(encoding="utf-8") == future  # left as it was
    assert [p.name for p in (tmp_path / "experiments").iterdir()] == [record.run_id]  # nothing ran

    path.write_text(original, encoding="utf-8")  # read by a version that knows its schema: found, and done
    assert find_path("fb", tmp_path / "logs")[1].run_id == record.run_id
    code, out = run(sweep_main, [grid], capsys)
    assert code == 0 and "0 completed, 1 skipped" in out, out
