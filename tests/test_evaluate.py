"""Evaluation (`models.evaluate`): the metrics of a split and the predictions table, on labels and
probabilities whose figures are worked out by hand here. (Evaluating a trained model end to end:
test_training_loop.py.)"""

import numpy as np
import pytest

from models.evaluate import classification_metrics, predictions_frame

NAMES = ["cat", "dog", "fox"]
LABELS = np.array([0, 0, 0, 1, 1, 2])
# predicted: cat, cat, dog, dog, dog, dog (fox is never predicted)
PROBABILITIES = np.array([[0.8, 0.1, 0.1], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1],
                          [0.1, 0.6, 0.3], [0.3, 0.4, 0.3], [0.1, 0.5, 0.4]])


def test_classification_metrics_by_hand():
    m = classification_metrics(LABELS, PROBABILITIES, NAMES)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    # recall per class: cat 2/3, dog 2/2, fox 0/1; precision: cat 2/2, dog 2/4, fox 0 (never predicted)
    assert m["per_class"]["cat"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_class"]["dog"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 2})
    assert m["per_class"]["fox"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro_recall"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["macro_precision"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["weighted_recall"] == pytest.approx((3 * 2 / 3 + 2 * 1 + 1 * 0) / 6) == pytest.approx(m["accuracy"])
    assert m["weighted_precision"] == pytest.approx((3 * 1 + 2 * 0.5 + 0) / 6)
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 2 / 3 + 0) / 6)
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    assert all(type(m[key]) is float for key in ("accuracy", "weighted_recall", "macro_f1"))  # JSON-safe


def test_a_class_absent_from_the_split_still_counts():
    m = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]]), NAMES)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert m["per_class"]["fox"]["support"] == 0 and m["accuracy"] == 1.0
    assert m["macro_recall"] == pytest.approx(2 / 3)  # fox's recall is 0 (zero_division=0)
    assert m["weighted_recall"] == 1.0


def test_predictions_frame_columns_and_values():
    frame = predictions_frame([f"/d/{i}.png" for i in range(6)], PROBABILITIES, NAMES, LABELS)
    assert list(frame.columns) == ["path", "true_label", "predicted_label", "confidence",
                                   "prob_cat", "prob_dog", "prob_fox"]
    assert list(frame["true_label"]) == ["cat", "cat", "cat", "dog", "dog", "fox"]
    assert list(frame["predicted_label"]) == ["cat", "cat", "dog", "dog", "dog", "dog"]
    np.testing.assert_allclose(frame["confidence"], [0.8, 0.5, 0.7, 0.6, 0.4, 0.5])
    np.testing.assert_allclose(frame[["prob_cat", "prob_dog", "prob_fox"]].to_numpy(), PROBABILITIES)
    unlabelled = predictions_frame(["/d/x.png"], PROBABILITIES[:1], NAMES)
    assert list(unlabelled.columns) == ["path", "predicted_label", "confidence", "prob_cat", "prob_dog", "prob_fox"]
