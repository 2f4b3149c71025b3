"""The experiment specification: every parameter of one run, validated.

`ExperimentSpec` is the single source of truth for the parameters of the base
notebook (`notebooks/base_experiment.ipynb`): the notebook's `parameters` cell
holds the same names with the same defaults, the sweep runner validates every
expanded grid configuration against this model before anything runs, and the
predict path rebuilds a model from the `params` stored in a run record with it.

This module imports neither TensorFlow nor Keras, so validating a grid is fast.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

HEADS = ("flatten", "gap")
OPTIMIZERS = ("adam", "sgd", "adamw")
LR_SCHEDULES = ("step", "plateau", "cosine")
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")


class Augmentation(BaseModel):
    """Random augmentation of training batches (Keras preprocessing layers).

    Every factor is a fraction as Keras defines it for the matching layer;
    `0` (or `None` for `flip`) turns that transform off.

    Attributes:
        flip: `keras.layers.RandomFlip` mode: one of `"horizontal"`,
            `"vertical"`, `"horizontal_and_vertical"`, or `None`.
        rotation: `keras.layers.RandomRotation` factor, a fraction of a full
            turn (0.1 = up to +/-36 degrees), in [0, 0.5].
        zoom: `keras.layers.RandomZoom` factor, the same for height and width,
            in [0, 1).
        stretch: extra independent width zoom (aspect-ratio change), in [0, 1).
        crop: random crop of up to this fraction of each side, resized back
            to `image_size`, in [0, 1).
        translation: `keras.layers.RandomTranslation` factor, a fraction of
            height and width, in [0, 1).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    flip: Optional[Literal["horizontal", "vertical", "horizontal_and_vertical"]] = None
    rotation: float = Field(0.0, ge=0.0, le=0.5)
    zoom: float = Field(0.0, ge=0.0, lt=1.0)
    stretch: float = Field(0.0, ge=0.0, lt=1.0)
    crop: float = Field(0.0, ge=0.0, lt=1.0)
    translation: float = Field(0.0, ge=0.0, lt=1.0)


