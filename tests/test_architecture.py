"""The project's shape: import-linter's layer contracts (pyproject.toml), module boundaries (no private name
imported across modules) and its declared dependencies."""

import ast
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


LIBRARY_PACKAGES = ("runner", "models")
"""The packages whose modules keep their private names (a leading underscore: "this module only") to themselves."""


def _module_files() -> dict[str, Path]:
    """Every module of `LIBRARY_PACKAGES`, by dotted name (a package by its own name, not `.__init__`)."""
    modules = {}
    for package in LIBRARY_PACKAGES:
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_names_crossing(module: str, path: Path, modules: dict[str, Path]) -> list[str]:
    """The private names `module` takes from another module of the project: `from m import _x`, and `m._x`
    where `m` is an imported project module; one `file:line: name` per use.

    The rule ruff's PLC2701 states, applied between any two modules: ruff's rule leaves imports inside
    one top-level package alone, which is where most crossings would be.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    imported: dict[str, str] = {}  # local name -> project module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(parent + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] not in LIBRARY_PACKAGES:
                continue
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    imported[alias.asname or alias.name] = f"{source}.{alias.name}"
                elif _is_private(alias.name) and source != module:
                    found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}: {source}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in LIBRARY_PACKAGES:  # `import a.b as c` binds c to a.b; `import a.b` binds a
                    imported[alias.asname or top] = alias.name if alias.asname else top
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in imported:
                target = ".".join([imported[value.id], *reversed(chain)])
                if target in modules and target != module:
                    found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}: {target}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module():
    """A leading underscore means "this module only" (../STYLE): a name a sibling needs is public."""
    modules = _module_files()
    crossing = [line for module, path in sorted(modules.items())
                for line in private_names_crossing(module, path, modules)]
    assert crossing == []


def test_the_private_name_rule_finds_both_forms(tmp_path, monkeypatch):
    """The rule can fail: an import of `_x` from a sibling, and `sibling._y`, are both reported."""
    package = tmp_path / "runner"
    package.mkdir()
    (package / "a.py").write_text("def _x(): pass\n_y = 1\n")
    (package / "b.py").write_text("from runner.a import _x\nfrom runner import a\nprint(a._y)\n")
    monkeypatch.setattr(sys.modules[__name__], "PROJECT_ROOT", tmp_path)
    modules = {"runner.a": package / "a.py", "runner.b": package / "b.py"}
    assert private_names_crossing("runner.b", package / "b.py", modules) == [
        "runner/b.py:1: runner.a._x", "runner/b.py:3: runner.a._y"]
    assert private_names_crossing("runner.a", package / "a.py", modules) == []


MAX_FUNCTION_LINES = 80
"""The longest a function of `runner/` may be, its docstring included (def line to last line)."""


def test_no_function_in_runner_is_over_80_lines():
    """A function longer than a screen does several jobs: split it into its steps."""
    long = [f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}: {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in sorted((PROJECT_ROOT / "runner").rglob("*.py"))
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


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
