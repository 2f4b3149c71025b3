"""How the sweep scales with the data: the same two sweeps on x1 / x4 / x16 copies of a photo folder.

    python bench/scale_bench.py [--data ../shared/data/trashnet] [--weights-dir ../shared/weights]
                                [--scales 1,4,16] [--finetune-scales 1,4] [--cases head,finetune]
                                [--head-epochs 3] [--ft-head-epochs 0] [--ft-epochs 3]
                                [--repo PATH] [--work DIR] [--keep] [--skip-records] [--out FILE]

Data: for each scale k, a temporary copy of `--data` (default
`/work/shared/data/trashnet`) where every file `a.jpg` of a class folder
becomes `a__0.jpg` ... `a__{k-1}.jpg` in the same class folder, all hard links
to the original (no pixel is copied; the folder must be on the same
filesystem as the work folder, `--work`, a new temporary folder by default).
The copies are identical photos, so the splits share images and the metrics
mean nothing here: only time, memory and disk are measured.

Cases (`--cases`), each a sweep of two configurations (learning rates 1e-3
and 5e-4), so that the first run builds the activation cache and the second
reads it:

  head:     frozen MobileNet 1.0 (ImageNet weights) at 128 px, gap head,
            `--head-epochs` (3) epochs, no early stopping;
  finetune: VGG16 (ImageNet weights) at 128 px, gap head, `--ft-head-epochs`
            (0: no head phase) head epochs, then `--ft-epochs` (3) epochs of
            fine-tuning block5 only (`fine_tune_layers: 4`: block5's 3 convs and
            its pool), so the frozen part ends at block4_pool and the
            activation cache stores block4's outputs. `--finetune-scales`
            (default: `--scales`) runs this slower case at fewer scales.

Each sweep is `python runner/sweep.py GRID --workers 1 --weights-dir W` in a
subprocess (cwd: `--repo`, default this checkout, whose runner/sweep.py and
notebook it runs), with a generated grid (JSON, which is YAML) naming its own
experiments_dir / logs_dir / leaderboard and a fresh `cache_dir` (also set as
NBSWEEP_CACHE_DIR; NBSWEEP_WEIGHTS_DIR is set too) in the work folder.

While a sweep runs, every ~0.2 s the script sums over the sweep's process tree
(the sweep process and all its descendants, kernels and worker processes
included; psutil for the tree, /proc/<pid>/status for the figures) RssAnon
(anonymous resident memory: file pages of a memory map, e.g. an np.load(mmap)
of a cache entry, do not count) and VmRSS (all resident memory), and keeps the
peaks of both sums. Shared pages are counted once per process.

Printed per case and scale: images in the folder, the sweep's wall time, s per
1k images, peak RssAnon and peak RSS (GiB, tree), the activation-cache folder
size (MB, apparent), the disk use of each run folder under experiments_dir
(MB, allocated blocks, each inode once) and their mean, each run's cache status
per phase, and the cache-hit fixed cost of the second run.

Cache-hit fixed cost (from the second run's record, logs/*.json): the run's
`timings.total_s` (kernel start to record) minus the sum of its epochs'
seconds (`history.<phase>.epoch_s`, every phase), i.e. everything a run that
reads the cache spends outside its training epochs: kernel start, imports,
listing and splitting the data, building the model, opening/loading the cache
entry, evaluation, writing the outputs. It is split into `train_s - sum(epoch_s)`
(inside training but outside the epochs: finding and loading the cache entry,
building the datasets), `eval_s`, and the rest. The second run should show
status `hit` for the cached phase(s); the report says so when it does not.
The x16 - x1 difference is printed with and without `eval_s`, which grows
with the test split (evaluation is compute, not a per-run fixed cost).

`--budget MIN` skips a scale of a case when its projected wall time (the
previous scale's wall time times the scale ratio) does not fit in the minutes
left (printed as SKIPPED).

The leaderboard benchmark runs first (below). Finally: the ratios the targets are about (peak RssAnon x16 / x1 per case,
target <= 1.3; s per image at the largest scale vs x1, target: no worse;
cache-hit fixed cost at the largest scale minus x1, target <= 2 s; MB per
head-only run folder, target <= 5). When a case did not run at x16 its
largest scale stands in, and the line says which. Before the sweeps, unless
`--skip-records`, `python bench/leaderboard_bench.py --records 10000,100000`
of the `--repo` checkout (once per size with `--records N` where the comma
form is not understood), whose output is printed as it is.

The load average is printed at the start, before each sweep and at the end:
other work on the machine inflates the times. `--out FILE` also writes the
report to FILE (line by line, as it is printed). Nothing is written to the
project; the work folder is removed at the end unless `--keep` or `--work`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path("/work/shared/data/trashnet")
DEFAULT_WEIGHTS = Path("/work/shared/weights")
LEARNING_RATES = (1e-3, 5e-4)
GIB = 1024 ** 3
MB = 1e6

_out_file = None


def say(line: str = "") -> None:
    """Prints `line`, and appends it to `--out` when given."""
    print(line, flush=True)
    if _out_file is not None:
        _out_file.write(line + "\n")
        _out_file.flush()


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)"


# ---------------------------------------------------------------- data


def scaled_copy(data: Path, scale: int, dest: Path) -> int:
    """Hard-links every file of each class folder of `data` `scale` times into `dest`
    (`a.jpg` -> `a__0.jpg` ... `a__{scale-1}.jpg`); returns the number of images."""
    count = 0
    for class_dir in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out = dest / class_dir.name
        out.mkdir(parents=True)
        for f in sorted(class_dir.iterdir()):
            if not f.is_file() or f.name.startswith("."):
                continue
            for k in range(scale):
                os.link(f, out / f"{f.stem}__{k}{f.suffix}")
                count += 1
    return count


# ---------------------------------------------------------------- memory sampling


def _status_kb(pid: int) -> tuple[int, int]:
    """(RssAnon, VmRSS) of `pid` in kB from /proc/<pid>/status; (0, 0) if it is gone."""
    anon = rss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    anon = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return anon, rss


class TreeSampler(threading.Thread):
    """Samples the sums of RssAnon and VmRSS over a process and its descendants every `interval` s."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_anon_kb = self.peak_rss_kb = 0
        self.max_procs = self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                pids = [self.root.pid] + [c.pid for c in self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            anon = rss = 0
            for pid in pids:
                a, r = _status_kb(pid)
                anon += a
                rss += r
            self.peak_anon_kb = max(self.peak_anon_kb, anon)
            self.peak_rss_kb = max(self.peak_rss_kb, rss)
            self.max_procs = max(self.max_procs, len(pids))
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


# ---------------------------------------------------------------- sweeps


def write_grid(work: Path, name: str, data: Path, cache_dir: Path, fixed: dict) -> Path:
    """A grid of two configurations (the learning rates) with its own folders in `work`."""
    grid = {"data_dir": str(data),
            "experiments_dir": str(work / f"{name}_experiments"),
            "logs_dir": str(work / f"{name}_logs"),
            "leaderboard": str(work / f"{name}_leaderboard.html"),
            "fixed": {**fixed, "cache_dir": str(cache_dir)},
            "runs": [{"learning_rate": lr} for lr in LEARNING_RATES]}
    path = work / f"{name}.yaml"
    # JSON is YAML, but YAML 1.1 reads an exponent without a dot (1e-05) as a string: write 1.0e-05
    text = re.sub(r"(?<![\w.])(-?\d+)e([-+]?\d+)", r"\1.0e\2", json.dumps(grid, indent=1))
    path.write_text(text)
    return path


def run_sweep(repo: Path, grid: Path, weights_dir: Path, cache_dir: Path, log: Path) -> dict:
    """Runs the sweep of `grid` with `repo`'s runner/sweep.py, sampling its process tree's memory."""
    env = {**os.environ, "NBSWEEP_WEIGHTS_DIR": str(weights_dir), "NBSWEEP_CACHE_DIR": str(cache_dir)}
    env.pop("PYTHONPATH", None)  # the runner puts its own checkout there for its kernels
    cmd = [sys.executable, str(repo / "runner" / "sweep.py"), str(grid), "--workers", "1",
           "--weights-dir", str(weights_dir)]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        rc = proc.wait()
        sampler.stop()
    wall = time.perf_counter() - start
    logs = grid.parent / f"{grid.stem}_logs"
    records = []
    for p in logs.glob("*.json"):
        try:
            record = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("kind", "run") == "run" and "started_at" in record:
            records.append(record)
    records.sort(key=lambda r: r["started_at"])
    return {"rc": rc, "wall": wall, "records": records, "peak_anon": sampler.peak_anon_kb * 1024,
            "peak_rss": sampler.peak_rss_kb * 1024, "procs": sampler.max_procs, "samples": sampler.samples}


def apparent_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) \
        if folder.exists() else 0


