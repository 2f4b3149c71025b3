"""Cost of the leaderboard over many records: `python runner/leaderboard.py` in a fresh process, per size.

    python bench/leaderboard_bench.py [--records 10000,100000] [--top-n 10] [--keep DIR]

For each size in `--records` (one number, or a comma-separated list measured
in turn), generates that many run records into a temporary `logs/` folder (or
`DIR/<size>/logs` with `--keep`, which also keeps the pages there): copies of
one realistic schema-2 record (built from the real schema-1 run in
`tests/assets/v1_run`, with validation metrics, ten classes with per-class
metrics and a confusion matrix, a 10-epoch history, every notebook parameter
and the environment), with varied run ids, parameters and metrics. Every
notebook run belongs to a configuration (`group_hash`) repeated over seeds:
half of them in small groups (`SMALL_GROUP` = 3 seeds), half in large ones
(`LARGE_GROUP` = 60 seeds), and the best configuration by construction is a
large one, so the page's top row has 60 runs. About 3% failed, 1% timed out,
4% pruned, 10% warm-started from an earlier run, 0.5% without a saved html
(`paths.html: null`), 0.5% schema-1 records, 20 ensembles and 2 unreadable
files.

Then runs `python runner/leaderboard.py --logs-dir ... --out ...` in a fresh
process twice, timed with `time.perf_counter` (imports included): first with
no index beside the records (it reads every JSON file and builds
`logs/.records-index.sqlite`, `runner.records.index`), then again (the
index is current: what every later leaderboard costs, and what the targets
are checked on). Prints, per size, one line: the records, both times, the
page, csv and lineage sizes, the CPU seconds of the second run (its own and
its plotting child's), the load average (other work on the machine inflates
the wall times) and whether each target is met (`TARGETS_S`: 10,000
records in 2 s, 100,000 in 10 s; the page at most `TARGET_PAGE_MB` = 5 MB).
Exits 1 when a target is not met.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from runner.records import RANKING_METRICS, read_record  # noqa: E402

V1_RECORD = PROJECT_ROOT / "tests" / "assets" / "v1_run" / "logs" / "20261202-025738-b692e854.json"
TARGETS_S = {10_000: 2.0, 100_000: 10.0}
"""Seconds allowed for a fresh `python runner/leaderboard.py` over that many records (with a current index)."""
TARGET_PAGE_MB = 5.0
"""Largest `leaderboard.html` allowed at any number of records (MB, 10^6 bytes)."""
SMALL_GROUP = 3
LARGE_GROUP = 60
BASES = ("vgg16", "resnet50", "mobilenet", "mobilenet_v2", "inception_resnet_v2", "simple_cnn_small")
EPOCHS = 10
TRACEBACK = "".join(f'  File "/work/models/train.py", line {100 + i}, in fit_phase\n    history = model.fit(...)\n'
                    for i in range(20)) + "ValueError: synthetic failure for the benchmark\n"


def _split_metrics(rng: random.Random, recall: float, class_names: list[str], support: int = 30) -> dict:
    """A split's metrics around `recall`, with per-class scores and a confusion matrix."""
    n = len(class_names)
    matrix = []
    for i in range(n):
        hits = round(support * min(1.0, max(0.0, rng.gauss(recall, 0.05))))
        row = [0] * n
        row[i] = hits
        for _ in range(support - hits):
            row[rng.randrange(n)] += 1
        matrix.append(row)
    per_class = {name: {"precision": round(rng.uniform(0, 1), 4), "recall": round(row[i] / support, 4),
                        "f1": round(rng.uniform(0, 1), 4), "support": support}
                 for i, (name, row) in enumerate(zip(class_names, matrix))}
    values = {m: round(min(1.0, max(0.0, rng.gauss(recall, 0.02))), 6) for m in RANKING_METRICS}
    values["weighted_recall"] = round(recall, 6)
    return {**values, "per_class": per_class, "confusion_matrix": matrix}


def _history(rng: random.Random, epochs: int) -> dict:
    loss = [round(2.3 * 0.8 ** e + rng.uniform(0, 0.05), 6) for e in range(epochs)]
    return {"head": {"accuracy": [round(1 - x / 2.5, 6) for x in loss], "loss": loss,
                     "val_accuracy": [round(1 - x / 2.4, 6) for x in loss], "val_loss": [x + 0.1 for x in loss],
                     "epoch_s": [round(rng.uniform(1, 3), 3) for _ in loss],
                     "learning_rate": [0.001] * epochs}}


def template_record() -> dict:
    """A realistic schema-2 record as JSON: the real schema-1 run, upgraded, with validation metrics and 10 epochs."""
    record = read_record(V1_RECORD).model_dump(mode="json")
    record["schema_version"] = 2
    record["params"]["epochs"] = EPOCHS
    record["epochs_run"] = EPOCHS
    return record


