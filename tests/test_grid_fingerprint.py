"""`runner.grid.fingerprint`: what besides its parameters decides a run's result (`config_hash`): the code a
notebook's kernel runs (`kernel_code_files`, `code_hashes`), the data listing, the weights and the package
versions (`Fingerprinter`), the data manifest a run should train on (`Fingerprinter.manifest`), and the
`PathError` of a path that cannot be read. Expected hashes are recomputed here with hashlib and json."""

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

import nbformat
import pytest

from models.hashing import sha256_code
from runner import PROJECT_ROOT
from runner.errors import ConfigError
from runner.grid.fingerprint import (PROJECT_PACKAGES, RESULT_PACKAGES, Fingerprinter, PathError, code_hashes,
                                     kernel_code_files, offline_weights_names)
from runner.grid.schema import DEFAULT_NOTEBOOK

from helpers import expand, make_image_folder, make_spec

ASSETS = Path(__file__).parent / "assets"

TOO_LONG = "x" * 300
"""A file name longer than any filesystem allows (255 bytes): stat raises `OSError` (ENAMETOOLONG)."""


def sha256_of_json(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def listing(folder: Path) -> str:
    """The data listing hash, recomputed: sorted [relative path, size, mtime in ns] of every file below."""
    rows = []
    for parent, _, names in os.walk(folder):
        for name in names:
            st = os.stat(os.path.join(parent, name))
            rows.append([os.path.relpath(os.path.join(parent, name), folder), st.st_size, st.st_mtime_ns])
    return sha256_of_json(sorted(rows))


def relative(paths) -> set[str]:
    return {p.relative_to(PROJECT_ROOT).as_posix() for p in paths}


@pytest.fixture(scope="module")
def models_files() -> set[str]:
    """Every Python file below models/, listed with os.walk."""
    return {os.path.relpath(os.path.join(parent, name), PROJECT_ROOT).replace(os.sep, "/")
            for parent, _, names in os.walk(PROJECT_ROOT / "models") for name in names if name.endswith(".py")}


@pytest.fixture(scope="module")
def fingerprint() -> Fingerprinter:
    """One `Fingerprinter` of the base notebook; each test hashes folders and files of its own."""
    return Fingerprinter(DEFAULT_NOTEBOOK)


@pytest.fixture
def no_weights_env(monkeypatch):
    monkeypatch.delenv("NBSWEEP_WEIGHTS_DIR", raising=False)


# kernel_code_files / code_hashes ----------------------------------------------------------------------


def test_without_project_imports_the_kernel_runs_all_of_models(models_files):
    files = kernel_code_files([])
    assert relative(files) == models_files and len(files) == len(models_files)
    assert files == sorted(files) and all(p.is_absolute() for p in files)
    assert kernel_code_files(["import numpy as np\nimport keras\nfrom sklearn import metrics"]) == files


def test_project_imports_are_followed_with_their_packages(models_files):
    assert PROJECT_PACKAGES == ("models", "runner")
    for source in ("import runner.errors", "from runner import errors", "from runner.errors import shorten"):
        # runner/errors.py imports only models.errors (already in); its package's __init__ runs first
        assert relative(kernel_code_files([source])) - models_files == {"runner/__init__.py", "runner/errors.py"}


def test_imports_are_followed_transitively(models_files):
    added = relative(kernel_code_files(["from runner.records.query import parse_metric"])) - models_files
    # query.py, its package (whose __init__ imports schema, store, environment), and what they import
    assert {"runner/__init__.py", "runner/records/__init__.py", "runner/records/query.py",
            "runner/records/schema.py", "runner/records/store.py", "runner/records/environment.py",
            "runner/errors.py"} <= added
    # not the sweep machinery, which the records layer never imports (tests/test_architecture.py)
    assert not [name for name in added if name in ("runner/cli.py", "runner/sweep.py")
                or name.startswith(("runner/core/", "runner/reports/", "runner/grid/"))], added


@pytest.mark.parametrize("source", [
    "%matplotlib inline\nimport runner.errors",  # IPython magic: not Python, imports not followed
    "from .errors import shorten",               # relative: no absolute module name
    "import runnerx.errors\nimport modelsx",     # not a project package
])
def test_imports_that_are_not_followed(source, models_files):
    assert relative(kernel_code_files([source])) == models_files


def write_notebook(path: Path, *cells) -> Path:
    """A notebook of `cells`: strings are code cells, `("md", text)` markdown cells."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(c[1]) if isinstance(c, tuple) else nbformat.v4.new_code_cell(c)
                for c in cells]
    nbformat.write(nb, path)
    return path


def test_code_hashes_hash_each_code_cell_as_code_and_each_kernel_file(tmp_path, models_files):
    cells = ("import runner.errors\nx = 1  # one", "%matplotlib inline")
    notebook = write_notebook(tmp_path / "nb.ipynb", ("md", "# Title"), *cells)
    hashes = code_hashes(notebook)
    assert set(hashes) == {"notebook", "notebook_sha256", "files"}
    assert hashes["notebook"] == str(notebook.resolve())
    # a cell that does not parse (a magic) is hashed as its text
    assert hashes["notebook_sha256"] == sha256_of_json(
        [sha256_code(cells[0]), hashlib.sha256(cells[1].encode("utf-8")).hexdigest()])
    assert set(hashes["files"]) == models_files | {"runner/__init__.py", "runner/errors.py"}
    assert hashes["files"]["runner/errors.py"] == sha256_code(
        (PROJECT_ROOT / "runner" / "errors.py").read_text(encoding="utf-8"))
    assert list(hashes["files"]) == sorted(hashes["files"])  # kernel_code_files order


def test_code_hashes_ignore_markdown_comments_and_layout_not_code(tmp_path):
    first = code_hashes(write_notebook(tmp_path / "a.ipynb", ("md", "one"), "x = 1"))["notebook_sha256"]
    assert code_hashes(write_notebook(tmp_path / "b.ipynb", ("md", "two"), "# why\nx  =  1\n"))[
        "notebook_sha256"] == first
    assert code_hashes(write_notebook(tmp_path / "c.ipynb", "x = 2"))["notebook_sha256"] != first
    assert code_hashes(write_notebook(tmp_path / "d.ipynb", "x = 1", "y = 1"))["notebook_sha256"] != first


# Fingerprinter ----------------------------------------------------------------------------------------


def test_fingerprint_parts_of_the_notebook_code_and_packages(fingerprint):
    hashes = code_hashes(DEFAULT_NOTEBOOK)
    parts = fingerprint({})
    assert set(parts) == {"notebook", "code", "packages", "data", "weights"}
    assert parts["notebook"] == hashes["notebook_sha256"]
    assert parts["code"] == sha256_of_json([[name, digest] for name, digest in hashes["files"].items()])
    assert RESULT_PACKAGES == ("tensorflow", "keras", "numpy")
    assert parts["packages"] == {name: metadata.version(name) for name in RESULT_PACKAGES}
    assert (parts["data"], parts["weights"]) == ("None", "random")  # no data_dir, no weights


def test_a_notebook_with_other_code_fingerprints_differently(tmp_path, fingerprint):
    other = Fingerprinter(write_notebook(tmp_path / "nb.ipynb", "import runner.errors"))({})
    assert other["notebook"] != fingerprint({})["notebook"]
    assert other["code"] != fingerprint({})["code"]  # it imports runner/errors.py besides models/


def test_data_part_is_the_folders_listing(tmp_path, fingerprint):
    data = make_image_folder(tmp_path / "photos", n_per_class=2, classes=("a", "b"))
    (data / "a" / ".hidden").write_text("counted too")
    assert fingerprint({"data_dir": str(data)})["data"] == listing(data)
    assert fingerprint({"data_dir": str(tmp_path / "absent")})["data"] == f"missing:{tmp_path / 'absent'}"
    # a builtin is named, not listed (its folder may not be exported yet)
    assert fingerprint({"data_dir": "builtin:digits"})["data"] == "builtin:digits"


def test_weights_part(tmp_path, fingerprint, no_weights_env):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"some weights")
    assert fingerprint({"weights": str(weights)})["weights"] == hashlib.sha256(b"some weights").hexdigest()
    assert fingerprint({"weights": str(tmp_path / "no.h5")})["weights"] == f"missing:{tmp_path / 'no.h5'}"
    assert fingerprint({"weights": None})["weights"] == fingerprint({"weights": ""})["weights"] == "random"
    assert fingerprint({"weights": "imagenet"})["weights"] == "imagenet"  # Keras's download: nothing to hash


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_imagenet_weights_part_is_the_bases_offline_file(tmp_path, fingerprint, monkeypatch, no_weights_env):
    offline, other = tmp_path / "offline", tmp_path / "other"
    for folder, content in ((offline, b"vgg"), (other, b"vgg, other")):
        folder.mkdir()
        (folder / "vgg16_imagenet_notop.weights.h5").write_bytes(content)
    (offline / "mobilenet_0.5_imagenet_notop.weights.h5").write_bytes(b"mobilenet at alpha 0.5")
    (offline / "resnet50_imagenet_notop.weights.h5").write_bytes(b"resnet50")
    vgg = {"weights": "imagenet", "base": "vgg16"}
    expected = f"imagenet:{sha256_of(b'vgg')}"
    assert fingerprint({**vgg, "weights_dir": str(offline)})["weights"] == expected
    assert fingerprint({**vgg, "base": "VGG-16", "weights_dir": str(offline)})["weights"] == expected  # any spelling
    monkeypatch.setenv("NBSWEEP_WEIGHTS_DIR", str(offline))  # used when weights_dir is not set
    assert fingerprint(vgg)["weights"] == expected
    assert fingerprint({**vgg, "weights_dir": str(other)})["weights"] == f"imagenet:{sha256_of(b'vgg, other')}"
    # the alpha is part of the file's name
    mobilenet = {"weights": "imagenet", "base": "mobilenet", "weights_dir": str(offline)}
    assert fingerprint({**mobilenet, "base_kwargs": {"alpha": 0.5}})["weights"] == (
        f"imagenet:{sha256_of(b'mobilenet at alpha 0.5')}")
    # no offline file for the base (Keras downloads it), no folder, no base: nothing to hash
    assert fingerprint({**mobilenet, "base_kwargs": {}})["weights"] == "imagenet"
    assert fingerprint({**vgg, "weights_dir": str(tmp_path / "absent")})["weights"] == "imagenet"
    monkeypatch.delenv("NBSWEEP_WEIGHTS_DIR")
    assert fingerprint(vgg)["weights"] == "imagenet"
    assert fingerprint({"weights": "imagenet", "weights_dir": str(offline)})["weights"] == "imagenet"


def test_imagenet_weights_part_ignores_the_folders_other_files(tmp_path, no_weights_env):
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "vgg16_imagenet_notop.weights.h5").write_bytes(b"vgg")
    params = {"weights": "imagenet", "base": "vgg16", "weights_dir": str(offline)}
    first = Fingerprinter(DEFAULT_NOTEBOOK)(params)["weights"]
    (offline / "mobilenet_1.0_imagenet_notop.weights.h5").write_bytes(b"another base's file")
    (offline / "sub").mkdir()
    (offline / "sub" / "vgg16_imagenet_notop.weights.h5").write_bytes(b"below: not the file")
    assert Fingerprinter(DEFAULT_NOTEBOOK)(params)["weights"] == first
    (offline / "vgg16_imagenet_notop.weights.h5").write_bytes(b"vgg, retrained")
    assert Fingerprinter(DEFAULT_NOTEBOOK)(params)["weights"] == f"imagenet:{sha256_of(b'vgg, retrained')}" != first


def test_a_saved_model_base_is_fingerprinted_by_its_file(tmp_path, no_weights_env):
    """A `.keras` base, and `efficientnet_lite0`'s file in the weights folder, are hashed by content: the hash
    moves when the file does and not with the folder's other files; other bases' parts are unchanged."""
    backbone = tmp_path / "tiny.keras"
    backbone.write_bytes(b"model v1")
    part = lambda params: Fingerprinter(DEFAULT_NOTEBOOK)(params)["weights"]  # noqa: E731
    assert part({"weights": "imagenet", "base": str(backbone)}) == f"imagenet:base:{sha256_of(b'model v1')}"
    assert part({"weights": None, "base": str(backbone)}) == f"random:base:{sha256_of(b'model v1')}"
    backbone.write_bytes(b"model v2")
    assert part({"weights": "imagenet", "base": str(backbone)}) == f"imagenet:base:{sha256_of(b'model v2')}"
    assert part({"weights": "imagenet", "base": str(tmp_path / "gone.keras")}) == \
        f"imagenet:base:missing:{tmp_path / 'gone.keras'}"
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "efficientnet_lite0_imagenet_notop.keras").write_bytes(b"lite0")
    lite = {"weights": "imagenet", "base": "EfficientNet-Lite0", "weights_dir": str(offline)}
    first = part(lite)
    assert first == f"imagenet:base:{sha256_of(b'lite0')}"
    (offline / "efficientnet_lite2_imagenet_notop.keras").write_bytes(b"lite2")
    assert part(lite) == first
    assert part({"weights": "imagenet", "base": "vgg16"}) == "imagenet"  # no saved model: as before


def test_offline_weights_names_hold_the_file_every_base_loads():
    """`offline_weights_names` is Keras-free, `models.bases.weights.offline_weights_file` reads the constructor's
    signature: the name the latter gives is among the former, for every base with ImageNet weights."""
    from models.bases import BASES, offline_weights_file

    for info in BASES.values():
        # a whole saved model (a row being added beside this change) has a file of its own, not these names
        if not info.has_imagenet or getattr(info, "is_saved_model", False):
            continue
        for kwargs in ({}, {"alpha": 0.35}, {"alpha": 1}):
            if "alpha" in kwargs and offline_weights_file(info, {}) == offline_weights_file(info, kwargs):
                continue  # the constructor takes no alpha
            assert offline_weights_file(info, kwargs) in offline_weights_names(info.name, kwargs), (info.name, kwargs)
    assert offline_weights_names("MobileNet", {"alpha": 0.35}) == ("mobilenet_imagenet_notop.weights.h5",
                                                                   "mobilenet_0.35_imagenet_notop.weights.h5")
    assert offline_weights_names("vgg16", {"alpha": "wide"}) == ("vgg16_imagenet_notop.weights.h5",)


def test_each_folder_and_file_is_hashed_once_per_instance(tmp_path):
    data = make_image_folder(tmp_path / "photos", n_per_class=2, classes=("a", "b"))
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"w1")
    params = {"data_dir": str(data), "weights": str(weights)}
    fingerprint = Fingerprinter(DEFAULT_NOTEBOOK)
    first = fingerprint(params)
    (data / "a" / "new.png").write_bytes(b"x")
    weights.write_bytes(b"w2")
    assert fingerprint(params) == first  # the instance's cache: one sweep hashes each once
    fresh = Fingerprinter(DEFAULT_NOTEBOOK)(params)
    assert fresh["data"] == listing(data) != first["data"]
    assert fresh["weights"] == hashlib.sha256(b"w2").hexdigest() != first["weights"]


@pytest.mark.parametrize("key, params", [
    ("data_dir", {"data_dir": f"/tmp/{TOO_LONG}"}),
    ("weights", {"weights": f"/tmp/{TOO_LONG}.weights.h5"}),
    ("weights_dir", {"weights": "imagenet", "base": "vgg16", "weights_dir": f"/tmp/{TOO_LONG}"}),
])
def test_unreadable_path_raises_a_path_error_naming_key_and_value(fingerprint, key, params):
    with pytest.raises(PathError) as info:
        fingerprint(params)
    error = info.value
    assert isinstance(error, ConfigError)  # the CLI prints it without a traceback
    assert error.key == key and error.value == params[key]
    assert str(error).startswith("got '/tmp/xxx") and str(error).endswith(": cannot be read (File name too long)")
    assert f"({len(params[key])} characters)" in str(error)  # the value is shortened, its length said


# Fingerprinter.manifest -------------------------------------------------------------------------------


def test_manifest_is_what_the_kernels_load_data_hashes(tmp_path, fingerprint):
    from models.data.folders import load_data

    data = make_image_folder(tmp_path / "photos", n_per_class=8, classes=("a", "b", "c"))
    spec = make_spec(data)
    params = spec.model_dump(mode="json")
    expected = load_data(spec).manifest_hash
    assert fingerprint.manifest(params) == expected and len(expected) == 64
    for change in ({"seed": 1}, {"val_fraction": 0.3}, {"max_images_per_class": 6}):
        other = make_spec(data, **change)
        assert fingerprint.manifest(other.model_dump(mode="json")) == load_data(other).manifest_hash != expected
    # the split seed, when given, decides the split rather than the seed
    pinned = make_spec(data, seed=5, split_seed=0)
    assert fingerprint.manifest(pinned.model_dump(mode="json")) == expected


def test_manifest_is_listed_once_per_instance(tmp_path):
    data = make_image_folder(tmp_path / "photos", n_per_class=8, classes=("a", "b"))
    params = make_spec(data).model_dump(mode="json")
    fingerprint = Fingerprinter(DEFAULT_NOTEBOOK)
    first = fingerprint.manifest(params)
    make_image_folder(data, n_per_class=10, classes=("a", "b"), seed=1)  # two more images a class
    assert fingerprint.manifest(params) == first
    assert Fingerprinter(DEFAULT_NOTEBOOK).manifest(params) not in (first, None)


def test_manifest_is_none_when_it_cannot_be_told(tmp_path, fingerprint, monkeypatch):
    assert fingerprint.manifest({}) is None  # no data_dir parameter
    assert fingerprint.manifest({"data_dir": None}) is None
    assert fingerprint.manifest({"data_dir": str(tmp_path / "absent")}) is None
    one_class = make_image_folder(tmp_path / "one", n_per_class=4, classes=("a",))
    assert fingerprint.manifest({"data_dir": str(one_class)}) is None  # the pre-flight check refuses it
    too_few = make_image_folder(tmp_path / "few", n_per_class=1, classes=("a", "b"))
    assert fingerprint.manifest({"data_dir": str(too_few), "val_fraction": 0.25, "test_fraction": 0.25}) is None
    # a builtin not exported yet: not exported by asking
    monkeypatch.setenv("NBSWEEP_DATA_HOME", str(tmp_path / "home"))
    assert Fingerprinter(DEFAULT_NOTEBOOK).manifest({"data_dir": "builtin:digits"}) is None
    assert not (tmp_path / "home").exists()


# Through the grid: what config_hash covers ------------------------------------------------------------


def test_config_hash_covers_params_data_weights_and_notebook(tmp_path):
    import nbformat

    data = tmp_path / "photos"
    (data / "a").mkdir(parents=True)
    (data / "a" / "1.png").write_bytes(b"x")
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"w1")
    text = f"data_dir: {data}\nfixed: {{weights: {weights}}}\ngrid: {{head: [gap]}}\n"
    first = expand(tmp_path, text)[0][0].config_hash
    assert expand(tmp_path, text)[0][0].config_hash == first  # stable
    assert expand(tmp_path, text.replace("[gap]", "[flatten]"))[0][0].config_hash != first
    (data / "a" / "2.png").write_bytes(b"y")  # the data manifest changed
    second = expand(tmp_path, text)[0][0].config_hash
    assert second != first
    weights.write_bytes(b"w2")  # other weights, same path
    third = expand(tmp_path, text)[0][0].config_hash
    assert third != second
    nb = nbformat.read(DEFAULT_NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("print('changed')"))
    nbformat.write(nb, tmp_path / "nb.ipynb")
    assert expand(tmp_path, f"notebook: {tmp_path / 'nb.ipynb'}\n" + text)[0][0].config_hash != third


@pytest.mark.slow
def test_config_hash_covers_kernel_code_not_docs_or_the_sweep_machinery(tmp_path):
    """In a copy of the project: editing a docstring or a comment under models/, or any code under runner/,
    skips every run; editing code in models/heads.py re-runs them."""
    import shutil
    import subprocess
    import sys

    from runner import PROJECT_ROOT

    project = tmp_path / "project"
    for folder in ("runner", "models"):
        shutil.copytree(PROJECT_ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "notebooks").mkdir()
    shutil.copy(ASSETS / "faults.ipynb", project / "notebooks" / "faults.ipynb")
    grid = project / "grid.yaml"
    grid.write_text("notebook: notebooks/faults.ipynb\ngrid: {score: [0.25]}\n", encoding="utf-8")

    def sweep() -> str:
        proc = subprocess.run([sys.executable, "runner/sweep.py", "grid.yaml"], cwd=project, capture_output=True,
                              text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(project)})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def edit(rel: str, old: str, new: str) -> None:
        path = project / rel
        text = path.read_text(encoding="utf-8")
        assert old in text, (rel, old)
        path.write_text(text.replace(old, new, 1), encoding="utf-8")

    assert "1 completed" in sweep()
    edit("models/spec.py", '"""', '"""A docstring edited. ')  # the module docstring
    edit("models/heads.py", "\nimport", "\n# a comment added\nimport")
    with open(project / "runner" / "reports" / "leaderboard.py", "a", encoding="utf-8") as handle:
        handle.write("\nLEADERBOARD_EDITED = True\n")
    assert "0 completed, 1 skipped" in sweep()
    with open(project / "models" / "heads.py", "a", encoding="utf-8") as handle:
        handle.write("\nHEADS_EDITED = True  # code the kernel runs\n")
    assert "1 completed" in sweep()


def test_kernel_code_files_are_models_only_for_the_base_notebook():
    import nbformat

    from runner import PROJECT_ROOT
    from runner.grid import kernel_code_files

    sources = [c.source for c in nbformat.read(DEFAULT_NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    names = {p.relative_to(PROJECT_ROOT).as_posix() for p in kernel_code_files(sources)}
    assert {"models/heads.py", "models/contract.py", "models/names.py", "models/__init__.py"} <= names
    assert not [name for name in names if not name.startswith("models/")]
