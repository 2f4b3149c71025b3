"""Checks of a whole sweep before anything runs, so a bad configuration creates no run folder.

`expand_runs` already checked every parameter's name and type; here the
checks look outside the grid file, each once per distinct value (a sweep of
100 runs over one folder lists that folder once):

- output folders (`experiments_dir`, `logs_dir`, the leaderboard's folder):
  creatable and writable (not read-only, not full), tried with an anonymous
  temporary file, so nothing is left behind; a symbolic link loop on the way
  is named;
- `data_dir`: `models.data.list_image_folder` and `split_image_folder`, the
  listing and split that `load_data` runs, without decoding images; files a
  run will skip (corrupt, not images) come back as warnings;
- `base`, `image_size`, `base_kwargs`: the `models.bases` registry and the
  constructor's signature;
- `weights`: a file must exist and fit the architecture (loaded into the base
  built at its minimum size, once per base, base_kwargs and file);
  `imagenet` needs an offline file, the file in Keras's cache, or a network
  (one short connection attempt per sweep, only when needed);
- the activation cache's folder (`cache_dir`, else `$NBSWEEP_CACHE_DIR`) of
  the runs that read the cache: creatable and writable, as output folders;
- `warm_start` given as a run id or prefix: `runner.reports.lineage.resolve_warm_start`
  with the class folders of the run's `data_dir` (`best` is resolved when the
  run starts, so it can see runs of the same sweep);
- `name`: not another configuration's in this sweep or in the logs folder,
  nor the name an unreadable record of the logs folder gives itself.

All problems are collected and raised together as one `ConfigError`, one line
each. Cost on a sweep of simple CNNs over existing folders: importing Keras
once (through `resolve_base`, a few seconds) plus listing each folder once
(`models.data.check_image_file`); no model is built and no connection is
tried. `bench/preflight_bench.py` measures it: 0.07 s per 1000 TrashNet
photos with a warm file cache (0.25 s cold), 0.14 s for `check_runs` on a
20-run simple-CNN grid over TrashNet.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import tempfile
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Optional

from models.errors import ModelConfigError
from models.hashing import canonical_json
from models.spec import ExperimentSpec, split_key
from runner.errors import ConfigError
from runner.grid import GridSpec, RunSpec

NETWORK_PROBE_TIMEOUT_S = 3.0
"""Seconds the no-network check waits for a TCP connection."""
NETWORK_PROBE_ADDRESS: Optional[tuple[str, int]] = None
"""`(host, port)` the no-network check connects to instead of the host of Keras's
weights URL (or its proxy); `None` (default) uses that host. Tests point it at a
closed local port."""


@dataclass
class _Report:
    """Errors and warnings of one check, one line each, naming the grid file, the runs and the key."""

    grid_path: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def line(self, runs: Iterable[RunSpec], key: str, message: str) -> str:
        key, message = _split_key(re.sub(r"\s*\n\s*", " ", message.strip()), key)
        origins = Counter(run.origin for run in runs)
        where = ", ".join(f"{o} ({n} runs)" if n > 1 else o for o, n in origins.items())
        return f"{self.grid_path}: {where + ': ' if where else ''}{key}: {message}"

    def error(self, runs: Iterable[RunSpec], key: str, message: str) -> None:
        line = self.line(runs, key, message)
        if line not in self.errors:
            self.errors.append(line)

    def warning(self, runs: Iterable[RunSpec], key: str, message: str) -> None:
        line = self.line(runs, key, message)
        if line not in self.warnings:
            self.warnings.append(line)


def _split_key(message: str, default: str) -> tuple[str, str]:
    """`("weights", "file x does not exist")` from `"weights: file x does not exist"`."""
    head, sep, rest = message.partition(": ")
    if sep and (head in ExperimentSpec.model_fields or head == default):
        return head, rest
    return default, message


def _group(runs: Iterable[RunSpec], key: Callable[[RunSpec], Any]) -> dict[Hashable, list[RunSpec]]:
    """Runs grouped by `key(run)` (made hashable as canonical JSON), in run order."""
    groups: dict[Hashable, list[RunSpec]] = {}
    for run in runs:
        groups.setdefault(canonical_json(key(run)), []).append(run)
    return groups


def check_runs(spec: GridSpec, runs: list[RunSpec], grid_path: Path) -> list[str]:
    """Check every run of a sweep against the world outside the grid file.

    Args:
        spec: the validated grid.
        runs: its expanded runs.
        grid_path: the grid file, named in messages.

    Returns:
        Warnings that do not stop the sweep (e.g. files in class folders that
        the runs will skip).

    Raises:
        ConfigError: one line per problem, each naming the grid file, the run
            origin and key, what was found and what is allowed or how to fix it.
    """
    report = _Report(Path(grid_path))
    _check_output_folders(spec, report)
    folders = _check_data_dirs(runs, report)
    _check_models(runs, report)
    _check_cache_dirs(runs, report)
    _check_warm_starts(runs, spec.logs_dir, folders, report)
    _check_run_names(runs, spec.logs_dir, report)
    if report.errors:
        raise ConfigError("\n".join(report.errors))
    return report.warnings


WRITE_PROBE_BYTES = 64 * 1024
"""Bytes `writable_folder_problem` writes (and throws away) in a folder: more than a run's record or a small
sweep's leaderboard page (5 to 40 KB), so a full disk is found before a run rather than at its record."""


