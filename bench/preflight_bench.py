"""Cost of the sweep's pre-flight check: image-file checks and `check_runs` on whole grids.

    python bench/preflight_bench.py [--data ../shared/data/trashnet] [--weights-dir ../shared/weights]

Prints seconds per 1000 files for `models.data.check_image_file` (PIL verify plus
the JPEG end marker) and the wall time of `runner.core.preflight.check_runs` for a
20-run grid of simple CNNs and, with --data, a VGG16 grid over that folder.
Without --data, 1000 generated 384x512 JPEG files stand in for photos.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from models.data import check_image_file  # noqa: E402
from runner.grid import expand_runs, load_grid  # noqa: E402
from runner.core.preflight import check_runs  # noqa: E402


def generated_photos(root: Path, n: int = 1000) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n // 2):
            Image.fromarray(rng.integers(0, 255, (512, 384, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    return root


def time_preflight(grid_text: str, work: Path, label: str) -> None:
    grid = work / f"{label}.yaml"
    grid.write_text(grid_text)
    spec = load_grid(grid)
    runs, _ = expand_runs(spec, grid, base_dir=work)
    started = time.perf_counter()
    check_runs(spec, runs, grid)
    print(f"check_runs, {label}: {len(runs)} runs in {time.perf_counter() - started:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="an ImageFolder of real photos (e.g. TrashNet)")
    parser.add_argument("--weights-dir", type=Path, help="offline ImageNet weights (for the VGG16 grid)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data.resolve() if args.data else generated_photos(work / "photos")
        files = sorted(p for p in data.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        check_image_file(files[0])  # imports, first open
        started = time.perf_counter()
        bad = sum(check_image_file(p) is not None for p in files)
        seconds = time.perf_counter() - started
        print(f"check_image_file: {len(files)} files of {data} in {seconds:.3f} s "
              f"= {1000 * seconds / len(files):.3f} s per 1000 files ({bad} refused)")
        time_preflight(f"data_dir: {data}\nfixed: {{weights: null, image_size: 32}}\n"
                       "grid: {base: [simple_cnn_small, simple_cnn_medium], head: [gap, flatten], "
                       "dropout: [0.1, 0.2, 0.3, 0.4, 0.5]}\n", work, "simple CNNs x 20")
        if args.weights_dir:
            time_preflight(f"data_dir: {data}\nfixed: {{base: vgg16, weights: imagenet, image_size: 128, "
                           f"weights_dir: {args.weights_dir.resolve()}}}\ngrid: {{head: [gap, flatten]}}\n",
                           work, "vgg16 imagenet x 2")


if __name__ == "__main__":
    main()
