"""A whole saved Keras model as a base: a backbone of one's own (`base: path/to/model.keras`) or a registry row
whose file lives in the weights folder (`efficientnet_lite0`, `efficientnet_lite2`).

The file is loaded with `keras.saving.load_model` in safe mode and without custom objects, so it must be
built from Keras's own layers. Its output must be an image feature map `(batch, h, w, channels)` or a
vector `(batch, features)`, its input one RGB image batch `(batch, h, w, 3)`. Preprocessing follows the
model: when a `Rescaling` or `Normalization` layer comes before its first layer with weights, the model
scales raw 0..255 pixels itself and nothing is added (`has_own_preprocessing`); otherwise the run's
`preprocess` names the base whose `preprocess_input` to apply (`preprocess_name`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import keras

from ..errors import ModelConfigError
from .registry import NO_PREPROCESSING, WEIGHTS_DIR_ENV, BaseInfo, is_saved_model_path, weights_folder

if TYPE_CHECKING:
    from ..spec import ExperimentSpec



def saved_model_path(spec: ExperimentSpec, info: BaseInfo) -> Path:
    """The file of a saved-model base: `spec.base` when it is a path, else `info.saved_file` in the weights
    folder (`spec.weights_dir`, else `$NBSWEEP_WEIGHTS_DIR`).

    Raises:
        ModelConfigError: the file does not exist; for a registry row, the message names the folder searched
            and where the file comes from.
    """
    if is_saved_model_path(info.name):  # a path given as the run's base
        path = Path(info.saved_file).expanduser()
        if not path.is_file():
            raise ModelConfigError(f"base: file {path} does not exist; expected a saved Keras model (.keras)")
        return path
    folder = weights_folder(spec.weights_dir)
    if folder and (Path(folder).expanduser() / info.saved_file).is_file():
        return Path(folder).expanduser() / info.saved_file
    where = (f"it is not in weights_dir {folder}" if spec.weights_dir else
             f"it is not in ${WEIGHTS_DIR_ENV}={folder}" if folder else
             f"no weights folder is set (weights_dir, --weights-dir or ${WEIGHTS_DIR_ENV})")
    raise ModelConfigError(
        f"base: {info.name} is a whole saved Keras model, {info.saved_file}, which keras.applications does not "
        f"provide, and {where}; put the file in a folder and set weights_dir (or "
        f"${WEIGHTS_DIR_ENV}) to it, or give its path as base: path/to/{info.saved_file}")


def load_saved_model(path: Path) -> keras.Model:
    """The saved model at `path`, checked to be usable as a base.

    Args:
        path: a Keras 3 `.keras` file.

    Returns:
        The model, with weights as saved, not compiled.

    Raises:
        ModelConfigError: naming the file, when it is not a Keras model Keras can load in safe mode without
            custom objects, has other than one RGB image input `(batch, h, w, 3)`, or an output other than a
            feature map `(batch, h, w, c)` or a vector `(batch, c)`.
    """
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises ValueError, TypeError or zipfile errors by cause
        needs = "needs custom objects" if "custom" in str(error).lower() or "locate" in str(error).lower() else \
            "cannot be loaded"
        raise ModelConfigError(f"base: {path} {needs}: expected a saved Keras model (.keras) built from Keras's "
                               f"own layers ({type(error).__name__}: {str(error)[:300]})") from error
    if not isinstance(model, keras.Model) or len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelConfigError(f"base: {path}: expected a model with one input and one output")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ModelConfigError(f"base: {path}: its input is {shape}, expected RGB images (batch, h, w, 3)")
    out = tuple(model.outputs[0].shape)
    if len(out) not in (2, 4):
        raise ModelConfigError(f"base: {path}: its output is {out}, expected an image feature map "
                               f"(batch, h, w, channels) or a vector (batch, features)")
    return model


def check_input_size(model: keras.Model, path: Path, image_size: int) -> None:
    """Refuses an `image_size` that a saved model with a fixed input size does not take.

    Raises:
        ModelConfigError: the model's input is `(batch, h, w, 3)` with `h`, `w` set and not `image_size`.
    """
    height, width = tuple(model.inputs[0].shape)[1:3]
    if (height is not None and height != image_size) or (width is not None and width != image_size):
        raise ModelConfigError(f"image_size: {path} takes {height}x{width} inputs, got image_size={image_size}; "
                               f"set image_size: {height}")


def has_own_preprocessing(model: keras.Model) -> bool:
    """True when a `Rescaling` or `Normalization` layer comes before the first layer with weights: the model
    takes raw 0..255 pixels (as `keras.applications.EfficientNetB0` and the EfficientNet-Lite files do)."""
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
            return True
        if layer.weights:
            return False
    return False


def preprocess_name(spec: ExperimentSpec, model: Optional[keras.Model], path: Path) -> str:
    """What `models.build.Preprocess` applies before a saved-model base: `NO_PREPROCESSING` when the model has
    its own (`spec.preprocess` must then be unset or `none`), else `spec.preprocess`.

    Raises:
        ModelConfigError: the model has no preprocessing of its own and `spec.preprocess` is unset, or it
            has and `spec.preprocess` names another.
    """
    own = model is not None and has_own_preprocessing(model)
    if own:
        if spec.preprocess not in (None, NO_PREPROCESSING):
            raise ModelConfigError(f"preprocess: got {spec.preprocess!r}, but {path} scales its input itself (a "
                                   f"Rescaling or Normalization layer at its input); remove preprocess")
        return NO_PREPROCESSING
    if spec.preprocess is None:
        raise ModelConfigError(f"preprocess: {path} has no Rescaling or Normalization layer at its input, so "
                               f"say what its input expects: preprocess: <a base whose preprocess_input it was "
                               f"trained with, e.g. mobilenet_v2 for [-1, 1]>, or preprocess: none for raw 0..255")
    return spec.preprocess
