"""Training (`models.training`): the head phase, then fine-tuning, best weights kept, checkpoints and
TensorBoard logs; then evaluation of the kept weights (`models.evaluate`), on tiny images with real
Keras."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest

from models.bases import build_base
from models.build import build_model, describe_model, load_run_model
from models.data import load_data, load_images, make_dataset
from models.evaluate import evaluate_model, plot_history
from models.training import train_model, unfreeze_base

from helpers import make_spec

CLASSES = ("blue", "green", "red")


@pytest.fixture(scope="module")
def split(tiny_image_dir):
    """3 classes x 12 images: 6 / 3 / 3 per class for training, validation and test."""
    return load_data(make_spec(tiny_image_dir))


@pytest.mark.slow  # builds MobileNetV2 twice (about 8 s); simple_cnn_small's case is in the end-to-end test
def test_unfreeze_base_leaves_batchnorm_frozen(tmp_path):
    weights = tmp_path / "mobilenet_v2.weights.h5"
    spec = make_spec("x", base="mobilenet_v2", base_kwargs={"alpha": 0.35})
    build_base(spec)[0].save_weights(weights)
    model = build_model(spec.model_copy(update={"weights": str(weights)}), 3)
    base = model.get_layer("base")
    assert not any(layer.trainable for layer in base.layers)
    unfrozen = unfreeze_base(model, 10)
    expected = [layer.name for layer in base.layers[-10:]
                if not isinstance(layer, keras.layers.BatchNormalization)]
    assert unfrozen == expected and 0 < len(expected) < 10
    assert [layer.name for layer in base.layers if layer.trainable] == expected



@pytest.mark.slow
def test_train_and_evaluate_end_to_end(split, base_weights_file, tmp_path):
    spec = make_spec(split.data_dir, weights=base_weights_file, epochs=2, lr_schedule="step",
                     lr_step_milestones=[1], lr_step_gamma=0.5, class_weight="balanced",
                     augmentation={"flip": "horizontal"}, fine_tune_layers=5,
                     fine_tune_epochs=2, fine_tune_learning_rate=1e-4)
    model = build_model(spec, len(split.class_names))
    result = train_model(model, split, spec, tmp_path, verbose=0)

    # the base was frozen in part as built: only what trained is stored; no per-epoch checkpoint by default
    assert {p.name for p in tmp_path.iterdir()} == {"trained_weights.h5", "tensorboard"}
    assert list(result.history) == ["head", "fine_tune"]
    for phase, epochs in (("head", 2), ("fine_tune", 2)):
        assert set(result.history[phase]) == {"loss", "accuracy", "val_loss", "val_accuracy",
                                              "learning_rate", "epoch_s"}
        assert all(len(v) == epochs for v in result.history[phase].values())
    np.testing.assert_allclose(result.history["head"]["learning_rate"], [1e-3, 5e-4])
    np.testing.assert_allclose(result.history["fine_tune"]["learning_rate"], [1e-4, 1e-4])
    val_losses = result.history["head"]["val_loss"] + result.history["fine_tune"]["val_loss"]
    assert result.epochs_run == 4
    assert result.best_epoch == int(np.argmin(val_losses)) + 1
    assert result.best_phase == ("head" if result.best_epoch <= 2 else "fine_tune")
    assert result.train_s > 0
    json.dumps(result.to_dict())
    # TensorBoard: one step per epoch across both phases, the same values as the history
    for folder, key in (("train", "loss"), ("validation", "val_loss")):
        logged = _tensorboard_scalars(tmp_path / "tensorboard" / folder, "epoch_loss")
        assert [step for step, _ in logged] == [0, 1, 2, 3]
        np.testing.assert_allclose([v for _, v in logged],
                                   result.history["head"][key] + result.history["fine_tune"][key], rtol=1e-5)
    assert _val_loss(model, split) == pytest.approx(min(val_losses), rel=1e-4)  # best weights
    # Fine-tuning unfroze the last block (conv, BatchNorm, ReLU, pool, dropout) but its BatchNorm.
    base = model.get_layer("base")
    assert [type(layer).__name__ for layer in base.layers if layer.trainable] == [
        "Conv2D", "ReLU", "MaxPooling2D", "Dropout"]
    assert base.layers[-5].trainable and not base.layers[-6].trainable

    evaluation = evaluate_model(model, split, spec, tmp_path)
    metrics = json.loads(json.dumps(evaluation.to_dict()))["metrics"]
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert list(predictions.columns) == ["path", "true_label", "predicted_label", "confidence",
                                         "prob_blue", "prob_green", "prob_red"]
    assert len(predictions) == len(split.test) == 9
    assert sorted(predictions["path"]) == sorted(split.test.paths)
    np.testing.assert_allclose(predictions.filter(like="prob_").sum(axis=1), 1, atol=1e-5)
    assert metrics["accuracy"] == pytest.approx(
        (predictions["true_label"] == predictions["predicted_label"]).mean())
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 9 and matrix.trace() == round(
        9 * metrics["accuracy"])
    assert {c: v["support"] for c, v in metrics["per_class"].items()} == dict.fromkeys(CLASSES, 3)
    assert set(metrics) >= {"weighted_precision", "weighted_recall", "weighted_f1",
                            "macro_precision", "macro_recall", "macro_f1"}
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    curves = plot_history(result.history, tmp_path / "training_curves.png")
    assert curves.read_bytes()[:4] == b"\x89PNG"

    reloaded = load_run_model(spec, len(split.class_names), tmp_path / "trained_weights.h5")
    images = load_images(split.test.paths, 32)
    difference = np.abs(reloaded.predict(images, verbose=0) - model.predict(images, verbose=0))
    assert difference.max() <= 1e-6
    assert describe_model(reloaded, spec)["weights_source"] == "file"


def _tensorboard_scalars(folder, tag) -> list[tuple[int, float]]:
    """(step, value) of a scalar in a TensorBoard log folder, read back with TensorBoard's own reader."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0}).Reload()
    return sorted((e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag))


