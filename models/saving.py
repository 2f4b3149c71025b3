"""A run's weights on disk: only what it trained when its frozen base can be rebuilt, else the full model.

A run whose base was built from a known ImageNet weights file (an offline
file, Keras's download, or a `weights` path) and is frozen, in whole or in
part, when it is saved, stores the variables that training could change (the
head, the unfrozen base layers, and every variable outside the base) in
`trained_weights.h5` (`models.names.TRAINED_WEIGHTS_FILE`), together with the
base's identity: its canonical name, the weights file it was built from, that
file's sha256, and the sha256 of the frozen variables' values
(`frozen_weights_digest`). The frozen variables themselves are not stored:
`models.build.load_run_model` rebuilds them with `build_model` from that file
and checks both digests. Any other run (from scratch, warm-started, the whole
base unfrozen, no weights file known) keeps the full model, `model.keras`.

The trained-weights file is HDF5 (h5py), not Keras's `.weights.h5` layout,
because it holds part of a model:

    attrs:  format = "nbsweep-trained-weights", version = 1,
            variables = len(model.weights),
            base = JSON {"name", "weights_path", "weights_sha256",
                         "frozen_weights_sha256", "frozen_variables"}
                   or "null" (nothing frozen: every variable is stored)
    /variables/<index, 5 digits>: the value of `model.weights[index]`,
            attrs `path` (Keras's variable path, for people reading it)

Variables are matched by their index in `model.weights` (deterministic for a
given architecture; paths may carry a process-wide counter) and checked by
shape. Per-epoch checkpoints use the same format
(`models.names.CHECKPOINT_PATTERN`).

Keras freezes a layer in inference mode (a frozen BatchNormalization layer
does not update its moving statistics; Keras transfer-learning guide), so the
frozen variables keep the values `build_model` gave them for the whole run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import h5py
import keras
import numpy as np

from .errors import ModelConfigError
from .hashing import sha256_file
from .names import MODEL_FILE, TRAINED_WEIGHTS_FILE

FORMAT = "nbsweep-trained-weights"
"""The `format` attribute of a trained-weights file."""
FORMAT_VERSION = 1


class RunWeightsError(ModelConfigError):
    """A run's weights cannot be loaded: a file is missing, differs from what the run recorded, or does not fit.

    The message names the file (the run's weights file, or the base weights file it was built from).
    """


@dataclass(frozen=True)
class BaseIdentity:
    """What a trained-weights file needs to rebuild its frozen part.

    Attributes:
        name: the base's canonical name (`models.bases.resolve_base(...).name`).
        weights_path: the weights file the base was built from (absolute, as
            `WeightsChoice.path` gives it).
        weights_sha256: sha256 hex of that file when the run was built.
        frozen_weights_sha256: `frozen_weights_digest` of the frozen variables
            as built.
        frozen_variables: how many of `model.weights` are frozen (not stored).
    """

    name: str
    weights_path: str
    weights_sha256: str
    frozen_weights_sha256: str
    frozen_variables: int


def frozen_weights_digest(variables: Sequence) -> str:
    """sha256 hex of variables' values: shapes, dtypes and bytes, in order.

    Variable paths are left out (a head layer's auto-numbered name may differ
    between two models of one process); the order is `model.weights`'.

    Args:
        variables: Keras variables (or arrays).

    Returns:
        64 hex digits.
    """
    digest = hashlib.sha256()
    for variable in variables:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        digest.update(f"{value.shape}|{value.dtype}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def frozen_indices(model: keras.Model, spec) -> list[int]:
    """Indices in `model.weights` of the variables a run does not store: its frozen base's, as built.

    Frozen means a layer of the base (`model.get_layer("base")`) whose
    `trainable` is `False` now (all of them in the head phase; those
    `unfreeze_base` left frozen after fine-tuning). Nothing is frozen (the
    full model is stored) when the base's weights are not what `build_model`
    gives: `spec.weights` is `None` (from scratch), `spec.warm_start` is set
    (its frozen layers hold its parent's weights), or the model's
    `weights_choice` names no weights file with a sha256.

    Args:
        model: a model from `build_model(spec, ...)`, during or after training.
        spec: its `ExperimentSpec`.

    Returns:
        Sorted indices; empty when the full model must be stored.
    """
    choice = getattr(model, "weights_choice", None)
    if spec.weights is None or spec.warm_start is not None or choice is None or not (choice.path and choice.sha256):
        return []
    try:
        base = model.get_layer("base")
    except ValueError:
        return []
    frozen = {id(v) for layer in base.layers if not layer.trainable for v in layer.weights}
    if not base.trainable:
        frozen = {id(v) for v in base.weights}
    return [index for index, variable in enumerate(model.weights) if id(variable) in frozen]


def base_identity(model: keras.Model, spec, indices: Sequence[int]) -> Optional[BaseIdentity]:
    """The `BaseIdentity` of `model`'s frozen variables `indices` (`frozen_indices`), or `None` when empty."""
    if not indices:
        return None
    weights = model.weights
    choice = model.weights_choice
    return BaseIdentity(name=spec.base, weights_path=str(Path(choice.path).resolve()),
                        weights_sha256=choice.sha256,
                        frozen_weights_sha256=frozen_weights_digest([weights[i] for i in indices]),
                        frozen_variables=len(indices))


def write_trained_weights(model: keras.Model, path: str | os.PathLike, frozen: Sequence[int],
                          identity: Optional[BaseIdentity]) -> Path:
    """Writes every variable of `model` but the `frozen` ones, and the base's identity, to an HDF5 file.

    Written to a temporary file beside `path`, then renamed (a reader never
    sees half a file).

    Args:
        model: the model.
        path: the file to write (`trained_weights.h5`, or a checkpoint).
        frozen: indices in `model.weights` left out (`frozen_indices`).
        identity: the frozen part's `BaseIdentity` (`None` with no `frozen`).

    Returns:
        `path` as a `Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    skipped = set(frozen)
    temporary = path.with_name(f".{path.name}.tmp")
    with h5py.File(temporary, "w") as handle:
        handle.attrs["format"] = FORMAT
        handle.attrs["version"] = FORMAT_VERSION
        handle.attrs["variables"] = len(model.weights)
        handle.attrs["base"] = json.dumps(None if identity is None else asdict(identity))
        group = handle.create_group("variables")
        for index, variable in enumerate(model.weights):
            if index not in skipped:
                dataset = group.create_dataset(f"{index:05d}", data=keras.ops.convert_to_numpy(variable))
                dataset.attrs["path"] = variable.path
    os.replace(temporary, path)
    return path


def save_run_weights(model: keras.Model, spec, output_dir: str | os.PathLike) -> Path:
    """Saves a trained run's weights: `trained_weights.h5` when part of its base is frozen as built, else `model.keras`.

    Args:
        model: the trained model (its final weights in place).
        spec: its `ExperimentSpec` (`frozen_indices` reads it).
        output_dir: the run folder.

    Returns:
        The file written: `<output_dir>/trained_weights.h5` (the variables
        training could change and the base's identity; a few MB with a
        `gap` head) or `<output_dir>/model.keras` (the full Keras model,
        compiled). A file of the other name left by an earlier attempt is
        removed, so a run folder holds one of the two.
    """
    output_dir = Path(output_dir)
    frozen = frozen_indices(model, spec)
    if frozen:
        written = write_trained_weights(model, output_dir / TRAINED_WEIGHTS_FILE, frozen,
                                        base_identity(model, spec, frozen))
        (output_dir / MODEL_FILE).unlink(missing_ok=True)
    else:
        written = output_dir / MODEL_FILE
        model.save(written)
        (output_dir / TRAINED_WEIGHTS_FILE).unlink(missing_ok=True)
    return written


def is_trained_weights_file(path: str | os.PathLike) -> bool:
    """True when `path` is an HDF5 file in this module's format (not a Keras `.keras` / `.weights.h5` file)."""
    try:
        with h5py.File(path, "r") as handle:
            return handle.attrs.get("format") == FORMAT
    except OSError:
        return False


def read_base_identity(path: str | os.PathLike) -> Optional[BaseIdentity]:
    """The `BaseIdentity` a trained-weights file records, or `None` when it stores every variable.

    Raises:
        RunWeightsError: `path` is missing or is not a trained-weights file
            of a known version.
    """
    path = Path(path)
    if not path.is_file():
        raise RunWeightsError(f"weights file missing: {path}")
    try:
        with h5py.File(path, "r") as handle:
            found, version = handle.attrs.get("format"), handle.attrs.get("version")
            base = handle.attrs.get("base")
    except OSError as exc:
        raise RunWeightsError(f"cannot read {path}: {exc}") from exc
    if found != FORMAT or version != FORMAT_VERSION:
        raise RunWeightsError(f"{path}: not a trained-weights file (format {found!r} version {version!r}, "
                              f"expected {FORMAT!r} version {FORMAT_VERSION})")
    payload = json.loads(base)
    return None if payload is None else BaseIdentity(**payload)


def check_base_file(identity: BaseIdentity, where: str | os.PathLike) -> None:
    """Checks that the base weights file a run was built from is there, unchanged (sha256).

    Args:
        identity: from `read_base_identity`.
        where: the run's weights file (named in the messages).

    Raises:
        RunWeightsError: `"base weights <path> (recorded in <where>) is
            missing"` or `"base weights <path>: sha256 <12 hex>… differs from
            the run's <12 hex>… (recorded in <where>)"`.
    """
    base_path = Path(identity.weights_path)
    if not base_path.is_file():
        raise RunWeightsError(f"base weights {base_path} (recorded in {where}) is missing: the run stores only "
                              f"what it trained and rebuilds its {identity.name} base from that file; put it back "
                              f"or export the run while it is there")
    actual = sha256_file(base_path)
    if actual != identity.weights_sha256:
        raise RunWeightsError(f"base weights {base_path}: sha256 {actual[:12]}… differs from the run's "
                              f"{identity.weights_sha256[:12]}… (recorded in {where})")


def load_weights_into(model: keras.Model, path: str | os.PathLike) -> Optional[BaseIdentity]:
    """Loads a run's weights file of any kind into `model`, a `build_model` of the run's architecture.

    - `.keras` (a full model) or a Keras `.weights.h5` (older runs' per-epoch
      checkpoints): `model.load_weights`.
    - a trained-weights file: when the frozen variables of `model` differ from
      the recorded digest (e.g. a warm start built with other base weights),
      the base is loaded from the recorded base weights file, checked first
      (`check_base_file`); then the digest must match and the stored
      variables are assigned. Frozen values that match the digest are the
      run's, whatever file gave them, so the base file is not read again
      (`models.build.load_run_model` checks it before building).

    Args:
        model: the rebuilt model.
        path: `model.keras`, `trained_weights.h5` or a checkpoint.

    Returns:
        The file's `BaseIdentity`, or `None` for a full-model file.

    Raises:
        RunWeightsError: a file is missing, the base weights file changed,
            the frozen weights differ after loading it, or the file does not
            fit `model` (another number of variables or another shape),
            each message naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise RunWeightsError(f"weights file missing: {path}")
    if not is_trained_weights_file(path):
        try:
            model.load_weights(path)
        except (ValueError, OSError) as exc:
            raise RunWeightsError(f"{path}: does not fit the run's model: {str(exc)[:300]}") from exc
        return None
    identity = read_base_identity(path)
    with h5py.File(path, "r") as handle:
        total = int(handle.attrs["variables"])
        stored = {int(name): np.asarray(dataset) for name, dataset in handle["variables"].items()}
    weights = model.weights
    if total != len(weights):
        raise RunWeightsError(f"{path}: holds weights of a model with {total} variables, this model has "
                              f"{len(weights)} (another architecture)")
    frozen = [weights[i] for i in range(total) if i not in stored]
    if identity is not None:
        if frozen_weights_digest(frozen) != identity.frozen_weights_sha256:  # read the base file only then
            check_base_file(identity, path)
            model.get_layer("base").load_weights(identity.weights_path)
            actual = frozen_weights_digest(frozen)
            if actual != identity.frozen_weights_sha256:
                raise RunWeightsError(
                    f"{path}: the frozen base weights built from {identity.weights_path} have sha256 "
                    f"{actual[:12]}…, the run's were {identity.frozen_weights_sha256[:12]}… (another "
                    f"architecture, base_kwargs or Keras version?)")
    elif frozen:
        raise RunWeightsError(f"{path}: stores {len(stored)} of {total} variables but records no base")
    for index, value in stored.items():
        if tuple(weights[index].shape) != value.shape:
            raise RunWeightsError(f"{path}: variable {index} ({weights[index].path}) has shape "
                                  f"{tuple(weights[index].shape)} here, {value.shape} in the file")
        weights[index].assign(value)
    return identity
