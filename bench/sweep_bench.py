"""What the activation cache buys: the same head-only sweep uncached, cold and warm; fine-tuning from a cut.

    python bench/sweep_bench.py --data ../shared/data/trashnet --weights-dir ../shared/weights
                                [--uncached-runs 1] [--epochs 10] [--fine-tune-epochs 2] [--work DIR]

Head-only case: one grid, VGG16 (ImageNet weights, frozen) at 128 px, 8
configurations (head flatten|gap x dense [128]|[512] x dropout 0.2|0.5),
10 epochs each without early stopping, run by `python runner/sweep.py` three
ways, each into fresh experiments/logs folders:

  (a) cache disabled (`activation_cache: false`): every epoch runs VGG16;
  (b) cache enabled, empty cache folder: the first run builds the entry;
  (c) cache enabled again, same cache folder: every run reads it.

(a) costs about an hour on 2 cores, so by default only the first
`--uncached-runs` configurations run uncached and its wall time is
extrapolated to 8 (printed as such). Per-run fixed overhead is a run's
`total_s - train_s` (kernel start, imports, data listing, model build,
evaluation, html export, record), averaged over the warm runs.

Fine-tuning case: VGG16 + gap head, 1 head epoch, then fine-tuning of
block5 (its 4 layers) for `--fine-tune-epochs` epochs, uncached and cached;
compares the median of the fine-tuning epochs' seconds
(`history.fine_tune.epoch_s`; the median, because a shared virtual machine
sometimes stalls one epoch). `--cases` runs one case alone.
The cached run trains block5 + head on stored block4 outputs.

Weighted recall is on the same test split for every run (same seed).
Nothing is written to the project: everything goes under --work (a new
temporary folder by default).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
HEADS, DENSE, DROPOUTS = ("flatten", "gap"), ([128], [512]), (0.2, 0.5)


def write_grid(path: Path, data: Path, cache_dir: Path, fixed: dict, runs: list[dict]) -> Path:
    """A grid file with its own experiments/logs folders beside it."""
    grid = {"notebook": str(PROJECT / "notebooks" / "base_experiment.ipynb"), "data_dir": str(data),
            "experiments_dir": str(path.parent / f"{path.stem}_experiments"),
            "logs_dir": str(path.parent / f"{path.stem}_logs"),
            "leaderboard": str(path.parent / f"{path.stem}_leaderboard.html"),
            "fixed": {**fixed, "cache_dir": str(cache_dir)}, "runs": runs}
    path.write_text(json.dumps(grid, indent=1))  # JSON is YAML
    return path


def sweep(grid: Path, weights_dir: Path) -> tuple[float, list[dict]]:
    """Runs `python runner/sweep.py grid`; returns (wall seconds, records in run order)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(PROJECT / "runner" / "sweep.py"), str(grid),
                           "--weights-dir", str(weights_dir)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"sweep {grid} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    logs = grid.parent / f"{grid.stem}_logs"
    records = sorted((json.loads(p.read_text()) for p in logs.glob("*.json")), key=lambda r: r["started_at"])
    return wall, records


def describe(label: str, wall: float, records: list[dict]) -> dict:
    overheads = [r["timings"]["total_s"] - r["timings"]["train_s"] for r in records]
    train = sum(r["timings"]["train_s"] for r in records)
    build = sum(r["timings"].get("cache_build_s") or 0 for r in records)
    statuses = [r.get("activation_cache", {}).get("head", {}).get("status") for r in records]
    best = max(records, key=lambda r: r["metrics"]["weighted_recall"])
    print(f"{label}: {len(records)} runs, wall {wall:.1f} s; head training {train:.1f} s "
          f"(of which building the cache {build:.1f} s); per-run overhead mean {statistics.mean(overheads):.1f} s; "
          f"cache {', '.join(sorted(set(map(str, statuses))))}; best weighted recall "
          f"{best['metrics']['weighted_recall']:.4f} ({best['params']['head']}, dense {best['params']['dense_units']}, "
          f"dropout {best['params']['dropout']})")
    return {"wall": wall, "train": train, "overhead": statistics.mean(overheads), "build": build}


