"""Every bad input is refused before anything runs (`runner.grid` validation, then `runner.core.preflight`):
exit code 2, a message naming file, key, value and fix, and nothing created.

`tests/bad_inputs/` holds one grid file per case. A case's leading comment
lines say what it needs and expects:

    # setup: NAME ...      fixtures to build first (`SETUPS` below)
    # args: --dry-run      extra command-line arguments
    # exit: 0              expected exit code (default 2)
    # expect: TEXT         a fragment of stderr + stdout (one line each, any number)
    # skip-root: REASON    skip the case when the tests run as root

`{tiny}` (a 3-class image folder), `{tmp}` (the case's working folder) and
`{assets}` (`tests/assets`) are replaced by absolute paths in the grid and in
the expectations. `test_bad_input` runs the command line (`runner.cli.main`) in-process in
`{tmp}`. The tests below it cover what a grid file cannot express (a missing
grid file, CLI usage, what the pre-flight check must not pay for, and one
real papermill run with markup, quotes and unicode in its folder and class
names). What `load_data` itself does with the same corrupt files is in
test_data.py. The grid-file and CLI tests stay here rather than in
test_grid.py because they go through the same `sweep_main` entry point and
"nothing created" check as the corpus.
"""

from __future__ import annotations

import html
import json
import os
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from PIL import Image

import models.bases
from models import ExperimentSpec
from runner import PROJECT_ROOT
from runner.core import preflight
from runner.grid import expand_runs, load_grid
from helpers import predict_main
from runner.records.query import find_path, read_all
from runner.records import DataSection, RunLoadError, write_record
from helpers import sweep_main

from helpers import check_split_metrics, make_image_folder, write_corrupt_files

CASES_DIR = Path(__file__).parent / "bad_inputs"
ASSETS = Path(__file__).parent / "assets"
CASES = sorted(CASES_DIR.glob("*.yaml"))


@dataclass
class Case:
    """One corpus file: its grid text and what it expects."""

    path: Path
    text: str
    setups: list[str] = field(default_factory=list)
    args: str = ""
    exit: int = 2
    expects: list[str] = field(default_factory=list)
    skip_root: str = ""


def read_case(path: Path) -> Case:
    text = path.read_text(encoding="utf-8")
    case = Case(path, text)
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        key, _, value = line[1:].strip().partition(": ")
        if key == "setup":
            case.setups += value.split()
        elif key == "args":
            case.args = value
        elif key == "exit":
            case.exit = int(value)
        elif key == "expect":
            case.expects.append(value)
        elif key == "skip-root":
            case.skip_root = value
    return case


# Fixtures a case can ask for (`# setup: NAME`), built in its working folder.

def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def setup_offline(tmp_path, monkeypatch, request):
    """No network (the check connects to a closed local port), an empty Keras cache, no weights folder."""
    monkeypatch.setattr(preflight, "NETWORK_PROBE_ADDRESS", ("127.0.0.1", _closed_port()))
    (tmp_path / "keras_home").mkdir()
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("NBSWEEP_WEIGHTS_DIR", raising=False)


def setup_keras_cache(tmp_path, monkeypatch, request):
    models_dir = tmp_path / "keras_home" / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5").write_bytes(b"cached")


def setup_weights_dir(tmp_path, monkeypatch, request):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "mobilenet_v2_0.35_imagenet_notop.weights.h5").write_bytes(b"offline")


def setup_small_cnn_weights(tmp_path, monkeypatch, request):
    """Real weights of simple_cnn_small: the wrong file for any other base."""
    base, _ = models.bases.build_base(ExperimentSpec(base="simple_cnn_small", weights=None, image_size=32))
    base.save_weights(tmp_path / "simple_cnn_small.weights.h5")


def setup_a_file(tmp_path, monkeypatch, request):
    (tmp_path / "a_file").write_text("a file where a folder is expected")


def setup_symlink_loop(tmp_path, monkeypatch, request):
    (tmp_path / "loop").symlink_to("loop")


def setup_flat(tmp_path, monkeypatch, request):
    (tmp_path / "flat" / "empty_class").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(tmp_path / "flat" / "loose.png")


def setup_one_class(tmp_path, monkeypatch, request):
    make_image_folder(tmp_path / "one_class", 12, ("only",))


def setup_small_class(tmp_path, monkeypatch, request):
    make_image_folder(tmp_path / "small_class", 12, ("big",))
    make_image_folder(tmp_path / "small_class", 2, ("tiny",))


def setup_corrupt(tmp_path, monkeypatch, request):
    write_corrupt_files(make_image_folder(tmp_path / "corrupt", 8))