def _val_loss(model, split) -> float:
    return model.evaluate(make_dataset(split.val, 32, 8), verbose=0, return_dict=True)["loss"]


@pytest.mark.slow
def test_head_phase_weights_win_over_a_worse_fine_tuning(split, base_weights_file, tmp_path):
    """A fine-tuning rate of 1.0 wrecks the model: the head phase's best weights are kept."""
    spec = make_spec(split.data_dir, weights=base_weights_file, epochs=2, fine_tune_layers=5,
                     fine_tune_epochs=1, fine_tune_learning_rate=1.0)
    model = build_model(spec, 3)
    result = train_model(model, split, spec, tmp_path, verbose=0)
    head, fine_tune = result.history["head"]["val_loss"], result.history["fine_tune"]["val_loss"]
    assert min(fine_tune) > 2 * min(head)
    assert (result.best_phase, result.best_epoch) == ("head", int(np.argmin(head)) + 1)
    assert _val_loss(model, split) == pytest.approx(min(head), rel=1e-4)


@pytest.mark.slow
def test_from_scratch_training_with_cosine_schedule_and_early_stopping(split, tmp_path):
    """A base with random weights trains whole, BatchNormalization included; fine-tuning it is refused
    (nothing is frozen to unfreeze), so a from-scratch run has only the head phase."""
    with pytest.raises(ValueError, match="fine_tune_layers=2 with weights=None: a base with random weights is "
                                         "trained whole from the first epoch"):
        make_spec(split.data_dir, base="simple_cnn_medium", fine_tune_layers=2, fine_tune_epochs=1)
    spec = make_spec(split.data_dir, base="simple_cnn_medium", optimizer="sgd",
                     lr_schedule="cosine", epochs=3, early_stopping_patience=1)
    model = build_model(spec, 3)
    result = train_model(model, split, spec, tmp_path, verbose=0)
    head = result.history["head"]
    assert list(result.history) == ["head"]
    assert 2 <= len(head["loss"]) <= 3 and result.epochs_run == len(head["loss"])
    assert result.best_phase == "head" and result.best_epoch == int(np.argmin(head["val_loss"])) + 1
    assert head["learning_rate"] == sorted(head["learning_rate"], reverse=True)
    assert head["learning_rate"][0] < 1e-3
    # A from-scratch base stays trainable as a whole, BatchNormalization included.
    assert all(layer.trainable for layer in model.get_layer("base").layers)
    assert _val_loss(model, split) == pytest.approx(min(head["val_loss"]), rel=1e-4)  # best weights kept
