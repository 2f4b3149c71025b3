"""Activation cache: the outputs of a run's frozen layers, computed once and reused.

With a frozen base, every epoch of every run of a sweep pushes the same
images through the same frozen layers. This module cuts a model from
`build_model` at its freeze boundary into

- the *frozen part*: raw pixels → resize → preprocess → base layers up to the
  cut, run once per split and stored on disk, and
- the *top part*: the layers above the cut (the unfrozen top of the base when
  fine-tuning, then the head), trained on the stored outputs. Its layers are
  the full model's own layers (shared, not copied), so training the top part
  trains the full model, and `model.keras` stays the full model.

An entry is keyed on everything that changes the numbers: the base and its
kwargs, a sha256 of the frozen layers' weight values (so ImageNet files,
local weights files and warm starts are all covered), the image size, the
split manifest (file list, split, labels, file sizes), the cut layer, the
storage dtype, the augmentation and number of augmented copies (when
cached), the entry format (`CACHE_FORMAT`) and the Keras / TensorFlow
versions. An entry of another format has another key, so it is never read
(it is rebuilt under the new key).

Memory does not grow with the data. An entry lives in `<cache_dir>/<key>/`
as one `.npy` file per array plus `meta.json`. It is built batch by batch:
the images are read from their files `BUILD_BATCH_SIZE` at a time
(`make_dataset(stream=True)`), pushed through the frozen part and each
batch's outputs appended to its file (`ArrayWriter`), so no split is ever
held in memory. Training, validation and evaluation read it batch by batch
through memory maps (`models.data.batch_arrays`), so the rows live in the
page cache (file-backed pages, which the kernel can drop), not in the
process's anonymous memory.

Integrity costs no extra pass. Each array is cut into chunks of about
`CHUNK_BYTES` and the CRC-32 of every chunk is written to `meta.json` at
build time. Opening an entry checks only the cheap facts: `meta.json` is
there and of this format, each file's `.npy` header gives the recorded
shape and dtype, and its size is the header plus the rows. A chunk's
CRC-32 is checked the first time a batch reads one of its rows in this
process (`VerifiedArray`), so checking costs one CRC-32 over what training
reads anyway (about 4 GB/s on one core). A chunk that fails raises
`CacheDamaged` and the entry is deleted; `models.training.train_model`
then trains again from the start on a rebuilt entry, and evaluation falls
back to the images. Entries are written to a temporary folder and renamed
into place, so a half-written entry is never read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
import uuid
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from .errors import NbsweepError
from .hashing import sha256_json
from .data import DataSplit, make_dataset
from .names import PROJECT_ROOT
from .saving import frozen_weights_digest
from .spec import ExperimentSpec, bypass_reason, cache_entry_inputs

CACHE_FORMAT = 3
"""Version of the entry layout; part of every key (3: streamed `.npy` files with per-chunk CRC-32)."""
CACHE_DIR_ENV = "NBSWEEP_CACHE_DIR"
DEFAULT_CACHE_DIR = PROJECT_ROOT / ".cache" / "activations"
META_FILE = "meta.json"
BUILD_BATCH_SIZE = 32
"""Images per forward pass while building an entry (does not change the numbers)."""
CHUNK_BYTES = 4 * 1024 ** 2
"""Target bytes of one checksummed chunk of an array (whole rows, at least one): the unit read and
checked at once the first time a row of it is read."""
HIT, BUILT, BYPASSED, OFF = "hit", "built", "bypassed", "off"
"""How a phase got its inputs (`CacheUse.status`)."""


class CacheBypass(Exception):
    """The cache does not apply to this phase; the message says why."""


class CacheDamaged(NbsweepError):
    """A stored chunk's bytes differ from its recorded CRC-32; the entry has been deleted."""


_damage_reports: list[str] = []
_damage_lock = threading.Lock()


