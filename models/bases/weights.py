"""A base built with its weights: ImageNet (an offline file, a cached download or Keras's download), a weights file, or random."""

from __future__ import annotations

import contextlib
import inspect
import os
import urllib.parse
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional
import keras
from ..hashing import sha256_file
from ..errors import ModelConfigError

if TYPE_CHECKING:  # annotations only: the spec imports the registry (canonical base names)
    from ..spec import ExperimentSpec
from .registry import WEIGHTS_DIR_ENV, BaseInfo, weights_folder, check_base_kwargs, check_image_size, resolve_base
from .saved import check_input_size, load_saved_model, saved_model_path

@dataclass(frozen=True)
class WeightsChoice:
    """Where a base's initial weights come from.

    Attributes:
        keras_arg: the constructor's `weights` argument: `None`, `"imagenet"`
            or a file path.
        source: `"random"`, `"file"` (`spec.weights` is a path),
            `"weights_dir"` (offline ImageNet file), `"keras"` (Keras's
            download cache) or `"saved"` (a saved-model base's own weights).
        sha256: hex digest of the weights file, or `None` when there is no
            file or it was not found.
        path: the weights file, or `None`.
    """

    keras_arg: Optional[str]
    source: str
    sha256: Optional[str]
    path: Optional[str] = None

    def __str__(self) -> str:
        label = {"random": "random initialisation", "file": "weights file",
                 "weights_dir": "offline ImageNet weights", "keras": "Keras's ImageNet weights",
                 "saved": "the saved model's weights"}
        return " ".join(filter(None, (label[self.source], self.path,
                                      self.sha256 and f"(sha256 {self.sha256[:12]})")))


def offline_weights_file(info: BaseInfo, base_kwargs: dict) -> str:
    """Name of the offline ImageNet weights file of a base, as `../shared/weights` names them.

    `<name>[_<alpha>]_imagenet_notop.weights.h5`, with `_<alpha>` (formatted
    as `float`: `1.0`, `0.35`) only for constructors that take `alpha`.

    Args:
        info: the base.
        base_kwargs: the constructor's extra keyword arguments; `alpha`
            defaults to `1.0`.

    Returns:
        The file name, e.g. `"mobilenet_v2_0.35_imagenet_notop.weights.h5"`.
    """
    alpha = ""
    if "alpha" in inspect.signature(info.constructor).parameters:
        alpha = f"_{float(base_kwargs.get('alpha', 1.0))}"
    return f"{info.name}{alpha}_imagenet_notop.weights.h5"


def resolve_weights(spec: ExperimentSpec, info: BaseInfo) -> WeightsChoice:
    """Decides where the base's initial weights come from, without loading them.

    `None` is random initialisation; a path is a Keras weights file of this
    base (`include_top=False`); for a saved-model base (`BaseInfo.is_saved_model`)
    `"imagenet"` is the weights the file holds (`"saved"`); else `"imagenet"` uses the offline file
    `offline_weights_file(info, spec.base_kwargs)` from the weights folder
    (`spec.weights_dir`, else the `NBSWEEP_WEIGHTS_DIR` environment variable)
    when it is there, else Keras's download (cached under `~/.keras/models`).

    Args:
        spec: the run's parameters; reads `weights`, `weights_dir` and
            `base_kwargs`.
        info: the base, from `resolve_base(spec.base)`.

    Returns:
        A `WeightsChoice`; for `"keras"` the file and its sha256 are only
        known after `build_base` downloaded it.

    Raises:
        ModelConfigError: if the weights file does not exist, `"imagenet"` is
            asked of a base without ImageNet weights, or the weights folder
            does not exist.
    """
    if spec.weights is None:
        return WeightsChoice(None, "random", None)
    if info.is_saved_model and spec.weights == "imagenet":
        path = saved_model_path(spec, info)
        return WeightsChoice(str(path), "saved", sha256_file(path), str(path))
    if spec.weights != "imagenet":
        path = Path(spec.weights).expanduser()
        if not path.is_file():
            raise ModelConfigError(
                f"weights: file {path} does not exist; expected 'imagenet', null or a "
                f"Keras weights file of base {info.name}")
        return WeightsChoice(str(path), "file", sha256_file(path), str(path))
    if not info.has_imagenet:
        raise ModelConfigError(
            f"weights: got 'imagenet' for {info.name}, which is trained from scratch; "
            f"expected null or a weights file path")
    folder = weights_folder(spec.weights_dir)
    if folder:
        if not Path(folder).expanduser().is_dir():
            raise ModelConfigError(f"weights_dir: folder {folder} does not exist")
        path = Path(folder).expanduser() / offline_weights_file(info, spec.base_kwargs)
        if path.is_file():
            return WeightsChoice(str(path), "weights_dir", sha256_file(path), str(path))
    return WeightsChoice("imagenet", "keras", None)


