"""The Optuna study of a search: its file, sampler and pruner (Optuna is the oracle and nothing else)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence



from runner.search.space import SearchSpec, Dimension

STUDY_SUFFIX = ".optuna.journal"
MAX_DUPLICATE_PROPOSALS = 50
"""Proposals in a row that repeat a finished run before the search is taken as exhausted."""
DUPLICATE_ATTR = "nbsweep_duplicate_of"
"""User attribute of a trial that repeated a finished run (told its result; not counted in `n_runs`)."""
MAX_OVER_BUDGET_PROPOSALS = 20
"""Proposals in a row predicted not to fit in the budget's remaining time before no more runs start."""
OVER_BUDGET_ATTR = "nbsweep_over_budget_s"
"""User attribute of a trial failed unrun because its predicted seconds exceeded what was left of the budget
(or `max_run_share` of it)."""


def study_path(logs_dir: Path, grid_path: Path) -> Path:
    """`<logs_dir>/<grid file stem>.optuna.journal`, the study's file."""
    return Path(logs_dir) / f"{Path(grid_path).stem}{STUDY_SUFFIX}"


def _sampler(search: SearchSpec, dims: Sequence[Dimension]):
    import optuna

    if search.sampler == "grid":
        return optuna.samplers.GridSampler({d.name: d.grid_values() for d in dims}, seed=search.seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    return optuna.samplers.TPESampler(seed=search.seed, constant_liar=True, multivariate=True)


def pruner_config(search: SearchSpec, max_epochs: int) -> Optional[dict[str, Any]]:
    """The pruner as `{"class": name in optuna.pruners, "kwargs": {...}}`, or `None` for `pruner: none`.

    Built the same way in the sweep (`open_study`) and in each run's kernel
    (`models.pruning`), because Optuna keeps the pruner with the study
    object, not in its storage.

    Args:
        search: the `search:` block (`pruner`, `min_epochs`).
        max_epochs: the most epochs a run trains (Hyperband's `max_resource`).

    Returns:
        `median`: `MedianPruner(n_startup_trials=2, n_warmup_steps=min_epochs - 1)`;
        `successive_halving`: `SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=3)`;
        `hyperband`: `HyperbandPruner(min_resource=min_epochs, max_resource=max_epochs, reduction_factor=3)`
        (Li et al. 2018, as Optuna implements it); `none`: `None`.
    """
    if search.pruner == "median":
        return {"class": "MedianPruner", "kwargs": {"n_startup_trials": 2, "n_warmup_steps": search.min_epochs - 1}}
    if search.pruner == "successive_halving":
        return {"class": "SuccessiveHalvingPruner", "kwargs": {"min_resource": search.min_epochs, "reduction_factor": 3}}
    if search.pruner == "hyperband":
        return {"class": "HyperbandPruner", "kwargs": {"min_resource": search.min_epochs, "reduction_factor": 3,
                                                       "max_resource": max(max_epochs, search.min_epochs)}}
    return None


def open_study(search: SearchSpec, dims: Sequence[Dimension], path: Path, name: str, max_epochs: int):
    """Create or continue the study in `path`; trials a killed sweep left running are failed and re-enqueued.

    Args:
        search: the `search:` block.
        dims: the search space.
        path: the journal file (created with its folder).
        name: the study's name (the grid file's stem).
        max_epochs: the most epochs a run trains (Hyperband's `max_resource`).

    Returns:
        The `optuna.Study` (direction: maximize).
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(path)))
    from models.pruning import build_pruner

    try:  # a continued study: seed its sampler past the trials it has, so it does not replay them
        earlier = len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
    except KeyError:
        earlier = 0
    seeded = search.model_copy(update={"seed": search.seed + earlier})
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=_sampler(seeded, dims),
                                pruner=build_pruner(pruner_config(search, max_epochs)))
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
    return study


