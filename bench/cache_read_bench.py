"""Cost of reading an activation-cache entry per epoch: the streamed reader against the in-memory one it replaced.

    python bench/cache_read_bench.py [--rows 1507] [--shape 4,4,1024] [--batch-size 32] [--epochs 3]
                                     [--readers streamed,in_memory,dataset_load]

Writes one synthetic float32 array of `--rows` rows of `--shape` (default:
TrashNet's training split, 1507 photos, as frozen MobileNet 1.0 at 128 px
gives it: 4x4x1024 floats, 64 KiB a row) into a temporary entry with
`models.cache.ArrayWriter`, then, per reader, in a fresh process each (so
peak memory is the reader's own), iterates `--epochs` shuffled epochs of
batches and prints the seconds of the first and of the later epochs and the
process's peak anonymous memory (RssAnon high-water mark is not kept by
Linux, so it is sampled every 10 ms):

- `streamed`: today's reader, `models.data.batch_arrays` over the entry's
  `VerifiedArray` (memory map; each chunk's CRC-32 checked on first read, so
  the first epoch pays the checksums);
- `in_memory`: the reader it replaced, every row copied into a
  `from_tensor_slices` constant and shuffled with a buffer of the whole split;
- `dataset_load`: the alternative of `tf.data.Dataset.save` / `load` (shards
  written once, read in order, shuffled with a buffer of 1,024 rows; this
  changes the batch order, so figures would change).

Run it alone on the machine: the times are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
READERS = ("streamed", "in_memory", "dataset_load")


def rss_anon_bytes() -> int:
    """This process's RssAnon from /proc/self/status, bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def run_reader(reader: str, entry: Path, rows: int, batch_size: int, epochs: int) -> dict:
    """Iterates `epochs` epochs of `reader` over the entry; returns seconds per epoch and peak RssAnon."""
    sys.path.insert(0, str(PROJECT_ROOT))
    import numpy as np
    import tensorflow as tf
    from models import cache
    from models.data import batch_arrays

    peak = [rss_anon_bytes()]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon_bytes())
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    baseline = rss_anon_bytes()
    labels = np.arange(rows, dtype=np.int32) % 6
    if reader == "streamed":
        arrays = cache.ActivationCache(entry.parent).load(entry.name)
        dataset = batch_arrays([arrays["train"]], labels, batch_size, shuffle=True, seed=0)
    elif reader == "in_memory":
        x = np.load(entry / "train.npy", mmap_mode="r")
        dataset = tf.data.Dataset.from_tensor_slices((np.asarray(x).astype(np.float32, copy=False), labels)) \
            .shuffle(rows, seed=0, reshuffle_each_iteration=True).take(rows).batch(batch_size)
    else:
        saved = entry / "saved_dataset"
        if not saved.exists():
            x = np.load(entry / "train.npy", mmap_mode="r")
            source = tf.data.Dataset.range(rows).batch(256).map(
                lambda i: (tf.numpy_function(lambda j: np.asarray(x[j], np.float32), [i], tf.float32),
                           tf.gather(labels, i))).unbatch()
            source.save(str(saved))
        dataset = tf.data.Dataset.load(str(saved)).shuffle(1024, seed=0, reshuffle_each_iteration=True) \
            .batch(batch_size)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    epoch_s = []
    for _ in range(epochs):
        start = time.perf_counter()
        seen = sum(int(x.shape[0]) for x, _ in dataset)
        epoch_s.append(time.perf_counter() - start)
        assert seen == rows, (reader, seen)
    done.set()
    return {"reader": reader, "epoch_s": epoch_s, "peak_rss_anon": peak[0], "baseline_rss_anon": baseline}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1507)
    parser.add_argument("--shape", default="4,4,1024", help="row shape, comma-separated")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--readers", default=",".join(READERS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        reader, entry = args.child.split(":", 1)
        print(json.dumps(run_reader(reader, Path(entry), args.rows, args.batch_size, args.epochs)))
        return 0

    sys.path.insert(0, str(PROJECT_ROOT))
    import numpy as np
    from models import cache

    shape = tuple(int(d) for d in args.shape.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        entry = Path(tmp) / ("0" * 32)
        entry.mkdir()
        writer = cache.ArrayWriter(entry / "train.npy", (args.rows, *shape), "float32")
        rng = np.random.default_rng(0)
        for start in range(0, args.rows, 256):
            writer.write(rng.random((min(256, args.rows - start), *shape), dtype=np.float32))
        meta = {"format": cache.CACHE_FORMAT, "key": entry.name, "inputs": {}, "arrays": {"train": writer.close()}}
        (entry / cache.META_FILE).write_text(json.dumps(meta))
        size_mb = (entry / "train.npy").stat().st_size / 1e6
        print(f"entry: {args.rows} rows of {shape} float32, {size_mb:.0f} MB; batch {args.batch_size}; "
              f"load average {os.getloadavg()[0]:.2f}")
        for reader in args.readers.split(","):
            output = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--shape", args.shape,
                                     "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
                                     "--child", f"{reader}:{entry}"], capture_output=True, text=True, check=True)
            result = json.loads(output.stdout.strip().splitlines()[-1])
            first, *later = result["epoch_s"]
            print(f"{reader:>12}: first epoch {first:.2f} s, later epochs {np.mean(later) if later else float('nan'):.2f} s "
                  f"(per 1k rows {1000 * (np.mean(later) if later else first) / args.rows:.3f} s); peak RssAnon "
                  f"{result['peak_rss_anon'] / 2**20:.0f} MiB ({(result['peak_rss_anon'] - result['baseline_rss_anon']) / 2**20:+.0f} "
                  f"MiB over the process after imports)")
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
