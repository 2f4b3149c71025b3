"""`build_model(spec, num_classes)`: raw RGB in, class probabilities out; the same model rebuilt with a run's
weights (`load_run_model`, `load_warm_start`) and exported whole (`export_model`)."""

from __future__ import annotations

import math
from pathlib import Path

import keras

from .bases import build_base, resolve_base, resolve_weights
from .bases.registry import NO_PREPROCESSING
from .bases.saved import preprocess_name, saved_model_path
from .errors import ModelConfigError
from .heads import add_head
from .spec import ExperimentSpec


@keras.saving.register_keras_serializable(package="models")
class Preprocess(keras.layers.Layer):
    """Applies a base's own `preprocess_input` inside the model.

    A named, serialisable layer rather than a `Lambda`, so
    `keras.models.load_model` works in safe mode; `get_config` stores only the
    base name.

    Args:
        base_name: a name `resolve_base` accepts, or `NO_PREPROCESSING` (`"none"`: the inputs pass unchanged,
            for a saved-model base that scales its input itself or takes raw pixels).
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).
    """

    def __init__(self, base_name: str, **kwargs):
        super().__init__(**kwargs)
        self.base_name = base_name
        self._preprocess_input = None if base_name == NO_PREPROCESSING else resolve_base(base_name).preprocess_input

    def call(self, inputs):
        return inputs if self._preprocess_input is None else self._preprocess_input(inputs)

    def get_config(self) -> dict:
        return {**super().get_config(), "base_name": self.base_name}


def build_model(spec: ExperimentSpec, num_classes: int) -> keras.Model:
    """Builds the classifier of a run: resize, preprocess, base, head.

    Seeds Python, NumPy and TensorFlow with `spec.seed` first
    (`keras.utils.set_random_seed`). A pretrained base (`spec.weights` not
    `None`) is frozen and called with `training=False` (Keras
    transfer-learning guide); Keras 3 still runs the layers that fine-tuning
    unfreezes in training mode during `fit`, BatchNormalization included
    (`models.training.fine_tuning.unfreeze_base`). A from-scratch base is
    trainable and called normally. The base layer is named `"base"` (`model.get_layer("base")`);
    `model.weights_choice` holds the `WeightsChoice` it started from.

    Args:
        spec: the run's parameters.
        num_classes: number of classes, >= 2.

    Returns:
        An uncompiled `keras.Model` mapping float32 `(batch, height, width, 3)`
        raw RGB in [0, 255] of any size (resized to `spec.image_size` by a
        bilinear `Resizing` layer) to float32 probabilities
        `(batch, num_classes)`.

    Raises:
        ModelConfigError: if `num_classes < 2` or `build_base` refuses the spec.
    """
    if num_classes < 2:
        raise ModelConfigError(f"num_classes: got {num_classes}, expected >= 2")
    from .training import set_precision_policy

    set_precision_policy(spec)  # before any layer exists: mixed precision (GPU only) or float32
    keras.utils.set_random_seed(spec.seed)
    base, choice = build_base(spec)
    info = resolve_base(spec.base)
    preprocess = preprocess_name(spec, base, saved_model_path(spec, info)) if info.is_saved_model else info.name
    inputs = keras.Input((None, None, 3), dtype="float32", name="image")
    x = keras.layers.Resizing(spec.image_size, spec.image_size, name="resize")(inputs)
    x = Preprocess(preprocess, name="preprocess")(x)
    if spec.from_scratch:
        features = base(x)
    else:
        base.trainable = False
        features = base(x, training=False)
    model = keras.Model(inputs, add_head(features, spec, num_classes), name="classifier")
    model.weights_choice = choice
    return model


def describe_model(model: keras.Model, spec: ExperimentSpec) -> dict:
    """Summarises a model for a run record.

    Args:
        model: a model from `build_model` (after training too). For a model
            without `weights_choice` (e.g. reloaded), the weights are
            described from `spec` again.
        spec: the parameters it was built with.

    Returns:
        A JSON-safe dict: `base` (canonical name), `weights` (`spec.weights`),
        `weights_source` (`"random"`, `"file"`, `"weights_dir"`, `"keras"` or `"saved"`),
        `weights_path` (str or `None`), `weights_sha256` (hex or `None`),
        `trainable_params` and `total_params` (int, at call time) and
        `image_size` (pixels).
    """
    info = resolve_base(spec.base)
    choice = getattr(model, "weights_choice", None) or resolve_weights(spec, info)
    return {
        "base": info.name,
        "weights": spec.weights,
        "weights_source": choice.source,
        "weights_path": choice.path,
        "weights_sha256": choice.sha256,
        "trainable_params": sum(math.prod(v.shape) for v in model.trainable_weights),
        "total_params": int(model.count_params()),
        "image_size": spec.image_size,
    }


