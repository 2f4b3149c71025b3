"""Rank run records into `leaderboard.html` and `leaderboard.csv`.

Usage: `python runner/leaderboard.py [--logs-dir logs] [--out leaderboard.html]
[--metric weighted_recall] [--top-n 10]`. The sweep calls `write_leaderboard`
at its end with the grid's `metric` and `top_n`.

The page is one static, self-contained html file that works offline: its CSS
and script (`runner/leaderboard_assets/`) and its figures (PNG data URIs) are
inlined. At the top, the metric of every completed run by base and head (a
strip over a box plot) and the best run's confusion matrix; then the top runs
ranked by the metric (best first; ties keep the earlier run): click a header
to sort, type to filter, tick "show all parameters" to see the parameter
columns that are the same for every run (hidden by default; those that differ
are shown). Each run id links to its saved notebook html and its node in
`lineage.html`, each parent to its row. Then failed runs with their error,
then unreadable records. Every string from a record is html-escaped.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional
from urllib.parse import quote

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from runner.errors import ConfigError
from runner.lineage import node_id, render_lineage
from runner.records import COMPLETED, ENSEMBLE, RANKING_METRICS, RunRecord, read_records, write_text_atomic

SUMMARY_COLUMNS = ("accuracy", "epochs_run", "train_s")
LINEAGE_FILE = "lineage.html"
ASSETS_DIR = Path(__file__).resolve().parent / "leaderboard_assets"
"""`leaderboard.css` and `leaderboard.js`, inlined into every page (no file beside the page, no network)."""


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


def _fragment(run_id: str) -> str:
    """`#run-<run_id>`, quoted for a URL and escaped for an attribute."""
    return html.escape("#" + quote(node_id(run_id), safe=""), quote=True)


def _anchor(run_id: str) -> str:
    return html.escape(node_id(run_id), quote=True)


def _table(headers: list[str], rows: list[tuple[str, list[str]]], table_id: str = "",
           header_attrs: Optional[list[str]] = None, column_classes: Optional[list[str]] = None) -> str:
    """An html table; each row is `(run_id or "", cells)` and a run's row gets `id=node_id(run_id)`.

    `header_attrs` gives each `<th>` extra attributes and `column_classes` each column's `class`
    (`""` for none, so a plain header stays `<th>name</th>`).
    """
    header_attrs, column_classes = header_attrs or [""] * len(headers), column_classes or [""] * len(headers)
    head = "".join(f"<th{a}>{html.escape(h)}</th>" for h, a in zip(headers, header_attrs))
    tds = [f'<td class="{c}">' if c else "<td>" for c in column_classes]
    body = "\n".join((f'<tr id="{_anchor(run_id)}">' if run_id else "<tr>")
                     + "".join(f"{td}{c}</td>" for td, c in zip(tds, cells)) + "</tr>" for run_id, cells in rows)
    attrs = f' id="{table_id}" class="{table_id}"' if table_id else ""
    return f"<table{attrs}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _asset(name: str) -> str:
    return (ASSETS_DIR / name).read_text(encoding="utf-8")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def base_head_groups(frame: pd.DataFrame) -> pd.Series:
    """Each row's `"<base> + <head>"` (ensembles: `"ensemble"`), the groups of the metric plot.

    Args:
        frame: rows of `records_frame` (any subset, e.g. `rank_runs`'s).

    Returns:
        A str Series on `frame`'s index.
    """
    def column(name: str) -> pd.Series:
        return frame[name] if name in frame else pd.Series(None, index=frame.index, dtype=object)

    base = column("param.base").fillna(frame["kind"])
    return (base + " + " + column("param.head").fillna("")).str.removesuffix(" + ")


def metric_plot_png(ranked: pd.DataFrame, metric: str) -> Optional[bytes]:
    """A box plot of `metric` per base and head with every run as a point over it (a strip).

    Groups are ordered by median, best at the top; the best run is a red star.

    Args:
        ranked: output of `rank_runs` (best first).
        metric: the column plotted, one of `RANKING_METRICS`.

    Returns:
        PNG bytes, or `None` when no run has a value for `metric`.
    """
    data = ranked.dropna(subset=[metric]) if metric in ranked else ranked.iloc[:0]
    if data.empty:
        return None
    groups = base_head_groups(data)
    order = list(data.groupby(groups)[metric].median().sort_values(kind="stable").index)
    values = [data.loc[groups == g, metric].to_numpy(dtype=float) for g in order]
    figure = Figure(figsize=(7, 1.3 + 0.5 * len(order)))
    ax = figure.subplots()
    ax.boxplot(values, orientation="horizontal", tick_labels=order, widths=0.55, showfliers=False,
               patch_artist=True, boxprops={"facecolor": "#dbe7f5", "edgecolor": "#6b8fb8"},
               medianprops={"color": "#1f4e8c"}, whiskerprops={"color": "#6b8fb8"}, capprops={"color": "#6b8fb8"})
    jitter = np.random.default_rng(0)
    for position, group_values in enumerate(values, start=1):
        ax.scatter(group_values, position + jitter.uniform(-0.12, 0.12, len(group_values)),
                   s=24, color="#1f77b4", alpha=0.8, zorder=3)
    best = data.iloc[0]
    ax.scatter([best[metric]], [order.index(groups.iloc[0]) + 1], marker="*", s=220, color="#d62728",
               zorder=4, label=f"best: {best['run_id']} ({best[metric]:.4f})")
    ax.legend(loc="lower left", fontsize=8, frameon=False, bbox_to_anchor=(0, 1.0))
    ax.set_xlabel(f"{metric} (test split)")
    ax.grid(axis="x", alpha=0.3)
    return _png(figure)


def confusion_matrix_png(record: RunRecord, logs_dir: str | Path) -> Optional[bytes]:
    """The confusion matrix of a run as PNG bytes.

    Args:
        record: the run record.
        logs_dir: folder of the record (its `paths` are relative to it).

    Returns:
        The bytes of the run's saved `paths["confusion_matrix"]` PNG when it is
        there; otherwise a drawing of `metrics["confusion_matrix"]` (rows true
        classes, labelled with `data["class_names"]` when they fit); `None` when
        the record has neither (or a matrix that is not square).
    """
    rel = record.paths.get("confusion_matrix")
    if rel:
        try:
            saved = (Path(logs_dir) / rel).read_bytes()
        except OSError:
            saved = b""
        if saved.startswith(b"\x89PNG"):
            return saved
    matrix = np.asarray(record.metrics.get("confusion_matrix") or [])
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.size == 0:
        return None
    from sklearn.metrics import ConfusionMatrixDisplay  # only for records without the png

    names = list(record.data.get("class_names") or [])
    figure = Figure(figsize=(3 + 0.5 * len(matrix), 2.5 + 0.5 * len(matrix)))
    ConfusionMatrixDisplay(matrix, display_labels=names if len(names) == len(matrix) else None).plot(
        ax=figure.subplots(), cmap="Blues", xticks_rotation=45, colorbar=False)
    return _png(figure)


def _figures(ranked: pd.DataFrame, metric: str, confusion_png: Optional[bytes]) -> str:
    parts = []
    plot = metric_plot_png(ranked, metric)
    if plot:
        parts.append(f'<figure><img src="{_data_uri(plot)}" alt="{html.escape(metric)} by base and head">'
                     f"<figcaption>{html.escape(metric)} of every completed run ({len(ranked)}) by base and "
                     "head: boxes span the middle half, points are runs, the star is the best.</figcaption></figure>")
    if confusion_png:
        best = html.escape(ranked.iloc[0]["run_id"])
        parts.append(f'<figure><img src="{_data_uri(confusion_png)}" alt="confusion matrix of {best}">'
                     f'<figcaption>Confusion matrix of the best run, <a href="{_fragment(ranked.iloc[0]["run_id"])}">'
                     f"{best}</a> (test split; rows true, columns predicted).</figcaption></figure>")
    return f'<section class="figures">{"".join(parts)}</section>' if parts else ""


def _run_cell(row: pd.Series, page_dir: Path) -> str:
    cell = _link(row["html_path"], row["run_id"], page_dir)
    if row["kind"] == ENSEMBLE:
        return cell + " <b>(ensemble)</b>"
    return (cell + f' <a class="tree" href="{LINEAGE_FILE}{_fragment(row["run_id"])}" '
                   'title="this run in the lineage tree">tree</a>')


def _parent_cell(parent: str, on_page: set[str], html_of: dict[str, Optional[str]], page_dir: Path) -> str:
    if parent in on_page:
        return f'<a href="{_fragment(parent)}">{html.escape(parent)}</a>'
    return _link(html_of.get(parent), parent, page_dir)


def render_leaderboard(frame: pd.DataFrame, metric: str, top_n: int, page_dir: Path,
                       unreadable: Optional[dict[str, str]] = None,
                       confusion_png: Optional[bytes] = None) -> str:
    """The leaderboard page as one self-contained html string (inline CSS, JS and images).

    At the top, a strip-over-box plot of `metric` by base and head (all
    completed runs) and the best run's confusion matrix, as PNG data URIs.
    Then the top runs, sortable by any column (click a header), filtered by a
    text box, with the parameters that differ as columns (the identical ones
    behind a "show all parameters" checkbox); each run id links to its saved
    notebook html and its node in `lineage.html`, each parent to its row (or
    its html). Then runs that did not complete and unreadable records.

    Args:
        frame: output of `records_frame`.
        metric: ranking metric, one of `RANKING_METRICS`.
        top_n: number of ranked runs shown in the table.
        page_dir: folder the page is written to (links are relative to it).
        unreadable: record file name → reason, listed in their own section.
            Defaults to `None`.
        confusion_png: PNG bytes of the best run's confusion matrix (see
            `confusion_matrix_png`). Defaults to `None` (not shown).

    Returns:
        A complete html document; every string from a record is escaped and
        nothing is loaded from another host.

    Raises:
        ConfigError: `metric` is not one of `RANKING_METRICS`.
    """
    ranked = rank_runs(frame, metric)
    shown = ranked.head(top_n)
    all_params = [c for c in ranked.columns if c.startswith("param.")]
    differing = differing_params(ranked) if len(ranked) > 1 else []
    params = differing + [p for p in all_params if p not in differing]
    html_of = dict(zip(frame["run_id"], frame["html_path"])) if len(frame) else {}
    on_page = set(shown["run_id"]) if len(shown) else set()
    numbers = [c for c in SUMMARY_COLUMNS if c != metric]
    fixed = ["rank", "run", metric, *numbers, "parent"]
    headers = fixed + [p.removeprefix("param.") for p in params]
    column_classes = ["", "run", *[""] * (len(fixed) - 2), *["" if p in differing else "same" for p in params]]
    header_attrs = [' class="same"' if c == "same" else "" for c in column_classes]
    header_attrs[fixed.index(metric)] = ' aria-sort="descending"'  # the rows come sorted by it
    rows = [(r["run_id"], [str(r["rank"]), _run_cell(r, page_dir), _cell(r[metric]),
                           *[_cell(r[c], 1 if c == "train_s" else 4) for c in numbers],
                           _parent_cell(r["parent_run_id"], on_page, html_of, page_dir),
                           *[_cell(r[p]) for p in params]])
            for _, r in shown.iterrows()]
    n_same = len(params) - len(differing)
    controls = ('<div class="controls"><label>Filter <input type="search" id="filter" autocomplete="off" '
                'placeholder="run id, base, any value…"></label>'
                f'<span id="row-count" aria-live="polite">{len(rows)} runs</span>'
                f'<label><input type="checkbox" id="show-all"> show all parameters (+{n_same} that do not '
                "differ between runs)</label></div>")
    parts = [(f'<h1>Leaderboard</h1><p class="summary">Top {len(shown)} of {len(ranked)} completed runs by '
              f"<b>{html.escape(metric)}</b> (test split). Generated "
              f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}. "
              f'Warm starts: <a href="{LINEAGE_FILE}">lineage tree</a>.</p>'),
             _figures(ranked, metric, confusion_png),
             controls + _table(headers, rows, "board", header_attrs, column_classes) if rows
             else "<p>No completed runs yet.</p>"]
    failed = frame[frame["status"] != COMPLETED] if not frame.empty else frame
    if len(failed):
        parts.append(f"<h2>Runs that did not complete ({len(failed)})</h2>")
        parts.append(_table(["run", "status", "error"], [
            (r["run_id"], [_link(r["html_path"], r["run_id"], page_dir), _cell(r["status"]), _cell(r["error"])])
            for _, r in failed.iterrows()], column_classes=["", "", "err"]))
    if unreadable:
        parts.append(f"<h2>Unreadable records ({len(unreadable)})</h2>")
        parts.append(_table(["file", "problem"], [("", [_cell(k), _cell(v)]) for k, v in unreadable.items()]))
    script = f"<script>{_asset('leaderboard.js')}</script>\n" if rows else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>Leaderboard: {html.escape(metric)}</title><style>{_asset('leaderboard.css')}</style></head>\n"
            "<body>\n" + "\n".join(p for p in parts if p) + "\n" + script + "</body></html>\n")


def write_leaderboard(logs_dir: str | Path, out_path: str | Path, metric: str = "weighted_recall",
                      top_n: int = 10) -> pd.DataFrame:
    """Read every record in `logs_dir`; write the leaderboard html and csv.

    The html (`render_leaderboard`, with the best run's `confusion_matrix_png`)
    goes to `out_path`, the csv (every completed run ranked, plus parameters)
    beside it with the suffix `.csv`, and the lineage tree of warm starts to
    `lineage.html` in the same folder; all written atomically.

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
    ranked = rank_runs(frame, metric)
    best = next((r for r in records if r.run_id == ranked.iloc[0]["run_id"]), None) if len(ranked) else None
    confusion = confusion_matrix_png(best, logs_dir) if best else None
    page = render_leaderboard(frame, metric, top_n, out_path.parent, unreadable, confusion)
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
