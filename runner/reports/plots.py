"""The leaderboard's metric plot, drawn with matplotlib in this process or in a child process beside it.

`runner.reports.leaderboard.metric_plot_data` turns ranked records into a plain,
JSON-able description; `draw` turns that into PNG bytes. `PlotProcess` runs
`draw` in a child `python` started when `write_leaderboard` begins, so
importing matplotlib and drawing (about a second; `bench/leaderboard_bench.py`)
overlap with reading the records, the csv and the lineage page on a second
core instead of adding to them. Run as a script, this module is that child: it
reads one JSON description on stdin and writes the PNG to stdout (nothing when
stdin is empty). It imports only numpy and matplotlib, never the project.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Optional

SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []
"""`python -P` (3.11+): the child does not put `runner/` first on `sys.path` (its modules would shadow any
top-level module of the same name)."""
CHILD_TIMEOUT_S = 120
"""Seconds `PlotProcess.draw` waits for the child before drawing in this process instead."""


def _literal(text: str) -> str:
    """`text` drawn literally: each `$` escaped as `\\$`, which matplotlib draws as a dollar sign (a string
    with two unescaped `$` is mathtext, and `x$_{$y` would not parse). The rule of
    `models.evaluate.literal_text`, restated here: this module imports nothing of the project."""
    return str(text).replace("$", r"\$")


def _box_strip(ax, values, labels) -> None:
    """A horizontal box per group (labels bottom to top, drawn literally) with its values as jittered points
    over it."""
    import numpy as np

    n = sum(len(v) for v in values)
    ax.boxplot(values, orientation="horizontal", tick_labels=[_literal(label) for label in labels], widths=0.55,
               showfliers=False,
               patch_artist=True, boxprops={"facecolor": "#dbe7f5", "edgecolor": "#6b8fb8"},
               medianprops={"color": "#1f4e8c"}, whiskerprops={"color": "#6b8fb8"}, capprops={"color": "#6b8fb8"})
    jitter = np.random.default_rng(0)
    many = n > 500  # smaller, lighter points so that thousands stay readable
    ax.scatter(np.concatenate(values),  # one collection for every run: one draw call, not one per group
               np.concatenate([np.full(len(v), float(position)) for position, v in enumerate(values, start=1)])
               + jitter.uniform(-0.12, 0.12, n),
               s=6 if many else 24, color="#1f77b4", alpha=0.3 if many else 0.8, zorder=3, linewidths=0)
    ax.grid(axis="x", alpha=0.3)


def draw(data: dict[str, Any]) -> bytes:
    """A box plot per group with every run as a point over it (a strip), and the best run as a red star;
    below it, with repeats, the same per configuration over its seeds.

    Args:
        data: `runner.reports.leaderboard.metric_plot_data`'s output: `groups` (labels,
            worst median first), `values` (one list of floats per group),
            `best` (`value`, 1-based `position` of its group, `label`),
            `xlabel`, and optionally `spread` (`groups`: one label per
            configuration with repeats, worst mean first; `values`: its runs'
            figures; `means`; `xlabel`), drawn as a second panel.

    Every label is drawn as it is written (`_literal`: a `$` is a dollar sign, never mathtext).

    Returns:
        PNG bytes (100 dpi).
    """
    import numpy as np
    from matplotlib.figure import Figure

    values = [np.asarray(v, dtype=float) for v in data["values"]]
    spread = data.get("spread")
    spread_values = [np.asarray(v, dtype=float) for v in spread["values"]] if spread else []
    panels = [len(values)] + ([len(spread_values)] if spread else [])
    figure = Figure(figsize=(7, 1.3 * len(panels) + 0.5 * sum(panels)))
    axes = figure.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": [p + 1 for p in panels]})[:, 0]
    ax = axes[0]
    _box_strip(ax, values, data["groups"])
    best = data["best"]
    ax.scatter([best["value"]], [best["position"]], marker="*", s=220, color="#d62728", zorder=4,
               label=_literal(best["label"]))
    ax.legend(loc="lower left", fontsize=8, frameon=False, bbox_to_anchor=(0, 1.0))
    ax.set_xlabel(_literal(data["xlabel"]))
    if spread:
        _box_strip(axes[1], spread_values, spread["groups"])
        if spread.get("means"):  # what the configurations are ranked by
            axes[1].scatter(spread["means"], range(1, len(spread["means"]) + 1), marker="D", s=40, color="#222222",
                            zorder=4, label="mean (ranks the configurations)")
            axes[1].legend(loc="lower left", fontsize=8, frameon=False, bbox_to_anchor=(0, 1.0))
        axes[1].set_xlabel(_literal(spread["xlabel"]))
        figure.subplots_adjust(hspace=0.9)  # room for the first panel's axis label and this legend
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


class PlotProcess:
    """A child `python` that imports matplotlib at once and draws one plot when handed its data.

    Used as a context manager: start it before the slow work, `submit(data)`
    as soon as the data is known (the child draws while this process goes
    on), `result()` when the PNG is needed. If the child cannot be started,
    fails or times out, `result()` draws in this process: the page never goes
    without its plot because of the child. Leaving the block ends the child.
    """

    def __init__(self) -> None:
        self._data: Optional[dict[str, Any]] = None
        self._png: Optional[bytes] = None
        self._thread: Optional[threading.Thread] = None
        try:
            self._proc: Optional[subprocess.Popen] = subprocess.Popen(
                [sys.executable, *SAFE_PATH, str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError:
            self._proc = None

    def __enter__(self) -> "PlotProcess":
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._thread.join()
        elif self._proc is not None:  # nothing was submitted: let the child end
            self._proc.communicate(b"", timeout=CHILD_TIMEOUT_S)
        self._proc = None

    def submit(self, data: dict[str, Any]) -> None:
        """Hand `data` (as for `draw`) to the child, which draws it while this process goes on."""
        self._data = data
        if self._proc is not None:
            self._thread = threading.Thread(target=self._communicate, args=(json.dumps(data).encode("utf-8"),),
                                            daemon=True)
            self._thread.start()

    def _communicate(self, payload: bytes) -> None:
        proc = self._proc
        try:
            png, _ = proc.communicate(payload, timeout=CHILD_TIMEOUT_S)
            if proc.returncode == 0 and png.startswith(b"\x89PNG"):
                self._png = png
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()

    def result(self) -> Optional[bytes]:
        """The submitted plot's PNG bytes (drawn here if the child failed), or `None` when nothing was submitted."""
        if self._data is None:
            return None
        if self._thread is not None:
            self._thread.join()
        return self._png if self._png is not None else draw(self._data)


def main() -> int:
    """The child: import matplotlib, then draw the JSON description read from stdin to stdout as PNG."""
    import matplotlib.figure  # noqa: F401  (imported while the parent reads the records)

    text = sys.stdin.buffer.read()
    if text.strip():
        sys.stdout.buffer.write(draw(json.loads(text)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
