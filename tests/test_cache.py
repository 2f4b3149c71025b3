"""The activation cache (`models.cache`): keys, equivalence with the uncached path, integrity.

The tests that train a Keras model are marked slow; the others build models and run predictions only.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import warnings

import numpy as np
import pandas as pd
import pytest

from models import ExperimentSpec
from models import cache
from models.bases import build_base
from models.build import build_model, load_run_model
from models.names import run_weights_path
from models.data import load_data, load_images
from models.evaluate import evaluate_model
from models.spec import cache_build_key, cache_entry_inputs
from models.training import train_model

from helpers import make_image_folder


def make_spec(data_dir, **overrides) -> ExperimentSpec:
    params = dict(data_dir=str(data_dir), base="simple_cnn_small", image_size=32, val_fraction=0.25,
                  test_fraction=0.25, dense_units=[16], epochs=4, learning_rate=0.01, batch_size=8,
                  early_stopping_patience=None, seed=0)
    return ExperimentSpec(**{**params, **overrides})


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("cache_images"), 12)


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory):
    """Two different 'pretrained' `simple_cnn_small` weights files (random, seeds 1 and 2)."""
    folder = tmp_path_factory.mktemp("cache_weights")
    paths = []
    for seed in (1, 2):
        base, _ = build_base(make_spec("unused", weights=None, seed=seed))
        paths.append(str(folder / f"seed{seed}.weights.h5"))
        base.save_weights(paths[-1])
    return paths


NO_DROPOUT = {"base_kwargs": {"dropout": 0.0}}


@pytest.fixture(scope="module")
def pretrained_base(image_dir, tmp_path_factory) -> str:
    """A `simple_cnn_small` base without Dropout, trained 3 epochs from scratch on the images.

    Without Dropout, as the keras.applications bases of real sweeps: Keras 3
    runs a frozen base's Dropout layers in training mode inside `fit` (the
    outer `training` flag wins over the base call's), which stored outputs
    cannot reproduce. BatchNormalization is in inference mode either way.
    """
    folder = tmp_path_factory.mktemp("pretrained")
    spec = make_spec(image_dir, weights=None, epochs=3, seed=1, **NO_DROPOUT)
    model = build_model(spec, 3)
    train_model(model, load_data(spec), spec, folder / "pretraining", verbose=0)
    model.get_layer("base").save_weights(folder / "base.weights.h5")
    return str(folder / "base.weights.h5")


def key_of(spec, trainable=0):
    data = load_data(spec)
    split = cache.split_model(build_model(spec, len(data.class_names)), spec, trainable)
    return cache.cache_key(spec, data, split)


def test_key_changes_with_every_input_that_changes_the_numbers(image_dir, weights_files, tmp_path):
    spec = make_spec(image_dir, weights=weights_files[0])
    key, inputs = key_of(spec)
    assert key == key_of(spec)[0]  # deterministic
    # what only trains the head leaves the key alone
    assert key == key_of(make_spec(image_dir, weights=weights_files[0], dropout=0.1, head="flatten",
                                   learning_rate=0.5, epochs=1))[0]
    other_data = make_image_folder(tmp_path / "fewer", 12)
    (other_data / "red" / "red_011.png").unlink()
    changed = {
        "weights file": make_spec(image_dir, weights=weights_files[1]),
        "image size": make_spec(image_dir, weights=weights_files[0], image_size=40),
        "file list": make_spec(other_data, weights=weights_files[0]),
        "split": make_spec(image_dir, weights=weights_files[0], seed=1),
        "dtype": make_spec(image_dir, weights=weights_files[0], activation_cache_dtype="float16"),
    }
    keys = {what: key_of(other)[0] for what, other in changed.items()}
    keys["cut layer"], cut_inputs = key_of(spec, trainable=3)
    assert len({key, *keys.values()}) == len(keys) + 1, keys
    assert (inputs["cut_layer"], cut_inputs["cut_layer"]) == ("block2_dropout", "block2_bn1")
    assert set(inputs) >= {"base", "base_kwargs", "frozen_weights_sha256", "image_size", "data_manifest",
                           "cut_layer", "keras", "tensorflow"}
    # the search's TF-free prediction of the same entries (models.spec.cache_build_key) agrees on all of it
    entry = cache_entry_inputs(spec)
    assert {name: inputs[name] for name in entry} == entry
    head_only = make_spec(image_dir, weights=weights_files[0], dropout=0.1, head="flatten", learning_rate=0.5,
                          epochs=1)
    assert cache_build_key(head_only) == cache_build_key(spec)
    changed["cut layer"] = make_spec(image_dir, weights=weights_files[0], fine_tune_layers=3, fine_tune_epochs=1)
    build_keys = {what: cache_build_key(other) for what, other in changed.items()}
    assert len({cache_build_key(spec), *build_keys.values()}) == len(build_keys) + 1, build_keys
    # a mixed-precision base computes other outputs (GPU only, so only the TF-free part is built here);
    # float32 keys carry no precision, so entries built before it counted stay valid
    mixed = make_spec(image_dir, weights=weights_files[0], precision="mixed_float16")
    assert "precision" not in entry and cache_entry_inputs(mixed)["precision"] == "mixed_float16"
    assert cache_build_key(mixed) != cache_build_key(spec)
    # repeats on one split (split_seed) read the same entries; another split reads others
    assert cache_build_key(make_spec(image_dir, weights=weights_files[0], seed=5, split_seed=spec.seed)) == \
        cache_build_key(spec) != cache_build_key(make_spec(image_dir, weights=weights_files[0], split_seed=5))


@pytest.mark.slow
def test_cached_and_uncached_training_agree(image_dir, pretrained_base, tmp_path):
    results = {}
    for name, use in (("uncached", False), ("built", True), ("hit", True)):
        spec = make_spec(image_dir, weights=pretrained_base, activation_cache=use, fine_tune_layers=3,
                         fine_tune_epochs=2, cache_dir=str(tmp_path / "cache"), **NO_DROPOUT)
        data = load_data(spec)
        model = build_model(spec, len(data.class_names))
        out = tmp_path / name
        training = train_model(model, data, spec, out, verbose=0)
        evaluation = evaluate_model(model, data, spec, out)
        results[name] = training, evaluation
        # the kept weights are the full model's whatever trained it: reloaded, they predict raw images alike
        images = load_images(data.test.paths, 32)
        reloaded = load_run_model(spec, len(data.class_names), run_weights_path(out))
        np.testing.assert_allclose(reloaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)

    assert {phase: use["status"] for phase, use in results["uncached"][0].activation_cache.items()} == {
        "head": "off", "fine_tune": "off"}
    assert {phase: use["status"] for phase, use in results["built"][0].activation_cache.items()} == {
        "head": "built", "fine_tune": "built"}
    assert {phase: use["status"] for phase, use in results["hit"][0].activation_cache.items()} == {
        "head": "hit", "fine_tune": "hit"}
    assert results["built"][0].activation_cache["head"]["build_s"] > 0
    fine_tune = results["built"][0].activation_cache["fine_tune"]
    cut = model.get_layer("base").get_layer(fine_tune["cut_layer"])
    assert fine_tune["shapes"]["train"] == [len(data.train), *cut.output.shape[1:]]
    assert [results[n][1].from_cache for n in results] == [False, True, True]

    def val_losses(name):
        return [v for phase in results[name][0].history.values() for v in phase["val_loss"]]

    assert min(val_losses("uncached")) < 0.9 * val_losses("uncached")[0]  # it learns
    np.testing.assert_allclose(val_losses("built"), val_losses("uncached"), rtol=0.02)
    np.testing.assert_allclose(val_losses("hit"), val_losses("built"), rtol=1e-5)
    recalls = [results[name][1].metrics["weighted_recall"] for name in results]
    assert max(recalls) - min(recalls) <= 0.12, recalls  # at most one of 9 test images differs


@pytest.mark.slow
def test_a_run_pruned_before_fine_tuning_is_evaluated_from_the_head_phase_entry(image_dir, pretrained_base,
                                                                                 tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = tmp_path / "study.journal"
    study = optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(journal))),
                                direction="maximize")
    trial = study.ask()
    pruning = {"storage": str(journal), "study_name": "s", "trial_number": trial.number, "min_epochs": 1,
               # every value is below 2: the pruner stops the run after its first head epoch
               "pruner": {"class": "ThresholdPruner", "kwargs": {"lower": 2.0}}, "metric": "val_weighted_recall"}
    spec = make_spec(image_dir, weights=pretrained_base, activation_cache=True, fine_tune_layers=3,
                     fine_tune_epochs=2, cache_dir=str(tmp_path / "cache"), **NO_DROPOUT)
    data = load_data(spec)
    model = build_model(spec, len(data.class_names))
    training = train_model(model, data, spec, tmp_path / "run", verbose=0, pruning=pruning)
    assert training.pruned_epoch == 1 and set(training.activation_cache) == {"head"}
    evaluation = evaluate_model(model, data, spec, tmp_path / "run")
    assert evaluation.from_cache  # the fine-tuning entry was never built: the head's entry serves
    val = pd.read_csv(tmp_path / "run" / "val_predictions.csv")
    full = model.predict(load_images(data.val.paths, 32), verbose=0)
    np.testing.assert_allclose(val[[f"prob_{c}" for c in data.class_names]].to_numpy(), full, atol=1e-5)
    assert evaluation.val_metrics["weighted_recall"] == pytest.approx(
        np.mean(full.argmax(axis=1) == data.val.labels))


@pytest.mark.slow
def test_augmented_runs_bypass_the_cache_or_use_augmented_copies(image_dir, weights_files, tmp_path):
    augmentation = {"flip": "horizontal", "rotation": 0.1}
    spec = make_spec(image_dir, weights=weights_files[0], epochs=2, augmentation=augmentation,
                     cache_dir=str(tmp_path))
    data = load_data(spec)
    training = train_model(build_model(spec, 3), data, spec, tmp_path / "a", verbose=0)
    assert training.activation_cache["head"]["status"] == "bypassed"
    assert "augmentation" in training.activation_cache["head"]["reason"]
    assert not any(tmp_path.glob("*/meta.json"))

    spec = make_spec(image_dir, weights=weights_files[0], epochs=2, augmentation=augmentation,
                     augmented_copies=2, cache_dir=str(tmp_path))
    training = train_model(build_model(spec, 3), data, spec, tmp_path / "b", verbose=0)
    use = training.activation_cache["head"]
    assert (use["status"], use["augmented_copies"]) == ("built", 2)
    arrays = cache.ActivationCache(tmp_path).load(use["key"])
    assert set(arrays) == {"val", "test", "train_aug_0", "train_aug_1"}
    assert not np.allclose(arrays["train_aug_0"], arrays["train_aug_1"])  # two different random copies


@pytest.mark.slow
def test_from_scratch_base_is_not_cached(image_dir, tmp_path):
    spec = make_spec(image_dir, weights=None, epochs=1, cache_dir=str(tmp_path))
    training = train_model(build_model(spec, 3), load_data(spec), spec, tmp_path / "run", verbose=0)
    assert training.activation_cache["head"] == {
        "status": "bypassed", "reason": "the base is trained from scratch: no frozen layers"}


@pytest.fixture
def built_entry(image_dir, weights_files, tmp_path):
    spec = make_spec(image_dir, weights=weights_files[0], cache_dir=str(tmp_path / "cache"))
    data = load_data(spec)
    model = build_model(spec, 3)
    first = cache.cached_inputs(model, data, spec, 0)
    assert first.info["status"] == "built"
    return spec, data, model, first


@pytest.mark.parametrize("damage", ["cut chunk", "missing meta", "missing array", "bad header", "old format"])
def test_an_entry_damaged_where_opening_sees_it_is_rebuilt(built_entry, damage):
    spec, data, model, first = built_entry
    entry = cache.ActivationCache(cache.cache_dir(spec)).entry(first.info["key"])
    original = np.array(first.arrays["train"])
    train_file = entry / "train.npy"
    if damage == "cut chunk":
        train_file.write_bytes(train_file.read_bytes()[:-100])
    elif damage == "missing meta":
        (entry / cache.META_FILE).unlink()
    elif damage == "missing array":
        train_file.unlink()
    elif damage == "bad header":  # same size, another shape in the .npy header
        raw = train_file.read_bytes()
        train_file.write_bytes(raw.replace(b"'shape': (", b"'shape': (1, ", 1)[:len(raw)])
    else:  # an entry of the previous layout under this key: never read as this one
        meta = json.loads((entry / cache.META_FILE).read_text())
        (entry / cache.META_FILE).write_text(json.dumps({**meta, "format": 2}))
    with pytest.warns(RuntimeWarning, match="corrupted entry"):
        again = cache.cached_inputs(model, data, spec, 0)
    assert again.info["status"] == "built"
    np.testing.assert_array_equal(np.array(again.arrays["train"]), original)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.cached_inputs(model, data, spec, 0).info["status"] == "hit"
    assert not [w for w in caught if "activation cache" in str(w.message)]


def flip_byte(path, offset_from_end=7):
    raw = bytearray(path.read_bytes())
    raw[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_is_found_when_its_chunk_is_read_and_the_entry_deleted(built_entry, monkeypatch):
    """Opening checks sizes and headers only; each chunk's CRC-32 is checked when a row of it is first read."""
    monkeypatch.setattr(cache, "CHUNK_BYTES", 1)  # one row per chunk
    spec, data, model, _ = built_entry
    shutil.rmtree(cache.cache_dir(spec))
    first = cache.cached_inputs(model, data, spec, 0)
    assert len(json.loads((cache.cache_dir(spec) / first.info["key"] / cache.META_FILE).read_text())[
        "arrays"]["train"]["crc32"]) == len(data.train)
    entry = cache.cache_dir(spec) / first.info["key"]
    flip_byte(entry / "train.npy")  # in the last row's chunk
    opened = cache.cached_inputs(model, data, spec, 0)  # a new file version: nothing counts as checked
    assert opened.info["status"] == "hit"
    train = opened.arrays["train"]
    assert train.take([0, 1]).shape == (2, *train.shape[1:])  # intact chunks read fine
    with pytest.warns(RuntimeWarning, match="differs from its CRC-32"), pytest.raises(cache.CacheDamaged):
        train.take([len(train) - 1])
    assert not entry.exists()
    assert len(cache.take_damage_reports()) == 1 and cache.take_damage_reports() == []
    assert cache.cached_inputs(model, data, spec, 0).info["status"] == "built"


