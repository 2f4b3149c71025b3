"""The `nbsweep` command line (`runner/cli.py`) and the `python runner/<script>.py` wrappers."""

import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from runner import PROJECT_ROOT, cli
from runner.records import write_record

COMMANDS = {  # subcommand -> (script, main options its help shows)
    "sweep": ("sweep.py", ["GRID", "--dry-run", "--verbose", "--force", "--retry-failed", "--data-dir",
                           "--weights-dir", "--timeout", "--cell-timeout", "--workers", "--executor",
                           "--scheduler", "--max-runs", "--yes", "grid file keys:"]),
    "leaderboard": ("leaderboard.py", ["--logs-dir", "--out", "--metric", "--top-n"]),
    "predict": ("predict.py", ["RUN", "IMAGE_OR_DIR", "--out", "--evaluate", "--name", "--logs-dir", "--metric"]),
    "ensemble": ("ensemble.py", ["RUN", "--top", "--metric", "--logs-dir", "--experiments-dir", "--leaderboard"]),
    "lineage": ("lineage.py", ["--logs-dir", "--out", "--metric"]),
    "export-mlflow": ("export_mlflow.py", ["--logs-dir", "--tracking-uri", "--experiment-name"]),
}
HEAVY = ("tensorflow", "keras")


def invoke(*args: str):
    return CliRunner().invoke(cli.nbsweep, list(args), prog_name="nbsweep")


def test_help_lists_every_subcommand():
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    for name in COMMANDS:
        assert f"  {name} " in result.output, name


@pytest.mark.parametrize("name", COMMANDS)
def test_subcommand_help_shows_its_options(name):
    result = invoke(name, "--help")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: nbsweep {name} [OPTIONS]")
    for option in COMMANDS[name][1]:
        assert option in result.output, option


def test_export_help_and_its_required_out():
    """`nbsweep export` (no script of its own): its help, and `--out` is required (a usage error, exit 2)."""
    result = invoke("export", "--help")
    assert result.exit_code == 0 and result.output.startswith("Usage: nbsweep export [OPTIONS] RUN")
    for option in ("RUN", "--out", "--logs-dir", "--metric", "standalone Keras file"):
        assert option in result.output, option
    missing = invoke("export", "best")
    assert missing.exit_code == 2 and "Missing option '--out'" in missing.output


