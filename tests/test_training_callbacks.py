"""Training controls: label smoothing, early-stopping and checkpoint monitors, the k best
checkpoints, per-phase schedules and warm-up, `epochs: 0`, `fine_tune_layers` as a fraction or
`from_layer`, BatchNorm unfreezing, `jit_compile` and `precision`; the public callbacks and
schedules `models.training.loop` assembles, one at a time.

Real Keras on the tiny generated images (3 classes x 12, 18 training images: 3 steps an epoch at
batch size 8) with the 'pretrained' `simple_cnn_small` of `base_weights_file`, whose runs freeze
the base and train on cached activations.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pydantic
import pytest
import tensorflow as tf

from models.training import callbacks as training_callbacks, fine_tuning, loop as training_loop, schedules
from models import ExperimentSpec, ModelConfigError
from models.build import build_model
from models.cache import split_model
from models.data import load_data, make_dataset
from models.names import checkpoint_path
from models.saving import load_weights_into
from models.training import monitor_of, resolve_fine_tune_layers, set_precision_policy, train_model, unfreeze_base

NO_GPU = not tf.config.list_physical_devices("GPU")
STEPS = 3
"""Training steps an epoch: ceil(18 images / batch size 8)."""


def make_spec(data_dir, **overrides) -> ExperimentSpec:
    params = dict(data_dir=str(data_dir), base="simple_cnn_small", weights=None, image_size=32,
                  val_fraction=0.25, test_fraction=0.25, dense_units=[16], epochs=1,
                  batch_size=8, early_stopping_patience=None, seed=0)
    return ExperimentSpec(**{**params, **overrides})


@pytest.fixture(scope="module")
def split(tiny_image_dir):
    data = load_data(make_spec(tiny_image_dir))
    assert math.ceil(len(data.train) / 8) == STEPS
    return data


@pytest.fixture
def pretrained(split, base_weights_file, tmp_path):
    """`make_spec` with the 'pretrained' base and this test's own cache folder."""
    def spec(**overrides) -> ExperimentSpec:
        return make_spec(split.data_dir, weights=base_weights_file, cache_dir=str(tmp_path / "cache"),
                         base_kwargs={"dropout": 0.0}, **overrides)
    return spec


# Validation of the parameters ------------------------------------------------------------


def test_defaults_keep_todays_behaviour():
    spec = ExperimentSpec()
    assert (spec.label_smoothing, spec.warmup_epochs, spec.early_stopping_monitor, spec.checkpoint_monitor,
            spec.keep_best_checkpoints, spec.fine_tune_lr_schedule, spec.unfreeze_batchnorm,
            spec.jit_compile, spec.precision, spec.fine_tune_layers) == (
        0.0, 0, "val_loss", "val_loss", None, None, False, "auto", "float32", 0)
    assert not spec.fine_tunes
    assert spec.keep_checkpoints == 0  # the best epoch's weights are the run's weights file: no per-epoch copy


@pytest.mark.parametrize("overrides", [
    dict(epochs=0, fine_tune_layers=2, fine_tune_epochs=1),
    dict(fine_tune_layers=0.3, fine_tune_epochs=1),
    dict(fine_tune_layers=1.0, fine_tune_epochs=1),
    dict(fine_tune_layers={"from_layer": "block5_conv1"}, fine_tune_epochs=1),
    dict(label_smoothing=0.1, warmup_epochs=2, epochs=3, early_stopping_monitor="val_weighted_recall",
         checkpoint_monitor="val_accuracy", keep_checkpoints=0, keep_best_checkpoints=2,
         jit_compile="auto", precision="mixed_bfloat16"),
    dict(fine_tune_layers=4, fine_tune_epochs=3, fine_tune_lr_schedule="cosine", unfreeze_batchnorm=True,
         warmup_epochs=2, epochs=3),
])
def test_good_values_are_accepted_and_round_trip(overrides):
    spec = ExperimentSpec(weights="imagenet", **overrides)
    assert spec.fine_tunes == ("fine_tune_layers" in overrides)
    assert ExperimentSpec.model_validate(spec.model_dump(mode="json")) == spec