def setup_broken_class(tmp_path, monkeypatch, request):
    make_image_folder(tmp_path / "broken_class", 8, ("a",))
    (tmp_path / "broken_class" / "b").mkdir()
    for i in range(6):
        (tmp_path / "broken_class" / "b" / f"b_{i}.jpg").write_text("not a jpeg")


def setup_unreadable(tmp_path, monkeypatch, request):
    folder = make_image_folder(tmp_path / "unreadable", 8) / "green"
    folder.chmod(0)
    request.addfinalizer(lambda: folder.chmod(0o755))


PARENT, FAILED_RUN, OTHER_CLASSES = ("20260101-000000-aaaaaaaa", "20260101-000000-bbbbbbbb",
                                     "20260101-000000-cccccccc")


def setup_records(tmp_path, monkeypatch, request):
    """Synthetic records in `{tmp}/logs`: a completed parent, a failed run, a run with other classes."""
    from helpers import _make_record

    arch = dict(base="simple_cnn_small", base_kwargs={}, head="gap", dense_units=[16], image_size=32)
    for run_id, recall, classes in ((PARENT, 0.9, ["blue", "green", "red"]), (FAILED_RUN, None, None),
                                    (OTHER_CLASSES, 0.8, ["cat", "dog"])):
        record = _make_record(run_id, recall, **arch)
        if classes:
            record.data = DataSection(dir=str(tmp_path / "data"), class_names=classes, manifest_hash="0" * 64)
        write_record(record, tmp_path / "logs")


SETUPS = {name.removeprefix("setup_"): value for name, value in globals().items() if name.startswith("setup_")}


def snapshot(root: Path) -> set[str]:
    return {str(Path(folder, name).relative_to(root)) for folder, dirs, files in os.walk(root)
            for name in dirs + files}


def test_the_corpus_is_big_and_well_formed():
    cases = [read_case(path) for path in CASES]
    assert len(cases) >= 40
    for case in cases:
        assert case.expects, f"{case.path.name}: no '# expect:' line"
        assert set(case.setups) <= set(SETUPS), f"{case.path.name}: unknown setup {case.setups}"


@pytest.mark.parametrize("case_path", CASES, ids=lambda path: path.stem)
def test_bad_input(case_path, tmp_path, monkeypatch, capsys, request, tiny_image_dir):
    case = read_case(case_path)
    if case.skip_root and os.geteuid() == 0:
        pytest.skip(case.skip_root)
    monkeypatch.chdir(tmp_path)
    for name in case.setups:
        SETUPS[name](tmp_path, monkeypatch, request)

    def fill(text: str) -> str:
        return (text.replace("{tiny}", str(tiny_image_dir)).replace("{tmp}", str(tmp_path))
                .replace("{assets}", str(ASSETS)))

    grid = tmp_path / case_path.name
    grid.write_text(fill(case.text), encoding="utf-8")
    before = snapshot(tmp_path)

    code = sweep_main([grid.name, *shlex.split(fill(case.args))])

    captured = capsys.readouterr()
    output = captured.err + captured.out
    assert code == case.exit, output
    for fragment in map(fill, case.expects):
        assert fragment in output, f"missing {fragment!r} in:\n{output}"
    assert "Traceback" not in output
    if case.exit == 2:  # the grid file is named (notebook errors name the notebook file instead)
        assert output.startswith((f"error: {grid.name}: ", "error: notebook: ")), output
    # Nothing was created: no run folder, no record, no leaderboard.
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "experiments").exists()
    assert not list(tmp_path.glob("logs/*.json")) or case.setups == ["records"]


# What a grid file cannot express ----------------------------------------------------------------


def test_missing_grid_file_and_bad_option_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert sweep_main(["nope.yaml"]) == 2
    assert "error: nope.yaml: cannot read grid file (No such file or directory)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        sweep_main(["grid.yaml", "--no-such-option"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unreadable_grid_file_exits_2(tmp_path, monkeypatch, capsys):
    if os.geteuid() == 0:
        pytest.skip("root reads any file whatever its permissions")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid.yaml").write_text("fixed: {epochs: 1}\n")
    (tmp_path / "grid.yaml").chmod(0)
    assert sweep_main(["grid.yaml"]) == 2
    assert "grid.yaml: cannot read grid file (Permission denied)" in capsys.readouterr().err


