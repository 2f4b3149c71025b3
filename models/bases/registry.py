"""The base registry: one row per base (name, constructor, module, minimum input size), looked up by any spelling of its name."""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from ..errors import ModelConfigError

if TYPE_CHECKING:  # Keras is imported when a base is built or looked up outside the table, not for the table
    import keras


_APPS = "keras.applications."
SIMPLE_CNN_MODULE = "models.bases.simple_cnn"


@dataclass(frozen=True)
class BaseInfo:
    """One registry row.

    Attributes:
        name: canonical name, as run records and offline weights files use it.
        constructor_name: the factory's name in `module_name`.
        module_name: dotted module holding `preprocess_input` and the factory
            (or, for Keras models, `keras.applications` holds the factory).
        min_size: smallest input side the architecture accepts, pixels (the
            `min_size` Keras passes to `obtain_input_shape`).
        has_imagenet: whether `weights="imagenet"` exists for it.
        saved_file: for a base that is a whole saved Keras model
            (`models.bases.saved`), the file: a name looked up in the weights
            folder for a registry row (`efficientnet_lite0`), or the path a
            run's `base` gives; `None` for a constructor.
    """

    name: str
    constructor_name: str
    module_name: str
    min_size: int = 32
    has_imagenet: bool = True
    saved_file: Optional[str] = None

    @property
    def is_saved_model(self) -> bool:
        """True for a whole saved Keras model (`saved_file`), False for a constructor."""
        return self.saved_file is not None

    @property
    def constructor(self) -> Callable[..., keras.Model]:
        """The factory, e.g. `keras.applications.VGG16`."""
        import keras

        module = importlib.import_module(self.module_name)
        # keras.applications.mobilenet_v3 exports no constructor: the package does.
        return getattr(module, self.constructor_name, None) or getattr(
            keras.applications, self.constructor_name)

    @property
    def preprocess_input(self) -> Callable:
        """The base's own `preprocess_input` (raw RGB in [0, 255] -> model input)."""
        return importlib.import_module(self.module_name).preprocess_input


BASES: dict[str, BaseInfo] = {info.name: info for info in (
    BaseInfo("vgg16", "VGG16", _APPS + "vgg16"),
    BaseInfo("vgg19", "VGG19", _APPS + "vgg19"),
    BaseInfo("resnet50", "ResNet50", _APPS + "resnet"),
    BaseInfo("resnet101", "ResNet101", _APPS + "resnet"),
    BaseInfo("resnet50_v2", "ResNet50V2", _APPS + "resnet_v2"),
    BaseInfo("inception_v3", "InceptionV3", _APPS + "inception_v3", min_size=75),
    BaseInfo("inception_resnet_v2", "InceptionResNetV2", _APPS + "inception_resnet_v2",
             min_size=75),
    BaseInfo("xception", "Xception", _APPS + "xception", min_size=71),
    BaseInfo("mobilenet", "MobileNet", _APPS + "mobilenet"),
    BaseInfo("mobilenet_v2", "MobileNetV2", _APPS + "mobilenet_v2"),
    BaseInfo("densenet121", "DenseNet121", _APPS + "densenet"),
    BaseInfo("efficientnet_b0", "EfficientNetB0", _APPS + "efficientnet"),
    BaseInfo("convnext_tiny", "ConvNeXtTiny", _APPS + "convnext"),
    BaseInfo("efficientnet_lite0", "", "", saved_file="efficientnet_lite0_imagenet_notop.keras"),
    BaseInfo("efficientnet_lite2", "", "", saved_file="efficientnet_lite2_imagenet_notop.keras"),
    BaseInfo("simple_cnn_small", "simple_cnn_small", SIMPLE_CNN_MODULE, min_size=8, has_imagenet=False),
    BaseInfo("simple_cnn_medium", "simple_cnn_medium", SIMPLE_CNN_MODULE, min_size=8,
             has_imagenet=False),
)}
SIMPLE_CNNS = tuple(name for name, info in BASES.items() if not info.has_imagenet)




WEIGHTS_DIR_ENV = "NBSWEEP_WEIGHTS_DIR"
"""The environment variable naming the offline weights folder when a run's `weights_dir` is not set."""


def weights_folder(weights_dir: Optional[str]) -> Optional[str]:
    """The offline weights folder a run reads: its `weights_dir`, else `$NBSWEEP_WEIGHTS_DIR`, else `None`.
    Keras-free, so the grid's fingerprint and the bases read the same folder."""
    return weights_dir or os.environ.get(WEIGHTS_DIR_ENV) or None
SAVED_MODEL_SUFFIX = ".keras"
"""A `base` ending in this is the path of a whole saved Keras model (Keras 3's format), not a name."""


def is_saved_model_path(name: str) -> bool:
    """Whether a `base` value is the path of a saved Keras model (it ends in `SAVED_MODEL_SUFFIX`)."""
    return name.lower().endswith(SAVED_MODEL_SUFFIX)


def is_saved_model_base(name: str) -> bool:
    """Whether a `base` value names a whole saved Keras model: a path (`is_saved_model_path`) or a registry
    row with a `saved_file` (`efficientnet_lite0`). Keras-free."""
    if is_saved_model_path(name):
        return True
    info = BASES.get(canonical_base(name))
    return info is not None and info.is_saved_model


NO_PREPROCESSING = "none"
"""`preprocess: none`: raw 0..255 pixels go into a saved-model base as they are."""


