"""Warm starts: which earlier run's weights a run starts from.

A run with `warm_start` set starts from the trained weights of an earlier run
(its best weights, or the checkpoint of one epoch) instead of ImageNet or
random weights. `resolve_warm_start` finds those weights and refuses a parent
whose architecture or classes differ; the record keeps `parent_run_id`, the
checkpoint and the sha256 of the weights loaded.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence

from models.names import (CHECKPOINT_DIR, MODEL_FILE, TRAINED_WEIGHTS_FILE, checkpoint_path, existing_checkpoint,
                          run_weights_path)
from runner.errors import ConfigError
from runner.records import COMPLETED, RUN, RunLoadError, RunRecord, WarmStartSection, sha256_file
from runner.records.query import Ranking, RecordSet, find, read_all

ARCHITECTURE_PARAMS = ("base", "base_kwargs", "head", "dense_units", "image_size")
"""Parameters that must match between a run and the run it warm-starts from (compared by `architecture`)."""


def architecture(params: Mapping[str, Any]) -> dict[str, Any]:
    """The `ARCHITECTURE_PARAMS` of a run's parameters (`base` in its canonical spelling: validation and
    `runner.records.RunRecord` give it so)."""
    return {name: params.get(name) for name in ARCHITECTURE_PARAMS}


@dataclass(frozen=True)
class WarmStart:
    """The weights a run starts from, resolved once by the runner when the run starts.

    Attributes:
        parent_run_id: the run they come from.
        checkpoint: `"best"` (the parent's kept weights: `trained_weights.h5`
            or `model.keras`) or an epoch (1-based; its kept checkpoint).
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
    wanted = architecture(params)

    def accept(rec: RunRecord) -> bool:
        if architecture(rec.params) != wanted:
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
            unique run-id prefix, or `"best"`: among the completed notebook
            runs with the same `ARCHITECTURE_PARAMS` (so their weights fit)
            and `best_of`, the configuration with the best mean `ranking` over
            its repeats (`runner.records.groups`), and of it the run best on
            the validation split (`"roots"`: runs not warm-started
            themselves; a prefix: runs whose name starts with it); pruned runs
            and ensembles never), and `warm_start_checkpoint`.
        found: the records (`runner.records.query.read_all`).
        ranking: what `best` ranks by. Defaults to weighted recall on the
            validation split.
        class_names: the run's classes, compared with the parent's; `None`
            leaves that check to the kernel. Defaults to `None`.

    Returns:
        A `WarmStart`, or `None` when `params["warm_start"]` is `None`.

    Raises:
        ConfigError: the parent is unknown, did not complete, has other
            architecture parameters or classes, or lacks the checkpoint (the
            message names the run and the epoch, and lists the epochs kept).
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
    theirs, ours = architecture(parent.params), architecture(params)
    for name in ARCHITECTURE_PARAMS:
        if theirs[name] != ours[name]:
            raise ConfigError(f"{where} has {name}={parent.params.get(name)!r}, this run has "
                              f"{name}={params.get(name)!r}; a warm start needs the same "
                              f"{', '.join(ARCHITECTURE_PARAMS)}")
    parent_classes = list(parent.data.class_names) if parent.data else []
    if class_names is not None and parent_classes != list(class_names):
        raise ConfigError(f"{where} has classes {parent_classes}, this run has {list(class_names)}")
    checkpoint = params.get("warm_start_checkpoint", "best")
    anchor = parent.weights_path(found.logs_dir) or parent.path_of("notebook", found.logs_dir)
    if anchor is None:
        raise ConfigError(f"{where} records no run folder")
    run_dir = anchor.parent
    if checkpoint == "best":
        weights = run_weights_path(run_dir)
        if weights is None:
            raise ConfigError(f"{where}: checkpoint 'best': neither {run_dir / TRAINED_WEIGHTS_FILE} nor "
                              f"{run_dir / MODEL_FILE} exists")
    else:
        weights = existing_checkpoint(run_dir, checkpoint)
        if weights is None:
            kept = sorted((p.name for p in (run_dir / CHECKPOINT_DIR).glob("epoch_*.h5")),
                          key=lambda name: int(name.split("_")[1].split(".")[0]))
            raise ConfigError(f"{where}: checkpoint {checkpoint!r}: {checkpoint_path(run_dir, checkpoint)} does not "
                              f"exist: epoch {checkpoint} of run {parent.run_id} was not kept (kept: "
                              f"{', '.join(kept) or 'none'}; keep_checkpoints / keep_best_checkpoints of the "
                              f"parent decide which epochs are kept, its best weights are checkpoint 'best')")
    return WarmStart(parent.run_id, checkpoint, str(weights), sha256_file(weights), parent_classes)


def warm_start_for(params: Mapping[str, Any], logs_dir: str | os.PathLike, *, ranking: Optional[Ranking] = None
                   ) -> tuple[Optional[WarmStart], Optional[str]]:
    """A run's warm start as it starts, or why it cannot start: what the executor is handed.

    The records are read (`read_all`) only when the run has a `warm_start`, so
    that `best` sees the runs of the same sweep that finished before this one.

    Args:
        params: the run's parameters (`resolve_warm_start`).
        logs_dir: the folder of the records.
        ranking: what `best` ranks by. Defaults to weighted recall on the validation split.

    Returns:
        `(warm_start, None)`, `warm_start` being `None` for a run without one; or
        `(None, reason)` when `resolve_warm_start` refuses the reference (the
        `ConfigError`'s message): the run is then recorded as failed without a kernel.
    """
    if params.get("warm_start") is None:
        return None, None
    try:
        return resolve_warm_start(params, read_all(logs_dir), ranking=ranking), None
    except ConfigError as exc:
        return None, str(exc)
