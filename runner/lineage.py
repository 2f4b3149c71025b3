"""Warm starts and lineage: which run a run started from, and the tree of runs.

A run with `warm_start` set starts from the trained weights of an earlier run
(its best weights, or the checkpoint of one epoch) instead of ImageNet or
random weights. `resolve_warm_start` finds those weights and refuses a parent
whose architecture or classes differ; the record keeps `parent_run_id`, the
checkpoint and the sha256 of the weights loaded. `lineage_text` draws the
records as a tree: roots (ImageNet or scratch) and their warm-started children.
"""

from __future__ import annotations

import os
import posixpath
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import quote

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.errors import ConfigError
from runner.query import Ranking, RecordSet, find, parse_metric
from runner.records import COMPLETED, RUN, RunLoadError, RunRecord, WarmStartSection, sha256_file
from runner.templates import render

ARCHITECTURE_PARAMS = ("base", "base_kwargs", "head", "dense_units", "image_size")
"""Parameters that must match between a run and the run it warm-starts from."""

MODEL_FILE = "model.keras"
CHECKPOINT_FILE = "checkpoints/epoch_{epoch}.weights.h5"  # as models.train writes them


@dataclass(frozen=True)
class WarmStart:
    """The weights a run starts from, resolved once by the runner when the run starts.

    Attributes:
        parent_run_id: the run they come from.
        checkpoint: `"best"` (the parent's `model.keras`) or an epoch (1-based).
        weights_path: absolute path of the weights file.
        weights_sha256: sha256 hex of that file.
        class_names: the parent's classes, which the run's data must have
            (checked in the kernel by `models.build.load_warm_start`).
    """

    parent_run_id: str
    checkpoint: Any
    weights_path: str
    weights_sha256: str
    class_names: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields: the notebook's `resolved_warm_start` parameter."""
        return asdict(self)

    def section(self) -> WarmStartSection:
        """The record's `warm_start` section (absolute `weights_path`)."""
        return WarmStartSection(parent_run_id=self.parent_run_id, checkpoint=self.checkpoint,
                                weights_path=self.weights_path, weights_sha256=self.weights_sha256)


def _candidates(params: Mapping[str, Any]):
    """The filter of the runs `warm_start: best` may choose: same architecture, and `best_of`."""
    best_of = params.get("best_of")

    def accept(rec: RunRecord) -> bool:
        if not all(rec.params.get(k) == params.get(k) for k in ARCHITECTURE_PARAMS):
            return False
        if best_of == "roots":
            return rec.parent_run_id is None
        return best_of is None or (rec.name or "").startswith(best_of)

    return accept