@pytest.mark.parametrize("overrides, match", [
    (dict(epochs=0), r"epochs=0 skips the head phase and needs fine-tuning"),
    (dict(epochs=-1), r"greater than or equal to 0"),
    (dict(weights=None, fine_tune_layers=3, fine_tune_epochs=1),
     r"fine_tune_layers=3 with weights=None: a base with random weights is trained whole"),
    (dict(weights=None, base="simple_cnn_medium", fine_tune_layers=0.5, fine_tune_epochs=1), r"weights=None"),
    (dict(fine_tune_layers=1.5, fine_tune_epochs=1), r"got 1.5, expected an int >= 0 .* a float in \[0, 1\]"),
    (dict(fine_tune_layers=4.0, fine_tune_epochs=1), r"for a layer count give an int \(4\)"),
    (dict(fine_tune_layers=-2, fine_tune_epochs=1), r"got -2, expected an int >= 0"),
    (dict(fine_tune_layers=True, fine_tune_epochs=1), r"got True, expected an int"),
    (dict(fine_tune_layers="3", fine_tune_epochs=1), r"got '3', expected an int"),
    (dict(fine_tune_layers={"layer": "block5_conv1"}, fine_tune_epochs=1),
     r"unknown key fine_tune_layers.layer; allowed keys of fine_tune_layers: from_layer"),
    (dict(fine_tune_layers={"from_layer": 5}, fine_tune_epochs=1), r"from_layer: Input should be a valid string"),
    (dict(fine_tune_layers=0.3), r"needs fine_tune_epochs >= 1"),
    (dict(early_stopping_monitor="val_recall"), r"'val_loss', 'val_accuracy' or 'val_weighted_recall'"),
    (dict(checkpoint_monitor="loss"), r"'val_loss', 'val_accuracy' or 'val_weighted_recall'"),
    (dict(fine_tune_lr_schedule="linear"), r"'step', 'plateau' or 'cosine'"),
    (dict(precision="float16"), r"'float32', 'mixed_float16' or 'mixed_bfloat16'"),
    (dict(label_smoothing=1.0), r"less than 1"),
    (dict(label_smoothing=-0.1), r"greater than or equal to 0"),
    (dict(label_smoothing="0.1"), r"valid number"),
    (dict(warmup_epochs=3, epochs=3), r"warmup_epochs=3 needs epochs > 3"),
    (dict(warmup_epochs=2, epochs=5, fine_tune_layers=2, fine_tune_epochs=2),
     r"warmup_epochs=2 needs fine_tune_epochs > 2"),
    (dict(keep_checkpoints=None, keep_best_checkpoints=2),
     r"keep_best_checkpoints=2 with keep_checkpoints=None: every checkpoint"),
    (dict(keep_checkpoints=0, keep_best_checkpoints=0), r"greater than or equal to 1"),
    (dict(jit_compile="yes"), r"valid boolean"),
    (dict(unfreeze_batchnorm=1), r"valid boolean"),
])
def test_bad_values_are_refused_with_what_is_allowed(overrides, match):
    with pytest.raises(pydantic.ValidationError, match=match):
        ExperimentSpec(**{"weights": "imagenet", **overrides})


def test_weighted_recall_follows_val_accuracy():
    assert monitor_of("val_loss") == ("val_loss", "min")
    assert monitor_of("val_accuracy") == monitor_of("val_weighted_recall") == ("val_accuracy", "max")
    with pytest.raises(ValueError, match="expected one of 'val_loss'"):
        monitor_of("accuracy")


@pytest.mark.parametrize("name, key, mode", [
    ("val_loss", "val_loss", "min"), ("val_accuracy", "val_accuracy", "max"),
    ("val_weighted_recall", "val_accuracy", "max")])
