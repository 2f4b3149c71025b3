"""Image folders: the builtin digits export, the stratified split, `tf.data` input.

An image folder is laid out as Keras's `image_dataset_from_directory` expects
(one sub-folder of images per class, the sub-folder name is the class name).
`load_data` lists it and splits it once, deterministically; `make_dataset`
turns one part of the split into batches of raw RGB pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .augment import build_augmentation
from .errors import ModelConfigError
from .spec import Augmentation, ExperimentSpec

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
DATA_HOME_ENV = "NBSWEEP_DATA_HOME"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")
BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class SplitPart:
    """One part (train, val or test) of a split.

    Attributes:
        paths: image file paths, a 1-D `np.ndarray` of `str`.
        labels: class indices into `DataSplit.class_names`, `np.ndarray` of
            int32 with the same length as `paths`.
    """

    paths: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DataSplit:
    """An image folder split into stratified train, val and test parts.

    Attributes:
        data_dir: the resolved image folder.
        class_names: sorted class sub-folder names; label `i` is
            `class_names[i]`.
        train: the training part.
        val: the validation part (early stopping, checkpoints, schedules).
        test: the held-out test part.
        manifest_hash: sha256 hex digest of the sorted
            `(split, relative path, label, file size in bytes)` rows: equal
            hashes mean the same files in the same splits.
    """

    data_dir: Path
    class_names: list[str]
    train: SplitPart
    val: SplitPart
    test: SplitPart
    manifest_hash: str

    def describe(self) -> dict:
        """Summarises the split for a run record.

        Returns:
            A JSON-safe dict `{"dir": str, "class_names": [str],
            "counts": {"train" | "val" | "test": {class name: int}},
            "manifest_hash": str}`.
        """
        counts = {
            split: dict(zip(self.class_names, np.bincount(
                getattr(self, split).labels, minlength=len(self.class_names)).tolist()))
            for split in SPLITS
        }
        return {"dir": str(self.data_dir), "class_names": list(self.class_names),
                "counts": counts, "manifest_hash": self.manifest_hash}


def _is_image(path: Path) -> bool:
    return (not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
            and path.is_file())


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _export_digits(target: Path) -> None:
    """Writes scikit-learn's digits as 32x32 RGB PNGs, `<target>/<digit>/digit_<index>.png`."""
    digits = load_digits()
    # 0..16 ink levels (Alpaydin & Kaynak's 8x8 digits) rescaled to uint8 0..255.
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as tmp:
        staging = Path(tmp) / target.name
        for index, (image, label) in enumerate(zip(pixels, digits.target)):
            folder = staging / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).resize((32, 32), Image.Resampling.NEAREST).convert(
                "RGB").save(folder / f"digit_{index}.png")
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real failure
                raise


BUILTINS = {"digits": _export_digits}


def resolve_data_dir(data_dir: str) -> Path:
    """Resolves `ExperimentSpec.data_dir` to an image folder, exporting a builtin once.

    `"builtin:digits"` is scikit-learn's `load_digits()` (1797 8x8 images of
    10 digits), exported on first use to `<data home>/digits/<digit>/
    digit_<index>.png` as 32x32 RGB uint8 PNGs (nearest-neighbour upscaling,
    ink 0..16 rescaled to 0..255). The data home is the `NBSWEEP_DATA_HOME`
    environment variable, else `<project root>/data`. The export is written to
    a temporary sibling folder and renamed into place, so concurrent runs never
    see a partial export (the first rename wins, the others keep it).

    Args:
        data_dir: a folder path (`~` is expanded) or `"builtin:<name>"`.

    Returns:
        The image folder, an absolute `pathlib.Path`.

    Raises:
        ModelConfigError: if `data_dir` names an unknown builtin, the folder
            does not exist, or none of its sub-folders holds an image file.
    """
    if data_dir.startswith(BUILTIN_PREFIX):
        name = data_dir[len(BUILTIN_PREFIX):]
        if name not in BUILTINS:
            raise ModelConfigError(
                f"data_dir: got {data_dir!r}, expected a folder or one of "
                f"{', '.join(BUILTIN_PREFIX + b for b in BUILTINS)}")
        home = Path(os.environ.get(DATA_HOME_ENV) or PROJECT_ROOT / "data").expanduser()
        target = home.absolute() / name
        if not target.is_dir():
            BUILTINS[name](target)
        return target
    path = Path(data_dir).expanduser().absolute()
    if not path.is_dir():
        raise ModelConfigError(f"data_dir: folder {path} does not exist")
    if not any(_is_image(f) for folder in _class_dirs(path) for f in folder.iterdir()):
        raise ModelConfigError(
            f"data_dir: {path} has no class sub-folders with images; expected one "
            f"sub-folder per class holding {'/'.join(IMAGE_EXTENSIONS)} files")
    return path


