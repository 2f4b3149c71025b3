"""Cost of the leaderboard over many records: `read_all`, ranking, and `write_leaderboard` end to end.

    python bench/leaderboard_bench.py [--records 10000] [--top-n 10] [--keep DIR]

Generates `--records` run records into a temporary `logs/` folder (or
`DIR/logs` with `--keep`, which also keeps the pages in `DIR`): copies of one
realistic schema-2 record (built from the real schema-1 run in
`tests/assets/v1_run`, with validation metrics, ten classes with per-class
metrics and a confusion matrix, a 10-epoch history, every notebook parameter
and the environment), with varied run ids, parameters and metrics; about 3%
failed, 1% timed out, 4% pruned, 10% warm-started from an earlier run, 0.5%
without a saved html (`paths.html: null`), 0.5% schema-1 records, 20
ensembles and 2 unreadable files.

Then times, with `time.perf_counter`: `runner.records.query.read_all`; `parse_metric`
plus `rank`; `write_leaderboard` in this process (it reads the records
again); and a fresh `python` process running `write_leaderboard` (imports
included: what `python runner/leaderboard.py` costs; with its CPU seconds and
the load average, since a shared machine slows it down). Prints the figures,
the sizes of the files written and whether the fresh process meets the
target of under 5 seconds. Exits 1
when it does not.
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

from runner.reports.leaderboard import write_leaderboard  # noqa: E402
from runner.records.query import parse_metric, rank, read_all  # noqa: E402
from runner.records import RANKING_METRICS, read_record  # noqa: E402

V1_RECORD = PROJECT_ROOT / "tests" / "assets" / "v1_run" / "logs" / "20261202-025738-b692e854.json"
TARGET_S = 5.0
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


def generate(logs_dir: Path, n: int, seed: int = 0) -> dict[str, int]:
    """Write `n` varied records (and 2 unreadable files) into `logs_dir`.

    Returns:
        How many records of each kind were written (`completed`, `failed`, ...).
    """
    rng = random.Random(seed)
    template = template_record()
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
            payload = json.loads(json.dumps(template))  # a deep copy
            payload.update(run_id=run_id, config_hash=f"{i:08x}" + "0" * 56,
                           started_at=when.isoformat(timespec="seconds"),
                           finished_at=(when + timedelta(seconds=30)).isoformat(timespec="seconds"))
            params = payload["params"]
            params.update(base=rng.choice(BASES), head=rng.choice(("gap", "flatten")),
                          dropout=rng.choice((0.0, 0.25, 0.5)), learning_rate=rng.choice((1e-2, 1e-3, 1e-4)),
                          dense_units=rng.choice(([16], [256], [512, 256])), seed=rng.randrange(5))
            payload["paths"] = {key: rel.replace(template["run_id"], run_id) if rel else rel
                                for key, rel in template["paths"].items()}
            recall = rng.betavariate(8, 3)
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
        payload = json.loads(json.dumps(template))
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


def timed(label: str, fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - started
    print(f"{label:<44} {seconds:7.3f} s")
    return result, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000, help="records to generate (default: 10000)")
    parser.add_argument("--top-n", type=int, default=10, help="runs shown on the page (default: 10)")
    parser.add_argument("--keep", type=Path, help="write the records and pages here and keep them")
    args = parser.parse_args()
    work = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="leaderboard_bench."))
    logs = work / "logs"
    if logs.exists():
        shutil.rmtree(logs)
    try:
        counts, seconds = timed(f"generate {args.records} records", generate, logs, args.records)
        size = sum(p.stat().st_size for p in logs.iterdir())
        print(f"  {', '.join(f'{v} {k}' for k, v in counts.items())}; {size / 1e6:.1f} MB of JSON")
        found, read_s = timed("read_all", read_all, logs)
        ranked, rank_s = timed("parse_metric + rank", lambda: rank(found.records, parse_metric("weighted_recall")))
        print(f"  {len(found.records)} records read, {len(found.unreadable)} unreadable, {len(ranked)} ranked")
        board, write_s = timed("write_leaderboard (in process, reads again)", write_leaderboard, logs,
                               work / "leaderboard.html", "weighted_recall", args.top_n)
        code = ("import sys; sys.path.insert(0, sys.argv[1]); from runner.reports.leaderboard import write_leaderboard; "
                "print(write_leaderboard(sys.argv[2], sys.argv[3], 'weighted_recall', int(sys.argv[4])).summary())")
        started, cpu_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run([sys.executable, "-c", code, str(PROJECT_ROOT), str(logs), str(work / "leaderboard.html"),
                               str(args.top_n)], capture_output=True, text=True)
        cold_s = time.perf_counter() - started
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
        print(f"{'fresh python process (imports + write)':<44} {cold_s:7.3f} s  (CPU {cpu_s:.3f} s; "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        print(f"  {proc.stdout.strip()}")
        for path in (board.page_path, board.csv_path, board.lineage_path):
            print(f"  {path.name}: {path.stat().st_size / 1e3:.0f} kB")
        met = cold_s < TARGET_S
        print(f"target < {TARGET_S:.0f} s for {args.records} records (fresh process): "
              f"{'met' if met else 'NOT met'} ({cold_s:.2f} s; in process {write_s:.2f} s; "
              f"read_all alone {read_s:.2f} s)")
        return 0 if met else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept: {work}")


if __name__ == "__main__":
    sys.exit(main())
