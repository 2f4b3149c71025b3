"""The experiment specification: every parameter of one run, validated.

`ExperimentSpec` is the single source of truth for the parameters of the base
notebook (`notebooks/base_experiment.ipynb`): the notebook's `parameters` cell
holds the same names with the same defaults, the sweep runner validates every
expanded grid configuration against this model before anything runs, and the
predict path rebuilds a model from the `params` stored in a run record with it.
Each parameter is described beside its field (`Field(description=...)`), in a
grid file's spelling (`null`, `true`); `runner.grid.docs_tables` writes the
parameter tables of `docs/grid.md` from those descriptions.

This module imports neither TensorFlow nor Keras, so validating a grid is fast.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ModelConfigError
from .hashing import sha256_json
from .bases.registry import BASES, NO_PREPROCESSING, canonical_base, is_saved_model_base
from .names import EPOCH_LOG_KEYS, TTA_VIEWS

DETERMINISTIC_DEFAULT = True
"""Default of the `deterministic` parameter. The notebook's parameters cell repeats it as a literal
(papermill reads literals only); `tests/test_grid.py` fails when the two disagree."""


class SpecModel(BaseModel):
    """Base of this module's models: immutable, strictly typed, finite, unknown keys refused by name.

    Its configuration: `extra="forbid"` (a key that is not a field is refused),
    `frozen=True` (an instance cannot be changed), `strict=True` (pydantic's
    strict mode: `True` is not an int, `"32"` not an int, `"yes"` not a bool;
    an int is accepted for a float field and a mapping for a nested model) and
    `allow_inf_nan=False` (`.inf` and `.nan` are refused, as JSON cannot record
    them). `model_dump(mode="json")` validates again unchanged.

    A subclass that sets `param_path` refuses a mapping with unknown keys
    naming every allowed key ("unknown key augmentation.flipp; allowed keys of
    augmentation: random_resized_crop, flip, ..."), where pydantic's own
    message ("Extra inputs are not permitted") does not list them. Then
    `_input_form` may rewrite the input before its fields are validated (one
    number into a mapping, say): a subclass overrides that hook rather than
    adding a `mode="before"` validator, which pydantic would run before this
    class's, so unknown keys are refused first and echoed as received.

    Attributes:
        param_path: where the mapping sits in a run's parameters, as messages
            name it (`"augmentation.shear"`); `None` leaves unknown keys to
            `extra="forbid"`. Defaults to `None`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    param_path: ClassVar[Optional[str]] = None

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data):
        if cls.param_path is not None and isinstance(data, dict):
            unknown = [str(key) for key in data if key not in cls.model_fields]
            if unknown:
                raise ValueError(f"unknown key{'s' * (len(unknown) > 1)} "
                                 f"{', '.join(f'{cls.param_path}.{key}' for key in unknown)}; "
                                 f"allowed keys of {cls.param_path}: {', '.join(cls.model_fields)}")
        return cls._input_form(data)

    @classmethod
    def _input_form(cls, data: Any) -> Any:
        """The input as the fields are validated from, once unknown keys are refused; `data` itself here."""
        return data


def _check_range(name: str, value: list[float], low: float, high: Optional[float], what: str) -> None:
    """Checks a `[min, max]` pair: `low < min <= max` (`<= high` when given)."""
    lo, hi = value
    if not (low < lo <= hi and (high is None or hi <= high)):
        bound = f"{low} < min <= max" + (f" <= {high}" if high is not None else "")
        raise ValueError(f"{name}: got {value}, expected [min, max] with {bound} ({what})")


class RandomResizedCropFactors(SpecModel):
    """The ranges of torchvision's `RandomResizedCrop` (this project's Keras layer follows it)."""

    param_path = "augmentation.random_resized_crop"

    scale: list[float] = Field(
        default_factory=lambda: [0.08, 1.0], min_length=2, max_length=2,
        description="`[min, max]` fraction of the image area kept, with 0 < min <= max <= 1; the default is "
                    "torchvision's.")
    ratio: list[float] = Field(
        default_factory=lambda: [3 / 4, 4 / 3], min_length=2, max_length=2,
        description="`[min, max]` width / height aspect ratio of the crop (drawn log-uniformly), with "
                    "0 < min <= max; the default is torchvision's (3/4, 4/3).")

    @model_validator(mode="after")
    def _ranges(self) -> "RandomResizedCropFactors":
        _check_range("scale", self.scale, 0.0, 1.0, "area fractions")
        _check_range("ratio", self.ratio, 0.0, None, "width / height")
        return self


class ShearFactors(SpecModel):
    """The factors of `keras.layers.RandomShear`; a single number sets both."""

    param_path = "augmentation.shear"

    x: float = Field(0.0, ge=0.0, le=1.0,
                     description="Horizontal shear, up to this fraction of the width either way.")
    y: float = Field(0.0, ge=0.0, le=1.0,
                     description="Vertical shear, up to this fraction of the height either way.")

    @classmethod
    def _input_form(cls, data: Any) -> Any:
        """A number sets both axes: `{x: n, y: n}`."""
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return {"x": data, "y": data}
        return data