def configuration(i: int) -> tuple[str, int, int]:
    """Record `i`'s configuration: `(name, its number, the run's seed)`; even records in groups of
    `SMALL_GROUP`, odd ones in groups of `LARGE_GROUP`."""
    size, prefix = (SMALL_GROUP, "small") if i % 2 == 0 else (LARGE_GROUP, "large")
    slot = i // 2
    return f"{prefix}-{slot // size}", slot // size, slot % size


def config_params(name: str, number: int) -> tuple[dict, float]:
    """A configuration's parameters and mean validation recall (`large-0` is the best by construction)."""
    rng = random.Random(name)
    params = {"base": rng.choice(BASES), "head": rng.choice(("gap", "flatten")),
              "dropout": rng.choice((0.0, 0.25, 0.5)), "learning_rate": rng.choice((1e-2, 1e-3, 1e-4)),
              "dense_units": rng.choice(([16], [256], [512, 256])), "l2": round(rng.uniform(0, 1e-3), 6)}
    quality = 0.99 if name == "large-0" else min(0.95, rng.betavariate(8, 3))
    return params, quality


def generate(logs_dir: Path, n: int, seed: int = 0) -> dict[str, int]:
    """Write `n` varied records (and 2 unreadable files) into `logs_dir`.

    Returns:
        How many records of each kind were written (`completed`, `failed`, ...).
    """
    rng = random.Random(seed)
    template = template_record()
    template_text = json.dumps(template)
    v1_text = V1_RECORD.read_text(encoding="utf-8")
    names = template["data"]["class_names"]
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    logs_dir.mkdir(parents=True, exist_ok=True)
    completed: list[str] = []
    counts: dict[str, int] = {}
    for i in range(n):
        when = start + timedelta(seconds=37 * i)
        run_id = f"{when:%Y%m%d-%H%M%S}-{i:08x}"
        roll = rng.random()
        if roll < 0.005:  # a schema-1 record, as old sweeps left them
            payload = json.loads(v1_text)
            payload["run_id"] = run_id
            kind = "schema 1"
        else:
            config, number, run_seed = configuration(i)
            config_values, quality = config_params(config, number)
            payload = json.loads(template_text)  # a deep copy
            payload.update(run_id=run_id, config_hash=f"{i:08x}" + "0" * 56, group_hash=f"{config:0>64}"[-64:],
                           started_at=when.isoformat(timespec="seconds"),
                           finished_at=(when + timedelta(seconds=30)).isoformat(timespec="seconds"))
            params = payload["params"]
            params.update(config_values, seed=run_seed)
            payload["paths"] = {key: rel.replace(template["run_id"], run_id) if rel else rel
                                for key, rel in template["paths"].items()}
            recall = min(1.0, max(0.0, rng.gauss(quality, 0.02)))
            payload["val_metrics"] = _split_metrics(rng, recall, names)
            payload["metrics"] = _split_metrics(rng, min(1.0, max(0.0, recall + rng.gauss(0, 0.03))), names)
            payload["history"] = _history(rng, EPOCHS)
            payload["best_epoch"] = rng.randrange(1, EPOCHS + 1)
            kind = "completed"
            if roll < 0.035:
                stopped = rng.randrange(1, EPOCHS)
                payload.update(status="failed" if roll < 0.03 else "timeout", metrics=None, val_metrics=None,
                               history=_history(rng, stopped), epochs_run=stopped, best_epoch=None,
                               best_phase=None, error={"ename": "ValueError", "evalue": f"synthetic failure {i}",
                                                       "traceback": TRACEBACK, "cell_index": 7})
                kind = payload["status"]
            elif roll < 0.075:
                reached = rng.randrange(1, EPOCHS)
                payload.update(status="pruned", metrics=None, val_metrics=None, history=_history(rng, reached),
                               epochs_run=reached, best_epoch=None, best_phase=None)
                kind = "pruned"
            elif roll < 0.175 and completed:
                parent = rng.choice(completed[-200:])
                payload.update(parent_run_id=parent, warm_start={
                    "parent_run_id": parent, "checkpoint": "best",
                    "weights_path": f"../experiments/{parent}/model.keras", "weights_sha256": "0" * 64})
                params["warm_start"] = parent
                kind = "warm start"
            if rng.random() < 0.005:
                payload["paths"]["html"] = None
            if payload["status"] == "completed":
                completed.append(run_id)
        (logs_dir / f"{run_id}.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
        counts[kind] = counts.get(kind, 0) + 1
    for j in range(20):  # ensembles: test metrics only
        payload = json.loads(template_text)
        members = rng.sample(completed, 3)
        run_id = f"20261231-{j:06d}-e{j:07x}"
        payload.update(run_id=run_id, kind="ensemble", members=members, val_metrics=None,
                       params={"members": members, "combine": "mean softmax"},
                       metrics=_split_metrics(rng, 0.9, names), history={}, epochs_run=None, best_epoch=None,
                       best_phase=None, model=None, warm_start=None, parent_run_id=None,
                       paths={"html": f"../experiments/{run_id}/{run_id}.html"})
        (logs_dir / f"{run_id}.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    counts["ensemble"] = 20
    (logs_dir / "broken-1.json").write_text("{not json", encoding="utf-8")
    (logs_dir / "broken-2.json").write_text('{"schema_version": 99}', encoding="utf-8")
    counts["unreadable"] = 2
    return counts


def leaderboard_command(logs: Path, page: Path, top_n: int) -> tuple[float, float, subprocess.CompletedProcess]:
    """A fresh `python runner/leaderboard.py --logs-dir logs --out page`: its wall seconds (imports included),
    the CPU seconds of it and its children (user + system), and its result."""
    command = [sys.executable, str(PROJECT_ROOT / "runner" / "leaderboard.py"), "--logs-dir", str(logs),
               "--out", str(page), "--top-n", str(top_n)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall_s, cpu_s, proc


def parse_sizes(text: str) -> list[int]:
    """`"10000,100000"` -> `[10000, 100000]` (one number is a list of one)."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"got {text!r}, expected a positive number or a comma-separated list "
                                         f"of them, e.g. 10000,100000")
    return sizes


def measure(n: int, work: Path, top_n: int) -> bool:
    """Generate `n` records under `work`, time the command twice, print the details and the one summary line."""
    logs, page = work / "logs", work / "leaderboard.html"
    if logs.exists():
        shutil.rmtree(logs)
    started = time.perf_counter()
    counts = generate(logs, n)
    json_mb = sum(entry.stat().st_size for entry in os.scandir(logs)) / 1e6
    print(f"[{n} records] generated in {time.perf_counter() - started:.1f} s: "
          f"{', '.join(f'{v} {k}' for k, v in counts.items())}; {json_mb:.0f} MB of JSON; groups of "
          f"{SMALL_GROUP} and {LARGE_GROUP} seeds", flush=True)
    first_s, _, first = leaderboard_command(logs, page, top_n)  # no index yet: reads every file, builds it
    load_first = os.getloadavg()[0]
    indexed_s, cpu_s, proc = leaderboard_command(logs, page, top_n)
    load = os.getloadavg()[0]
    for name, result in (("first run", first), ("indexed run", proc)):
        if result.returncode != 0:
            print(f"[{n} records] {name} failed (exit {result.returncode}):\n{result.stderr}", file=sys.stderr)
            return False
    print(f"[{n} records] {proc.stdout.strip()}")
    page_mb, csv_mb = page.stat().st_size / 1e6, page.with_suffix(".csv").stat().st_size / 1e6
    lineage_mb = (work / "lineage.html").stat().st_size / 1e6
    target_s = TARGETS_S.get(n)
    time_ok = target_s is None or indexed_s <= target_s
    page_ok = page_mb <= TARGET_PAGE_MB
    time_text = (f"target <= {target_s:.0f} s: {'met' if time_ok else 'NOT met'}" if target_s is not None
                 else "no time target for this size")
    print(f"RESULT records={n}: cold command {indexed_s:.2f} s with the index ({time_text}; CPU {cpu_s:.2f} s "
          f"with the plotting child), "
          f"{first_s:.2f} s on the first run (builds the index); page {page_mb:.2f} MB "
          f"(target <= {TARGET_PAGE_MB:.0f} MB: {'met' if page_ok else 'NOT met'}); csv {csv_mb:.1f} MB; "
          f"lineage {lineage_mb:.1f} MB; load average {load_first:.2f}/{load:.2f} on {os.cpu_count()} cores "
          f"(other work inflates the times)", flush=True)
    return time_ok and page_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=parse_sizes, default=[10_000],
                        help="records to generate: a number or a comma-separated list, each measured in turn "
                             "(default: 10000)")
    parser.add_argument("--top-n", type=int, default=10, help="configurations shown on the page (default: 10)")
    parser.add_argument("--keep", type=Path, help="write the records and pages under DIR/<records> and keep them")
    args = parser.parse_args()
    met = True
    for n in args.records:
        work = (args.keep.resolve() / str(n)) if args.keep else Path(tempfile.mkdtemp(prefix="leaderboard_bench."))
        work.mkdir(parents=True, exist_ok=True)
        try:
            met = measure(n, work, args.top_n) and met
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
            else:
                print(f"kept: {work}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
