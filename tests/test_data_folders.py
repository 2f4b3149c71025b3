"""Class folders whose names start with '.': never silently dropped, reported with the reason."""

import json

import pytest

from models.data import list_image_folder, load_data
from models.errors import ModelConfigError
from models.spec import ExperimentSpec

from helpers import make_image_folder

HIDDEN = "hidden folder (name starts with '.'), not used as a class"


@pytest.fixture
def dotted_folder(tmp_path):
    """Classes `a` and `b`, a folder `..x` of 30 images, and the usual hidden folders."""
    root = make_image_folder(tmp_path / "photos", 8, ("a", "b"), size=(8, 8))
    make_image_folder(root, 30, ("..x",), size=(8, 8))
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "explore-checkpoint.ipynb").write_text("{}")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "a" / ".ipynb_checkpoints").mkdir()  # a hidden folder inside a class folder
    return root


def test_dot_folder_of_images_is_reported_not_silently_dropped(dotted_folder):
    """`..x` (30 images) was in neither the classes nor the skipped files; now it is skipped and says why."""
    folder = list_image_folder(dotted_folder)
    assert folder.class_names == ["a", "b"]
    assert folder.skipped_files["..x"] == (
        f"{HIDDEN}: it holds 30 image file(s); rename it without the leading '.' to use them as a class")
    assert folder.skipped_files[".ipynb_checkpoints"] == f"{HIDDEN} (no image files in it)"
    assert folder.skipped_files[".git"] == f"{HIDDEN} (no image files in it)"
    assert folder.skipped_files["a/.ipynb_checkpoints"] == (
        "a hidden folder: images in sub-folders of a class folder are not read")
    assert len(folder.skipped_files) == 4


def test_load_data_warns_about_and_records_the_dot_folders(dotted_folder):
    spec = ExperimentSpec(data_dir=str(dotted_folder), val_fraction=0.25, test_fraction=0.25)
    with pytest.warns(UserWarning, match=r"skipped 4 file\(s\).*\.\.x: hidden folder \(name starts with '\.'\), "
                                         r"not used as a class: it holds 30 image file\(s\)"):
        data = load_data(spec)
    described = json.loads(json.dumps(data.describe()))  # what the run record keeps
    assert described["class_names"] == ["a", "b"]
    assert {"..x", ".git", ".ipynb_checkpoints", "a/.ipynb_checkpoints"} == set(described["skipped_files"])
    assert sum(sum(counts.values()) for counts in described["counts"].values()) == 16
    used = [p for part in (data.train, data.val, data.test) for p in part.paths]
    assert not any("..x" in p or ".ipynb_checkpoints" in p for p in used)


def test_only_hidden_class_folders_are_named_in_the_error(tmp_path):
    """A folder whose only sub-folders are hidden says so instead of 'no class sub-folders' alone."""
    root = make_image_folder(tmp_path / "photos", 3, (".a", "..b"), size=(8, 8))
    with pytest.raises(ModelConfigError, match=r"has no class sub-folders with images; .*hidden folders, names "
                                               r"starting with '\.', are never classes: \.\.b: .*it holds 3 "
                                               r"image file\(s\).*\.a: .*it holds 3 image file\(s\)"):
        list_image_folder(root)