def test_early_stopping_follows_the_monitor_and_its_mode(name, key, mode):
    spec = ExperimentSpec(early_stopping_monitor=name, early_stopping_patience=2)
    callback = training_callbacks.early_stopping_callback(spec)
    assert (callback.monitor, callback.mode, callback.patience) == (key, mode, 2)


# The callbacks and schedules the loop assembles, one at a time ------------------------------


@pytest.mark.parametrize("values, mode, expected", [
    ([3.0, 1.0, 1.0], "min", 1),  # a tie: the first
    ([np.nan, 0.5, 0.7, 0.7], "max", 2),
    ([-np.inf, 2.0], "max", 1),  # non-finite ranks last
    ([np.nan, np.inf], "min", 0),  # none finite
    ([], "max", 0),
])
def test_best_index_is_the_first_best_finite_value(values, mode, expected):
    assert training_callbacks.best_index(values, mode) == expected


def _tiny_model(name=None) -> keras.Model:
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)], name=name)


def test_best_weights_keeps_the_first_best_finite_epochs_weights():
    model = _tiny_model()
    tracker = training_callbacks.BestWeights(model, "val_accuracy")
    kernels = {}
    for epoch, value in enumerate([np.nan, 0.5, 0.5, 0.25]):
        model.layers[0].kernel.assign(np.full((2, 1), float(epoch)))
        kernels[epoch] = model.get_weights()
        tracker.on_epoch_end(epoch, {"val_accuracy": value})
        if epoch == 0:
            assert tracker.weights is None
    assert tracker.best == -0.5
    for kept, expected in zip(tracker.weights, kernels[1]):
        np.testing.assert_array_equal(kept, expected)


def test_epoch_timer_adds_the_epochs_seconds():
    timer, logs = training_callbacks.EpochTimer(), {}
    timer.on_epoch_begin(0)
    timer.on_epoch_end(0, logs)
    assert 0 <= logs["epoch_s"] < 60


@pytest.mark.parametrize("keep_last, keep_best, keeper, written", [
    (0, None, False, False),  # the default: no checkpoint written
    (None, None, False, True),  # all kept: nothing to delete
    (2, None, True, True),
    (0, 1, True, True),
])
def test_checkpoint_keeper_and_callbacks_follow_keep_checkpoints(tmp_path, keep_last, keep_best, keeper, written):
    spec = ExperimentSpec(keep_checkpoints=keep_last, keep_best_checkpoints=keep_best)
    found = training_callbacks.checkpoint_keeper(tmp_path, spec)
    assert isinstance(found, training_callbacks.KeepCheckpoints) if keeper else found is None
    callbacks = training_callbacks.checkpoint_callbacks(_tiny_model(), tmp_path, spec, found)
    assert [type(c).__name__ for c in callbacks] == (
        ["TrainedWeightsCheckpoint"] * written + ["KeepCheckpoints"] * keeper)


