"""The refit of a grid with `refit: true`: its best configuration trained again on train + validation.

The refit is chosen from the records (`refit_best`), given the epochs of the
best run's kept weights (`refit_params`), and executed once the sweep's own
runs have ended (`run_refit`, which `runner.core.loop.run_sweep` calls with
its planning and its executor). It is recorded as a run of its own
(`refit_of`), evaluated on the test split only, and never ranked.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

from models.names import FINE_TUNE, HEAD
from runner.grid import GridSpec, RunBuilder, RunSpec
from runner.records.query import RecordSet, parse_metric, rank_groups, read_all
from runner.records import COMPLETED, RUN, RunRecord

REFIT_NAME_SUFFIX = "-refit"
"""A refit of a named run is named `<name>-refit` (so `nbsweep predict <name>-refit` finds it)."""


def refit_params(record: RunRecord) -> dict[str, Any]:
    """The parameters of the refit of `record`: its own, trained on train + validation for its selected epochs.

    The epochs are those its kept weights had trained (`best_epoch`, the last
    epoch for a run that averaged with `swa_epochs`), split as they were: a
    best epoch in the head phase gives `epochs = best_epoch` and no
    fine-tuning (`fine_tune_layers: 0`, `fine_tune_epochs: 0`, `swa_epochs:
    null`); one in the fine-tuning phase gives the head epochs the run ran
    (early stopping included) and `fine_tune_epochs = best_epoch - head
    epochs` (`swa_epochs` at most that many). With nothing left to validate
    on, `train_on_val: true`, `early_stopping_patience: null` and
    `keep_best_checkpoints: null`. A warm start is pinned to the parent and
    checkpoint the run loaded (a `warm_start: best` would be resolved anew),
    and a name gets `REFIT_NAME_SUFFIX`.

    Args:
        record: a completed notebook run.

    Returns:
        Every parameter of the refit (the notebook's parameter names).
    """
    params = dict(record.params)
    head_run = len((record.history.get(HEAD) or {}).get("loss", []))
    best = record.best_epoch or record.epochs_run or 1
    if record.best_phase == FINE_TUNE or best > head_run:
        epochs, fine_tune_epochs = head_run, best - head_run
    else:
        epochs, fine_tune_epochs = best, 0
    params.update(train_on_val=True, early_stopping_patience=None, keep_best_checkpoints=None, epochs=epochs,
                  fine_tune_epochs=fine_tune_epochs)
    if not fine_tune_epochs:
        params.update(fine_tune_layers=0, swa_epochs=None)
    elif params.get("swa_epochs"):
        params["swa_epochs"] = min(params["swa_epochs"], fine_tune_epochs)
    if record.parent_run_id is not None:
        params.update(warm_start=record.parent_run_id, best_of=None,
                      warm_start_checkpoint=record.warm_start.checkpoint if record.warm_start else "best")
    if params.get("name"):
        params["name"] = params["name"][:80 - len(REFIT_NAME_SUFFIX)] + REFIT_NAME_SUFFIX
    return params


def refit_best(spec: GridSpec, found: RecordSet) -> tuple[Optional[RunSpec], str]:
    """The refit run of a grid with `refit: true`: its best configuration again, on train + validation.

    The configuration is the first by the grid's metric on the validation
    split (a `test_` metric ranks by its validation figure here: the refit is
    evaluated on the test split), with repeats the best by mean
    (`runner.records.query.rank_groups`); of it, its best run on the
    validation split gives the parameters and the epochs (`refit_params`).
    Notebook runs only: ensembles and earlier refits never rank.

    Args:
        spec: the grid.
        found: the records of its logs folder.

    Returns:
        `(run, line)`: the refit's `RunSpec` (`refit_of` set) and a line
        saying which run it refits, or `(None, why not)`.
    """
    ranking = parse_metric(parse_metric(spec.metric).metric)  # the validation split's figure
    groups = rank_groups(found.records, ranking, kinds=(RUN,))
    if not groups:
        return None, f"refit: not run: no completed run has {ranking.column}"
    group = groups[0]
    best = group.best
    run, errors = RunBuilder(spec, Path("refit")).build(f"refit of {best.run_id}", refit_params(best))
    if run is None:
        return None, f"refit: not run: the refit of {best.run_id} is not a valid run: {'; '.join(errors)}"
    mean = f" (mean of {group.n} seeds {group.mean:.4f})" if group.n > 1 else ""
    return (replace(run, refit_of=best.run_id),
            f"refit of {best.run_id} ({ranking.column} {ranking.value(best):.4f}{mean}): {run.spec.max_epochs} epoch(s) "
            f"on train + validation, the epochs of its best weights (best_epoch {best.best_epoch})")


def run_refit(spec: GridSpec, skip_reason: Callable[[RunSpec, RecordSet], Optional[str]],
              execute: Callable[[RunSpec], Optional[RunRecord]], write: Callable[[str], None]) -> Optional[RunRecord]:
    """Execute the refit of a grid with `refit: true` (`refit_best`), unless `skip_reason` gives a reason not to.

    Args:
        spec: the grid.
        skip_reason: why not to execute a run, given the records of the logs
            folder, or `None` to execute it (the sweep's planning,
            `runner.core.loop.plan_runs`: a refit already recorded is not run again).
        execute: executes a run as the sweep's runs are executed; its
            record, or `None` when it has none.
        write: prints a line for the user: which run is refit and how (before it
            runs), then its test figure or why it did not run or complete. A
            refit that fails never fails the sweep.

    Returns:
        The refit's record, or `None` when it did not run.

    Raises:
        KeyboardInterrupt: the sweep was stopped (the refit is recorded interrupted).
    """
    found = read_all(spec.logs_dir)
    run, line = refit_best(spec, found)
    write(line)
    if run is None:
        return None
    skip = skip_reason(run, found)
    if skip:
        write(f"refit: not run again: {skip}")
        return None
    record = execute(run)
    if record is None:
        return None
    if record.status != COMPLETED or record.metrics is None:
        why = f": {record.error.ename}: {record.error.evalue[:200]}" if record.error else ""
        write(f"refit {record.run_id}: {record.status}{why}")
    else:
        metric = parse_metric(spec.metric).metric
        write(f"refit {record.run_id}: test_{metric} {getattr(record.metrics, metric):.4f} (trained on "
              f"{_count(record, 'train')} images; not ranked: no validation split)")
    return record


def _count(record: RunRecord, split: str) -> int:
    """The images of `split` a run's record counts (0 without a data section)."""
    return sum((record.data.counts.get(split) or {}).values()) if record.data else 0
