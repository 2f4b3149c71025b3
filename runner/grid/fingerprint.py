"""What besides its parameters decides a run's result, hashed into its `config_hash`."""

from __future__ import annotations

import ast
import stat
from pathlib import Path
from typing import Any, Mapping, Optional


from runner import PROJECT_ROOT
from models.bases.registry import BASES, canonical_base, is_saved_model_base, is_saved_model_path, weights_folder
from models.data.folders import BUILTIN_PREFIX
from models.hashing import sha256_code, sha256_file, sha256_json
from runner.errors import ConfigError, shorten
from runner.records import package_version


class PathError(ConfigError):
    """A path parameter that the fingerprint cannot read (`OSError`: a name too long, no permission...).

    Attributes:
        key: the parameter (`data_dir`, `weights`, `weights_dir`).
        value: its value.
    """

    def __init__(self, key: str, value: Any, error: OSError):
        super().__init__(f"got {shorten(value)}: cannot be read ({error.strerror or error})")
        self.key, self.value = key, value


def _tree_listing(folder: Path) -> str:
    """sha256 of (relative path, size, mtime in ns) of every file below `folder`, sorted."""
    if not folder.is_dir():
        return f"missing:{folder}"
    entries = sorted((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns)
                     for p in folder.rglob("*") if p.is_file() and (st := p.stat()))
    return sha256_json(entries)


