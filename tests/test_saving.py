"""A run's weights on disk (`models.saving`, `models.build.load_run_model`): a run whose base is frozen as built
stores only what it trained, loads in a fresh process with the kernel's probabilities, exports whole, refuses a
missing or changed base weights file by name; older run folders with a full `model.keras` still load."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from models.build import build_model, load_run_model
from models.data import load_data, load_images
from models.names import existing_checkpoint, run_weights_path
from models.saving import RunWeightsError, load_weights_into, read_base_identity
from models.training import train_model
from runner import PROJECT_ROOT
from runner.core.predict import check_run_files, load_run
from runner.records import COMPLETED, FAILED, RunLoadError
from runner.records.query import read_all

from helpers import make_spec

ASSETS = Path(__file__).parent / "assets"
SHARED_WEIGHTS = PROJECT_ROOT.parent / "shared" / "weights"
HEAD_VARIABLES = 4  # dense_0 kernel and bias, predictions kernel and bias


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _run_python(script: str, **env) -> dict:
    """Runs `script` in a fresh interpreter (from the project folder); returns the JSON of its last line."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Loading into a model, on a trained model of tiny images (no notebook) ------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_image_dir, base_weights_file):
    """A 'pretrained' simple_cnn_small, head phase then fine-tuning of its last block, every checkpoint kept."""
    run_dir = tmp_path_factory.mktemp("trained")
    spec = make_spec(tiny_image_dir, weights=base_weights_file, epochs=1, fine_tune_layers=5, fine_tune_epochs=1,
                     fine_tune_learning_rate=1e-2, keep_checkpoints=None)
    data = load_data(spec)
    model = build_model(spec, 3)
    train_model(model, data, spec, run_dir, verbose=0)
    images = load_images(data.test.paths, spec.image_size)
    return spec, run_dir, model, images


@pytest.mark.slow
def test_a_run_frozen_as_built_stores_its_trained_variables_and_the_base_identity(trained, base_weights_file):
    spec, run_dir, model, images = trained
    assert run_weights_path(run_dir) == run_dir / "trained_weights.h5" and not (run_dir / "model.keras").exists()
    identity = read_base_identity(run_dir / "trained_weights.h5")
    assert (identity.name, identity.weights_path, identity.weights_sha256) == (
        "simple_cnn_small", str(Path(base_weights_file).resolve()), sha256(base_weights_file))
    with h5py.File(run_dir / "trained_weights.h5") as handle:
        stored = sorted(int(name) for name in handle["variables"])
        assert handle.attrs["variables"] == len(model.weights)
    base = {id(v) for v in model.get_layer("base").weights}
    trainable_base = {id(v) for layer in model.get_layer("base").layers if layer.trainable for v in layer.weights}
    # the head, and the base's last block that fine-tuning unfroze; none of the frozen base
    assert {id(model.weights[i]) for i in stored} == {id(v) for v in model.weights if id(v) not in base} | trainable_base
    assert identity.frozen_variables == len(model.weights) - len(stored) > 0
    # fine-tuning changed the frozen set: the head-phase checkpoint stores the head only
    with h5py.File(existing_checkpoint(run_dir, 1)) as handle:
        assert len(handle["variables"]) == HEAD_VARIABLES
    with h5py.File(existing_checkpoint(run_dir, 2)) as handle:
        assert sorted(int(name) for name in handle["variables"]) == stored