@pytest.mark.slow  # starts Python processes
def test_console_script_help_runs_without_tensorflow():
    """The installed `nbsweep` (else `python -m runner`), then every subcommand's help in one process."""
    script = shutil.which("nbsweep")
    command = [script] if script else [sys.executable, "-m", "runner"]
    proc = subprocess.run([*command, "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert all(name in proc.stdout for name in COMMANDS)
    code = ("import sys\nfrom runner import cli\n"
            f"codes = [cli.main([name, '--help']) for name in {list(COMMANDS)!r}]\n"
            f"print(codes, sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"{[0] * len(COMMANDS)} []"


@pytest.mark.slow  # starts Python processes
@pytest.mark.parametrize("name", COMMANDS)
def test_script_help_exits_0_without_tensorflow(name, tmp_path):
    script, options = COMMANDS[name]
    proc = subprocess.run([sys.executable, "-X", "importtime", str(PROJECT_ROOT / "runner" / script), "--help"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"Usage: python runner/{script} [OPTIONS]")
    assert all(option in proc.stdout for option in options)
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & set(HEAVY)


@pytest.mark.slow  # starts Python processes
def test_config_error_exits_2_with_error_and_no_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("sweep", "missing.yaml")
    assert result.exit_code == 2
    assert result.output.startswith("error: missing.yaml: cannot read grid file"), result.output
    assert "Traceback" not in result.output
    assert cli.main(["sweep", "missing.yaml"]) == 2
    assert list(tmp_path.iterdir()) == []
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "runner" / "sweep.py"), "missing.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: missing.yaml: cannot read grid file") and "Traceback" not in proc.stderr


def test_model_config_error_exits_2_too(tmp_path, monkeypatch):
    import runner.grid
    from models.errors import ModelConfigError

    def refuse(*args, **kwargs):
        raise ModelConfigError("base: got 'vgg17', expected one of ...")

    monkeypatch.setattr(runner.grid, "load_grid", refuse)
    result = invoke("sweep", str(tmp_path / "grid.yaml"))
    assert result.exit_code == 2
    assert result.output == "error: base: got 'vgg17', expected one of ...\n"


@pytest.mark.parametrize("args, message", [
    (["sweep", "grid.yaml", "--force", "--retry-failed"], "--force and --retry-failed cannot be used together"),
    (["sweep", "grid.yaml", "--executor", "dask"], "--executor dask needs --scheduler"),
    (["sweep", "grid.yaml", "--scheduler", "tcp://127.0.0.1:1"], "--scheduler needs --executor dask"),
    (["sweep", "grid.yaml", "--workers", "0"], "Invalid value for '--workers': 0 is not in the range x>=1."),
    (["sweep", "grid.yaml", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["sweep"], "Missing argument 'GRID'"),
    (["predict", "best"], "give image paths to predict, or --evaluate LABELLED_DIR"),
    (["ensemble"], "give either member runs or --top N"),
    (["ensemble", "a", "b", "--top", "2"], "give either member runs or --top N"),
])
def test_usage_errors_exit_2(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert cli.main(args) == 2  # cli.main returns the code ...
    assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # ... a script's main exits, as argparse did
        cli.run_command(args[0], args[1:])
    assert exit_info.value.code == 2
    assert list(tmp_path.iterdir()) == []


def test_a_warning_is_printed_as_one_line_while_a_command_runs(tmp_path, monkeypatch):
    """A library's `warnings.warn` reads `warning: <message>` (no source line); the hook ends with the command."""
    import types
    import warnings

    import runner.reports.leaderboard

    def warn(*args, **kwargs):
        warnings.warn("--top 3: only 2 configuration(s) have an eligible run", UserWarning, stacklevel=2)
        return types.SimpleNamespace(summary=lambda: "ranked 0 runs")

    monkeypatch.setattr(runner.reports.leaderboard, "write_leaderboard", warn)
    before = warnings.showwarning
    result = invoke("leaderboard", "--logs-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "warning: --top 3: only 2 configuration(s) have an eligible run\n" in result.output, result.output
    assert "UserWarning" not in result.output and "warnings.warn" not in result.output
    assert warnings.showwarning is before


def test_dry_run_of_the_repository_grid_prints_4_runs_and_runs_nothing(monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    before = {folder: sorted(os.listdir(PROJECT_ROOT / folder)) for folder in ("experiments", "logs")}
    result = invoke("sweep", "grid.yaml", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "4 runs (dry run: nothing executed)" in result.output
    for text in ("simple_cnn_small", "simple_cnn_medium", "flatten", "gap"):
        assert text in result.output
    assert {folder: sorted(os.listdir(PROJECT_ROOT / folder)) for folder in before} == before


def test_lineage_writes_the_tree_of_the_records(tmp_path, monkeypatch, make_record):
    monkeypatch.chdir(tmp_path)
    for run_id, recall in (("20261121-120000-a1b2c3d4", 0.81), ("20261121-130000-c3d4e5f6", 0.86)):
        write_record(make_record(run_id, recall, base="mobilenet"), tmp_path / "logs")
    (tmp_path / "logs" / "broken.json").write_text("{", encoding="utf-8")
    result = invoke("lineage", "--out", "pages/lineage.html")
    assert result.exit_code == 0, result.output
    assert "wrote pages/lineage.html" in result.output and "unreadable record broken.json" in result.output
    page = (tmp_path / "pages" / "lineage.html").read_text(encoding="utf-8")
    assert "20261121-120000-a1b2c3d4" in page and "20261121-130000-c3d4e5f6" in page
    assert "0.8600" in page
    result = invoke("lineage", "--metric", "recall")
    assert result.exit_code == 2 and result.output.startswith("error: ") and "'recall'" in result.output
    assert not (tmp_path / "lineage.html").exists()


@pytest.mark.slow  # starts a sweep process and its worker processes
def test_script_with_workers_runs_each_run_once(tmp_path):
    """`--workers N` spawns processes that run the script file again (as `__mp_main__`): the entry point must
    not start a second sweep there (each worker would find the logs folder locked and die)."""
    from helpers import write_faults_grid

    grid = write_faults_grid(tmp_path, "[{action: ok, score: 0.25}, {action: ok, score: 0.75}]")
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "runner" / "sweep.py"), str(grid), "--workers", "2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "2 completed" in proc.stdout
    assert len(list((tmp_path / "logs").glob("*.json"))) == 2
