"""Deterministic runs: seeds, TensorFlow's op determinism, and the devices the kernel ran on.

The notebook calls `set_determinism(spec)` in its first code cell, before any
data is read or any layer exists, and writes what it returns into
`result.json` (`models.contract.RuntimeSection`), from where the runner copies
it into the record's `environment`.

With `spec.deterministic` (TensorFlow's recipe, `tf.config.experimental.enable_op_determinism`):

- Python, NumPy and TensorFlow / Keras are seeded with `spec.seed`
  (`keras.utils.set_random_seed`);
- every op picks a deterministic algorithm (on CPU, reductions in a fixed
  order; on GPU, no atomics-based kernels; an op without one raises
  `UnimplementedError` instead of running nondeterministically);
- `tf.data`: every `map` / `batch` keeps its order, and a `map` whose function
  has stateful ops (Keras's augmentation layers draw from a
  `keras.random.SeedGenerator` variable) runs serially, and the pipeline's
  prefetching is turned off, so each batch gets the same random draws
  whatever the thread timing. This is most of the cost of determinism for
  augmented runs.

The rest of the pipeline is seeded whether or not `deterministic` is set: the
split and subset (`numpy.random.default_rng(seed)`), the epoch order and the
balanced draw (`models.data.index_batches`), the augmentation layers (`seed +
i`) and mixup / CutMix (`models.augment`), the weights (`models.build`).
"""

from __future__ import annotations

import platform
from typing import Any


def set_determinism(spec) -> dict[str, Any]:
    """Seed everything with `spec.seed`; with `spec.deterministic`, also make TensorFlow's ops deterministic.

    Call it once at the start of a run, before data or model exist (TensorFlow
    applies op determinism to the ops and datasets created after it).
    `spec.deterministic=False` turns op determinism off again where an earlier
    call in the same process turned it on (it is process-wide; a run's kernel
    starts with it off), leaving the seeds set.

    Args:
        spec: the run's `models.spec.ExperimentSpec` (`seed`, `deterministic`).

    Returns:
        `runtime_info(spec.deterministic)`: the `runtime` section of `result.json`.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(spec.seed)
    if spec.deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        _tf_config().disable_op_determinism()
    return runtime_info(spec.deterministic)


def _tf_config():
    """TensorFlow's `config` module: `is_op_determinism_enabled` and `disable_op_determinism` have no public
    name (TensorFlow 2.21 exports only `tf.config.experimental.enable_op_determinism`)."""
    from tensorflow.python.framework import config

    return config


def _cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo`'s first `model name`), else `platform.processor()` or the machine type."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def runtime_info(deterministic: bool) -> dict[str, Any]:
    """What the kernel computes on: the devices TensorFlow sees, and whether op determinism is on.

    Args:
        deterministic: the run's `deterministic` parameter.

    Returns:
        `{"deterministic": bool, "op_determinism": bool (TensorFlow's flag now),
        "device": "GPU: <name of GPU:0>" when TensorFlow sees a GPU (where Keras
        places the run), else "CPU: <model name>", "devices": [{"name":
        "/physical_device:GPU:0", "type": "GPU", "model": "NVIDIA H200"}, ...]}`,
        one entry per `tf.config.list_physical_devices()`.
    """
    import tensorflow as tf

    devices = []
    for device in tf.config.list_physical_devices():
        if device.device_type == "GPU":
            try:
                model = tf.config.experimental.get_device_details(device).get("device_name") or "GPU"
            except (ValueError, RuntimeError):
                model = "GPU"
        else:
            model = _cpu_model() if device.device_type == "CPU" else device.device_type
        devices.append({"name": device.name, "type": device.device_type, "model": model})
    gpus = [d for d in devices if d["type"] == "GPU"]
    device = f"GPU: {gpus[0]['model']}" if gpus else f"CPU: {_cpu_model()}"
    return {"deterministic": bool(deterministic),
            "op_determinism": bool(_tf_config().is_op_determinism_enabled()),
            "device": device, "devices": devices}