class _DownloadError(Exception):
    pass


class _WeightsRequest(Exception):
    """Raised instead of a download: the arguments Keras passed to `get_file`."""

    def __init__(self, arguments: dict):
        super().__init__(arguments.get("fname"))
        self.arguments = arguments


@contextlib.contextmanager
def _keras_downloads(fetch: bool = True):
    """Records the files `keras.applications` fetches; marks fetch failures as `_DownloadError`.

    With `fetch=False` nothing is downloaded: the first `get_file` call raises
    `_WeightsRequest` with its arguments instead.
    """
    from keras.src.utils import file_utils  # every application calls file_utils.get_file

    get_file, fetched = file_utils.get_file, []
    signature = inspect.signature(get_file)

    def recording_get_file(*args, **kwargs):
        if not fetch:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            raise _WeightsRequest(dict(bound.arguments))
        try:
            fetched.append(get_file(*args, **kwargs))
        except Exception as error:
            raise _DownloadError(str(error)) from error
        return fetched[-1]

    file_utils.get_file = recording_get_file
    try:
        yield fetched
    finally:
        file_utils.get_file = get_file


def imagenet_fix(info: BaseInfo, base_kwargs: dict) -> str:
    """How to make `weights: imagenet` work without a network, as one sentence for messages.

    Args:
        info: the base.
        base_kwargs: its constructor's extra arguments (`alpha` names the file).

    Returns:
        `"Fix: put <offline file> in a folder and pass --weights-dir FOLDER, ..."`.
    """
    return (f"Fix: put {offline_weights_file(info, base_kwargs)} in a folder and pass "
            f"--weights-dir FOLDER, set {WEIGHTS_DIR_ENV}=FOLDER or weights_dir: FOLDER, "
            f"or use weights: null")


@dataclass(frozen=True)
class KerasWeightsFile:
    """The ImageNet weights file Keras downloads for a base, and where it would be cached.

    Attributes:
        name: the file name in Keras's cache, e.g.
            `"vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"`.
        url: where Keras downloads it from.
        cache_paths: where `keras.utils.get_file` looks for it:
            `$KERAS_HOME/models/` (default `~/.keras/models/`), then
            `/tmp/.keras/models/` (Keras's fallback when the first is read-only).
    """

    name: str
    url: str
    cache_paths: tuple[Path, ...]

    @property
    def cached_path(self) -> Optional[Path]:
        """The first of `cache_paths` that exists, or `None`."""
        return next((path for path in self.cache_paths if path.is_file()), None)


def keras_imagenet_file(spec: ExperimentSpec, info: BaseInfo) -> Optional[KerasWeightsFile]:
    """Asks Keras which file `weights="imagenet"` of this base downloads, without downloading it.

    Builds the base with `weights="imagenet"` at `spec.image_size` while
    `keras.utils.get_file` is intercepted: the file name and URL are those
    Keras itself asks for (they depend on the base, `alpha` and, for
    MobileNets, the input size; EfficientNet names it after the model).
    Costs one model construction with random weights, e.g. 0.2 s for VGG16
    at 128 pixels, 3 s for InceptionResNetV2, on one CPU core.

    Args:
        spec: the run's parameters; reads `base_kwargs` and `image_size`.
        info: the base, from `resolve_base(spec.base)`; must have ImageNet
            weights.

    Returns:
        The `KerasWeightsFile`, or `None` when the constructor asks for no
        file.

    Raises:
        ModelConfigError: if the constructor refuses `weights="imagenet"`
            with this image size or these `base_kwargs` (e.g. a MobileNet
            `alpha` without ImageNet weights).
    """
    size = spec.image_size
    try:
        with _keras_downloads(fetch=False):
            info.constructor(include_top=False, weights="imagenet", input_shape=(size, size, 3),
                             **spec.base_kwargs)
    except _WeightsRequest as request:
        arguments = request.arguments
    except (TypeError, ValueError) as error:
        raise ModelConfigError(
            f"base {info.name}: cannot build it with weights='imagenet', image_size={size}, "
            f"base_kwargs={spec.base_kwargs}: {error}") from error
    else:
        return None
    url = arguments.get("origin") or ""
    name = arguments.get("fname") or os.path.basename(urllib.parse.urlsplit(url).path)
    subdir = arguments.get("cache_subdir") or "datasets"
    home = arguments.get("cache_dir") or os.environ.get("KERAS_HOME") or "~/.keras"
    paths = tuple(dict.fromkeys(Path(folder).expanduser() / subdir / name
                                for folder in (home, "/tmp/.keras")))
    return KerasWeightsFile(name=name, url=url, cache_paths=paths)


