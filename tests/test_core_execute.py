"""Executing one run (`runner.core.execute`): its steps, and the faults a run must survive.

The steps that need no kernel (run ids and folders, the output cap, the html
export, the output check, a warm start that cannot be resolved) are tested
directly. The faults use `tests/assets/faults.ipynb`, a real notebook executed
by real papermill kernels that raises, exits, kills its own kernel or sleeps on
demand (no TensorFlow, so each run takes about a second); those tests are slow.
"""

import json
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import pytest

from runner.core.execute import (
    MAX_OUTPUT_BYTES, RunFolder, cap_outputs, check_outputs, execute_run, export_html, is_run_id, make_run_id,
    orphan_run_folders, prepare_run,
)
from runner.grid import RunSpec
from runner.core.warm_start import warm_start_for
from runner.records.query import read_all
from runner.records import (
    COMPLETED, FAILED, RANKING_METRICS, REQUIRED_FILES, RUN_FILES, TIMEOUT, RunError, SplitMetrics,
)
from helpers import sweep_main

from helpers import FAULTS_NOTEBOOK, kernels_running_in, write_faults_grid


def by_action(work: Path) -> dict:
    found = read_all(work / "logs")
    assert found.unreadable == {}
    return {(r.params["action"], r.params["score"]): r for r in found.records}


# The steps that need no kernel ------------------------------------------------------------------


def test_run_ids_sort_by_time_carry_the_hash_and_never_reuse_a_folder(tmp_path):
    now = datetime(2026, 11, 21, 12, 3, 4, tzinfo=timezone.utc)
    assert make_run_id("0123456789abcdef" * 4, tmp_path, now) == "20261121-120304-01234567"
    (tmp_path / "20261121-120304-01234567").mkdir()
    (tmp_path / "20261121-120304-01234567-2").mkdir()
    assert make_run_id("0123456789abcdef" * 4, tmp_path, now) == "20261121-120304-01234567-3"

    folder = prepare_run("fedcba98" * 8, tmp_path)
    assert folder.run_dir == tmp_path / folder.run_id and list(folder.run_dir.iterdir()) == []
    assert folder.run_id.endswith("-fedcba98") and folder.started.tzinfo is timezone.utc
    assert folder.notebook_path == folder.run_dir / f"{folder.run_id}.ipynb"
    files = folder.files()
    assert set(files) == set(RUN_FILES)
    assert files["html"] == folder.run_dir / f"{folder.run_id}.html"
    assert files["model"] == folder.run_dir / "model.keras"


def test_orphan_run_folders_are_the_run_folders_without_a_record(tmp_path):
    for name in ("20261121-120304-01234567", "20261121-120305-89abcdef-2", "20261121-120306-aaaaaaaa",
                 "not-a-run", "20261121-120307-0123"):
        (tmp_path / name).mkdir()
    (tmp_path / "20261121-120308-bbbbbbbb").write_text("a file, not a folder")
    assert orphan_run_folders(tmp_path, {"20261121-120306-aaaaaaaa"}) == [
        tmp_path / "20261121-120304-01234567", tmp_path / "20261121-120305-89abcdef-2"]
    assert orphan_run_folders(tmp_path / "missing", set()) == []


@pytest.mark.parametrize("name, expected", [
    ("20261121-120304-01234567", True), ("20261121-120304-01234567-12", True),
    ("20261321-120304-01234567", False),  # month 13
    ("20261121-120304-0123456", False), ("20261121-120304-0123456G", False), ("20261121-120304-01234567-x", False),
    ("20261121-120304-01234567-", False), ("x20261121-120304-01234567", False), ("", False)])
def test_a_run_id_is_recognised_by_the_format_that_writes_it(name, expected):
    assert is_run_id(name) is expected
    now = datetime(2026, 11, 21, 12, 3, 4, tzinfo=timezone.utc)
    assert is_run_id(make_run_id("ab" * 32, Path("/nonexistent"), now))


def _notebook_with_outputs(path: Path, texts: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]})]
    for i, text in enumerate(texts):
        cell = nbformat.v4.new_code_cell(f"print(cell_{i})")
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


def test_cap_outputs_keeps_the_start_of_the_stream_output_up_to_the_cap(tmp_path):
    path = _notebook_with_outputs(tmp_path / "big.ipynb", ["a" * 3000, "b" * 3000, "c" * 3000])
    warning = cap_outputs(path, max_bytes=4000)
    assert warning == "notebook stream output over 4000 bytes: 5000 bytes cut from the saved notebook"
    texts = [cell.outputs[0]["text"] for cell in nbformat.read(path, as_version=4).cells[1:]]
    assert texts[0] == "a" * 3000  # under the cap so far: untouched
    assert texts[1].startswith("b" * 1000 + "\n[nbsweep: 2000 bytes of output cut: over the 4000 byte cap]")
    assert texts[2].startswith("\n[nbsweep: 3000 bytes of output cut")
    small = _notebook_with_outputs(tmp_path / "small.ipynb", ["a" * 10])
    before = small.read_bytes()
    assert cap_outputs(small) is None and small.read_bytes() == before
    assert MAX_OUTPUT_BYTES == 10 * 2**20