@pytest.mark.slow
def test_the_loader_rebuilds_the_model_and_refuses_a_changed_base(trained, tmp_path):
    spec, run_dir, model, images = trained
    expected = model.predict(images, verbose=0)
    loaded = load_run_model(spec, 3, run_dir / "trained_weights.h5")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-6)
    # a warm start built with other base weights (random): the base is loaded from the recorded file first
    other = build_model(spec.model_copy(update={"weights": None}), 3)
    load_weights_into(other, run_dir / "trained_weights.h5")
    np.testing.assert_allclose(other.predict(images, verbose=0), expected, atol=1e-6)

    # the frozen weights as rebuilt differ from the run's (as another Keras or base_kwargs would make them)
    altered = tmp_path / "trained_weights.h5"
    shutil.copy(run_dir / "trained_weights.h5", altered)
    with h5py.File(altered, "a") as handle:
        base = json.loads(handle.attrs["base"])
        handle.attrs["base"] = json.dumps({**base, "frozen_weights_sha256": "0" * 64})
    with pytest.raises(RunWeightsError, match=rf"{altered}: the frozen base weights built from .* have sha256 "
                                              rf"\w{{12}}…, the run's were 000000000000…"):
        load_run_model(spec, 3, altered)
    # another architecture
    with pytest.raises(RunWeightsError, match=rf"{run_dir / 'trained_weights.h5'}: holds weights of a model with"):
        load_weights_into(build_model(spec.model_copy(update={"dense_units": [16, 8]}), 3),
                          run_dir / "trained_weights.h5")
    with pytest.raises(RunWeightsError, match=f"weights file missing: {tmp_path / 'nope.h5'}"):
        load_run_model(spec, 3, tmp_path / "nope.h5")


def test_runs_without_a_base_frozen_as_built_keep_the_full_model(tiny_image_dir, tmp_path):
    """From scratch: nothing is frozen, `model.keras` as before, and checkpoints of every variable."""
    spec = make_spec(tiny_image_dir, weights=None, keep_checkpoints=1)
    model = build_model(spec, 3)
    train_model(model, load_data(spec), spec, tmp_path, verbose=0)
    assert run_weights_path(tmp_path) == tmp_path / "model.keras" and not (tmp_path / "trained_weights.h5").exists()
    assert read_base_identity(existing_checkpoint(tmp_path, 1)) is None
    with h5py.File(existing_checkpoint(tmp_path, 1)) as handle:
        assert len(handle["variables"]) == len(model.weights)


def test_old_run_folders_with_a_full_model_keras_still_load(tmp_path):
    """A schema-1 run (tests/assets/v1_run: a real model.keras) loads through the same loader; so does a
    per-epoch checkpoint in Keras's format (`epoch_<k>.weights.h5`, as runs wrote them before)."""
    shutil.copytree(ASSETS / "v1_run", tmp_path, dirs_exist_ok=True)
    (record_path,) = (tmp_path / "logs").glob("*.json")
    run = load_run(record_path)
    run_dir = record_path.parent.parent / "experiments" / record_path.stem
    saved = keras.models.load_model(run_dir / "model.keras")
    for mine, theirs in zip(run.model.get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    images = np.random.default_rng(0).integers(0, 256, size=(3, 40, 30, 3)).astype("float32")
    np.testing.assert_allclose(run.predict(images, tta=[]), saved.predict(images, verbose=0), atol=1e-6)

    legacy = run_dir / "checkpoints" / "epoch_1.weights.h5"
    legacy.parent.mkdir()
    saved.save_weights(legacy)
    assert existing_checkpoint(run_dir, 1) == legacy and existing_checkpoint(run_dir, 2) is None
    fresh = build_model(run.spec.model_copy(update={"weights": None}), len(run.class_names))
    assert load_weights_into(fresh, legacy) is None
    np.testing.assert_allclose(fresh.predict(images, verbose=0), saved.predict(images, verbose=0), atol=1e-6)


# Real runs: papermill, the notebook, records ------------------------------------------------------------


@pytest.fixture(scope="module")
def head_only_sweep(tmp_path_factory, tiny_image_dir):
    """A head-only MobileNetV2 (alpha 0.35) run on a 'pretrained' weights file (random, saved once), keeping its
    last checkpoint; a run warm-started from its epoch 2 (kept), and one from its epoch 1 (not kept).

    Returns `(work, completed process, records in order, base weights file)`.
    """
    from models import ExperimentSpec
    from models.bases import build_base

    work = tmp_path_factory.mktemp("head_only")
    weights = work / "weights" / "mobilenet_v2_0.35.weights.h5"
    weights.parent.mkdir()
    build_base(ExperimentSpec(base="mobilenet_v2", base_kwargs={"alpha": 0.35}, weights=None,
                              image_size=32))[0].save_weights(weights)
    (work / "grid.yaml").write_text(f"""
notebook: {PROJECT_ROOT / 'notebooks' / 'base_experiment.ipynb'}
data_dir: {tiny_image_dir}
fixed: {{base: mobilenet_v2, base_kwargs: {{alpha: 0.35}}, weights: {weights}, image_size: 32, batch_size: 8,
         dense_units: [16], val_fraction: 0.2, test_fraction: 0.25, early_stopping_patience: null, epochs: 2}}
runs:
  - {{name: root, keep_checkpoints: 1}}
  - {{name: from-kept, epochs: 1, warm_start: root, warm_start_checkpoint: 2}}
  - {{name: from-dropped, epochs: 1, warm_start: root, warm_start_checkpoint: 1}}
""", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "runner" / "sweep.py"), "grid.yaml"],
                          cwd=work, capture_output=True, text=True, timeout=600)
    return work, proc, read_all(work / "logs").records, weights


