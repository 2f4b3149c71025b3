"""Rank run records into `leaderboard.html`, `leaderboard.csv` and `lineage.html`.

Usage: `python runner/leaderboard.py [--logs-dir logs] [--out leaderboard.html]
[--metric weighted_recall] [--top-n 10]`. The sweep calls `write_leaderboard`
at its end with the grid's `metric` and `top_n`.

The records are read once, as summaries (`runner.records.index.read_summaries`: the
fields ranking, the csv and the lineage tree need, kept in an SQLite index beside
the records and re-read from any JSON file that changed); the runs the page lists
are read in full from their files. The metric is validated once
(`runner.records.query.parse_metric`), the runs are ranked by `runner.records.query.rank`
and grouped once (`runner.records.groups.group_ranked`, which computes each group's
statistics once):
by default on the **validation** split (`weighted_recall` is
`val_weighted_recall`); the test figures are shown beside it for reporting. A
schema-1 record (no validation metrics) ranks by its test figure, marked `*`.

The page is one static, self-contained html file that works offline
(`runner/reports/templates/leaderboard.html`, rendered with Jinja2, every value
escaped): its CSS and script (`runner/reports/assets/`) and its figures
(PNG data URIs) are inlined. At the top, the ranking figure of every ranked
run by base and head (a strip over a box plot) and the best run's confusion
matrix (test split: its saved picture, or a table of its counts); then the top `top_n` configurations, best
first (ties keep the earlier run). The repeats of one configuration over seeds (`repeats:`,
`runner.records.groups`) are one row, ranked by their mean: its figures are mean ± sample standard deviation,
with n and min-max, its best `MAX_REPEATS_LISTED` runs listed under a `<details>` (the rest counted), and the
plot gets a panel of each such configuration's spread; a board without repeats says
that differences below the seed spread are not meaningful and how to measure it. Click a header to sort, type to filter, tick "show all parameters" to
see the parameter columns that are the same for every run shown. Each run id
links to its saved notebook html and its node in `lineage.html`, each parent
to its row. Then the refits of a grid with `refit: true` (`RunRecord.refit_of`: the best configuration
trained again on train + validation; test figures only, never ranked) beside their originals' test
figures, pruned runs (with the epoch they reached), runs that did not
complete (the `MAX_LISTED` most recent of each, and a count; with them, and the reason, completed runs whose
figure for the metric is `NaN` or `Infinity`, which is no figure: `not_finite_runs`), completed runs
without a figure for the metric, and unreadable records (at most `MAX_LISTED` each). The page
links `leaderboard.csv`, every ranked run with all its figures and parameters, and embeds only
what it shows, so it stays small however many records there are (0.45 MB for 100,000 records,
`bench/leaderboard_bench.py`).
"""

from __future__ import annotations

import base64
import csv
import gc
import io
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence
from urllib.parse import quote


import numpy as np

from models.names import DEFAULT_METRIC
from runner.reports import plots as metric_plot
from runner.reports.compare_data import compare_payload, inline_json
from runner.reports.stats import P_VALUE_MEANING, format_p, top_two
from runner.reports.lineage import node_id, render_lineage
from runner.reports.links import fragment, href
from runner.records.groups import GROUP_FREE_PARAMS, Group, finite_figure, format_spread, group_ranked, has_repeats
from runner.records.index import read_summaries
from runner.records.query import Ranking, RecordSet, parse_metric, rank
from runner.records import (
    COMPLETED, ENSEMBLE, PRUNED, RANKING_METRICS, TOP_N, RunLoadError, RunRecord, SplitMetrics, write_page,
)
from runner.reports.templates import render

LINEAGE_FILE = "lineage.html"
MAX_LISTED = 50
"""Rows listed per section of runs that are not ranked (pruned, not completed, ...); the rest are counted."""
REPORTED_TEST_METRICS = tuple(dict.fromkeys(("accuracy", DEFAULT_METRIC)))
"""Test-split figures always shown beside the ranking figure (with the ranking metric's own): accuracy and
the default metric (`models.names.DEFAULT_METRIC`)."""
SCHEMA1_NOTE = "schema 1: no validation metrics, ranked by test"
MAX_REPEATS_LISTED = 10
"""Runs of one configuration listed under its row (its best by the ranking figure, and the run that stands
for it); the others are counted, and every run is in `leaderboard.csv`."""
MAX_SPREAD_GROUPS = 20
"""Configurations with repeats drawn in the metric plot's spread panel (the best by mean)."""
SPLIT_WORDS = {"val": "validation split", "test": "test split"}