def resolve_warm_start(params: Mapping[str, Any], found: RecordSet, *, ranking: Optional[Ranking] = None,
                       class_names: Optional[Sequence[str]] = None) -> Optional[WarmStart]:
    """The one resolution of a run's `warm_start` reference into the weights it loads.

    Called by the runner when the run starts (so `best` sees the runs of the
    same sweep that finished before it) and by the pre-flight check for
    explicit references. The record keeps the user's reference in `params`
    and the resolved parent in `parent_run_id`.

    Args:
        params: the run's parameters: `warm_start` (a run id, a run name, a
            unique run-id prefix, or `"best"`: the best completed notebook
            run by `ranking` among those with the same `ARCHITECTURE_PARAMS`,
            so its weights fit, and `best_of` (`"roots"`: runs not warm-started
            themselves; a prefix: runs whose name starts with it); pruned runs
            and ensembles never), and `warm_start_checkpoint`.
        found: the records (`runner.query.read_all`).
        ranking: what `best` ranks by. Defaults to weighted recall on the
            validation split.
        class_names: the run's classes, compared with the parent's; `None`
            leaves that check to the kernel. Defaults to `None`.

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
        parent = find(str(ref), found, ranking=ranking, kinds=(RUN,), accept=_candidates(params),
                      what="warm_start")
    except RunLoadError as exc:
        raise ConfigError(f"warm_start: got {ref!r}: {exc}") from exc
    where = f"warm_start: run {parent.run_id}"
    if parent.status != COMPLETED:
        raise ConfigError(f"{where} has status {parent.status!r}; only completed runs can be warm-started from")
    for name in ARCHITECTURE_PARAMS:
        if parent.params.get(name) != params.get(name):
            raise ConfigError(f"{where} has {name}={parent.params.get(name)!r}, this run has "
                              f"{name}={params.get(name)!r}; a warm start needs the same "
                              f"{', '.join(ARCHITECTURE_PARAMS)}")
    parent_classes = list(parent.data.class_names) if parent.data else []
    if class_names is not None and parent_classes != list(class_names):
        raise ConfigError(f"{where} has classes {parent_classes}, this run has {list(class_names)}")
    checkpoint = params.get("warm_start_checkpoint", "best")
    anchor = parent.path_of("model", found.logs_dir) or parent.path_of("notebook", found.logs_dir)
    if anchor is None:
        raise ConfigError(f"{where} records no run folder")
    run_dir = anchor.parent
    weights = run_dir / (MODEL_FILE if checkpoint == "best" else CHECKPOINT_FILE.format(epoch=checkpoint))
    if not weights.is_file():
        kept = sorted(p.name for p in (run_dir / "checkpoints").glob("*.weights.h5"))
        raise ConfigError(f"{where}: checkpoint {checkpoint!r}: {weights} does not exist "
                          f"(kept: {', '.join(kept) or 'none'})")
    return WarmStart(parent.run_id, checkpoint, str(weights), sha256_file(weights), parent_classes)


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


def lineage_text(records: Sequence[RunRecord], metric: str | Ranking = "weighted_recall") -> str:
    """Draw runs as a tree: roots first (run-id order), warm-started children under their parent.

    Args:
        records: notebook-run records (ensembles are left out).
        metric: the figure shown at each node: a `runner.query.METRIC_NAMES`
            name or a `Ranking` (a schema-1 record shows its test figure,
            marked). Defaults to `"weighted_recall"` (validation split).

    Returns:
        Lines like `20261121-1200-a1b2  vgg16 gap  0.8100` with `└── ` / `├── `
        branches for children (the run's status where it has no figure); a
        child whose parent is not among `records` is drawn as a root.

    Raises:
        ConfigError: unknown `metric`.
    """
    ranking = _as_ranking(metric)
    return "\n".join(f"{prefix}{rec.run_id}  {_label(rec, ranking)}" for prefix, rec in lineage_nodes(records))


def node_id(run_id: str) -> str:
    """The html id of a run's node in `lineage.html` (the leaderboard gives its row the same id).

    Args:
        run_id: the run id.

    Returns:
        `"run-<run_id>"`, unescaped (escape it for an attribute, quote it for a URL fragment).
    """
    return f"run-{run_id}"


def render_lineage(records: Sequence[RunRecord], metric: str | Ranking, logs_dir: Path, page_dir: Path,
                   leaderboard_name: str = "leaderboard.html") -> str:
    """`lineage.html`: the lineage tree with each run id linking to its saved notebook html.

    Each node carries the html id `node_id(run_id)`, so `lineage.html#run-<run_id>`
    shows (and highlights) that run's place in the tree. Rendered from
    `runner/templates/lineage.html` (every value escaped).

    Args:
        records: run records.
        metric: the figure shown at each node (a name or a `Ranking`).
        logs_dir: folder of the records (their paths are relative to it).
        page_dir: folder of the page (links are relative to it).
        leaderboard_name: file name of the leaderboard beside it, linked.
            Defaults to `"leaderboard.html"`.

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
                      "label": _label(rec, ranking)})
    return render("lineage.html", ranking=ranking, nodes=nodes, leaderboard_href=quote(leaderboard_name),
                  split_words="validation split" if ranking.split == "val" else "test split")


def main(argv: Optional[list[str]] = None) -> int:
    """`python runner/lineage.py`: the `nbsweep lineage` command (`runner.cli`): write lineage.html from the records.

    Args:
        argv: the arguments after the script's name. Defaults to `sys.argv[1:]`.

    Returns:
        The exit code: 0, or 2 for bad input (an unknown metric).

    Raises:
        SystemExit: a usage error (code 2), after the usage is printed.
    """
    from runner import cli

    return cli.run_command("lineage", argv, prog_name="python runner/lineage.py")


if __name__ == "__main__":
    sys.exit(main())