def _root(head_only_sweep):
    work, proc, records, weights = head_only_sweep
    root = next(r for r in records if r.name == "root")
    assert root.status == COMPLETED, proc.stderr[-3000:]
    return work, root, work / "experiments" / root.run_id, weights


@pytest.mark.slow
def test_a_head_only_run_folder_holds_no_base_weights(head_only_sweep):
    work, root, run_dir, weights = _root(head_only_sweep)
    assert root.paths["model"] is None and root.weights_path(work / "logs") == run_dir / "trained_weights.h5"
    assert root.model.model_file_sha256 == sha256(run_dir / "trained_weights.h5")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_2.trained_weights.h5"]
    with h5py.File(run_dir / "trained_weights.h5") as handle:
        assert len(handle["variables"]) == HEAD_VARIABLES
    identity = read_base_identity(run_dir / "trained_weights.h5")
    assert (identity.name, identity.weights_path, identity.weights_sha256) == (
        "mobilenet_v2", str(weights.resolve()), sha256(weights))
    stored = [p for p in run_dir.rglob("*.h5")] + list(run_dir.glob("*.keras"))
    folder = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
    # the base's weights (1.7 MB) are in none of the files: the weights kept are a few hundred kB at most
    assert sum(p.stat().st_size for p in stored) < weights.stat().st_size / 5
    assert folder < weights.stat().st_size, sorted((p.stat().st_size, p.name) for p in run_dir.rglob("*"))
    assert check_run_files(root, work / "logs" / f"{root.run_id}.json") == []


@pytest.mark.slow
def test_a_fresh_process_predicts_the_kernels_probabilities(head_only_sweep):
    work, root, run_dir, _ = _root(head_only_sweep)
    out = _run_python(f"""
        import json, sys
        import numpy as np, pandas as pd
        from runner.core.predict import load_run
        run = load_run({root.run_id!r}, logs_dir={str(work / 'logs')!r})
        saved = pd.read_csv({str(run_dir / 'predictions.csv')!r})
        fresh = run.predict_paths(saved["path"])
        cols = [f"prob_{{c}}" for c in run.class_names]
        print(json.dumps({{"diff": float(np.abs(fresh[cols].to_numpy() - saved[cols].to_numpy()).max()),
                          "n": len(fresh), "notebook_imported": "papermill" in sys.modules}}))
    """)
    assert out["n"] == sum(root.data.counts["test"].values()) > 0
    assert out["diff"] <= 1e-5 and not out["notebook_imported"]


