"""Seconds per epoch of iterating a training dataset (no model), decoding every epoch or once.

    python bench/decode_bench.py [--data ../shared/data/trashnet] [--image-size 224] [--epochs 3]

Splits the folder as a run does (`models.data.load_data`, the default seed and
fractions) and iterates the training part in shuffled batches of 32 float32
images, as `fit` would, three ways:

- no cache: `tf.data` maps every file through decode + resize every epoch;
- before: that map followed by an in-memory float32 `Dataset.cache()`,
  a new one (decoding again) for each dataset of the run;
- decoded once (`models.data.make_dataset` now): `decode_images` keeps one uint8
  copy per files and size for the whole process; epochs gather batches from it.

Decoding once happens when `make_dataset` builds the dataset and is timed
apart; a float32 `.cache()` decodes during its first epoch. Skips with a
message when the folder is missing.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tensorflow as tf  # noqa: E402

from models import ExperimentSpec  # noqa: E402
from models.data import clear_decoded_images, load_data, make_dataset  # noqa: E402

BATCH_SIZE = 32


def decoded_every_epoch(part, image_size: int, *, cache: bool) -> tf.data.Dataset:
    """The pipeline without the decoded store: decode + resize in a map (then `.cache()` if asked)."""
    def load(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.image.resize(image, (image_size, image_size)), label

    dataset = tf.data.Dataset.from_tensor_slices((part.paths, part.labels)).map(
        load, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        dataset = dataset.cache()
    return dataset.shuffle(len(part), seed=0).batch(BATCH_SIZE).prefetch(tf.data.AUTOTUNE)


def time_epochs(make, epochs: int) -> tuple[float, list[float]]:
    """Times `make()` (building the dataset) and `epochs` full passes over it.

    Returns:
        `(build_s, [epoch_s, ...])`, seconds.
    """
    start = time.perf_counter()
    dataset, seconds = make(), []
    build_s = time.perf_counter() - start
    for _ in range(epochs):
        start = time.perf_counter()
        for _images, _labels in dataset:
            pass
        seconds.append(time.perf_counter() - start)
    return build_s, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/trashnet"),
                        help="an ImageFolder of photos (default: ../shared/data/trashnet)")
    parser.add_argument("--image-size", type=int, default=224, help="square side, pixels (default: 224)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per pipeline, >= 2 (default: 3)")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"skipped: no image folder at {args.data} (pass --data DIR)")
        return 0
    epochs = max(2, args.epochs)
    data = load_data(ExperimentSpec(data_dir=str(args.data)))
    part, size = data.train, args.image_size
    print(f"{data.data_dir}: training split of {len(part)} images ({len(data.class_names)} classes), "
          f"{size} px, batches of {BATCH_SIZE}, {epochs} epochs each")
    next(iter(decoded_every_epoch(part, size, cache=False)))  # TensorFlow start-up, file cache warm

    _, uncached = time_epochs(lambda: decoded_every_epoch(part, size, cache=False), epochs)
    _, before = time_epochs(lambda: decoded_every_epoch(part, size, cache=True), epochs)
    clear_decoded_images()
    decode_s, once = time_epochs(lambda: make_dataset(part, size, BATCH_SIZE, shuffle=True, seed=0), epochs)
    rebuild_s, again = time_epochs(lambda: make_dataset(part, size, BATCH_SIZE, shuffle=True, seed=0), 1)

    per_epoch, cached = statistics.mean(uncached), statistics.mean(once)
    mb = len(part) * size * size * 3 / 1e6
    listed = lambda seconds: ", ".join(f"{s:.2f}" for s in seconds)  # noqa: E731
    print(f"without the cache (decode + resize every epoch): {per_epoch:.3f} s per epoch ({listed(uncached)})")
    print(f"with the cache (make_dataset, decoded once):      {cached:.3f} s per epoch ({listed(once)}), "
          f"after decoding once in {decode_s:.3f} s")
    print(f"ratio: {per_epoch / cached:.1f}x less time per epoch; the first epoch with its decoding: "
          f"{per_epoch / (decode_s + once[0]):.2f}x")
    print(f"another make_dataset of the same files (the next phase, evaluation): built in {rebuild_s:.3f} s, "
          f"epoch {again[0]:.3f} s (no decoding)")
    print(f"before (a float32 Dataset.cache() in each dataset): first epoch {before[0]:.3f} s (decodes), later "
          f"{statistics.mean(before[1:]):.3f} s per epoch; each new dataset decoded again")
    print(f"memory of the decoded training images: {mb:.0f} MB as uint8 (now), {4 * mb:.0f} MB as float32 (before)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