def writable_folder_problem(folder: Path) -> Optional[str]:
    """Why `folder` cannot be created or written, or `None`; leaves nothing behind.

    The folder, or its nearest existing parent when it does not exist yet, is
    tried with an anonymous temporary file (`tempfile.TemporaryFile`) that
    `WRITE_PROBE_BYTES` are written to: this catches read-only file systems
    and full disks, and holds for root, where `os.access` always says yes. A
    symbolic link on the way that leads nowhere (a loop, or a missing target)
    is named as such.

    Args:
        folder: the folder (relative paths from the working folder).

    Returns:
        `None` when a run could create and write it, else the reason.
    """
    folder = Path(folder).absolute()
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, expected a folder (or a path where one can be created)"
    existing = folder
    while not existing.exists():
        if existing.is_symlink():  # exists() follows it: the link leads nowhere
            return f"cannot create {folder}: {_broken_link(existing)}"
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create {folder}: {existing} is a file"
    try:
        with tempfile.TemporaryFile(dir=existing) as probe:
            probe.write(bytes(WRITE_PROBE_BYTES))
            probe.flush()
    except OSError as error:
        action = "write in" if existing == folder else f"create {folder} in"
        fix = ("free some space or choose another folder" if error.errno in (errno.ENOSPC, errno.EDQUOT)
               else "choose a writable folder")
        return f"cannot {action} {existing} ({error.strerror or error}); {fix}"
    return None


def _broken_link(link: Path) -> str:
    """What is wrong with a symbolic link that `Path.exists` says leads nowhere: a loop, or a missing target."""
    try:
        target = os.readlink(link)
    except OSError as error:
        return f"{link} is a symbolic link that cannot be read ({error.strerror or error})"
    try:
        os.stat(link)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return f"{link} is a symbolic link loop (-> {target}); give a path without the loop"
        if error.errno == errno.ENOENT:
            return f"{link} is a symbolic link to {target}, which does not exist"
        return f"{link} is a symbolic link that cannot be followed ({error.strerror or error})"
    return f"{link} is a symbolic link that could not be followed a moment ago"


def _check_output_folders(spec: GridSpec, report: _Report) -> None:
    """`experiments_dir`, `logs_dir` and the leaderboard's folder must be creatable and writable."""
    for key, value, folder in (("experiments_dir", spec.experiments_dir, spec.experiments_dir),
                               ("logs_dir", spec.logs_dir, spec.logs_dir),
                               ("leaderboard", spec.leaderboard, Path(spec.leaderboard).absolute().parent)):
        problem = writable_folder_problem(folder)
        if problem is None and key == "leaderboard" and Path(value).is_dir():
            problem = f"{Path(value).absolute()} is a folder, expected an html file path"
        if problem:
            report.error([], key, f"got '{value}': {problem}")