def base_key(name: str) -> str:
    """A base name with case, `_` and `-` dropped: `"MobileNet-V2"` -> `"mobilenetv2"`; names that agree
    on it are one base (`resolve_base` looks names up by it)."""
    return name.lower().replace("_", "").replace("-", "")


_key = base_key
_CANONICAL = {base_key(name): name for name in BASES}


def canonical_base(name: str) -> str:
    """The one spelling of a base name, without importing Keras: what `resolve_base(name).name` gives.

    What specs, config hashes, warm starts, the cache and the search's cost model compare.

    Args:
        name: any spelling `resolve_base` accepts (`"VGG16"`, `"vgg16"`, `"MobileNetV2"`,
            `"mobilenet-v2"`, `"EfficientNetB3"`).

    Returns:
        `name` itself for the path of a saved model (`is_saved_model_path`). The registry name (`"vgg16"`,
        `"mobilenet_v2"`) for a registry base, else `base_key(name)`, which is
        the lower-cased constructor name `resolve_base` gives any other `keras.applications` model
        (`"efficientnetb3"`; Keras's constructor names hold no `_` or `-`). An unknown name is returned in
        the same form; `resolve_base` refuses it.
    """
    if is_saved_model_path(name):
        return name
    key = base_key(name)
    return _CANONICAL.get(key, key)


@functools.cache
def _lookup() -> dict[str, BaseInfo]:
    """Normalised name -> `BaseInfo`: the registry, then every `keras.applications` factory."""
    import keras

    table = {_key(name): info for name, info in BASES.items()}
    for attr, value in sorted(vars(keras.applications).items()):
        if attr[:1].isupper() and callable(value):  # e.g. EfficientNetB3 from ...efficientnet
            module_name = _APPS + value.__module__.rsplit(".", 1)[-1]
            table.setdefault(_key(attr), BaseInfo(attr.lower(), attr, module_name))
    return table


def resolve_base(name: str) -> BaseInfo:
    """Finds a base by name, case-insensitively and ignoring `_` and `-`.

    Registry names (`mobilenet_v2`), Keras constructor names (`MobileNetV2`)
    and any other `keras.applications` constructor (`EfficientNetB3`,
    `nasnetmobile`; minimum size 32) are accepted, and the path of a saved
    Keras model (`is_saved_model_path`; the file is read when the base is built).

    Args:
        name: the base name, e.g. `ExperimentSpec.base`.

    Returns:
        The registry row; for a Keras model outside the registry, a row named
        after the lower-cased constructor name.

    Raises:
        ModelConfigError: if no base has this name; the message lists close
            matches.
    """
    if is_saved_model_path(name):
        return BaseInfo(name, "", "", min_size=1, saved_file=name)
    table = _lookup()
    if _key(name) in table:
        return table[_key(name)]
    close = sorted(table[k].name for k in difflib.get_close_matches(_key(name), table, n=3))
    raise ModelConfigError(
        f"base: got {name!r}, expected a keras.applications model name, one of "
        f"{', '.join(n for n, info in BASES.items() if info.saved_file or not info.has_imagenet)}, or the "
        f"path of a saved Keras model (*{SAVED_MODEL_SUFFIX}); close matches: {', '.join(close) or 'none'}")


def check_image_size(info: BaseInfo, image_size: int) -> None:
    """Checks that a base accepts square inputs of `image_size` pixels.

    Args:
        info: the base.
        image_size: the input side, pixels.

    Raises:
        ModelConfigError: if `image_size < info.min_size`.
    """
    if image_size < info.min_size:
        raise ModelConfigError(
            f"image_size: {info.name} needs image_size >= {info.min_size}, got {image_size}; "
            f"use image_size >= {info.min_size} or another base")


RESERVED_BASE_KWARGS = ("include_top", "weights", "input_shape", "name")
"""Constructor arguments that `build_base` sets itself."""


def check_base_kwargs(info: BaseInfo, base_kwargs: dict) -> None:
    """Checks `base_kwargs` against the base constructor's signature, without building it.

    Args:
        info: the base.
        base_kwargs: extra keyword arguments for its constructor.

    Raises:
        ModelConfigError: if a name is not an argument of the constructor, or
            is one of `RESERVED_BASE_KWARGS`.
    """
    if info.is_saved_model:
        if base_kwargs:
            raise ModelConfigError(f"base_kwargs: got {base_kwargs} for {info.name}, a saved model: it is "
                                   f"loaded as it was saved, so it takes no constructor arguments; remove them")
        return
    parameters = inspect.signature(info.constructor).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    allowed = ", ".join(name for name in parameters if name not in RESERVED_BASE_KWARGS)
    where = f"base_kwargs: base {info.name}: cannot build it with base_kwargs={base_kwargs}"
    reserved = [name for name in base_kwargs if name in RESERVED_BASE_KWARGS]
    unknown = [name for name in base_kwargs if name not in parameters]
    if reserved:
        raise ModelConfigError(
            f"{where}: {', '.join(map(repr, reserved))} are set from the run's base, weights and "
            f"image_size; remove them ({info.constructor_name} also takes {allowed})")
    if unknown:
        raise ModelConfigError(
            f"{where}: {', '.join(map(repr, unknown))} "
            f"{'is not an argument' if len(unknown) == 1 else 'are not arguments'} of "
            f"{info.constructor_name}; expected some of {allowed}")