def disk_use(folder: Path) -> int:
    """Allocated bytes under `folder` (st_blocks), each inode once, links not followed (like `du -s`)."""
    seen, total = set(), 0
    for p in [folder, *folder.rglob("*")]:
        st = p.lstat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def cache_statuses(record: dict) -> str:
    use = record.get("activation_cache") or {}
    parts = [f"{phase} {info.get('status')}" + (f" ({info['reason']})" if info.get("reason") else "")
             + (f" build {info['build_s']:.1f} s" if info.get("build_s") else "")
             for phase, info in use.items() if isinstance(info, dict) and phase != "evaluation"]
    if isinstance(use.get("evaluation"), dict):
        parts.append(f"evaluation from_cache={use['evaluation'].get('from_cache')}")
    return ", ".join(parts) or "(no activation_cache in the record)"


def hit_fixed_cost(record: dict) -> dict | None:
    """total_s minus the run's epochs' seconds, split as the docstring says; None without timings."""
    timings = record.get("timings") or {}
    total, train, evaluate = timings.get("total_s"), timings.get("train_s"), timings.get("eval_s")
    if total is None:
        return None
    epochs = [s for phase in (record.get("history") or {}).values() for s in (phase.get("epoch_s") or [])]
    epoch_s = sum(epochs)
    in_train = (train - epoch_s) if train is not None else None
    rest = total - (train or 0.0) - (evaluate or 0.0)
    return {"fixed": total - epoch_s, "total": total, "epoch_s": epoch_s, "n_epochs": len(epochs),
            "in_train": in_train, "eval": evaluate, "rest": rest}


