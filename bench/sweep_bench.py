"""What the activation cache and pre-started kernels buy: the same head-only sweeps, timed.

    python bench/sweep_bench.py --data ../shared/data/trashnet --weights-dir ../shared/weights
                                [--uncached-runs 1] [--epochs 10] [--fine-tune-epochs 2] [--work DIR]
                                [--cases head-only,fine-tune,prestart]

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

Pre-started kernels case (`--cases prestart`): a 6-configuration head-only
grid (frozen MobileNet 1.0 at 160 px, ImageNet weights, activation cache on:
head gap|flatten x dropout 0.2|0.35|0.5, `--epochs` epochs each), run after
one run that builds the cache (so every measured run reads it), twice into
fresh folders: `--no-prestart`, then `--prestart` (each run's kernel started,
with its imports, while the run before it executes). Printed for each: the
wall time and the mean fixed cost per run on the critical path: for each run
in start order, its notebook's papermill duration minus its training and
evaluation cells (papermill's per-cell durations), plus the gap until the
next run's notebook starts (html export, record, the next kernel's start or
hand-over; after the last run, until its record is written). Then the
ratios, and the lower bound of running each notebook cold: one base pass
(the cache build) + the heads' training seconds + one bare
papermill-with-TensorFlow run (a notebook that imports TensorFlow and Keras)
per configuration. `--prestart-base`, `--prestart-image-size` and
`--prestart-weights` change the model (a quick check of the script:
`--data builtin:digits --prestart-base simple_cnn_small
--prestart-image-size 32 --prestart-weights none --epochs 1 --cases prestart`).

Weighted recall is on the same test split for every run (same seed).
Nothing is written to the project: everything goes under --work (a new
temporary folder by default).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
HEADS, DENSE, DROPOUTS = ("flatten", "gap"), ([128], [512]), (0.2, 0.5)
PRESTART_HEADS, PRESTART_DROPOUTS = ("gap", "flatten"), (0.2, 0.35, 0.5)


def write_grid(path: Path, data: Path, cache_dir: Path, fixed: dict, runs: list[dict]) -> Path:
    """A grid file with its own experiments/logs folders beside it."""
    grid = {"notebook": str(PROJECT / "notebooks" / "base_experiment.ipynb"), "data_dir": str(data),
            "experiments_dir": str(path.parent / f"{path.stem}_experiments"),
            "logs_dir": str(path.parent / f"{path.stem}_logs"),
            "leaderboard": str(path.parent / f"{path.stem}_leaderboard.html"),
            "fixed": {**fixed, "cache_dir": str(cache_dir)}, "runs": runs}
    path.write_text(json.dumps(grid, indent=1))  # JSON is YAML
    return path


def sweep(grid: Path, weights_dir: Path, *extra: str) -> tuple[float, list[dict]]:
    """Runs `python runner/sweep.py grid [extra...]`; returns (wall seconds, records in run order)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(PROJECT / "runner" / "sweep.py"), str(grid),
                           "--weights-dir", str(weights_dir), *extra], capture_output=True, text=True)
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


