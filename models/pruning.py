"""Pruning inside the notebook's kernel: report each epoch's validation value, then ask whether to stop.

The sweep (`runner.search`) keeps an Optuna study in a journal file and hands
each run its trial as the notebook parameter `pruning`. In the kernel, one
Keras callback reports the validation objective after every epoch to that
trial and asks the study's pruner whether to stop (Optuna's own
`trial.report` / `trial.should_prune`, as `optuna.integration`'s Keras
callbacks do). When told to stop, training ends at that epoch; the run is
evaluated on the best weights so far and recorded `pruned`. This module
knows nothing of sweeps beyond "report, then ask whether to stop".

The per-epoch value is the sweep's ranking metric on the validation split,
named by the `pruning` parameter's `metric` (`runner.search.study.pruning_metric`
checks it when the grid is loaded), read from Keras's epoch logs under
`models.names.EPOCH_LOG_KEYS`: for single-label classification the weighted
recall equals the accuracy (sum over classes of `support_c / n * recall_c =
TP_c / n`), so `val_weighted_recall` and `val_accuracy` are both Keras's
`val_accuracy`, computed at no extra cost.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import keras

from .names import EPOCH_LOG_KEYS

PRUNED_ON = tuple(name for name in EPOCH_LOG_KEYS if name != "val_loss")
"""The `metric` values a `pruning` parameter may name: the per-epoch figures a study maximizes."""


def objective_key(metric: str) -> str:
    """The Keras epoch-log key holding a pruning `metric`: `"val_weighted_recall"` -> `"val_accuracy"`.

    Raises:
        ValueError: `metric` is not one of `PRUNED_ON`.
    """
    if metric not in PRUNED_ON:
        raise ValueError(f"pruning: metric: got {metric!r}, expected one of {', '.join(PRUNED_ON)} "
                         f"(a validation figure known after every epoch)")
    return EPOCH_LOG_KEYS[metric]


def build_pruner(config: Optional[Mapping[str, Any]]):
    """An Optuna pruner from `{"class": name in optuna.pruners, "kwargs": {...}}`; `None`: `NopPruner`.

    Optuna keeps the pruner with the study object, not in its storage, so
    the sweep and each kernel build the same one from this description.

    Raises:
        AttributeError: `class` is not in `optuna.pruners`.
    """
    import optuna

    if not config:
        return optuna.pruners.NopPruner()
    return getattr(optuna.pruners, config["class"])(**config.get("kwargs", {}))


class TrialReporter:
    """The kernel's end of a trial: report a value per epoch, ask whether to stop.

    Args:
        config: the notebook's `pruning` parameter: `storage` (the study's
            journal file, absolute path), `study_name`, `trial_number` (the
            trial's number in the study), `min_epochs` (no stop before this 1-based epoch), `pruner`
            (see `build_pruner`) and `metric` (what is reported, one of
            `PRUNED_ON`).

    Attributes:
        metric: the reported figure, e.g. `"val_weighted_recall"`.

    Raises:
        KeyError: `config` lacks one of those keys.
        ValueError: `metric` is not one of `PRUNED_ON`.
    """

    def __init__(self, config: Mapping[str, Any]):
        self.metric = config["metric"]
        objective_key(self.metric)  # refused before the study is opened
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(config["storage"])))
        study = optuna.load_study(study_name=config["study_name"], storage=storage,
                                  pruner=build_pruner(config.get("pruner")))
        trial_id = storage.get_trial_id_from_study_id_trial_number(  # the storage's public API
            storage.get_study_id_from_name(config["study_name"]), int(config["trial_number"]))
        self.trial = optuna.trial.Trial(study, trial_id)
        self.min_epochs = int(config.get("min_epochs", 1))

    def should_stop(self, value: float, epoch: int) -> bool:
        """Reports `value` at `epoch` (1-based) and asks the pruner.

        Returns:
            True when the pruner says stop and `epoch >= min_epochs`.
        """
        self.trial.report(float(value), step=int(epoch))
        return epoch >= self.min_epochs and self.trial.should_prune()


class PruningCallback(keras.callbacks.Callback):
    """Stops training when the trial's pruner says so (one instance spans both phases).

    Args:
        reporter: a `TrialReporter` (anything with a `metric`, one of `PRUNED_ON`, and
            `should_stop(value, epoch) -> bool`).

    Attributes:
        key: the epoch-log key reported (`objective_key(reporter.metric)`).
        pruned_epoch: the 1-based epoch after which training was stopped, or `None`.

    Raises:
        ValueError: `reporter.metric` is not one of `PRUNED_ON`.
    """

    def __init__(self, reporter):
        super().__init__()
        self.reporter = reporter
        self.key = objective_key(reporter.metric)
        self.pruned_epoch: Optional[int] = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.key)
        if value is None or self.pruned_epoch is not None:
            return
        if self.reporter.should_stop(value, epoch + 1):  # Keras epochs are 0-based, across phases here
            self.pruned_epoch = epoch + 1
            self.model.stop_training = True


def pruning_callback(config: Optional[Mapping[str, Any]]) -> Optional[PruningCallback]:
    """The callback for the notebook's `pruning` parameter, or `None` when it is `None` (no pruner)."""
    return PruningCallback(TrialReporter(config)) if config else None
