"""The project's vocabulary, stated once: run-folder file names, training phases,
test-time augmentation views, image file suffixes, the default ranking metric, the
per-epoch validation figures and the canonical base names.

TensorFlow-free and import-free, so the runner, the notebook's code and the
command line can all share it cheaply.
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The project folder (parent of `models/` and `runner/`)."""

HEAD = "head"
"""Training phase 1: the base frozen, the head trained."""
FINE_TUNE = "fine_tune"
"""Training phase 2 (optional): some base layers unfrozen, a lower learning rate."""
PHASES = (HEAD, FINE_TUNE)
"""The training phases, in the order they run."""

DEFAULT_METRIC = "weighted_recall"
"""The metric runs are ranked, pruned and chosen (`warm_start: best`, `ensembles: {top: N}`) by,
on the validation split, unless a grid or a command says otherwise."""

EPOCH_LOG_KEYS = {"val_loss": "val_loss", "val_accuracy": "val_accuracy", "val_weighted_recall": "val_accuracy"}
"""Validation figures known after every epoch (`early_stopping_monitor`, `checkpoint_monitor`, a search's
pruning metric) -> the Keras epoch-log key that holds them. For single-label classification the weighted
recall is the accuracy (`sum_c (n_c / n) * TP_c / n_c = sum_c TP_c / n`), so `val_weighted_recall` reads
Keras's `val_accuracy`; macro averages and F1 scores have no per-epoch value."""

TTA_VIEWS = ("flip", "vflip", "crop")
"""Test-time augmentation views (`tta` parameter, `predict --tta`): horizontal mirror, vertical
mirror, and five 87.5 % crops (`models.evaluate.tta_transforms`)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
"""File name suffixes (lower case) read as images, by training and by predict."""

# Files of a run folder, experiments/<run_id>/
RESULT_FILE = "result.json"
"""What the notebook writes at its end (`models.contract.NotebookResult`)."""
MODEL_FILE = "model.keras"
"""The kept (best) weights with the architecture, Keras format."""
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PATTERN = "epoch_{epoch}.weights.h5"
"""Per-epoch weights, `<run folder>/checkpoints/epoch_<k>.weights.h5`, k 1-based across phases."""
TENSORBOARD_DIR = "tensorboard"
"""Per-run TensorBoard logs, `<run folder>/tensorboard/{train,validation}/` (epoch scalars)."""
KERNEL_LOG_FILE = "kernel.log"
"""The kernel's native stderr (TensorFlow's C++ log lines)."""
PREDICTIONS_FILE = "predictions.csv"
"""Per-image class probabilities on the test split."""
VAL_PREDICTIONS_FILE = "val_predictions.csv"
"""Per-image class probabilities on the validation split."""
TRAINING_CURVES_FILE = "training_curves.png"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"


def checkpoint_path(run_dir, epoch: int) -> Path:
    """The weights file of epoch `epoch` (1-based, across phases) of the run folder `run_dir`."""
    return Path(run_dir) / CHECKPOINT_DIR / CHECKPOINT_PATTERN.format(epoch=epoch)