@pytest.mark.slow
def test_training_on_an_entry_damaged_under_it_trains_again_on_a_rebuilt_one(image_dir, pretrained_base,
                                                                               tmp_path):
    spec = make_spec(image_dir, weights=pretrained_base, cache_dir=str(tmp_path / "cache"), epochs=2,
                     **NO_DROPOUT)
    data = load_data(spec)
    model = build_model(spec, 3)
    clean = train_model(model, data, spec, tmp_path / "clean", verbose=0)
    entry = next((tmp_path / "cache").glob("*/meta.json")).parent
    flip_byte(entry / "train.npy")
    model = build_model(spec, 3)
    with pytest.warns(RuntimeWarning, match="training again from the start on a rebuilt entry"):
        again = train_model(model, data, spec, tmp_path / "again", verbose=0)
    assert again.activation_cache["head"]["status"] == "built"
    np.testing.assert_allclose(again.history["head"]["val_loss"], clean.history["head"]["val_loss"], rtol=1e-5)
    assert cache.ActivationCache(tmp_path / "cache").load(clean.activation_cache["head"]["key"]) is not None


def test_streamed_entry_holds_what_a_whole_split_predict_gives(built_entry):
    """The entry is written batch by batch; its rows are the frozen part's outputs on the split's images."""
    spec, data, model, first = built_entry
    split = cache.split_model(model, spec, 0)
    from models.data import make_dataset
    for name in ("train", "val", "test"):
        expected = split.frozen.predict(make_dataset(getattr(data, name), spec.image_size, 32), verbose=0)
        np.testing.assert_array_equal(np.array(first.arrays[name]), expected)