@pytest.mark.slow
def test_export_writes_a_model_keras_loads_alone(head_only_sweep, tmp_path):
    """`nbsweep export`: the file holds the base too, so it predicts with the base weights file gone."""
    work, root, run_dir, weights = _root(head_only_sweep)
    out = tmp_path / "exported.keras"
    proc = subprocess.run([sys.executable, "-m", "runner", "export", root.run_id[:17], "--out", str(out),
                           "--logs-dir", str(work / "logs")], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out}" in proc.stdout and out.stat().st_size > weights.stat().st_size
    hidden = weights.with_name(weights.name + ".away")
    weights.rename(hidden)
    try:
        result = _run_python(f"""
            import json
            import keras, numpy as np, pandas as pd
            import models.build  # registers the Preprocess layer
            from models.data import load_images
            model = keras.models.load_model({str(out)!r})
            saved = pd.read_csv({str(run_dir / 'predictions.csv')!r})
            probabilities = model.predict(load_images(list(saved["path"]), 32), verbose=0)
            cols = [c for c in saved.columns if c.startswith("prob_")]
            print(json.dumps({{"diff": float(np.abs(probabilities - saved[cols].to_numpy()).max())}}))
        """)
    finally:
        hidden.rename(weights)
    assert result["diff"] <= 1e-5
    bad = subprocess.run([sys.executable, "-m", "runner", "export", root.run_id, "--out", str(tmp_path / "x.h5"),
                          "--logs-dir", str(work / "logs")], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "expected a file name ending in .keras" in bad.stderr


@pytest.mark.slow
def test_a_missing_or_changed_base_weights_file_is_named(head_only_sweep):
    work, root, run_dir, weights = _root(head_only_sweep)
    record_path = work / "logs" / f"{root.run_id}.json"
    original = weights.read_bytes()
    hidden = weights.with_name(weights.name + ".away")
    weights.rename(hidden)
    try:
        missing = rf"base weights {weights} \(recorded in {run_dir / 'trained_weights.h5'}\) is missing"
        with pytest.raises(RunLoadError, match=missing):
            load_run(root.run_id, logs_dir=work / "logs")
        assert [p.split(":")[0] for p in check_run_files(root, record_path)] == [
            f"base weights {weights} (recorded in {run_dir / 'trained_weights.h5'}) is missing"]
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        changed = rf"base weights {weights}: sha256 {sha256(weights)[:12]}… differs from the run's {sha256(hidden)[:12]}…"
        with pytest.raises(RunLoadError, match=changed):
            load_run(root.run_id, logs_dir=work / "logs")
    finally:
        hidden.replace(weights)
    assert weights.read_bytes() == original


@pytest.mark.slow
def test_warm_starts_from_a_kept_checkpoint_and_names_one_not_kept(head_only_sweep):
    work, root, run_dir, _ = _root(head_only_sweep)
    records = {r.name: r for r in head_only_sweep[2]}
    child, dropped = records["from-kept"], records["from-dropped"]
    assert child.status == COMPLETED and child.parent_run_id == root.run_id
    assert (work / "logs" / child.warm_start.weights_path).resolve() == run_dir / "checkpoints" / "epoch_2.trained_weights.h5"
    # a warm-started base holds its parent's weights, not build_model's: the child keeps the full model
    assert child.paths["model"] is not None and child.paths["trained_weights"] is None
    assert dropped.status == FAILED and dropped.error.ename == "ConfigError"
    assert f"epoch 1 of run {root.run_id} was not kept (kept: epoch_2.trained_weights.h5;" in dropped.error.evalue


# The real offline ImageNet weights ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_WEIGHTS / "vgg16_imagenet_notop.weights.h5").is_file(),
                    reason="needs ../shared/weights/vgg16_imagenet_notop.weights.h5 (real ImageNet VGG16 weights)")
def test_a_head_only_vgg16_run_stores_kilobytes_of_a_58_mb_base(tiny_image_dir, tmp_path):
    spec = make_spec(tiny_image_dir, base="vgg16", weights="imagenet", weights_dir=str(SHARED_WEIGHTS),
                     image_size=32, dense_units=[256], epochs=2)
    data = load_data(spec)
    model = build_model(spec, 3)
    train_model(model, data, spec, tmp_path, verbose=0)
    base_file = SHARED_WEIGHTS / "vgg16_imagenet_notop.weights.h5"
    weights = [p for p in tmp_path.rglob("*") if p.suffix in (".h5", ".keras")]
    assert [p.name for p in weights] == ["trained_weights.h5"]
    assert weights[0].stat().st_size < 2e6 < 50e6 < base_file.stat().st_size  # 512 x 256 + 256 x 3 floats
    assert read_base_identity(weights[0]).weights_path == str(base_file.resolve())
    images = load_images(data.test.paths, 32)
    np.testing.assert_allclose(load_run_model(spec, 3, weights[0]).predict(images, verbose=0),
                               model.predict(images, verbose=0), atol=1e-6)
