"""Deterministic runs (`models.reproducibility`): two runs of the same configuration in two kernels give the same
probabilities to the last bit and the same histories, and each record says it was deterministic and on which
device its kernel ran."""

import json

import numpy as np
import pandas as pd
import pytest

from helpers import sweep_main, write_grid
from runner import PROJECT_ROOT
from runner.records import COMPLETED
from runner.records.query import read_all


def test_set_determinism_switches_tensorflow_op_determinism_and_reports_the_devices():
    import tensorflow as tf
    from tensorflow.python.framework.config import disable_op_determinism, is_op_determinism_enabled

    from models import ExperimentSpec, set_determinism
    from models.contract import RuntimeSection
    from models.spec import DETERMINISTIC_DEFAULT

    assert ExperimentSpec().deterministic is DETERMINISTIC_DEFAULT
    try:
        on = set_determinism(ExperimentSpec(seed=3, deterministic=True))
        assert is_op_determinism_enabled()
        assert (on["deterministic"], on["op_determinism"]) == (True, True)
        first = tf.random.uniform((4,)).numpy()
        set_determinism(ExperimentSpec(seed=3, deterministic=True))
        assert np.array_equal(first, tf.random.uniform((4,)).numpy())  # seeded
        off = set_determinism(ExperimentSpec(seed=3, deterministic=False))
        assert not is_op_determinism_enabled()
        assert (off["deterministic"], off["op_determinism"]) == (False, False)
    finally:
        disable_op_determinism()
    seen = tf.config.list_physical_devices()
    assert [d["name"] for d in on["devices"]] == [d.name for d in seen]
    gpus = [d for d in on["devices"] if d["type"] == "GPU"]
    assert on["device"] == (f"GPU: {gpus[0]['model']}" if gpus else on["device"])
    assert on["device"].startswith("GPU: " if gpus else "CPU: ")
    RuntimeSection.model_validate(on)  # what result.json holds


@pytest.mark.slow
def test_two_deterministic_runs_in_two_kernels_are_identical(tmp_path, monkeypatch):
    """A real 2-run sweep: the same parameters (augmentation and mixup on) under two names, so two kernels."""
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, f"""
notebook: {PROJECT_ROOT / 'notebooks' / 'base_experiment.ipynb'}
data_dir: builtin:digits
fixed:
  deterministic: true
  base: simple_cnn_small
  weights: null
  image_size: 32
  max_images_per_class: 20
  dense_units: [16]
  epochs: 2
  batch_size: 16
  early_stopping_patience: null
  augmentation: {{flip: horizontal, rotation: 0.1, zoom: 0.1, mixup: 0.2}}
runs: [{{name: twin_a}}, {{name: twin_b}}]
""")
    assert sweep_main([str(grid)]) == 0
    records = sorted(read_all(tmp_path / "logs").records, key=lambda rec: rec.name)
    assert [rec.name for rec in records] == ["twin_a", "twin_b"] and {r.status for r in records} == {COMPLETED}
    a, b = records
    assert a.config_hash != b.config_hash and a.group_hash == b.group_hash  # the name is not the configuration
    probabilities = []
    for rec in records:
        predictions = pd.read_csv(rec.path_of("predictions", tmp_path / "logs"))
        probabilities.append(predictions[[c for c in predictions.columns if c.startswith("prob_")]].to_numpy())
    assert probabilities[0].shape == probabilities[1].shape and probabilities[0].shape[0] > 0
    assert float(np.max(np.abs(probabilities[0] - probabilities[1]))) == 0.0
    # identical histories, epoch by epoch (the seconds each epoch took aside)
    histories = [{phase: {key: values for key, values in metrics.items() if key != "epoch_s"}
                  for phase, metrics in rec.history.items()} for rec in records]
    assert histories[0] == histories[1] and len(histories[0]["head"]["loss"]) == 2
    assert a.val_metrics == b.val_metrics and a.metrics == b.metrics
    # the record says it was deterministic, and where (the kernel's devices: those of this machine)
    from models import runtime_info

    for rec in records:
        env = json.loads((tmp_path / "logs" / f"{rec.run_id}.json").read_text())["environment"]
        assert (env["deterministic"], env["op_determinism"]) == (True, True)
        assert env["device"] == runtime_info(True)["device"]
        assert {d["type"] for d in env["devices"]} >= {"CPU"}
