"""The data pipeline (`models.data`): folder -> stratified split -> manifest hash -> tf.data, with real
Keras on tiny generated images; and what `load_data` does with corrupt and non-image files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from models import Augmentation, ModelConfigError
from models.augment import build_augmentation
from models.data import check_image_file, load_data, load_images, make_dataset, resolve_data_dir
from models.data.folders import DATA_HOME_ENV

from helpers import make_image_folder, make_spec, write_corrupt_files

CLASSES = ("blue", "green", "red")
PER_CLASS = 12


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """3 classes x 12 images, one with an upper-case extension, plus entries to skip."""
    root = make_image_folder(tmp_path_factory.mktemp("images"), PER_CLASS, CLASSES)
    (root / "red" / "red_000.jpg").rename(root / "red" / "red_000.JPG")
    (root / "red" / "notes.txt").write_text("not an image")
    shutil.copy(root / "red" / "red_001.png", root / "red" / ".hidden.png")
    make_image_folder(root / ".cache", 3, ("skipped",))
    return root


@pytest.fixture(scope="session")
def split(image_dir):
    return load_data(make_spec(image_dir))


def test_split_is_deterministic_stratified_and_disjoint(image_dir, split):
    again = load_data(make_spec(image_dir))
    assert split.class_names == list(CLASSES)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(split, name).paths, getattr(again, name).paths)
        np.testing.assert_array_equal(getattr(split, name).labels, getattr(again, name).labels)
        assert getattr(split, name).labels.dtype == np.int32
    assert split.manifest_hash == again.manifest_hash
    counts = split.describe()["counts"]
    assert counts == {"train": dict.fromkeys(CLASSES, 6), "val": dict.fromkeys(CLASSES, 3),
                      "test": dict.fromkeys(CLASSES, 3)}
    parts = [set(split.train.paths), set(split.val.paths), set(split.test.paths)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    every = set().union(*parts)
    assert len(every) == 3 * PER_CLASS and any(p.endswith(".JPG") for p in every)
    assert all(Path(p).parent.name == split.class_names[y]
               for part in (split.train, split.val, split.test)
               for p, y in zip(part.paths, part.labels))
    assert not any(".hidden" in p or "notes" in p or ".cache" in p for p in every)
    other_seed = load_data(make_spec(image_dir, seed=1))
    assert set(other_seed.test.paths) != parts[2]
    assert other_seed.manifest_hash != split.manifest_hash


def test_split_seed_fixes_the_split_whatever_the_seed(image_dir, split):
    """Repeats with one split_seed share their images: seeds 1 and 2 with split_seed 0 split as seed 0
    alone does (the `split` fixture); split_seed 1 splits as seed 1 does."""
    for seed in (1, 2):
        fixed = load_data(make_spec(image_dir, seed=seed, split_seed=0))
        assert fixed.manifest_hash == split.manifest_hash
        for name in ("train", "val", "test"):
            np.testing.assert_array_equal(getattr(fixed, name).paths, getattr(split, name).paths)
    assert (load_data(make_spec(image_dir, seed=0, split_seed=1)).manifest_hash
            == load_data(make_spec(image_dir, seed=1)).manifest_hash != split.manifest_hash)


def test_max_images_per_class_takes_a_seeded_subset(image_dir):
    first = load_data(make_spec(image_dir, max_images_per_class=8))
    second = load_data(make_spec(image_dir, max_images_per_class=8))
    assert first.describe()["counts"]["train"] == dict.fromkeys(CLASSES, 4)
    assert sum(len(p) for p in (first.train, first.val, first.test)) == 24
    assert first.manifest_hash == second.manifest_hash


def test_manifest_hash_changes_when_a_file_is_added(image_dir, split, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(image_dir, copy)
    assert load_data(make_spec(copy)).manifest_hash == split.manifest_hash  # relative paths
    make_image_folder(copy / "blue", 1, ("more",))  # sub-sub-folders are ignored
    assert load_data(make_spec(copy)).manifest_hash == split.manifest_hash
    shutil.copy(copy / "blue" / "blue_000.jpg", copy / "blue" / "blue_099.jpeg")
    assert load_data(make_spec(copy)).manifest_hash != split.manifest_hash


def test_describe_is_json_safe(split):
    described = json.loads(json.dumps(split.describe()))
    assert described["class_names"] == list(CLASSES)
    assert described["manifest_hash"] == split.manifest_hash
    assert len(split.manifest_hash) == 64


def _small_class(root):
    make_image_folder(root, 12, ("big",))
    make_image_folder(root, 2, ("tiny",))


def _one_class(root):
    make_image_folder(root, 12, ("only",))


def _flat_folder(root):
    Image.new("RGB", (40, 30)).save(root / "loose.png")
    (root / "empty_class").mkdir()


def _empty_file(root):
    make_image_folder(root, 12, ("a", "b"))
    (root / "b" / "broken.png").write_bytes(b"")


def test_empty_image_file_is_skipped_and_listed(tmp_path):
    _empty_file(tmp_path)
    with pytest.warns(UserWarning, match="broken.png"):
        data = load_data(make_spec(str(tmp_path)))
    assert data.describe()["skipped_files"] == {"b/broken.png": "empty file (0 bytes)"}
    assert sum(len(p) for p in (data.train, data.val, data.test)) == 24


@pytest.mark.parametrize("make, data_dir, match", [
    (_small_class, "{tmp}", r"class folder .*tiny: 2 image\(s\), too few"),
    (_one_class, "{tmp}", r"has 1 class sub-folder\(s\) \['only'\]; need at least 2"),
    (_flat_folder, "{tmp}", "has no class sub-folders with images"),
    (None, "{tmp}/missing", r"folder .*missing does not exist"),
    (None, "builtin:mnist", "got 'builtin:mnist', expected a folder or one of builtin:digits"),
])
def test_bad_data_folders_raise(tmp_path, make, data_dir, match):
    if make:
        make(tmp_path)
    with pytest.raises(ModelConfigError, match=match):
        load_data(make_spec(data_dir.format(tmp=tmp_path)))


def test_digits_export(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("data_home")
    monkeypatch.setenv(DATA_HOME_ENV, str(home))
    folder = resolve_data_dir("builtin:digits")
    assert folder == home / "digits"
    assert sorted(p.name for p in folder.iterdir()) == [str(d) for d in range(10)]
    files = sorted(folder.rglob("*.png"))
    assert len(files) == 1797
    assert os.listdir(home) == ["digits"]  # the staging folder is gone
    image = Image.open(folder / "0" / "digit_0.png")
    assert (image.size, image.mode) == ((32, 32), "RGB")
    pixels = np.asarray(image)
    expected = np.rint(load_digits().images[0] * 255 / 16)  # ink 0..16 -> 0..255
    for row, column, channel in np.ndindex(4, 4, 3):  # 4x4 nearest-neighbour blocks, grey
        np.testing.assert_array_equal(pixels[row::4, column::4, channel], expected)
    mtime = (folder / "0" / "digit_0.png").stat().st_mtime_ns
    assert resolve_data_dir("builtin:digits") == folder
    assert (folder / "0" / "digit_0.png").stat().st_mtime_ns == mtime  # exported once
    data = load_data(make_spec("builtin:digits"))
    assert data.class_names == [str(d) for d in range(10)]
    assert sum(len(p) for p in (data.train, data.val, data.test)) == 1797


def test_make_dataset_yields_raw_rgb_batches(split):
    dataset = make_dataset(split.train, 24, 4, shuffle=True, seed=3)
    batches = list(dataset)
    images, labels = batches[0]
    assert images.shape == (4, 24, 24, 3) and images.dtype == "float32"
    assert labels.shape == (4,) and labels.dtype == "int32"
    every = np.concatenate([b[0].numpy() for b in batches])
    assert every.shape == (18, 24, 24, 3)
    assert 0 <= every.min() and every.max() <= 255 and every.max() > 150
    second_epoch = np.concatenate([b[1].numpy() for b in dataset])
    first_epoch = np.concatenate([b[1].numpy() for b in batches])
    assert sorted(first_epoch) == sorted(second_epoch) and (first_epoch != second_epoch).any()
    in_order = np.concatenate([b[0].numpy() for b in make_dataset(split.test, 24, 4)])
    np.testing.assert_array_equal(in_order, load_images(split.test.paths, 24))


def test_augmentation_keeps_shape_and_value_range(split):
    aug = Augmentation(flip="horizontal_and_vertical", rotation=0.1, zoom=0.2, stretch=0.2,
                       crop=0.25, translation=0.1)
    layers = build_augmentation(aug, 32, seed=0).layers
    assert [type(layer).__name__ for layer in layers] == [
        "RandomFlip", "RandomRotation", "RandomZoom", "RandomZoom", "RandomTranslation",
        "RandomCrop", "Resizing"]
    assert (layers[5].height, layers[5].width) == (24, 24)
    assert not build_augmentation(Augmentation(), 32, seed=0).layers
    plain = np.concatenate([b[0].numpy() for b in make_dataset(split.train, 32, 6)])
    augmented = np.concatenate([b[0].numpy() for b in make_dataset(
        split.train, 32, 6, augmentation=aug)])
    assert augmented.shape == plain.shape == (18, 32, 32, 3)
    assert 0 <= augmented.min() and augmented.max() <= 255
    assert np.abs(augmented - plain).mean() > 1


# Corrupt and non-image files ------------------------------------------------------------


def test_load_data_skips_corrupt_and_non_image_files_and_records_them(tmp_path):
    root = make_image_folder(tmp_path / "photos", 8)
    reasons = write_corrupt_files(root)
    spec = make_spec(root)
    with pytest.warns(UserWarning, match=r"skipped 4 file\(s\) that are not usable images"):
        data = load_data(spec)
    described = json.loads(json.dumps(data.describe()))
    assert set(described["skipped_files"]) == set(reasons)
    for path, start in reasons.items():
        assert described["skipped_files"][path].startswith(start), described["skipped_files"][path]
    assert sum(sum(counts.values()) for counts in described["counts"].values()) == 24
    used = {Path(p).name for part in (data.train, data.val, data.test) for p in part.paths}
    assert "truncated.jpg" not in used and "fake.png" not in used


def test_load_data_names_the_class_folder_that_runs_empty(tmp_path):
    make_image_folder(tmp_path / "broken_class", 8, ("a",))
    (tmp_path / "broken_class" / "b").mkdir()
    for i in range(6):
        (tmp_path / "broken_class" / "b" / f"b_{i}.jpg").write_text("not a jpeg")
    spec = make_spec(tmp_path / "broken_class")
    with pytest.raises(ModelConfigError, match=r"class folder .*broken_class/b: 0 image\(s\), 6 other "
                                               r"file\(s\) skipped as unusable, too few"):
        with pytest.warns(UserWarning):
            load_data(spec)


def test_image_check_reasons(tmp_path):
    """PIL's header check + verify, plus the JPEG end marker (its cost: bench/preflight_bench.py)."""
    good = make_image_folder(tmp_path / "photos", 2, ("a",)) / "a" / "a_000.jpg"
    jpeg = good.read_bytes()
    (tmp_path / "trailing.jpg").write_bytes(jpeg + b"\0" * 10_000)  # decodable: bytes after the end marker
    (tmp_path / "truncated.jpg").write_bytes(jpeg[:-200])
    Image.new("RGB", (8, 8)).save(tmp_path / "tiff.png", format="TIFF")
    png = (tmp_path / "photos" / "a" / "a_001.png").read_bytes()
    flip = len(png) - 20  # inside the image data, before its CRC and the IEND chunk
    (tmp_path / "bad_crc.png").write_bytes(png[:flip] + bytes([png[flip] ^ 0xFF]) + png[flip + 1:])
    assert check_image_file(good) is None
    assert check_image_file(tmp_path / "trailing.jpg") is None
    assert check_image_file(tmp_path / "truncated.jpg").startswith("corrupt or truncated image")
    assert check_image_file(tmp_path / "tiff.png").startswith("TIFF image: tf.io.decode_image reads only")
    assert check_image_file(tmp_path / "bad_crc.png").startswith("corrupt or truncated image")