def test_half_written_entries_are_never_read(built_entry):
    """A writer killed before its rename leaves only a `.tmp-*` folder, which no key names."""
    spec, data, model, first = built_entry
    root = cache.cache_dir(spec)
    shutil.rmtree(root / first.info["key"])
    (root / f".tmp-{first.info['key']}-123-abcd").mkdir()
    (root / f".tmp-{first.info['key']}-123-abcd" / "train.npy").write_bytes(b"partial")
    assert cache.cached_inputs(model, data, spec, 0).info["status"] == "built"
    meta = json.loads((root / first.info["key"] / cache.META_FILE).read_text())
    assert set(meta["arrays"]) == {"train", "val", "test"}
    assert meta["arrays"]["train"]["dtype"] == "float32" and meta["inputs"] == cache.cache_key(
        spec, data, cache.split_model(model, spec, 0))[1]


def test_concurrent_builders_compute_an_entry_once(tmp_path):
    store, calls = cache.ActivationCache(tmp_path), []

    def write(folder):
        calls.append(1)
        time.sleep(0.5)
        writer = cache.ArrayWriter(folder / "train.npy", (3, 2), "float32")
        writer.write(np.arange(4, dtype=np.float32).reshape(2, 2))
        writer.write(np.array([[4, 5]]))
        return {"train": writer.close()}

    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(store.get_or_build("k" * 32, {}, write)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(status for _, status, _ in outcomes) == ["built", "hit", "hit"]
    for arrays, _, _ in outcomes:
        np.testing.assert_array_equal(np.array(arrays["train"]), np.arange(6).reshape(3, 2))
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["k" * 32]


def test_array_writer_chunks_and_checksums_match_numpy(tmp_path, monkeypatch):
    """The file is a plain .npy file; each chunk's CRC-32 is zlib's over that chunk's rows."""
    import zlib
    monkeypatch.setattr(cache, "CHUNK_BYTES", 3 * 4 * 4)  # 3 rows of 4 float32 per chunk
    rows = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    writer = cache.ArrayWriter(tmp_path / "a.npy", rows.shape, "float32")
    for batch in np.array_split(rows, [1, 5, 6]):  # batches that straddle chunk boundaries
        writer.write(batch)
    meta = writer.close()
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), rows)
    assert meta["chunk_rows"] == 3
    assert meta["crc32"] == [zlib.crc32(rows[i:i + 3].tobytes()) for i in range(0, 10, 3)]
    with pytest.raises(ValueError, match="rows written"):
        cache.ArrayWriter(tmp_path / "b.npy", rows.shape, "float32").close()