CELL_LABELS = ((("import models", "import pandas"), "imports of the notebook's first cell"),
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
        parts.setdefault("outside the notebook (warm start, kernel hand-over, html export, record)", []).append(
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
    parser.add_argument("--cases", default="head-only,fine-tune,prestart",
                        help="comma-separated cases to run: head-only, fine-tune, prestart. Default all three")
    parser.add_argument("--prestart-base", default="mobilenet", help="base of the prestart case. Default mobilenet")
    parser.add_argument("--prestart-image-size", type=int, default=160, help="its image size. Default 160")
    parser.add_argument("--prestart-weights", default="imagenet", help="its weights (none: random). Default imagenet")
    parser.add_argument("--max-images-per-class", type=int, help="a subset, for a quick check of the script")
    parser.add_argument("--work", type=Path, help="folder for grids, runs and caches (default: a new temp folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="sweep_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    data = args.data if str(args.data).startswith("builtin:") else args.data.resolve()
    weights_dir = args.weights_dir.resolve()
    fixed = {"base": "vgg16", "weights": "imagenet", "image_size": 128, "epochs": args.epochs,
             "early_stopping_patience": None, "batch_size": 32, "learning_rate": 0.001, "seed": 42,
             "keep_checkpoints": 0, "max_images_per_class": args.max_images_per_class}
    print(f"work folder {work}; VGG16 128 px; data {data}")
    cases = set(args.cases.split(","))
    if "head-only" in cases:
        head_only(args, work, data, weights_dir, fixed)
    if "fine-tune" in cases:
        fine_tune(args, work, data, weights_dir, fixed)
    if "prestart" in cases:
        prestart(args, work, data, weights_dir, fixed)


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


def papermill_spans(records: list[dict], logs: Path) -> list[dict]:
    """Each run's notebook from papermill's metadata, in start order: start, end, duration, work, finished.

    `work` is the seconds of its training and evaluation cells (the rest of a run is fixed cost).
    """
    spans = []
    for record in records:
        notebook = json.loads((logs / record["paths"]["notebook"]).read_text())
        meta = notebook["metadata"]["papermill"]
        work = sum(cell["metadata"].get("papermill", {}).get("duration") or 0.0 for cell in notebook["cells"]
                   if cell["cell_type"] == "code" and "".join(cell["source"]).startswith(
                       ("training = models.train_model", "evaluation = models.evaluate_model")))
        spans.append({"start": datetime.fromisoformat(meta["start_time"]), "end": datetime.fromisoformat(meta["end_time"]),
                      "duration": meta["duration"], "work": work,
                      "finished": datetime.fromisoformat(record["finished_at"])})
    return sorted(spans, key=lambda span: span["start"])


def fixed_costs(records: list[dict], logs: Path) -> list[float]:
    """Per run, seconds on the critical path that are not training or evaluation (see the module docstring)."""
    spans = papermill_spans(records, logs)
    costs = []
    for i, span in enumerate(spans):
        after = (spans[i + 1]["start"] if i + 1 < len(spans) else span["finished"]) - span["end"]
        costs.append(span["duration"] - span["work"] + after.total_seconds())
    return costs


def bare_papermill_s(work: Path) -> float:
    """Seconds of one papermill run of a notebook that only imports TensorFlow and Keras (kernel start included)."""
    import papermill

    cells = [{"cell_type": "code", "id": "imports", "metadata": {}, "outputs": [], "execution_count": None,
              "source": "import tensorflow, keras"}]
    notebook = work / "bare_tensorflow.ipynb"
    notebook.write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": {"name": "python3",
                                    "display_name": "Python 3", "language": "python"}},
                                    "nbformat": 4, "nbformat_minor": 5}))
    sys.stderr.flush()
    saved = os.dup(2)
    with open(work / "bare_tensorflow.kernel.log", "ab") as log:  # the kernel's TensorFlow start-up lines
        os.dup2(log.fileno(), 2)
    try:
        start = time.perf_counter()
        papermill.execute_notebook(str(notebook), str(work / "bare_tensorflow.out.ipynb"), kernel_name="python3",
                                   progress_bar=False, cwd=str(work))
        return time.perf_counter() - start
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def prestart(args, work: Path, data, weights_dir: Path, fixed: dict) -> None:
    """The same 6-configuration head-only sweep without and with pre-started kernels; see the module docstring."""
    weights = None if args.prestart_weights.lower() in ("none", "null") else args.prestart_weights
    fixed = {**fixed, "base": args.prestart_base, "image_size": args.prestart_image_size, "weights": weights,
             "dense_units": [128]}
    configs = [{"head": h, "dropout": p} for h in PRESTART_HEADS for p in PRESTART_DROPOUTS]
    print(f"prestart: {len(configs)} configurations x {args.epochs} epochs, {args.prestart_base} "
          f"{args.prestart_image_size} px, weights {weights}, activation cache on")
    build = write_grid(work / "p_build.yaml", data, work / "p_cache", {**fixed, "epochs": 1}, configs[:1])
    _, built = sweep(build, weights_dir)
    base_pass = sum(r["timings"].get("cache_build_s") or 0.0 for r in built)
    results = {}
    for flag in ("--no-prestart", "--prestart"):
        grid = write_grid(work / f"p_{flag[2:].replace('-', '_')}.yaml", data, work / "p_cache", fixed, configs)
        wall, records = sweep(grid, weights_dir, flag)
        costs = fixed_costs(records, grid.parent / f"{grid.stem}_logs")
        train = sum(r["timings"]["train_s"] for r in records)
        results[flag] = {"wall": wall, "fixed": statistics.mean(costs), "train": train, "records": records,
                         "logs": grid.parent / f"{grid.stem}_logs"}
        print(f"{flag}: {len(records)} runs, wall {wall:.1f} s; mean fixed cost per run on the critical path "
              f"{statistics.mean(costs):.2f} s (per run: {', '.join(f'{c:.1f}' for c in costs)}); head training "
              f"{train:.1f} s; best weighted recall {max(r['metrics']['weighted_recall'] for r in records):.4f}")
    off, on = results["--no-prestart"], results["--prestart"]
    print(f"ratio wall --no-prestart / --prestart: {off['wall'] / on['wall']:.2f}x; fixed cost per run "
          f"{off['fixed']:.2f} s -> {on['fixed']:.2f} s ({off['fixed'] / on['fixed']:.2f}x)")
    bare = bare_papermill_s(work)
    bound = base_pass + on["train"] + len(configs) * bare
    print(f"cold-notebook bound: base pass {base_pass:.1f} s + heads trained {on['train']:.1f} s + {len(configs)} x "
          f"bare papermill with TensorFlow {bare:.1f} s = {bound:.1f} s; --prestart wall / bound "
          f"{on['wall'] / bound:.2f} (target <= 0.9: {'met' if on['wall'] <= 0.9 * bound else 'NOT met'})")
    print(f"target fixed cost per run on the critical path <= 3 s: {'met' if on['fixed'] <= 3 else 'NOT met'} "
          f"({on['fixed']:.2f} s)")
    print("where a --prestart run's time goes (mean):")
    overhead_breakdown(on["records"], on["logs"])


if __name__ == "__main__":
    main()
