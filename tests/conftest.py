"""Shared fixtures: tiny generated image folders, and the optional ../shared folder."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
"""`../shared` beside the project: real TrashNet photos and ImageNet weights (absent in CI)."""


def make_image_folder(root: Path, n_per_class: int = 12, classes=("red", "green", "blue"),
                      size=(40, 30), seed: int = 0) -> Path:
    """Write an ImageFolder-style folder of small learnable images.

    Each class is a noisy image dominated by one colour channel, saved as PNG
    and JPEG alternately, `size` = (width, height) pixels.
    """
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 90, size=(size[1], size[0], 3), dtype=np.uint8)
            pixels[..., c % 3] += 150
            suffix = "png" if i % 2 else "jpg"
            Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.{suffix}")
    return root


@pytest.fixture(scope="session")
def tiny_image_dir(tmp_path_factory) -> Path:
    """3 classes x 12 images of 40x30 pixels (read-only by convention)."""
    return make_image_folder(tmp_path_factory.mktemp("tiny_images"))
