"""The project's shape: import-linter's layer contracts (pyproject.toml) and its declared dependencies."""

import re
import tomllib

import pytest

from runner import PROJECT_ROOT


def test_import_linter_contracts_are_kept():
    """CLI -> runner library -> models, nothing imports the entry-point scripts, no cycles between siblings."""
    import subprocess
    import sys

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
