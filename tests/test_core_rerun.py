"""`nbsweep rerun` (`runner.core.rerun`): a recorded run executed again, linked to the original, with what
changed before and how far its figures moved after.

The runs use a copy of the fault notebook (no TensorFlow, about a second each) that also writes a
`predictions.csv`: deterministic unless its `noise` parameter is set (then an unseeded draw moves
every probability, so two executions differ).
"""

import shutil
import subprocess
import sys

import nbformat
import pytest

from helpers import FAULTS_NOTEBOOK, sweep_main
from runner import PROJECT_ROOT, cli
from runner.records import write_record
from runner.records.query import read_all

PREDICTIONS_CELL = '''
import csv, os, random
from models.names import PREDICTIONS_FILE
jitter = random.Random().random() * noise  # unseeded: with noise > 0 no two executions agree
with open(os.path.join(output_dir, PREDICTIONS_FILE), "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["path", "true_label", "predicted_label", "confidence", "prob_a", "prob_b"])
    for i in range(6):
        p = min(1.0, score * (i + 1) / 6 + jitter)
        writer.writerow([f"img_{i}.png", "a" if i % 2 else "b", "a" if p >= 0.5 else "b", max(p, 1 - p), p, 1 - p])
'''


def write_notebook(path):
    """The fault notebook plus a `noise` parameter and a cell writing the test split's predictions."""
    nb = nbformat.read(FAULTS_NOTEBOOK, as_version=4)
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source += "\nnoise = 0.0"
    nb.cells.append(nbformat.v4.new_code_cell(PREDICTIONS_CELL))
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def run(command: str, *args: str, capsys) -> tuple[int, str]:
    """`nbsweep <command> args` in this process: (exit code, stdout + stderr)."""
    code = cli.run_command(command, list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def swept(tmp_path, monkeypatch, capsys):
    """A finished 2-run sweep of the predictions notebook in `tmp_path`: {noise: record}."""
    monkeypatch.chdir(tmp_path)
    notebook = write_notebook(tmp_path / "notebooks" / "predictions.ipynb")
    (tmp_path / "grid.yaml").write_text(f"notebook: {notebook}\nruns: [{{score: 0.75}}, {{score: 0.5, noise: 0.2}}]\n",
                                        encoding="utf-8")
    assert sweep_main(["grid.yaml"]) == 0
    capsys.readouterr()
    return {rec.params["noise"]: rec for rec in read_all(tmp_path / "logs").records}


@pytest.mark.slow  # real papermill executions
def test_rerun_of_a_deterministic_run_reports_zero_difference_and_is_linked(swept, tmp_path, capsys):
    original = swept[0.0]
    assert original.code is not None and "models/contract.py" in original.code.files
    assert original.code.notebook == str(tmp_path / "notebooks" / "predictions.ipynb")

    code, out = run("rerun", original.run_id, "--expect-identical", capsys=capsys)
    assert code == 0, out
    assert "nothing changed since the original ran" in out
    assert "config_hash: the same as the original's" in out
    assert "max |probability difference| = 0 (over 6 test images x 2 classes)" in out
    for split in ("val", "test"):
        assert f"{split}_weighted_recall" in out
    assert "identical: yes" in out

    records = read_all(tmp_path / "logs").records
    (rerun,) = [rec for rec in records if rec.rerun_of == original.run_id]
    assert rerun.run_id != original.run_id and rerun.status == "completed"
    assert rerun.params == original.params and rerun.config_hash == original.config_hash  # executed, not skipped
    assert rerun.metrics == original.metrics and rerun.val_metrics == original.val_metrics
    board = (tmp_path / "leaderboard.html").read_text(encoding="utf-8")
    assert f"rerun of <a href=\"#run-{original.run_id}\">{original.run_id}</a>" in board
    lineage = (tmp_path / "lineage.html").read_text(encoding="utf-8")
    assert f"(rerun of <a href=\"#run-{original.run_id}\">{original.run_id}</a>)" in lineage

    # the same through the sweep script's option, with the grid naming the folders
    code, out = run("sweep", "grid.yaml", "--rerun", original.run_id, "--expect-identical", capsys=capsys)
    assert code == 0 and "identical: yes" in out, out
    assert len([rec for rec in read_all(tmp_path / "logs").records if rec.rerun_of == original.run_id]) == 2


@pytest.mark.slow  # real papermill executions
def test_expect_identical_exits_1_when_the_probabilities_move(swept, tmp_path, capsys):
    noisy = swept[0.2]
    code, out = run("rerun", noisy.run_id, "--expect-identical", capsys=capsys)
    assert code == 1, out
    assert "identical: no" in out and "--expect-identical: the rerun differs from the original" in out
    line = next(line for line in out.splitlines() if line.startswith("test predictions: max |probability difference|"))
    assert float(line.split("= ")[1].split(" ")[0]) > 0
    code, out = run("rerun", noisy.run_id, capsys=capsys)  # without the flag a completed rerun is a success
    assert code == 0 and "identical: no" in out, out


@pytest.mark.slow  # real papermill executions
def test_an_old_record_without_code_hashes_says_unknown_and_bad_references_exit_2(swept, tmp_path, capsys):
    original = swept[0.0]
    old = original.model_copy(update={"code": None, "environment": {}})
    write_record(old, tmp_path / "logs")
    code, out = run("rerun", original.run_id, "--dry-run", "--notebook", "notebooks/predictions.ipynb", capsys=capsys)
    assert code == 0, out
    assert "notebook and models/ code: unknown: the original record has no code hashes" in out
    assert "package versions: unknown" in out and "dry run: nothing executed" in out
    assert len(read_all(tmp_path / "logs").records) == 2  # nothing ran

    code, out = run("rerun", "no-such-run", capsys=capsys)
    assert code == 2 and "error: run: no record for 'no-such-run'" in out, out
    with pytest.raises(SystemExit) as exit_info:
        cli.run_command("sweep", ["--rerun", original.run_id, "--workers", "2"])
    assert exit_info.value.code == 2
    assert "--workers cannot be used with --rerun" in capsys.readouterr().err


@pytest.mark.slow  # real papermill executions
def test_a_rerun_after_editing_models_code_names_the_file(tmp_path):
    """In a copy of the project: a code edit in models/heads.py is named (a docstring edit elsewhere is not)."""
    project = tmp_path / "project"
    for folder in ("runner", "models"):
        shutil.copytree(PROJECT_ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    write_notebook(project / "notebooks" / "predictions.ipynb")
    (project / "grid.yaml").write_text("notebook: notebooks/predictions.ipynb\nruns: [{score: 0.75}]\n",
                                       encoding="utf-8")
    env = {**__import__("os").environ, "PYTHONPATH": str(project)}

    def script(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "runner/sweep.py", *args], cwd=project, capture_output=True,
                              text=True, timeout=300, env=env)

    assert script("grid.yaml").returncode == 0
    (original,) = read_all(project / "logs").records
    with open(project / "models" / "heads.py", "a", encoding="utf-8") as handle:
        handle.write("\nHEADS_EDITED = True  # code the kernel runs\n")
    spec = project / "models" / "spec.py"
    spec.write_text(spec.read_text(encoding="utf-8").replace('"""', '"""A docstring edited. ', 1), encoding="utf-8")

    proc = script("--rerun", original.run_id, "--expect-identical")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the edit changes no figure
    assert "changed since the original ran (1):\n  - models/heads.py: code changed" in proc.stdout
    assert "models/spec.py" not in proc.stdout
    assert "config_hash: differs from the original's" in proc.stdout
    assert "identical: yes" in proc.stdout
    rerun = next(rec for rec in read_all(project / "logs").records if rec.rerun_of == original.run_id)
    assert rerun.code.files["models/heads.py"] != original.code.files["models/heads.py"]
    assert rerun.config_hash != original.config_hash


def test_changes_since_names_package_versions_data_manifest_weights_and_each_code_file(tmp_path):
    """Without running anything: a record whose recorded facts differ from today's in every part."""
    from helpers import make_image_folder
    from models import ExperimentSpec, load_data
    from models.hashing import sha256_file
    from runner.core.rerun import changes_since
    from runner.grid import code_hashes
    from runner.records import DataSection, ModelSection, RunRecord, WarmStartSection, package_version

    data = make_image_folder(tmp_path / "images", n_per_class=6)
    params = {"data_dir": str(data), "seed": 0, "val_fraction": 0.25, "test_fraction": 0.25}
    manifest = load_data(ExperimentSpec(**params)).manifest_hash
    code = code_hashes(FAULTS_NOTEBOOK)
    files = dict(code["files"])
    files["models/heads.py"] = "0" * 64  # as if the file had other code then
    files["models/gone.py"] = "1" * 64  # a file the kernel imported then
    weights = tmp_path / "base.weights.h5"
    weights.write_bytes(b"weights as they are now")
    parent = tmp_path / "experiments" / "parent" / "model.keras"
    parent.parent.mkdir(parents=True)
    parent.write_bytes(b"the parent's model")
    record = RunRecord(
        run_id="20261121-120000-aaaaaaaa", config_hash="ab" * 32, status="completed", started_at="s", finished_at="f",
        params=params, code={**code, "files": files},
        environment={"packages": {"numpy": "0.0.1", "pandas": package_version("pandas")}},
        data=DataSection(dir=str(data), class_names=["blue", "green", "red"], manifest_hash=manifest),
        model=ModelSection(base="simple_cnn_small", weights_path=str(weights), weights_sha256="2" * 64),
        warm_start=WarmStartSection(parent_run_id="parent", weights_path="../experiments/parent/model.keras",
                                    weights_sha256=sha256_file(parent)))
    changes, unknown = changes_since(record, tmp_path / "logs", FAULTS_NOTEBOOK)
    assert unknown == []
    assert changes == [
        "models/gone.py: file removed (or no longer imported)",
        "models/heads.py: code changed",
        f"package numpy: 0.0.1 -> {package_version('numpy')}",
        f"weights file {weights}: content changed (sha256 differs from the record's)",
    ]
    (data / "red" / "red_000.jpg").unlink()  # the split's files change; the parent's weights go
    parent.unlink()
    changes, _ = changes_since(record, tmp_path / "logs", FAULTS_NOTEBOOK)
    assert any(line.startswith(f"data {data}: the split's manifest changed") for line in changes), changes
    assert f"warm-start weights of parent {parent}: missing now" in changes


@pytest.mark.slow  # a real papermill execution
def test_a_rerun_of_another_logs_folder_regenerates_the_leaderboard_beside_it(swept, tmp_path, capsys):
    """`nbsweep rerun X --logs-dir other/logs` ranks other/logs on other/leaderboard.html, never this project's
    ./leaderboard.html."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tmp_path / "logs", other / "logs")
    shutil.copytree(tmp_path / "experiments", other / "experiments")
    here = (tmp_path / "leaderboard.html").read_bytes()
    original = swept[0.0]
    code, out = run("rerun", original.run_id, "--logs-dir", str(other / "logs"), capsys=capsys)
    assert code == 0, out
    assert (tmp_path / "leaderboard.html").read_bytes() == here
    assert f"rerun of <a href=\"#run-{original.run_id}\">" in (other / "leaderboard.html").read_text(encoding="utf-8")
