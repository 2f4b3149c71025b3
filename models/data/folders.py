"""Image folders without TensorFlow: listing, checking files, the builtin digits export, the stratified
train / validation / test split and its manifest hash (`load_data`)."""

from __future__ import annotations

import errno
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
import numpy as np
from PIL import Image, UnidentifiedImageError
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from ..hashing import sha256_json
from ..errors import ModelConfigError
from ..spec import ExperimentSpec
from ..names import IMAGE_SUFFIXES as IMAGE_EXTENSIONS, PROJECT_ROOT


DECODABLE_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP")
"""PIL format names of the files `tf.io.decode_image` decodes (MPO: a camera JPEG)."""
DATA_HOME_ENV = "NBSWEEP_DATA_HOME"
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
        train_on_val: `train` holds the training and the validation images
            (`ExperimentSpec.train_on_val`, `load_data`) and `val` is empty;
            `manifest_hash` is still the split's, so the test split is the
            same as that of runs without it.
    """

    data_dir: Path
    class_names: list[str]
    train: SplitPart
    val: SplitPart
    test: SplitPart
    manifest_hash: str
    skipped_files: dict[str, str] = field(default_factory=dict)
    train_on_val: bool = False

    def describe(self) -> dict:
        """Summarises the split for a run record.

        Returns:
            A JSON-safe dict `{"dir": str, "class_names": [str],
            "counts": {"train" | "val" | "test": {class name: int}},
            "manifest_hash": str, "skipped_files": {relative path: reason}}`,
            and `"train_on_val": True` when the training images include the
            validation ones (whose counts are then 0).
        """
        counts = {
            split: dict(zip(self.class_names, np.bincount(
                getattr(self, split).labels, minlength=len(self.class_names)).tolist()))
            for split in SPLITS
        }
        described = {"dir": str(self.data_dir), "class_names": list(self.class_names),
                     "counts": counts, "manifest_hash": self.manifest_hash,
                     "skipped_files": dict(self.skipped_files)}
        return {**described, "train_on_val": True} if self.train_on_val else described


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
            refuses (corrupt, truncated, unreadable, undecodable format),
            symbolic links that lead to no file (dangling, or a loop:
            `broken_link_reason`), and nested folders (hidden or not).
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
    """Says why an image file cannot be used for training, by decoding it as `tf.io.decode_image` would.

    PIL's `Image.open` identifies the format from the file's header and
    `Image.verify` checks the structure (for PNG, every chunk's CRC); the
    format must be one `tf.io.decode_image` reads. Then the image is decoded
    (`Image.load`): a JPEG at 1/8 scale (`Image.draft`: every entropy-coded
    byte is still read and Huffman-decoded, most of the inverse DCT is
    skipped), any other format in full. A file whose header opens but whose
    body does not decode (a truncated download, a corrupt Huffman table, a
    damaged scan) is refused here instead of raising in TensorFlow's decoder
    in the middle of a run. On 100 small JPEGs with 1 to 3 random bytes
    overwritten in their DHT, DQT or SOF segment or their scan data, this
    decode and `tf.io.decode_image` refuse the same 45 files
    (`tests/test_faults_data.py`; 297 of 600 in a larger trial, issue 31).
    Cost on the 2155 TrashNet photos (512x384 JPEG, warm file cache, one CPU
    core): 1.3 s, where `verify` and an end-of-image marker check, which
    missed such files, took 0.1 s (`bench/preflight_bench.py`).

    Args:
        path: an image file.

    Returns:
        `None` when the file decodes, else the reason in a few words, e.g.
        `"not an image (PIL cannot identify the format)"` or
        `"corrupt or truncated image: broken data stream when reading image file"`.
    """
    if os.stat(path).st_size == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(path) as image:
            image_format = image.format
            image.verify()
        if image_format not in DECODABLE_FORMATS:
            return (f"{image_format} image: tf.io.decode_image reads only "
                    f"{', '.join(f for f in DECODABLE_FORMATS if f != 'MPO')}")
        with Image.open(path) as image:  # `verify` leaves an image that cannot load: open it again
            if image_format in ("JPEG", "MPO"):
                image.draft("RGB", (1, 1))  # 1/8 scale
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


CHECKED_MEMO_FILES = 100_000
"""Verdicts of `check_image_file` that `_checked_image_file` keeps per process (about 35 MB at most with
50-character paths, measured with `tracemalloc`); past that many the memo is emptied and files are checked
again."""
_checked: dict[tuple, Optional[str]] = {}


def _checked_image_file(path: str | os.PathLike) -> Optional[str]:
    """`check_image_file`, decoded once per process for a file that has not changed since.

    A sweep lists a folder more than once in one process (its pre-flight
    check, then the data fingerprint of its runs); the verdict of each file
    is kept under its path, size, modification time (ns), inode and device,
    so a file rewritten in between is decoded again (unless it keeps its size
    and its rewrite falls in the same tick of a coarse file-system clock).
    Each run's kernel is a process of its own and decodes its files once.

    Args:
        path: an image file.

    Returns:
        What `check_image_file(path)` returns.
    """
    stat = os.stat(path)
    key = (os.fspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev)
    if key not in _checked:
        if len(_checked) >= CHECKED_MEMO_FILES:
            _checked.clear()
        _checked[key] = check_image_file(path)
    return _checked[key]


def broken_link_reason(path: Path) -> str:
    """Why a symbolic link that leads to no file cannot be used: a loop, or a target that is not there.

    Args:
        path: a symbolic link whose target does not resolve (`path.is_symlink() and not path.exists()`).

    Returns:
        `"symbolic link loop (...)"`, or `"dangling symbolic link: its target <target> does not exist"`
        (or why the target cannot be reached).
    """
    try:
        target = os.readlink(path)
    except OSError as error:
        return f"symbolic link that cannot be read ({error.strerror})"
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return f"symbolic link loop (-> {target}, which leads back to a link on the way): no file to read"
        if error.errno == errno.ENOENT:
            return f"dangling symbolic link: its target {target} does not exist"
        return f"symbolic link to {target}, which cannot be reached ({error.strerror})"
    return f"symbolic link to {target}"


def list_image_folder(root: str | os.PathLike) -> ImageFolder:
    """Lists an image folder: class sub-folders and their usable images, each decoded once to check it.

    Class names are the sorted non-hidden sub-folder names (`list_class_folders`);
    images are the sorted non-hidden files with an image extension
    (case-insensitive) that `check_image_file` decodes (`_checked_image_file`:
    once per process while a file is unchanged). Everything else in a
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
            elif path.is_symlink() and not path.exists():
                reason = broken_link_reason(path)
            elif path not in named_images:
                reason = (f"not an image file name (extension {path.suffix or '(none)'!r}; "
                          f"expected one of {', '.join(IMAGE_EXTENSIONS)})")
            else:
                reason = _checked_image_file(path)
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
    from the rest) seeded with `spec.data_seed` (`split_seed`, else `seed`). Nothing is read from disk.

    Args:
        folder: from `list_image_folder`.
        spec: reads `max_images_per_class`, `val_fraction`, `test_fraction`
            and `data_seed`.

    Returns:
        `{"train" | "val" | "test": SplitPart}`, each part sorted by path.

    Raises:
        ModelConfigError: if a class has too few images for every split to
            get at least one of them; the message names the class folder.
    """
    rng = np.random.default_rng(spec.data_seed)
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
                random_state=spec.data_seed)
            train_p, val_p, train_y, val_y = train_test_split(
                rest_p, rest_y, test_size=spec.val_fraction / (1 - spec.test_fraction),
                stratify=rest_y, random_state=spec.data_seed)
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

    `list_image_folder` lists the classes and their usable images (each file
    is decoded by `check_image_file`, so no file that TensorFlow's decoder
    refuses reaches training or evaluation); what it skips (corrupt or
    non-image files, nested folders,
    hidden sub-folders such as `.ipynb_checkpoints` or `..x` with the number
    of images in them) is reported with a `UserWarning` and kept in
    `DataSplit.skipped_files`.
    `split_image_folder` then takes the seeded subset and the stratified
    split, so the same folder and parameters always give the same split.

    With `spec.train_on_val` the validation images join the training part
    (`merge_val_into_train`) after the manifest is hashed: the split, its
    manifest and its test part are those of the same parameters without it.

    Args:
        spec: the run's parameters; reads `data_dir`, `max_images_per_class`,
            `val_fraction`, `test_fraction`, `data_seed` (`split_seed`, else
            `seed`) and `train_on_val`.

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
    manifest = manifest_hash(root, parts)
    if spec.train_on_val:
        parts = merge_val_into_train(parts)
    return DataSplit(
        data_dir=root, class_names=list(folder.class_names), **parts,
        manifest_hash=manifest, skipped_files=dict(folder.skipped_files), train_on_val=spec.train_on_val)


def merge_val_into_train(parts: dict[str, SplitPart]) -> dict[str, SplitPart]:
    """The parts of a split with the validation images moved into the training part (`train_on_val`).

    Args:
        parts: `{"train" | "val" | "test": SplitPart}` from `split_image_folder`.

    Returns:
        The same keys: `train` the training and validation images sorted by
        path, `val` empty, `test` unchanged.
    """
    paths = np.concatenate([parts["train"].paths, parts["val"].paths])
    labels = np.concatenate([parts["train"].labels, parts["val"].labels]).astype(np.int32)
    order = np.argsort(paths)
    empty = SplitPart(parts["val"].paths[:0], parts["val"].labels[:0])
    return {**parts, "train": SplitPart(paths[order], labels[order]), "val": empty}


def manifest_hash(root: Path, parts: dict[str, SplitPart]) -> str:
    """`DataSplit.manifest_hash`: sha256 of the sorted `(split, relative path, label, file size)` rows.

    The one definition, used by `load_data` in the kernel and by the sweep
    (`runner.grid.Fingerprinter.manifest`), which compares the two: a run
    whose data changed between the sweep's start and its kernel's listing
    is recorded with a warning and not taken as done for the data it was
    meant to train on.

    Args:
        root: the image folder the paths are relative to.
        parts: from `split_image_folder`.

    Returns:
        64 hex digits.

    Raises:
        OSError: a file of the split cannot be stat'ed (removed meanwhile).
    """
    sizes = {str(path): Path(path).stat().st_size for part in parts.values() for path in part.paths}
    rows = sorted((split, Path(path).relative_to(root).as_posix(), int(label), sizes[str(path)])
                  for split, part in parts.items()
                  for path, label in zip(part.paths, part.labels))
    return sha256_json(rows)

