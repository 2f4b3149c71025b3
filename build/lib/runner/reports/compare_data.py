"""What a comparison of runs is drawn from, shared by `compare.html` (`runner.reports.compare`) and the
leaderboard's "compare selected" (`runner.reports.leaderboard`, which embeds `compare_payload` of the rows
it shows as inline JSON, `inline_json`): the curves of a run's history, parameters as the pages show
them, the colours of the runs, and the parameters that differ."""

from __future__ import annotations

import json
import math
from typing import Any, Optional, Sequence

from markupsafe import Markup

from models.names import FINE_TUNE, HEAD
from runner.records import RunRecord

CURVE_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
"""The Keras history entries drawn, one chart each."""
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
"""One colour per run, in order (matplotlib's tab10); the html legend and the charts share them."""


def param_text(value: Any) -> str:
    """A parameter as the pages show it: a string as it is, anything else as JSON with sorted keys."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def run_label(record: RunRecord) -> str:
    """`<run id>` or `<run id> (<name>)`."""
    return f"{record.run_id} ({record.name})" if record.name else record.run_id


def curves(record: RunRecord) -> dict[str, Any]:
    """A run's training history, both phases concatenated, for the charts.

    Args:
        record: a run record (its `history`: per phase, per Keras metric, one float per epoch).

    Returns:
        `{"curves": {metric: [float or None]}` for each of `CURVE_METRICS` the
        run has (the head's epochs, then fine-tuning's), `"phase_ends": [the
        last epoch of every phase but the last]`, `"best_epoch": int or None}`;
        epochs are 1-based positions in the lists.
    """
    phases = sorted(record.history, key=lambda p: (p != HEAD, p != FINE_TUNE))
    lengths = [max((len(v) for v in record.history[p].values()), default=0) for p in phases]
    out: dict[str, list] = {}
    for metric in CURVE_METRICS:
        if not any(metric in record.history[p] for p in phases):
            continue
        column: list = []
        for phase, length in zip(phases, lengths):
            values = list(record.history[phase].get(metric, []))[:length]
            column += [_finite(v) for v in values] + [None] * (length - len(values))
        out[metric] = column
    ends = [sum(lengths[:i + 1]) for i in range(len(lengths))]
    return {"curves": out, "phase_ends": ends[:-1], "best_epoch": record.best_epoch}


def _finite(value: Any) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return round(number, 6) if math.isfinite(number) else None


def differing_params(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Every parameter of any run, those that differ first: `{"name", "values": [text or None], "same"}`."""
    names = list(dict.fromkeys(name for rec in records for name in rec.params))
    rows = []
    for name in names:
        values = [param_text(rec.params[name]) if name in rec.params else None for rec in records]
        rows.append({"name": name, "values": values, "same": len(set(values)) == 1})
    return [row for row in rows if not row["same"]] + [row for row in rows if row["same"]]


def compare_payload(records: Sequence[RunRecord]) -> dict[str, Any]:
    """What the leaderboard embeds for its "compare selected" view (only the rows it shows).

    Args:
        records: the runs on the page, in page order.

    Returns:
        A JSON-able `{"metrics": CURVE_METRICS, "colours": COLOURS, "runs": [{"run_id",
        "label", "params": {name: text}, "curves", "phase_ends", "best_epoch"}]}`.
    """
    runs = [{"run_id": rec.run_id, "label": run_label(rec),
             "params": {name: param_text(value) for name, value in rec.params.items()}, **curves(rec)}
            for rec in records]
    return {"metrics": list(CURVE_METRICS), "colours": list(COLOURS), "runs": runs}


def inline_json(payload: Any) -> Markup:
    """`payload` as JSON text safe inside `<script type="application/json">`.

    `<`, `>` and `&` are written as `\\u003c`, `\\u003e`, `\\u0026`, so no value can
    close the script element (`</script>`) or open a comment; `JSON.parse` reads
    them back unchanged.
    """
    text = json.dumps(payload, separators=(",", ":"), sort_keys=True, allow_nan=False)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
