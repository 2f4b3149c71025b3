"""A whole saved Keras model as a base (`models.bases.saved`): a tiny backbone made here goes through a real
sweep (a head, fine-tuning by count and by layer name, the activation cache at a cut, a warm start), is
reloaded in a fresh process to predict, and bad files are refused before anything runs. The EfficientNet-Lite
files of ../shared are used where they exist."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from helpers import SHARED, sweep_main
from models import ExperimentSpec, ModelConfigError
from models.bases.saved import has_own_preprocessing
from models.build import build_model
from runner import PROJECT_ROOT
from runner.records import COMPLETED
from runner.records.query import read_all

LITE_FILE = SHARED / "weights" / "efficientnet_lite0_imagenet_notop.keras"


def save_backbone(path: Path, *, rescaling: bool = True, output: str = "map") -> Path:
    """A tiny backbone: [Rescaling to [-1, 1]], conv, BatchNorm, conv (stride 2); a feature map, a pooled
    vector or a sequence `(batch, steps, channels)` out."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="scale")(inputs) if rescaling else inputs
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    if output == "vector":
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    elif output == "sequence":
        x = keras.layers.Reshape((-1, 16), name="steps")(x)
    path.parent.mkdir(parents=True, exist_ok=True)
    keras.Model(inputs, x, name="tiny_backbone").save(path)
    return path


@pytest.fixture(scope="module")
def saved_sweep(tmp_path_factory, tiny_image_dir):
    """One real sweep over the tiny saved backbone, its path relative to the grid's folder."""
    work = tmp_path_factory.mktemp("saved_base")
    save_backbone(work / "backbones" / "tiny.keras")
    (work / "grid.yaml").write_text(f"""
data_dir: {tiny_image_dir}
fixed: {{base: backbones/tiny.keras, image_size: 32, epochs: 1, batch_size: 8, dense_units: [8],
        val_fraction: 0.2, test_fraction: 0.25}}
runs:
  - {{name: head}}
  - {{name: by_count, fine_tune_layers: 2, fine_tune_epochs: 1}}
  - {{name: by_name, fine_tune_layers: {{from_layer: bn1}}, fine_tune_epochs: 1}}
  - {{name: warm, warm_start: head}}
""", encoding="utf-8")
    import os

    cwd = os.getcwd()
    os.chdir(work)
    try:
        code = sweep_main(["grid.yaml"])
    finally:
        os.chdir(cwd)
    records = {rec.name: rec for rec in read_all(work / "logs").records}
    return work, code, records


@pytest.mark.slow
def test_a_saved_model_trains_as_a_base_with_a_head_fine_tuning_the_cache_and_a_warm_start(saved_sweep):
    work, code, records = saved_sweep
    assert code == 0 and set(records) == {"head", "by_count", "by_name", "warm"}
    assert all(rec.status == COMPLETED for rec in records.values()), {n: r.error for n, r in records.items()}
    path = str(work / "backbones" / "tiny.keras")
    assert {rec.params["base"] for rec in records.values()} == {path}  # made absolute from the grid's folder
    assert records["by_count"].fine_tune_layers_resolved == 2
    assert records["by_name"].fine_tune_layers_resolved == 2  # from bn1: bn1 and conv2
    assert records["warm"].parent_run_id == records["head"].run_id
    # the head phase of every run reads cached activations of the frozen backbone
    assert all(rec.activation_cache.get("head", {}).get("status") in ("built", "hit") for rec in records.values())
    assert (records["head"].model.weights_source, records["head"].model.weights_path) == ("saved", path)