@dataclass(frozen=True)
class Leaderboard:
    """What `write_leaderboard` wrote.

    Attributes:
        ranking: the validated metric the runs were ranked by.
        ranked: the completed runs with a figure for `ranking`, best first
            (`runner.records.index.RunSummary`s from `write_leaderboard`; a
            summary has every field ranking reads, `RecordSet.load` gives the record).
        page_path, csv_path, lineage_path: the files written (absolute).
        unranked: the completed runs that do not rank (`unranked_runs`: not
            refits; e.g. ensembles under a validation ranking), in run-id order.
        groups: `ranked` by configuration (`runner.records.groups.group_ranked`),
            best mean first.
    """

    ranking: Ranking
    ranked: list[RunRecord]
    page_path: Path
    csv_path: Path
    lineage_path: Path
    unranked: list[RunRecord] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)

    @property
    def best(self) -> Optional[RunRecord]:
        """The first ranked run, or `None` when none ranks."""
        return self.ranked[0] if self.ranked else None

    def summary(self) -> str:
        """One line for the command line, e.g. `wrote leaderboard.html (3 ranked runs; best val_weighted_recall 0.9000 (<run id>))`."""
        best = self.best
        text = f"wrote {self.page_path.name} ({len(self.ranked)} ranked runs"
        if best is not None:
            split = self.ranking.split_of(best)
            marked = f", {split}" if split != self.ranking.split else ""
            text += f"; best {self.ranking.column} {self.ranking.value(best):.4f} ({best.run_id}{marked})"
        if has_repeats(self.groups):
            top = self.groups[0]
            text += (f"; best configuration {self.ranking.column} {format_spread(top)} over {top.n} seed"
                     f"{'s' * (top.n > 1)} ({top.best.run_id})")
        return text + ")"


@dataclass(frozen=True)
class _Link:
    text: str
    href: Optional[str] = None


@dataclass(frozen=True)
class _Figure:
    text: str
    mark: bool = False
    sort: Optional[str] = None  # the sort key when the text is not a number (a group's mean ± std)


@dataclass
class _Section:
    """One table of the page: the rows shown (at most `MAX_LISTED`, or the top N) out of `total`."""

    rows: list = field(default_factory=list)
    total: int = 0
    figure_columns: list[str] = field(default_factory=list)
    params: list[dict[str, Any]] = field(default_factory=list)  # the board's: {"name", "same"}
    n_same: int = 0  # the board's parameters that are the same on every row
    schema1: bool = False  # a row's ranking figure is a schema-1 test figure (footnote)
    repeats: bool = False  # a row groups several runs (seeds) of one configuration

    @property
    def more(self) -> int:
        return self.total - len(self.rows)


_to_json = json.JSONEncoder(sort_keys=True).encode
_param_texts: dict[tuple[type, Any], str] = {}
_HASHABLE = frozenset((int, float, bool, type(None)))


def _param_value(value: Any) -> str:
    """A parameter as the page and the csv show it: a string as it is, anything else as JSON (sorted keys).

    Memoized on `(type, repr)`: a sweep's parameters take few distinct values
    and JSON-encoding each of 10,000 runs' 40 parameters anew is most of the
    csv's time.
    """
    cls = value.__class__
    if cls is str:
        return value
    key = (cls, value) if cls in _HASHABLE else (cls, repr(value))
    text = _param_texts.get(key)
    if text is None:
        if len(_param_texts) > 100_000:
            _param_texts.clear()
        text = _param_texts[key] = value if isinstance(value, str) else _to_json(value)
    return text


def _number(value: Optional[float], digits: int = 4) -> str:
    """A figure with `digits` decimals; `""` for none, and for `NaN` or `Infinity` (`finite_figure`)."""
    value = finite_figure(value)
    return "" if value is None else f"{value:.{digits}f}"


def _split_metrics(record: RunRecord, split: str) -> Optional[SplitMetrics]:
    return record.val_metrics if split == "val" else record.metrics


def split_figure(record: RunRecord, column: str) -> Optional[float]:
    """A record's figure by column name, e.g. `"val_weighted_recall"`, `"test_accuracy"`.

    Args:
        record: a run record.
        column: `"val_"` or `"test_"` followed by a `RANKING_METRICS` key (read by
            `runner.records.query.parse_metric`).

    Returns:
        The float in [0, 1], or `None` when the record has no metrics for that split (a
        schema-1 record's missing validation figures are not replaced by its test ones here)
        or the value is not a finite number (`finite_figure`).

    Raises:
        ConfigError: `column` is no metric name.
    """
    figure = parse_metric(column, "column")
    metrics = _split_metrics(record, figure.split)
    return None if metrics is None else finite_figure(getattr(metrics, figure.metric))


def figure_columns(ranking: Ranking) -> list[str]:
    """The figure columns of the board: the ranking column first, then its other split's, then the reported test figures.

    Args:
        ranking: from `parse_metric`.

    Returns:
        E.g. `["val_weighted_recall", "test_weighted_recall", "test_accuracy"]`.
    """
    other = "test" if ranking.split == "val" else "val"
    columns = [ranking.column, f"{other}_{ranking.metric}", *(f"test_{m}" for m in REPORTED_TEST_METRICS)]
    return list(dict.fromkeys(columns))


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def base_head_group(record: RunRecord) -> str:
    """A record's group in the metric plot: `"<base> + <head>"`, `"<base>"` without a head, `"ensemble"` for ensembles.

    Args:
        record: a run record.

    Returns:
        The group's label.
    """
    base = record.params.get("base")  # in its one spelling: `RunRecord` reads `VGG16` as `vgg16`
    if base is None:
        base = record.kind
    head = record.params.get("head")
    return f"{base} + {head}" if head else str(base)


