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
cached), and the Keras / TensorFlow versions. Entries live in
`<cache_dir>/<key>/` as one `.npy` file per array plus `meta.json` (array
shapes, dtype and sha256); they are written to a temporary folder and
renamed into place, and every read checks each array's sha256, so a
half-written or corrupted entry is never read: it is deleted and rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from .hashing import sha256_file, sha256_json
from .data import DataSplit, make_dataset
from .names import PROJECT_ROOT
from .spec import ExperimentSpec, bypass_reason, cache_entry_inputs

CACHE_FORMAT = 2
"""Version of the entry layout; part of every key."""
CACHE_DIR_ENV = "NBSWEEP_CACHE_DIR"
DEFAULT_CACHE_DIR = PROJECT_ROOT / ".cache" / "activations"
META_FILE = "meta.json"
BUILD_BATCH_SIZE = 32
"""Images per forward pass while building an entry (does not change the numbers)."""
HIT, BUILT, BYPASSED, OFF = "hit", "built", "bypassed", "off"
"""How a phase got its inputs (`CacheUse.status`)."""


class CacheBypass(Exception):
    """The cache does not apply to this phase; the message says why."""


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


def weights_digest(model: keras.Model) -> str:
    """sha256 hex of a model's weight values (names, shapes, dtypes and bytes, in order)."""
    digest = hashlib.sha256()
    for variable in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        digest.update(f"{variable.path}|{value.shape}|{value.dtype}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


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
        "frozen_weights_sha256": weights_digest(split.frozen),
        "data_manifest": data.manifest_hash,
        "cut_layer": split.cut_layer,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
    }
    key = sha256_json(inputs)[:32]
    return key, inputs


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

    def load(self, key: str, names: Optional[list[str]] = None) -> Optional[dict[str, np.ndarray]]:
        """Reads an entry's arrays, memory-mapped, after checking each one's size and sha256.

        Args:
            key: the entry.
            names: the arrays to read; all when `None`.

        Returns:
            `{name: read-only memory-mapped np.ndarray}`, or `None` when the
            entry does not exist, or is incomplete or corrupted (it is then
            deleted, so the caller rebuilds it).
        """
        folder = self.entry(key)
        if not folder.is_dir():
            return None
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            arrays = {}
            for name in names or list(meta["arrays"]):
                path, expected = folder / f"{name}.npy", meta["arrays"][name]
                if path.stat().st_size != expected["bytes"] or sha256_file(path) != expected["sha256"]:
                    raise ValueError(f"{path.name}: size or sha256 differs from {META_FILE}")
                arrays[name] = np.load(path, mmap_mode="r")
            return arrays
        except (OSError, ValueError, KeyError) as exc:
            self._discard(folder, f"corrupted entry ({type(exc).__name__}: {exc})")
            return None

    def store(self, key: str, inputs: dict, arrays: dict[str, np.ndarray], build_s: float) -> Path:
        """Writes an entry atomically: a temporary folder, fsynced, renamed to `<root>/<key>`.

        If another process renamed the same entry into place first, its
        entry is kept and this one dropped.

        Returns:
            The entry folder.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            meta = {"key": key, "inputs": inputs, "build_s": round(build_s, 3),
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "arrays": {}}
            for name, array in arrays.items():
                path = tmp / f"{name}.npy"
                with open(path, "wb") as handle:
                    np.save(handle, array)
                    handle.flush()
                    os.fsync(handle.fileno())
                meta["arrays"][name] = {"shape": list(array.shape), "dtype": str(array.dtype),
                                        "bytes": path.stat().st_size, "sha256": sha256_file(path)}
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
        return self.entry(key)

    def get_or_build(self, key: str, inputs: dict, compute: Callable[[], dict[str, np.ndarray]]
                     ) -> tuple[dict[str, np.ndarray], str, float]:
        """Returns an entry's arrays, building and storing them first when needed.

        Builders of the same key take turns on an `fcntl` lock file
        (`<root>/.<key>.lock`), so concurrent runs of a sweep compute an
        entry once: the second one waits and then reads it.

        Args:
            key, inputs: from `cache_key`.
            compute: returns the arrays of a new entry.

        Returns:
            `(arrays, status, build_s)`: `status` is `HIT` or `BUILT`;
            `build_s` is the wall-clock seconds spent computing and writing
            (0 for a hit). An entry that cannot be written (disk full,
            read-only folder) is only warned about: the computed arrays are
            still returned.
        """
        arrays = self.load(key)
        if arrays is not None:
            return arrays, HIT, 0.0
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{key}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            arrays = self.load(key)
            if arrays is not None:
                return arrays, HIT, 0.0
            start = time.perf_counter()
            arrays = compute()
            try:
                self.store(key, inputs, arrays, time.perf_counter() - start)
            except OSError as exc:  # e.g. disk full: this run goes on with what it computed
                warnings.warn(f"activation cache {self.root}: could not store entry {key} ({exc}); "
                              f"later runs will compute it again", RuntimeWarning, stacklevel=2)
            return arrays, BUILT, time.perf_counter() - start

    def _discard(self, folder: Path, reason: str) -> None:
        warnings.warn(f"activation cache {folder}: {reason}; rebuilding it", RuntimeWarning, stacklevel=3)
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
            copies, `train_aug_<i>` per copy; float32 or float16,
            memory-mapped.
        info: the record's description of this use: `status`, `key`,
            `cut_layer`, `dtype`, `augmented_copies`, `build_s`, `entry`,
            `shapes`.
    """

    split: FrozenSplit
    arrays: dict[str, np.ndarray]
    info: dict