@pytest.mark.slow  # builds MobileNetV2 twice (about 8 s)
def test_a_cut_inside_a_residual_block_bypasses_the_cache(image_dir, tmp_path):
    """MobileNetV2's block_15 adds its input to its output: no single tensor at a cut inside it."""
    spec = make_spec(image_dir, weights=None, base="mobilenet_v2", base_kwargs={"alpha": 0.35})
    base, _ = build_base(spec)
    base.save_weights(tmp_path / "mnv2.weights.h5")
    spec = make_spec(image_dir, weights=str(tmp_path / "mnv2.weights.h5"), base="mobilenet_v2",
                     base_kwargs={"alpha": 0.35})
    model = build_model(spec, 3)
    names = [layer.name for layer in model.get_layer("base").layers]

    def layers_above(name):  # trainable layers that put the cut at `name`
        return len(names) - 1 - names.index(name)

    with pytest.raises(cache.CacheBypass, match="not a single tensor"):
        cache.split_model(model, spec, layers_above("block_15_project_BN"))
    assert cache.split_model(model, spec, layers_above("block_15_add")).cut_layer == "block_15_add"


def test_training_on_streamed_chunks_gives_the_in_memory_readers_figures(built_entry, monkeypatch):
    """The top part fitted on the streamed reader (chunks of 3 rows, far smaller than a split) and on the
    in-memory reader the cache used before (every row in one constant, a whole-split shuffle buffer)
    from the same initial weights: the same losses, to the bit."""
    import keras
    import tensorflow as tf
    from models.data import batch_arrays

    spec, data, model, _ = built_entry
    monkeypatch.setattr(cache, "CHUNK_BYTES", 1)
    shutil.rmtree(cache.cache_dir(spec))
    streamed_inputs = cache.cached_inputs(model, data, spec, 0)
    entry = cache.cache_dir(spec) / streamed_inputs.info["key"]
    assert json.loads((entry / cache.META_FILE).read_text())["arrays"]["train"]["chunk_rows"] == 1
    top = streamed_inputs.split.top
    initial = [(variable, keras.ops.convert_to_numpy(variable)) for variable in top.variables]  # seeds too
    train = np.array(streamed_inputs.arrays["train"])
    val = np.array(streamed_inputs.arrays["val"])

    def fit(train_ds, val_ds):
        for variable, value in initial:
            variable.assign(value)
        top.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
        history = top.fit(train_ds, validation_data=val_ds, epochs=3, verbose=0, shuffle=False).history
        return history["loss"], history["val_loss"]

    streamed = fit(batch_arrays([streamed_inputs.arrays["train"]], data.train.labels, 4, shuffle=True, seed=7),
                   batch_arrays([streamed_inputs.arrays["val"]], data.val.labels, 4))
    in_memory = fit(tf.data.Dataset.from_tensor_slices((train, data.train.labels.astype(np.int32)))
                    .shuffle(len(train), seed=7, reshuffle_each_iteration=True).take(len(train)).batch(4),
                    tf.data.Dataset.from_tensor_slices((val, data.val.labels.astype(np.int32))).batch(4))
    assert streamed == in_memory
    assert streamed[0][-1] < streamed[0][0]  # it trains