def metric_plot_data(ranked: Sequence[RunRecord], ranking: Ranking,
                     groups: Optional[Sequence[Group]] = None) -> Optional[dict[str, Any]]:
    """What the metric plot shows (`runner.reports.plots.draw`): the ranking figure per base and head, every run a point.

    Groups are ordered by median, best at the top; the best run is a red
    star. The axis names the column and its split (schema-1 runs: their
    test figure, said on the axis).

    Args:
        ranked: `runner.records.query.rank`'s output (best first): `RunRecord`s
            or `runner.records.index.RunSummary`s.
        ranking: what they were ranked by.
        groups: `group_ranked(ranked, ranking)`, when the caller has it. Defaults
            to `None`: grouped here.

    Returns:
        A JSON-able dict (`groups`, `values`, `best`, `xlabel`, and `spread`
        with repeats), or `None` when `ranked` is empty.
    """
    if not ranked:
        return None
    values_of: dict[str, list[float]] = {}
    for rec in ranked:
        values_of.setdefault(base_head_group(rec), []).append(ranking.value(rec))
    order = sorted(values_of, key=lambda g: float(np.median(values_of[g])))  # stable: ties keep first-seen order
    best = ranked[0]
    schema1 = any(ranking.split_of(rec) != ranking.split for rec in ranked)
    xlabel = f"{ranking.column} ({SPLIT_WORDS[ranking.split]}{'; schema 1 runs: test split' if schema1 else ''})"
    data = {"groups": order, "values": [values_of[g] for g in order],
            "best": {"value": ranking.value(best), "position": order.index(base_head_group(best)) + 1,
                     "label": f"best: {best.run_id} ({ranking.value(best):.4f})"},
            "xlabel": xlabel}
    groups = group_ranked(ranked, ranking) if groups is None else groups
    repeated = [(position, group) for position, group in enumerate(groups, start=1)
                if group.n > 1][:MAX_SPREAD_GROUPS]
    if repeated:  # worst mean first: the best configuration at the top, as above
        data["spread"] = {"groups": [_group_label(position, group) for position, group in reversed(repeated)],
                          "values": [list(group.values) for _, group in reversed(repeated)],
                          "means": [group.mean for _, group in reversed(repeated)],
                          "xlabel": f"{xlabel}: spread over seeds per configuration"}
    return data


def _group_label(position: int, group: Group) -> str:
    """`#1 mb224_ft (n=3)`: a configuration's leaderboard rank, its best run's name (or id), its repeats."""
    return f"#{position} {group.best.name or group.best.run_id} (n={group.n})"


def metric_plot_png(ranked: Sequence[RunRecord], ranking: Ranking) -> Optional[bytes]:
    """The metric plot (`metric_plot_data`) drawn in this process.

    Args:
        ranked: `runner.records.query.rank`'s output (best first).
        ranking: what they were ranked by.

    Returns:
        PNG bytes, or `None` when `ranked` is empty.
    """
    data = metric_plot_data(ranked, ranking)
    return None if data is None else metric_plot.draw(data)


def confusion_matrix_png(record: RunRecord, logs_dir: str | Path) -> Optional[bytes]:
    """The run's saved confusion matrix picture (test split), as the notebook drew it.

    Args:
        record: the run record.
        logs_dir: folder of the record (its `paths` are relative to it).

    Returns:
        The bytes of the run's `confusion_matrix` PNG, or `None` when the
        record has none or the file is missing or not a PNG (the page then
        shows `confusion_matrix_table`).
    """
    saved_path = record.path_of("confusion_matrix", logs_dir)
    if saved_path is None:
        return None
    try:
        saved = saved_path.read_bytes()
    except OSError:
        return None
    return saved if saved.startswith(b"\x89PNG") else None


MAX_TABLE_CLASSES = 40
"""Largest confusion matrix drawn as a table on the page (classes)."""


def confusion_matrix_table(record: RunRecord) -> Optional[dict[str, Any]]:
    """The run's confusion matrix (test split) as a shaded html table, for a run without a saved picture.

    A table instead of a drawing: exact counts, selectable text, and no
    matplotlib figure with a text per cell (drawing 10x10 counts took half a
    second; `bench/leaderboard_bench.py`).

    Args:
        record: the run record.

    Returns:
        `{"labels": [class name], "rows": [(class name, [(count, shade)])]}`,
        rows true classes, columns predicted (`shade` in [0, 1], the count
        over the largest count), labelled with `data.class_names` when they
        fit (else `0..n-1`); `None` when the record has no square matrix or
        more than `MAX_TABLE_CLASSES` classes.
    """
    matrix = record.metrics.confusion_matrix if record.metrics else []
    n = len(matrix)
    if not n or n > MAX_TABLE_CLASSES or any(len(row) != n for row in matrix):
        return None
    names = list(record.data.class_names) if record.data else []
    labels = names if len(names) == n else [str(i) for i in range(n)]
    top = max(max(row) for row in matrix) or 1
    return {"labels": labels,
            "rows": [(label, [(count, round(count / top, 3)) for count in row]) for label, row in zip(labels, matrix)]}


def _most_recent(records: Sequence[RunRecord]) -> list[RunRecord]:
    """Newest first (run ids start with the UTC start time), at most `MAX_LISTED`."""
    return sorted(records, key=lambda rec: rec.run_id, reverse=True)[:MAX_LISTED]


def _note(record: RunRecord) -> str:
    return f"{record.error.ename}: {record.error.evalue}" if record.error else ""


def listed_runs(group: Group) -> list[RunRecord]:
    """The runs of a group listed on the page: its first `MAX_REPEATS_LISTED` by the ranking figure, with the
    run that stands for it (`Group.best`) in place of the last of them when it is not among them.

    Args:
        group: a `runner.records.groups.Group`.

    Returns:
        At most `MAX_REPEATS_LISTED` of `group.runs`, in their order.
    """
    runs = list(group.runs[:MAX_REPEATS_LISTED])
    if not any(rec is group.best for rec in runs):
        runs[-1] = group.best
    return runs


