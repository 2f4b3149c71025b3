"""Weight averaging (`models.training.averaging`): the exponential moving average of the weights (`ema`)
and stochastic weight averaging (`swa_epochs`), checked against averages computed by hand, through
`train_model` (checkpoints, best weights, the run's weights file, the activation cache) and the spec's refusals."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from pydantic import ValidationError

from models import ExperimentSpec
from models.training.averaging import EmaInModel, average, batchnorm_layers, recompute_batchnorm

from helpers import make_spec


# The spec's refusals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params, message", [
    ({"ema": 1.0}, r"ema: got 1.0, expected null \(off\) or a momentum in \(0, 1\)"),
    ({"ema": 0}, r"ema: got 0.0, expected null \(off\) or a momentum in \(0, 1\)"),
    ({"ema": -0.5}, r"ema: got -0.5, expected null"),
    ({"swa_epochs": 0}, r"swa_epochs: got 0, expected null \(off\) or an int k in \[1, fine_tune_epochs\]"),
    ({"swa_epochs": 2}, r"swa_epochs: got 2, .*there is no fine-tuning phase \(fine_tune_layers=0\)"),
    ({"weights": "w.h5", "fine_tune_layers": 2, "fine_tune_epochs": 1, "swa_epochs": 2},
     r"swa_epochs: got 2, expected null or an int in \[1, fine_tune_epochs\].*fine_tune_epochs is 1"),
    ({"weights": "w.h5", "fine_tune_layers": 2, "fine_tune_epochs": 2, "swa_epochs": 2, "ema": 0.99},
     r"ema=0.99 and swa_epochs=2 both average the weights: set at most one"),
    ({"train_on_val": True}, r"early_stopping_patience: got 3 with train_on_val=true, expected null"),
    ({"train_on_val": True, "early_stopping_patience": None, "keep_checkpoints": 1, "keep_best_checkpoints": 1},
     r"keep_best_checkpoints: got 1 with train_on_val=true, expected null"),
])
def test_the_spec_refuses_bad_averaging_and_refit_settings_naming_the_key(params, message):
    with pytest.raises(ValidationError, match=message):
        ExperimentSpec(**params)


def test_the_spec_accepts_averaging_and_train_on_val():
    assert ExperimentSpec(ema=0.999).ema == 0.999
    spec = ExperimentSpec(weights="w.h5", fine_tune_layers=2, fine_tune_epochs=3, swa_epochs=3)
    assert spec.swa_epochs == 3
    assert ExperimentSpec(train_on_val=True, early_stopping_patience=None).train_on_val


# EMA: by hand on a Dense layer --------------------------------------------------------------------------------------


class _StepWeights(keras.callbacks.Callback):
    """The model's (raw) kernel after every training step."""

    def __init__(self):
        super().__init__()
        self.kernels = []

    def on_train_batch_end(self, batch, logs=None):
        self.kernels.append(keras.ops.convert_to_numpy(self.model.layers[-1].kernel).copy())


def _dense_fit(ema: float | None, epochs: int = 2):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(24, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    optimizer = (keras.optimizers.SGD(0.05, use_ema=True, ema_momentum=ema) if ema is not None
                 else keras.optimizers.SGD(0.05))
    model.compile(optimizer=optimizer, loss="mse")
    steps = _StepWeights()
    seen_at_epoch_end = []
    end = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen_at_epoch_end.append(
        keras.ops.convert_to_numpy(model.layers[-1].kernel).copy()))
    callbacks = [EmaInModel(), steps, end] if ema is not None else [steps, end]
    history = model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks,
                        validation_data=(x, y))
    return model, steps.kernels, seen_at_epoch_end, history.history, (x, y)