def case_fixed(case: str, args) -> dict:
    if case == "head":
        return {"base": "mobilenet", "base_kwargs": {"alpha": 1.0}, "weights": "imagenet", "image_size": 128,
                "head": "gap", "dense_units": [256], "dropout": 0.5, "epochs": args.head_epochs,
                "batch_size": 32, "early_stopping_patience": None, "seed": 42, "activation_cache": True}
    return {"base": "vgg16", "weights": "imagenet", "image_size": 128, "head": "gap", "dense_units": [256],
            "dropout": 0.5, "epochs": args.ft_head_epochs, "batch_size": 32, "early_stopping_patience": None,
            "seed": 42, "activation_cache": True, "fine_tune_layers": 4, "fine_tune_epochs": args.ft_epochs,
            "fine_tune_learning_rate": 1e-5}


def measure(case: str, scale: int, args, work: Path) -> dict:
    """Builds the x`scale` folder, runs the case's sweep, prints and returns its figures."""
    here = work / f"{case}_x{scale}"
    here.mkdir(parents=True)
    data = here / "data"
    t0 = time.perf_counter()
    images = scaled_copy(args.data, scale, data)
    link_s = time.perf_counter() - t0
    cache_dir = here / "cache"
    cache_dir.mkdir()
    grid = write_grid(here, "sweep", data, cache_dir, case_fixed(case, args))
    say(f"[{datetime.now():%H:%M:%S}] {case} x{scale}: {images} images (hard links made in {link_s:.1f} s); "
        f"{loadavg()}")
    result = run_sweep(args.repo, grid, args.weights_dir, cache_dir, here / "sweep.log")
    records = result["records"]
    result.update(case=case, scale=scale, images=images, cache_mb=apparent_size(cache_dir) / MB)
    exp = here / "sweep_experiments"
    folders = sorted(p for p in exp.iterdir() if p.is_dir()) if exp.exists() else []
    result["run_mb"] = [disk_use(p) / MB for p in folders]
    result["run_mb_mean"] = statistics.mean(result["run_mb"]) if result["run_mb"] else None
    per_1k = result["wall"] / images * 1000
    result["s_per_image"] = result["wall"] / images
    say(f"  sweep exit {result['rc']}, {len(records)} records ({', '.join(r.get('status', '?') for r in records)}); "
        f"{result['samples']} memory samples, up to {result['procs']} processes in the tree")
    if result["rc"] != 0 or len(records) < 2:
        tail = (here / "sweep.log").read_text(errors="replace")[-2500:]
        say("  sweep output (tail):\n    " + tail.replace("\n", "\n    "))
        for r in records:
            if r.get("error"):
                say(f"  run {r.get('run_id')} error: {r['error'].get('ename')}: {str(r['error'].get('evalue'))[:500]}")
    say(f"  wall {result['wall']:.1f} s; {per_1k:.1f} s per 1k images; peak RssAnon (tree) "
        f"{result['peak_anon'] / GIB:.2f} GiB; peak RSS (tree) {result['peak_rss'] / GIB:.2f} GiB")
    say(f"  activation cache folder {result['cache_mb']:.1f} MB; run folders (MB on disk): "
        f"{', '.join(f'{m:.2f}' for m in result['run_mb']) or 'none'}"
        + (f"; mean {result['run_mb_mean']:.2f} MB" if result["run_mb_mean"] is not None else ""))
    for i, r in enumerate(records, 1):
        t = r.get("timings") or {}
        epochs = {phase: [round(s, 1) for s in (h.get("epoch_s") or [])] for phase, h in (r.get("history") or {}).items()}
        say(f"  run {i} (lr {r.get('params', {}).get('learning_rate')}): total {t.get('total_s')} s, train "
            f"{t.get('train_s')} s, eval {t.get('eval_s')} s, cache_build {t.get('cache_build_s')} s; epoch_s {epochs}; "
            f"cache: {cache_statuses(r)}")
    result["hit"] = None
    if len(records) >= 2:
        second = records[1]
        hit = hit_fixed_cost(second)
        statuses = [info.get("status") for phase, info in (second.get("activation_cache") or {}).items()
                    if isinstance(info, dict) and phase != "evaluation"]
        if hit is not None:
            result["hit"] = hit
            fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
            say(f"  cache-hit fixed cost (run 2: total_s - sum of its {hit['n_epochs']} epochs' s): {hit['fixed']:.2f} s "
                f"= {fmt(hit['in_train'])} s in training outside the epochs + {fmt(hit['eval'])} s eval + "
                f"{fmt(hit['rest'])} s rest (kernel, imports, data, model, outputs)"
                + ("" if statuses and all(s == "hit" for s in statuses)
                   else f"  [NOTE: run 2's cache status is {statuses}, not all 'hit']"))
    return result