def unranked_runs(records: Iterable[RunRecord], ranked: Iterable[RunRecord]) -> list[RunRecord]:
    """The completed runs that do not rank: what the page's "Completed runs without <metric>" section and
    `leaderboard.csv`'s rows with an empty `rank` and `refit_of` both list (the one definition of unranked).

    A completed run is ranked (in `ranked`), a refit (`refit_runs`: never ranked, shown apart beside its
    original), or unranked: with `rank`'s defaults, a run without a figure for the ranking (e.g. an ensemble,
    test figures only, under a validation ranking).

    Args:
        records: every record (`RunRecord`s or `RunSummary`s).
        ranked: `runner.records.query.rank(records, ranking)`.

    Returns:
        The completed records neither in `ranked` nor refits, in the order of `records`.
    """
    ranked_ids = {rec.run_id for rec in ranked}
    return [rec for rec in records if rec.status == COMPLETED and rec.run_id not in ranked_ids
            and rec.refit_of is None]


def not_finite_runs(records: Iterable[RunRecord], ranking: Ranking) -> list[RunRecord]:
    """The completed runs, refits aside, that hold the ranking metric but not as a finite number (`NaN`,
    `Infinity`: `runner.records.query.Ranking.not_finite` says so): unranked, listed on the page among the
    runs that did not complete with that reason, and in `leaderboard.csv` with it as `unranked_reason`.

    Args:
        records: every record (`RunRecord`s or `RunSummary`s).
        ranking: what the board ranks by.

    Returns:
        Those records, in the order of `records`.
    """
    return [rec for rec in records if rec.status == COMPLETED and rec.refit_of is None
            and ranking.not_finite(rec) is not None]


def unranked_reason(record: RunRecord, ranking: Ranking, ranked_ids: set[str]) -> Optional[str]:
    """Why a completed run has no rank: `leaderboard.csv`'s `unranked_reason`.

    Args:
        record: a completed run.
        ranking: what the board ranks by.
        ranked_ids: the run ids of `runner.records.query.rank(records, ranking)`.

    Returns:
        `None` for a ranked run; else `"refit of <run id>: ..."` (`refit_runs`), the `Ranking.not_finite`
        reason, or `"no <column>"` (e.g. an ensemble, test figures only, under a validation ranking).
    """
    if record.run_id in ranked_ids:
        return None
    if record.refit_of is not None:
        return f"refit of {record.refit_of}: trained on the validation split, never ranked"
    return ranking.not_finite(record) or f"no {ranking.column}"


def refit_runs(records: Iterable[RunRecord]) -> list[RunRecord]:
    """The completed refits (`RunRecord.refit_of`: a configuration trained again on train + validation, never
    ranked), in the order of `records`: the page's refits section and `leaderboard.csv`'s last rows."""
    return [rec for rec in records if rec.refit_of is not None and rec.status == COMPLETED]


def _loaded(found: RecordSet, records: Iterable[RunRecord]) -> dict[str, RunRecord]:
    """Run id -> full record (`RecordSet.load`) of each of `records` that can still be read."""
    full = {}
    for rec in records:
        try:
            full[rec.run_id] = found.load(rec)
        except RunLoadError:  # changed since it was indexed: its row keeps the summary's figures
            continue
    return full


def _train_images(record) -> Any:
    """The number of training images of a full record, `""` when it has none (or is a summary)."""
    data = getattr(record, "data", None)
    return sum((data.counts.get("train") or {}).values()) if data else ""


