"""Rank run records into `leaderboard.html` and `leaderboard.csv`.

Usage: `python runner/leaderboard.py [--logs-dir logs] [--out leaderboard.html]
[--metric weighted_recall] [--top-n 10]`. The sweep calls `write_leaderboard`
at its end with the grid's `metric` and `top_n`.

The page is one static, self-contained html file (inline CSS, no scripts):
completed runs ranked by the metric (best first; ties keep the earlier run),
the parameter columns that differ between runs, a link to each run's saved
notebook html; then failed runs with their error; then unreadable records.
Every string from a record is html-escaped.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd

from runner.errors import ConfigError
from runner.lineage import render_lineage
from runner.records import COMPLETED, ENSEMBLE, RANKING_METRICS, RunRecord, read_records, write_text_atomic

SUMMARY_COLUMNS = ("accuracy", "epochs_run", "train_s")
LINEAGE_FILE = "lineage.html"


def _param_value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def records_frame(records: list[RunRecord], logs_dir: Path) -> pd.DataFrame:
    """One row per record: id, status, metrics, timings and `param.<name>` columns.

    Args:
        records: run records.
        logs_dir: folder of the records (their `paths` are relative to it).

    Returns:
        A DataFrame with columns `run_id`, `status`, `kind`, `parent_run_id`
        (`""` for roots), every `RANKING_METRICS`
        key (float, NaN when missing), `epochs_run` (epochs trained, both
        phases), `train_s`,
        `html_path` (absolute or `None`), `error`, and `param.<name>` (str).
    """
    rows = []
    for rec in records:
        html_rel = rec.paths.get("html")
        row = {
            "run_id": rec.run_id,
            "status": rec.status,
            "kind": rec.kind,
            "parent_run_id": rec.parent_run_id or "",
            **{m: rec.metrics.get(m, float("nan")) for m in RANKING_METRICS},
            "epochs_run": sum(len(h.get("loss", [])) for h in rec.history.values()) if rec.history else None,
            "train_s": rec.timings.get("train_s"),
            "html_path": str((logs_dir / html_rel).resolve()) if html_rel else None,
            "error": f"{rec.error['ename']}: {rec.error['evalue']}" if rec.error else "",
        }
        row.update({f"param.{k}": _param_value(v) for k, v in rec.params.items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.astype({"epochs_run": "Int64"}) if rows else frame


def rank_runs(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Completed runs sorted by `metric`, best first, with a 1-based `rank` column.

    Args:
        frame: output of `records_frame`.
        metric: one of `RANKING_METRICS`.

    Returns:
        The completed rows, sorted descending by `metric` (stable: ties keep
        run-id order), with `rank` 1..n.

    Raises:
        ConfigError: `metric` is not one of `RANKING_METRICS`.
    """
    if metric not in RANKING_METRICS:
        raise ConfigError(f"metric: got {metric!r}, expected one of {', '.join(RANKING_METRICS)}")
    if frame.empty:
        return frame.assign(rank=pd.Series(dtype=int))
    done = frame[frame["status"] == COMPLETED].sort_values("run_id")
    ranked = done.sort_values(metric, ascending=False, kind="stable", na_position="last")
    return ranked.assign(rank=range(1, len(ranked) + 1)).reset_index(drop=True)


def differing_params(frame: pd.DataFrame) -> list[str]:
    """The `param.*` columns with more than one value across `frame` (rows without the parameter,
    e.g. ensembles, are left out)."""
    cols = [c for c in frame.columns if c.startswith("param.")]
    return [c for c in cols if frame[c].dropna().nunique() > 1]


