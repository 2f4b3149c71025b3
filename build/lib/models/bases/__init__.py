"""The bases: convolutional feature extractors and their weights.

Like `keras.applications`, every base is one factory with the same keyword arguments
(`include_top`, `weights`, `input_shape`, `name`) plus its own `preprocess_input`.

- `models.bases.registry`: `BASES`, the table (name -> constructor, module, minimum input
  size) that drives both the code and the table-driven tests; `resolve_base` finds a base by
  any spelling of its name (any other `keras.applications` constructor too).
- `models.bases.simple_cnn`: two small from-scratch CNNs.
- `models.bases.weights`: `build_base` with its weights (ImageNet offline file, cached
  download or Keras's download, a weights file, or random).
"""

import importlib

from .registry import (BASES, RESERVED_BASE_KWARGS, SIMPLE_CNN_MODULE, SIMPLE_CNNS, BaseInfo, base_key,
                       canonical_base, check_base_kwargs, check_image_size, resolve_base)

_LAZY = {  # Keras is imported on first use of one of these (the registry's table is Keras-free)
    "simple_cnn": ("preprocess_input", "simple_cnn_small", "simple_cnn_medium"),
    "weights": ("WEIGHTS_DIR_ENV", "WeightsChoice", "offline_weights_file", "resolve_weights", "imagenet_fix",
                "KerasWeightsFile", "keras_imagenet_file", "build_base"),
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}

__all__ = ["BASES", "RESERVED_BASE_KWARGS", "SIMPLE_CNN_MODULE", "SIMPLE_CNNS", "BaseInfo", "base_key",
           "canonical_base", "check_base_kwargs", "check_image_size", "resolve_base", *_MODULE_OF]


def __getattr__(name):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