def load_data(spec: ExperimentSpec) -> DataSplit:
    """Lists an image folder and splits it into stratified train, val and test parts.

    Class names are the sorted sub-folder names; files are the sorted
    non-hidden files with an image extension (case-insensitive). With
    `spec.max_images_per_class`, a seeded random subset of each class is kept.
    The split is two stratified `sklearn.model_selection.train_test_split`
    calls (test first, then val from the rest) seeded with `spec.seed`, so the
    same folder and parameters always give the same split. Files are not
    decoded here (too slow for large folders).

    Args:
        spec: the run's parameters; reads `data_dir`, `max_images_per_class`,
            `val_fraction`, `test_fraction` and `seed`.

    Returns:
        A `DataSplit`; each part is sorted by path.

    Raises:
        ModelConfigError: if `resolve_data_dir` refuses `spec.data_dir`, the
            folder has fewer than 2 class sub-folders, an image file is empty
            (0 bytes), or a class has too few images for every split to get at
            least one of them.
    """
    root = resolve_data_dir(spec.data_dir)
    class_dirs = _class_dirs(root)
    if len(class_dirs) < 2:
        raise ModelConfigError(
            f"data_dir: {root} has {len(class_dirs)} class sub-folder(s) "
            f"{[d.name for d in class_dirs]}; need at least 2 classes")
    rng = np.random.default_rng(spec.seed)
    files, labels = [], []
    for label, folder in enumerate(class_dirs):
        images = sorted(f for f in folder.iterdir() if _is_image(f))
        if spec.max_images_per_class and len(images) > spec.max_images_per_class:
            keep = rng.choice(len(images), spec.max_images_per_class, replace=False)
            images = [images[i] for i in sorted(keep)]
        files += images
        labels += [label] * len(images)
    sizes = {str(f): f.stat().st_size for f in files}
    empty = [path for path, size in sizes.items() if size == 0]
    if empty:
        raise ModelConfigError(
            f"data_dir: {len(empty)} empty (0-byte) image file(s), e.g. {empty[0]}; "
            f"delete or replace them")

    paths, labels = np.array(list(sizes)), np.array(labels, dtype=np.int32)
    counts = np.bincount(labels, minlength=len(class_dirs))
    try:
        rest_p, test_p, rest_y, test_y = train_test_split(
            paths, labels, test_size=spec.test_fraction, stratify=labels,
            random_state=spec.seed)
        train_p, val_p, train_y, val_y = train_test_split(
            rest_p, rest_y, test_size=spec.val_fraction / (1 - spec.test_fraction),
            stratify=rest_y, random_state=spec.seed)
        parts = {split: SplitPart(p[order], y[order]) for split, p, y in
                 (("train", train_p, train_y), ("val", val_p, val_y), ("test", test_p, test_y))
                 for order in [np.argsort(p)]}
        short = [c for c in range(len(class_dirs))
                 if any(c not in part.labels for part in parts.values())]
    except ValueError:  # sklearn refuses: a class or a split is too small
        short = [int(np.argmin(counts))]
    if short:
        subset = (f" (max_images_per_class={spec.max_images_per_class})"
                  if spec.max_images_per_class else "")
        raise ModelConfigError(
            f"class folder {class_dirs[short[0]]}: {counts[short[0]]} image(s){subset}, too "
            f"few for val_fraction={spec.val_fraction} and test_fraction={spec.test_fraction} "
            f"(train, val and test each need >= 1 image of every class); add images or "
            f"change the fractions")

    rows = sorted((split, Path(path).relative_to(root).as_posix(), int(label), sizes[path])
                  for split, part in parts.items()
                  for path, label in zip(part.paths, part.labels))
    return DataSplit(
        data_dir=root, class_names=[d.name for d in class_dirs], **parts,
        manifest_hash=hashlib.sha256(json.dumps(rows).encode()).hexdigest())


def _load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return tf.image.resize(image, (image_size, image_size))  # bilinear, float32


def make_dataset(
    part: SplitPart,
    image_size: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    augmentation: Augmentation | None = None,
) -> tf.data.Dataset:
    """Builds the input pipeline of one split part.

    Each file is decoded (`tf.io.decode_image`, 3 channels, first frame of
    animations), resized (`tf.image.resize`, bilinear) and cached in memory;
    then, per epoch: shuffled (when `shuffle`), batched, augmented (when
    `augmentation` has any transform: Keras preprocessing layers called with
    `training=True`) and prefetched, following the `tf.data` performance guide.

    Args:
        part: the paths and labels to load.
        image_size: side of the square images, pixels.
        batch_size: images per batch; the last batch may be smaller.
        shuffle: reshuffle the whole part every epoch. Defaults to `False`.
        seed: seed of the shuffle and of the augmentation layers. Defaults
            to `0`.
        augmentation: random transforms of training batches, or `None`.
            Defaults to `None`.

    Returns:
        A `tf.data.Dataset` of `(images, labels)`: images float32
        `(batch, image_size, image_size, 3)` RGB in [0, 255], labels int32
        `(batch,)`.
    """
    dataset = tf.data.Dataset.from_tensor_slices((part.paths, part.labels)).map(
        lambda path, label: (_load_image(path, image_size), label),
        num_parallel_calls=tf.data.AUTOTUNE).cache()
    if shuffle:
        dataset = dataset.shuffle(len(part), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if augmentation is not None:
        augment = build_augmentation(augmentation, image_size, seed)
        if augment.layers:
            dataset = dataset.map(lambda images, labels: (augment(images, training=True), labels),
                                  num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def load_images(paths, image_size: int) -> np.ndarray:
    """Loads image files the way `make_dataset` does, for predicting on files.

    Args:
        paths: an iterable of image file paths (`str` or `pathlib.Path`).
        image_size: side of the square images, pixels.

    Returns:
        float32 `np.ndarray` `(n, image_size, image_size, 3)`, RGB in [0, 255].

    Raises:
        tf.errors.InvalidArgumentError: if a file is not a decodable image.
        tf.errors.NotFoundError: if a file does not exist.
    """
    images = [_load_image(tf.constant(str(path)), image_size).numpy() for path in paths]
    return np.array(images, dtype=np.float32).reshape(-1, image_size, image_size, 3)
