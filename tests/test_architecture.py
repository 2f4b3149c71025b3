"""The project's shape: import-linter's layer contracts (pyproject.toml) and its declared dependencies."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from runner import PROJECT_ROOT


def test_import_linter_contracts_are_kept():
    """CLI -> runner library -> models, nothing imports the entry-point scripts, no cycles between siblings."""
    proc = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())", "--config", "pyproject.toml", "--no-cache"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement line (`Jinja2==3.1.6` -> `jinja2`)."""
    return re.split(r"[<>=~!\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_every_pinned_runtime_package_is_declared():
    """`pip install .` alone must give a working nbsweep: every package requirements.txt pins is declared in
    pyproject.toml, as a dependency or (test tools) in the `test` extra."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_name(r) for r in project["dependencies"]}
    test_only = {_name(r) for r in project["optional-dependencies"]["test"]}
    pinned = {_name(line) for line in (PROJECT_ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
              if line.strip() and not line.startswith("#")}
    assert pinned - declared - test_only == set()
    assert not declared & test_only
    assert {"optuna", "papermill", "tensorflow", "keras"} <= declared


@pytest.mark.parametrize("line, name", [("Jinja2==3.1.6", "jinja2"), ("mlflow-skinny==3.17.2", "mlflow-skinny"),
                                        ("import_linter~=2.17", "import-linter"), ("tensorflow", "tensorflow")])
def test_requirement_names_are_normalised(line, name):
    assert _name(line) == name


def test_the_package_list_names_every_package_folder():
    """pyproject.toml lists the packages (so that notebooks/ can be mapped to `runner.notebooks`): a new
    package folder missing from the list would be missing from a wheel."""
    listed = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(PROJECT_ROOT).parts)
               for top in ("runner", "models") for p in (PROJECT_ROOT / top).rglob("__init__.py")}
    assert set(listed["packages"]) == folders | {"runner.notebooks"}
    assert listed["package-dir"] == {"runner.notebooks": "notebooks"}


@pytest.mark.slow
def test_a_wheel_carries_the_base_notebook_and_expands_a_grid_without_the_checkout(tmp_path):
    """`pip install .` (not editable): the installed runner finds the base notebook it ships and expands a
    grid against its parameters, from a folder outside the checkout, with the checkout off sys.path."""
    try:
        import setuptools  # noqa: F401
    except ImportError:
        pytest.skip("setuptools is not installed: the wheel cannot be built without network (build isolation)")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(PROJECT_ROOT), "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "wheel"), "-q"], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("nbsweep-*.whl")
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), "-q",
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    work = tmp_path / "work"
    work.mkdir()
    (work / "grid.yaml").write_text("fixed: {base: simple_cnn_small, weights: null}\ngrid: {dropout: [0.1, 0.2]}\n",
                                    encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run([sys.executable, "-c", "import runner.grid as g; print(g.DEFAULT_NOTEBOOK)"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notebook = Path(proc.stdout.strip())
    assert notebook == site / "runner" / "notebooks" / "base_experiment.ipynb" and notebook.is_file()
    assert notebook.read_bytes() == (PROJECT_ROOT / "notebooks" / "base_experiment.ipynb").read_bytes()
    dry = subprocess.run([sys.executable, "-m", "runner", "sweep", "grid.yaml", "--dry-run"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "2 runs (dry run: nothing executed)" in dry.stdout
