"""Evaluation on the test split (metrics, predictions, confusion matrix) and training curves.

Figures are drawn on `matplotlib.figure.Figure` objects rendered by the Agg
canvas, never through `pyplot`: no global backend is switched and no figure
is left open in a notebook kernel.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import (ConfusionMatrixDisplay, accuracy_score, classification_report,
                             confusion_matrix)

from . import cache
from .data import DataSplit, make_dataset
from .spec import ExperimentSpec
from .train import FINE_TUNE, HEAD

PREDICTIONS_FILE = "predictions.csv"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"


@dataclass
class EvaluationResult:
    """Test-split evaluation of a trained model.

    Attributes:
        metrics: `accuracy`, `weighted_precision`, `weighted_recall`,
            `weighted_f1`, `macro_precision`, `macro_recall`, `macro_f1`
            (floats in [0, 1]), `per_class` (`{class name: {"precision",
            "recall", "f1", "support"}}`) and `confusion_matrix` (`[[int]]`,
            rows are true classes, columns predicted classes, in
            `class_names` order).
        eval_s: wall-clock time of the evaluation, seconds.
        from_cache: whether the test split's frozen-layer outputs came from
            the activation cache (only the layers above them ran).
    """

    metrics: dict
    eval_s: float
    from_cache: bool = False

    def to_dict(self) -> dict:
        """Returns the fields as a JSON-safe dict."""
        return asdict(self)


def evaluate_model(
    model: keras.Model, data: DataSplit, spec: ExperimentSpec, output_dir
) -> EvaluationResult:
    """Evaluates a model on the test split and writes its predictions and confusion matrix.

    When training used the activation cache, the test split's stored
    frozen-layer outputs are read from it (never built here) and only the
    layers above them run; otherwise the full model runs on the images.

    Metrics come from scikit-learn's `classification_report` (`zero_division=0`)
    and `confusion_matrix`, over every class (`labels=range(n)`) even when the
    test split never predicts some of them.

    Args:
        model: a trained model from `build_model`.
        data: the split; evaluates on `data.test`.
        spec: the run's parameters; reads `image_size` and `batch_size`.
        output_dir: folder (created if missing) for `predictions.csv`
            (columns `path`, `true_label`, `predicted_label` (class names),
            `confidence` (top probability), one `prob_<class>` per class) and
            `confusion_matrix.png`.

    Returns:
        An `EvaluationResult`.
    """
    start = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    try:  # the entry of the last training phase holds the test split's outputs too
        cached = cache.cached_inputs(model, data, spec, spec.fine_tune_layers, build=False, names=["test"])
        probabilities = cached.split.top.predict(
            cache.feature_dataset([cached.arrays["test"]], data.test.labels, spec.batch_size), verbose=0)
    except cache.CacheBypass:
        cached = None
        probabilities = model.predict(
            make_dataset(data.test, spec.image_size, spec.batch_size), verbose=0)
    predictions_frame(data.test.paths, probabilities, data.class_names, data.test.labels).to_csv(
        output_dir / PREDICTIONS_FILE, index=False)
    metrics = classification_metrics(data.test.labels, probabilities, data.class_names)
    save_confusion_matrix(metrics["confusion_matrix"], data.class_names,
                          output_dir / CONFUSION_MATRIX_FILE)
    return EvaluationResult(metrics=metrics, eval_s=time.perf_counter() - start, from_cache=cached is not None)


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
    """Test metrics from scikit-learn's `classification_report` and `confusion_matrix`.

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


def save_confusion_matrix(matrix, class_names, path) -> Path:
    """Draws a confusion matrix with scikit-learn's `ConfusionMatrixDisplay` and saves a PNG.

    Args:
        matrix: `[[int]]` counts, rows true classes, columns predicted.
        class_names: axis labels, in label order.
        path: the PNG file to write.

    Returns:
        `path` as a `pathlib.Path`.
    """
    names = list(class_names)
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
        if FINE_TUNE in history:
            axis.axvline(len(history[HEAD]["loss"]) + 0.5, color="grey", linestyle="--",
                         label="fine-tuning starts")
        axis.set(title=metric, xlabel="epoch", ylabel=metric)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return Path(path)
