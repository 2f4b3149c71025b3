"""Lineage: the tree of runs, roots (ImageNet or scratch) and their warm-started children
(`lineage_text` for a terminal, `render_lineage` for `lineage.html`). Which weights a warm
start loads is decided by `runner.core.warm_start`."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import quote


from models.names import DEFAULT_METRIC
from runner.records.query import Ranking, parse_metric
from runner.records import LEADERBOARD_PATH, RUN, RunRecord
from runner.reports.links import fragment
from runner.reports.templates import render

def _as_ranking(metric: str | Ranking) -> Ranking:
    return metric if isinstance(metric, Ranking) else parse_metric(metric)


def _label(record: RunRecord, ranking: Ranking) -> str:
    p = record.params
    if record.parent_run_id:
        text = f"warm start ckpt={record.warm_start.checkpoint if record.warm_start else 'best'}"
        if p.get("fine_tune_layers"):
            text += f" ft={p['fine_tune_layers']} lr={p.get('fine_tune_learning_rate')}"
    else:
        text = f"{p.get('base', record.kind)} {p.get('head', '')}".strip()
    if record.name:
        text = f"[{record.name}] {text}"
    value = ranking.value(record)
    score = record.status if value is None else f"{value:.4f}"
    if value is not None and ranking.split_of(record) != ranking.split:
        score += " (schema 1: test split)"
    return f"{text}  {score}"


def lineage_nodes(records: Sequence[RunRecord]) -> list[tuple[str, RunRecord]]:
    """The runs in tree order, each with the branch drawn before it.

    Roots first (run-id order), each followed by its warm-started children
    (run-id order), depth first; a child whose parent is not among `records`
    is a root. Iterative, so however long a chain of warm starts is.

    Args:
        records: run records (ensembles are left out).

    Returns:
        `(prefix, record)` pairs; `prefix` is `""` for a root, else the
        indentation and `"└── "` or `"├── "`.
    """
    runs = sorted((r for r in records if r.kind == RUN), key=lambda r: r.run_id)
    ids = {r.run_id for r in runs}
    children: dict[Optional[str], list[RunRecord]] = {}
    for rec in runs:
        children.setdefault(rec.parent_run_id if rec.parent_run_id in ids else None, []).append(rec)
    nodes: list[tuple[str, RunRecord]] = []
    # (record, indentation of its children, its own branch); reversed so that pops come in order
    stack = [(root, "", "") for root in reversed(children.get(None, []))]
    seen: set[str] = set()
    while stack:
        rec, prefix, branch = stack.pop()
        if rec.run_id in seen:  # a cycle of parents in hand-edited records: draw each run once
            continue
        seen.add(rec.run_id)
        nodes.append((prefix + branch, rec))
        deeper = prefix + ("" if not branch else ("    " if branch == "└── " else "│   "))
        kids = children.get(rec.run_id, [])
        stack.extend((kid, deeper, "└── " if i == len(kids) - 1 else "├── ") for i, kid in reversed(list(enumerate(kids))))
    return nodes


def lineage_text(records: Sequence[RunRecord], metric: str | Ranking = DEFAULT_METRIC) -> str:
    """Draw runs as a tree: roots first (run-id order), warm-started children under their parent.

    Args:
        records: notebook-run records (ensembles are left out).
        metric: the figure shown at each node: a `runner.records.query.METRIC_NAMES`
            name or a `Ranking` (a schema-1 record shows its test figure,
            marked). Defaults to `models.names.DEFAULT_METRIC` (validation split).

    Returns:
        Lines like `20261121-1200-a1b2  vgg16 gap  0.8100` with `└── ` / `├── `
        branches for children (the run's status where it has no figure); a
        child whose parent is not among `records` is drawn as a root. A run
        executed again from another's record (`nbsweep rerun`) ends with
        `(rerun of <run id>)`; it sits where its own weights came from.

    Raises:
        ConfigError: unknown `metric`.
    """
    ranking = _as_ranking(metric)
    return "\n".join(f"{prefix}{rec.run_id}  {_label(rec, ranking)}"
                     + (f"  (rerun of {rec.rerun_of})" if rec.rerun_of else "")
                     for prefix, rec in lineage_nodes(records))


def node_id(run_id: str) -> str:
    """The html id of a run's node in `lineage.html` (the leaderboard gives its row the same id).

    Args:
        run_id: the run id.

    Returns:
        `"run-<run_id>"`, unescaped (escape it for an attribute, quote it for a URL fragment).
    """
    return f"run-{run_id}"


def render_lineage(records: Sequence[RunRecord], metric: str | Ranking, logs_dir: Path, page_dir: Path,
                   leaderboard_name: str = LEADERBOARD_PATH.name) -> str:
    """`lineage.html`: the lineage tree with each run id linking to its saved notebook html.

    Each node carries the html id `node_id(run_id)`, so `lineage.html#run-<run_id>`
    shows (and highlights) that run's place in the tree. Rendered from
    `runner/reports/templates/lineage.html` (every value escaped).

    Args:
        records: run records.
        metric: the figure shown at each node (a name or a `Ranking`).
        logs_dir: folder of the records (their paths are relative to it).
        page_dir: folder of the page (links are relative to it).
        leaderboard_name: file name of the leaderboard beside it, linked.
            Defaults to `runner.records.LEADERBOARD_PATH`'s name.

    Returns:
        A complete, self-contained html document.

    Raises:
        ConfigError: unknown `metric`.
    """
    ranking = _as_ranking(metric)
    # record paths are relative to logs_dir: one relpath for all of them, not a resolve() per run
    logs_from_page = Path(os.path.relpath(Path(logs_dir).resolve(), Path(page_dir).resolve())).as_posix()
    nodes = []
    for prefix, rec in lineage_nodes(records):
        rel = rec.paths.get("html")
        href = quote(posixpath.normpath(posixpath.join(logs_from_page, rel)), safe="/~") if rel else None
        nodes.append({"prefix": prefix, "run_id": rec.run_id, "anchor": node_id(rec.run_id), "href": href,
                      "label": _label(rec, ranking), "rerun_of": rec.rerun_of,
                      "rerun_href": fragment(node_id(rec.rerun_of)) if rec.rerun_of else None})
    return render("lineage.html", ranking=ranking, nodes=nodes, leaderboard_href=quote(leaderboard_name),
                  split_words="validation split" if ranking.split == "val" else "test split")
