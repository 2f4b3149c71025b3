"""Ensembles: average the softmax outputs of the top runs (or chosen runs).

    python runner/ensemble.py --top 5 [--metric weighted_recall]
    python runner/ensemble.py RUN RUN [RUN ...]

The members must share the test split (same data manifest hash) and the
class list. Their saved test-split probabilities (`predictions.csv`) are
averaged, evaluated with the notebook's metrics, and recorded as a record of
kind `ensemble` listing its members: it is ranked on the leaderboard like any
run, and `runner.predict.load_run` loads it (predicting with every member and
averaging).
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd

from runner.errors import ConfigError, RunnerError
from runner.execute import make_run_id
from runner.grid import hash_params
from runner.leaderboard import write_leaderboard
from runner.records import (
    COMPLETED, ENSEMBLE, RANKING_METRICS, RUN, RunRecord, collect_environment, find_record,
    read_record, read_records, write_record,
)


def choose_members(runs: Sequence[str], top: Optional[int], logs_dir: Path, metric: str) -> list[tuple[Path, RunRecord]]:
    """The member records: the runs named, or the `top` completed notebook runs by `metric`.

    Raises:
        ConfigError: fewer than 2 members, a member that did not complete or
            is itself an ensemble, or members with different test splits or
            classes.
    """
    if metric not in RANKING_METRICS:
        raise ConfigError(f"--metric: got {metric!r}, expected one of {', '.join(RANKING_METRICS)}")
    if runs:
        paths = [find_record(ref, logs_dir) for ref in runs]
        members = [(p, read_record(p)) for p in dict.fromkeys(paths)]
    else:
        records, _ = read_records(logs_dir)
        done = [r for r in records if r.status == COMPLETED and r.kind == RUN and metric in r.metrics]
        done.sort(key=lambda r: r.metrics[metric], reverse=True)  # stable: ties keep run-id order
        members = [(logs_dir / f"{r.run_id}.json", r) for r in done[:top]]
    if len(members) < 2:
        raise ConfigError(f"an ensemble needs at least 2 completed runs, got {len(members)}")
    for _, rec in members:
        if rec.status != COMPLETED or rec.kind != RUN:
            raise ConfigError(f"run {rec.run_id}: a member must be a completed notebook run "
                              f"(status {rec.status!r}, kind {rec.kind!r})")
    first = members[0][1]
    for _, rec in members[1:]:
        for key in ("manifest_hash", "class_names"):
            if rec.data.get(key) != first.data.get(key):
                raise ConfigError(f"runs {first.run_id} and {rec.run_id} have different {key} "
                                  f"({first.data.get(key)!r} vs {rec.data.get(key)!r}): an ensemble "
                                  f"needs the same test split and classes")
    return members


def average_predictions(members: Sequence[tuple[Path, RunRecord]]) -> pd.DataFrame:
    """Mean of the members' test-split probabilities, read from their `predictions.csv`.

    Returns:
        Columns `path`, `true_label`, then `prob_<class>` per class (the
        mean over members), rows in the first member's order.

    Raises:
        ConfigError: a member's predictions file is missing or lists other images.
    """
    first = members[0][1]
    columns = [f"prob_{c}" for c in first.data["class_names"]]
    frames = []
    for record_path, rec in members:
        rel = rec.paths.get("predictions")
        if not rel or not (record_path.parent / rel).is_file():
            raise ConfigError(f"run {rec.run_id}: predictions.csv missing")
        frames.append(pd.read_csv(record_path.parent / rel).set_index("path"))
    index = frames[0].index
    for (_, rec), frame in zip(members[1:], frames[1:]):
        if set(frame.index) != set(index):
            raise ConfigError(f"run {rec.run_id}: its predictions.csv lists other test images than {first.run_id}'s")
    mean = np.mean([frame.loc[index, columns].to_numpy() for frame in frames], axis=0)
    return pd.concat([frames[0].loc[index, ["true_label"]].reset_index(),
                      pd.DataFrame(mean, columns=columns)], axis=1)


def build_ensemble(runs: Sequence[str] = (), top: Optional[int] = None, *, logs_dir: str | Path = "logs",
                   experiments_dir: str | Path = "experiments", metric: str = "weighted_recall") -> RunRecord:
    """Average the members' test-split probabilities, evaluate, and record an ensemble.

    Writes `experiments/<run_id>/` (`predictions.csv`, `confusion_matrix.png`,
    `<run_id>.html`) and `logs/<run_id>.json` with `kind: ensemble` and
    `members`.

    Args:
        runs: member run ids / prefixes / record paths; empty to use `top`.
        top: number of best completed runs by `metric` when `runs` is empty.
        logs_dir: folder of the records. Defaults to `"logs"`.
        experiments_dir: folder of the run folders. Defaults to `"experiments"`.
        metric: what `top` ranks by. Defaults to `"weighted_recall"`.

    Returns:
        The ensemble's record.

    Raises:
        ConfigError: see `choose_members` and `average_predictions`.
    """
    from models.evaluate import classification_metrics, predictions_frame, save_confusion_matrix

    start = time.perf_counter()
    logs_dir, experiments_dir = Path(logs_dir).resolve(), Path(experiments_dir).resolve()
    members = choose_members(runs, top, logs_dir, metric)
    first = members[0][1]
    names = first.data["class_names"]
    mean = average_predictions(members)
    probabilities = mean[[f"prob_{c}" for c in names]].to_numpy()
    labels = mean["true_label"].astype(str).map({str(c): i for i, c in enumerate(names)}).to_numpy()
    metrics = classification_metrics(labels, probabilities, names)

    member_ids = [rec.run_id for _, rec in members]
    config_hash = hash_params({"ensemble": sorted(member_ids)})
    started = datetime.now(timezone.utc)
    run_id = make_run_id(config_hash, experiments_dir, started)
    run_dir = experiments_dir / run_id
    run_dir.mkdir(parents=True)
    predictions_frame(mean["path"], probabilities, names, labels).to_csv(run_dir / "predictions.csv", index=False)
    save_confusion_matrix(metrics["confusion_matrix"], names, run_dir / "confusion_matrix.png")
    (run_dir / f"{run_id}.html").write_text(_report(run_id, member_ids, metrics, metric), encoding="utf-8")
    files = {"html": run_dir / f"{run_id}.html", "predictions": run_dir / "predictions.csv",
             "confusion_matrix": run_dir / "confusion_matrix.png"}
    record = RunRecord(
        run_id=run_id, config_hash=config_hash, status=COMPLETED, kind=ENSEMBLE, members=member_ids,
        started_at=started.isoformat(timespec="seconds"),
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        params={"members": member_ids, "combine": "mean softmax"},
        data=first.data, metrics=metrics,
        timings={"train_s": None, "eval_s": round(time.perf_counter() - start, 3),
                 "total_s": round(time.perf_counter() - start, 3)},
        environment=collect_environment(),
        paths={key: os.path.relpath(path, logs_dir) for key, path in files.items()},
    )
    write_record(record, logs_dir)
    return record


def _report(run_id: str, member_ids: list[str], metrics: dict, metric: str) -> str:
    rows = "".join(f"<li>{html.escape(m)}</li>" for m in member_ids)
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{metrics[k]:.4f}</td></tr>" for k in RANKING_METRICS)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Ensemble {html.escape(run_id)}"
            f"</title></head><body style=\"font-family:system-ui,sans-serif;margin:2em\">"
            f"<h1>Ensemble {html.escape(run_id)}</h1><p>Mean of the softmax outputs of {len(member_ids)} runs "
            f"on their shared test split:</p><ul>{rows}</ul><table border=1 cellpadding=4>{table}</table>"
            f"<p><img src=\"confusion_matrix.png\" alt=\"confusion matrix\"></p></body></html>\n")


def main(argv: Optional[list[str]] = None) -> int:
    """Command line; returns 0, or 2 for bad input."""
    parser = argparse.ArgumentParser(prog="python runner/ensemble.py", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="member runs (ids, unique prefixes or record paths)")
    parser.add_argument("--top", type=int, help="use the N best completed runs instead")
    parser.add_argument("--metric", default="weighted_recall", help="what --top ranks by (default: weighted_recall)")
    parser.add_argument("--logs-dir", default="logs", help="folder of run records (default: logs)")
    parser.add_argument("--experiments-dir", default="experiments", help="folder of run folders (default: experiments)")
    parser.add_argument("--leaderboard", default="leaderboard.html", help="leaderboard to regenerate")
    args = parser.parse_args(argv)
    if bool(args.runs) == (args.top is not None):
        parser.error("give either member runs or --top N")
    try:
        record = build_ensemble(args.runs, args.top, logs_dir=args.logs_dir,
                                experiments_dir=args.experiments_dir, metric=args.metric)
    except (RunnerError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_leaderboard(args.logs_dir, args.leaderboard, args.metric)
    print(f"ensemble {record.run_id} of {', '.join(record.members)}: "
          f"{args.metric} {record.metrics[args.metric]:.4f}; leaderboard: {args.leaderboard}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
