"""Pruning inside the notebook's kernel: report each epoch's validation value, then ask whether to stop.

The sweep (`runner.search`) keeps an Optuna study in a journal file and hands
each run its trial as the notebook parameter `pruning`. In the kernel, one
Keras callback reports the validation objective after every epoch to that
trial and asks the study's pruner whether to stop (Optuna's own
`trial.report` / `trial.should_prune`, as `optuna.integration`'s Keras
callbacks do). When told to stop, training ends at that epoch; the run is
evaluated on the best weights so far and recorded `pruned`. This module
knows nothing of sweeps beyond "report, then ask whether to stop".

The per-epoch objective is Keras's `val_accuracy`: for single-label
classification the weighted recall equals the accuracy (sum over classes of
`support_c / n * recall_c = TP_c / n`), so it is the validation weighted
recall, computed by Keras at no extra cost.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import keras

OBJECTIVE = "val_accuracy"
"""The Keras log reported each epoch (= the validation weighted recall, see the module docstring)."""


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
            journal file, absolute path), `study_name`, `trial_id` (Optuna's
            id), `min_epochs` (no stop before this 1-based epoch) and
            `pruner` (see `build_pruner`).

    Raises:
        KeyError: `config` lacks one of those keys.
    """

    def __init__(self, config: Mapping[str, Any]):
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(config["storage"])))
        study = optuna.load_study(study_name=config["study_name"], storage=storage,
                                  pruner=build_pruner(config.get("pruner")))
        self.trial = optuna.trial.Trial(study, int(config["trial_id"]))
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
        reporter: a `TrialReporter` (anything with `should_stop(value, epoch) -> bool`).

    Attributes:
        pruned_epoch: the 1-based epoch after which training was stopped, or `None`.
    """

    def __init__(self, reporter):
        super().__init__()
        self.reporter = reporter
        self.pruned_epoch: Optional[int] = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(OBJECTIVE)
        if value is None or self.pruned_epoch is not None:
            return
        if self.reporter.should_stop(value, epoch + 1):  # Keras epochs are 0-based, across phases here
            self.pruned_epoch = epoch + 1
            self.model.stop_training = True


def pruning_callback(config: Optional[Mapping[str, Any]]) -> Optional[PruningCallback]:
    """The callback for the notebook's `pruning` parameter, or `None` when it is `None` (no pruner)."""
    return PruningCallback(TrialReporter(config)) if config else None