class ColorJitterFactors(SpecModel):
    """Random brightness, contrast, saturation and hue, in that order.

    Ranges follow torchvision's `ColorJitter` except brightness, which is
    Keras's additive `RandomBrightness`. `0` turns one off.
    """

    param_path = "augmentation.color_jitter"

    brightness: float = Field(0.0, ge=0.0, le=1.0,
                              description="Add a random offset in [-b, b] x 255 (Keras `RandomBrightness`).")
    contrast: float = Field(0.0, ge=0.0, le=1.0,
                            description="Scale the distance to each channel's mean by a random factor in "
                                        "[1 - c, 1 + c] (Keras `RandomContrast`).")
    saturation: float = Field(0.0, ge=0.0,
                              description="Multiply the HSV saturation by a random factor in "
                                          "[max(0, 1 - s), 1 + s] (Keras `RandomSaturation`).")
    hue: float = Field(0.0, ge=0.0, le=0.5,
                       description="Rotate the hue by a random fraction of the colour circle in [-h, h] "
                                   "(Keras `RandomHue`).")


class RandAugmentFactors(SpecModel):
    """The factors of `keras.layers.RandAugment` (Cubuk et al. 2020)."""

    param_path = "augmentation.rand_augment"

    num_ops: int = Field(2, ge=1, description="Operations applied one after the other (the paper's N).")
    magnitude: float = Field(0.5, ge=0.0, le=1.0,
                             description="Strength of every operation (the paper's M, normalised by Keras to "
                                         "[0, 1]).")


class Augmentation(SpecModel):
    """Random augmentation of training batches (Keras preprocessing layers).

    Each key turns on one transform; the transforms run in the order of the
    fields below (`models.augment.build_augmentation`), per image with
    per-image random parameters, and keep images float32 in [0, 255]. `0`
    (or `null`) turns a transform off. Unknown keys are refused with the list
    of allowed ones.
    """

    param_path = "augmentation"

    random_resized_crop: Optional[RandomResizedCropFactors] = Field(
        None, description="Crop a random area fraction and aspect ratio, resized back to `image_size` "
                          "(this project's torchvision-style layer); `{}` for torchvision's defaults.")
    flip: Optional[Literal["horizontal", "vertical", "horizontal_and_vertical"]] = Field(
        None, description="`keras.layers.RandomFlip` mode.")
    rotation: float = Field(0.0, ge=0.0, le=0.5,
                            description="`keras.layers.RandomRotation` factor, a fraction of a full turn "
                                        "(0.1 = up to +/-36 degrees).")
    shear: Optional[ShearFactors] = Field(
        None, description="`keras.layers.RandomShear`: a number (both axes) or a mapping `{x, y}`.")
    zoom: float = Field(0.0, ge=0.0, lt=1.0,
                        description="`keras.layers.RandomZoom` factor, the same for height and width.")
    stretch: float = Field(0.0, ge=0.0, lt=1.0, description="Extra independent width zoom (aspect-ratio change).")
    translation: float = Field(0.0, ge=0.0, lt=1.0,
                               description="`keras.layers.RandomTranslation` factor, a fraction of height and "
                                           "width.")
    perspective: float = Field(0.0, ge=0.0, le=1.0,
                               description="`keras.layers.RandomPerspective` distortion `scale`, applied to "
                                           "every image.")
    crop: float = Field(0.0, ge=0.0, lt=1.0,
                        description="Random crop of up to this fraction of each side, resized back to "
                                    "`image_size`.")
    rand_augment: Optional[RandAugmentFactors] = Field(
        None, description="`keras.layers.RandAugment`: a mapping `{num_ops, magnitude}`.")
    color_jitter: Optional[ColorJitterFactors] = Field(
        None, description="A mapping `{brightness, contrast, saturation, hue}`.")
    grayscale: float = Field(0.0, ge=0.0, le=1.0,
                             description="Probability of turning an image grey (`keras.layers.RandomGrayscale`).")
    erasing: float = Field(0.0, ge=0.0, le=1.0,
                           description="Probability of erasing a random rectangle of 2-33 % of the image with "
                                       "noise (`keras.layers.RandomErasing`, Zhong et al. 2020).")
    mixup: float = Field(0.0, ge=0.0,
                         description="mixup's Beta(alpha, alpha) parameter (`keras.layers.MixUp`, Zhang et al. "
                                     "2018); mixes image pairs and their labels. At most one of `mixup` and "
                                     "`cutmix`; either makes the training labels one-hot and the loss "
                                     "`categorical_crossentropy`, and bypasses the activation cache.")
    cutmix: float = Field(0.0, ge=0.0, le=1.0,
                          description="CutMix's Beta(alpha, alpha) parameter (`keras.layers.CutMix`, Yun et al. "
                                      "2019; the upper bound is Keras's); pastes a patch of another image and "
                                      "mixes the labels by area. At most one of `mixup` and `cutmix`.")

    @classmethod
    def _input_form(cls, data: Any) -> Any:
        """`shear: 0` and `color_jitter: {hue: 0}` (every factor 0) become `null`: off, without bypassing the
        activation cache (`augmenting`)."""
        if isinstance(data, dict):
            for key in ("shear", "color_jitter"):
                value = data.get(key)
                values = value.values() if isinstance(value, dict) else [value]
                if key in data and all(type(v) in (int, float) and v == 0 for v in values):
                    data = {**data, key: None}
        return data

    @model_validator(mode="after")
    def _one_mixing(self) -> "Augmentation":
        if self.mixup and self.cutmix:
            raise ValueError(f"mixup ({self.mixup}) and cutmix ({self.cutmix}) are exclusive: "
                             f"set at most one of them")
        return self

    @property
    def mixes_batches(self) -> bool:
        """True when `mixup` or `cutmix` mixes images and labels across each batch."""
        return bool(self.mixup or self.cutmix)