def _sha256_if_file(path: Path) -> Optional[str]:
    """sha256 of the file at `path`, or `None` when there is none (a missing file or folder, a folder)."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    return sha256_file(path) if stat.S_ISREG(mode) else None


def offline_weights_names(base: str, base_kwargs: Mapping[str, Any]) -> tuple[str, ...]:
    """The names the offline ImageNet weights file of `base` may have in a weights folder, without Keras.

    `models.bases.weights.offline_weights_file` names it
    `<name>_imagenet_notop.weights.h5`, or `<name>_<alpha>_imagenet_notop.weights.h5`
    (`alpha` as `float`, `1.0` by default) for a constructor that takes `alpha`;
    only the constructor's signature, that is Keras, tells which, so both are
    given. A folder holds one of them (`tests/test_grid_fingerprint.py` checks
    that every registry base's name is among them).

    Args:
        base: the run's `base`, any spelling (`models.bases.canonical_base`).
        base_kwargs: the run's `base_kwargs`; reads `alpha`.

    Returns:
        The names without, then with, the alpha; only the first when `alpha` is not a number.
    """
    name = canonical_base(base)
    if is_saved_model_base(base):  # its weights are in its own file (`Fingerprinter._saved_base_part`)
        return ()
    alpha = base_kwargs.get("alpha", 1.0)
    names = (f"{name}_imagenet_notop.weights.h5",)
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        names += (f"{name}_{float(alpha)}_imagenet_notop.weights.h5",)
    return names


PROJECT_PACKAGES = ("models", "runner")
"""The project's top-level packages, whose modules a notebook may import."""

RESULT_PACKAGES = ("tensorflow", "keras", "numpy")
"""Installed packages whose versions change a run's numbers, so they are part of `config_hash`."""


def _imported_modules(source: str) -> set[str]:
    """Absolute module names `source` imports (`from a.b import c` gives `a.b` and `a.b.c`)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a cell with IPython magics: its imports are not followed
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def kernel_code_files(sources: list[str]) -> list[Path]:
    """The project's Python files a notebook's kernel runs: all of `models/` (the package the
    base notebook imports), and any other project module the notebook's code imports, followed
    transitively.

    Editing a file outside them (the sweep loop, the leaderboard, the command
    line) cannot change a run's result, so it is left out of `config_hash`.

    Args:
        sources: the notebook's code cells.

    Returns:
        Sorted absolute paths.
    """
    files = set((PROJECT_ROOT / "models").rglob("*.py"))
    todo = [name for source in sources for name in _imported_modules(source)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in PROJECT_PACKAGES:
            continue
        seen.add(name)
        parts = name.split(".")
        for candidate in (PROJECT_ROOT.joinpath(*parts).with_suffix(".py"), PROJECT_ROOT.joinpath(*parts, "__init__.py")):
            if candidate.is_file() and candidate not in files:
                files.add(candidate)
                todo += sorted(_imported_modules(candidate.read_text(encoding="utf-8")))
        if len(parts) > 1:
            todo.append(".".join(parts[:-1]))  # the package's __init__ runs first
    return sorted(files)


def code_hashes(notebook: Path) -> dict[str, Any]:
    """The code a run of `notebook` executes, hashed per part: what a rerun compares file by file.

    Args:
        notebook: the notebook the run executes.

    Returns:
        `{"notebook": absolute path, "notebook_sha256": sha256 of its code cells
        hashed as code (`models.hashing.sha256_code` of each: comments and
        layout do not count; a cell with IPython magics counts as text), "files": {project-relative posix path:
        models.hashing.sha256_code of the file}}` over `kernel_code_files`.
    """
    import nbformat

    notebook = Path(notebook).resolve()
    sources = [c.source for c in nbformat.read(str(notebook), as_version=4).cells if c.cell_type == "code"]
    return {"notebook": str(notebook), "notebook_sha256": sha256_json([sha256_code(source) for source in sources]),
            "files": {p.relative_to(PROJECT_ROOT).as_posix(): sha256_code(p.read_text(encoding="utf-8"))
                      for p in kernel_code_files(sources)}}


class Fingerprinter:
    """What besides its parameters decides a run's result, hashed for `RunSpec.config_hash`.

    Re-running a grid skips runs whose completed record has the same
    `config_hash`, so it must change whenever the result could, and only
    then: the notebook's code cells, the code its kernel imports
    (`kernel_code_files`: all of `models/`, hashed as code with
    `models.hashing.sha256_code`, so docstring and comment edits re-train
    nothing), the versions of
    `RESULT_PACKAGES` (TensorFlow, Keras, NumPy), the data manifest (every
    file's relative path, size and modification time: a stat per file, no
    reading), and the weights (sha256 of a weights file; for `imagenet`, the
    sha256 of the base's offline file in the weights folder,
    `offline_weights_names`, when the folder holds it, so other files there
    change nothing; else `imagenet`: Keras's download, which the parameters
    and the Keras version decide). Each distinct folder or file is hashed
    once per instance.

    Args:
        notebook: the notebook the runs execute.
    """

    def __init__(self, notebook: Path):
        hashes = code_hashes(notebook)
        self._notebook = hashes["notebook_sha256"]
        self._code = sha256_json(list(hashes["files"].items()))  # kernel_code_files order
        self._packages = {name: package_version(name) for name in RESULT_PACKAGES}
        self._cache: dict[tuple[str, str], Optional[str]] = {}
        self._folders: dict[str, Any] = {}
        self._manifests: dict[tuple, Optional[str]] = {}

    def _cached(self, kind: str, key: str, compute, param: str, value: Any = None) -> Optional[str]:
        """`compute()`, once per `(kind, key)`; an `OSError` is a `PathError` of `param` and `value`
        (`key` when `None`)."""
        if (kind, key) not in self._cache:
            try:
                self._cache[kind, key] = compute()
            except OSError as exc:  # a user's path: say which key, never a traceback
                raise PathError(param, key if value is None else value, exc) from exc
        return self._cache[kind, key]

    def _imagenet_part(self, params: dict[str, Any]) -> str:
        """`imagenet:<sha256>` of the offline file a run of `params` loads (`offline_weights_names` in
        `weights_dir`, else `$NBSWEEP_WEIGHTS_DIR`), or `imagenet` when there is none (no folder, no file
        for this base, no `base` parameter)."""
        folder = weights_folder(params.get("weights_dir"))
        base = params.get("base")
        if not folder or not isinstance(base, str):
            return "imagenet"
        kwargs = params.get("base_kwargs")
        found = [self._cached("file", str(path), lambda path=path: _sha256_if_file(path), "weights_dir", folder)
                 for name in offline_weights_names(base, kwargs if isinstance(kwargs, dict) else {})
                 for path in [Path(folder).expanduser() / name]]
        return ":".join(["imagenet", *filter(None, found)])

    def __call__(self, params: dict[str, Any]) -> dict[str, str]:
        """The fingerprint parts of one run's `params` (absolute paths).

        Raises:
            PathError: `data_dir`, `weights` or `weights_dir` cannot be read
                (`OSError`, e.g. a name too long); the message names the value.
        """
        data_dir = params.get("data_dir")
        if not isinstance(data_dir, str) or data_dir.startswith(BUILTIN_PREFIX):
            data = str(data_dir)
        else:
            data = self._cached("data", data_dir, lambda: _tree_listing(Path(data_dir)), "data_dir")
        weights = params.get("weights")
        if weights == "imagenet":
            weights_part = self._imagenet_part(params)
        elif weights:
            weights_part = self._cached("file", weights, lambda: sha256_file(Path(weights)) if Path(weights).is_file()
                                        else f"missing:{weights}", "weights")
        else:
            weights_part = "random"
        saved = self._saved_base_part(params)
        return {"notebook": self._notebook, "code": self._code, "packages": self._packages,
                "data": data, "weights": weights_part if saved is None else f"{weights_part}:base:{saved}"}

    def _saved_base_part(self, params: dict[str, Any]) -> Optional[str]:
        """For a saved-model base (`models.bases.saved`: a `.keras` path, or `efficientnet_lite0`'s file in the
        weights folder), the sha256 of the file its architecture (and, with `weights: imagenet`, its weights)
        comes from, `missing:<path>` when it is not there; `None` for any other base (its hash unchanged)."""
        base = params.get("base")
        if not isinstance(base, str) or not is_saved_model_base(base):
            return None
        if is_saved_model_path(base):
            path = Path(base).expanduser()
        else:
            folder = weights_folder(params.get("weights_dir"))
            if not folder:
                return "missing:no weights folder"
            path = Path(folder).expanduser() / BASES[canonical_base(base)].saved_file
        return self._cached("file", str(path), lambda: _sha256_if_file(path) or f"missing:{path}", "base")

    def manifest(self, params: dict[str, Any]) -> Optional[str]:
        """The data manifest a run of `params` should train on, as its kernel's `load_data` hashes it.

        `models.data.folders.manifest_hash` of the split of `data_dir` listed
        now (each folder listed once per instance): the sweep compares it
        with the manifest the run's record carries (`RunSpec.data_matches`),
        so a run whose data changed under it is not taken as done.

        Args:
            params: one run's parameters (absolute paths).

        Returns:
            64 hex digits, or `None` when it cannot be told before the run: no
            `data_dir` parameter, a builtin not exported yet, or a folder the
            pre-flight check refuses (it says why).
        """
        from models.data.folders import list_image_folder, manifest_hash, resolve_data_dir, split_image_folder
        from models.errors import ModelConfigError
        from models.spec import experiment_spec, split_key

        data_dir = params.get("data_dir")
        if not isinstance(data_dir, str):
            return None
        if data_dir not in self._folders:
            try:
                root = resolve_data_dir(data_dir, export=False)
                self._folders[data_dir] = list_image_folder(root) if root.is_dir() else None
            except (ModelConfigError, OSError):
                self._folders[data_dir] = None
        folder = self._folders[data_dir]
        if folder is None:
            return None
        split = split_key(params)
        if split not in self._manifests:
            try:
                self._manifests[split] = manifest_hash(folder.root, split_image_folder(folder, experiment_spec(params)))
            except (ModelConfigError, OSError, ValueError):
                self._manifests[split] = None
        return self._manifests[split]


