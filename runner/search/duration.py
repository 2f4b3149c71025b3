"""What a run is expected to cost: its seconds predicted from earlier runs' records (`predict_duration_s`,
for a search's time budget), and a relative cost from its parameters alone (`prior_cost`, for a search that
knows no run yet)."""

from __future__ import annotations

import statistics
from typing import Any, Optional, Sequence

from pydantic import ValidationError

from models.spec import ExperimentSpec, augmenting, cache_build_key, experiment_spec
from runner.records import COMPLETED, DONE_STATUSES, RUN


BASE_GMACS_224 = {"vgg16": 15.47, "vgg19": 19.63, "resnet50": 4.09, "resnet50_v2": 4.09, "resnet101": 7.80,
                  "densenet121": 2.83, "efficientnet_b0": 0.39, "convnext_tiny": 4.46, "mobilenet": 0.569,
                  "mobilenet_v2": 0.300}
"""Billions of multiply-adds of one 224 x 224 image through a base, by canonical name
(`models.bases.canonical_base`: `MobileNetV2` is `mobilenet_v2`) (torchvision's model table, "GFLOPS";
MobileNet: Howard et al. 2017, Table 8, 569 million). `mobilenet*` scale by `alpha**2` (their section 3.3).
Used only to guess a cache build's seconds for a base no earlier run has built, from the others'."""


def _record_spec(params: dict[str, Any]) -> Optional[ExperimentSpec]:
    """The spec of an earlier record's parameters (`experiment_spec`), or `None` when they no longer validate."""
    try:
        return experiment_spec(params)
    except ValidationError:
        return None


def _gmacs(spec: ExperimentSpec) -> Optional[float]:
    """`BASE_GMACS_224` of the run's base, times `alpha**2` for a MobileNet width multiplier; `None` if unknown."""
    gmacs = BASE_GMACS_224.get(spec.base)
    alpha = spec.base_kwargs.get("alpha", 1.0)
    return None if gmacs is None else gmacs * float(alpha) ** 2


TRAINING_PASSES = 3.0
"""Forward-pass equivalents of one training step through a trained base: the forward pass and a backward
pass of about twice its multiply-adds (Kaplan et al. 2020, "Scaling laws for neural language models",
section 2.1: about 2N operations forward and 4N backward per input)."""
IMAGES_WITHOUT_LIMIT = 1000
"""Images per class `prior_cost` counts for a run without `max_images_per_class` (the folder's count is not
read before a run; only the order of costs matters)."""


def prior_cost(spec: ExperimentSpec) -> Optional[float]:
    """A run's relative cost from its parameters alone: billions of multiply-adds per class of images.

    Known before any run has a record, so a search can start where runs are cheap
    (`runner.search.source.SearchSource`). Counted per training image and class:

    - the frozen base's forward passes: one per head epoch when the run bypasses the activation cache
      (augmentation on the fly, `models.spec.bypass_reason`), else `1 + augmented_copies` once, to build
      the cache (`models.spec.cache_build_key`; a head epoch on cached features is not counted);
    - `TRAINING_PASSES` per fine-tuning epoch (the whole base, the most fine-tuning may train), and per
      epoch of either phase for a base trained from scratch;

    each pass being `BASE_GMACS_224` of the base (MobileNets times `alpha**2`) times
    `(image_size / 224)**2`, and the sum times `max_images_per_class` (`IMAGES_WITHOUT_LIMIT` without one).
    Evaluation, the head's own cost and the kernel's start are left out: a relative order of points,
    not seconds (those are `predict_duration_s`, once records exist).

    Args:
        spec: the run's parameters.

    Returns:
        The cost (float, >= 0), or `None` for a base without multiply-adds in `BASE_GMACS_224`
        (a small CNN, a saved model).
    """
    units = _pass_units(spec)
    if units is None:
        return None
    images = spec.max_images_per_class or IMAGES_WITHOUT_LIMIT
    return units * sum(_passes(spec)) * images


def _passes(spec: ExperimentSpec) -> tuple[float, float]:
    """`(cache build, training)`: a run's passes through its base per training image, as `prior_cost` counts
    them (the cache build's `1 + augmented_copies` forward passes; the training's forward passes of the frozen
    base on the fly and `TRAINING_PASSES` per epoch that trains the base)."""
    fine_tune_epochs = spec.fine_tune_epochs if spec.fine_tunes else 0
    if spec.from_scratch:
        return 0.0, TRAINING_PASSES * (spec.epochs + fine_tune_epochs)
    if cache_build_key(spec) is not None:
        return 1.0 + (spec.augmented_copies if augmenting(spec) else 0), TRAINING_PASSES * fine_tune_epochs
    return 0.0, spec.epochs + TRAINING_PASSES * fine_tune_epochs


def _pass_units(spec: ExperimentSpec) -> Optional[float]:
    """Billions of multiply-adds of one pass of one image through the run's base at its `image_size`
    (`_gmacs` times `(image_size / 224)**2`), or `None` when the base's are unknown."""
    gmacs = _gmacs(spec)
    return None if gmacs is None else gmacs * _pixels(spec) / 224.0 ** 2


def _pixels(spec: ExperimentSpec) -> float:
    """`image_size**2`: a CNN's cost per image grows with its input's area."""
    return float(spec.image_size) ** 2


def _build_units(spec: ExperimentSpec) -> float:
    """Pixels the activation cache passes through the frozen base: `_pixels` per image times the build's
    passes (`_passes`: `1 + augmented_copies` with augmentation on, each copy one more pass)."""
    return _pixels(spec) * _passes(spec)[0]