@pytest.mark.slow
def test_ema_weights_are_the_hand_computed_average_and_training_goes_on_from_the_raw_weights():
    momentum = 0.8
    model, raw, at_epoch_end, history, (x, y) = _dense_fit(momentum)
    # Keras's documented rule: the first step's weights start the average, then
    # average = momentum * average + (1 - momentum) * weights after every step
    by_hand = [raw[0]]
    for kernel in raw[1:]:
        by_hand.append(momentum * by_hand[-1] + (1 - momentum) * kernel)
    steps_per_epoch = 3
    assert len(raw) == 2 * steps_per_epoch
    final = keras.ops.convert_to_numpy(model.layers[-1].kernel)
    np.testing.assert_allclose(final, by_hand[-1], rtol=1e-5, atol=1e-7)
    assert np.abs(final - raw[-1]).max() > 1e-3  # the averaged weights are not the raw ones
    # what the epoch-end callbacks (best weights, checkpoints) see is the average of that epoch's last step
    for epoch, kernel in enumerate(at_epoch_end):
        np.testing.assert_allclose(kernel, by_hand[(epoch + 1) * steps_per_epoch - 1], rtol=1e-5, atol=1e-7)
    # validation ran on the average
    val_loss = float(np.mean((x @ by_hand[-1] - y) ** 2))
    assert history["val_loss"][-1] == pytest.approx(val_loss, rel=1e-4)
    # and training went on from the raw weights: the same steps as without averaging
    _, raw_plain, _, _, _ = _dense_fit(None)
    np.testing.assert_allclose(np.array(raw), np.array(raw_plain), rtol=1e-6, atol=1e-7)


def test_average_is_the_element_wise_mean_in_each_variables_dtype():
    snapshots = [[np.full((2, 2), value, dtype="float32"), np.array([value], dtype="float32")]
                 for value in (1.0, 2.0, 6.0)]
    mean = average(snapshots)
    np.testing.assert_allclose(mean[0], np.full((2, 2), 3.0))
    assert mean[0].dtype == np.float32 and mean[1].tolist() == [3.0]
    with pytest.raises(ValueError, match="no weights"):
        average([])


def test_recompute_batchnorm_gives_the_row_weighted_mean_and_leaves_other_layers_alone():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    first = keras.layers.BatchNormalization(momentum=0.99, name="recomputed")
    second = keras.layers.BatchNormalization(momentum=0.99, name="left_alone")
    model = keras.Model(inputs, second(keras.layers.Dense(3)(first(inputs))))
    rng = np.random.default_rng(1)
    data = (rng.normal(size=(50, 4)) * [1, 2, 3, 4] + [5, -1, 0, 2]).astype("float32")
    batches = [data[i:i + 16] for i in range(0, 50, 16)]  # 16, 16, 16, 2 rows
    untouched = keras.ops.convert_to_numpy(second.moving_mean).copy()
    assert recompute_batchnorm(model, batches, [first]) == 50
    np.testing.assert_allclose(keras.ops.convert_to_numpy(first.moving_mean), data.mean(axis=0), rtol=1e-5)
    expected_var = sum(len(b) * b.var(axis=0) for b in batches) / 50  # the batches' variances, by rows
    np.testing.assert_allclose(keras.ops.convert_to_numpy(first.moving_variance), expected_var, rtol=1e-4)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(second.moving_mean), untouched)
    assert first.momentum == second.momentum == 0.99
    assert [layer.name for layer in batchnorm_layers(model)] == ["recomputed", "left_alone"]


# Through train_model ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split(tiny_image_dir):
    from models.data import load_data

    return load_data(make_spec(tiny_image_dir))


def _load_weights(spec, path) -> keras.Model:
    """`build_model(spec)` with a run's weights file or checkpoint loaded (`models.saving.load_weights_into`)."""
    from models.build import build_model
    from models.saving import load_weights_into

    model = build_model(spec, 3)
    load_weights_into(model, path)
    return model


def _load_run(spec, run_dir) -> keras.Model:
    """The kept weights of the run folder `run_dir`, as `load_run` loads them (`models.build.load_run_model`)."""
    from models.build import load_run_model
    from models.names import run_weights_path

    return load_run_model(spec, 3, run_weights_path(run_dir))


