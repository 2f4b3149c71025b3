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
"""The kept (best) weights with the architecture, Keras format: the full model, for runs whose base is not
frozen as `build_model` builds it (from scratch, warm-started, the whole base unfrozen), and every run
recorded before `TRAINED_WEIGHTS_FILE` existed."""
TRAINED_WEIGHTS_FILE = "trained_weights.h5"
"""The kept (best) weights of a run whose base is frozen (in whole or part) as built: only the variables
training changed, with the base's identity (`models.saving`); a run folder holds this or `MODEL_FILE`."""
RUN_WEIGHTS_FILES = (TRAINED_WEIGHTS_FILE, MODEL_FILE)
"""The files that can hold a run's kept weights, in the order they are looked for (`run_weights_path`)."""
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PATTERN = "epoch_{epoch}.trained_weights.h5"
"""Per-epoch weights, `<run folder>/checkpoints/epoch_<k>.trained_weights.h5`, k 1-based across phases, in
the format of `TRAINED_WEIGHTS_FILE` (every variable when nothing is frozen as built)."""
LEGACY_CHECKPOINT_PATTERN = "epoch_{epoch}.weights.h5"
"""Per-epoch full-model weights (Keras format) of runs recorded before `CHECKPOINT_PATTERN`; still read."""
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
    """The weights file a run writes for epoch `epoch` (1-based, across phases) in the run folder `run_dir`."""
    return Path(run_dir) / CHECKPOINT_DIR / CHECKPOINT_PATTERN.format(epoch=epoch)


def existing_checkpoint(run_dir, epoch: int):
    """The checkpoint of epoch `epoch` in `run_dir` that exists (`CHECKPOINT_PATTERN`, then
    `LEGACY_CHECKPOINT_PATTERN`), or `None` when neither was kept."""
    for pattern in (CHECKPOINT_PATTERN, LEGACY_CHECKPOINT_PATTERN):
        path = Path(run_dir) / CHECKPOINT_DIR / pattern.format(epoch=epoch)
        if path.is_file():
            return path
    return None


def run_weights_path(run_dir):
    """The file holding the kept weights of the run folder `run_dir`: the first of `RUN_WEIGHTS_FILES`
    that exists, or `None`."""
    return next((Path(run_dir) / name for name in RUN_WEIGHTS_FILES if (Path(run_dir) / name).is_file()), None)
