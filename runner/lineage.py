"""Warm starts and lineage: which run a run started from, and the tree of runs.

A run with `warm_start` set starts from the trained weights of an earlier run
(its best weights, or the checkpoint of one epoch) instead of ImageNet or
random weights. `resolve_warm_start` finds those weights and refuses a parent
whose architecture or classes differ; the record keeps `parent_run_id`, the
checkpoint and the sha256 of the weights loaded. `lineage_text` draws the
records as a tree: roots (ImageNet or scratch) and their warm-started children.
"""

from __future__ import annotations

import html
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from runner.errors import ConfigError
from runner.records import COMPLETED, RUN, RunLoadError, RunRecord, find_record, read_record, sha256_file

ARCHITECTURE_PARAMS = ("base", "base_kwargs", "head", "dense_units", "image_size")
"""Parameters that must match between a run and the run it warm-starts from."""

MODEL_FILE = "model.keras"
CHECKPOINT_FILE = "checkpoints/epoch_{epoch}.weights.h5"  # as models.train writes them


@dataclass(frozen=True)
class WarmStart:
    """The weights a run starts from.

    Attributes:
        parent_run_id: the run they come from.
        checkpoint: `"best"` (the parent's `model.keras`) or an epoch (1-based).
        weights_path: absolute path of the weights file.
        weights_sha256: sha256 hex of that file.
    """

    parent_run_id: str
    checkpoint: Any
    weights_path: str
    weights_sha256: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields."""
        return asdict(self)


def _same_architecture(params: Mapping[str, Any]):
    return lambda rec: all(rec.params.get(k) == params.get(k) for k in ARCHITECTURE_PARAMS)


def resolve_parent_id(params: Mapping[str, Any], logs_dir: str | Path) -> str:
    """The run id that `params["warm_start"]` names, now.

    Args:
        params: the run's parameters; `warm_start` is a run id, a unique
            run-id prefix, or `"best"`: the best completed notebook run by
            weighted recall among those with the same `ARCHITECTURE_PARAMS`
            (so its weights fit), ensembles excluded.
        logs_dir: folder of the records.

    Returns:
        The parent's run id.

    Raises:
        RunLoadError: no run, or more than one, matches.
    """
    return find_record(str(params["warm_start"]), logs_dir, kinds=(RUN,), accept=_same_architecture(params)).stem


def resolve_warm_start(params: Mapping[str, Any], class_names: Optional[Sequence[str]],
                       logs_dir: str | Path) -> Optional[WarmStart]:
    """Find and check the weights a run warm-starts from.

    Args:
        params: the run's parameters (`warm_start`, `warm_start_checkpoint`,
            and the `ARCHITECTURE_PARAMS`), e.g. `spec.model_dump()`;
            `warm_start` as for `resolve_parent_id`.
        class_names: the run's classes, compared with the parent's; `None`
            skips that check. Defaults to nothing: required.
        logs_dir: folder of the records.

    Returns:
        A `WarmStart`, or `None` when `params["warm_start"]` is `None`.

    Raises:
        ConfigError: the parent is unknown, did not complete, has other
            architecture parameters or classes, or lacks the checkpoint.
    """
    ref = params.get("warm_start")
    if ref is None:
        return None
    try:
        record_path = find_record(str(ref), logs_dir, kinds=(RUN,), accept=_same_architecture(params))
        parent = read_record(record_path)
    except (RunLoadError, OSError, ValueError) as exc:
        raise ConfigError(f"warm_start: got {ref!r}: {exc}") from exc
    where = f"warm_start: run {parent.run_id}"
    if parent.status != COMPLETED:
        raise ConfigError(f"{where} has status {parent.status!r}; only completed runs can be warm-started from")
    for name in ARCHITECTURE_PARAMS:
        if parent.params.get(name) != params.get(name):
            raise ConfigError(f"{where} has {name}={parent.params.get(name)!r}, this run has "
                              f"{name}={params.get(name)!r}; a warm start needs the same "
                              f"{', '.join(ARCHITECTURE_PARAMS)}")
    if class_names is not None and list(parent.data.get("class_names", [])) != list(class_names):
        raise ConfigError(f"{where} has classes {parent.data.get('class_names')}, this run has "
                          f"{list(class_names)}")
    checkpoint = params.get("warm_start_checkpoint", "best")
    run_dir = (record_path.parent / (parent.paths.get("model") or parent.paths["notebook"])).resolve().parent
    weights = run_dir / (MODEL_FILE if checkpoint == "best" else CHECKPOINT_FILE.format(epoch=checkpoint))
    if not weights.is_file():
        kept = sorted(p.name for p in (run_dir / "checkpoints").glob("*.weights.h5"))
        raise ConfigError(f"{where}: checkpoint {checkpoint!r}: {weights} does not exist "
                          f"(kept: {', '.join(kept) or 'none'})")
    return WarmStart(parent.run_id, checkpoint, str(weights), sha256_file(weights))


def _label(record: RunRecord, metric: str) -> str:
    p = record.params
    if record.parent_run_id:
        text = f"warm start ckpt={record.warm_start.get('checkpoint', 'best')}"
        if p.get("fine_tune_layers"):
            text += f" ft={p['fine_tune_layers']} lr={p.get('fine_tune_learning_rate')}"
    else:
        text = f"{p.get('base', record.kind)} {p.get('head', '')}".strip()
    value = record.metrics.get(metric)
    score = f"{value:.4f}" if isinstance(value, (int, float)) else record.status
    return f"{text}  {score}"


def lineage_text(records: Sequence[RunRecord], metric: str = "weighted_recall",
                 link=None, escape=str) -> str:
    """Draw runs as a tree: roots first (run-id order), warm-started children under their parent.

    Args:
        records: notebook-run records (ensembles are left out).
        metric: the metric shown at each node. Defaults to `"weighted_recall"`.
        link: optional function `record -> str` giving each node's id text
            (e.g. an html link). Defaults to the plain run id.
        escape: applied to each node's label (e.g. `html.escape`). Defaults
            to `str` (unchanged).

    Returns:
        Lines like `20261121-1200-a1b2  vgg16 gap  0.8100` with `└── ` / `├── `
        branches for children; a child whose parent is not among `records`
        is drawn as a root.
    """
    runs = [r for r in records if r.kind == RUN]
    ids = {r.run_id for r in runs}
    children: dict[Optional[str], list[RunRecord]] = {}
    for rec in sorted(runs, key=lambda r: r.run_id):
        parent = rec.parent_run_id if rec.parent_run_id in ids else None
        children.setdefault(parent, []).append(rec)
    link = link or (lambda rec: rec.run_id)
    lines: list[str] = []

    def walk(rec: RunRecord, prefix: str, branch: str) -> None:
        lines.append(f"{prefix}{branch}{link(rec)}  {escape(_label(rec, metric))}")
        kids = children.get(rec.run_id, [])
        deeper = prefix + ("" if not branch else ("    " if branch == "└── " else "│   "))
        for i, kid in enumerate(kids):
            walk(kid, deeper, "└── " if i == len(kids) - 1 else "├── ")

    for root in children.get(None, []):
        walk(root, "", "")
    return "\n".join(lines)


def node_id(run_id: str) -> str:
    """The html id of a run's node in `lineage.html` (the leaderboard gives its row the same id).

    Args:
        run_id: the run id.

    Returns:
        `"run-<run_id>"`, unescaped (escape it for an attribute, quote it for a URL fragment).
    """
    return f"run-{run_id}"


def render_lineage(records: Sequence[RunRecord], metric: str, logs_dir: Path, page_dir: Path,
                   leaderboard_name: str = "leaderboard.html") -> str:
    """`lineage.html`: the lineage tree with each run id linking to its saved notebook html.

    Each node carries the html id `node_id(run_id)`, so `lineage.html#run-<run_id>`
    shows (and highlights) that run's place in the tree.

    Args:
        records: run records.
        metric: the metric shown at each node.
        logs_dir: folder of the records (their paths are relative to it).
        page_dir: folder of the page (links are relative to it).
        leaderboard_name: file name of the leaderboard beside it, linked.
            Defaults to `"leaderboard.html"`.

    Returns:
        A complete, self-contained html document; every string escaped.
    """
    def link(rec: RunRecord) -> str:
        rel, anchor = rec.paths.get("html"), html.escape(node_id(rec.run_id), quote=True)
        if not rel:
            return f'<span id="{anchor}">{html.escape(rec.run_id)}</span>'
        href = Path(os.path.relpath((logs_dir / rel).resolve(), page_dir)).as_posix()
        return f'<a href="{html.escape(href, quote=True)}" id="{anchor}">{html.escape(rec.run_id)}</a>'

    body = lineage_text(records, metric, link=link, escape=html.escape) or "No runs yet."
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Lineage</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:2em}pre{font-size:0.95em}:target{background:#ffe98a}</style></head>\n"
            f"<body><h1>Lineage</h1><p>Roots start from ImageNet or random weights; children are "
            f"warm-started from their parent. Metric: <b>{html.escape(metric)}</b>. "
            f"<a href=\"{html.escape(leaderboard_name, quote=True)}\">Leaderboard</a></p>\n<pre>{body}</pre></body></html>\n")