def test_simple_cnn_sweep_preflight_builds_no_model_and_opens_no_connection(tmp_path, monkeypatch,
                                                                             tiny_image_dir):
    def forbidden(*args, **kwargs):
        raise AssertionError("a sweep of simple CNNs must not pay for this")

    monkeypatch.setattr(models.bases, "build_base", forbidden)
    monkeypatch.setattr(models.bases, "keras_imagenet_file", forbidden)
    monkeypatch.setattr(preflight, "network_problem", forbidden)
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"data_dir: {tiny_image_dir}\nfixed: {{weights: null, image_size: 32}}\n"
                    "grid: {base: [simple_cnn_small, simple_cnn_medium], head: [gap, flatten], "
                    "dropout: [0.1, 0.2, 0.3, 0.4, 0.5]}\n")
    spec = load_grid(grid)
    runs, _ = expand_runs(spec, grid, base_dir=tmp_path)
    monkeypatch.chdir(tmp_path)
    assert preflight.check_runs(spec, runs, grid) == []  # its time: bench/preflight_bench.py
    assert list(tmp_path.iterdir()) == [grid]


def test_a_weights_file_is_checked_once_per_base_and_file(tmp_path, monkeypatch, tiny_image_dir):
    setup_small_cnn_weights(tmp_path, monkeypatch, None)
    calls = []
    real = preflight._weights_file_problem
    monkeypatch.setattr(preflight, "_weights_file_problem", lambda *a: calls.append(a) or real(*a))
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"data_dir: {tiny_image_dir}\nfixed: {{base: simple_cnn_small, image_size: 32, "
                    f"weights: {tmp_path / 'simple_cnn_small.weights.h5'}}}\n"
                    "grid: {head: [gap, flatten], dropout: [0.1, 0.2]}\n")
    spec = load_grid(grid)
    runs, _ = expand_runs(spec, grid, base_dir=tmp_path)
    monkeypatch.chdir(tmp_path)
    assert preflight.check_runs(spec, runs, grid) == []
    assert len(runs) == 4 and len(calls) == 1


def test_imagenet_file_names_are_asked_of_keras_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    for base, kwargs, size, name in (
            ("mobilenet_v2", {"alpha": 0.35}, 96, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"),
            ("efficientnet_b0", {}, 32, "efficientnetb0_notop.h5")):  # named after Keras's model name
        spec = ExperimentSpec(base=base, base_kwargs=kwargs, image_size=size, weights="imagenet")
        wanted = models.bases.keras_imagenet_file(spec, models.bases.resolve_base(base))
        assert wanted.name == name and wanted.url.endswith("/" + name)
        assert wanted.cache_paths[0] == tmp_path / "models" / name and wanted.cached_path is None
    assert list(tmp_path.iterdir()) == []


def test_run_references_with_path_parts_are_refused(tmp_path):
    (tmp_path / "logs").mkdir()
    for ref in ("../logs/x", "..\\x", "a/../../b", ".hidden"):
        with pytest.raises(RunLoadError, match="expected a run id"):
            find_path(ref, tmp_path / "logs")
    for ref in ("../x", "a\\b", "x..y", ""):
        with pytest.raises(ValueError, match="expected a run id, a unique prefix of one, 'best' or null"):
            ExperimentSpec(warm_start=ref)


# One real run: markup, quotes, spaces and unicode in the folder and class names --------------------

SPECIAL_CLASSES = ("a b", "café", "x&y", "<i>")


@pytest.fixture(scope="module")
def markup_run(tmp_path_factory):
    """A 1-epoch simple_cnn_small run at 32 px on a folder named with markup and quotes.

    The class folders are named with a space, an accent and html characters;
    one truncated JPEG and one text file sit among the images. A synthetic
    record with another `data_dir` is written first, so the leaderboard shows
    `data_dir` as a differing parameter.
    """
    from helpers import _make_record

    work = tmp_path_factory.mktemp("markup")
    data_dir = work / "run <script>alert('x')&\"q\""
    make_image_folder(data_dir, 8, SPECIAL_CLASSES)
    jpeg = next((data_dir / "café").glob("*.jpg")).read_bytes()
    (data_dir / "café" / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (data_dir / "a b" / "notes.txt").write_text("not an image")
    write_record(_make_record("20200101-000000-00000000", 0.25, base="simple_cnn_small",
                              data_dir="elsewhere"), work / "logs")
    grid = {"data_dir": str(data_dir),
            "fixed": {"base": "simple_cnn_small", "weights": None, "image_size": 32, "epochs": 1,
                      "batch_size": 8, "dense_units": [8], "val_fraction": 0.25, "test_fraction": 0.25,
                      "early_stopping_patience": None}}
    (work / "grid.yaml").write_text(yaml.safe_dump(grid, allow_unicode=True), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "runner" / "sweep.py"), "grid.yaml"],
                          cwd=work, capture_output=True, text=True, timeout=600)
    found = read_all(work / "logs")
    return work, data_dir, proc, next(r for r in found.records if r.run_id != "20200101-000000-00000000")