def predict_duration_s(spec: ExperimentSpec, records: Sequence) -> Optional[float]:
    """The expected wall time of a run: its training and evaluation, plus building its activation cache if no
    earlier run has built it.

    Parameters are compared as `models.spec.ExperimentSpec` holds them, so every spelling of a base
    (`MobileNetV2`, `mobilenet_v2`) is one base (validation applies `models.bases.canonical_base`). Training (`timings.total_s`
    less `timings.cache_build_s`, seconds) comes from, in order: the median of the earlier completed runs
    with the same `base`, `base_kwargs`, `image_size`, `epochs`, `fine_tune_epochs`, fine-tuning or not
    and passes through the base in training (`_passes`);
    else the median seconds per epoch and pixel of earlier runs of the same base, times this run's epochs
    and `image_size**2` (a CNN's cost grows with its input's area); else the median seconds per epoch of all
    earlier runs times this run's epochs.

    A run whose training passes images through its base (it fine-tunes, augments on the fly or trains
    from scratch: `_passes`), with no completed run of the same schedule, is predicted by passes instead
    (`_training_through_base_s`), as head epochs on cached features say nothing of its cost.

    The cache build is added when the run builds entries (`models.spec.cache_build_key` is not `None`: it
    does not bypass the cache and its base is not trained from scratch) and no earlier finished run has the
    same key (its entries would be read, not built): the median `cache_build_s` per `_build_units` of
    earlier runs of the same base that built entries, times this run's units; for a base no run has built
    with, the other bases' seconds per unit and multiply-add (`BASE_GMACS_224`) times this base's; nothing
    when neither is known.

    Args:
        spec: the run's parameters (`runner.grid.RunSpec.spec`).
        records: earlier records (`runner.records.RunRecord`; completed and pruned runs count).

    Returns:
        Seconds, or `None` without earlier runs.
    """
    done = [(r, _record_spec(r.params)) for r in records
            if r.kind == RUN and r.timings.total_s and r.status in DONE_STATUSES]
    if not done:
        return None

    def training_s(r) -> float:
        return max(0.0, r.timings.total_s - (r.timings.cache_build_s or 0.0))

    def per_epoch(r, s: Optional[ExperimentSpec]) -> float:
        return training_s(r) / max(1, r.epochs_run or (s.max_epochs if s else 1))

    def schedule(s: ExperimentSpec) -> tuple:
        return s.image_size, s.epochs, s.fine_tune_epochs, s.fine_tunes, _passes(s)[1]

    same_base = [(r, s) for r, s in done if s is not None and (s.base, s.base_kwargs) == (spec.base, spec.base_kwargs)]
    same = [training_s(r) for r, s in same_base if r.status == COMPLETED and schedule(s) == schedule(spec)]
    through_base = None if same or not _passes(spec)[1] else _training_through_base_s(spec, done, training_s)
    if same:
        training = statistics.median(same)
    elif through_base is not None:
        training = through_base
    elif same_base:
        rate = statistics.median(per_epoch(r, s) / _pixels(s) for r, s in same_base)
        training = rate * _pixels(spec) * max(1, spec.max_epochs)
    else:
        training = statistics.median(per_epoch(r, s) for r, s in done) * max(1, spec.max_epochs)
    key = cache_build_key(spec)
    if key is None or any(s is not None and cache_build_key(s) == key for _, s in done):
        return training
    built = [r.timings.cache_build_s / units for r, s in same_base
             if r.timings.cache_build_s and (units := _build_units(s))]
    if built:
        return training + statistics.median(built) * _build_units(spec)
    gmacs = _gmacs(spec)
    other = [r.timings.cache_build_s / (_build_units(s) * _gmacs(s)) for r, s in done
             if r.timings.cache_build_s and s is not None and _gmacs(s) and _build_units(s)]
    return training + (statistics.median(other) * _build_units(spec) * gmacs if gmacs and other else 0.0)


def _training_through_base_s(spec: ExperimentSpec, done: Sequence, training_s) -> Optional[float]:
    """Training seconds of a run that passes images through its base, from seconds per pass of earlier runs.

    Seconds per pass unit (one image through a base of one billion multiply-adds at 224 px,
    `_pass_units`) come from earlier completed runs that also trained through their base (their training
    seconds, less their head epochs on cached features, over their training passes), else from earlier
    cache builds (`cache_build_s` over their build passes: forward passes only, so a backward pass is
    counted by `TRAINING_PASSES`). Head epochs on cached features, when the run has them, cost the median
    seconds per epoch of earlier completed runs that trained only on cached features.

    Args:
        spec: the run (`_passes(spec)[1] > 0`).
        done: `(record, spec or None)` of earlier finished runs.
        training_s: a record's training seconds (`total_s` less `cache_build_s`).

    Returns:
        Seconds, or `None` when the base's multiply-adds, or every earlier run's, are unknown.
    """
    units = _pass_units(spec)
    known = [(r, s, _pass_units(s), _passes(s)) for r, s in done
             if s is not None and r.status == COMPLETED and _pass_units(s)]
    if units is None or not known:
        return None
    cached_epochs = [training_s(r) / max(1, s.epochs) for r, s, _, passes in known if not passes[1]]
    head_epoch_s = statistics.median(cached_epochs) if cached_epochs else 0.0

    def head_s(s: ExperimentSpec) -> float:  # its head epochs on cached features
        return head_epoch_s * s.epochs if cache_build_key(s) is not None else 0.0

    rates = [max(0.0, training_s(r) - head_s(s)) / (u * passes[1]) for r, s, u, passes in known if passes[1]]
    rates = rates or [r.timings.cache_build_s / (u * passes[0]) for r, s, u, passes in known
                      if r.timings.cache_build_s and passes[0]]
    if not rates:
        return None
    return head_s(spec) + statistics.median(rates) * units * _passes(spec)[1]
