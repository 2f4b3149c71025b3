"""Compare recorded runs side by side: `compare.html`, and the data the leaderboard's "compare selected" embeds.

    nbsweep compare RUN RUN [RUN ...] [--out compare.html] [--logs-dir logs]

`write_compare` resolves the runs (`runner.records.query.find_path`), and `render_compare`
writes one static page (`runner/reports/templates/compare.html`, Jinja2 with autoescape:
every run name, parameter value and class name is escaped) that needs no server and no
network. It shows, the first run being the reference:

- the parameters that differ between the runs (a CSS-only toggle shows them all);
- the training curves of every run overlaid, one chart per Keras metric (`CURVE_METRICS`:
  loss, accuracy, val_loss, val_accuracy), both phases concatenated (fine-tuning epochs
  after the head's, a dotted line where fine-tuning starts), each run's best epoch marked;
- the validation and test figures, with the difference to the first run;
- per-class precision, recall and F1 on the test split, with the difference to the first run;
- the confusion matrices (test split) side by side;
- McNemar's exact test of every other run against the first on the test split's predictions
  (`runner.reports.stats`), with one sentence on what the p-value means;
- timings, activation-cache use, and parents (warm start, rerun).

The charts are SVG drawn here by matplotlib (already a dependency), inlined in the page:
the page stays one offline file with no JavaScript charting library to ship, pin and
licence, and the SVG carries no user string (run names are in the html legend, escaped).
The leaderboard's in-page comparison draws the same four charts in its own script from
`runner.reports.compare_data.compare_payload` (inline JSON).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from markupsafe import Markup

from runner.errors import ConfigError
from runner.records import COMPLETED, LOGS_DIR, RANKING_METRICS, RunLoadError, RunRecord, write_page
from runner.records.query import find_path
from runner.reports.compare_data import COLOURS, CURVE_METRICS, curves, differing_params
from runner.reports.leaderboard import confusion_matrix_table
from runner.reports.links import href
from runner.reports.stats import P_VALUE_MEANING, format_p, mcnemar_runs
from runner.reports.templates import render


def chart_svg(metric: str, runs: Sequence[dict[str, Any]]) -> Markup:
    """One chart of `metric`: a line per run that has it, its best epoch a dot, a dotted line per phase end.

    Args:
        metric: one of `CURVE_METRICS`.
        runs: `curves(record)` of each run, in page order (colour `COLOURS[i]`).

    Returns:
        An inline `<svg>` (matplotlib, text kept as text), whose run lines are
        groups with the id `<metric>-run-<i>`; it holds no user string.
    """
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"nbsweep-{metric}",
                                "path.simplify": False, "font.size": 9}):
        figure = Figure(figsize=(5.2, 3.0))
        ax = figure.subplots()
        for i, run in enumerate(runs):
            values = run["curves"].get(metric)
            if not values:
                continue
            colour = COLOURS[i % len(COLOURS)]
            epochs = list(range(1, len(values) + 1))
            ax.plot(epochs, [float("nan") if v is None else v for v in values], color=colour, linewidth=1.6,
                    gid=f"{metric}-run-{i}")
            best = run.get("best_epoch")
            if best and 1 <= best <= len(values) and values[best - 1] is not None:
                ax.plot([best], [values[best - 1]], marker="o", markersize=6, color=colour, linestyle="none",
                        markeredgecolor="black", gid=f"{metric}-best-{i}")
            for end in run.get("phase_ends", []):
                ax.axvline(end + 0.5, color=colour, linestyle=":", linewidth=1, gid=f"{metric}-phase-{i}")
        ax.set_xlabel("epoch (head, then fine-tuning)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        figure.tight_layout()
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return Markup(text[text.index("<svg"):])


@dataclass(frozen=True)
class ComparePage:
    """What `write_compare` wrote: the runs (in order, the first the reference) and the page."""

    runs: list[RunRecord]
    path: Path


def _figure_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    rows = []
    for split, attribute in (("val", "val_metrics"), ("test", "metrics")):
        for metric in RANKING_METRICS:
            values = [getattr(getattr(rec, attribute), metric) if getattr(rec, attribute) else None
                      for rec in records]
            rows.append({"name": f"{split}_{metric}", "cells": _with_difference(values)})
    return rows


def _with_difference(values: Sequence[Optional[float]]) -> list[dict[str, Any]]:
    """Each value with its difference to the first (`None` for the first, or where either is missing)."""
    first = values[0]
    return [{"value": value, "diff": None if i == 0 or value is None or first is None else value - first}
            for i, value in enumerate(values)]


def _per_class(records: Sequence[RunRecord]) -> dict[str, Any]:
    """Per-class precision, recall and F1 (test split) of every run, with the difference to the first."""
    classes = list(dict.fromkeys(name for rec in records if rec.metrics for name in rec.metrics.per_class))
    rows = []
    for name in classes:
        cells = {}
        for key in ("precision", "recall", "f1"):
            values = [rec.metrics.per_class.get(name, {}).get(key) if rec.metrics else None for rec in records]
            cells[key] = _with_difference(values)
        support = next((rec.metrics.per_class[name].get("support") for rec in records
                        if rec.metrics and name in rec.metrics.per_class), None)
        rows.append({"name": name, "support": support,
                     "cells": [[cells[key][i] for key in ("precision", "recall", "f1")] for i in range(len(records))]})
    return {"classes": classes, "rows": rows}


def _tests(records: Sequence[RunRecord], logs_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """McNemar's exact test of every run against the first, or why it cannot be made."""
    first = records[0]
    out = []
    for rec, logs in zip(records[1:], logs_dirs[1:]):
        entry: dict[str, Any] = {"a": first.run_id, "b": rec.run_id, "result": None, "error": None}
        not_done = [r.run_id for r in (first, rec) if r.status != COMPLETED]
        if not_done:
            entry["error"] = f"run {', '.join(not_done)} did not complete: no test predictions to compare"
        else:
            try:
                entry["result"] = mcnemar_runs(first, rec, logs_dirs[0], logs)
            except ConfigError as exc:
                entry["error"] = str(exc)
        out.append(entry)
    return out


