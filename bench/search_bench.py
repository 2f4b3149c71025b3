"""Benchmark: the same search space, three ways, under the same wall-clock budget.

    python bench/search_bench.py --data ../shared/data/trashnet --weights-dir ../shared/weights --budget 30m

Arms (each a real `python runner/sweep.py` in a work folder of its own, one
after the other so they do not share the 2 cores):

1. `grid`: the plain grid in `ParameterGrid` order, no pruning, stopped
   (SIGTERM) when the budget is spent;
2. `random`: `search: {sampler: random, pruner: none, budget, max_run_share}`;
3. `tpe+hyperband`: `search: {sampler: tpe, pruner: hyperband, budget, max_run_share}`,
   once per sampler seed of `--sampler-seeds` (one sampled run is one sample
   of what a sampler does: its time to the target varies with its seed);
4. `keras-tuner` (only if `keras_tuner` imports; not a project requirement:
   `pip install keras-tuner==1.4.8`): Keras Tuner's Hyperband on the same space
   and budget in one process (`bench/keras_tuner_arm.py`), else reported as
   skipped.

For each arm it prints the best validation and test weighted recall reached
and the wall time at which it was reached (from the records' `finished_at`),
the runs completed and pruned, and the time-to-target ratio: each sampled
arm's time to the grid arm's best validation figure over the grid arm's own
time to it (the target: at most 0.5), per sampler seed and their median. Figures, not
assertions: this is a benchmark, not a test. `--reuse grid` reads an arm
back from an earlier run of the same settings in `--work` (an arm's grid
text must match exactly) instead of spending its budget again, to compare a
changed sampled arm with it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

import yaml  # noqa: E402

from runner.records import COMPLETED, DONE_STATUSES, PRUNED  # noqa: E402
from runner.search import parse_duration  # noqa: E402
from sweep_folder import read_sweep_in, run_sweep_in, run_until  # noqa: E402

SPACE = {
    "base": ["mobilenet", "vgg16"],
    "image_size": [128, 160, 224],
    "head": ["gap", "flatten"],
    "dense_units": [[], [256]],
    "dropout": [0.2, 0.5],
    "learning_rate": [0.001, 0.0003],
    "fine_tune_layers": [0, 6],
    "augmentation": [None, {"flip": "horizontal", "rotation": 0.05}],
}
"""The search space (lists, so the grid arm and the samplers see the same points)."""


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()


def fixed_params(args) -> dict:
    """The parameters every run of every arm shares."""
    return {"weights": "imagenet", "weights_dir": str(Path(args.weights_dir).resolve()), "epochs": args.epochs,
            "fine_tune_epochs": args.fine_tune_epochs, "fine_tune_learning_rate": 1.0e-5, "batch_size": 32,
            "keep_checkpoints": 0, "augmented_copies": 2, "early_stopping_patience": 3,
            "max_images_per_class": args.max_images_per_class}


def grid_text(args, arm: str, budget_s: float, sampler_seed: int = 0) -> str:
    fixed = fixed_params(args)
    # YAML, not JSON: PyYAML writes 1e-05 as 1.0e-05, which YAML 1.1 reads back as a number
    lines = [f"data_dir: {Path(args.data).resolve()}", f"fixed: {_flow(fixed)}", f"grid: {_flow(SPACE)}",
             "metric: weighted_recall"]
    share = f", max_run_share: {args.max_run_share}" if args.max_run_share else ""
    if arm == "random":
        lines.append(f"search: {{sampler: random, n_runs: 1000, pruner: none, budget: {budget_s:.0f}{share}, "
                     f"seed: {sampler_seed}}}")
    elif arm == "tpe+hyperband":
        lines.append(f"search: {{sampler: tpe, n_runs: 1000, pruner: hyperband, min_epochs: 2, "
                     f"budget: {budget_s:.0f}{share}, seed: {sampler_seed}}}")
    return "\n".join(lines) + "\n"


def run_arm(args, arm: str, budget_s: float, sampler_seed: int = 0) -> dict:
    """One arm's sweep (sampled arms with `sampler_seed`); its runs' times, figures and counts."""
    sampled = arm != "grid"
    label = f"{arm} seed {sampler_seed}" if sampled else arm
    work = Path(args.work) / (arm.replace("+", "_") + (f"_seed{sampler_seed}" if sampled else ""))
    text = grid_text(args, arm, budget_s, sampler_seed)
    sweep = (read_sweep_in(work, text) if arm in args.reuse.split(",") else None) or run_sweep_in(
        work, text, budget_s, label)
    records, start, wall = sweep.records, sweep.start, sweep.wall_s
    reached = []  # (seconds since start, val, test) of every completed run
    for rec in records:
        if rec.status == COMPLETED and rec.val_metrics:
            t = datetime.fromisoformat(rec.finished_at).timestamp() - start
            reached.append((t, rec.val_metrics.weighted_recall, rec.metrics.weighted_recall, rec.run_id))
    reached.sort()
    best = max(reached, key=lambda r: (r[1], -r[0]), default=None)
    return {"arm": label, "wall_s": wall, "completed": sum(r.status == COMPLETED for r in records),
            "pruned": sum(r.status == PRUNED for r in records),
            "other": sum(r.status not in DONE_STATUSES for r in records),
            "best": best, "reached": reached}


def run_keras_tuner_arm(args, budget_s: float) -> dict:
    """`bench/keras_tuner_arm.py` in its own folder, stopped with SIGTERM after `budget_s`; its trials as
    `run_arm`'s result (every trial counts as completed: Hyperband trains each to the epochs it gives it)."""
    work = Path(args.work) / "keras_tuner"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    fixed = {**fixed_params(args), "data_dir": str(Path(args.data).resolve())}
    start = time.time()
    _, output = run_until([sys.executable, str(PROJECT / "bench" / "keras_tuner_arm.py"), "--work", str(work),
                           "--space", json.dumps(SPACE), "--fixed", json.dumps(fixed)], work, budget_s)
    wall = time.time() - start
    (work / "keras_tuner.log").write_text(output or "", encoding="utf-8")
    trials = [json.loads(line) for line in (work / "trials.jsonl").read_text(encoding="utf-8").splitlines()
              if line.strip()] if (work / "trials.jsonl").exists() else []
    reached = sorted((t["finished"] - start, t["val"], t["test"], f"trial {i} ({t['budget_epochs']} epochs)")
                     for i, t in enumerate(trials))
    best = max(reached, key=lambda r: (r[1], -r[0]), default=None)
    return {"arm": "keras-tuner", "wall_s": wall, "completed": len(trials), "pruned": 0, "other": 0,
            "best": best, "reached": reached}