@pytest.mark.slow
def test_markup_and_unicode_reach_the_notebook_intact(markup_run):
    work, data_dir, proc, record = markup_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "file(s) in class folders will be skipped" in proc.stderr
    assert record.params["data_dir"] == str(data_dir)
    assert record.status == "completed"
    assert record.data.dir == str(data_dir)  # as the kernel saw it
    assert record.data.class_names == sorted(SPECIAL_CLASSES)
    assert set(record.data.skipped_files) == {"a b/notes.txt", "café/broken.jpg"}
    assert record.data.skipped_files["café/broken.jpg"].startswith("corrupt or truncated image")
    # every usable image is in one split: 8 per class, the broken JPEG and the text file left out
    assert {c: sum(record.data.counts[s][c] for s in ("train", "val", "test")) for c in SPECIAL_CLASSES} == \
        dict.fromkeys(SPECIAL_CLASSES, 8)
    check_split_metrics(record, work / "logs", "test")  # the figures, recomputed from the predictions files
    check_split_metrics(record, work / "logs", "val")
    notebook = json.loads((work / "experiments" / record.run_id / f"{record.run_id}.ipynb").read_text())
    injected = next(cell for cell in notebook["cells"]
                    if "injected-parameters" in cell["metadata"].get("tags", []))
    namespace: dict = {}
    exec("".join(injected["source"]), namespace)  # noqa: S102 - papermill's own generated cell
    assert namespace["data_dir"] == str(data_dir)


@pytest.mark.slow
def test_markup_is_escaped_in_the_leaderboard_and_the_report(markup_run):
    work, data_dir, _, record = markup_run
    board = (work / "leaderboard.html").read_text(encoding="utf-8")
    assert html.escape(str(data_dir)) in board
    assert "<script>alert" not in board
    lineage = (work / "lineage.html").read_text(encoding="utf-8")
    assert "<script>" not in lineage
    report = (work / "experiments" / record.run_id / f"{record.run_id}.html").read_text(encoding="utf-8")
    assert "<script>alert" not in report
    for name in SPECIAL_CLASSES:
        assert html.escape(name) in report, name
    assert "<td>x&y</td>" not in report and ">&lt;i&gt;<" in report


@pytest.mark.slow
def test_evaluation_names_and_run_ids_with_path_parts_are_refused(markup_run, capsys):
    work, data_dir, _, record = markup_run
    logs = str(work / "logs")
    assert predict_main([record.run_id, "--logs-dir", logs, "--evaluate", str(data_dir),
                         "--name", "../escaped"]) == 2
    assert "--name: got '../escaped', expected letters, digits" in capsys.readouterr().err
    assert predict_main(["../logs/" + record.run_id, str(data_dir), "--logs-dir", logs]) == 2
    assert "expected a run id" in capsys.readouterr().err
    assert not (work / "experiments" / "escaped.json").exists()
    assert not (work / "experiments" / record.run_id / "evaluations").exists()


def test_run_names_are_unique_and_may_be_warm_started_from_in_the_same_sweep(tmp_path, monkeypatch):
    """A `name` another configuration has (in the logs or in the sweep) is refused before anything runs;
    a later run of the sweep may name an earlier one as its warm start (resolved when it starts)."""
    from runner.errors import ConfigError
    from runner.grid import expand_runs, load_grid
    from runner.core.preflight import check_runs
    from runner.records import COMPLETED, RunRecord, write_record

    monkeypatch.chdir(tmp_path)
    write_record(RunRecord(run_id="20260101-000000-aaaaaaaa", config_hash="a" * 64, status=COMPLETED,
                           started_at="t", finished_at="t", params={}, name="exp_001"), tmp_path / "logs")
    grid_path = tmp_path / "grid.yaml"

    def check(runs: str):
        grid_path.write_text("fixed: {weights: null, base: simple_cnn_small, image_size: 32}\nruns:\n" + runs,
                             encoding="utf-8")
        spec = load_grid(grid_path)
        expanded, _ = expand_runs(spec, grid_path, base_dir=tmp_path)
        return check_runs(spec, expanded, grid_path)

    with pytest.raises(ConfigError, match=r"got 'exp_001', already the name of run 20260101-000000-aaaaaaaa"):
        check("  - {name: exp_001}\n")
    with pytest.raises(ConfigError, match=r"got 'twin' for 2 different runs"):
        check("  - {name: twin, dropout: 0.1}\n  - {name: twin, dropout: 0.2}\n")
    check("  - {name: exp_010}\n  - {name: exp_011, warm_start: exp_010, warm_start_checkpoint: 1}\n")
    with pytest.raises(ConfigError, match=r"warm_start: got 'exp_099'"):
        check("  - {name: exp_011, warm_start: exp_099}\n")