def _check_cache_dirs(runs: list[RunSpec], report: _Report) -> None:
    """The activation cache's folder (`models.cache.cache_dir`) of each run that reads the cache
    (`models.spec.cache_build_key`) must be creatable and writable; `$NBSWEEP_CACHE_DIR`, read when
    `cache_dir` is null, must be absolute (the kernel runs in the run folder, so a relative one would give
    each run a cache of its own). `cache_dir` itself is absolute already (`runner.grid.schema.PATH_PARAMS`)."""
    from models.spec import cache_build_key

    users = [run for run in runs if "base" in run.params and cache_build_key(run.spec) is not None]
    if not users:
        return
    from models.cache import CACHE_DIR_ENV, cache_dir

    for group in _group(users, lambda r: r.spec.cache_dir).values():
        given, folder = group[0].spec.cache_dir, cache_dir(group[0].spec)
        env = os.environ.get(CACHE_DIR_ENV)
        source = f"got '{given}'" if given else f"null reads ${CACHE_DIR_ENV}, '{env}'" if env else ""
        if not folder.is_absolute():
            report.error(group, "cache_dir", f"{source}, a relative path: each run would resolve it from its own "
                                             f"folder and build a cache of its own; give an absolute path")
            continue
        problem = writable_folder_problem(folder)
        if problem:
            report.error(group, "cache_dir", f"{source or f'null (the default folder {folder})'}: {problem}")


def _check_data_dirs(runs: list[RunSpec], report: _Report) -> dict[str, Any]:
    """List each distinct `data_dir` and try each distinct split of it, as `load_data` would.

    Returns:
        `data_dir` value → `models.data.ImageFolder`, or `None` when it could
        not be listed (an error was reported, or a builtin not exported yet).
    """
    from models.data import list_image_folder, resolve_data_dir, split_image_folder

    folders: dict[str, Any] = {}
    runs = [run for run in runs if isinstance(run.params.get("data_dir"), str)]
    for group in _group(runs, lambda r: r.spec.data_dir).values():
        data_dir = group[0].spec.data_dir
        folders[data_dir] = None
        try:
            root = resolve_data_dir(data_dir, export=False)
            if not root.is_dir():  # a builtin that its first run exports
                continue
            folders[data_dir] = folder = list_image_folder(root)
        except ModelConfigError as error:
            report.error(group, "data_dir", str(error))
            continue
        if folder.skipped_files:
            shown = "; ".join(f"{path} ({reason})" for path, reason in list(folder.skipped_files.items())[:3])
            more = len(folder.skipped_files) - 3
            report.warning(group, "data_dir", f"{root}: {len(folder.skipped_files)} file(s) in class folders "
                           f"will be skipped: {shown}{f'; and {more} more' if more > 0 else ''} (each run "
                           f"record lists them in data.skipped_files)")
    for group in _group(runs, lambda r: list(split_key(r.params))).values():
        folder = folders.get(group[0].spec.data_dir)
        if folder is not None:
            try:
                split_image_folder(folder, group[0].spec)
            except ModelConfigError as error:
                report.error(group, "data_dir", str(error))
    return folders


