"""Training: the head on a frozen base, then optional fine-tuning of the base's top layers.

- `models.training.loop`: `train_model` (both phases, one best-weights tracker) and `TrainingResult`.
- `models.training.callbacks`: best weights across phases, checkpoints kept, epoch timing,
  linear warm-up, early stopping.
- `models.training.schedules`: optimisers, learning-rate schedules, the mixed-precision policy.
- `models.training.fine_tuning`: which base layers to unfreeze, and unfreezing them.
- `models.training.averaging`: weight averaging, `ema` (the optimizers' moving average kept in the model
  outside the training steps) and `swa_epochs` (the last fine-tuning epochs averaged, BatchNormalization
  statistics recomputed).
"""

from .callbacks import monitor_of
from .schedules import set_precision_policy
from .fine_tuning import resolve_fine_tune_layers, unfreeze_base
from .loop import TrainingResult, train_model

__all__ = [
    "monitor_of",
    "set_precision_policy",
    "resolve_fine_tune_layers",
    "unfreeze_base",
    "TrainingResult",
    "train_model",
]
