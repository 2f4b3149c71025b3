"""Benchmark two CPU levers (XLA and cached augmented copies), each with real sweeps on real photos.

    python bench/recipe_bench.py --data ../shared/data/trashnet --weights-dir ../shared/weights

1. `jit_compile` (XLA): MobileNet 1.0 at 224 px, the whole base fine-tuned from
   the first epoch (`epochs: 0`, `fine_tune_layers: 1.0`), no augmentation, on
   `--jit-images` photos per class, once with `jit_compile: false` and once with
   `true`. Prints each fine-tuning epoch's seconds (the first includes tracing
   and, for XLA, compilation) and the median of the others.
2. Augmentation with a frozen base: MobileNet 1.0 at 224 px frozen, a
   `gap` + 256 head, the same augmentation, on every photo, trained two ways:
   `augmented_copies: 4` (4 augmented copies of each training photo pushed
   through the base once and cached; epochs are cheap) against augmenting on
   the fly (every epoch runs the augmentation and the base again). Prints the
   training seconds, the best validation weighted recall each reached within
   the shorter arm's training time (at equal wall time) and at its end, and
   the test weighted recall of the weights it kept (chosen on validation).

Figures, not assertions. Each part is a real `python runner/sweep.py` in its
own folder under `--work` (`bench/sweep_folder.py`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_folder import run_sweep_in  # noqa: E402  (puts the project on sys.path)

from runner.records import COMPLETED  # noqa: E402

AUGMENTATION = {"flip": "horizontal", "rotation": 0.08, "zoom": 0.15, "translation": 0.1}


def _grid(args, fixed: dict, runs: list[dict]) -> str:
    fixed = {"base": "mobilenet", "weights": "imagenet", "weights_dir": str(Path(args.weights_dir).resolve()),
             "image_size": 224, "batch_size": 32, "keep_checkpoints": 0, **fixed}
    return yaml.safe_dump({"data_dir": str(Path(args.data).resolve()), "fixed": fixed, "runs": runs,
                           "metric": "weighted_recall"}, sort_keys=False)


def _elapsed(rec) -> list[tuple[float, float]]:
    """(seconds since training started, val weighted recall) after each epoch, both phases in order.

    The training time not spent in epochs (building the activation cache,
    compiling) is counted before the first epoch.
    """
    epochs = [(s, acc) for phase in ("head", "fine_tune") if phase in rec.history
              for s, acc in zip(rec.history[phase]["epoch_s"], rec.history[phase]["val_accuracy"])]
    clock = (rec.timings.train_s or 0.0) - sum(s for s, _ in epochs)
    points = []
    for seconds, val in epochs:  # validation accuracy == weighted recall (sum_c n_c/n * TP_c/n_c)
        clock += seconds
        points.append((clock, val))
    return points


def bench_jit(args) -> None:
    runs = [{"name": f"jit_{flag}".lower(), "jit_compile": flag} for flag in (False, True)]
    sweep = run_sweep_in(Path(args.work) / "jit", _grid(args, {
        "epochs": 0, "fine_tune_layers": 1.0, "fine_tune_epochs": args.jit_epochs,
        "fine_tune_learning_rate": 1.0e-4, "max_images_per_class": args.jit_images}, runs), label="jit")
    print(f"jit_compile, MobileNet 1.0 224 px, whole base fine-tuned, {args.jit_images} photos per class "
          f"(wall {sweep.wall_s:.0f} s):")
    for rec in sorted(sweep.records, key=lambda r: r.name or ""):
        if rec.status != COMPLETED:
            print(f"  {rec.name}: {rec.status}: {rec.error.ename if rec.error else ''}: "
                  f"{(rec.error.evalue if rec.error else '')[:300]}")
            continue
        epoch_s = rec.history["fine_tune"]["epoch_s"]
        steady = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else float("nan")
        print(f"  {rec.name}: epochs {', '.join(f'{s:.1f}' for s in epoch_s)} s; first {epoch_s[0]:.1f} s, "
              f"median of the rest {steady:.2f} s; val weighted recall {rec.val_metrics.weighted_recall:.4f}")


def bench_augment(args) -> None:
    fixed = {"head": "gap", "dense_units": [256], "dropout": 0.4, "learning_rate": 0.001, "label_smoothing": 0.1,
             "augmentation": AUGMENTATION, "checkpoint_monitor": "val_weighted_recall",
             "early_stopping_patience": 100}
    runs = [{"name": "copies4", "augmented_copies": 4, "epochs": args.copies_epochs},
            {"name": "on_the_fly", "augmented_copies": 0, "epochs": args.fly_epochs}]
    sweep = run_sweep_in(Path(args.work) / "augment", _grid(args, fixed, runs), label="augment")
    done = {rec.name: rec for rec in sweep.records if rec.status == COMPLETED}
    print(f"augmentation with a frozen MobileNet 1.0 224 px ({AUGMENTATION}; wall {sweep.wall_s:.0f} s):")
    for rec in sweep.records:
        if rec.status != COMPLETED:
            print(f"  {rec.name}: {rec.status}: {rec.error.ename if rec.error else ''}")
    if not done:
        return
    equal = min(rec.timings.train_s for rec in done.values())
    for name, rec in done.items():
        points = _elapsed(rec)
        within = max((val for t, val in points if t <= equal + 1e-6), default=None)
        print(f"  {name}: train {rec.timings.train_s:.0f} s (cache {rec.timings.cache_build_s or 0:.0f} s), "
              f"{len(points)} epochs; best val weighted recall within {equal:.0f} s: "
              f"{'-' if within is None else f'{within:.4f}'}, at its end: {max(v for _, v in points):.4f}; "
              f"kept weights: val {rec.val_metrics.weighted_recall:.4f}, test {rec.metrics.weighted_recall:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/trashnet")
    parser.add_argument("--weights-dir", default="../shared/weights")
    parser.add_argument("--parts", default="jit,augment")
    parser.add_argument("--jit-images", type=int, default=60, help="photos per class for the jit part (default 60)")
    parser.add_argument("--jit-epochs", type=int, default=4)
    parser.add_argument("--copies-epochs", type=int, default=20)
    parser.add_argument("--fly-epochs", type=int, default=8)
    parser.add_argument("--work", default="/tmp/recipe_bench")
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        print(f"data folder {args.data} missing: nothing to benchmark")
        return 0
    parts = {"jit": bench_jit, "augment": bench_augment}
    for part in args.parts.split(","):
        parts[part](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
