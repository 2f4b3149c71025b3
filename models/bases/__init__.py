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

from .registry import (
    BASES,
    SIMPLE_CNN_MODULE,
    BaseInfo,
    SIMPLE_CNNS,
    resolve_base,
    check_image_size,
    RESERVED_BASE_KWARGS,
    check_base_kwargs,
)
from .simple_cnn import preprocess_input, simple_cnn_small, simple_cnn_medium
from .weights import (
    WEIGHTS_DIR_ENV,
    WeightsChoice,
    offline_weights_file,
    resolve_weights,
    imagenet_fix,
    KerasWeightsFile,
    keras_imagenet_file,
    build_base,
)

__all__ = ["BASES", 
    "SIMPLE_CNN_MODULE",
    "BaseInfo",
    "SIMPLE_CNNS",
    "resolve_base",
    "check_image_size",
    "RESERVED_BASE_KWARGS",
    "check_base_kwargs",
    "preprocess_input",
    "simple_cnn_small",
    "simple_cnn_medium",
    "WEIGHTS_DIR_ENV",
    "WeightsChoice",
    "offline_weights_file",
    "resolve_weights",
    "imagenet_fix",
    "KerasWeightsFile",
    "keras_imagenet_file",
    "build_base",
]