def time_to(arm: dict, target: float):
    for t, val, _, _ in arm["reached"]:
        if val >= target - 1e-12:
            return t
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/trashnet")
    parser.add_argument("--weights-dir", default="../shared/weights")
    parser.add_argument("--budget", default="30m", help="wall-clock budget of each arm (default 30m)")
    parser.add_argument("--epochs", type=int, default=6, help="head epochs per run (default 6)")
    parser.add_argument("--fine-tune-epochs", type=int, default=2)
    parser.add_argument("--max-images-per-class", type=int, default=None)
    parser.add_argument("--max-run-share", type=float, default=0.25,
                        help="the sampled arms' search.max_run_share (default 0.25; 0: off)")
    parser.add_argument("--arms", default="grid,random,tpe+hyperband,keras-tuner")
    parser.add_argument("--sampler-seeds", default="0",
                        help="comma-separated seeds of the sampled arms' samplers, each one sweep (default 0)")
    parser.add_argument("--work", default="/tmp/search_bench")
    parser.add_argument("--reuse", default="", metavar="ARMS",
                        help="arms (comma-separated) read back from an earlier sweep in --work with the same grid "
                             "text instead of run again (their figures are from that run)")
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        print(f"data folder {args.data} missing: nothing to benchmark")
        return 0
    budget_s = parse_duration(args.budget)
    print(f"search space: {json.dumps(SPACE)}; budget {budget_s:.0f} s per arm; max_run_share "
          f"{args.max_run_share or 'off'}; data {Path(args.data).resolve()}")
    seeds = [int(seed) for seed in args.sampler_seeds.split(",")]
    results = []
    plan = [(name, seed) for name in args.arms.split(",")
            for seed in (seeds if name in ("random", "tpe+hyperband") else [0])]
    for arm, seed in plan:
        if arm == "keras-tuner":
            try:
                import keras_tuner  # noqa: F401
            except ImportError:
                print("keras-tuner: not installed (not a project requirement): arm skipped")
                continue
            result = run_keras_tuner_arm(args, budget_s)
        else:
            result = run_arm(args, arm, budget_s, seed)
        results.append(result)
        best = result["best"]
        text = (f"best val weighted recall {best[1]:.4f} (test {best[2]:.4f}) reached at {best[0]:.0f} s by {best[3]}"
                if best else "no completed run")
        print(f"{result['arm']:>21}: wall {result['wall_s']:.0f} s; {result['completed']} completed, {result['pruned']} pruned, "
              f"{result['other']} other; {text}", flush=True)
    grid = next((r for r in results if r["arm"] == "grid"), None)
    for name in ("tpe+hyperband", "keras-tuner"):
        arms = [r for r in results if r["arm"].split(" seed ")[0] == name]
        if not (grid and grid["best"] and arms):
            continue
        target = grid["best"][1]
        t_grid = time_to(grid, target)
        ratios = []
        for arm in arms:
            t_arm = time_to(arm, target)
            ratio = float("inf") if t_arm is None else t_arm / max(t_grid, 1e-9)
            ratios.append(ratio)
            reached = f"{arm['arm']} never reached it" if t_arm is None else f"{arm['arm']} {t_arm:.0f} s"
            print(f"time to the grid arm's best val {target:.4f}: grid {t_grid:.0f} s, {reached} "
                  f"(its time / the grid's: {ratio:.2f})")
            if arm["best"]:
                print(f"best run's test weighted recall: {arm['arm']} {arm['best'][2]:.4f}, grid "
                      f"{grid['best'][2]:.4f}")
        median = statistics.median(ratios)
        print(f"{name}: time-to-target ratio per sampler seed {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {median:.2f} (target <= 0.5: {'met' if median <= 0.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