def _check_models(runs: list[RunSpec], report: _Report) -> None:
    """Base names, input sizes, `base_kwargs` and initial weights of every run."""
    runs = [run for run in runs if "base" in run.params]
    if not runs:  # a notebook without a base (models.bases would import Keras for nothing)
        return
    from models.bases import check_base_kwargs, check_image_size, resolve_base, resolve_weights

    infos, usable = {}, []  # keyed by ExperimentSpec.base, the canonical name
    for group in _group(runs, lambda r: r.spec.base).values():
        try:
            infos[group[0].spec.base] = resolve_base(group[0].spec.base)
        except ModelConfigError as error:
            report.error(group, "base", str(error))
    for group in _group([r for r in runs if r.spec.base in infos],
                        lambda r: [r.spec.base, r.spec.image_size, r.spec.base_kwargs]).values():
        spec = group[0].spec
        try:
            check_image_size(infos[spec.base], spec.image_size)
            check_base_kwargs(infos[spec.base], spec.base_kwargs)
        except ModelConfigError as error:
            report.error(group, "base", str(error))
            continue
        problem = _saved_base_problem(spec, infos[spec.base]) if infos[spec.base].is_saved_model else None
        if problem:
            report.error(group, "base", problem)
            continue
        usable += group

    weight_keys = ("base", "base_kwargs", "image_size", "weights", "weights_dir")
    fitted: dict[str, Optional[str]] = {}
    imagenet: list[list[RunSpec]] = []
    for group in _group(usable, lambda r: [getattr(r.spec, k) for k in weight_keys]).values():
        spec = group[0].spec
        info = infos[spec.base]
        try:
            choice = resolve_weights(spec, info)
        except ModelConfigError as error:
            report.error(group, "weights", str(error))
            continue
        if choice.source == "file":
            key = json.dumps([info.name, spec.base_kwargs, choice.path], sort_keys=True)
            if key not in fitted:
                fitted[key] = _weights_file_problem(spec, info)
            if fitted[key]:
                report.error(group, "weights", fitted[key])
        elif choice.source == "keras":
            imagenet.append(group)
    if imagenet:
        _check_imagenet_downloads(imagenet, infos, report)


def _weights_file_problem(spec: ExperimentSpec, info) -> Optional[str]:
    """Load the weights file into the base built at its minimum size (a saved model: at the run's size, which
    a fixed input may require); the error message, or `None`."""
    from models.bases import build_base

    try:
        build_base(spec if info.is_saved_model else spec.model_copy(update={"image_size": info.min_size}))
    except ModelConfigError as error:
        return str(error)
    return None


def _saved_base_problem(spec: ExperimentSpec, info) -> Optional[str]:
    """What keeps a saved-model base (`models.bases.saved`) from being built for `spec`: its file missing,
    not a Keras model loadable without custom objects, an input or output that is not an image's, a fixed
    input size other than `image_size`, or preprocessing unsaid; the message, or `None`."""
    from models.bases.saved import check_input_size, load_saved_model, preprocess_name, saved_model_path

    try:
        path = saved_model_path(spec, info)
        model = load_saved_model(path)
        check_input_size(model, path, spec.image_size)
        preprocess_name(spec, model, path)
    except ModelConfigError as error:
        return str(error)
    return None


def _check_imagenet_downloads(groups: list[list[RunSpec]], infos: dict, report: _Report) -> None:
    """`weights: imagenet` without an offline file needs Keras's cached file or a network.

    Keras is asked which file it would download (`models.bases.keras_imagenet_file`,
    once per base, base_kwargs and image size); when it is not in the cache,
    one connection to the download host (or its https proxy) is tried, once
    for the whole sweep.
    """
    from models.bases import WEIGHTS_DIR_ENV, imagenet_fix, keras_imagenet_file, offline_weights_file

    probes: dict[str, Optional[str]] = {}
    for group in groups:
        spec = group[0].spec
        info = infos[spec.base]
        try:
            wanted = keras_imagenet_file(spec, info)
        except ModelConfigError as error:
            report.error(group, "base", str(error))
            continue
        if wanted is None or wanted.cached_path is not None:
            continue
        host = urllib.parse.urlsplit(wanted.url).hostname or ""
        if host not in probes:
            probes[host] = network_problem(wanted.url)
        if probes[host] is None:
            continue
        env_folder = os.environ.get(WEIGHTS_DIR_ENV)
        if spec.weights_dir:
            searched = f"in weights_dir {spec.weights_dir}"
        elif env_folder:
            searched = f"in ${WEIGHTS_DIR_ENV}={env_folder}"
        else:
            searched = f"(no weights folder set: weights_dir, --weights-dir or ${WEIGHTS_DIR_ENV})"
        report.error(group, "weights", (
            f"got 'imagenet' for {info.name}, but there is no offline file "
            f"{offline_weights_file(info, spec.base_kwargs)} {searched}, no {wanted.name} in Keras's cache "
            f"({wanted.cache_paths[0].parent}) and no network ({probes[host]}). "
            f"{imagenet_fix(info, spec.base_kwargs)}"))


