"""Data: image folders and the input pipeline.

- `models.data.folders` (TensorFlow-free, so the sweep's pre-flight check can use it): list an
  ImageFolder-style folder (`list_image_folder`: classes, usable images, skipped files and why),
  the builtin digits export, the deterministic stratified split (`split_image_folder`), and
  `load_data`, which does both and hashes the split's manifest.
- `models.data.pipeline`: `tf.data` batches of decoded, resized images (`make_dataset`),
  class-balanced batch sampling, augmentation; imported on first use of one of its names.
"""

import importlib

from .folders import (BUILTIN_PREFIX, SPLITS, DataSplit, ImageFolder, SplitPart, check_image_file, is_hidden,
                      list_class_folders, list_image_folder, load_data, resolve_data_dir, split_image_folder)

_PIPELINE = ("BATCH_SAMPLERS", "batch_arrays", "clear_decoded_images", "decode_images", "index_batches", "load_images",
             "make_dataset")

__all__ = ["BUILTIN_PREFIX", "SPLITS", "DataSplit", "ImageFolder", "SplitPart", "check_image_file", "is_hidden",
           "list_class_folders", "list_image_folder", "load_data", "resolve_data_dir", "split_image_folder",
           *_PIPELINE]


def __getattr__(name):
    if name in _PIPELINE:
        return getattr(importlib.import_module(f"{__name__}.pipeline"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