def render_leaderboard(found: RecordSet, ranking: Ranking, ranked: Sequence[RunRecord], top_n: int,
                       page_dir: Path, confusion_png: Optional[bytes] = None,
                       plot_png: Optional[bytes | Callable[[], Optional[bytes]]] = None, *,
                       groups: Optional[Sequence[Group]] = None, csv_name: str = "leaderboard.csv") -> str:
    """The leaderboard page as one self-contained html string (inline CSS, JS and images), bounded in size.

    The page shows the top `top_n` configurations, at most `MAX_REPEATS_LISTED` runs under each, and at most
    `MAX_LISTED` rows of each other section with a count of the rest; it links `csv_name`, which has every
    ranked run. Only what it shows is embedded (the "compare selected" data: the runs listed), so its size
    does not grow with the number of records (about 0.4 MB for 100,000; `bench/leaderboard_bench.py`).

    Args:
        found: every record: `runner.records.query.read_all` (`RunRecord`s) or
            `runner.records.index.read_summaries` (`RunSummary`s; the runs listed
            on the board and the best run are read in full with `found.load`).
        ranking: the metric `ranked` is ranked by.
        ranked: `runner.records.query.rank(found.records, ranking)`.
        top_n: number of rows shown in the table: configurations, the
            repeats of each grouped into one row (`runner.records.groups`).
        page_dir: folder the page is written to (links are relative to it).
        confusion_png: PNG bytes of the best run's saved confusion matrix
            (`confusion_matrix_png`). Defaults to `None`: the page shows
            `confusion_matrix_table` of the best run instead.
        plot_png: PNG bytes of the metric plot (`metric_plot_png`), or a
            function giving them, called once the rest of the page is ready
            (`write_leaderboard` passes `runner.reports.plots.PlotProcess.result`:
            a child process draws it meanwhile). Defaults to `None`, as is a
            function's `None`: drawn here.
        groups: `group_ranked(ranked, ranking)`, when the caller has it. Defaults to `None`: grouped here.
        csv_name: the file name of the full table beside the page, linked. Defaults to `"leaderboard.csv"`.

    Returns:
        A complete html document (`runner/reports/templates/leaderboard.html`); every
        value from a record is escaped and nothing is loaded from another host.
    """
    groups = group_ranked(ranked, ranking) if groups is None else groups
    shown_groups = groups[:top_n]
    listed = {group.key: listed_runs(group) for group in shown_groups}
    shown = [rec for group in shown_groups for rec in listed[group.key]]  # every run listed on the board
    full = _loaded(found, [*shown, *ranked[:1]])
    cells = _Cells(ranking, found.logs_dir, page_dir, found.by_id(), {rec.run_id for rec in shown}, listed)
    columns = figure_columns(ranking)
    board = _make_board(shown_groups, shown, columns, cells)
    board.repeats = has_repeats(groups)
    pruned, failed = _list_pruned(found, cells), _list_failed(found, cells)
    refits = _list_refits(found, columns, cells)
    unranked = _list_unranked(found, ranked, columns, cells)
    unreadable = _Section(rows=list(found.unreadable.items())[:MAX_LISTED], total=len(found.unreadable))
    # the first two rows' test (it may import scipy) before the plot is awaited: while a child process draws it
    significance = _test_top_two(shown_groups, full, ranking, found.logs_dir)
    figures = _draw_figures(ranked, ranking, full.get(ranked[0].run_id) if ranked else None, confusion_png, plot_png)
    best = {"run_id": ranked[0].run_id, "fragment": fragment(node_id(ranked[0].run_id))} if ranked else None
    return render("leaderboard.html", ranking=ranking, split_words=SPLIT_WORDS[ranking.split],
                  generated=f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}", lineage_href=LINEAGE_FILE,
                  n_ranked=len(ranked), n_groups=len(groups), max_spread=MAX_SPREAD_GROUPS, figures=figures, best=best,
                  csv_href=quote(csv_name),
                  schema1_note=SCHEMA1_NOTE,
                  board=board, refits=refits, pruned=pruned, failed=failed, unranked=unranked,
                  unreadable=unreadable,
                  compare_json=inline_json(compare_payload([full[rec.run_id] for rec in shown if rec.run_id in full])),
                  p_meaning=P_VALUE_MEANING, format_p=format_p, top_two=significance)


@dataclass(frozen=True)
class _Cells:
    """What one page's cells are made of: links relative to the page, figures by the ranking, parameters."""

    ranking: Ranking
    logs_dir: Path
    page_dir: Path
    by_id: dict[str, RunRecord]  # every record (`RecordSet.by_id`): a parent not on the board links to its html
    on_page: set[str]  # the runs listed on the board: a parent among them links to its row
    listed: dict[Any, list[RunRecord]]  # group key -> the runs listed under its row (`listed_runs`)

    def run_link(self, rec: RunRecord) -> _Link:
        return _Link(rec.run_id, href(rec.path_of("html", self.logs_dir), self.page_dir))

    def parent_link(self, parent_id: Optional[str]) -> _Link:
        if not parent_id:
            return _Link("")
        if parent_id in self.on_page:
            return _Link(parent_id, fragment(node_id(parent_id)))
        parent = self.by_id.get(parent_id)
        return self.run_link(parent) if parent is not None else _Link(parent_id)

    def ranked_figure(self, rec: RunRecord) -> _Figure:
        return _Figure(_number(self.ranking.value(rec)), mark=self.ranking.split_of(rec) != self.ranking.split)

    def column_figure(self, rec: RunRecord, column: str) -> _Figure:
        return _Figure(_number(split_figure(rec, column)))

    def group_figure(self, group: Group, column: Optional[str] = None) -> _Figure:
        """A row's figure: the run's own, or for repeats mean ± std (sorted by the mean)."""
        if group.n == 1:
            rec = group.runs[0]
            return self.ranked_figure(rec) if column is None else self.column_figure(rec, column)
        if column is None:
            return _Figure(format_spread(group), sort=_number(group.mean),
                           mark=any(self.ranking.split_of(rec) != self.ranking.split for rec in group.runs))
        pairs = [(rec, value) for rec in group.runs if (value := split_figure(rec, column)) is not None]
        if not pairs:
            return _Figure("")
        runs, figures = zip(*pairs)
        spread = Group(group.key, runs, figures, group.best)
        return _Figure(format_spread(spread), sort=_number(spread.mean))

    def group_param(self, group: Group, name: str) -> str:
        """A row's parameter: its best run's, or for `seed` and `name` every listed repeat's, comma-separated
        (`+k more` for the runs not listed)."""
        listed = self.listed[group.key]
        if group.n > 1 and name in GROUP_FREE_PARAMS:
            given = [rec.params[name] for rec in listed if rec.params.get(name) is not None]
            if all(type(value) is int for value in given):  # seeds in order
                given = sorted(given)
            text = ", ".join(dict.fromkeys(_param_value(value) for value in given))
            return text + (f" (+{group.n - len(listed)} more)" if group.n > len(listed) else "")
        return _param_value(group.best.params[name]) if name in group.best.params else ""