class ExperimentSpec(BaseModel):
    """All parameters of one run, after defaults.

    Field names and defaults match the notebook's `parameters` cell. Unknown
    names are refused (`extra="forbid"`).

    Attributes:
        data_dir: ImageFolder-style folder (one sub-folder of images per
            class), or `"builtin:digits"` for scikit-learn's bundled digits,
            exported once to `data/digits/` on first use.
        max_images_per_class: keep at most this many images per class (seeded
            random subset), or `None` for all.
        val_fraction: fraction of each class held out for validation, in (0, 1).
        test_fraction: fraction of each class held out for the test split,
            in (0, 1); `val_fraction + test_fraction < 1`.
        seed: seed of the split, the subset, weight initialisation and
            shuffling.
        base: a `keras.applications` model name, case-insensitive
            (`vgg16`, `resnet50`, `inception_resnet_v2`, `mobilenet`,
            `mobilenet_v2`, ...), or a from-scratch CNN (`simple_cnn_small`,
            `simple_cnn_medium`).
        base_kwargs: extra keyword arguments of the base constructor
            (e.g. `{"alpha": 0.35}`).
        weights: `"imagenet"`, `None` (random initialisation) or a path to a
            Keras weights file for the base (`include_top=False`).
        weights_dir: folder of offline ImageNet weights files used instead of
            the download when `weights == "imagenet"`; `None` reads the
            `NBSWEEP_WEIGHTS_DIR` environment variable.
        image_size: side of the square model input, pixels.
        head: `"flatten"` or `"gap"` (global average pooling).
        dense_units: widths of the dense layers of the head, e.g. `[512, 256]`.
        dropout: dropout rate before each dense layer and the classifier.
        l2: L2 regularisation factor on the head's dense kernels.
        augmentation: `None` (off) or an `Augmentation` mapping.
        optimizer: `"adam"`, `"sgd"` (with `momentum`) or `"adamw"` (with
            `weight_decay`).
        momentum: SGD momentum.
        weight_decay: AdamW decoupled weight decay.
        learning_rate: initial learning rate of the head phase.
        lr_schedule: `None`, `"step"`, `"plateau"` or `"cosine"`.
        lr_step_milestones: epochs (0-based) at which `step` multiplies the
            learning rate by `lr_step_gamma`.
        lr_step_gamma: factor of the `step` schedule.
        lr_plateau_patience: epochs without `val_loss` improvement before
            `plateau` multiplies the learning rate by `lr_plateau_factor`.
        lr_plateau_factor: factor of the `plateau` schedule.
        epochs: epochs of the head phase (>= 1).
        batch_size: images per batch.
        early_stopping_patience: epochs without `val_loss` improvement before
            stopping, or `None` for no early stopping.
        class_weight: `None` or `"balanced"` (scikit-learn's
            `compute_class_weight`).
        fine_tune_layers: after the head phase, unfreeze the last N layers of
            the base (BatchNormalization layers stay frozen); 0 = no
            fine-tuning phase.
        fine_tune_epochs: epochs of the fine-tuning phase.
        fine_tune_learning_rate: learning rate of the fine-tuning phase.
        warm_start: start from the trained weights of an earlier run: a run
            id, a unique prefix of one, or `"best"` (the best completed run
            by weighted recall, when this run starts, among runs with the
            same base, base_kwargs, head, dense_units and image_size); `None`
            for a fresh start. The earlier run must have the same base,
            base_kwargs, head, dense_units, image_size and classes. Values
            with `/`, `\\` or `..` are refused (records are looked up in the
            logs folder only).
        warm_start_checkpoint: which weights of that run: `"best"` (its
            `model.keras`) or an epoch number k >= 1 (its
            `checkpoints/epoch_<k>.weights.h5`).
        keep_checkpoints: per-epoch checkpoints kept in
            `<run>/checkpoints/`: `None` keeps all, k keeps the last k, 0 none.
        activation_cache: compute the frozen layers' outputs once and train
            the layers above them on the stored outputs (`models.cache`);
            bypassed, and the reason recorded, when nothing is frozen or
            augmentation is on without `augmented_copies`.
        activation_cache_dtype: `"float32"` or `"float16"` (half the disk
            and memory, outputs rounded to ~3 significant digits).
        augmented_copies: with augmentation on, cache this many augmented
            copies of each training image (an epoch draws from them); 0
            bypasses the cache for augmented runs.
        cache_dir: the cache folder; `None` reads `NBSWEEP_CACHE_DIR`, else
            `<project>/.cache/activations`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Data
    data_dir: str = "builtin:digits"
    max_images_per_class: Optional[int] = Field(None, ge=1)
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    seed: int = 42
    # Model
    base: str = "vgg16"
    base_kwargs: dict = Field(default_factory=dict)
    weights: Optional[str] = "imagenet"
    weights_dir: Optional[str] = None
    image_size: int = Field(128, ge=8, le=1024)
    head: Literal["flatten", "gap"] = "gap"
    dense_units: list[int] = Field(default_factory=lambda: [256])
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    l2: float = Field(0.0, ge=0.0)
    augmentation: Optional[Augmentation] = None
    # Optimisation
    optimizer: Literal["adam", "sgd", "adamw"] = "adam"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    learning_rate: float = Field(1e-3, gt=0.0)
    lr_schedule: Optional[Literal["step", "plateau", "cosine"]] = None
    lr_step_milestones: list[int] = Field(default_factory=list)
    lr_step_gamma: float = Field(0.1, gt=0.0)
    lr_plateau_patience: int = Field(2, ge=1)
    lr_plateau_factor: float = Field(0.5, gt=0.0, lt=1.0)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    early_stopping_patience: Optional[int] = Field(3, ge=1)
    class_weight: Optional[Literal["balanced"]] = None
    # Fine-tuning
    fine_tune_layers: int = Field(0, ge=0)
    fine_tune_epochs: int = Field(0, ge=0)
    fine_tune_learning_rate: float = Field(1e-5, gt=0.0)
    # Warm start and checkpoints
    warm_start: Optional[str] = None
    warm_start_checkpoint: Union[Literal["best"], int] = "best"
    keep_checkpoints: Optional[int] = Field(None, ge=0)
    # Activation cache
    activation_cache: bool = True
    activation_cache_dtype: Literal["float32", "float16"] = "float32"
    augmented_copies: int = Field(0, ge=0)
    cache_dir: Optional[str] = None

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
        return value

    @field_validator("warm_start")
    @classmethod
    def _run_reference(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and (not value.strip() or any(part in value for part in ("/", "\\", ".."))):
            raise ValueError("expected a run id, a unique prefix of one, 'best' or null "
                             "(no '/', '\\' or '..': records are looked up in logs_dir only)")
        return value

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
        if self.fine_tune_layers and not self.fine_tune_epochs:
            raise ValueError(
                f"fine_tune_layers={self.fine_tune_layers} needs fine_tune_epochs >= 1"
            )
        return self

    @property
    def from_scratch(self) -> bool:
        """True when the base starts from random weights and is trained whole."""
        return self.weights is None
