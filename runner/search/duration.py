"""How long a run is expected to take, predicted from earlier runs' records, for a search's time budget."""

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


def _pixels(spec: ExperimentSpec) -> float:
    """`image_size**2`: a CNN's cost per image grows with its input's area."""
    return float(spec.image_size) ** 2


def _build_units(spec: ExperimentSpec) -> float:
    """Pixels the activation cache passes through the frozen base: `_pixels` per image, times
    `1 + augmented_copies` when augmentation is on (`models.spec.augmenting`; each copy is one more pass)."""
    return _pixels(spec) * (1 + (spec.augmented_copies if augmenting(spec) else 0))


def predict_duration_s(spec: ExperimentSpec, records: Sequence) -> Optional[float]:
    """The expected wall time of a run: its training and evaluation, plus building its activation cache if no
    earlier run has built it.

    Parameters are compared as `models.spec.ExperimentSpec` holds them, so every spelling of a base
    (`MobileNetV2`, `mobilenet_v2`) is one base (validation applies `models.bases.canonical_base`). Training (`timings.total_s`
    less `timings.cache_build_s`, seconds) comes from, in order: the median of the earlier completed runs
    with the same `base`, `base_kwargs`, `image_size`, `epochs`, `fine_tune_epochs` and fine-tuning or not;
    else the median seconds per epoch and pixel of earlier runs of the same base, times this run's epochs
    and `image_size**2` (a CNN's cost grows with its input's area); else the median seconds per epoch of all
    earlier runs times this run's epochs.

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
        return s.image_size, s.epochs, s.fine_tune_epochs, s.fine_tunes

    same_base = [(r, s) for r, s in done if s is not None and (s.base, s.base_kwargs) == (spec.base, spec.base_kwargs)]
    same = [training_s(r) for r, s in same_base if r.status == COMPLETED and schedule(s) == schedule(spec)]
    if same:
        training = statistics.median(same)
    elif same_base:
        rate = statistics.median(per_epoch(r, s) / _pixels(s) for r, s in same_base)
        training = rate * _pixels(spec) * max(1, spec.max_epochs)
    else:
        training = statistics.median(per_epoch(r, s) for r, s in done) * max(1, spec.max_epochs)
    key = cache_build_key(spec)
    if key is None or any(s is not None and cache_build_key(s) == key for _, s in done):
        return training
    built = [r.timings.cache_build_s / _build_units(s) for r, s in same_base if r.timings.cache_build_s]
    if built:
        return training + statistics.median(built) * _build_units(spec)
    gmacs = _gmacs(spec)
    other = [r.timings.cache_build_s / (_build_units(s) * _gmacs(s)) for r, s in done
             if r.timings.cache_build_s and s is not None and _gmacs(s)]
    return training + (statistics.median(other) * _build_units(spec) * gmacs if gmacs and other else 0.0)