CELL_LABELS = (("import models", "imports of the notebook's first cell"),
               ("data = models.load_data", "TensorFlow import + listing and splitting the data"),
               ("model = models.build_model", "building the model, loading the base weights"),
               ("training = models.train_model", "training (not overhead)"),
               ("evaluation = models.evaluate_model", "evaluation on the test split"),
               ("write_result", "writing result.json"))


def overhead_breakdown(records: list[dict], logs: Path) -> None:
    """Prints where a run's time goes, averaged over `records`, from papermill's per-cell durations."""
    parts: dict[str, list[float]] = {}
    for record in records:
        notebook = json.loads((logs / record["paths"]["notebook"]).read_text())
        cells = [(("".join(c["source"])), c["metadata"].get("papermill", {}).get("duration") or 0.0)
                 for c in notebook["cells"] if c["cell_type"] == "code"]
        executed = notebook["metadata"]["papermill"]["duration"]
        for prefix, label in CELL_LABELS:
            parts.setdefault(label, []).append(sum(d for source, d in cells if source.startswith(prefix)))
        parts.setdefault("other cells (parameters, display)", []).append(
            sum(d for source, d in cells if not any(source.startswith(p) for p, _ in CELL_LABELS)))
        parts.setdefault("kernel start and shutdown (papermill, outside cells)", []).append(
            executed - sum(d for _, d in cells))
        parts.setdefault("html export + record (after the notebook)", []).append(
            record["timings"]["total_s"] - executed)
    for label, values in parts.items():
        print(f"  {statistics.mean(values):6.2f} s  {label}")


