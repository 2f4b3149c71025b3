"""Image folders: the builtin digits export, the stratified split, `tf.data` input.

An image folder is laid out as Keras's `image_dataset_from_directory` expects
(one sub-folder of images per class, the sub-folder name is the class name).
`load_data` lists it (`list_image_folder`: classes, usable images, files
skipped and why, without decoding) and splits it once, deterministically
(`split_image_folder`); the sweep's pre-flight check runs the same two
functions. `make_dataset` turns one part of the split into batches of raw RGB
pixels; each file is decoded and resized once per process (`decode_images`),
never per epoch.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .hashing import sha256_json
from .augment import build_augmentation, build_batch_mixing
from .errors import ModelConfigError
from .spec import Augmentation, ExperimentSpec

from .names import IMAGE_SUFFIXES as IMAGE_EXTENSIONS
DECODABLE_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP")
"""PIL format names of the files `tf.io.decode_image` decodes (MPO: a camera JPEG)."""
JPEG_TAIL_BYTES = 4096
"""How far from its end a complete JPEG's end-of-image marker (FF D9) is looked for."""
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
        skipped_files: files and folders inside class folders that are not
            used, as `ImageFolder.skipped_files` (relative path -> reason).
    """

    data_dir: Path
    class_names: list[str]
    train: SplitPart
    val: SplitPart
    test: SplitPart
    manifest_hash: str
    skipped_files: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict:
        """Summarises the split for a run record.

        Returns:
            A JSON-safe dict `{"dir": str, "class_names": [str],
            "counts": {"train" | "val" | "test": {class name: int}},
            "manifest_hash": str, "skipped_files": {relative path: reason}}`.
        """
        counts = {
            split: dict(zip(self.class_names, np.bincount(
                getattr(self, split).labels, minlength=len(self.class_names)).tolist()))
            for split in SPLITS
        }
        return {"dir": str(self.data_dir), "class_names": list(self.class_names),
                "counts": counts, "manifest_hash": self.manifest_hash,
                "skipped_files": dict(self.skipped_files)}


@dataclass(frozen=True)
class ImageFolder:
    """A listed image folder, before any split: its classes and their usable images.

    Attributes:
        root: the folder, absolute.
        class_names: sorted names of its non-hidden sub-folders; label `i` is
            `class_names[i]`.
        images: for each class (same order), its sorted usable image files.
        skipped_files: what is not used, as `relative posix path -> reason`:
            the hidden sub-folders of `root` (see `list_class_folders`), and
            everything inside the class folders but hidden files: files
            without an image extension, files that `check_image_file`
            refuses (corrupt, truncated, unreadable, undecodable format), and
            nested folders (hidden or not).
    """

    root: Path
    class_names: list[str]
    images: list[list[Path]]
    skipped_files: dict[str, str]


def is_hidden(path: str | os.PathLike) -> bool:
    """Whether a file or folder name starts with `.` (`.git`, `.ipynb_checkpoints`, but also `..x`).

    A hidden sub-folder is never a class, as in Keras's
    `image_dataset_from_directory` (`keras/src/utils/dataset_utils.py`,
    `index_directory`); unlike Keras, `list_class_folders` reports it.
    """
    return Path(path).name.startswith(".")


def _hidden_folder_reason(folder: Path) -> str:
    """Why a hidden class-level folder is skipped, with how many image files it holds."""
    start = "hidden folder (name starts with '.'), not used as a class"
    try:
        n_images = sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    except OSError as error:
        return f"{start} (cannot read it: {error.strerror})"
    if not n_images:
        return f"{start} (no image files in it)"
    return f"{start}: it holds {n_images} image file(s); rename it without the leading '.' to use them as a class"


def list_class_folders(root: str | os.PathLike) -> tuple[list[Path], dict[str, str]]:
    """The class sub-folders of an image folder, and the hidden sub-folders left out.

    Args:
        root: an existing folder.

    Returns:
        `(class_dirs, hidden)`: the sorted sub-folders whose names do not
        start with `.`, and every sub-folder whose name does (`is_hidden`:
        `.git`, `.ipynb_checkpoints`, `..x`) mapped from its name to the
        reason it is not a class (with the number of image files in it).
        Files directly in `root` are neither.

    Raises:
        PermissionError: `root` cannot be listed.
    """
    folders = sorted(p for p in Path(root).iterdir() if p.is_dir())
    return ([p for p in folders if not is_hidden(p)],
            {p.name: _hidden_folder_reason(p) for p in folders if is_hidden(p)})


def check_image_file(path: str | os.PathLike) -> Optional[str]:
    """Says cheaply why an image file cannot be used for training, without decoding it.

    PIL's `Image.open` identifies the format from the file's header and
    `Image.verify` checks the structure (for PNG, every chunk's CRC); the
    format must be one `tf.io.decode_image` reads. A JPEG must end with its
    end-of-image marker: when it does not (a truncated download), the file is
    decoded at 1/8 scale (`Image.draft`) to tell a truncated file from one
    with trailing bytes. Measured on 1000 TrashNet photos (512x384 JPEG, warm
    file cache, one CPU core; `bench/preflight_bench.py`): 0.07 s, as much as `verify` alone; decoding
    them at 1/8 scale takes 0.6 s.

    Args:
        path: an image file.

    Returns:
        `None` when the file looks decodable, else the reason in a few words,
        e.g. `"not an image (PIL cannot identify the format)"`.
    """
    if os.stat(path).st_size == 0:
        return "empty file (0 bytes)"
    try:
        with open(path, "rb") as handle:
            with Image.open(handle) as image:
                image_format = image.format
                image.verify()
            if image_format not in DECODABLE_FORMATS:
                return (f"{image_format} image: tf.io.decode_image reads only "
                        f"{', '.join(f for f in DECODABLE_FORMATS if f != 'MPO')}")
            complete = True
            if image_format in ("JPEG", "MPO"):  # the end-of-image marker FF D9
                handle.seek(max(0, os.fstat(handle.fileno()).st_size - JPEG_TAIL_BYTES))
                complete = b"\xff\xd9" in handle.read()
        if not complete:
            with Image.open(path) as image:
                image.draft("RGB", (1, 1))  # 1/8 scale: every entropy-coded byte is still read
                image.load()
    except UnidentifiedImageError:
        return "not an image (PIL cannot identify the format)"
    except PermissionError as error:
        return f"cannot read it ({error.strerror})"
    except Image.DecompressionBombError:
        return None  # a huge image, not a broken one: left to the decoder
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        return f"corrupt or truncated image: {error}"
    return None


def list_image_folder(root: str | os.PathLike) -> ImageFolder:
    """Lists an image folder: class sub-folders and their usable images, without decoding them.

    Class names are the sorted non-hidden sub-folder names (`list_class_folders`);
    images are the sorted non-hidden files with an image extension
    (case-insensitive) that `check_image_file` accepts. Everything else in a
    class folder (other files, corrupt images, nested folders, hidden ones
    included) is listed in `skipped_files`, and so is every hidden sub-folder
    of `root` (name starting with `.`, e.g. `.ipynb_checkpoints` or `..x`:
    never a class, with the number of image files it holds); only hidden
    files (`.DS_Store`, `.name.png`) are ignored without a word. `load_data`
    and the sweep's pre-flight check both start from this listing.

    Args:
        root: an existing folder, e.g. from `resolve_data_dir`.

    Returns:
        An `ImageFolder`.

    Raises:
        ModelConfigError: if a folder cannot be read, no class sub-folder
            holds a file with an image extension, or there are fewer than 2
            class sub-folders.
    """
    root = Path(root)
    try:
        class_dirs, hidden = list_class_folders(root)
    except PermissionError as error:
        raise ModelConfigError(
            f"data_dir: cannot read folder {root} ({error.strerror}); make it readable "
            f"(e.g. chmod -R u+rX)") from error
    entries: list[list[Path]] = []
    for folder in class_dirs:
        try:
            entries.append(sorted(p for p in folder.iterdir() if not is_hidden(p) or p.is_dir()))
        except PermissionError as error:
            raise ModelConfigError(
                f"class folder {folder}: cannot read it ({error.strerror}); make it readable "
                f"(e.g. chmod -R u+rX {root})") from error
    named = [[p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
             for found in entries]
    not_classes = (f" (hidden folders, names starting with '.', are never classes: "
                   f"{', '.join(f'{name}: {reason}' for name, reason in hidden.items())})" if hidden else "")
    if not any(named):
        raise ModelConfigError(
            f"data_dir: {root} has no class sub-folders with images; expected one "
            f"sub-folder per class holding {'/'.join(IMAGE_EXTENSIONS)} files{not_classes}")
    if len(class_dirs) < 2:
        raise ModelConfigError(
            f"data_dir: {root} has {len(class_dirs)} class sub-folder(s) "
            f"{[d.name for d in class_dirs]}; need at least 2 classes{not_classes}")
    images, skipped = [], dict(hidden)
    for found, files in zip(entries, named):
        kept, named_images = [], set(files)
        for path in found:
            if path.is_dir():
                reason = (f"a {'hidden ' if is_hidden(path) else ''}folder: images in sub-folders "
                          f"of a class folder are not read")
            elif path not in named_images:
                reason = (f"not an image file name (extension {path.suffix or '(none)'!r}; "
                          f"expected one of {', '.join(IMAGE_EXTENSIONS)})")
            else:
                reason = check_image_file(path)
            if reason is None:
                kept.append(path)
            else:
                skipped[path.relative_to(root).as_posix()] = reason
        images.append(kept)
    return ImageFolder(root=root, class_names=[d.name for d in class_dirs], images=images,
                       skipped_files=skipped)


def split_image_folder(folder: ImageFolder, spec: ExperimentSpec) -> dict[str, SplitPart]:
    """Splits a listed folder into stratified train, val and test parts, as `load_data` does.

    With `spec.max_images_per_class`, a seeded random subset of each class is
    kept first. The split is two stratified
    `sklearn.model_selection.train_test_split` calls (test first, then val
    from the rest) seeded with `spec.seed`. Nothing is read from disk.

    Args:
        folder: from `list_image_folder`.
        spec: reads `max_images_per_class`, `val_fraction`, `test_fraction`
            and `seed`.

    Returns:
        `{"train" | "val" | "test": SplitPart}`, each part sorted by path.

    Raises:
        ModelConfigError: if a class has too few images for every split to
            get at least one of them; the message names the class folder.
    """
    rng = np.random.default_rng(spec.seed)
    files, labels = [], []
    for label, images in enumerate(folder.images):
        if spec.max_images_per_class and len(images) > spec.max_images_per_class:
            keep = rng.choice(len(images), spec.max_images_per_class, replace=False)
            images = [images[i] for i in sorted(keep)]
        files += [str(path) for path in images]
        labels += [label] * len(images)
    paths, labels = np.array(files), np.array(labels, dtype=np.int32)
    counts = np.bincount(labels, minlength=len(folder.class_names))
    short = [int(c) for c in np.flatnonzero(counts == 0)]
    if not short:
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
            short = [c for c in range(len(folder.class_names))
                     if any(c not in part.labels for part in parts.values())]
        except ValueError:  # sklearn refuses: a class or a split is too small
            short = [int(np.argmin(counts))]
    if short:
        name = folder.class_names[short[0]]
        subset = (f" (max_images_per_class={spec.max_images_per_class})"
                  if spec.max_images_per_class else "")
        unusable = sum(1 for rel in folder.skipped_files if rel.split("/", 1)[0] == name)
        skipped = f", {unusable} other file(s) skipped as unusable" if unusable else ""
        raise ModelConfigError(
            f"class folder {folder.root / name}: {counts[short[0]]} image(s){subset}{skipped}, "
            f"too few for val_fraction={spec.val_fraction} and test_fraction="
            f"{spec.test_fraction} (train, val and test each need >= 1 image of every class); "
            f"add images or change the fractions")
    return parts


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


def resolve_data_dir(data_dir: str, *, export: bool = True) -> Path:
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
        export: export a builtin that is not there yet. Defaults to `True`;
            with `False` its folder is returned whether it exists or not
            (a check that must not write anything).

    Returns:
        The image folder, an absolute `pathlib.Path`.

    Raises:
        ModelConfigError: if `data_dir` names an unknown builtin, or the
            folder does not exist or is not a folder.
    """
    if data_dir.startswith(BUILTIN_PREFIX):
        name = data_dir[len(BUILTIN_PREFIX):]
        if name not in BUILTINS:
            raise ModelConfigError(
                f"data_dir: got {data_dir!r}, expected a folder or one of "
                f"{', '.join(BUILTIN_PREFIX + b for b in BUILTINS)}")
        home = Path(os.environ.get(DATA_HOME_ENV) or PROJECT_ROOT / "data").expanduser()
        target = home.absolute() / name
        if export and not target.is_dir():
            BUILTINS[name](target)
        return target
    path = Path(data_dir).expanduser().absolute()
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise ModelConfigError(
            f"data_dir: folder {path} {what}; expected an ImageFolder-style folder (one "
            f"sub-folder of images per class) or one of "
            f"{', '.join(BUILTIN_PREFIX + b for b in BUILTINS)}")
    return path


def load_data(spec: ExperimentSpec) -> DataSplit:
    """Lists an image folder and splits it into stratified train, val and test parts.

    `list_image_folder` lists the classes and their usable images (files are
    checked with `check_image_file`, not decoded: too slow for large
    folders); what it skips (corrupt or non-image files, nested folders,
    hidden sub-folders such as `.ipynb_checkpoints` or `..x` with the number
    of images in them) is reported with a `UserWarning` and kept in
    `DataSplit.skipped_files`.
    `split_image_folder` then takes the seeded subset and the stratified
    split, so the same folder and parameters always give the same split.

    Args:
        spec: the run's parameters; reads `data_dir`, `max_images_per_class`,
            `val_fraction`, `test_fraction` and `seed`.

    Returns:
        A `DataSplit`; each part is sorted by path.

    Raises:
        ModelConfigError: if `resolve_data_dir` or `list_image_folder` refuse
            the folder (missing, unreadable, no images, fewer than 2 classes,
            ...), or a class has too few usable images for every
            split to get at least one of them.
    """
    root = resolve_data_dir(spec.data_dir)
    folder = list_image_folder(root)
    if folder.skipped_files:
        shown = "; ".join(f"{path}: {reason}" for path, reason in list(folder.skipped_files.items())[:5])
        more = len(folder.skipped_files) - 5
        warnings.warn(
            f"data_dir {root}: skipped {len(folder.skipped_files)} file(s) that are not usable "
            f"images ({shown}{f'; and {more} more' if more > 0 else ''}); all are listed in the "
            f"record's data.skipped_files", UserWarning, stacklevel=2)
    parts = split_image_folder(folder, spec)
    sizes = {str(path): Path(path).stat().st_size for part in parts.values() for path in part.paths}
    rows = sorted((split, Path(path).relative_to(root).as_posix(), int(label), sizes[path])
                  for split, part in parts.items()
                  for path, label in zip(part.paths, part.labels))
    return DataSplit(
        data_dir=root, class_names=list(folder.class_names), **parts,
        manifest_hash=sha256_json(rows),
        skipped_files=dict(folder.skipped_files))


SAMPLERS = ("balanced",)
"""`ExperimentSpec.sampler` values other than `None` (`index_batches`)."""
DECODED_CACHE_BYTES = 2 * 1024 ** 3
"""Decoded images kept in memory per process (`decode_images`), bytes: TrashNet's 2155 photos
take 324 MB at 224 px (uint8), 106 MB at 128 px."""

_decoded: "OrderedDict[tuple, tf.Tensor]" = OrderedDict()
_decoded_lock = threading.Lock()


def _load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """One file, decoded and resized: uint8 `(image_size, image_size, 3)` RGB in [0, 255].

    `tf.io.decode_image` (3 channels, the first frame of an animation), then
    `tf.image.resize` (bilinear, float32), rounded half to even and clipped
    back to uint8: the pixels a resized image file would hold, in a quarter
    of float32's memory.
    """
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    resized = tf.image.resize(image, (image_size, image_size))
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def decode_images(paths, image_size: int) -> tf.Tensor:
    """The images of a list of files, decoded and resized once per process.

    Decoding is most of the cost of an input pipeline: on TrashNet's
    training split (1507 photos, 224 px, 2 busy CPU cores) an epoch that
    decodes every file took 6.5 s, decoding once 3.8 s, and an epoch that
    gathers from the decoded copy 0.61 s (`bench/decode_bench.py`). Every
    `make_dataset` of the same files at the same size shares one decoded
    copy: the training phases, the evaluation and the activation-cache
    builds of a run decode each file once. Copies are kept, most recently
    used first, up to `DECODED_CACHE_BYTES`; they are keyed on `image_size`
    and each file's path, size and modification time, so a rewritten file
    is decoded again.

    Args:
        paths: image file paths (`str` or `pathlib.Path`), in the order wanted.
        image_size: side of the square images, pixels.

    Returns:
        A uint8 `tf.Tensor` `(len(paths), image_size, image_size, 3)`, RGB
        in [0, 255] (`_load_image`: bilinear resize, rounded). Treat it as
        read-only: it is shared.

    Raises:
        FileNotFoundError: a file does not exist.
        tf.errors.InvalidArgumentError: a file is not a decodable image.
    """
    paths = [str(path) for path in paths]
    key = (int(image_size), tuple((path, stat.st_size, stat.st_mtime_ns)
                                  for path in paths for stat in [os.stat(path)]))
    with _decoded_lock:
        if key in _decoded:
            _decoded.move_to_end(key)
            return _decoded[key]
    if paths:  # files decoded in parallel, gathered into one tensor by `batch`
        images = tf.data.Dataset.from_tensor_slices(tf.constant(paths, dtype=tf.string)).map(
            lambda path: _load_image(path, image_size), num_parallel_calls=tf.data.AUTOTUNE
        ).batch(len(paths)).get_single_element()
    else:
        images = tf.zeros((0, image_size, image_size, 3), dtype=tf.uint8)
    with _decoded_lock:
        _decoded[key] = images
        while _decoded and sum(int(np.prod(t.shape)) for t in _decoded.values()) > DECODED_CACHE_BYTES:
            _decoded.popitem(last=False)  # the least recently used (this one too when it alone is too big)
    return images


def clear_decoded_images() -> int:
    """Drops every decoded copy `decode_images` keeps (to free memory, or to time a cold start).

    Datasets already built keep their own reference until they are deleted.

    Returns:
        The bytes released from the store.
    """
    with _decoded_lock:
        released = sum(int(np.prod(t.shape)) for t in _decoded.values())
        _decoded.clear()
    return released


def index_batches(
    labels,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    sampler: Optional[str] = None,
    epoch_size: Optional[int] = None,
) -> tf.data.Dataset:
    """Batches of row indices into a split part: the order (and, balanced, the draw) of an epoch.

    `make_dataset` (images) and `batch_arrays` (stored features) both gather
    their batches with these indices, so the same labels and seed give the
    same batches on both paths.

    - `sampler=None`: each row once per epoch (the first `epoch_size` rows
      of a permutation, reshuffled every epoch, when `shuffle`), in batches
      of `batch_size`, the last one smaller.
    - `sampler="balanced"`: every batch is drawn evenly from the classes
      present in `labels`. Each class is an endless stream of its rows,
      reshuffled at each pass (`shuffle(...).repeat()`); each row of a batch
      comes from a class picked uniformly at random
      (`tf.data.Dataset.sample_from_datasets`, equal weights, redrawn every
      epoch). An epoch is `ceil(epoch_size / batch_size)` full batches, as
      many steps as without the sampler: small classes are repeated, large
      ones subsampled within the epoch. Always random (`shuffle` is not
      read).

    Args:
        labels: int `(n,)` class indices of the rows.
        batch_size: rows per batch, >= 1.
        shuffle: reshuffle every epoch (`sampler=None` only). Defaults to
            `False`.
        seed: seed of the shuffles and of the class draws. Defaults to `0`.
        sampler: `None` or `"balanced"`. Defaults to `None`.
        epoch_size: rows per epoch; `None` is `n`. Smaller than `n` when
            `labels` pools several augmented copies of the same images.
            Defaults to `None`.

    Returns:
        A `tf.data.Dataset` of int64 `(batch,)` row indices in `[0, n)`.

    Raises:
        ValueError: `sampler` is not `None` or one of `SAMPLERS`.
    """
    labels = np.asarray(labels)
    n = len(labels)
    epoch_size = n if epoch_size is None else epoch_size
    if sampler is None:
        dataset = tf.data.Dataset.range(n)
        if shuffle:
            dataset = dataset.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        return dataset.take(epoch_size).batch(batch_size)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: got {sampler!r}, expected None or one of {', '.join(map(repr, SAMPLERS))}")
    classes = np.unique(labels)
    streams = [tf.data.Dataset.from_tensor_slices(np.flatnonzero(labels == c).astype(np.int64))
               .shuffle(int((labels == c).sum()), seed=seed + 1 + i, reshuffle_each_iteration=True).repeat()
               for i, c in enumerate(classes)]
    drawn = tf.data.Dataset.sample_from_datasets(streams, weights=[1.0 / len(classes)] * len(classes),
                                                 seed=seed, rerandomize_each_iteration=True)
    return drawn.batch(batch_size).take(math.ceil(epoch_size / batch_size))


def batch_arrays(
    arrays,
    labels,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    sampler: Optional[str] = None,
    num_classes: Optional[int] = None,
) -> tf.data.Dataset:
    """Batches of in-memory rows (e.g. the activation cache's stored features), as `make_dataset` batches images.

    The batches follow `index_batches`: with the same labels, seed and
    sampler they hold the same rows as `make_dataset`'s batches of the
    images. Several arrays (augmented copies of the same images) are pooled
    and an epoch still draws `len(labels)` rows (or, balanced,
    `ceil(len(labels) / batch_size)` batches) from them, as
    `models.cache.feature_dataset` does.

    Args:
        arrays: a list of arrays `(n, ...)` of the same rows (float32 or
            float16; memory-mapped is fine: they are copied once, as float32).
        labels: int `(n,)` labels of the rows.
        batch_size: rows per batch.
        shuffle: reshuffle every epoch. Defaults to `False`.
        seed: seed of the shuffle or of the balanced draw. Defaults to `0`.
        sampler: `None` or `"balanced"` (`index_batches`). Defaults to
            `None`.
        num_classes: when given, labels are one-hot float32, as
            `make_dataset(..., num_classes=)` gives them. Defaults to `None`.

    Returns:
        A `tf.data.Dataset` of `(float32 (batch, ...) rows, labels)`: labels
        int32 `(batch,)`, or float32 `(batch, num_classes)` with `num_classes`.
    """
    n = len(labels)
    x = np.concatenate(arrays) if len(arrays) > 1 else np.asarray(arrays[0])
    rows = tf.constant(x.astype(np.float32, copy=False))
    y = np.tile(np.asarray(labels, dtype=np.int32), len(arrays))
    y_tensor = tf.constant(y)
    dataset = index_batches(y, batch_size, shuffle=shuffle, seed=seed, sampler=sampler, epoch_size=n).map(
        lambda index: (tf.gather(rows, index), tf.gather(y_tensor, index)), num_parallel_calls=tf.data.AUTOTUNE)
    if num_classes is not None:
        dataset = dataset.map(lambda x, labels: (x, tf.one_hot(labels, num_classes)))
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_dataset(
    part: SplitPart,
    image_size: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    augmentation: Augmentation | None = None,
    num_classes: int | None = None,
    sampler: Optional[str] = None,
) -> tf.data.Dataset:
    """Builds the input pipeline of one split part.

    The files are decoded and resized once per process (`decode_images`:
    uint8, shared by every dataset of the same files and size), never per
    epoch. Then, per epoch: the rows of each batch are chosen
    (`index_batches`: in order, reshuffled when `shuffle`, or drawn evenly
    from the classes with `sampler="balanced"`), gathered and cast to
    float32, augmented (when `augmentation` has any transform: Keras
    preprocessing layers called with `training=True`; then `mixup` /
    `cutmix` mixing each batch's images and one-hot labels,
    `models.augment.build_batch_mixing`) and prefetched, following the
    `tf.data` performance guide. Shuffling indices instead of images gives
    the same order for the same seed and moves no pixels.

    Args:
        part: the paths and labels to load.
        image_size: side of the square images, pixels.
        batch_size: images per batch; without a sampler the last batch may
            be smaller.
        shuffle: reshuffle the whole part every epoch. Defaults to `False`.
        seed: seed of the shuffle (or of the balanced draw) and of the
            augmentation layers. Defaults to `0`.
        augmentation: random transforms of training batches, or `None`.
            Defaults to `None`.
        num_classes: when given, labels are one-hot float32 (needed, and
            then soft, with `mixup` or `cutmix`). Defaults to `None`.
        sampler: `None`, or `"balanced"`: every batch drawn evenly from the
            classes, `ceil(len(part) / batch_size)` full batches an epoch
            (`index_batches`). Defaults to `None`.

    Returns:
        A `tf.data.Dataset` of `(images, labels)`: images float32
        `(batch, image_size, image_size, 3)` RGB in [0, 255] (whole
        numbers before augmentation), labels int32 `(batch,)`, or float32
        `(batch, num_classes)` with `num_classes` (each row sums to 1).

    Raises:
        ValueError: `augmentation` mixes batches and `num_classes` is
            `None`, or `sampler` is unknown.
    """
    if augmentation is not None and augmentation.mixes_batches and num_classes is None:
        raise ValueError("mixup / cutmix mix the labels too: make_dataset needs num_classes")
    images = decode_images(part.paths, image_size)
    labels = tf.constant(np.asarray(part.labels, dtype=np.int32))
    dataset = index_batches(part.labels, batch_size, shuffle=shuffle, seed=seed, sampler=sampler).map(
        lambda index: (tf.cast(tf.gather(images, index), tf.float32), tf.gather(labels, index)),
        num_parallel_calls=tf.data.AUTOTUNE)
    if augmentation is not None:
        augment = build_augmentation(augmentation, image_size, seed)
        if augment.layers:
            dataset = dataset.map(lambda images, labels: (augment(images, training=True), labels),
                                  num_parallel_calls=tf.data.AUTOTUNE)
    if num_classes is not None:
        dataset = dataset.map(lambda images, labels: (images, tf.one_hot(labels, num_classes)))
    if augmentation is not None and augmentation.mixes_batches:
        mix = build_batch_mixing(augmentation, seed + len(augment.layers))

        def mix_batch(images, labels):
            mixed = mix({"images": images, "labels": labels}, training=True)
            return mixed["images"], mixed["labels"]

        dataset = dataset.map(mix_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def load_images(paths, image_size: int) -> np.ndarray:
    """Loads image files the way `make_dataset` does, for predicting on files.

    Each file is decoded and resized as `decode_images` does (the same
    rounded pixels), but not kept: these are a user's files, read once.

    Args:
        paths: an iterable of image file paths (`str` or `pathlib.Path`).
        image_size: side of the square images, pixels.

    Returns:
        float32 `np.ndarray` `(n, image_size, image_size, 3)`, RGB in [0, 255]
        (whole numbers).

    Raises:
        tf.errors.InvalidArgumentError: if a file is not a decodable image.
        tf.errors.NotFoundError: if a file does not exist.
    """
    images = [_load_image(tf.constant(str(path)), image_size).numpy() for path in paths]
    return np.array(images, dtype=np.float32).reshape(-1, image_size, image_size, 3)
