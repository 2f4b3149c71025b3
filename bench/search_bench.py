"""Benchmark: the same search space, three ways, under the same wall-clock budget.

    python bench/search_bench.py --data ../shared/data/trashnet --weights-dir ../shared/weights --budget 10m

Arms (each a real `python runner/sweep.py` in a work folder of its own, one
after the other so they do not share the 2 cores):

1. `grid`: the plain grid in `ParameterGrid` order, no pruning, stopped
   (SIGTERM) when the budget is spent;
2. `random`: `search: {sampler: random, pruner: none, budget, max_run_share}`;
3. `tpe`: `search: {sampler: tpe, pruner: none, budget, max_run_share}`, the
   project's default search (`runner.search.SearchSpec`'s defaults; TPE starts
   with cheap points: `runner.search.SamplerKind.cheap_start`);
4. `tpe+hyperband`: the same with `pruner: hyperband, min_epochs: 2`;
5. `keras-tuner` (only if `keras_tuner` imports; not a project requirement:
   `pip install keras-tuner==1.4.8`): Keras Tuner's Hyperband on the same space
   and budget in one process (`bench/keras_tuner_arm.py`), else reported as
   skipped.

Every arm but the grid runs once per sampler seed of `--sampler-seeds` (one
run of a search is one sample of what its sampler does). Each arm's sweep runs in a
folder of its own under `--work` with an activation cache of its own, so no arm
reads another's.

For each arm it prints the best validation and test weighted recall reached
and the wall time at which it was reached (from the records' `finished_at`),
the runs completed and pruned; then, per arm and seed, the best validation
figure at 25, 50, 75 and 100 % of the budget; then random search's median
(over seeds) final best, each arm's time to reach it per seed and their
median, as a multiple of random's own median time to it (a seed that never
reaches it counts as infinite), and, for each TPE arm, the three targets
(at most 0.5 x random's time; its median final best at least random's and
the grid's; above Keras Tuner's). It writes the any-time plot
(best validation figure against wall time, one line per arm and seed) to
`--plot`. Figures, not assertions: this is a benchmark, not a test.
`--reuse random,grid` reads those arms back from an earlier run of the same
settings in `--work` (an arm's grid text must match exactly) instead of
spending their budget again, so the benchmark can span sessions.
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
ARMS = ("grid", "random", "tpe", "tpe+hyperband", "keras-tuner")
"""The arms `--arms` may name."""
SEARCHES = ("tpe", "tpe+hyperband")
"""The arms the targets are printed for (the project's search, default first)."""
QUARTERS = (0.25, 0.5, 0.75, 1.0)
"""Shares of the budget at which each arm's best validation figure is printed."""


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
    elif arm == "tpe":
        lines.append(f"search: {{sampler: tpe, n_runs: 1000, pruner: none, budget: {budget_s:.0f}{share}, "
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


def run_keras_tuner_arm(args, budget_s: float, sampler_seed: int = 0) -> dict:
    """`bench/keras_tuner_arm.py` (tuner seed `sampler_seed`) in its own folder, stopped with SIGTERM after
    `budget_s`; its trials as `run_arm`'s result (every trial counts as completed: Hyperband trains each to the
    epochs it gives it)."""
    work = Path(args.work) / f"keras_tuner_seed{sampler_seed}"
    fixed = {**fixed_params(args), "data_dir": str(Path(args.data).resolve())}
    command = [sys.executable, str(PROJECT / "bench" / "keras_tuner_arm.py"), "--work", str(work), "--space",
               json.dumps(SPACE), "--fixed", json.dumps(fixed), "--seed", str(sampler_seed)]
    key = command[1:] + [budget_s]  # what --reuse matches (the interpreter's path left out)
    done = work / "arm.json"  # the key, the start and the wall time, read back by --reuse
    earlier = json.loads(done.read_text(encoding="utf-8")) if done.exists() else {}
    if "keras-tuner" in args.reuse.split(",") and earlier.get("command") == key:
        start, wall = earlier["start"], earlier["wall_s"]
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        start = time.time()
        _, output = run_until(command, work, budget_s)
        wall = time.time() - start
        (work / "keras_tuner.log").write_text(output or "", encoding="utf-8")
        done.write_text(json.dumps({"command": key, "start": start, "wall_s": wall}), encoding="utf-8")
    trials = [json.loads(line) for line in (work / "trials.jsonl").read_text(encoding="utf-8").splitlines()
              if line.strip()] if (work / "trials.jsonl").exists() else []
    reached = sorted((t["finished"] - start, t["val"], t["test"], f"trial {i} ({t['budget_epochs']} epochs)")
                     for i, t in enumerate(trials))
    best = max(reached, key=lambda r: (r[1], -r[0]), default=None)
    return {"arm": f"keras-tuner seed {sampler_seed}", "wall_s": wall, "completed": len(trials), "pruned": 0,
            "other": 0, "best": best, "reached": reached}


def time_to(arm: dict, target: float):
    """Seconds from the arm's start to its first completed run with a validation figure >= `target`, or None."""
    for t, val, _, _ in arm["reached"]:
        if val >= target - 1e-12:
            return t
    return None


def best_by(arm: dict, seconds: float):
    """The arm's best validation figure among runs finished within `seconds` of its start, or None."""
    return max((val for t, val, _, _ in arm["reached"] if t <= seconds), default=None)


def family(arm: dict) -> str:
    """`random seed 1` -> `random`."""
    return arm["arm"].split(" seed ")[0]


def median_time(times: list) -> float:
    """The median of times, `None` (never reached) counting as infinite."""
    return statistics.median(float("inf") if t is None else t for t in times)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_summary(results: list[dict], budget_s: float) -> None:
    """The any-time table, the time to random search's median final best, and the targets."""
    print("\nbest validation weighted recall by time (share of the budget):")
    print(f"{'arm':>22} " + " ".join(f"{f'{q:.0%}':>7}" for q in QUARTERS))
    for arm in results:
        print(f"{arm['arm']:>22} " + " ".join(f"{_fmt(best_by(arm, q * budget_s)):>7}" for q in QUARTERS))
    families = {}
    for arm in results:
        families.setdefault(family(arm), []).append(arm)
    finals = {name: statistics.median(a["best"][1] if a["best"] else 0.0 for a in arms)
              for name, arms in families.items()}
    if "random" not in families:
        print("no random arm: nothing to measure the others against")
        return
    target = finals["random"]
    random_time = median_time([time_to(a, target) for a in families["random"]])
    print(f"\nrandom search's median final best val: {target:.4f}; random's median time to it: {random_time:.0f} s")
    for name, arms in families.items():
        times = [time_to(a, target) for a in arms]
        median = median_time(times)
        shown = ", ".join("never" if t is None else f"{t:.0f}" for t in times)
        ratio = "never" if median == float("inf") else f"{median:.0f} s, {median / random_time:.2f} x random's"
        print(f"{name:>22}: time to {target:.4f} per seed {shown} (s); median {ratio}; median final best "
              f"{finals[name]:.4f}")
    for default in (name for name in SEARCHES if name in families):
        ratio = median_time([time_to(a, target) for a in families[default]]) / random_time
        print(f"target 1, {default} reaches random's median final best in <= 0.5 x random's time: "
              f"{ratio:.2f} ({'met' if ratio <= 0.5 else 'NOT met'})")
        for other in ("random", "grid"):
            if other in finals:
                met = finals[default] >= finals[other]
                print(f"target 2, {default}'s median final best >= {other}'s: {finals[default]:.4f} vs "
                      f"{finals[other]:.4f} ({'met' if met else 'NOT met'})")
        if "keras-tuner" in finals:
            met = finals[default] > finals["keras-tuner"]
            print(f"target 3, {default}'s median final best > keras-tuner's: {finals[default]:.4f} vs "
                  f"{finals['keras-tuner']:.4f} ({'met' if met else 'NOT met'})")


def plot_any_time(results: list[dict], budget_s: float, path: Path) -> None:
    """A PNG of the best validation figure against wall time: one step line per arm and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"random": "tab:blue", "tpe": "tab:purple", "tpe+hyperband": "tab:orange", "grid": "tab:green",
               "keras-tuner": "tab:red"}
    styles = ["-", "--", ":"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    seen: dict[str, int] = {}
    for arm in results:
        name = family(arm)
        index = seen.get(name, 0)
        seen[name] = index + 1
        times, best, values = [], None, []
        for t, val, _, _ in arm["reached"]:
            best = val if best is None else max(best, val)
            times.append(t / 60)
            values.append(best)
        if times:
            times.append(budget_s / 60)
            values.append(values[-1])
            ax.step(times, values, where="post", color=colours.get(name, "black"), linestyle=styles[index % 3],
                    label=arm["arm"])
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel("best validation weighted recall")
    ax.set_xlim(0, budget_s / 60)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"any-time plot: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/trashnet")
    parser.add_argument("--weights-dir", default="../shared/weights")
    parser.add_argument("--budget", default="10m", help="wall-clock budget of each arm (default 10m)")
    parser.add_argument("--epochs", type=int, default=6, help="head epochs per run (default 6)")
    parser.add_argument("--fine-tune-epochs", type=int, default=2)
    parser.add_argument("--max-images-per-class", type=int, default=None)
    parser.add_argument("--max-run-share", type=float, default=0.25,
                        help="the sampled arms' search.max_run_share (default 0.25; 0: off)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--sampler-seeds", default="0,1,2",
                        help="comma-separated seeds of the sampled arms' samplers, each one sweep (default 0,1,2)")
    parser.add_argument("--work", default=str(PROJECT / "bench" / ".work" / "search"),
                        help="where each arm's sweep runs (default bench/.work/search, kept between sessions)")
    parser.add_argument("--reuse", default="", metavar="ARMS",
                        help="arms (comma-separated, e.g. random,grid) read back from an earlier sweep in --work "
                             "with the same grid text instead of run again (their figures are from that run)")
    parser.add_argument("--plot", default=str(PROJECT / "docs" / "img" / "search_anytime.png"),
                        help="the any-time plot's PNG (default docs/img/search_anytime.png)")
    args = parser.parse_args()
    unknown = [name for name in args.arms.split(",") if name not in ARMS]
    if unknown:  # before any arm spends its budget
        parser.error(f"--arms: unknown arm(s) {', '.join(unknown)}; allowed: {', '.join(ARMS)}")
    if not Path(args.data).is_dir():
        print(f"data folder {args.data} missing: nothing to benchmark")
        return 0
    budget_s = parse_duration(args.budget)
    print(f"search space: {json.dumps(SPACE)}; budget {budget_s:.0f} s per arm; max_run_share "
          f"{args.max_run_share or 'off'}; data {Path(args.data).resolve()}")
    seeds = [int(seed) for seed in args.sampler_seeds.split(",")]
    results = []
    plan = [(name, seed) for name in args.arms.split(",")
            for seed in (seeds if name != "grid" else [0])]
    for arm, seed in plan:
        if arm == "keras-tuner":
            try:
                import keras_tuner  # noqa: F401
            except ImportError:
                print("keras-tuner: not installed (not a project requirement): arm skipped")
                continue
            result = run_keras_tuner_arm(args, budget_s, seed)
        else:
            result = run_arm(args, arm, budget_s, seed)
        results.append(result)
        best = result["best"]
        text = (f"best val weighted recall {best[1]:.4f} (test {best[2]:.4f}) reached at {best[0]:.0f} s by {best[3]}"
                if best else "no completed run")
        print(f"{result['arm']:>22}: wall {result['wall_s']:.0f} s; {result['completed']} completed, "
              f"{result['pruned']} pruned, {result['other']} other; {text}", flush=True)
    print_summary(results, budget_s)
    if results:
        plot_any_time(results, budget_s, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