def test_keep_checkpoints_deletes_all_but_the_last_and_the_best(tmp_path):
    keeper = training_callbacks.KeepCheckpoints(tmp_path, keep_last=1, keep_best=2, monitor="val_loss")
    for epoch, value in enumerate([0.5, 0.3, np.nan, 0.3, 0.9]):
        path = checkpoint_path(tmp_path, epoch + 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        keeper.on_epoch_end(epoch, {"val_loss": value})
    assert keeper.kept_epochs() == {2, 4, 5}  # the 2 best (a tie: both), the last
    assert sorted(p.name for p in checkpoint_path(tmp_path, 1).parent.iterdir()) == [
        checkpoint_path(tmp_path, k).name for k in (2, 4, 5)]


@pytest.mark.parametrize("optimizer, ema, expected", [
    ("adam", None, "Adam"), ("sgd", None, "SGD"), ("adamw", 0.99, "AdamW")])
def test_make_optimizer_follows_the_spec(optimizer, ema, expected):
    made = schedules.make_optimizer(ExperimentSpec(optimizer=optimizer, ema=ema, momentum=0.5), 0.25)
    assert type(made).__name__ == expected and float(made.learning_rate) == 0.25
    assert made.use_ema is (ema is not None)
    if optimizer == "sgd":
        assert made.momentum == 0.5


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_gradient_clip_norm_bounds_each_steps_gradients_by_their_global_norm(optimizer):
    """One step on two variables whose gradients are (3, 4) and (12,): global norm 13. SGD at rate 1 without
    momentum moves them by the gradients, clipped to norm 1: by (3, 4, 12) / 13. Adam normalises each step, so
    a clip shows only as the same step; unclipped SGD moves by the whole gradients."""
    def step(**overrides):
        spec = ExperimentSpec(optimizer=optimizer, momentum=0.0, **overrides)
        made = schedules.make_optimizer(spec, 1.0)
        a, b = keras.Variable([0.0, 0.0]), keras.Variable([0.0])
        made.apply([tf.constant([3.0, 4.0]), tf.constant([12.0])], [a, b])
        return np.concatenate([a.numpy(), b.numpy()])

    clipped = step(gradient_clip_norm=1.0)
    assert schedules.make_optimizer(ExperimentSpec(gradient_clip_norm=1.0), 0.1).global_clipnorm == 1.0
    assert schedules.make_optimizer(ExperimentSpec(), 0.1).global_clipnorm is None
    if optimizer == "sgd":
        np.testing.assert_allclose(clipped, -np.array([3.0, 4.0, 12.0]) / 13.0, rtol=1e-6)
        np.testing.assert_allclose(step(), -np.array([3.0, 4.0, 12.0]), rtol=1e-6)
    else:  # Adam's first step is -rate * g / (|g| + eps) per element, whatever the scale of g
        np.testing.assert_allclose(clipped, step(), rtol=1e-4)
    with pytest.raises(pydantic.ValidationError, match="greater than 0"):
        ExperimentSpec(gradient_clip_norm=0.0)


@pytest.mark.parametrize("schedule, warmup_epochs, rate_type, callbacks", [
    (None, 0, float, []),
    (None, 1, float, ["LinearWarmup"]),
    ("step", 1, float, ["LearningRateScheduler", "LinearWarmup"]),
    ("plateau", 0, float, ["ReduceLROnPlateau"]),
    ("cosine", 1, keras.optimizers.schedules.CosineDecay, []),  # CosineDecay's own warm-up
])
def test_phase_schedule_gives_the_rate_and_callbacks(schedule, warmup_epochs, rate_type, callbacks):
    spec = ExperimentSpec(epochs=3, warmup_epochs=warmup_epochs, lr_step_milestones=[1])
    rate, found = schedules.phase_schedule(spec, schedule, 0.1, 3, STEPS, 0)
    assert isinstance(rate, rate_type) and [type(c).__name__ for c in found] == callbacks


def test_check_precision_refuses_a_base_built_under_another_policy():
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        base = _tiny_model("base")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model = keras.Sequential([base], name="model")
    assert fine_tuning.base_of(model) is base and fine_tuning.base_of(base) is base
    with pytest.raises(ModelConfigError, match=r"built with dtype policy 'mixed_bfloat16', the spec asks 'float32'"):
        schedules.check_precision(model, ExperimentSpec())
    schedules.check_precision(_tiny_model(), ExperimentSpec())  # built under float32


# fine_tune_layers: a count, a fraction or from_layer ----------------------------------------


# simple_cnn_small: input, then 10 layers: block1_{conv1, bn1, relu1, pool, dropout}, block2_{...}
@pytest.mark.parametrize("value, expected", [
    (0, 0), (4, 4), (99, 10),
    (0.0, 0), (0.3, 3), (0.25, 3), (0.24, 2), (0.01, 1), (1.0, 10),
    ({"from_layer": "block2_conv1"}, 5), ({"from_layer": "block2_dropout"}, 1),
    ({"from_layer": "block1_conv1"}, 10),
])
def test_fine_tune_layers_resolve_to_a_count(split, base_weights_file, value, expected):
    spec = make_spec(split.data_dir, weights=base_weights_file, fine_tune_layers=value,
                     fine_tune_epochs=1 if value else 0)
    model = build_model(spec, 3)
    assert resolve_fine_tune_layers(model, spec) == expected
    assert resolve_fine_tune_layers(model.get_layer("base"), spec) == expected  # the base itself too
    if isinstance(value, dict) and expected < 10:  # the cache cuts just below that layer
        base = model.get_layer("base")
        below = base.layers[[layer.name for layer in base.layers].index(value["from_layer"]) - 1]
        assert split_model(model, spec, expected).cut_layer == below.name


def test_unknown_from_layer_lists_close_names(split, base_weights_file, tmp_path):
    spec = make_spec(split.data_dir, weights=base_weights_file, fine_tune_layers={"from_layer": "block2_conv"},
                     fine_tune_epochs=1)
    model = build_model(spec, 3)
    with pytest.raises(ModelConfigError, match=r"from_layer: got 'block2_conv', not a layer of base "
                                               r"simple_cnn_small \(10 layers.*close names: 'block2_conv1'"):
        resolve_fine_tune_layers(model, spec)
    with pytest.raises(ModelConfigError, match="block2_conv"):  # before anything runs or is written
        train_model(model, load_data(spec), spec, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()


def test_split_model_takes_only_a_resolved_count(split, base_weights_file):
    spec = make_spec(split.data_dir, weights=base_weights_file, fine_tune_layers=0.3, fine_tune_epochs=1)
    with pytest.raises(TypeError, match="resolve_fine_tune_layers"):
        split_model(build_model(spec, 3), spec, spec.fine_tune_layers)


@pytest.mark.parametrize("unfreeze_batchnorm, expected", [
    (False, ["block2_conv1", "block2_relu1", "block2_pool", "block2_dropout"]),
    (True, ["block2_conv1", "block2_bn1", "block2_relu1", "block2_pool", "block2_dropout"]),
])
def test_unfreeze_batchnorm(base_weights_file, unfreeze_batchnorm, expected):
    model = build_model(make_spec("x", weights=base_weights_file), 3)
    assert unfreeze_base(model, 5, unfreeze_batchnorm=unfreeze_batchnorm) == expected


@pytest.mark.parametrize("unfreeze_batchnorm", [False, True])
def test_batchnorm_statistics_move_in_fit_only_when_unfrozen(base_weights_file, unfreeze_batchnorm):
    """What the docstrings of build_model and unfreeze_base say: the base is called with training=False,
    yet Keras 3 runs an unfrozen BatchNormalization layer in training mode during fit."""
    model = build_model(make_spec("x", weights=base_weights_file), 3)
    unfreeze_base(model, 5, unfreeze_batchnorm=unfreeze_batchnorm)
    batchnorm = model.get_layer("base").get_layer("block2_bn1")
    before = [w.numpy().copy() for w in (batchnorm.moving_mean, batchnorm.moving_variance)]
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    images = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    model.fit(images, np.zeros(16, dtype="int32"), batch_size=8, epochs=1, verbose=0)
    after = [w.numpy() for w in (batchnorm.moving_mean, batchnorm.moving_variance)]
    moved = any(not np.allclose(b, a) for b, a in zip(before, after))
    assert moved is unfreeze_batchnorm


# Loss: label smoothing ------------------------------------------------------------------


def test_label_smoothing_changes_the_loss_on_the_same_batch(split):
    spec = make_spec(split.data_dir)
    model = build_model(spec, 3)
    model.get_layer("predictions").bias.assign([4.0, 0.0, -4.0])  # confident, unlike a fresh model's ~1/3 each
    images, labels = next(iter(make_dataset(split.train, 32, 8)))
    probabilities = np.clip(model.predict(images, verbose=0), 1e-7, 1.0)
    one_hot = np.eye(3, dtype="float32")[labels.numpy()]
    losses = {}
    for smoothing in (0.0, 0.2):
        training_loop.compile_model(model, spec.model_copy(update={"label_smoothing": smoothing}), 1e-3)
        targets = one_hot if smoothing else labels  # sparse labels without smoothing, as today
        losses[smoothing] = model.evaluate(images, targets, verbose=0, return_dict=True)["loss"]
    smoothed = (1 - 0.2) * one_hot + 0.2 / 3  # Szegedy et al. 2016, section 7
    assert losses[0.0] == pytest.approx(np.mean(-np.log(probabilities[np.arange(8), labels.numpy()])), rel=1e-4)
    assert losses[0.2] == pytest.approx(np.mean(-(smoothed * np.log(probabilities)).sum(axis=1)), rel=1e-4)
    assert abs(losses[0.2] - losses[0.0]) > 0.1


@pytest.mark.parametrize("activation_cache", [True, False])
def test_label_smoothing_makes_the_labels_one_hot_on_both_paths(split, pretrained, activation_cache):
    for smoothing, shape in ((0.1, [None, 3]), (0.0, [None])):
        spec = pretrained(label_smoothing=smoothing, activation_cache=activation_cache)
        model = build_model(spec, 3)
        _, train_ds, val_ds, use = training_loop.phase_inputs(model, split, spec, 0)
        assert (use["status"] == "off") == (not activation_cache)
        for dataset in (train_ds, val_ds):
            assert dataset.element_spec[1].shape.as_list() == shape


# Precision and XLA ----------------------------------------------------------------------


@pytest.mark.skipif(not NO_GPU, reason="the refusal is for machines without a GPU")
@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_is_refused_without_a_gpu(split, precision, tmp_path):
    spec = make_spec(split.data_dir, precision=precision)
    with pytest.raises(ModelConfigError, match=rf"precision: got '{precision}' but TensorFlow sees no GPU: "
                                               r"on a CPU mixed precision is unsupported or slower"):
        set_precision_policy(spec)
    assert keras.mixed_precision.global_policy().name == "float32"
    model = build_model(make_spec(split.data_dir), 3)
    with pytest.raises(ModelConfigError, match="sees no GPU"):
        train_model(model, split, spec, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()


def test_build_model_sets_the_specs_policy_whatever_was_set_before(split, tmp_path):
    spec = make_spec(split.data_dir)
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        model = build_model(spec, 3)  # sets the spec's float32 policy itself
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}


@pytest.mark.parametrize("jit_compile", [False, True])
def test_jit_compile_reaches_compile(split, jit_compile):
    spec = make_spec(split.data_dir, jit_compile=jit_compile)
    model = build_model(spec, 3)
    training_loop.compile_model(model, spec, 1e-3)
    assert model.jit_compile is jit_compile


# Warm-up composed with the other schedules -------------------------------------------------


def test_warmup_ramps_per_step_and_keeps_a_plateau_reduction():
    """4 warm-up steps (2 epochs of 2) at rate 0.1; a plateau that halves the rate after every epoch but the first."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    per_step = []
    callbacks = [
        keras.callbacks.ReduceLROnPlateau(monitor="loss", min_delta=1e9, patience=1, factor=0.5),
        training_callbacks.LinearWarmup(4),
        keras.callbacks.LambdaCallback(
            on_train_batch_begin=lambda batch, logs: per_step.append(training_callbacks.learning_rate_of(model))),
    ]
    history = model.fit(np.ones((8, 2)), np.ones(8), batch_size=4, epochs=4, callbacks=callbacks, verbose=0)
    # step i < 4 trains at 0.1 * i / 4; the reduction after epoch 2 (from 0.075) halves the un-warmed rate
    np.testing.assert_allclose(per_step, [0.0, 0.025, 0.05, 0.075, 0.05, 0.05, 0.025, 0.025], rtol=1e-5)
    np.testing.assert_allclose(history.history["learning_rate"], [0.025, 0.075, 0.05, 0.025], rtol=1e-5)


# Training runs --------------------------------------------------------------------------


def _base_kernel(model, name="block2_conv1") -> np.ndarray:
    return keras.ops.convert_to_numpy(model.get_layer("base").get_layer(name).kernel).copy()


@pytest.mark.slow
def test_epochs_0_fine_tunes_the_base_from_the_first_epoch(split, pretrained, tmp_path):
    spec = pretrained(epochs=0, fine_tune_layers={"from_layer": "block2_conv1"}, fine_tune_epochs=2,
                      fine_tune_learning_rate=1e-2, keep_checkpoints=None)
    model = build_model(spec, 3)
    before = {name: _base_kernel(model, name) for name in ("block1_conv1", "block2_conv1")}
    result = train_model(model, split, spec, tmp_path / "run", verbose=0)

    assert list(result.history) == ["fine_tune"] and result.epochs_run == 2
    assert result.best_phase == "fine_tune" and result.fine_tune_layers_resolved == 5
    assert result.activation_cache["fine_tune"]["cut_layer"] == "block1_dropout"
    after_epoch_1 = build_model(spec, 3)
    load_weights_into(after_epoch_1, checkpoint_path(tmp_path / "run", 1))
    assert not np.allclose(_base_kernel(after_epoch_1), before["block2_conv1"])  # trained in epoch 1
    np.testing.assert_array_equal(_base_kernel(after_epoch_1, "block1_conv1"), before["block1_conv1"])  # frozen
    assert result.to_dict()["fine_tune_layers_resolved"] == 5


def _best_epochs(values: list[float], mode: str, k: int) -> list[int]:
    """The k best 1-based epochs, the earlier first on a tie (independent of the code under test)."""
    return sorted(range(1, len(values) + 1), key=lambda e: (values[e - 1] if mode == "min" else -values[e - 1], e))[:k]


@pytest.mark.slow
@pytest.mark.slow  # trains a model, twice
@pytest.mark.parametrize("monitor, keep_last, stop, fine_tune_rate", [
    # only the 2 best by val_loss: a fine-tuning rate of 1.0 wrecks the model, so not the last 2
    ("val_loss", 0, None, 1.0),
    # the last one and the 2 best by accuracy (ties: the earlier epoch); early stopping on it
    ("val_weighted_recall", 1, "val_accuracy", 1e-2),
])
def test_the_k_best_checkpoints_are_kept(split, pretrained, tmp_path, monitor, keep_last, stop, fine_tune_rate):
    spec = pretrained(epochs=4, learning_rate=3e-2, fine_tune_layers=5, fine_tune_epochs=2,
                      fine_tune_learning_rate=fine_tune_rate, keep_checkpoints=keep_last, keep_best_checkpoints=2,
                      checkpoint_monitor=monitor, early_stopping_patience=1 if stop else None,
                      early_stopping_monitor=stop or "val_loss")
    result = train_model(build_model(spec, 3), split, spec, tmp_path, verbose=0)

    key, mode = ("val_loss", "min") if monitor == "val_loss" else ("val_accuracy", "max")
    values = [v for phase in result.history.values() for v in phase[key]]
    expected = set(_best_epochs(values, mode, 2)) | ({len(values)} if keep_last else set())
    left = {int(p.name.split("_")[1].split(".")[0]) for p in (tmp_path / "checkpoints").iterdir()}
    assert left == expected
    if not keep_last:  # the best are not simply the last ones, so the rule is the one tested
        assert expected != {len(values) - 1, len(values)}
    assert result.best_epoch == _best_epochs(values, mode, 1)[0]  # the kept weights follow the monitor too
    if stop:  # EarlyStopping in max mode, patience 1: each phase stops after its first epoch without a new maximum
        for phase in result.history.values():
            accuracy = phase["val_accuracy"]
            stops = [e for e in range(1, len(accuracy)) if accuracy[e] <= max(accuracy[:e])]
            assert len(accuracy) == (stops[0] + 1 if stops else len(accuracy))
        assert len(result.history["head"]["val_accuracy"]) <= 4


@pytest.mark.slow
def test_warmup_then_schedules_per_phase(split, pretrained, tmp_path):
    """Head: linear warm-up over 2 epochs at no schedule; fine-tuning: cosine with its own warm-up."""
    spec = pretrained(epochs=3, learning_rate=1e-2, warmup_epochs=2, label_smoothing=0.1,
                      fine_tune_layers=5, fine_tune_epochs=3, fine_tune_learning_rate=1e-3,
                      fine_tune_lr_schedule="cosine")
    result = train_model(build_model(spec, 3), split, spec, tmp_path, verbose=0)

    # step i of the warm-up trains at rate * i / 6; an epoch logs its last step's rate
    head = result.history["head"]["learning_rate"]
    np.testing.assert_allclose(head, [1e-2 * 2 / 6, 1e-2 * 5 / 6, 1e-2], rtol=1e-5)
    assert head[0] < spec.learning_rate
    # CosineDecay(0, warmup_target=1e-3, warmup_steps=6), logged after each epoch's steps: 3, 6, 9
    fine_tune = result.history["fine_tune"]["learning_rate"]
    np.testing.assert_allclose(fine_tune[:2], [1e-3 * 3 / 6, 1e-3], rtol=1e-5)
    assert fine_tune[2] == pytest.approx(0.0, abs=1e-9)
    assert fine_tune[0] < spec.fine_tune_learning_rate
    assert result.activation_cache["head"]["status"] == "built"  # label smoothing keeps the cache


@pytest.mark.slow
def test_warmup_with_a_step_schedule_counted_per_phase(split, pretrained, tmp_path):
    spec = pretrained(epochs=3, learning_rate=1e-2, warmup_epochs=1, lr_schedule="step",
                      lr_step_milestones=[1], lr_step_gamma=0.5, fine_tune_layers=5, fine_tune_epochs=2,
                      fine_tune_learning_rate=1e-3, fine_tune_lr_schedule="step")
    result = train_model(build_model(spec, 3), split, spec, tmp_path, verbose=0)

    # warm-up over epoch 1 (steps 0, 1, 2 of 3), then the milestone halves the rate at epoch 2 of each phase
    np.testing.assert_allclose(result.history["head"]["learning_rate"], [1e-2 * 2 / 3, 5e-3, 5e-3], rtol=1e-5)
    np.testing.assert_allclose(result.history["fine_tune"]["learning_rate"], [1e-3 * 2 / 3, 5e-4], rtol=1e-5)


@pytest.mark.slow
def test_mixed_precision_trains_where_a_gpu_is_visible(split, pretrained, tmp_path, monkeypatch):
    """The policy path, on this machine's CPU with a GPU faked for the check (the numbers are not timed)."""
    devices = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: ["a GPU"] if kind == "GPU" else devices(kind))
    spec = pretrained(precision="mixed_float16", epochs=2, warmup_epochs=1, fine_tune_layers=0.5,
                      fine_tune_epochs=2)
    try:
        set_precision_policy(spec)  # what build_model(spec) does first
        model = build_model(spec, 3)
        result = train_model(model, split, spec, tmp_path, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("base").dtype_policy.name == "mixed_float16"
    assert model.get_layer("predictions").dtype_policy.name == "float32" and model.output.dtype == "float32"
    assert type(model.optimizer).__name__ == "LossScaleOptimizer"  # Keras wraps it for float16
    assert result.fine_tune_layers_resolved == 5 and result.activation_cache["fine_tune"]["status"] == "built"
    assert all(np.isfinite(v) for phase in result.history.values() for v in phase["val_loss"])