def network_problem(url: str) -> Optional[str]:
    """Whether a download from `url` can start: one TCP connection, `NETWORK_PROBE_TIMEOUT_S` at most.

    Connects to `NETWORK_PROBE_ADDRESS` when set, else to the https (or http)
    proxy that `urllib` would use for `url`, else to the URL's host (port 443
    for https). Name resolution is not covered by the timeout.

    Args:
        url: the download URL.

    Returns:
        `None` when the connection opened, else the reason, e.g.
        `"cannot connect to storage.googleapis.com:443: [Errno -3] ..."`.
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and host and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname, proxied.port or 80
    if NETWORK_PROBE_ADDRESS is not None:
        host, port = NETWORK_PROBE_ADDRESS
    try:
        with socket.create_connection((host, port), timeout=NETWORK_PROBE_TIMEOUT_S):
            return None
    except OSError as error:
        return f"cannot connect to {host}:{port} within {NETWORK_PROBE_TIMEOUT_S:g} s: {error}"


def _check_warm_starts(runs: list[RunSpec], logs_dir: Path, folders: dict[str, Any], report: _Report) -> None:
    """A `warm_start` run id, name or prefix must name a completed run with the same architecture and classes.

    `best`, and the `name` of an earlier run of this sweep, are left to the
    run's start; both go through the one resolution, `runner.core.warm_start.resolve_warm_start`.
    """
    from runner.core.warm_start import ARCHITECTURE_PARAMS, resolve_warm_start
    from runner.records.query import read_all

    named_earlier = {r.params.get("name"): r.index for r in runs if r.params.get("name")}
    # `best`, and a name an earlier run of this sweep will have, are resolved when the run starts
    explicit = [r for r in runs if r.params.get("warm_start") not in (None, "best")
                and named_earlier.get(r.params["warm_start"], r.index) >= r.index]
    if not explicit:
        return
    found = read_all(logs_dir)
    keys = ("warm_start", "warm_start_checkpoint", "data_dir", *ARCHITECTURE_PARAMS)
    for group in _group(explicit, lambda r: [r.params.get(k) for k in keys]).values():
        params = group[0].params
        folder = folders.get(params.get("data_dir"))
        try:
            resolve_warm_start(params, found, class_names=folder.class_names if folder is not None else None)
        except ConfigError as error:
            report.error(group, "warm_start", str(error))


def _check_run_names(runs: list[RunSpec], logs_dir: Path, report: _Report) -> None:
    """A run `name` is unique: in this sweep, and in the logs folder (unless it is the same configuration again).

    A name that an unreadable record gives itself (`RecordSet.unreadable_names`: a newer schema, say) is
    refused whatever the configuration: that run cannot be known to be done, and a second record of the
    name would make the name ambiguous."""
    named = [r for r in runs if r.params.get("name") is not None]
    if not named:
        return
    from runner.records.query import read_all

    found = read_all(logs_dir)
    taken = {rec.name: rec for rec in found.records if rec.name}
    unreadable = {name: file for file, name in found.unreadable_names().items()}
    for group in _group(named, lambda r: r.params.get("name")).values():
        name = group[0].params["name"]
        hashes = {r.config_hash for r in group}
        if len(hashes) > 1:
            report.error(group, "name", f"got {name!r} for {len(group)} different runs; a name names one run")
        elif name in taken and taken[name].config_hash not in hashes:
            report.error(group, "name", f"got {name!r}, already the name of run {taken[name].run_id} "
                         f"(another configuration) in {logs_dir}; choose another name")
        elif name in unreadable and name not in taken:
            file = unreadable[name]
            report.error(group, "name", f"got {name!r}, the name of the record {file} in {logs_dir}, which this "
                         f"version cannot read ({found.unreadable[file]}); its run is not known to be done and a "
                         f"second record would share its name: read it with the version that wrote it, move it "
                         f"out of {logs_dir}, or choose another name")