def test_export_html_leaves_out_the_parameters_cell_and_writes_beside_the_notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("default_only_here = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("injected_value = 2", metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_markdown_cell("## Evaluation & results")]
    nbformat.write(nb, tmp_path / "run.ipynb")
    page_path = export_html(tmp_path / "run.ipynb")
    assert page_path == tmp_path / "run.html"
    page = page_path.read_text(encoding="utf-8")
    assert "default_only_here" not in page and "injected_value" in page
    assert ">Evaluation &amp; results<a class=\"anchor-link\"" in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.html", "run.ipynb"]  # no temporary file left


def test_check_outputs_fails_a_finished_run_that_misses_a_required_file(tmp_path):
    folder = RunFolder("20261121-120304-01234567", tmp_path, datetime.now(timezone.utc))
    files = folder.files()
    assert REQUIRED_FILES == ("notebook", "html", "result")
    status, error = check_outputs(files, COMPLETED, None)
    assert status == FAILED and error.ename == "MissingOutput"
    assert error.evalue == ("the run finished but these files are missing: notebook (20261121-120304-01234567.ipynb), "
                            "html (20261121-120304-01234567.html), result (result.json)")
    for key in ("notebook", "html"):
        files[key].write_text("{}")
    status, error = check_outputs(files, COMPLETED, None)
    assert (status, error.evalue) == (FAILED, "the run finished but these files are missing: result (result.json)")
    files["result"].write_text("{}")
    assert check_outputs(files, COMPLETED, None) == (COMPLETED, None)
    failed = RunError(ename="ValueError", evalue="boom")
    assert check_outputs(folder.files(), FAILED, failed) == (FAILED, failed)  # a failure stays as it was


def test_a_warm_start_that_cannot_be_resolved_fails_the_run_before_any_kernel(tmp_path):
    run = RunSpec(index=0, params={"action": "ok", "warm_start": "nope"}, config_hash="ab" * 32, origin="runs[0]")
    warm_start, refusal = warm_start_for(run.params, tmp_path / "logs")
    assert warm_start is None and refusal.startswith("warm_start: got 'nope'")
    record = execute_run(run, FAULTS_NOTEBOOK, tmp_path / "experiments", tmp_path / "logs", refusal=refusal)
    assert record.status == FAILED and record.error.ename == "ConfigError"
    assert record.error.evalue.startswith("warm_start: got 'nope': warm_start: no record for 'nope'")
    assert record.params == run.params and record.parent_run_id is None and record.warm_start is None
    assert record.paths["notebook"] is None and record.paths["html"] is None and record.metrics is None
    assert list((tmp_path / "experiments" / record.run_id).iterdir()) == []  # no notebook ran
    assert [r.run_id for r in read_all(tmp_path / "logs").records] == [record.run_id]


# Faults in a real kernel ------------------------------------------------------------------------


@pytest.mark.slow
def test_faults_are_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = write_faults_grid(tmp_path, "[{action: raise}, {action: memory}, {action: exit}, {action: kill}, "
                                       "{action: sleep, seconds: 30}, {action: ok, score: 0.9}]")
    assert sweep_main([str(grid), "--timeout", "8"]) == 1
    records = by_action(tmp_path)
    assert len(records) == 6
    for rec in records.values():
        assert rec.run_id.endswith(rec.config_hash[:8]) and (rec.status == COMPLETED) == (rec.error is None)
    raised = records["raise", 0.5]
    assert raised.status == FAILED and (raised.error.ename, raised.error.evalue) == ("ValueError", "boom")
    assert 'raise ValueError("boom")' in raised.error.traceback
    assert raised.error.cell_index == 3  # markdown, parameters, papermill's injected parameters, then this cell
    assert raised.metrics is None and raised.val_metrics is None and raised.data is None
    # the executed notebook keeps papermill's error banner, and its html is written
    nb = json.loads(raised.path_of("notebook", tmp_path / "logs").read_text())
    assert any("papermill-error-cell" in json.dumps(cell.get("metadata", {})) or "An Exception was encountered"
               in "".join(cell.get("source", "")) for cell in nb["cells"])
    assert "boom" in raised.path_of("html", tmp_path / "logs").read_text()
    assert (records["memory", 0.5].error.ename, records["memory", 0.5].error.evalue) == (
        "MemoryError", "simulated: out of memory")
    for action in ("exit", "kill"):
        rec = records[action, 0.5]
        assert rec.status == FAILED and rec.error.ename == "DeadKernelError", rec.error
        assert rec.error.evalue.startswith("kernel died"), rec.error
        assert rec.path_of("notebook", tmp_path / "logs").is_file()  # the partial notebook is kept
        assert rec.path_of("html", tmp_path / "logs").is_file()
    slept = records["sleep", 0.5]
    assert slept.status == TIMEOUT and slept.error.evalue == "the run exceeded --timeout 8 s"
    assert 8 <= slept.timings.total_s < 30  # stopped, not left to sleep its 30 s
    ok = records["ok", 0.9]
    assert ok.status == COMPLETED  # after all of that, the last run still ran
    assert ok.metrics == ok.val_metrics == SplitMetrics(**dict.fromkeys(RANKING_METRICS, 0.9))
    assert ok.data.class_names == ["a", "b"] and ok.model.base == "none"
    assert all(ok.paths[key] is not None for key in REQUIRED_FILES)
    page = (tmp_path / "leaderboard.html").read_text()
    assert "Runs that did not complete (5)" in page
    assert kernels_running_in(tmp_path) == []


@pytest.mark.slow
def test_cell_timeout_is_recorded_as_timeout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = write_faults_grid(tmp_path, "[{action: sleep, seconds: 30}]")
    assert sweep_main([str(grid), "--cell-timeout", "3"]) == 1
    (rec,) = by_action(tmp_path).values()
    assert rec.status == TIMEOUT and rec.error.ename == "CellTimeoutError"
    assert rec.timings.total_s < 30
    assert kernels_running_in(tmp_path) == []