def _cache_text(record: RunRecord) -> str:
    parts = []
    for phase, use in record.activation_cache.items():
        if not isinstance(use, dict):
            continue
        if phase == "evaluation":
            parts.append(f"evaluation: {'from cache' if use.get('from_cache') else 'full model'}")
        else:
            parts.append(f"{phase}: {use.get('status') or '?'}" + (f" ({use['reason']})" if use.get("reason") else ""))
    return "; ".join(parts)


def _seconds(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.1f}"


def render_compare(records: Sequence[RunRecord], logs_dirs: Sequence[Path], page_dir: Path) -> str:
    """The comparison page of `records` (the first the reference) as one self-contained html string.

    Args:
        records: two or more run records.
        logs_dirs: each record's folder (their `paths` are relative to it).
        page_dir: the page's folder (links to the runs' notebook html are relative to it).

    Returns:
        A complete html document; every value from a record is escaped.
    """
    runs = []
    histories = []
    for i, (rec, logs) in enumerate(zip(records, logs_dirs)):
        histories.append(curves(rec))
        parent = rec.parent_run_id
        if parent and rec.warm_start is not None:
            parent += f" (checkpoint {rec.warm_start.checkpoint})"
        runs.append({"run_id": rec.run_id, "name": rec.name, "colour": COLOURS[i % len(COLOURS)],
                     "href": href(rec.path_of("html", logs), page_dir), "status": rec.status, "kind": rec.kind,
                     "parent": parent, "rerun_of": rec.rerun_of, "members": rec.members,
                     "epochs_run": rec.epochs_run,
                     "best": f"{rec.best_epoch} ({rec.best_phase})" if rec.best_epoch else None,
                     "timings": [_seconds(rec.timings.train_s), _seconds(rec.timings.eval_s),
                                 _seconds(rec.timings.cache_build_s), _seconds(rec.timings.total_s)],
                     "cache": _cache_text(rec), "confusion": confusion_matrix_table(rec)})
    charts = []
    for metric in CURVE_METRICS:
        missing = [rec.run_id for rec, h in zip(records, histories) if not h["curves"].get(metric)]
        charts.append({"metric": metric, "svg": chart_svg(metric, histories), "missing": missing})
    params = differing_params(records)
    return render("compare.html", runs=runs, params=params, n_differing=sum(not p["same"] for p in params),
                  figures=_figure_rows(records), per_class=_per_class(records), charts=charts,
                  tests=_tests(records, logs_dirs), p_meaning=P_VALUE_MEANING, format_p=format_p)


def resolve_runs(refs: Sequence[str], logs_dir: str | os.PathLike = LOGS_DIR) -> list[tuple[Path, RunRecord]]:
    """The records `refs` name, in order.

    Raises:
        ConfigError: fewer than 2 runs, a run named twice, or one that cannot be found.
    """
    if len(refs) < 2:
        raise ConfigError(f"compare needs at least 2 runs, got {len(refs)}")
    out: list[tuple[Path, RunRecord]] = []
    for ref in refs:
        try:
            path, record = find_path(ref, logs_dir)
        except RunLoadError as exc:
            raise ConfigError(str(exc)) from exc
        if any(record.run_id == other.run_id for _, other in out):
            raise ConfigError(f"run {record.run_id} is given twice ({ref!r})")
        out.append((path, record))
    return out


def write_compare(refs: Sequence[str], logs_dir: str | os.PathLike = LOGS_DIR,
                  out: str | os.PathLike = "compare.html") -> ComparePage:
    """Resolve the runs and write their comparison page atomically.

    Args:
        refs: run ids, unique prefixes, names, `best` or record paths; the first is the reference.
        logs_dir: folder of the records. Defaults to `runner.records.LOGS_DIR`.
        out: the page. Defaults to `"compare.html"`.

    Returns:
        The `ComparePage`.

    Raises:
        ConfigError: see `resolve_runs`.
        FatalError: the page cannot be written.
    """
    found = resolve_runs(refs, logs_dir)
    page = Path(out).resolve()
    records = [rec for _, rec in found]
    write_page(page, render_compare(records, [path.parent for path, _ in found], page.parent))
    return ComparePage(records, page)