# ---------------------------------------------------------------- leaderboard bench


def leaderboard_bench(repo: Path, sizes: list[int]) -> None:
    script = repo / "bench" / "leaderboard_bench.py"
    if not script.exists():
        script = PROJECT / "bench" / "leaderboard_bench.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, str(script), "--records", ",".join(map(str, sizes))]
    say(f"[{datetime.now():%H:%M:%S}] {' '.join(cmd[1:])} (cwd {repo}); {loadavg()}")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode == 2 and "--records" in proc.stderr and len(sizes) > 1:
        say("  (the comma-list form of --records is not understood there: once per size)")
        for n in sizes:
            cmd = [sys.executable, str(script), "--records", str(n)]
            say(f"[{datetime.now():%H:%M:%S}] {' '.join(cmd[1:])}; {loadavg()}")
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
            _print_bench(proc, time.perf_counter() - start)
    else:
        _print_bench(proc, time.perf_counter() - start)


def _print_bench(proc: subprocess.CompletedProcess, wall: float) -> None:
    for line in (proc.stdout + (proc.stderr if proc.returncode not in (0, 1) else "")).rstrip().splitlines():
        say("  " + line)
    say(f"  (exit {proc.returncode}, {wall:.1f} s)")


# ---------------------------------------------------------------- main