class FineTuneFrom(SpecModel):
    """`fine_tune_layers: {from_layer: <name>}`: unfreeze the base from a named layer up."""

    param_path = "fine_tune_layers"

    from_layer: str = Field(
        min_length=1,
        description="Name of a layer of the base (e.g. VGG16's `block5_conv1`); it and every layer after it in "
                    "`base.layers` are unfrozen. Checked against the base when training starts "
                    "(`models.training.resolve_fine_tune_layers`).")


class ExperimentSpec(SpecModel):
    """All parameters of one run, after defaults.

    Field names and defaults match the notebook's `parameters` cell; each
    field's `description` says what it does. Unknown names are refused
    (`extra="forbid"`, pydantic's message), types are strict and floats finite
    (`SpecModel`).
    """

    # Data
    data_dir: str = Field(
        "builtin:digits",
        description="ImageFolder-style folder (one sub-folder of images per class), or `builtin:digits` for "
                    "scikit-learn's bundled digits, exported once to `data/digits/` on first use. Corrupt or "
                    "truncated images and non-image files in class folders are skipped with a warning and "
                    "listed in the record; a sub-folder whose name starts with `.` (`.ipynb_checkpoints`) is "
                    "never a class, and is listed as skipped with the number of images it holds.")
    max_images_per_class: Optional[int] = Field(
        None, ge=1, description="Keep at most this many images per class (a seeded random subset), or `null` "
                                "for all.")
    val_fraction: float = Field(
        0.15, gt=0.0, lt=1.0,
        description="Fraction of each class held out for validation (a deterministic stratified split).")
    test_fraction: float = Field(
        0.15, gt=0.0, lt=1.0,
        description="Fraction of each class held out for the test split; `val_fraction + test_fraction < 1`.")
    SEED_RANGE: ClassVar[range] = range(2**32)
    """The values of `seed` and `split_seed`: 0 <= seed < 2**32, what `numpy.random.seed` (which
    `keras.utils.set_random_seed` calls) and scikit-learn's `random_state` accept; `numpy.random.default_rng`
    takes any seed >= 0, TensorFlow any int64."""
    seed: int = Field(
        42, ge=SEED_RANGE.start, lt=SEED_RANGE.stop,
        description="Seed of weight initialisation, shuffling and augmentation, and of the split and the "
                    "subset unless `split_seed` is set; 0 <= seed < 2**32 (4294967296), the seeds NumPy and "
                    "scikit-learn accept.")
    split_seed: Optional[int] = Field(
        None, ge=SEED_RANGE.start, lt=SEED_RANGE.stop,
        description="`null` (the split follows `seed`), or the seed of the split and the subset alone "
                    "(`data_seed`), 0 <= split_seed < 2**32: repeats with one `split_seed` differ in "
                    "initialisation, shuffling and augmentation only, share their validation and test images, "
                    "and can be compared image by image (McNemar's test) and ensembled.")

    @field_validator("seed", "split_seed", mode="before")
    @classmethod
    def _seed_in_range(cls, value: Any, info) -> Any:
        """An int out of `SEED_RANGE` is refused naming the whole range (the `ge`/`lt` bounds, which the
        docs table shows, would name one side); other types are left to strict validation."""
        if type(value) is int and value not in cls.SEED_RANGE:
            raise ValueError(f"expected an integer with 0 <= {info.field_name} < 2**32 = {cls.SEED_RANGE.stop}, "
                             f"the range of numpy.random.seed (which keras.utils.set_random_seed calls) and of "
                             f"scikit-learn's random_state")
        return value
    deterministic: bool = Field(
        DETERMINISTIC_DEFAULT,
        description="Make the run bit-reproducible: seed Python, NumPy, TensorFlow and Keras with `seed` and "
                    "enable TensorFlow's op determinism (`models.reproducibility.set_determinism`, called first "
                    "thing by the notebook), so that the same parameters on the same machine type and versions "
                    "give the same weights, histories and probabilities; `false`: seeded but not "
                    "op-deterministic. The default is `DETERMINISTIC_DEFAULT`.")
    # Model
    base: str = Field(
        "vgg16",
        description="A `keras.applications` model name, case-insensitive and ignoring `_` and `-` (`vgg16`, "
                    "`VGG16`, `resnet50`, `inception_resnet_v2`, `MobileNetV2`, `efficientnet_b0`, ...), or a "
                    "from-scratch CNN (`simple_cnn_small`, `simple_cnn_medium`), a whole saved Keras model from "
                    "the weights folder (`efficientnet_lite0`, `efficientnet_lite2`), or the path of any saved "
                    "Keras model (`path/to/backbone.keras`) whose output is a feature map or a vector "
                    "(`models.bases.saved`); a name is stored in its one canonical spelling "
                    "(`models.bases.canonical_base`: `vgg16`, `mobilenet_v2`), so config hashes, warm "
                    "starts, cache keys and the search's cost model see one name per base.")
    preprocess: Optional[str] = Field(
        None, description="For a saved-model base without a `Rescaling` or `Normalization` layer at its input: "
                          "the base whose `preprocess_input` its input expects (`mobilenet_v2`: [-1, 1]; "
                          "`vgg16`: caffe-style), or `none` for raw 0..255 pixels. `null` for every other base "
                          "(each brings its own).")
    base_kwargs: dict = Field(
        default_factory=dict, description="Extra keyword arguments of the base constructor (e.g. "
                                          "`{alpha: 0.35}`).")
    weights: Optional[str] = Field(
        "imagenet", description="`imagenet`, `null` (random initialisation) or a path to a Keras weights file "
                                "for the base (`include_top=False`). For a saved-model base, `imagenet` keeps "
                                "the weights its file holds.")
    weights_dir: Optional[str] = Field(
        None, description="Folder of offline ImageNet weights files used instead of the download when "
                          "`weights` is `imagenet`; `null` reads the `NBSWEEP_WEIGHTS_DIR` environment "
                          "variable.")
    image_size: int = Field(128, ge=8, le=1024, description="Side of the square model input, pixels.")
    head: Literal["flatten", "gap"] = Field(
        "gap", description="`flatten`, or `gap` (global average pooling).")
    dense_units: list[int] = Field(
        default_factory=lambda: [256],
        description="Widths of the dense layers of the head, e.g. `[512, 256]`; each >= 1.")
    dropout: float = Field(0.5, ge=0.0, lt=1.0,
                           description="Dropout rate before each dense layer and the classifier.")
    l2: float = Field(0.0, ge=0.0, description="L2 regularisation factor on the head's dense kernels.")
    augmentation: Optional[Augmentation] = Field(
        None, description="`null` (off), or random augmentation of the training batches (`Augmentation`).")
    # Optimisation
    optimizer: Literal["adam", "sgd", "adamw"] = Field(
        "adam", description="`adam`, `sgd` (with `momentum`) or `adamw` (with `weight_decay`).")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    weight_decay: float = Field(1e-4, ge=0.0, description="AdamW decoupled weight decay.")
    gradient_clip_norm: Optional[float] = Field(
        None, gt=0.0,
        description="Clip the gradients of each step to this global L2 norm, over all trained variables at once "
                    "(Keras's `global_clipnorm`; PyTorch's `clip_grad_norm_`), in both phases; `null`: no clipping. "
                    "Bounds the first fine-tuning steps, whose gradients through a just-unfrozen base can be large.")
    learning_rate: float = Field(1e-3, gt=0.0, description="Initial learning rate of the head phase.")
    lr_schedule: Optional[Literal["step", "plateau", "cosine"]] = Field(
        None, description="Schedule of the head phase: `null`, `step` (`lr_step_milestones`, `lr_step_gamma`), "
                          "`plateau` (`lr_plateau_patience`, `lr_plateau_factor`) or `cosine`.")
    lr_step_milestones: list[int] = Field(
        default_factory=list,
        description="Epochs (0-based, counted from the phase's first epoch) at which `step` multiplies the "
                    "learning rate by `lr_step_gamma`.")
    lr_step_gamma: float = Field(0.1, gt=0.0, description="Factor of the `step` schedule.")
    lr_plateau_patience: int = Field(
        2, ge=1, description="Epochs without `val_loss` improvement before `plateau` multiplies the learning "
                             "rate by `lr_plateau_factor`.")
    lr_plateau_factor: float = Field(0.5, gt=0.0, lt=1.0, description="Factor of the `plateau` schedule.")
    warmup_epochs: int = Field(
        0, ge=0, description="Linear learning-rate warm-up from 0 to the phase's rate over the first "
                             "`warmup_epochs` epochs of each phase, step by step (Goyal et al. 2017, \"Accurate, "
                             "Large Minibatch SGD\"); 0 = off. Must be below each phase's epochs.")
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Label smoothing of the cross-entropy (Szegedy et al. 2016, \"Rethinking the Inception "
                    "Architecture\"): targets `(1 - e) * one_hot + e / num_classes`; > 0 makes the labels "
                    "one-hot and the loss `CategoricalCrossentropy`. The activation cache still applies.")
    epochs: int = Field(
        10, ge=0, description="Epochs of the head phase; 0 skips it and fine-tunes from the first epoch (needs "
                              "`fine_tune_layers`).")
    batch_size: int = Field(32, ge=1, description="Images per batch.")
    early_stopping_patience: Optional[int] = Field(
        3, ge=1, description="Epochs without improvement of `early_stopping_monitor` before stopping, or `null` "
                             "for no early stopping.")
    early_stopping_monitor: Literal[tuple(EPOCH_LOG_KEYS)] = Field(
        "val_loss", description="`val_loss` (lower is better), `val_accuracy` or `val_weighted_recall` (higher "
                                "is better; for single-label classification weighted recall equals accuracy, "
                                "so it follows Keras's `val_accuracy`).")
    class_weight: Optional[Literal["balanced"]] = Field(
        None, description="`null`, or `balanced` (scikit-learn's `compute_class_weight`).")
    batch_sampler: Optional[Literal["balanced"]] = Field(
        None, description="`null`, or `balanced`: every training batch is drawn evenly from the classes "
                          "(`tf.data.Dataset.sample_from_datasets` over per-class repeated, shuffled streams "
                          "with equal weights; `models.data.index_batches`), `ceil(n_train / batch_size)` "
                          "batches an epoch; works on images and on cached activations. Another correction "
                          "for class imbalance than `class_weight`: at most one of the two. A grid's "
                          "`sampler` key is refused with a message naming this one (`search: {sampler: ...}` "
                          "is the search's Optuna sampler).")
    jit_compile: Union[bool, Literal["auto"]] = Field(
        "auto", description="XLA compilation of the train step (`model.compile(jit_compile=...)`): `false`, "
                            "`true` or `auto` (Keras's choice: XLA where a GPU is visible).")
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = Field(
        "float32", description="Keras's global dtype policy while the model is built (mixed precision needs a "
                               "GPU; refused at build time where TensorFlow sees none).")
    # Fine-tuning
    fine_tune_layers: Union[int, float, FineTuneFrom] = Field(
        0, description="After the head phase, unfreeze the top of the base: an int N (its last N layers), a "
                       "float in [0, 1] (that fraction of its layers, rounded; a fraction > 0 unfreezes at "
                       "least one), or `{from_layer: <layer name>}` (that layer and all after it; in a `grid:` "
                       "write it inside a list: `[{from_layer: block5_conv1}]`); 0 = no fine-tuning phase. "
                       "Resolved to a layer count once, when training starts "
                       "(`models.training.resolve_fine_tune_layers`), and recorded as "
                       "`fine_tune_layers_resolved`. Refused with `weights: null`, whose base is trained whole "
                       "anyway.")
    fine_tune_epochs: int = Field(0, ge=0, description="Epochs of the fine-tuning phase.")
    fine_tune_learning_rate: float = Field(1e-5, gt=0.0, description="Learning rate of the fine-tuning phase.")
    fine_tune_lr_schedule: Optional[Literal["step", "plateau", "cosine"]] = Field(
        None, description="Schedule of the fine-tuning phase, as `lr_schedule` (same `lr_step_*` / "
                          "`lr_plateau_*` parameters).")
    unfreeze_batchnorm: bool = Field(
        False, description="Also unfreeze the BatchNormalization layers among the fine-tuned ones: their scale "
                           "and offset train and their moving statistics follow the training batches (Keras 3 "
                           "runs an unfrozen BatchNormalization layer in training mode during `fit`). By default "
                           "they stay frozen (inference mode, ImageNet's statistics), as in Keras's "
                           "transfer-learning guide.")
    # Weight averaging and refit
    ema: Optional[float] = Field(
        None, description="`null` (off), or the momentum m in (0, 1) of an exponential moving average of the "
                          "trainable weights (Polyak averaging; Keras optimizers' `use_ema=True, "
                          "ema_momentum=m`): after each step `average = m * average + (1 - m) * weights`, the "
                          "first step's weights starting it, anew in each phase (e.g. `0.999`: about the last "
                          "1000 steps). The averaged weights are what is validated every epoch, kept as best, "
                          "checkpointed, saved as the run's weights and evaluated; the raw weights only train "
                          "(`models.training.averaging`). Non-trainable weights (BatchNormalization's moving "
                          "statistics) are not averaged.")
    swa_epochs: Optional[int] = Field(
        None, description="`null` (off), or k in [1, `fine_tune_epochs`]: stochastic weight averaging "
                          "(Izmailov et al. 2018) of the last k epochs of the fine-tuning phase (the last k "
                          "run, early stopping included): the saved, evaluated model holds the mean of those "
                          "epochs' weights instead of the best epoch's, and the BatchNormalization layers that "
                          "trained in training mode get their moving statistics recomputed on the training "
                          "images for the averaged weights; the record's `weight_averaging` lists the epochs "
                          "averaged. Needs a fine-tuning phase; exclusive with `ema`.")
    train_on_val: bool = Field(
        False, description="Train on the training and validation splits together (set by a grid's "
                           "`refit: true` for its refit run): nothing is left to validate on, so every epoch "
                           "runs (no early stopping, no `plateau` schedule, the last epoch's weights are kept) "
                           "and only the test split is evaluated; the split (and its manifest) stays the same, "
                           "so the test images are those of the runs it is compared with.")
    # Warm start and checkpoints
    name: Optional[str] = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80,
        description="A name for the run: a letter or digit, then letters, digits, `_`, `-`, `.`, at most 80 "
                    "characters; unique in the logs folder (a name taken by another configuration is refused "
                    "before anything runs), shown on the leaderboard and in the lineage tree, and usable as a "
                    "`warm_start` reference (`exp_002`); `null` for none. With `repeats`, repeat k is named "
                    "`<name>-seed<seed>` (refused when that passes 80 characters); a refit is named "
                    "`<name>-refit`, the name cut to fit in 80.")
    warm_start: Optional[str] = Field(
        None, description="Start from the trained weights of an earlier run: a run id, a run `name`, a unique "
                          "prefix of a run id, or `best` (the best completed run by the grid's metric on the "
                          "validation split, when this run starts, among runs with the same base, base_kwargs, "
                          "head, dense_units and image_size, restricted by `best_of`; with repeats, the "
                          "configuration with the best mean over its seeds, and of it the run best on the "
                          "validation split); `null` for a fresh start. The earlier run must have the same "
                          "base, base_kwargs, head, dense_units, image_size and classes. Values with `/`, `\\` "
                          "or `..` are refused (records are looked up in the logs folder only).")
    warm_start_checkpoint: Union[Literal["best"], int] = Field(
        "best", description="Which weights of the `warm_start` run: `best` (its kept weights, "
                            "`trained_weights.h5` or `model.keras`) or an epoch number k >= 1 (its "
                            "`checkpoints/epoch_<k>.trained_weights.h5`, which must have been kept: see "
                            "`keep_checkpoints`).")
    best_of: Optional[str] = Field(
        None, description="Restricts `warm_start: best`: `roots` (runs that were not warm-started themselves) "
                          "or a name prefix (runs whose `name` starts with it, e.g. `exp_`); `null` for every "
                          "fitting run.")
    keep_checkpoints: Optional[int] = Field(
        0, ge=0,
        description="Per-epoch checkpoints kept in `<run>/checkpoints/`: 0 none, k the last k, `null` all. A "
                    "checkpoint holds only what the run trained, as the run's weights file does "
                    "(`models.saving`). None kept by default: the best epoch's weights are the run's weights "
                    "file already, which is also what `warm_start_checkpoint: best` loads: a warm start from "
                    "another epoch (`warm_start_checkpoint: k`, e.g. the last, to go on training) needs this "
                    "(or `keep_best_checkpoints`) set in the parent. Disk per checkpoint: the trained variables "
                    "(the head, and the unfrozen base layers when fine-tuning; ~0.5 MB for a `gap` head of 256 "
                    "units on VGG16), or the full model for a run from scratch or warm-started (59 MB for "
                    "VGG16).")
    keep_best_checkpoints: Optional[int] = Field(
        None, ge=1, description="`null`, or k: also keep the k best checkpoints by `checkpoint_monitor` (a file "
                                "kept by either rule stays); needs `keep_checkpoints` set (0 keeps only the "
                                "best).")
    checkpoint_monitor: Literal[tuple(EPOCH_LOG_KEYS)] = Field(
        "val_loss", description="Which epoch's weights are the run's best (its weights file, `best_epoch`) and "
                                "rank `keep_best_checkpoints`, as `early_stopping_monitor`.")
    # Activation cache
    activation_cache: bool = Field(
        True, description="Compute the frozen layers' outputs once and train the layers above them on the "
                          "stored outputs (`models.cache`); bypassed, and the reason recorded, when nothing is "
                          "frozen or augmentation is on without `augmented_copies`.")
    activation_cache_dtype: Literal["float32", "float16"] = Field(
        "float32", description="`float16` halves the disk and memory; outputs are rounded to ~3 significant "
                               "digits.")
    augmented_copies: int = Field(
        0, ge=0, description="With augmentation on, cache this many augmented copies of each training image (an "
                             "epoch draws from them); 0 bypasses the cache for augmented runs.")
    cache_dir: Optional[str] = Field(
        None, description="The cache folder (a relative path is resolved from where the command runs, so every "
                          "run of a sweep shares it); `null` reads `NBSWEEP_CACHE_DIR` (an absolute path), else "
                          "`<project>/.cache/activations`.")
    # Evaluation
    tta: Optional[list[Literal[TTA_VIEWS]]] = Field(
        None, description="Test-time augmentation of the evaluation (val and test) and of "
                          "`runner.core.predict`: `null` (off) or a non-empty list of distinct `flip` "
                          "(horizontal mirror), `vflip` (vertical mirror) and `crop` (the 4 corner and the "
                          "centre crops of 87.5 % of each side, resized back); the prediction is the mean of the "
                          "softmax outputs over the original and every copy (`models.evaluate.predict_with_tta`). "
                          "The full model runs on the copies, so evaluation does not read the activation cache "
                          "(recorded).")

    @field_validator("fine_tune_layers", mode="before")
    @classmethod
    def _fine_tune_layers_form(cls, value):
        expected = ("expected an int >= 0 (the base's last N layers), a float in [0, 1] (that fraction "
                    "of the base's layers) or {from_layer: <name of a base layer>}")
        if isinstance(value, bool) or not isinstance(value, (int, float, dict, FineTuneFrom)):
            raise ValueError(f"got {value!r}, {expected}")
        if isinstance(value, int) and value < 0:
            raise ValueError(f"got {value}, {expected}")
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            hint = f"; for a layer count give an int ({int(value)})" if value > 1 and value.is_integer() else ""
            raise ValueError(f"got {value}, {expected}{hint}")
        if isinstance(value, dict):  # one message, not one per member of the union
            try:
                return FineTuneFrom.model_validate(value)
            except ValidationError as exc:
                error = exc.errors()[0]
                where = ".".join(map(str, error["loc"]))
                raise ValueError(f"got {value!r}: {where + ': ' if where else ''}"
                                 f"{error['msg'].removeprefix('Value error, ')}") from None
        return value

    @field_validator("dense_units")
    @classmethod
    def _positive_units(cls, value: list[int]) -> list[int]:
        if any(units < 1 for units in value):
            raise ValueError(f"every dense layer needs >= 1 unit, got {value}")
        return value

    @field_validator("base")
    @classmethod
    def _base_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("base must be a non-empty model name")
        return canonical_base(value)

    @field_validator("warm_start")
    @classmethod
    def _run_reference(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and (not value.strip() or any(part in value for part in ("/", "\\", ".."))):
            raise ValueError("expected a run id, a unique prefix of one, 'best' or null "
                             "(no '/', '\\' or '..': records are looked up in logs_dir only)")
        return value

    @field_validator("ema")
    @classmethod
    def _ema_momentum(cls, value: Optional[float]) -> Optional[float]:
        if value is not None and not 0.0 < value < 1.0:
            raise ModelConfigError(f"ema: got {value}, expected null (off) or a momentum in (0, 1), e.g. 0.999 "
                                   f"(the share of the average kept at each step)")
        return value

    @field_validator("swa_epochs")
    @classmethod
    def _swa_count(cls, value: Optional[int]) -> Optional[int]:
        if value is not None and value < 1:
            raise ModelConfigError(f"swa_epochs: got {value}, expected null (off) or an int k in "
                                   f"[1, fine_tune_epochs]: the last k fine-tuning epochs averaged")
        return value

    @field_validator("tta")
    @classmethod
    def _distinct_views(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError(f"got {value}, expected null (off) or a non-empty list of distinct "
                             f"'flip', 'vflip', 'crop'")
        return value

    @field_validator("preprocess")
    @classmethod
    def _preprocess_source(cls, value: Optional[str]) -> Optional[str]:
        if value is None or value == NO_PREPROCESSING:
            return value
        name = canonical_base(value)
        if name not in BASES or BASES[name].is_saved_model:
            choices = [n for n, info in BASES.items() if not info.is_saved_model]
            raise ValueError(f"got {value!r}, expected {NO_PREPROCESSING!r} or a base whose preprocess_input to "
                             f"apply: {', '.join(choices)}")
        return name

    @model_validator(mode="after")
    def _preprocess_for_saved_models(self) -> "ExperimentSpec":
        if self.preprocess is not None and not is_saved_model_base(self.base):
            raise ValueError(f"preprocess: got {self.preprocess!r} for base {self.base!r}, which brings its own "
                             f"preprocessing; preprocess applies to a saved-model base only, remove it")
        return self

    @model_validator(mode="after")
    def _one_imbalance_correction(self) -> "ExperimentSpec":
        if self.class_weight is not None and self.batch_sampler is not None:
            raise ValueError(
                f"class_weight={self.class_weight!r} and batch_sampler={self.batch_sampler!r} both correct for "
                f"class imbalance (together they over-weight small classes twice); set one of them to null")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentSpec":
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        if isinstance(self.warm_start_checkpoint, int) and self.warm_start_checkpoint < 1:
            raise ValueError(
                f"warm_start_checkpoint: got {self.warm_start_checkpoint}, expected 'best' or an epoch >= 1"
            )
        if self.fine_tunes and not self.fine_tune_epochs:
            raise ValueError(
                f"fine_tune_layers={self.fine_tune_layers} needs fine_tune_epochs >= 1"
            )
        if self.fine_tunes and self.from_scratch:
            raise ValueError(
                f"fine_tune_layers={self.fine_tune_layers} with weights=None: a base with random weights "
                f"is trained whole from the first epoch, nothing is frozen to unfreeze; set "
                f"fine_tune_layers=0 (and more epochs), or give pretrained weights")
        if self.epochs == 0 and not self.fine_tunes:
            raise ValueError(
                "epochs=0 skips the head phase and needs fine-tuning from the start: set "
                "fine_tune_layers (!= 0) and fine_tune_epochs >= 1, or epochs >= 1")
        for phase, epochs in (("epochs", self.epochs), ("fine_tune_epochs", self.fine_tune_epochs)):
            if self.warmup_epochs and epochs and self.warmup_epochs >= epochs and (
                    phase == "epochs" or self.fine_tunes):
                raise ValueError(
                    f"warmup_epochs={self.warmup_epochs} needs {phase} > {self.warmup_epochs} (each phase "
                    f"warms up over its first warmup_epochs epochs, then trains at its rate), got {epochs}")
        self._check_averaging()
        self._check_train_on_val()
        if self.keep_best_checkpoints is not None and self.keep_checkpoints is None:
            raise ValueError(
                f"keep_best_checkpoints={self.keep_best_checkpoints} with keep_checkpoints=None: every "
                f"checkpoint is kept anyway; set keep_checkpoints to 0 (only the best) or k (the last k too)")
        return self

    def _check_averaging(self) -> None:
        if self.swa_epochs is not None:
            if self.ema is not None:
                raise ModelConfigError(
                    f"ema={self.ema} and swa_epochs={self.swa_epochs} both average the weights: set at most one "
                    f"of them (ema: null or swa_epochs: null)")
            if not self.fine_tunes or self.swa_epochs > self.fine_tune_epochs:
                why = ("there is no fine-tuning phase (fine_tune_layers=0)" if not self.fine_tunes
                       else f"fine_tune_epochs is {self.fine_tune_epochs}")
                raise ModelConfigError(
                    f"swa_epochs: got {self.swa_epochs}, expected null or an int in [1, fine_tune_epochs] (it "
                    f"averages the last epochs of the fine-tuning phase), but {why}")

    def _check_train_on_val(self) -> None:
        if not self.train_on_val:
            return
        on_val = {"early_stopping_patience": (self.early_stopping_patience, "null"),
                  "keep_best_checkpoints": (self.keep_best_checkpoints, "null")}
        for key, (value, allowed) in on_val.items():
            if value is not None:
                raise ModelConfigError(
                    f"{key}: got {value} with train_on_val=true, expected {allowed}: the validation split is "
                    f"trained on, nothing is left to monitor")

    @property
    def data_seed(self) -> int:
        """The seed of the split and the subset: `split_seed`, or `seed` when it is `None`."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def fine_tunes(self) -> bool:
        """True when `fine_tune_layers` asks for a fine-tuning phase (anything but `0` / `0.0`)."""
        return isinstance(self.fine_tune_layers, FineTuneFrom) or self.fine_tune_layers != 0

    @property
    def max_epochs(self) -> int:
        """Epochs a run trains at most: `epochs`, plus `fine_tune_epochs` when it fine-tunes."""
        return self.epochs + (self.fine_tune_epochs if self.fine_tunes else 0)

    @property
    def from_scratch(self) -> bool:
        """True when the base starts from random weights and is trained whole."""
        return self.weights is None


def split_key(params: Mapping[str, Any]) -> tuple:
    """What decides a run's split (`models.data.split_image_folder`), from its parameters.

    Args:
        params: a run's parameters (a missing one reads as `None`).

    Returns:
        `(data_dir, max_images_per_class, val_fraction, test_fraction, seed of the split)`, the last
        being `split_seed`, or `seed` when `split_seed` is `None` (`ExperimentSpec.data_seed`): runs with
        equal keys train, validate and test on the same images.
    """
    split_seed = params.get("split_seed")
    return (params.get("data_dir"), params.get("max_images_per_class"), params.get("val_fraction"),
            params.get("test_fraction"), params.get("seed") if split_seed is None else split_seed)


def augmenting(spec: ExperimentSpec) -> bool:
    """True when `spec.augmentation` turns on at least one transform."""
    return spec.augmentation is not None and bool(spec.augmentation.model_dump(exclude_defaults=True))


def bypass_reason(spec: ExperimentSpec) -> Optional[str]:
    """Why the spec as a whole cannot use the activation cache, or `None` when it can (per phase, see
    `models.cache.split_model`). Here, not in `models.cache`, so the sweep's budget prediction
    (`runner.search`) applies the same rule without importing TensorFlow."""
    if not spec.activation_cache:
        return "activation_cache is off"
    if spec.augmentation is not None and spec.augmentation.mixes_batches:
        return ("mixup / cutmix mix images and labels of each training batch anew every epoch; stored "
                "features of single images cannot hold them, so the frozen layers run every epoch")
    if augmenting(spec) and not spec.augmented_copies:
        return ("augmentation acts on input pixels and augmented_copies is 0: every epoch needs new "
                "random copies, so the frozen layers run every epoch")
    return None


def cache_entry_inputs(spec: ExperimentSpec) -> dict:
    """The parameters an activation-cache entry's key holds as they are (`models.cache.cache_key` adds what
    only a built model and a listed folder tell: the frozen weights' sha256, the split manifest, the cut
    layer, the Keras and TensorFlow versions).

    Args:
        spec: the run's parameters.

    Returns:
        JSON-safe `{"base": canonical name, "base_kwargs", "image_size", "dtype", "augmentation",
        "augmented_copies", "augmentation_seed"}`; the last three are `None`, `0`, `None` unless
        augmentation is on (`augmenting`) with `augmented_copies`, so an all-off augmentation mapping
        keys as no augmentation. With `train_on_val`, also `"train_on_val": True` (its entry's training
        rows are the training and validation images; the split's manifest is the same), and with a
        `precision` other than `"float32"`, also `"precision"` (a mixed-precision base computes its
        outputs in float16 or bfloat16); both are absent otherwise so the keys of other runs do not
        change.
    """
    copies = spec.augmented_copies if augmenting(spec) else 0
    inputs = {"base": spec.base, "base_kwargs": spec.base_kwargs, "image_size": spec.image_size,
              "dtype": spec.activation_cache_dtype,
              "augmentation": spec.augmentation.model_dump(mode="json") if copies else None,
              "augmented_copies": copies, "augmentation_seed": spec.seed if copies else None}
    if spec.train_on_val:
        inputs["train_on_val"] = True
    if spec.precision != "float32":
        inputs["precision"] = spec.precision
    return inputs


def cache_build_key(spec: ExperimentSpec) -> Optional[str]:
    """Which activation-cache entries a run reads, from its parameters alone (no TensorFlow, no files read):
    two runs with the same key read the same entries, so only the first one builds them.

    The key hashes `cache_entry_inputs` and, for each part of `models.cache.cache_key` known only once
    the run is under way, the parameters that decide it: the frozen weights (`weights`, and `warm_start`
    with `warm_start_checkpoint`: a warm start's frozen layers hold its parent's weights), the split
    manifest (`data_dir`, `max_images_per_class`, `val_fraction`, `test_fraction`, `data_seed`), the cut layers
    (`fine_tune_layers` when fine-tuning) and where entries live (`cache_dir`). Anything else (learning
    rate, head, epochs, ...) leaves it unchanged. `runner.search.duration` predicts a cache build with it.

    Args:
        spec: the run's parameters.

    Returns:
        32 hex digits (sha256), or `None` when the run builds no entry: it bypasses the cache
        (`bypass_reason`) or trains its base from scratch (nothing frozen, `models.cache.split_model`).
    """
    if bypass_reason(spec) or spec.from_scratch:
        return None
    decided_by = spec.model_dump(mode="json", include={
        "weights", "data_dir", "max_images_per_class", "val_fraction", "test_fraction", "cache_dir",
        "fine_tune_layers", "warm_start", "warm_start_checkpoint"})
    decided_by["data_seed"] = spec.data_seed  # the split's seed: repeats sharing a split_seed share entries
    if not spec.fine_tunes:  # 0 and 0.0: one phase, one entry
        decided_by["fine_tune_layers"] = 0
    if spec.warm_start is None:  # the checkpoint of no parent
        decided_by["warm_start_checkpoint"] = None
    return sha256_json({**cache_entry_inputs(spec), **decided_by})[:32]


def experiment_spec(params: Mapping[str, Any]) -> ExperimentSpec:
    """The `ExperimentSpec` of a run's parameters as a run or a record holds them.

    Args:
        params: a run's parameters (`RunSpec.params`, `RunRecord.params`): JSON values; names that are
            not `ExperimentSpec` fields (the runner's `output_dir`, `pruning`, a custom notebook's own
            parameters) are left out, and a field missing takes its default.

    Returns:
        The validated, immutable spec.

    Raises:
        pydantic.ValidationError: a value breaks `ExperimentSpec` (e.g. a record of a version whose
            fields differed).
    """
    return ExperimentSpec.model_validate({k: v for k, v in params.items() if k in ExperimentSpec.model_fields})