def _val_loss(model, split) -> float:
    from models.data import make_dataset

    model.compile(loss="sparse_categorical_crossentropy")
    return model.evaluate(make_dataset(split.val, 32, 8), verbose=0, return_dict=True)["loss"]


@pytest.mark.slow
@pytest.mark.parametrize("cache", [True, False], ids=["activation_cache", "images"])
def test_train_model_with_ema_validates_keeps_checkpoints_and_saves_the_averaged_weights(
        split, base_weights_file, tmp_path, cache):
    """With a pretrained base the head phase trains on cached features (or on images): either way the
    weights validated each epoch, kept as best, checkpointed and saved are the averaged ones, and they
    are not the raw weights a run without `ema` ends with (same seed, same steps)."""
    from models.build import build_model
    from models.training import train_model

    spec = make_spec(split.data_dir, weights=base_weights_file, epochs=3, ema=0.9, activation_cache=cache,
                     base_kwargs={"dropout": 0.0}, dropout=0.0, keep_checkpoints=None)
    model = build_model(spec, 3)
    result = train_model(model, split, spec, tmp_path / "ema", verbose=0)
    assert result.weight_averaging == {"method": "ema", "applied": True, "momentum": 0.9, "phases": ["head"]}
    assert (result.activation_cache["head"]["status"] in ("built", "hit")) is cache
    saved = _load_run(spec, tmp_path / "ema")
    best = tmp_path / "ema" / "checkpoints" / f"epoch_{result.best_epoch}.trained_weights.h5"
    for mine, theirs in zip(saved.get_weights(), _load_weights(spec, best).get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    # the validation figure of every epoch is that of its checkpoint: the averaged weights were validated
    for epoch, recorded in enumerate(result.history["head"]["val_loss"], start=1):
        checkpoint = _load_weights(spec, tmp_path / "ema" / "checkpoints" / f"epoch_{epoch}.trained_weights.h5")
        assert _val_loss(checkpoint, split) == pytest.approx(recorded, rel=1e-4)

    plain = build_model(spec.model_copy(update={"ema": None}), 3)
    train_model(plain, split, spec.model_copy(update={"ema": None, "early_stopping_patience": None}),
                tmp_path / "plain", verbose=0)
    last = tmp_path / "plain" / "checkpoints" / "epoch_3.trained_weights.h5"  # the raw weights of the last step
    raw = _load_weights(spec, last).layers[-1].get_weights()
    assert max(np.abs(a - b).max() for a, b in zip(saved.layers[-1].get_weights(), raw)) > 1e-4


def _trainable_paths(spec, model) -> list[str]:
    from models.training import resolve_fine_tune_layers, unfreeze_base

    unfreeze_base(model, resolve_fine_tune_layers(model, spec), unfreeze_batchnorm=spec.unfreeze_batchnorm)
    return [variable.path for variable in model.trainable_variables]


@pytest.mark.slow
def test_swa_saves_the_mean_of_the_last_epochs_and_recomputes_batchnorm(split, base_weights_file, tmp_path):
    from models.build import build_model
    from models.data import make_dataset
    from models.training import train_model

    spec = make_spec(split.data_dir, weights=base_weights_file, epochs=1, fine_tune_layers=1.0,
                     fine_tune_epochs=3, swa_epochs=2, unfreeze_batchnorm=True, fine_tune_learning_rate=1e-2,
                     activation_cache=False, keep_checkpoints=None)
    model = build_model(spec, 3)
    result = train_model(model, split, spec, tmp_path, verbose=0)
    averaging = result.weight_averaging
    assert averaging["method"] == "swa" and averaging["applied"] and averaging["epochs"] == [3, 4]
    assert (result.best_epoch, result.best_phase, result.epochs_run) == (4, "fine_tune", 4)
    assert averaging["batchnorm_rows"] == len(split.train)
    assert "block1_bn1" in averaging["batchnorm_recomputed"]

    saved = _load_run(spec, tmp_path)
    saved_by_path = {v.path: keras.ops.convert_to_numpy(v) for v in saved.weights}
    epochs = {k: _load_weights(spec, tmp_path / "checkpoints" / f"epoch_{k}.trained_weights.h5") for k in (3, 4)}
    paths = _trainable_paths(spec, build_model(spec, 3))
    assert any("block1_conv1" in path for path in paths)
    for path in paths:
        mean = np.mean([{v.path: keras.ops.convert_to_numpy(v) for v in m.weights}[path] for m in epochs.values()],
                       axis=0)
        np.testing.assert_allclose(saved_by_path[path], mean, rtol=1e-5, atol=1e-6, err_msg=path)
    # BatchNorm statistics: recomputed for the averaged weights, no longer those of the last epoch
    last = {v.path: keras.ops.convert_to_numpy(v) for v in epochs[4].weights}
    moving = [p for p in saved_by_path if p.endswith("moving_mean")]
    assert moving and all(not np.allclose(saved_by_path[p], last[p]) for p in moving)
    # the first BatchNorm's input is the first convolution of the images (no dropout before it): its
    # moving mean is now exactly the mean of that convolution's outputs over the training images
    base = saved.get_layer("base")
    conv = keras.Model(base.input, base.get_layer("block1_conv1").output)
    features = np.concatenate([conv(keras.ops.divide(images, 255.0)) for images, _ in
                               make_dataset(split.train, spec.image_size, 8)])
    np.testing.assert_allclose(saved_by_path["block1_bn1/moving_mean"],
                               features.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    # the whole base trained: the full model is kept; a warm start (or predict) from it gets the averaged model
    assert (tmp_path / "model.keras").is_file() and not (tmp_path / "trained_weights.h5").exists()
    warm = _load_weights(spec, tmp_path / "model.keras")
    images = next(iter(make_dataset(split.test, spec.image_size, 8)))[0]
    np.testing.assert_allclose(warm.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)


@pytest.mark.slow
def test_swa_on_cached_features_recomputes_only_the_batchnorm_above_the_cut(split, base_weights_file, tmp_path):
    """Fine-tuning the second block trains on the stored outputs of the first: the average covers the top
    part's weights, and only the second block's BatchNorm (which trained) gets new statistics."""
    from models.build import build_model
    from models.training import train_model

    spec = make_spec(split.data_dir, weights=base_weights_file, epochs=1, fine_tune_layers=5,
                     fine_tune_epochs=2, swa_epochs=2, unfreeze_batchnorm=True, fine_tune_learning_rate=1e-2,
                     keep_checkpoints=None)
    model = build_model(spec, 3)
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights if "block1_bn1" in v.path}
    result = train_model(model, split, spec, tmp_path, verbose=0)
    assert result.activation_cache["fine_tune"]["status"] in ("built", "hit")
    averaging = result.weight_averaging
    assert averaging["epochs"] == [2, 3] and averaging["batchnorm_recomputed"] == ["block2_bn1"]
    saved = {v.path: keras.ops.convert_to_numpy(v) for v in _load_run(spec, tmp_path).weights}
    epochs = [{v.path: keras.ops.convert_to_numpy(v) for v in _load_weights(
        spec, tmp_path / "checkpoints" / f"epoch_{k}.trained_weights.h5").weights} for k in (2, 3)]
    for path in _trainable_paths(spec, build_model(spec, 3)):
        np.testing.assert_allclose(saved[path], (epochs[0][path] + epochs[1][path]) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(saved["block2_bn1/moving_mean"], epochs[1]["block2_bn1/moving_mean"])
    for path, value in before.items():  # frozen below the cut: untouched
        np.testing.assert_array_equal(saved[path], value)