def load_model(path) -> keras.Model:
    """Loads a saved `model.keras` (importing this module registers `Preprocess`).

    Args:
        path: a `.keras` file written by `train_model` or `nbsweep export`.

    Returns:
        The compiled `keras.Model`.

    Raises:
        ValueError: if Keras cannot read the file.
    """
    return keras.models.load_model(path)


def load_run_model(spec: ExperimentSpec, num_classes: int, weights_path) -> keras.Model:
    """The one loader of a trained run: `build_model(spec)` again, then the run's weights file.

    - `trained_weights.h5` (the base frozen as built; `models.saving`): the
      base is rebuilt from the weights file the file records (that file's
      sha256 checked first), the frozen weights' sha256 checked against the
      run's, and the trained variables loaded.
    - `model.keras` (a full model, and every older run) or a per-epoch
      checkpoint: built with random weights, then every weight loaded.

    Built in float32 whatever the run's `precision` (mixed precision needs a
    GPU; the variables are float32 either way), as predicting always has.

    Args:
        spec: the run's parameters (from its record).
        num_classes: its number of classes, >= 2.
        weights_path: the run's weights file (`models.names.run_weights_path`)
            or one of its checkpoints.

    Returns:
        A `keras.Model` (uncompiled) mapping float32 `(batch, height, width,
        3)` RGB in [0, 255] to float32 probabilities `(batch, num_classes)`.

    Raises:
        RunWeightsError: (a `ModelConfigError`) the weights file or the base
            weights file it records is missing, the base weights file's or the
            frozen weights' sha256 differs from the run's, or the file does
            not fit the model; the message names the file.
        ModelConfigError: `build_model` refuses the spec.
    """
    from .saving import check_base_file, is_trained_weights_file, load_weights_into, read_base_identity

    identity = read_base_identity(weights_path) if is_trained_weights_file(weights_path) else None
    if identity is not None:
        check_base_file(identity, weights_path)  # before building: a clear error, not a Keras one
        spec = spec.model_copy(update={"weights": identity.weights_path, "weights_dir": None})
    else:
        spec = spec.model_copy(update={"weights": None})  # every weight comes from the file
    model = build_model(spec.model_copy(update={"precision": "float32"}), num_classes)
    load_weights_into(model, weights_path)
    return model


def export_model(model: keras.Model, out_path) -> Path:
    """Saves a loaded run's model as one standalone Keras file (base included).

    `keras.models.load_model(out_path)` loads it alone, in any process that
    has imported `models.build` (which registers the `Preprocess` layer).

    Args:
        model: e.g. from `load_run_model`.
        out_path: the file to write; must end in `.keras`.

    Returns:
        `out_path` as a `Path`.

    Raises:
        ModelConfigError: `out_path` does not end in `.keras`.
    """
    out_path = Path(out_path)
    if out_path.suffix != ".keras":
        raise ModelConfigError(f"export: {out_path}: expected a file name ending in .keras (Keras's format)")
    model.save(out_path)
    return out_path


def load_warm_start(model: keras.Model, resolved, class_names) -> dict | None:
    """Loads the weights of a warm start the runner resolved into `model`, after checking them.

    The runner resolves `warm_start` once, when the run starts
    (`runner.reports.lineage.resolve_warm_start`), and hands the result to the
    notebook as the `resolved_warm_start` parameter; this only checks and loads.

    Args:
        model: a model from `build_model` with the parent's architecture.
        resolved: `None` (no warm start), or a mapping with `parent_run_id`,
            `checkpoint` (`"best"` or an epoch), `weights_path` (absolute: the
            parent's `model.keras` or `trained_weights.h5`, or a checkpoint),
            `weights_sha256` and `class_names` (the parent's).
        class_names: this run's classes, in label order.

    Returns:
        `None` without a warm start; otherwise `{"parent_run_id",
        "checkpoint", "weights_path", "weights_sha256"}` of the weights loaded.

    Raises:
        ModelConfigError: the classes differ from the parent's, or the
            weights file changed since it was resolved (sha256); a
            `RunWeightsError` when the parent's base weights file is missing
            or changed, or its weights do not fit (`models.saving.load_weights_into`).
    """
    if not resolved:
        return None
    from .hashing import sha256_file

    parent = resolved["parent_run_id"]
    if list(resolved["class_names"]) != list(class_names):
        raise ModelConfigError(f"warm_start: run {parent} has classes {list(resolved['class_names'])}, "
                               f"this run has {list(class_names)}")
    path = resolved["weights_path"]
    if sha256_file(path) != resolved["weights_sha256"]:
        raise ModelConfigError(f"warm_start: {path} changed since the run started (sha256 differs)")
    from .saving import load_weights_into

    load_weights_into(model, path)  # model.keras, a trained-weights file or a checkpoint
    return {key: resolved[key] for key in ("parent_run_id", "checkpoint", "weights_path", "weights_sha256")}
