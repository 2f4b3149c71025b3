"""Test-time augmentation: `models.evaluate.predict_with_tta`, the notebook's evaluation and the predict path."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from pydantic import ValidationError

from models import ExperimentSpec, build_model
from models.data import load_data, make_dataset
from models.evaluate import (CROP_CORNERS, TTA_CACHE_BYPASS, TTA_CROP_FRACTION, evaluate_model,
                             predict_with_tta, tta_transforms)
from runner import cli
from runner.errors import ConfigError
from runner.core.predict import evaluate_run, load_run, parse_tta
from runner.records import COMPLETED, RunRecord, sha256_file, write_record

RUN_ID = "20261121-134502-07748d93"


def _images(n=6, height=20, width=24, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(n, height, width, 3)).astype("float32")


def _pooling_model(seed=0) -> keras.Model:
    """Global average pooling of the raw pixels, then a dense softmax: invariant to mirror images."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(image))
    return keras.Model(image, keras.layers.Dense(3, activation="softmax")(x))


def _flatten_model(size=16, seed=0) -> keras.Model:
    """Flatten then dense: every pixel has its own weight, so mirroring changes the output."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((size, size, 3))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(image))
    return keras.Model(image, keras.layers.Dense(3, activation="softmax")(x))


# predict_with_tta ------------------------------------------------------------------------


@pytest.mark.slow  # runs Keras models
@pytest.mark.parametrize("tta", [["flip"], ["vflip"], ["flip", "vflip"]])
def test_tta_on_a_mirror_invariant_model_changes_nothing(tta):
    model, images = _pooling_model(), _images()
    plain = predict_with_tta(model, images)
    np.testing.assert_allclose(predict_with_tta(model, images, tta, batch_size=4), plain, rtol=1e-5)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(len(images), "int32"))).batch(4)
    np.testing.assert_allclose(predict_with_tta(model, dataset, tta), plain, rtol=1e-5)  # (images, labels) batches


@pytest.mark.slow  # runs Keras models
def test_tta_is_the_mean_of_the_softmax_over_the_views():
    model, images = _flatten_model(), _images(height=16, width=16)
    plain = model.predict(images, verbose=0)
    mirrored = model.predict(images[:, :, ::-1], verbose=0)
    flipped = predict_with_tta(model, images, ["flip"])
    assert np.abs(flipped - plain).max() > 1e-3  # not invariant: TTA changes the probabilities
    np.testing.assert_allclose(flipped, (plain + mirrored) / 2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(flipped.sum(axis=1), 1.0, atol=1e-5)
    assert flipped.dtype == np.float32 and flipped.shape == (6, 3)

    side = round(16 * TTA_CROP_FRACTION)  # 14: the corners and the centre, resized back to 16
    offsets = {"top_left": (0, 0), "top_right": (0, 2), "bottom_left": (2, 0), "bottom_right": (2, 2),
               "centre": (1, 1)}
    crops = [tf.image.resize(images[:, top:top + side, left:left + side], (16, 16)).numpy()
             for top, left in (offsets[c] for c in CROP_CORNERS)]
    views = [images, images[:, :, ::-1], *crops]
    expected = np.mean([model.predict(v, verbose=0) for v in views], axis=0)
    np.testing.assert_allclose(predict_with_tta(model, images, ["flip", "crop"], batch_size=4), expected,
                               rtol=1e-5, atol=1e-7)
    assert len(tta_transforms(["flip", "crop"])) == 7 and len(tta_transforms(None)) == 1


@pytest.mark.parametrize("tta, match", [(["mirror"], "mirror"), (["flip", "flip"], "distinct")])
def test_unknown_or_repeated_views_are_refused(tta, match):
    with pytest.raises(ValueError, match=match):
        predict_with_tta(_pooling_model(), _images(), tta)


@pytest.mark.parametrize("tta, match", [([], "non-empty"), (["flip", "flip"], "distinct"),
                                        (["mirror"], "'flip', 'vflip' or 'crop'"), ("flip", "list")])
def test_spec_refuses_bad_tta(tta, match):
    with pytest.raises(ValidationError, match=match):
        ExperimentSpec(tta=tta)
    assert ExperimentSpec().tta is None  # off by default
    assert ExperimentSpec(tta=["crop", "flip"]).model_dump(mode="json")["tta"] == ["crop", "flip"]


# The notebook's evaluation -------------------------------------------------------------


def _spec(data_dir, **overrides) -> ExperimentSpec:
    values = dict(data_dir=str(data_dir), base="simple_cnn_small", weights=None, image_size=32, epochs=1,
                  batch_size=8, dense_units=[8], val_fraction=0.25, test_fraction=0.25, seed=0)
    return ExperimentSpec(**{**values, **overrides})


@pytest.mark.slow  # runs Keras models
def test_evaluation_with_tta_reports_it_and_averages_both_splits(tiny_image_dir, tmp_path):
    spec = _spec(tiny_image_dir, tta=["flip"])
    data = load_data(spec)
    model = build_model(spec, len(data.class_names))
    result = evaluate_model(model, data, spec, tmp_path)
    assert result.tta == ["flip"] and not result.from_cache
    assert result.cache_bypass_reason == TTA_CACHE_BYPASS
    assert result.to_dict()["tta"] == ["flip"] and result.to_dict()["cache_bypass_reason"] == TTA_CACHE_BYPASS
    import pandas as pd

    expected = predict_with_tta(model, make_dataset(data.test, 32, 8), ["flip"])
    saved = pd.read_csv(tmp_path / "predictions.csv")
    np.testing.assert_allclose(saved[[f"prob_{c}" for c in data.class_names]].to_numpy(), expected, atol=1e-6)
    plain = model.predict(make_dataset(data.test, 32, 8), verbose=0)
    assert np.abs(expected - plain).max() > 1e-6  # the conv base is not mirror-invariant
    val = predict_with_tta(model, make_dataset(data.val, 32, 8), ["flip"])
    assert result.val_metrics["accuracy"] == pytest.approx(float((val.argmax(1) == data.val.labels).mean()))

    off = evaluate_model(model, data, spec.model_copy(update={"tta": None}), tmp_path / "off")
    assert off.tta is None and off.cache_bypass_reason is None
    assert set(off.to_dict()) == {"metrics", "val_metrics", "eval_s", "from_cache"}  # the record's section as before


@pytest.mark.slow  # runs Keras models
def test_tta_evaluation_bypasses_the_activation_cache(tiny_image_dir, base_weights_file, tmp_path):
    """A frozen base trains on cached activations; evaluation reads them, except with TTA."""
    from models import train_model

    spec = _spec(tiny_image_dir, weights=base_weights_file, activation_cache=True)
    data = load_data(spec)
    model = build_model(spec, len(data.class_names))
    training = train_model(model, data, spec, tmp_path / "run", verbose=0)
    assert training.activation_cache["head"]["status"] in ("built", "hit")
    cached = evaluate_model(model, data, spec, tmp_path / "cached")
    assert cached.from_cache and cached.tta is None
    with_tta = evaluate_model(model, data, spec.model_copy(update={"tta": ["flip"]}), tmp_path / "tta")
    assert not with_tta.from_cache and with_tta.tta == ["flip"]
    assert "full model" in with_tta.cache_bypass_reason


# runner/predict.py --------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_run(tiny_image_dir, tmp_path_factory):
    """A recorded run (untrained simple_cnn_small, `tta: [flip]`), as `load_run` reads it."""
    work = tmp_path_factory.mktemp("tta_run")
    spec = _spec(tiny_image_dir, tta=["flip"])
    data = load_data(spec)
    run_dir = work / "experiments" / RUN_ID
    run_dir.mkdir(parents=True)
    build_model(spec, len(data.class_names)).save(run_dir / "model.keras")
    record = RunRecord(
        run_id=RUN_ID, config_hash="ab" * 32, status=COMPLETED, started_at="2026-11-21T13:45:02+00:00",
        finished_at="2026-11-21T13:46:02+00:00", params=spec.model_dump(mode="json"), data=data.describe(),
        model={"base": "simple_cnn_small", "weights": None, "weights_source": "random",
               "trainable_params": 1, "total_params": 1, "model_file_sha256": sha256_file(run_dir / "model.keras")},
        paths={"model": f"../experiments/{RUN_ID}/model.keras",
               "predictions": f"../experiments/{RUN_ID}/predictions.csv"})
    write_record(record, work / "logs")
    return work


@pytest.mark.slow  # runs Keras models
def test_loaded_run_predicts_with_its_own_tta_unless_overridden(saved_run, tiny_image_dir):
    run = load_run(RUN_ID, logs_dir=saved_run / "logs")
    assert run.spec.tta == ["flip"] and run.tta_used() == ["flip"] and run.tta_used([]) == []
    images = _images(n=5, height=45, width=37)
    plain = run.model.predict(images, verbose=0)
    np.testing.assert_allclose(run.predict(images, tta=[]), plain, rtol=1e-6)
    np.testing.assert_allclose(run.predict(images), predict_with_tta(run.model, images, ["flip"]), rtol=1e-6)
    assert np.abs(run.predict(images) - plain).max() > 1e-6
    np.testing.assert_allclose(run.predict(images, tta=["vflip"]),
                               predict_with_tta(run.model, images, ["vflip"]), rtol=1e-6)

    folder = tiny_image_dir / "red"
    own, none = run.predict_paths([folder]), run.predict_paths([folder], tta=[])
    columns = [f"prob_{c}" for c in run.class_names]
    assert len(own) == len(none) == 12
    assert np.abs(own[columns].to_numpy() - none[columns].to_numpy()).max() > 1e-6

    evaluation = evaluate_run(run, tiny_image_dir, name="own")
    assert evaluation["tta"] == ["flip"]
    written = json.loads((saved_run / "experiments" / RUN_ID / "evaluations" / "own.json").read_text())
    assert written["tta"] == ["flip"] and written["n_images"] == 36
    assert evaluate_run(run, tiny_image_dir, name="plain", tta=[])["tta"] == []


@pytest.mark.parametrize("text, expected", [("flip", ["flip"]), ("flip, crop", ["flip", "crop"]),
                                            ("NONE", []), ("vflip,flip", ["vflip", "flip"])])
def test_parse_tta(text, expected):
    assert parse_tta(text) == expected


@pytest.mark.parametrize("text", ["flop", "flip,flip", "", "flip,", "none,flip"])
def test_parse_tta_refuses(text):
    with pytest.raises(ConfigError, match="--tta: got"):
        parse_tta(text)


@pytest.mark.slow  # runs Keras models
def test_cli_tta_option_overrides_the_runs_own(saved_run, tiny_image_dir, tmp_path):
    image = tiny_image_dir / "red" / "red_000.jpg"

    def predict(*options):
        out = tmp_path / f"predictions{len(list(tmp_path.iterdir()))}.csv"
        result = CliRunner().invoke(cli.nbsweep, ["predict", RUN_ID, str(image), "--logs-dir",
                                                  str(saved_run / "logs"), "--out", str(out), *options])
        assert result.exit_code == 0, result.output
        import pandas as pd

        return pd.read_csv(out).filter(like="prob_").to_numpy()

    run = load_run(RUN_ID, logs_dir=saved_run / "logs")
    own, none, both = predict(), predict("--tta", "none"), predict("--tta", "flip,vflip")
    columns = [f"prob_{c}" for c in run.class_names]
    np.testing.assert_allclose(own, run.predict_paths([image])[columns].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(none, run.predict_paths([image], tta=[])[columns].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(both, run.predict_paths([image], tta=["flip", "vflip"])[columns].to_numpy(),
                               atol=1e-6)
    assert np.abs(own - none).max() > 1e-6

    bad = CliRunner().invoke(cli.nbsweep, ["predict", RUN_ID, str(image), "--logs-dir", str(saved_run / "logs"),
                                           "--tta", "mirror"])
    assert bad.exit_code == 2 and "--tta: got 'mirror'" in bad.output