def take_damage_reports() -> list[str]:
    """The `CacheDamaged` messages raised in this process since the last call, and forgets them.

    A damaged chunk is found inside a `tf.data` pipeline, where TensorFlow
    re-raises the error as a `tf.errors.OpError`; this is how the training
    loop learns that the error was a damaged entry (already deleted), so it
    can train again on a rebuilt one.

    Returns:
        The messages, oldest first (empty when nothing was damaged).
    """
    with _damage_lock:
        reports = list(_damage_reports)
        _damage_reports.clear()
    return reports


def cache_dir(spec: ExperimentSpec) -> Path:
    """The cache folder: `spec.cache_dir`, else `$NBSWEEP_CACHE_DIR`, else `<project>/.cache/activations`."""
    return Path(spec.cache_dir or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


@dataclass
class FrozenSplit:
    """A model cut at its freeze boundary.

    Attributes:
        frozen: float32 images `(batch, s, s, 3)` in [0, 255] → the cut
            layer's output; every layer in it is frozen.
        top: the cut layer's output → class probabilities; shares its layers
            (and so its weights) with the full model.
        cut_layer: name of the base layer whose output is cached.
    """

    frozen: keras.Model
    top: keras.Model
    cut_layer: str


def split_model(model: keras.Model, spec: ExperimentSpec, trainable_base_layers: int) -> FrozenSplit:
    """Cuts a model from `build_model` below its trainable base layers.

    The base is called with `training=False` in both parts, as in the full
    model, so BatchNormalization layers keep using their moving statistics.

    Args:
        model: a model from `build_model`.
        spec: its parameters.
        trainable_base_layers: how many of the base's last layers are (or
            will be) trained: 0 for the head phase, the count
            `models.training.resolve_fine_tune_layers(model, spec)` for
            fine-tuning (an int, never the raw fraction or `from_layer`).

    Returns:
        The `FrozenSplit`.

    Raises:
        CacheBypass: the base is trained from scratch, every base layer is
            trainable, or the cut falls inside a block whose later layers
            also read earlier outputs (e.g. inside a ResNet residual block).
        TypeError: `trainable_base_layers` is not an int.
    """
    if isinstance(trainable_base_layers, bool) or not isinstance(trainable_base_layers, (int, np.integer)):
        raise TypeError(f"trainable_base_layers: got {trainable_base_layers!r}, expected a layer count; "
                        f"resolve spec.fine_tune_layers with models.training.resolve_fine_tune_layers first")
    if spec.from_scratch:
        raise CacheBypass("the base is trained from scratch: no frozen layers")
    base = model.get_layer("base")
    cut_index = len(base.layers) - 1 - trainable_base_layers
    if cut_index < 1:  # layers[0] is the base's InputLayer
        raise CacheBypass(f"fine_tune_layers={trainable_base_layers} unfreezes the whole base")
    cut = base.layers[cut_index]
    image = keras.Input((spec.image_size, spec.image_size, 3), name="image")
    x = model.get_layer("preprocess")(model.get_layer("resize")(image))
    frozen = keras.Model(image, keras.Model(base.input, cut.output)(x, training=False), name="frozen")
    features = keras.Input(cut.output.shape[1:], name="features")
    x = features
    if trainable_base_layers:
        try:
            x = keras.Model(cut.output, base.output, name="base_top")(x, training=False)
        except ValueError as exc:  # a later layer needs a tensor from below the cut
            raise CacheBypass(f"the freeze boundary after {cut.name!r} is not a single tensor: {exc}") from None
    for layer in model.layers[model.layers.index(base) + 1:]:  # the head: a chain of layers
        x = layer(x)
    return FrozenSplit(frozen=frozen, top=keras.Model(features, x, name="top"), cut_layer=cut.name)


def cache_key(spec: ExperimentSpec, data: DataSplit, split: FrozenSplit) -> tuple[str, dict]:
    """The key of the entry holding `split.frozen`'s outputs on `data`.

    Returns:
        `(key, inputs)`: `key` is the first 32 hex digits of the sha256 of
        `inputs`, the JSON-safe dict of everything that changes the numbers
        (see the module docstring): the spec's own part from
        `models.spec.cache_entry_inputs` (which `models.spec.cache_build_key`
        hashes too, so the search's cost model and this key cannot drift
        apart), plus the frozen weights' sha256, the split manifest, the cut
        layer and the Keras / TensorFlow versions.
    """
    inputs = {
        "format": CACHE_FORMAT,
        **cache_entry_inputs(spec),
        "frozen_weights_sha256": frozen_weights_digest(split.frozen.weights),
        "data_manifest": data.manifest_hash,
        "cut_layer": split.cut_layer,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
    }
    key = sha256_json(inputs)[:32]
    return key, inputs


def _chunk_rows(row_bytes: int) -> int:
    """Rows per checksummed chunk for rows of `row_bytes` bytes: `CHUNK_BYTES` of whole rows, at least one."""
    return max(1, CHUNK_BYTES // max(1, row_bytes))


class ArrayWriter:
    """Writes one `.npy` array row batch by row batch, with the CRC-32 of every chunk.

    The file is a standard `.npy` file (`np.load` reads it, memory-mapped or
    not); the header is written first, from the final shape, then the rows
    as they come. Nothing but the current batch is in memory.

    Args:
        path: the file to create.
        shape: the final shape `(n, ...)`.
        dtype: the stored dtype (float32 or float16); rows are cast to it.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype):
        self.path, self.shape, self.dtype = Path(path), tuple(int(d) for d in shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.chunk_rows = _chunk_rows(self.row_bytes)
        self.rows_written, self.crc32 = 0, []
        self._crc = 0
        self._handle = open(self.path, "wb")
        np.lib.format.write_array_header_1_0(self._handle, {
            "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape})

    def write(self, rows: np.ndarray) -> None:
        """Appends rows `(batch, ...)`, cast to the stored dtype.

        Raises:
            ValueError: the rows' shape is not the array's row shape, or more
                rows than `shape[0]` would be written.
        """
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.rows_written + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path.name}: rows {rows.shape} after {self.rows_written} do not fit {self.shape}")
        start = 0
        while start < len(rows):  # split the batch at chunk boundaries
            in_chunk = self.rows_written % self.chunk_rows
            stop = min(len(rows), start + self.chunk_rows - in_chunk)
            part = rows[start:stop]
            self._handle.write(part.tobytes())
            self._crc = zlib.crc32(part, self._crc)
            self.rows_written += stop - start
            if self.rows_written % self.chunk_rows == 0:
                self.crc32.append(self._crc)
                self._crc = 0
            start = stop

    def close(self) -> dict:
        """Flushes and fsyncs the file.

        Returns:
            Its `meta.json` description: `shape`, `dtype`, `bytes`,
            `chunk_rows`, `crc32` (one int per chunk).

        Raises:
            ValueError: fewer rows than `shape[0]` were written.
        """
        if self.rows_written != self.shape[0]:
            self._handle.close()
            raise ValueError(f"{self.path.name}: {self.rows_written} rows written of {self.shape[0]}")
        if self.rows_written % self.chunk_rows:
            self.crc32.append(self._crc)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        return {"shape": list(self.shape), "dtype": str(self.dtype), "bytes": self.path.stat().st_size,
                "chunk_rows": self.chunk_rows, "crc32": self.crc32}


_verified: dict[tuple, np.ndarray] = {}
_verified_lock = threading.Lock()


class VerifiedArray:
    """A stored array, memory-mapped, whose chunks are checked against their CRC-32 when first read.

    What a process has verified is remembered per file (path, inode, size,
    modification time), so the phases and the evaluation of one run check
    each chunk once. Reading is `take(indices, axis=0)`, numpy's signature,
    so `models.data.batch_arrays` reads it like an array.

    Args:
        path: the `.npy` file.
        array: its read-only memory map.
        chunk_rows, crc32: from `meta.json`.
        on_damage: called with the message before `CacheDamaged` is raised
            (the cache deletes the entry there).
    """

    def __init__(self, path: Path, array: np.memmap, chunk_rows: int, crc32: list[int],
                 on_damage: Callable[[str], None]):
        self.path, self.array, self.chunk_rows, self.crc32 = path, array, int(chunk_rows), list(crc32)
        self.on_damage = on_damage
        stat = path.stat()
        key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with _verified_lock:
            self._checked = _verified.setdefault(key, np.zeros(len(self.crc32), dtype=bool))

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape `(n, ...)`."""
        return self.array.shape

    @property
    def dtype(self) -> np.dtype:
        """The stored dtype."""
        return self.array.dtype

    def __len__(self) -> int:
        return len(self.array)

    def mark_verified(self) -> None:
        """Records every chunk as checked (the builder computed the CRC-32s from these very bytes)."""
        self._checked[:] = True

    def verify(self, chunks) -> None:
        """Checks the given chunk indices not checked yet in this process.

        Raises:
            CacheDamaged: a chunk's CRC-32 differs from `meta.json`'s.
        """
        for chunk in np.unique(np.asarray(chunks, dtype=np.int64)):
            if self._checked[chunk]:
                continue
            rows = self.array[chunk * self.chunk_rows:(chunk + 1) * self.chunk_rows]
            if zlib.crc32(rows) != self.crc32[chunk]:
                message = (f"{self.path}: chunk {chunk} (rows {chunk * self.chunk_rows}-"
                           f"{chunk * self.chunk_rows + len(rows) - 1}) differs from its CRC-32 in {META_FILE}")
                self.on_damage(message)
                raise CacheDamaged(message)
            self._checked[chunk] = True

    def take(self, indices, axis: int = 0) -> np.ndarray:
        """Rows `indices` (any order, repeats allowed) as an in-memory array, after checking their chunks.

        Args:
            indices: int `(k,)` row indices.
            axis: must be 0.

        Returns:
            `(k, ...)` array of the stored dtype.

        Raises:
            CacheDamaged: see `verify`.
            ValueError: `axis` is not 0.
        """
        if axis != 0:
            raise ValueError(f"axis: got {axis}, expected 0 (rows)")
        indices = np.asarray(indices, dtype=np.int64)
        self.verify(indices // self.chunk_rows)
        return self.array.take(indices, axis=0)

    def __array__(self, dtype=None, copy=None):
        """The whole array copied into memory, every chunk checked first (for tests and small arrays)."""
        self.verify(np.arange(len(self.crc32)))
        return np.array(self.array, dtype=dtype)


class ActivationCache:
    """Entries of frozen-layer outputs in one folder (see the module docstring).

    Args:
        root: the cache folder (created on the first write).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def entry(self, key: str) -> Path:
        """The folder of entry `key`."""
        return self.root / key

    def load(self, key: str, names: Optional[list[str]] = None) -> Optional[dict[str, VerifiedArray]]:
        """Opens an entry's arrays, memory-mapped, after checking what costs no read of the rows.

        Checked here: `meta.json` is readable and of `CACHE_FORMAT`; each
        array's file exists, its `.npy` header gives the recorded shape and
        dtype, and its size is the recorded one. The rows' CRC-32s are
        checked as they are read (`VerifiedArray`).

        Args:
            key: the entry.
            names: the arrays to open; all when `None`.

        Returns:
            `{name: VerifiedArray}`, or `None` when the entry does not exist,
            or is incomplete, of another format or damaged (it is then
            deleted, so the caller rebuilds it).
        """
        folder = self.entry(key)
        if not folder.is_dir():
            return None
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            if meta.get("format") != CACHE_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {CACHE_FORMAT}")
            arrays = {}
            for name in names or list(meta["arrays"]):
                path, expected = folder / f"{name}.npy", meta["arrays"][name]
                if path.stat().st_size != expected["bytes"]:
                    raise ValueError(f"{path.name}: {path.stat().st_size} bytes, {META_FILE} says {expected['bytes']}")
                array = np.load(path, mmap_mode="r")
                if list(array.shape) != expected["shape"] or str(array.dtype) != expected["dtype"]:
                    raise ValueError(f"{path.name}: header gives {array.shape} {array.dtype}, {META_FILE} says "
                                     f"{expected['shape']} {expected['dtype']}")
                arrays[name] = VerifiedArray(path, array, expected["chunk_rows"], expected["crc32"],
                                             on_damage=lambda message: self.discard(folder, message, report=True))
            return arrays
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.discard(folder, f"corrupted entry ({type(exc).__name__}: {exc})")
            return None

    def build(self, key: str, inputs: dict, write: Callable[[Path], dict[str, dict]]) -> float:
        """Builds an entry atomically: `write` fills a temporary folder, which is renamed to `<root>/<key>`.

        If another process renamed the same entry into place first, its
        entry is kept and this one dropped.

        Args:
            key, inputs: from `cache_key`.
            write: writes the arrays into the folder it is given and returns
                their descriptions (`ArrayWriter.close`), by name.

        Returns:
            The wall-clock seconds spent, building and writing.

        Raises:
            OSError: the entry cannot be written (disk full, read-only
                folder); nothing is left behind.
        """
        start = time.perf_counter()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            arrays = write(tmp)
            build_s = time.perf_counter() - start
            meta = {"format": CACHE_FORMAT, "key": key, "inputs": inputs, "build_s": round(build_s, 3),
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "arrays": arrays}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
            try:
                tmp.rename(self.entry(key))
            except OSError:
                if not self.entry(key).is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another writer's complete entry is there
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return time.perf_counter() - start

    def get_or_build(self, key: str, inputs: dict, write: Callable[[Path], dict[str, dict]],
                     names: Optional[list[str]] = None) -> tuple[dict[str, VerifiedArray], str, float]:
        """Opens an entry, building it first when needed.

        Builders of the same key take turns on an `fcntl` lock file
        (`<root>/.<key>.lock`), so concurrent runs of a sweep compute an
        entry once: the second one waits and then reads it.

        Args:
            key, inputs: from `cache_key`.
            write: see `build`.
            names: the arrays to open; all when `None`.

        Returns:
            `(arrays, status, build_s)`: `status` is `HIT` or `BUILT`;
            `build_s` is the wall-clock seconds spent computing and writing
            (0 for a hit). A built entry's chunks count as checked in this
            process.

        Raises:
            CacheBypass: the entry could not be written (disk full, read-only
                folder): the phase then reads the images instead.
        """
        arrays = self.load(key, names)
        if arrays is not None:
            return arrays, HIT, 0.0
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.root / f".{key}.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                arrays = self.load(key, names)
                if arrays is not None:
                    return arrays, HIT, 0.0
                build_s = self.build(key, inputs, write)
        except OSError as exc:  # e.g. disk full: this phase goes on without the cache
            raise CacheBypass(f"activation cache {self.root}: could not store entry {key} ({exc})") from None
        arrays = self.load(key, names)
        if arrays is None:
            raise CacheBypass(f"activation cache {self.root}: entry {key} unreadable right after it was built")
        for array in arrays.values():
            array.mark_verified()
        return arrays, BUILT, build_s

    def discard(self, folder: Path, reason: str, *, report: bool = False) -> None:
        """Deletes a damaged entry (renamed away first, so no reader opens it half-deleted), with a warning.

        Args:
            folder: the entry's folder.
            reason: why, for the warning.
            report: also add it to `take_damage_reports` (damage found while
                rows were read, inside a `tf.data` pipeline). Defaults to
                `False`.
        """
        warnings.warn(f"activation cache {folder}: {reason}; rebuilding it", RuntimeWarning, stacklevel=3)
        if report:
            with _damage_lock:
                _damage_reports.append(f"{folder}: {reason}")
        trash = folder.with_name(f".trash-{folder.name}-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(OSError):
            folder.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)


@dataclass
class CachedInputs:
    """A phase's training inputs taken from the cache.

    Attributes:
        split: the cut model.
        arrays: `val` and `test` features, and `train` or, with augmented
            copies, `train_aug_<i>` per copy: `VerifiedArray`s (float32 or
            float16, memory-mapped), read in batches with
            `models.data.batch_arrays`.
        info: the record's description of this use: `status`, `key`,
            `cut_layer`, `dtype`, `augmented_copies`, `build_s`, `entry`,
            `shapes`.
    """

    split: FrozenSplit
    arrays: dict[str, VerifiedArray]
    info: dict


def cached_inputs(model: keras.Model, data: DataSplit, spec: ExperimentSpec, trainable_base_layers: int,
                  *, build: bool = True, names: Optional[list[str]] = None) -> CachedInputs:
    """The frozen layers' outputs for a phase, from the cache or computed and stored now.

    A build reads the images from their files `BUILD_BATCH_SIZE` at a time
    and appends each batch's outputs to the entry's files, so its memory does
    not grow with the split (see the module docstring).

    Args:
        model: a model from `build_model`, weights already set (warm start
            included).
        data: the split.
        spec: the run's parameters (`activation_cache`, `cache_dir`,
            `activation_cache_dtype`, `augmentation`, `augmented_copies`).
        trainable_base_layers: see `split_model`.
        build: compute and store a missing entry; when `False` a missing
            entry raises `CacheBypass`.
        names: the arrays to open (all when `None`).

    Returns:
        The `CachedInputs`.

    Raises:
        CacheBypass: the cache does not apply (see `bypass_reason` and
            `split_model`), the entry is missing and `build` is `False`, or
            it could not be stored.
    """
    reason = bypass_reason(spec)
    if reason:
        raise CacheBypass(reason)
    split = split_model(model, spec, trainable_base_layers)
    key, inputs = cache_key(spec, data, split)
    cache = ActivationCache(cache_dir(spec))
    row_shape = tuple(int(d) for d in split.frozen.output.shape[1:])

    def write(folder: Path) -> dict[str, dict]:
        def outputs(name, part, **augment) -> dict:
            writer = ArrayWriter(folder / f"{name}.npy", (len(part), *row_shape), spec.activation_cache_dtype)
            for images, _ in make_dataset(part, spec.image_size, BUILD_BATCH_SIZE, stream=True, **augment):
                writer.write(split.frozen.predict_on_batch(images))
            return writer.close()

        copies = inputs["augmented_copies"]
        arrays = {name: outputs(name, getattr(data, name)) for name in ("val", "test", *(["train"] * (not copies)))
                  if len(getattr(data, name))}  # train_on_val: no validation images
        for copy in range(copies):
            arrays[f"train_aug_{copy}"] = outputs(f"train_aug_{copy}", data.train, seed=spec.seed + copy,
                                                  augmentation=spec.augmentation)
        return arrays

    if build:
        arrays, status, build_s = cache.get_or_build(key, inputs, write, names)
    else:
        arrays, status, build_s = cache.load(key, names), HIT, 0.0
        if arrays is None:
            raise CacheBypass(f"no entry {key} in {cache.root}")
    info = {"status": status, "key": key, "cut_layer": split.cut_layer, "dtype": spec.activation_cache_dtype,
            "augmented_copies": inputs["augmented_copies"], "build_s": round(build_s, 3),
            "entry": str(cache.entry(key)), "shapes": {k: list(v.shape) for k, v in arrays.items()}}
    return CachedInputs(split=split, arrays=arrays, info=info)