def _make_board(shown_groups: Sequence[Group], shown: Sequence[RunRecord], columns: list[str],
                cells: _Cells) -> _Section:
    """The board: a row per configuration shown; the parameters that differ between the runs listed first."""
    param_names = list(dict.fromkeys(name for rec in shown for name in rec.params))
    values = {name: {_param_value(rec.params[name]) for rec in shown if name in rec.params} for name in param_names}
    differing = [name for name in param_names if len(values[name]) > 1] if len(shown) > 1 else []
    params = differing + [name for name in param_names if name not in differing]
    board = _Section(total=len(shown_groups), figure_columns=columns, n_same=len(params) - len(differing),
                     params=[{"name": name, "same": name not in differing} for name in params])
    board.rows = [_make_board_row(position, group, columns, [(name, name not in differing) for name in params],
                                  cells) for position, group in enumerate(shown_groups, start=1)]
    board.schema1 = any(row["figures"][0].mark for row in board.rows)
    return board


def _make_board_row(position: int, group: Group, columns: list[str], params: list[tuple[str, bool]],
                    cells: _Cells) -> dict[str, Any]:
    """The board's row of `group` at rank `position`; `params`: (name, the same on every row) in column order."""
    rec = group.best  # the row's run: the group's best on the validation split
    listed = cells.listed[group.key]
    return {
        "anchor": node_id(rec.run_id), "rank": position, "run": cells.run_link(rec),
        "ensemble": rec.kind == ENSEMBLE, "tree_href": LINEAGE_FILE + fragment(node_id(rec.run_id)),
        "figures": [cells.group_figure(group), *(cells.group_figure(group, c) for c in columns[1:])],
        "n": group.n, "range": f"{group.min:.4f}–{group.max:.4f}" if group.n > 1 else "",
        "repeats": [{"anchor": node_id(each.run_id) if each is not rec else None, "run": cells.run_link(each),
                     "seed": _param_value(each.params.get("seed")), "figure": cells.ranked_figure(each)}
                    for each in listed] if group.n > 1 else [],
        "repeats_more": group.n - len(listed),
        "epochs_run": rec.epochs_run, "train_s": _number(rec.timings.train_s, 1),
        "parent": cells.parent_link(rec.parent_run_id), "rerun_of": cells.parent_link(rec.rerun_of),
        "params": [(cells.group_param(group, name), same) for name, same in params],
    }


def _list_pruned(found: RecordSet, cells: _Cells) -> _Section:
    """The pruned runs' section: the `MAX_LISTED` most recent, with the epoch they reached."""
    records = [rec for rec in found.records if rec.status == PRUNED]
    return _Section(total=len(records),
                    rows=[{"anchor": node_id(rec.run_id), "run": cells.run_link(rec), "epochs_run": rec.epochs_run,
                           "figure": cells.ranked_figure(rec), "note": _note(rec)} for rec in _most_recent(records)])


def _list_failed(found: RecordSet, cells: _Cells) -> _Section:
    """The section of runs that did not complete (nor were pruned), and of completed runs whose ranking figure
    is not a finite number (`not_finite_runs`): the `MAX_LISTED` most recent, with the error or that reason."""
    records = [rec for rec in found.records if rec.status not in (COMPLETED, PRUNED)]
    records += not_finite_runs(found.records, cells.ranking)
    return _Section(total=len(records),
                    rows=[{"anchor": node_id(rec.run_id), "run": cells.run_link(rec), "status": rec.status,
                           "note": _note(rec) or cells.ranking.not_finite(rec) or ""}
                          for rec in _most_recent(records)])


def _list_refits(found: RecordSet, columns: list[str], cells: _Cells) -> _Section:
    """The refits' section (`refit_runs`): the `MAX_LISTED` most recent, their test figures beside their originals'."""
    records = refit_runs(found.records)
    test_columns = [column for column in columns if column.startswith("test_")]
    listed = _most_recent(records)
    full = _loaded(found, listed)
    original = cells.by_id
    rows = [{"anchor": node_id(rec.run_id), "run": cells.run_link(rec), "refit_of": cells.parent_link(rec.refit_of),
             "epochs_run": rec.epochs_run, "train_images": _train_images(full.get(rec.run_id)),
             "figures": [cells.column_figure(rec, c) for c in test_columns],
             "original": [cells.column_figure(original[rec.refit_of], c) if rec.refit_of in original
                          else _Figure("") for c in test_columns]}
            for rec in listed]
    return _Section(rows=rows, total=len(records), figure_columns=test_columns)


def _list_unranked(found: RecordSet, ranked: Sequence[RunRecord], columns: list[str], cells: _Cells) -> _Section:
    """The section of completed runs that do not rank (`unranked_runs`): the `MAX_LISTED` most recent; those
    whose ranking figure is not a finite number are listed with that reason among the runs that did not
    complete instead (`_list_failed`)."""
    records = [rec for rec in unranked_runs(found.records, ranked) if cells.ranking.not_finite(rec) is None]
    return _Section(total=len(records), figure_columns=columns[1:],
                    rows=[{"anchor": node_id(rec.run_id), "run": cells.run_link(rec), "kind": rec.kind,
                           "figures": [cells.column_figure(rec, c) for c in columns[1:]]}
                          for rec in _most_recent(records)])


