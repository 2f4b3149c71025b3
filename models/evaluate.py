"""Evaluation on the validation and test splits (metrics, predictions, confusion matrix) and training curves.

Figures are drawn on `matplotlib.figure.Figure` objects rendered by the Agg
canvas, never through `pyplot`: no global backend is switched and no figure
is left open in a notebook kernel.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from matplotlib.figure import Figure
from sklearn.metrics import (ConfusionMatrixDisplay, accuracy_score, classification_report,
                             confusion_matrix)

from . import cache
from .data import DataSplit, batch_arrays, make_dataset
from .spec import ExperimentSpec
from .names import FINE_TUNE, HEAD
from .training import resolve_fine_tune_layers

from .names import CONFUSION_MATRIX_FILE, PREDICTIONS_FILE, TTA_VIEWS, VAL_PREDICTIONS_FILE

PREDICTION_FILES = {"test": PREDICTIONS_FILE, "val": VAL_PREDICTIONS_FILE}
TTA_CROP_FRACTION = 0.875
"""Side of each `crop` view, a fraction of the image's side: the 87.5 % central crop of
Inception's evaluation (Szegedy et al. 2016; TF-slim `inception_preprocessing`,
`tf.image.central_crop(image, 0.875)`)."""
TTA_CACHE_BYPASS = ("tta needs the full model on transformed images (the stored activations are "
                    "those of the untransformed images): evaluation ran the full model")
"""`EvaluationResult.cache_bypass_reason` of an evaluation with test-time augmentation."""


def _crop(images: tf.Tensor, corner: str) -> tf.Tensor:
    """One `crop` view of a batch: a corner (or the centre) crop, resized back (bilinear) to its size."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    crop_h = tf.maximum(1, tf.cast(tf.round(tf.cast(height, tf.float32) * TTA_CROP_FRACTION), tf.int32))
    crop_w = tf.maximum(1, tf.cast(tf.round(tf.cast(width, tf.float32) * TTA_CROP_FRACTION), tf.int32))
    top = {"top": 0, "bottom": height - crop_h, "centre": (height - crop_h) // 2}[corner.split("_")[0]]
    left = {"left": 0, "right": width - crop_w, "centre": (width - crop_w) // 2}[corner.split("_")[-1]]
    return tf.image.resize(images[:, top:top + crop_h, left:left + crop_w], (height, width))


CROP_CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right", "centre")
"""The five `crop` views, in order (Krizhevsky et al. 2012's five crops)."""
_VIEWS: dict[str, list[Callable[[tf.Tensor], tf.Tensor]]] = {
    "flip": [lambda images: tf.reverse(images, axis=[2])],   # width axis: horizontal mirror
    "vflip": [lambda images: tf.reverse(images, axis=[1])],  # height axis: vertical mirror
    "crop": [lambda images, corner=corner: _crop(images, corner) for corner in CROP_CORNERS],
}


def tta_transforms(tta: Optional[Sequence[str]]) -> list[Callable[[tf.Tensor], tf.Tensor]]:
    """The views that test-time augmentation averages over, as functions of a batch; the identity first.

    Each function maps float32 `(batch, height, width, 3)` RGB in [0, 255]
    to a float32 batch of the same shape and range.

    Args:
        tta: `None` / empty (only the identity), or distinct items of
            `TTA_VIEWS`: `"flip"` adds the horizontal mirror, `"vflip"` the
            vertical mirror, `"crop"` five crops of `TTA_CROP_FRACTION` of
            each side (`CROP_CORNERS`: the four corners and the centre),
            each resized back to `(height, width)` with `tf.image.resize`
            (bilinear). Views are not combined: `["flip", "crop"]` gives
            1 + 1 + 5 = 7.

    Returns:
        The functions, the identity first.

    Raises:
        ValueError: an item is not one of `TTA_VIEWS`, or is repeated.
    """
    tta = list(tta or [])
    if any(name not in _VIEWS for name in tta) or len(set(tta)) != len(tta):
        raise ValueError(f"tta: got {tta}, expected None or distinct items of {', '.join(TTA_VIEWS)}")
    return [lambda images: images] + [view for name in tta for view in _VIEWS[name]]


def predict_with_tta(model: keras.Model, images, tta: Optional[Sequence[str]] = None,
                     batch_size: int = 32) -> np.ndarray:
    """Class probabilities, averaged over test-time augmented views when `tta` is set.

    The one place where TTA happens: the notebook's evaluation
    (`evaluate_model`) and `runner.core.predict` both call it. With `tta` the
    prediction is the mean of the model's softmax outputs over the original
    and every transformed copy (`tta_transforms`), each view weighing the same.
    Without it, this is `model.predict`.

    Args:
        model: maps float32 `(batch, height, width, 3)` RGB in [0, 255] to
            probabilities `(batch, n_classes)`, e.g. from `build_model`.
        images: an array `(n, height, width, 3)` RGB (uint8 or float in
            [0, 255]), or a `tf.data.Dataset` of such batches or of
            `(images, labels)` batches (labels are ignored) in a fixed
            order, e.g. from `make_dataset` without shuffling; it is
            iterated once per view.
        tta: `None` or `[]` (off), or distinct items of `TTA_VIEWS`.
            Defaults to `None`.
        batch_size: images per forward pass for an array (a dataset keeps
            its own batches). Defaults to `32`.

    Returns:
        float32 `(n, n_classes)` probabilities in [0, 1], rows summing to 1.

    Raises:
        ValueError: `tta` has an unknown or repeated item (`tta_transforms`).
    """
    views = tta_transforms(tta)
    if not isinstance(images, tf.data.Dataset):
        images = np.asarray(images, dtype="float32")
    if len(views) == 1:
        return model.predict(images, batch_size=None if isinstance(images, tf.data.Dataset) else batch_size,
                             verbose=0)
    if isinstance(images, tf.data.Dataset):
        dataset = images.map(lambda *element: element[0])
    else:
        dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    total = None
    for view in views:
        viewed = dataset.map(lambda batch, view=view: view(tf.cast(batch, tf.float32)),
                             num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        probabilities = model.predict(viewed, verbose=0).astype(np.float64)
        total = probabilities if total is None else total + probabilities
    return (total / len(views)).astype(np.float32)


@dataclass
class EvaluationResult:
    """Evaluation of a trained model's kept weights on the validation and test splits.

    Attributes:
        metrics: test-split metrics (`classification_metrics`): `accuracy`,
            `weighted_precision`, `weighted_recall`, `weighted_f1`,
            `macro_precision`, `macro_recall`, `macro_f1` (floats in [0, 1]),
            `per_class` (`{class name: {"precision", "recall", "f1",
            "support"}}`) and `confusion_matrix` (`[[int]]`, rows are true
            classes, columns predicted classes, in `class_names` order).
        val_metrics: the same on the validation split: what a sweep selects
            runs by (the test split is only reported); `None` when the
            validation split was trained on (`train_on_val`: empty).
        eval_s: wall-clock time of the evaluation, seconds.
        from_cache: whether the splits' frozen-layer outputs came from
            the activation cache (only the layers above them ran).
        tta: the test-time augmentation used on both splits
            (`ExperimentSpec.tta`), or `None`.
        cache_bypass_reason: why the activation cache was not read although
            it may hold the splits' outputs: `TTA_CACHE_BYPASS` with `tta`,
            else `None`.
    """

    metrics: dict
    val_metrics: Optional[dict]
    eval_s: float
    from_cache: bool = False
    tta: Optional[list[str]] = None
    cache_bypass_reason: Optional[str] = None

    def to_dict(self) -> dict:
        """Returns the fields as a JSON-safe dict; `tta` and `cache_bypass_reason` only when set."""
        return {key: value for key, value in asdict(self).items()
                if value is not None or key not in ("tta", "cache_bypass_reason")}


def evaluate_model(
    model: keras.Model, data: DataSplit, spec: ExperimentSpec, output_dir
) -> EvaluationResult:
    """Evaluates a model on the validation and test splits; writes the test predictions and confusion matrix.

    When training used the activation cache, the splits' stored frozen-layer
    outputs are read from the entry of the last phase that trained (never
    built here; a run pruned before its fine-tuning phase reads the head
    phase's entry) and only the layers above them run; otherwise the full
    model runs on the images. With `spec.tta` (test-time augmentation) both
    splits are predicted by `predict_with_tta`: the full model on the images
    and on their transformed copies, averaged. The stored outputs are those
    of the untransformed images, so TTA never reads the cache
    (`EvaluationResult.cache_bypass_reason` says so).

    Metrics come from scikit-learn's `classification_report` (`zero_division=0`)
    and `confusion_matrix`, over every class (`labels=range(n)`) even when a
    split never predicts some of them.

    Args:
        model: a trained model from `build_model`.
        data: the split; evaluates on `data.val` (unless empty: `train_on_val`)
            and `data.test`.
        spec: the run's parameters; reads `image_size`, `batch_size`,
            `tta` and the activation cache's parameters.
        output_dir: folder (created if missing) for `predictions.csv`
            (test split; columns `path`, `true_label`, `predicted_label`
            (class names), `confidence` (top probability), one `prob_<class>`
            per class; with `tta`, the averaged probabilities) and
            `confusion_matrix.png` (test split).

    Returns:
        An `EvaluationResult`.
    """
    start = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    splits = {name: part for name, part in (("val", data.val), ("test", data.test))
              if len(part)}  # train_on_val: the validation images were trained on, not evaluated
    cached = None if spec.tta else _cached_eval_inputs(model, data, spec, list(splits))
    if cached is not None:
        try:
            probabilities = {name: cached.split.top.predict(batch_arrays(
                [cached.arrays[name]], part.labels, spec.batch_size), verbose=0) for name, part in splits.items()}
        except Exception:
            if not cache.take_damage_reports():
                raise
            cached = None  # a stored chunk failed its CRC-32 (the entry is deleted): evaluate on the images
    if cached is None:
        probabilities = {name: predict_with_tta(model, make_dataset(part, spec.image_size, spec.batch_size),
                                                spec.tta) for name, part in splits.items()}
    for name, part in splits.items():  # the test split's, and the validation split's (ensembles select on it)
        predictions_frame(part.paths, probabilities[name], data.class_names, part.labels).to_csv(
            output_dir / PREDICTION_FILES[name], index=False)
    metrics = {name: classification_metrics(part.labels, probabilities[name], data.class_names)
               for name, part in splits.items()}
    save_confusion_matrix(metrics["test"]["confusion_matrix"], data.class_names,
                          output_dir / CONFUSION_MATRIX_FILE)
    return EvaluationResult(metrics=metrics["test"], val_metrics=metrics.get("val"),
                            eval_s=time.perf_counter() - start, from_cache=cached is not None,
                            tta=list(spec.tta) if spec.tta else None,
                            cache_bypass_reason=TTA_CACHE_BYPASS if spec.tta else None)


def _cached_eval_inputs(model: keras.Model, data: DataSplit, spec: ExperimentSpec, names: list[str]):
    """The stored frozen-layer outputs of `names` from the entry of the last phase that trained, else `None`.

    Every entry holds the val and test splits' outputs too. The fine-tuning
    phase's cut is tried first; then the head's (no base layer trainable), for
    a run that stopped (pruned) before its fine-tuning phase began, whose
    fine-tuning entry was never built. An entry's key hashes the frozen
    layers' weight values, so after fine-tuning has changed the base the
    head's entry cannot match: no stale outputs are ever read.
    """
    for trainable in dict.fromkeys((resolve_fine_tune_layers(model, spec), 0)):
        try:
            return cache.cached_inputs(model, data, spec, trainable, build=False, names=names)
        except cache.CacheBypass:
            continue
    return None


def predictions_frame(paths, probabilities: np.ndarray, class_names, labels=None) -> pd.DataFrame:
    """One row per image: path, (true label,) predicted label, confidence, class probabilities.

    Args:
        paths: `n` image paths.
        probabilities: float `(n, n_classes)` softmax outputs.
        class_names: the `n_classes` names, in label order.
        labels: int `(n,)` true labels, or `None` when unknown. Defaults to
            `None`.

    Returns:
        Columns `path`, `true_label` (only with `labels`), `predicted_label`,
        `confidence` (top probability), then `prob_<class>` per class.
    """
    names = np.array(list(class_names))
    frame = pd.DataFrame({"path": [str(p) for p in paths]})
    if labels is not None:
        frame["true_label"] = names[np.asarray(labels)]
    frame["predicted_label"] = names[probabilities.argmax(axis=1)]
    frame["confidence"] = probabilities.max(axis=1)
    probability_columns = pd.DataFrame(probabilities, columns=[f"prob_{n}" for n in names])
    return pd.concat([frame, probability_columns], axis=1)


def classification_metrics(labels, probabilities: np.ndarray, class_names) -> dict:
    """A split's metrics from scikit-learn's `classification_report` and `confusion_matrix`.

    Every class counts (`labels=range(n)`, `zero_division=0`), even one that is
    never predicted or absent from `labels`.

    Args:
        labels: int `(n,)` true labels in `[0, n_classes)`.
        probabilities: float `(n, n_classes)` softmax outputs.
        class_names: the `n_classes` names, in label order.

    Returns:
        `accuracy`, `weighted_precision`, `weighted_recall`, `weighted_f1`,
        `macro_precision`, `macro_recall`, `macro_f1` (floats in [0, 1]),
        `per_class` (`{name: {"precision", "recall", "f1", "support"}}`) and
        `confusion_matrix` (`[[int]]`, rows true, columns predicted).
    """
    names = list(class_names)
    indices = list(range(len(names)))
    y_pred = probabilities.argmax(axis=1)
    report = classification_report(labels, y_pred, labels=indices, target_names=names,
                                   output_dict=True, zero_division=0)
    metrics = {"accuracy": float(accuracy_score(labels, y_pred))}
    for average in ("weighted", "macro"):
        for key, column in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            metrics[f"{average}_{key}"] = float(report[f"{average} avg"][column])
    metrics["per_class"] = {
        name: {"precision": float(report[name]["precision"]),
               "recall": float(report[name]["recall"]),
               "f1": float(report[name]["f1-score"]),
               "support": int(report[name]["support"])}
        for name in names}
    metrics["confusion_matrix"] = confusion_matrix(labels, y_pred, labels=indices).tolist()
    return metrics


def literal_text(text: str) -> str:
    """`text` as matplotlib draws it literally: each `$` escaped as `\\$`.

    Matplotlib reads a string with two unescaped `$` as mathtext even with
    `usetex=False` ("Writing mathematical expressions" in its docs: `\\$`
    is a literal dollar sign), so a class folder named `x$_{$y` would raise
    a parse error and one named `$x$` would be drawn as math.

    Args:
        text: a label from the user's data (a class folder name).

    Returns:
        The text to hand to matplotlib.
    """
    return text.replace("$", r"\$")


def save_confusion_matrix(matrix, class_names, path) -> Path:
    """Draws a confusion matrix with scikit-learn's `ConfusionMatrixDisplay` and saves a PNG.

    Args:
        matrix: `[[int]]` counts, rows true classes, columns predicted.
        class_names: axis labels, in label order, drawn literally (`literal_text`).
        path: the file to write: PNG, or the format its suffix names (matplotlib's `savefig`).

    Returns:
        `path` as a `pathlib.Path`.
    """
    names = [literal_text(str(name)) for name in class_names]
    side = 3 + 0.5 * len(names)
    figure = Figure(figsize=(side + 1, side))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=names).plot(
        ax=figure.subplots(), cmap="Blues", xticks_rotation=45)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return Path(path)


def plot_history(history: dict[str, dict[str, list[float]]], path) -> Path:
    """Plots training curves: loss and accuracy, train vs val, both phases.

    The fine-tuning epochs follow the head epochs on the same axis; a dashed
    vertical line marks where fine-tuning starts.

    Args:
        history: `TrainingResult.history`.
        path: the PNG file to write.

    Returns:
        `path` as a `pathlib.Path`.
    """
    figure = Figure(figsize=(10, 4))
    for axis, metric in zip(figure.subplots(1, 2), ("loss", "accuracy")):
        for key, label in ((metric, "train"), (f"val_{metric}", "val")):
            values = [v for phase in history.values() for v in phase.get(key, [])]
            axis.plot(range(1, len(values) + 1), values, marker="o", label=label)
        if FINE_TUNE in history and HEAD in history:
            axis.axvline(len(history[HEAD]["loss"]) + 0.5, color="grey", linestyle="--",
                         label="fine-tuning starts")
        axis.set(title=metric, xlabel="epoch", ylabel=metric)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return Path(path)