def cached_inputs(model: keras.Model, data: DataSplit, spec: ExperimentSpec, trainable_base_layers: int,
                  *, build: bool = True, names: Optional[list[str]] = None) -> CachedInputs:
    """The frozen layers' outputs for a phase, from the cache or computed and stored now.

    Args:
        model: a model from `build_model`, weights already set (warm start
            included).
        data: the split.
        spec: the run's parameters (`activation_cache`, `cache_dir`,
            `activation_cache_dtype`, `augmentation`, `augmented_copies`).
        trainable_base_layers: see `split_model`.
        build: compute and store a missing entry; when `False` a missing
            entry raises `CacheBypass`.
        names: with `build=False`, the arrays to read (all when `None`).

    Returns:
        The `CachedInputs`.

    Raises:
        CacheBypass: the cache does not apply (see `bypass_reason` and
            `split_model`), or the entry is missing and `build` is `False`.
    """
    reason = bypass_reason(spec)
    if reason:
        raise CacheBypass(reason)
    split = split_model(model, spec, trainable_base_layers)
    key, inputs = cache_key(spec, data, split)
    cache = ActivationCache(cache_dir(spec))

    def compute() -> dict[str, np.ndarray]:
        def outputs(part, **augment):
            dataset = make_dataset(part, spec.image_size, BUILD_BATCH_SIZE, **augment)
            return split.frozen.predict(dataset, verbose=0).astype(spec.activation_cache_dtype)

        copies = inputs["augmented_copies"]
        arrays = {name: outputs(getattr(data, name)) for name in ("val", "test", *(["train"] * (not copies)))
                  if len(getattr(data, name))}  # train_on_val: no validation images
        for copy in range(copies):
            arrays[f"train_aug_{copy}"] = outputs(data.train, seed=spec.seed + copy,
                                                  augmentation=spec.augmentation)
        return arrays

    if build:
        arrays, status, build_s = cache.get_or_build(key, inputs, compute)
    else:
        arrays, status, build_s = cache.load(key, names), HIT, 0.0
        if arrays is None:
            raise CacheBypass(f"no entry {key} in {cache.root}")
    info = {"status": status, "key": key, "cut_layer": split.cut_layer, "dtype": spec.activation_cache_dtype,
            "augmented_copies": inputs["augmented_copies"], "build_s": round(build_s, 3),
            "entry": str(cache.entry(key)), "shapes": {k: list(v.shape) for k, v in arrays.items()}}
    return CachedInputs(split=split, arrays=arrays, info=info)


def feature_dataset(features: list[np.ndarray], labels: np.ndarray, batch_size: int, *,
                    shuffle: bool = False, seed: int = 0, num_classes: Optional[int] = None) -> tf.data.Dataset:
    """Batches of cached features, as `make_dataset` batches images.

    Args:
        features: one or more arrays `(n, ...)` of the same split (several
            augmented copies are pooled; an epoch then draws `n` of the
            `len(features) * n` rows).
        labels: int `(n,)` labels of the split.
        batch_size: rows per batch.
        shuffle: reshuffle every epoch (the same `seed` as `make_dataset`,
            so the same order).
        seed: shuffle seed.
        num_classes: when given, labels are one-hot float32, as
            `make_dataset(..., num_classes=)` gives them (label smoothing).
            Defaults to `None`.

    Returns:
        A `tf.data.Dataset` of `(float32 features, labels)`: labels int32
        `(batch,)`, or float32 `(batch, num_classes)` with `num_classes`.
    """
    n = len(labels)
    x = np.concatenate(features) if len(features) > 1 else np.asarray(features[0])
    y = np.tile(np.asarray(labels, dtype=np.int32), len(features))
    dataset = tf.data.Dataset.from_tensor_slices((x.astype(np.float32, copy=False), y))
    if shuffle:
        dataset = dataset.shuffle(len(y), seed=seed, reshuffle_each_iteration=True).take(n)
    dataset = dataset.batch(batch_size)
    if num_classes is not None:
        dataset = dataset.map(lambda x, labels: (x, tf.one_hot(labels, num_classes)))
    return dataset.prefetch(tf.data.AUTOTUNE)