def _load_weights_file(base: keras.Model, info: BaseInfo, path: str) -> None:
    with warnings.catch_warnings(record=True) as caught:  # Keras warns per layer on a mismatch
        warnings.simplefilter("always")
        try:
            base.load_weights(path)
        except (OSError, ValueError) as error:
            raise ModelConfigError(
                f"weights: {path} does not fit base {info.name} (wrong architecture, "
                f"base_kwargs or file format): {str(error)[:300]}") from error
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def build_base(spec: ExperimentSpec) -> tuple[keras.Model, WeightsChoice]:
    """Builds the base named `spec.base`, named `"base"`, with its initial weights.

    Weights files (`source` `"file"` or `"weights_dir"`) are loaded with
    `load_weights` after building with random weights, as Keras does for a
    `weights` path.

    Args:
        spec: the run's parameters; reads `base`, `base_kwargs`, `image_size`,
            `weights` and `weights_dir`.

    Returns:
        `(base, weights)`: a `keras.Model` without its classifier
        (`include_top=False`) mapping preprocessed `(batch, image_size,
        image_size, 3)` to feature maps `(batch, h, w, channels)`, and the
        `WeightsChoice` it was initialised from (`str()` describes it).

    Raises:
        ModelConfigError: if `resolve_base` or `resolve_weights` refuse the
            spec, `spec.image_size` is below the base's minimum size, the
            constructor refuses `spec.base_kwargs`, the weights file does not
            fit the architecture, or the ImageNet download fails (no network)
            and no offline file exists.
    """
    info = resolve_base(spec.base)
    check_image_size(info, spec.image_size)
    check_base_kwargs(info, spec.base_kwargs)
    choice = resolve_weights(spec, info)
    if info.is_saved_model:
        return _build_saved_base(spec, info, choice), choice
    try:
        with _keras_downloads() as fetched:
            # Keras's own name: EfficientNet names its weights file after it, ConvNeXt checks it.
            base = info.constructor(
                include_top=False, weights="imagenet" if choice.source == "keras" else None,
                input_shape=(spec.image_size, spec.image_size, 3), **spec.base_kwargs)
    except _DownloadError as error:
        raise ModelConfigError(
            f"weights: cannot download the ImageNet weights of {info.name} ({error}): no "
            f"network and no offline file. {imagenet_fix(info, spec.base_kwargs)}") from error
    except (TypeError, ValueError) as error:
        raise ModelConfigError(
            f"base {info.name}: cannot build it with image_size={spec.image_size}, "
            f"base_kwargs={spec.base_kwargs}: {error}") from error
    base.name = "base"
    if choice.source in ("file", "weights_dir"):
        _load_weights_file(base, info, choice.path)
    if fetched:
        choice = replace(choice, path=fetched[-1], sha256=sha256_file(fetched[-1]))
    return base, choice


def _build_saved_base(spec: ExperimentSpec, info: BaseInfo, choice: WeightsChoice) -> keras.Model:
    """A saved-model base (`models.bases.saved`), named `"base"`: its own weights (`"saved"`), fresh ones drawn
    from its layers' initialisers (`"random"`, `keras.models.clone_model`), or a weights file's (`"file"`)."""
    path = saved_model_path(spec, info)
    base = load_saved_model(path)
    check_input_size(base, path, spec.image_size)
    if choice.source == "random":
        base = keras.models.clone_model(base)
    elif choice.source == "file":
        try:
            base.load_weights(choice.path)
        except (ValueError, OSError) as error:
            raise ModelConfigError(f"weights: {choice.path} does not fit {path} ({str(error)[:300]})") from error
    base.name = "base"
    return base