def _test_top_two(shown_groups: Sequence[Group], full: dict[str, RunRecord], ranking: Ranking,
                  logs_dir: Path) -> Any:
    """`runner.reports.stats.top_two` of the board's first two rows (each row's runs, its best first, read in
    full where it could be), or `None` with fewer than two rows."""
    if len(shown_groups) < 2:
        return None
    return top_two(*([full.get(g.best.run_id, g.best), *(r for r in g.runs if r is not g.best)]
                     for g in shown_groups[:2]), ranking.metric, logs_dir)


def _draw_figures(ranked: Sequence[RunRecord], ranking: Ranking, best_full: Optional[RunRecord],
                  confusion_png: Optional[bytes],
                  plot_png: Optional[bytes | Callable[[], Optional[bytes]]]) -> dict[str, Any]:
    """The page's figures: the metric plot (`plot_png`, its result, else drawn here) and the best run's confusion
    matrix (`confusion_png`, else `confusion_matrix_table` of `best_full`, the best run read in full)."""
    plot = plot_png() if callable(plot_png) else plot_png
    plot = plot if plot is not None else metric_plot_png(ranked, ranking)
    return {"metric_plot": _data_uri(plot) if plot else None,
            "confusion": _data_uri(confusion_png) if confusion_png and ranked else None,
            "confusion_table": confusion_matrix_table(best_full) if best_full and not confusion_png else None}


CSV_COLUMNS = ("rank", "run_id", "name", "status", "kind", "ranked_by", "ranked_split",
               *(f"val_{m}" for m in RANKING_METRICS), *(f"test_{m}" for m in RANKING_METRICS),
               "epochs_run", "best_epoch", "best_phase", "train_s", "eval_s", "total_s",
               "parent_run_id", "refit_of", "started_at", "finished_at",
               "group_hash", "group_rank", "group_n", "group_mean", "group_std", "group_min", "group_max",
               "unranked_reason")
"""The columns of `leaderboard.csv` before the `param.<name>` columns. `refit_of`: the run a refit trained
again (`refit_runs`), empty for any other run. `group_*`: the run's configuration
(`runner.records.groups`): its rank by mean, its number of repeats, and the mean, sample standard deviation
(empty for one run), minimum and maximum of their ranking figures. `unranked_reason`: why a run has no
`rank` (`unranked_reason`), empty for a ranked run. A figure that is not a finite number (`NaN`,
`Infinity`) is an empty cell."""


def leaderboard_csv(ranked: Sequence[RunRecord], ranking: Ranking, unranked: Sequence[RunRecord] = (), *,
                    groups: Optional[Sequence[Group]] = None, refits: Sequence[RunRecord] = ()) -> str:
    """`leaderboard.csv`: every completed run, ranked, with its validation and test figures and all parameters.

    The runs are listed by configuration, as the page's rows: configurations
    by the mean of their repeats, best first, and within one its runs best
    first; each run's `group_*` columns give its configuration's rank and
    figures (the same on every run of the group, so one row per
    configuration is `drop_duplicates("group_rank")`). Without repeats this
    is the order of `ranked`.

    Args:
        ranked: the ranked runs, best first (`rank` 1..n).
        ranking: what they were ranked by (`ranked_by` is its column,
            `ranked_split` the split each figure came from: `val`, `test`
            or `test (schema 1)`).
        unranked: `unranked_runs(records, ranked)`, listed after the ranked
            ones with an empty `rank` (and `refit_of`). Defaults to none.
        groups: `group_ranked(ranked, ranking)`, when the caller has it (each
            group's statistics are computed once, there). Defaults to `None`: grouped here.
        refits: `refit_runs(records)`, listed last with an empty `rank` and
            their `refit_of`. Defaults to none.

    Returns:
        The CSV text: `CSV_COLUMNS`, then `param.<name>` for every parameter
        of any run (strings as they are, other values as JSON); empty cells
        for missing values.
    """
    groups = group_ranked(ranked, ranking) if groups is None else groups
    columns_of = {group.key: _group_columns(position, group) for position, group in enumerate(groups, start=1)}
    ranked = [rec for group in groups for rec in group.runs]
    group_columns = [columns_of[group.key] for group in groups for _ in group.runs]
    rows = [*ranked, *unranked, *refits]
    ranked_ids = {rec.run_id for rec in ranked}
    params = list(dict.fromkeys(chain.from_iterable(rec.params for rec in rows)))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([*CSV_COLUMNS, *(f"param.{name}" for name in params)])
    # each row's fixed columns through the csv writer (into `line`), then its parameter cells, each quoted once
    # per distinct value (`_ParamCells`) and joined as they are
    line = io.StringIO()
    writer = csv.writer(line, lineterminator="\n")
    blank = [None] * len(RANKING_METRICS)
    cells = _ParamCells()
    missing = [_MISSING] * len(params)
    for position, rec in enumerate(rows, start=1):
        is_ranked = position <= len(ranked)
        val = [finite_figure(getattr(rec.val_metrics, m)) for m in RANKING_METRICS] if rec.val_metrics else blank
        test = [finite_figure(getattr(rec.metrics, m)) for m in RANKING_METRICS] if rec.metrics else blank
        line.seek(0)
        line.truncate()
        writer.writerow([
            position if is_ranked else None, rec.run_id, rec.name, rec.status, rec.kind,
            ranking.column, ranking.split_of(rec) if is_ranked else None, *val, *test,
            rec.epochs_run, rec.best_epoch, rec.best_phase,
            rec.timings.train_s, rec.timings.eval_s, rec.timings.total_s,
            rec.parent_run_id, rec.refit_of, rec.started_at, rec.finished_at, rec.group_hash,
            *(group_columns[position - 1] if is_ranked else [None] * 6),
            None if is_ranked else unranked_reason(rec, ranking, ranked_ids)])
        if params:  # the fixed columns, without their line end, then the parameters' cells
            out.write(line.getvalue()[:-1])
            out.write(",")
            out.write(cells.join(map(rec.params.get, params, missing)))  # C-level look-ups, in column order
            out.write("\n")
        else:
            out.write(line.getvalue())
    return out.getvalue()