@pytest.mark.slow
def test_a_run_on_a_saved_base_predicts_in_a_fresh_process(saved_sweep):
    work, _, records = saved_sweep
    rec = records["by_name"]
    script = textwrap.dedent(f"""
        import json, sys
        import pandas as pd
        from runner.core.predict import load_run
        run = load_run({rec.run_id!r}, logs_dir={str(work / 'logs')!r})
        saved = pd.read_csv({str(work / 'experiments' / rec.run_id / 'predictions.csv')!r})
        fresh = run.predict_paths(saved["path"])
        cols = [f"prob_{{c}}" for c in run.class_names]
        print(json.dumps({{"diff": float(abs(fresh[cols].to_numpy() - saved[cols].to_numpy()).max()),
                          "n": len(fresh)}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] == sum(rec.data.counts["test"].values()) and out["diff"] <= 1e-5


def test_preprocessing_follows_the_model(tmp_path):
    own = save_backbone(tmp_path / "own.keras")
    raw = save_backbone(tmp_path / "raw.keras", rescaling=False)
    assert has_own_preprocessing(keras.saving.load_model(own))
    assert not has_own_preprocessing(keras.saving.load_model(raw))
    assert build_model(ExperimentSpec(base=str(own), image_size=16), 2).get_layer("preprocess").base_name == "none"
    with pytest.raises(ModelConfigError, match=r"has no Rescaling or Normalization layer at its input.*preprocess:"):
        build_model(ExperimentSpec(base=str(raw), image_size=16), 2)
    model = build_model(ExperimentSpec(base=str(raw), image_size=16, preprocess="MobileNetV2"), 2)
    assert model.get_layer("preprocess").base_name == "mobilenet_v2"
    pixels = np.full((1, 16, 16, 3), 255.0, dtype="float32")
    np.testing.assert_allclose(model.get_layer("preprocess")(pixels), 1.0)  # mobilenet_v2: [0, 255] -> [-1, 1]
    with pytest.raises(ModelConfigError, match="scales its input itself"):
        build_model(ExperimentSpec(base=str(own), image_size=16, preprocess="vgg16"), 2)
    with pytest.raises(ValueError, match="preprocess applies to a saved-model base only"):
        ExperimentSpec(base="vgg16", preprocess="none")


def test_a_vector_output_takes_the_head_directly(tmp_path):
    model = build_model(ExperimentSpec(base=str(save_backbone(tmp_path / "v.keras", output="vector")),
                                       image_size=16, dense_units=[4]), 3)
    assert model.predict(np.zeros((2, 20, 24, 3), dtype="float32"), verbose=0).shape == (2, 3)


@pytest.mark.parametrize("case, message", [
    ("missing", r"base: file .*missing\.keras does not exist"),
    ("not_a_model", r"base: .*not_a_model\.keras cannot be loaded"),
    ("custom", r"base: .*custom\.keras needs custom objects"),
    ("sequence", r"its output is \(None, None, 16\), expected an image feature map"),
    ("kwargs", r"base_kwargs: .*takes no constructor arguments"),
])
def test_bad_saved_bases_are_refused_naming_the_file(tmp_path, case, message):
    path = tmp_path / f"{case}.keras"
    overrides = {}
    if case == "not_a_model":
        path.write_text("not a zip")
    elif case == "custom":
        @keras.saving.register_keras_serializable(package="test_only")
        class Doubling(keras.layers.Layer):
            def call(self, x):
                return 2 * x

        inputs = keras.Input((None, None, 3))
        keras.Model(inputs, keras.layers.Conv2D(4, 3)(Doubling()(inputs))).save(path)
        keras.saving.get_custom_objects().pop("test_only>Doubling")
    elif case == "sequence":
        save_backbone(path, output="sequence")
    elif case == "kwargs":
        save_backbone(path)
        overrides = {"base_kwargs": {"alpha": 1.0}}
    with pytest.raises(ModelConfigError, match=message):
        build_model(ExperimentSpec(base=str(path), image_size=16, **overrides), 2)


def test_a_fixed_input_size_must_be_the_image_size(tmp_path):
    inputs = keras.Input((24, 24, 3))
    keras.Model(inputs, keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(1 / 255)(inputs))).save(tmp_path / "f.keras")
    with pytest.raises(ModelConfigError, match="takes 24x24 inputs, got image_size=16; set image_size: 24"):
        build_model(ExperimentSpec(base=str(tmp_path / "f.keras"), image_size=16), 2)
    assert build_model(ExperimentSpec(base=str(tmp_path / "f.keras"), image_size=24), 2).output.shape == (None, 2)


def test_the_lite_names_need_their_file_and_say_where_it_goes(monkeypatch):
    monkeypatch.delenv("NBSWEEP_WEIGHTS_DIR", raising=False)
    with pytest.raises(ModelConfigError, match=r"efficientnet_lite0 is a whole saved Keras model, "
                                               r"efficientnet_lite0_imagenet_notop\.keras.*no weights folder is set"):
        build_model(ExperimentSpec(base="EfficientNet-Lite0", image_size=32), 2)


@pytest.mark.shared
@pytest.mark.skipif(not LITE_FILE.is_file(), reason="needs ../shared/weights (EfficientNet-Lite0 file)")
def test_efficientnet_lite0_from_the_weights_folder():
    model = build_model(ExperimentSpec(base="efficientnet_lite0", image_size=64, weights_dir=str(LITE_FILE.parent),
                                       dense_units=[]), 6)
    assert model.weights_choice.path == str(LITE_FILE) and model.weights_choice.source == "saved"
    assert model.get_layer("preprocess").base_name == "none"  # its Rescaling layer is inside
    assert model.get_layer("base").output.shape[-1] == 1280
    assert model.predict(np.zeros((1, 64, 64, 3), dtype="float32"), verbose=0).shape == (1, 6)