def _cell(value, digits: int = 4) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _link(path: Optional[str], text: str, page_dir: Path) -> str:
    if not path:
        return html.escape(text)
    href = Path(os.path.relpath(path, page_dir)).as_posix()
    return f'<a href="{html.escape(href, quote=True)}">{html.escape(text)}</a>'


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:0.9em;margin-bottom:2em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0} tr:nth-child(even){background:#fafafa}
td.err{font-family:monospace;white-space:pre-wrap;max-width:60em}
"""


def render_leaderboard(frame: pd.DataFrame, metric: str, top_n: int, page_dir: Path,
                       unreadable: Optional[dict[str, str]] = None) -> str:
    """The leaderboard page as an html string.

    Args:
        frame: output of `records_frame`.
        metric: ranking metric, one of `RANKING_METRICS`.
        top_n: number of ranked runs shown.
        page_dir: folder the page is written to (links are relative to it).
        unreadable: record file name → reason, listed in their own section.
            Defaults to `None`.

    Returns:
        A complete html document.
    """
    ranked = rank_runs(frame, metric)
    shown = ranked.head(top_n)
    params = differing_params(ranked) if len(ranked) > 1 else []
    html_of = dict(zip(frame["run_id"], frame["html_path"])) if len(frame) else {}
    headers = ["rank", "run", metric, *[c for c in SUMMARY_COLUMNS if c != metric], "parent",
               *[p.removeprefix("param.") for p in params]]
    rows = [[str(r["rank"]),
             _link(r["html_path"], r["run_id"], page_dir) + (" <b>(ensemble)</b>" if r["kind"] == ENSEMBLE else ""),
             _cell(r[metric]), *[_cell(r[c], 1 if c == "train_s" else 4) for c in SUMMARY_COLUMNS if c != metric],
             _link(html_of.get(r["parent_run_id"]), r["parent_run_id"], page_dir),
             *[_cell(r[p]) for p in params]]
            for _, r in shown.iterrows()]
    parts = [f"<h1>Leaderboard</h1><p>Top {len(shown)} of {len(ranked)} completed runs by "
             f"<b>{html.escape(metric)}</b> (test split). Generated "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}. "
             f'Warm starts: <a href="{LINEAGE_FILE}">lineage tree</a>.</p>',
             _table(headers, rows) if rows else "<p>No completed runs yet.</p>"]
    failed = frame[frame["status"] != COMPLETED] if not frame.empty else frame
    if len(failed):
        parts.append(f"<h2>Runs that did not complete ({len(failed)})</h2>")
        parts.append(_table(["run", "status", "error"], [
            [_link(r["html_path"], r["run_id"], page_dir), _cell(r["status"]),
             f'<span class="err">{_cell(r["error"])}</span>'] for _, r in failed.iterrows()]))
    if unreadable:
        parts.append(f"<h2>Unreadable records ({len(unreadable)})</h2>")
        parts.append(_table(["file", "problem"], [[_cell(k), _cell(v)] for k, v in unreadable.items()]))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Leaderboard: {html.escape(metric)}</title><style>{_STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write_leaderboard(logs_dir: str | Path, out_path: str | Path, metric: str = "weighted_recall",
                      top_n: int = 10) -> pd.DataFrame:
    """Read every record in `logs_dir`; write the leaderboard html and csv.

    The html goes to `out_path`, the csv (every completed run ranked, plus
    parameters) beside it with the suffix `.csv`, and the lineage tree of warm
    starts to `lineage.html` in the same folder; all written atomically.

    Args:
        logs_dir: folder of the JSON records.
        out_path: path of the html page.
        metric: ranking metric, one of `RANKING_METRICS`. Defaults to
            `"weighted_recall"`.
        top_n: ranked runs shown in the html. Defaults to `10`.

    Returns:
        The ranked DataFrame of completed runs.

    Raises:
        ConfigError: unknown `metric`.
    """
    logs_dir, out_path = Path(logs_dir).resolve(), Path(out_path).resolve()
    records, unreadable = read_records(logs_dir)
    frame = records_frame(records, logs_dir)
    page = render_leaderboard(frame, metric, top_n, out_path.parent, unreadable)
    ranked = rank_runs(frame, metric)
    write_text_atomic(out_path, page)
    write_text_atomic(out_path.with_suffix(".csv"), ranked.to_csv(index=False))
    write_text_atomic(out_path.parent / LINEAGE_FILE,
                      render_lineage(records, metric, logs_dir, out_path.parent, out_path.name))
    return ranked


def main(argv: Optional[list[str]] = None) -> int:
    """Command line: rank the records of a logs folder into a leaderboard."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs-dir", default="logs", help="folder of JSON run records (default: logs)")
    parser.add_argument("--out", default="leaderboard.html", help="html page to write (default: leaderboard.html)")
    parser.add_argument("--metric", default="weighted_recall", help=f"one of {', '.join(RANKING_METRICS)}")
    parser.add_argument("--top-n", type=int, default=10, help="runs shown (default: 10)")
    args = parser.parse_args(argv)
    try:
        ranked = write_leaderboard(args.logs_dir, args.out, args.metric, args.top_n)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    best = f"; best {args.metric} {ranked.iloc[0][args.metric]:.4f} ({ranked.iloc[0]['run_id']})" if len(ranked) else ""
    print(f"wrote {args.out} ({len(ranked)} completed runs{best})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