class _ParamCells(dict):
    """`id(value)` -> the csv cell of `_param_value(value)` (quoted as `csv.writer` quotes it), for the
    parameter values of one table's rows.

    Records read through the index share one object per distinct value
    (`runner.records.index`), so a table of 100,000 runs has a few thousand
    distinct objects: each is encoded and quoted once, and each cell is a
    dictionary look-up by `id` (the rows keep every value alive while the
    table is written, so no `id` is reused meanwhile).
    """

    def __init__(self) -> None:
        super().__init__({id(_MISSING): ""})
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\n")  # the table's: it decides what is quoted

    def cell(self, value: Any) -> str:
        """`value`'s cell: `_param_value(value)`, quoted where `csv.writer` would quote it in a row."""
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.writerow([_param_value(value), ""])  # a second field: a lone "" would be quoted
        return self._buffer.getvalue()[:-2]  # without the second field's "," and the line end

    def join(self, values: Iterable[Any]) -> str:
        """The cells of `values`, comma-separated (an empty cell for `_MISSING`)."""
        values = list(values)
        try:
            return ",".join(map(self.__getitem__, map(id, values)))
        except KeyError:
            for value in values:
                if id(value) not in self:
                    self[id(value)] = self.cell(value)
            return ",".join(map(self.__getitem__, map(id, values)))


_MISSING = object()
"""A parameter a run does not have (an empty csv cell; a `None` value is `null`)."""


def _group_columns(position: int, group: Group) -> list:
    """`group_rank`, `group_n`, `group_mean`, `group_std`, `group_min`, `group_max` of a csv row."""
    return [position, group.n, group.mean, group.std, group.min, group.max]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while records are read and the pages built.

    Reading 10,000 records makes millions of objects that all stay alive;
    each automatic collection walks all of them again, which cost about a
    third of the time (measured with `bench/leaderboard_bench.py`). Nothing
    here makes much cyclic garbage (the figures' is collected afterwards).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def write_leaderboard(logs_dir: str | Path, out_path: str | Path, metric: str = DEFAULT_METRIC,
                      top_n: int = TOP_N) -> Leaderboard:
    """Read every record in `logs_dir` once; write the leaderboard html, its csv and the lineage page.

    The records are read as summaries through the index
    (`runner.records.index.read_summaries`, which creates or updates
    `<logs_dir>/.records-index.sqlite`); the runs the page lists and the best
    run are read in full. The html (`render_leaderboard`, with the best run's
    `confusion_matrix_png`) goes to `out_path`, the csv (`leaderboard_csv`:
    every completed run: ranked, then unranked (`unranked_runs`), then refits) beside it with the suffix `.csv`, and the
    lineage tree of warm starts to `lineage.html` in the same folder; each
    written atomically (`runner.records.write_text_atomic`).

    Args:
        logs_dir: folder of the JSON records.
        out_path: path of the html page.
        metric: ranking metric, a `runner.records.query.METRIC_NAMES` name
            (`weighted_recall`: validation split; `test_weighted_recall`: test
            split). Defaults to `models.names.DEFAULT_METRIC`.
        top_n: configurations (rows) shown in the html. Defaults to `10`.

    Returns:
        A `Leaderboard` (the ranking, the ranked runs as `RunSummary`s, their groups, the files written).

    Raises:
        ConfigError: unknown `metric` (nothing is read or written).
        FatalError: a file cannot be written (disk full, read-only folder);
            the message names the file and the reason, and the previous
            version of that file is left intact.
    """
    ranking = parse_metric(metric)
    logs_dir, out_path = Path(logs_dir).resolve(), Path(out_path).resolve()
    with metric_plot.PlotProcess() as plotter, _gc_paused():  # the child imports matplotlib meanwhile
        found = read_summaries(logs_dir)
        ranked = rank(found.records, ranking)
        groups = group_ranked(ranked, ranking)  # each group's statistics, once
        if ranked:
            plotter.submit(metric_plot_data(ranked, ranking, groups))  # drawn on the other core from here on
        unranked = unranked_runs(found.records, ranked)
        best = _loaded(found, ranked[:1]).get(ranked[0].run_id) if ranked else None
        confusion = confusion_matrix_png(best, logs_dir) if best is not None else None
        board = Leaderboard(ranking, ranked, out_path, out_path.with_suffix(".csv"),
                            out_path.parent / LINEAGE_FILE, unranked, groups)
        table = leaderboard_csv(ranked, ranking, unranked, groups=groups, refits=refit_runs(found.records))
        lineage = render_lineage(found.records, ranking, logs_dir, out_path.parent, out_path.name)
        page = render_leaderboard(found, ranking, ranked, top_n, out_path.parent, confusion, plotter.result,
                                  groups=groups, csv_name=board.csv_path.name)
    write_page(board.page_path, page)
    write_page(board.csv_path, table)
    write_page(board.lineage_path, lineage)
    return board
