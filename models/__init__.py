"""The machine-learning pipeline that the base notebook and the predict path import.

Data (folder -> stratified split -> `tf.data`), augmentation layers, the base
registry, heads, `build_model(spec, num_classes)`, the training phases (head,
then fine-tuning) and evaluation (metrics, plots).

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
