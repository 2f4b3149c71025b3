"""The README and the MkDocs pages in docs/ say what the code does: every YAML example is a grid
file the sweep accepts, every relative link of the README resolves, and the site builds strictly.

A ```` ```yaml ```` block whose first line is `# fragment` is a partial snippet (one key of a grid
file): it is only parsed. Every other block is written to a temporary grid file and checked with
`python runner/sweep.py FILE --dry-run` from the project root, which validates it and runs the
pre-flight check without executing a notebook (nor importing TensorFlow in the sweep process;
the pre-flight check imports Keras to check bases, a few seconds per block). Its output
locations (`experiments_dir`, `logs_dir`, `leaderboard`), where the example does not set them,
go to the temporary folder, so the check neither reads nor touches the project's `logs/`. An
example that needs `../shared` (real photos, offline ImageNet weights) is skipped where it is
absent.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
DOCS = PROJECT / "docs"
DOC_FILES = [PROJECT / "README.md", *sorted(DOCS.glob("*.md"))]
SHARED_WEIGHTS = PROJECT.parent / "shared" / "weights"
"""Offline ImageNet weights for the examples that use `weights: imagenet` (absent on a fresh clone)."""

FRAGMENT = "# fragment"
OUTPUT_KEYS = {"experiments_dir": "experiments", "logs_dir": "logs", "leaderboard": "leaderboard.html"}
PATH_PARAMETERS = ("data_dir", "weights_dir", "weights", "notebook")
"""Keys whose values may be relative paths, resolved from the folder the sweep runs in."""

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced ```yaml block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    text: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(PROJECT).as_posix()}:{self.line}"

    @property
    def is_fragment(self) -> bool:
        first = self.text.lstrip("\n").split("\n", 1)[0].strip()
        return first == FRAGMENT


def yaml_blocks(path: Path) -> list[Block]:
    """The ```yaml blocks of a Markdown file, dedented by their fence's indent."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"].strip()
        body, j = [], i + 1
        while j < len(lines) and not (lines[j].strip() == fence and lines[j].startswith(indent)):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if info.split(" ")[0].lower() in ("yaml", "yml"):
            blocks.append(Block(path, i + 1, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


BLOCKS = [block for path in DOC_FILES for block in yaml_blocks(path)]
GRID_BLOCKS = [block for block in BLOCKS if not block.is_fragment]


def test_the_docs_have_yaml_examples():
    assert GRID_BLOCKS, "no complete ```yaml grid example found in README.md or docs/*.md"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_yaml_block_parses(block: Block):
    try:
        yaml.safe_load(block.text)
    except yaml.YAMLError as exc:
        pytest.fail(f"{block.id}: not valid YAML: {exc}\n{block.text}")


def _values(node, keys: tuple[str, ...]):
    """Every value of one of `keys`, at any depth (lists inside `grid` give each element)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys:
                yield from (value if isinstance(value, list) else [value])
            yield from _values(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from _values(item, keys)


def _uses_imagenet(grid: dict) -> bool:
    """Whether some run may load ImageNet weights (the notebook's default `weights`)."""
    if any(value == "imagenet" for value in _values(grid, ("weights",))):
        return True
    fixed = grid.get("fixed") or {}
    return "weights" not in fixed  # the default is imagenet unless every run sets weights


def _missing_paths(grid: dict) -> list[str]:
    missing = []
    for value in _values(grid, PATH_PARAMETERS):
        if not isinstance(value, str) or value in ("imagenet",) or value.startswith("builtin:"):
            continue
        if not (PROJECT / value).exists():
            missing.append(value)
    return missing


@pytest.mark.slow
@pytest.mark.parametrize("block", GRID_BLOCKS, ids=[b.id for b in GRID_BLOCKS])
def test_yaml_example_is_a_valid_grid(block: Block, tmp_path: Path):
    grid = yaml.safe_load(block.text)
    assert isinstance(grid, dict), f"{block.id}: a grid file is a mapping; mark a snippet '{FRAGMENT}'"
    missing = _missing_paths(grid)
    if missing:
        pytest.skip(f"{block.id}: needs {', '.join(missing)} (absent here, e.g. ../shared on a fresh clone)")
    args = []
    if _uses_imagenet(grid) and not os.environ.get("NBSWEEP_WEIGHTS_DIR"):
        if not SHARED_WEIGHTS.is_dir():
            pytest.skip(f"{block.id}: uses ImageNet weights; no offline weights folder ({SHARED_WEIGHTS}) "
                        f"and no $NBSWEEP_WEIGHTS_DIR here")
        args = ["--weights-dir", str(SHARED_WEIGHTS)]
    text = block.text + "".join(f"{key}: {tmp_path / default}\n" for key, default in OUTPUT_KEYS.items()
                                if key not in grid)
    grid_path = tmp_path / f"{block.path.stem}_{block.line}.yaml"
    grid_path.write_text(text, encoding="utf-8")
    proc = subprocess.run([sys.executable, "runner/sweep.py", str(grid_path), "--dry-run", *args],
                          cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (f"{block.id}: `python runner/sweep.py FILE --dry-run` exited with "
                                  f"{proc.returncode}\n--- grid ---\n{text}\n--- stdout ---\n{proc.stdout}"
                                  f"\n--- stderr ---\n{proc.stderr}")


def test_readme_links_resolve():
    text = (PROJECT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert local, "README.md links nothing into docs/"
    missing = [t for t in local if not (PROJECT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_mkdocs_build_strict(tmp_path: Path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -r requirements.txt)")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"


SHIPPED_GRIDS = sorted((PROJECT / "grids").rglob("*.yaml")) + [PROJECT / "grid.yaml"]


def _run_names(grid: dict) -> set[str]:
    """The `name`s a grid gives its runs, with the names its repeats get (`<name>-seed<seed>`)."""
    names = {run["name"] for run in grid.get("runs") or [] if isinstance(run, dict) and run.get("name")}
    seed = (grid.get("fixed") or {}).get("seed", 42)
    return names | {f"{name}-seed{seed + k}" for name in names for k in range(1, grid.get("repeats", 1))}


@pytest.mark.parametrize("grid_path", SHIPPED_GRIDS, ids=lambda p: str(p.relative_to(PROJECT)))
def test_the_pages_quote_a_shipped_grid_as_it_is(grid_path: Path):
    """A run name a page quotes in the style of a shipped grid's names (`mb160_ft`: its digits any number) is
    one the grid gives, and the image size a section about the grid states ("at 160 px") is the grid's."""
    grid = yaml.safe_load(grid_path.read_text(encoding="utf-8"))
    names = _run_names(grid)
    families = {re.sub(r"\d+", r"\\d+", re.escape(name.split("-seed")[0])) for name in names}
    sizes = {(grid.get("fixed") or {}).get("image_size")}
    relative = str(grid_path.relative_to(PROJECT))
    for page in DOC_FILES:
        text = page.read_text(encoding="utf-8")
        for token in re.findall(r"`([A-Za-z0-9_.-]+)`", text):
            if any(re.fullmatch(rf"{family}(-seed\d+)?", token) for family in families):
                assert token in names, f"{page.name} quotes run {token!r}, which {relative} does not name"
        for section in re.split(r"\n(?=#)", text):
            if relative in section and "image_size" in (grid.get("fixed") or {}):
                stated = re.findall(r"\bat (\d+) px", section)
                assert not stated or int(stated[0]) in sizes, (
                    f"{page.name}: the section on {relative} says {stated[0]} px, the grid {sizes}")