def summary(results: dict[tuple[str, int], dict]) -> None:
    say("")
    say("== ratios (targets) ==")
    for case in ("head", "finetune"):
        scales = sorted(s for c, s in results if c == case)
        if not scales:
            continue
        lo, hi = results[(case, scales[0])], results[(case, scales[-1])]
        tag = f"x{hi['scale']} / x{lo['scale']}" + ("" if hi["scale"] == 16 and lo["scale"] == 1
                                                    else " (x16 or x1 not run: largest / smallest scale run)")
        if len(scales) < 2:
            say(f"{case}: one scale only (x{scales[0]}), no ratios")
            continue
        anon = hi["peak_anon"] / lo["peak_anon"] if lo["peak_anon"] else float("nan")
        say(f"{case}: peak RssAnon {tag}: {anon:.2f}x ({lo['peak_anon'] / GIB:.2f} -> {hi['peak_anon'] / GIB:.2f} GiB; "
            f"target <= 1.3: {'met' if anon <= 1.3 else 'NOT met'})")
        spi = hi["s_per_image"] / lo["s_per_image"]
        say(f"{case}: s per image {tag}: {spi:.2f}x ({lo['s_per_image'] * 1000:.1f} -> {hi['s_per_image'] * 1000:.1f} "
            f"s per 1k images; target <= 1.0, no worse: {'met' if spi <= 1.0 else 'NOT met'})")
        if lo["hit"] and hi["hit"]:
            diff = hi["hit"]["fixed"] - lo["hit"]["fixed"]
            say(f"{case}: cache-hit fixed cost {tag.replace(' / ', ' - ')}: {diff:+.2f} s ({lo['hit']['fixed']:.2f} -> "
                f"{hi['hit']['fixed']:.2f} s; target <= 2 s: {'met' if diff <= 2 else 'NOT met'})")
            if lo["hit"]["eval"] is not None and hi["hit"]["eval"] is not None:
                say(f"{case}:   the same without eval_s (which grows with the test split): "
                    f"{diff - (hi['hit']['eval'] - lo['hit']['eval']):+.2f} s")
        else:
            say(f"{case}: cache-hit fixed cost: no second-run record at x{lo['scale']} or x{hi['scale']}")
    head = [results[k] for k in sorted(results) if k[0] == "head" and results[k]["run_mb_mean"] is not None]
    if head:
        worst = max(r["run_mb_mean"] for r in head)
        say("head: MB per run folder (mean): " + ", ".join(f"x{r['scale']} {r['run_mb_mean']:.2f}" for r in head)
            + f" (target <= 5: {'met' if worst <= 5 else 'NOT met'}; largest {worst:.2f})")