def recalls(records: list[dict]) -> dict:
    return {(r["params"]["head"], r["params"]["dense_units"][0], r["params"]["dropout"]):
            r["metrics"]["weighted_recall"] for r in records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="ImageFolder of photos (TrashNet)")
    parser.add_argument("--weights-dir", type=Path, required=True, help="offline ImageNet weights folder")
    parser.add_argument("--uncached-runs", type=int, default=1, help="configurations run uncached in (a) "
                        "(1..8; the wall time is extrapolated to 8). Default 1")
    parser.add_argument("--epochs", type=int, default=10, help="head epochs per run. Default 10")
    parser.add_argument("--fine-tune-epochs", type=int, default=3, help="fine-tuning epochs compared. Default 3")
    parser.add_argument("--cases", default="head-only,fine-tune",
                        help="comma-separated cases to run: head-only, fine-tune. Default both")
    parser.add_argument("--max-images-per-class", type=int, help="a subset, for a quick check of the script")
    parser.add_argument("--work", type=Path, help="folder for grids, runs and caches (default: a new temp folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="sweep_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    data, weights_dir = args.data.resolve(), args.weights_dir.resolve()
    fixed = {"base": "vgg16", "weights": "imagenet", "image_size": 128, "epochs": args.epochs,
             "early_stopping_patience": None, "batch_size": 32, "learning_rate": 0.001, "seed": 42,
             "keep_checkpoints": 0, "max_images_per_class": args.max_images_per_class}
    print(f"work folder {work}; VGG16 128 px; data {data}")
    cases = set(args.cases.split(","))
    if "head-only" in cases:
        head_only(args, work, data, weights_dir, fixed)
    if "fine-tune" in cases:
        fine_tune(args, work, data, weights_dir, fixed)


def head_only(args, work: Path, data: Path, weights_dir: Path, fixed: dict) -> None:
    """The head-only case: (a) uncached, (b) cache cold, (c) cache warm; see the module docstring."""
    configs = [{"head": h, "dense_units": d, "dropout": p} for h in HEADS for d in DENSE for p in DROPOUTS]
    print(f"head-only: {len(configs)} configurations x {args.epochs} epochs")

    uncached_n = max(1, min(len(configs), args.uncached_runs))
    grid_a = write_grid(work / "a_uncached.yaml", data, work / "cache_unused",
                        {**fixed, "activation_cache": False}, configs[:uncached_n])
    grid_b = write_grid(work / "b_cold.yaml", data, work / "cache", fixed, configs)
    grid_c = write_grid(work / "c_warm.yaml", data, work / "cache", fixed, configs)
    a = describe(f"(a) uncached, {uncached_n} of {len(configs)} configurations", *(run_a := sweep(grid_a, weights_dir)))
    runs_s = sum(r["timings"]["total_s"] for r in run_a[1])
    a_wall_8 = a["wall"] - runs_s + runs_s * len(configs) / uncached_n
    if uncached_n < len(configs):
        print(f"(a) extrapolated to {len(configs)} configurations: {a_wall_8:.1f} s (sweep start-up "
              f"{a['wall'] - runs_s:.1f} s + {runs_s:.1f} s of runs x {len(configs)}/{uncached_n}; not measured)")
    b = describe("(b) cache cold", *(run_b := sweep(grid_b, weights_dir)))
    c = describe("(c) cache warm", *(run_c := sweep(grid_c, weights_dir)))
    print(f"ratio a/b {a_wall_8 / b['wall']:.1f}x, a/c {a_wall_8 / c['wall']:.1f}x"
          f"{' (a extrapolated)' if uncached_n < len(configs) else ''}")
    ra, rb, rc = recalls(run_a[1]), recalls(run_b[1]), recalls(run_c[1])
    for key in ra:
        print(f"weighted recall of {key}: a {ra[key]:.4f}, b {rb[key]:.4f}, c {rc[key]:.4f}")
    print(f"best weighted recall: a {max(ra.values()):.4f} ({uncached_n} configuration(s)), "
          f"b {max(rb.values()):.4f}, c {max(rc.values()):.4f}")
    bound = 1.3 * (len(configs) * c["overhead"] + c["train"])
    print(f"target warm wall <= 1.3 x (8 x overhead + head training) = {bound:.1f} s: "
          f"{'met' if c['wall'] <= bound else 'NOT met'} ({c['wall']:.1f} s)")
    print(f"target a/c >= 20x: {'met' if a_wall_8 / c['wall'] >= 20 else 'NOT met'}; "
          f"cold minus warm {b['wall'] - c['wall']:.1f} s (building the cache: {b['build']:.1f} s)")
    print(f"target per-run fixed overhead <= 12 s: {'met' if c['overhead'] <= 12 else 'NOT met'} "
          f"({c['overhead']:.1f} s warm, {a['overhead']:.1f} s uncached)")
    print("where a warm run's time goes (mean of the (c) runs):")
    overhead_breakdown(run_c[1], grid_c.parent / f"{grid_c.stem}_logs")


def fine_tune(args, work: Path, data: Path, weights_dir: Path, fixed: dict) -> None:
    """Fine-tuning block5 on cached block4 outputs against the full forward pass (median epoch seconds)."""
    ft = {**fixed, "epochs": 1, "head": "gap", "dense_units": [256], "dropout": 0.5,
          "fine_tune_layers": 4, "fine_tune_epochs": args.fine_tune_epochs, "fine_tune_learning_rate": 1e-5}
    per_epoch = {}
    for label, use in (("uncached", False), ("cached", True)):
        grid = write_grid(work / f"ft_{label}.yaml", data, work / "cache", {**ft, "activation_cache": use}, [{}])
        wall, (record,) = sweep(grid, weights_dir)
        epochs = record["history"]["fine_tune"]["epoch_s"]
        per_epoch[label] = statistics.median(epochs)
        use_ft = record.get("activation_cache", {}).get("fine_tune", {})
        print(f"fine-tune block5, {label}: {len(epochs)} epochs, median {per_epoch[label]:.1f} s/epoch "
              f"({', '.join(f'{e:.1f}' for e in epochs)}); cache {use_ft.get('status')} "
              f"{use_ft.get('cut_layer', '')} (build {use_ft.get('build_s', 0):.1f} s); weighted recall "
              f"{record['metrics']['weighted_recall']:.4f}; wall {wall:.1f} s")
    ratio = per_epoch["uncached"] / per_epoch["cached"]
    print(f"fine-tuning per epoch (medians): uncached/cached {ratio:.1f}x; target >= 3x: {'met' if ratio >= 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
