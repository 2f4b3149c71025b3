"""The machine-learning pipeline that the base notebook and the predict path import; knows nothing of sweeps.

`models.spec` (the run's parameters, `ExperimentSpec`, validated without TensorFlow) →
`models.data` (image folder → stratified split, TF-free in `folders`; `tf.data` batches in
`pipeline`) → `models.augment` (augmentation layers) → `models.bases` (registry, simple CNNs,
weights) + `models.heads` → `models.build` (`build_model(spec, num_classes)`, warm starts,
loading a saved run) → `models.training` (head phase then fine-tuning: loop, callbacks,
schedules) with `models.cache` (frozen layers' outputs reused) and `models.pruning` (a search's
per-epoch report) → `models.evaluate` (metrics, predictions, plots) → `models.contract` (what
the notebook writes for the runner: `NotebookResult`, `write_result`). `models.names` holds the
shared vocabulary (file names, phases, TTA views, the default metric), `models.hashing` the
hashes, `models.errors` the exception root.

Only `ExperimentSpec`, `Augmentation` and `ModelConfigError` are imported
eagerly: validating a grid must not pay for importing TensorFlow. Every other
name (`models.load_data`, `models.build_model`, ...) imports its submodule on
first access (PEP 562).
"""

import importlib

from .errors import ModelConfigError
from .spec import Augmentation, ExperimentSpec

_LAZY = {
    "data": ("DataSplit", "ImageFolder", "SplitPart", "check_image_file", "list_image_folder",
             "load_data", "load_images", "make_dataset", "resolve_data_dir", "split_image_folder"),
    "augment": ("build_augmentation",),
    "bases": ("BASES", "BaseInfo", "KerasWeightsFile", "WeightsChoice", "build_base",
              "check_base_kwargs", "check_image_size", "imagenet_fix", "keras_imagenet_file",
              "offline_weights_file", "resolve_base", "resolve_weights"),
    "heads": ("add_head",),
    "build": ("Preprocess", "build_model", "describe_model", "load_model", "load_warm_start"),
    "training": ("TrainingResult", "train_model", "unfreeze_base"),
    "evaluate": ("EvaluationResult", "evaluate_model", "plot_history"),
    "cache": ("ActivationCache", "CacheBypass", "cached_inputs", "split_model"),
    "reproducibility": ("runtime_info", "set_determinism"),
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}

__all__ = ["Augmentation", "ExperimentSpec", "ModelConfigError", *sorted(_MODULE_OF)]


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__, *_LAZY})