def main() -> None:
    global _out_file
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"photo folder (default {DEFAULT_DATA})")
    parser.add_argument("--weights-dir", type=Path, default=Path(os.environ.get("NBSWEEP_WEIGHTS_DIR", DEFAULT_WEIGHTS)),
                        help=f"offline ImageNet weights (default $NBSWEEP_WEIGHTS_DIR, else {DEFAULT_WEIGHTS})")
    parser.add_argument("--scales", default="1,4,16", help="copies of the folder, comma-separated (default 1,4,16)")
    parser.add_argument("--finetune-scales", help="scales of the finetune case (default: --scales)")
    parser.add_argument("--cases", default="head,finetune", help="head, finetune or both (default head,finetune)")
    parser.add_argument("--head-epochs", type=int, default=3, help="epochs of the head case (default 3)")
    parser.add_argument("--ft-head-epochs", type=int, default=0,
                        help="head epochs before fine-tuning in the finetune case (default 0: fine-tune from the start)")
    parser.add_argument("--ft-epochs", type=int, default=3, help="fine-tuning epochs of the finetune case (default 3)")
    parser.add_argument("--repo", type=Path, default=PROJECT,
                        help="checkout whose runner/sweep.py runs the sweeps (cwd); default this one")
    parser.add_argument("--records", default="10000,100000", help="sizes for bench/leaderboard_bench.py")
    parser.add_argument("--skip-records", action="store_true", help="do not run bench/leaderboard_bench.py")
    parser.add_argument("--work", type=Path, help="work folder (kept); default a temporary one, removed at the end")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--budget", type=float,
                        help="minutes for the whole script: a scale whose projected wall time (the case's previous "
                             "scale's, scaled linearly) does not fit in what is left is skipped, and says so")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    args.repo = args.repo.resolve()
    args.data = args.data.resolve()
    args.weights_dir = args.weights_dir.resolve()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in cases:
        if c not in ("head", "finetune"):
            parser.error(f"--cases: unknown case {c!r} (head, finetune)")
    scales = {"head": [int(s) for s in args.scales.split(",")],
              "finetune": [int(s) for s in (args.finetune_scales or args.scales).split(",")]}
    if args.out:
        _out_file = open(args.out, "w")
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="scale_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    commit = subprocess.run(["git", "-C", str(args.repo), "log", "-1", "--format=%h %s"], capture_output=True,
                            text=True).stdout.strip()[:100]
    say(f"scale_bench {datetime.now():%Y-%m-%d %H:%M:%S}; {loadavg()}")
    say(f"repo {args.repo} ({commit or 'not a git checkout'}); data {args.data}; weights {args.weights_dir}; "
        f"work {work}")
    if "head" in cases:
        say(f"head: frozen MobileNet 1.0 at 128 px, gap head, {args.head_epochs} epochs; scales {scales['head']}")
    if "finetune" in cases:
        say(f"finetune: VGG16 at 128 px, gap head, {args.ft_head_epochs} head epochs + {args.ft_epochs} epochs of "
            f"fine-tuning block5 (fine_tune_layers: 4) on cached block4 outputs; scales {scales['finetune']}")
    say(f"each sweep: 2 configurations (learning_rate {', '.join(map(str, LEARNING_RATES))}), --workers 1, "
        f"fresh cache_dir")
    results: dict[tuple[str, int], dict] = {}
    try:
        if not args.skip_records:
            say("")
            say("== leaderboard records ==")
            t0 = time.perf_counter()
            leaderboard_bench(args.repo, [int(n) for n in args.records.split(",")])
            say(f"  (leaderboard bench took {time.perf_counter() - t0:.0f} s in all)")
        for case in cases:
            say("")
            say(f"== {case} ==")
            previous = None
            for scale in scales[case]:
                if args.budget and previous is not None:
                    projected = previous["wall"] * scale / previous["scale"]
                    left = args.budget * 60 - (time.perf_counter() - started)
                    if projected > left:
                        say(f"[{datetime.now():%H:%M:%S}] {case} x{scale}: SKIPPED, projected {projected:.0f} s "
                            f"(x{previous['scale']}'s wall x {scale // previous['scale']}) > {max(left, 0):.0f} s "
                            f"left of --budget {args.budget:g} min")
                        continue
                t0 = time.perf_counter()
                results[(case, scale)] = previous = measure(case, scale, args, work)
                say(f"  ({case} x{scale} took {time.perf_counter() - t0:.0f} s in all)")
                if not (args.keep or args.work):
                    shutil.rmtree(work / f"{case}_x{scale}", ignore_errors=True)
        summary(results)
        say("")
        say(f"end {datetime.now():%Y-%m-%d %H:%M:%S}; {loadavg()}; total {time.perf_counter() - started:.0f} s")
    finally:
        if not (args.keep or args.work):
            shutil.rmtree(work, ignore_errors=True)
        if _out_file is not None:
            _out_file.close()


if __name__ == "__main__":
    main()
