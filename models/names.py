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

BASE_NAMES = ("vgg16", "vgg19", "resnet50", "resnet101", "resnet50_v2", "inception_v3", "inception_resnet_v2",
              "xception", "mobilenet", "mobilenet_v2", "densenet121", "efficientnet_b0", "convnext_tiny",
              "simple_cnn_small", "simple_cnn_medium")
"""The canonical names of the base registry (`models.bases.BASES`, in its order; a test keeps the two equal),
here so that a name is made canonical (`canonical_base`) without importing Keras."""


def base_key(name: str) -> str:
    """A base name with case, `_` and `-` dropped: `"MobileNet-V2"` -> `"mobilenetv2"`; names that agree
    on it are one base (`models.bases.resolve_base` looks names up by it)."""
    return name.lower().replace("_", "").replace("-", "")


_CANONICAL_BASES = {base_key(name): name for name in BASE_NAMES}


def canonical_base(name: str) -> str:
    """The one spelling of a base name, without importing Keras: what `models.bases.resolve_base(name).name` gives.

    Args:
        name: any spelling `resolve_base` accepts (`"VGG16"`, `"vgg16"`, `"MobileNetV2"`,
            `"mobilenet-v2"`, `"EfficientNetB3"`).

    Returns:
        The registry name (`"vgg16"`, `"mobilenet_v2"`) for a registry base, else `base_key(name)`, which is
        the lower-cased constructor name `resolve_base` gives any other `keras.applications` model
        (`"efficientnetb3"`; Keras's constructor names hold no `_` or `-`). An unknown name is returned in
        the same form; `resolve_base` refuses it.
    """
    key = base_key(name)
    return _CANONICAL_BASES.get(key, key)

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
