"""How long a run is expected to take, predicted from earlier runs' records, for a search's time budget."""

from __future__ import annotations

import statistics
from typing import Any, Optional, Sequence


from models.spec import ExperimentSpec, bypass_reason
from runner.records import COMPLETED, DONE_STATUSES, RUN


CACHE_PARAMS = ("base", "base_kwargs", "weights", "image_size", "augmentation", "augmented_copies",
                "fine_tune_layers", "data_dir", "max_images_per_class", "val_fraction", "test_fraction", "seed",
                "activation_cache", "activation_cache_dtype")
"""Parameters that decide a run's activation-cache entries (`models.cache.cache_key` hashes what they decide):
an earlier run that agrees on all of them has built the entries a new run would read."""




BASE_GMACS_224 = {"vgg16": 15.47, "vgg19": 19.63, "resnet50": 4.09, "resnet50_v2": 4.09, "resnet101": 7.80,
                  "densenet121": 2.83, "efficientnet_b0": 0.39, "convnext_tiny": 4.46, "mobilenet": 0.569,
                  "mobilenet_v2": 0.300}
"""Billions of multiply-adds of one 224 x 224 image through a base (torchvision's model table, "GFLOPS";
MobileNet: Howard et al. 2017, Table 8, 569 million). `mobilenet*` scale by `alpha**2` (their section 3.3).
Used only to guess a cache build's seconds for a base no earlier run has built, from the others'."""


def _gmacs(params: dict[str, Any]) -> Optional[float]:
    """`BASE_GMACS_224` of the run's base, times `alpha**2` for a MobileNet width multiplier; `None` if unknown."""
    gmacs = BASE_GMACS_224.get(str(params.get("base", "")).lower())
    alpha = (params.get("base_kwargs") or {}).get("alpha", 1.0)
    return None if gmacs is None else gmacs * float(alpha) ** 2


def _phase_epochs(params: dict[str, Any]) -> int:
    """Epochs a run trains at most: the head phase plus, with fine-tuning, the fine-tuning phase."""
    ft = (params.get("fine_tune_epochs", 0) or 0) if params.get("fine_tune_layers") else 0
    return max(1, (params.get("epochs", 0) or 0) + ft)


def _pixels(params: dict[str, Any]) -> float:
    """`image_size**2`: a CNN's cost per image grows with its input's area."""
    return float(params.get("image_size", 1) or 1) ** 2


def _build_units(params: dict[str, Any]) -> float:
    """Pixels the activation cache passes through the frozen base: `_pixels` per image, times
    `1 + augmented_copies` with augmentation (each copy is one more augmented pass)."""
    copies = (params.get("augmented_copies", 0) or 0) if params.get("augmentation") else 0
    return _pixels(params) * (1 + copies)


def predict_duration_s(params: dict[str, Any], records: Sequence) -> Optional[float]:
    """The expected wall time of a run: its training and evaluation, plus building its activation cache if no
    earlier run has built it.

    Training (`timings.total_s` less `timings.cache_build_s`, seconds) comes from, in order: the median of the
    earlier completed runs with the same `base`, `base_kwargs`, `image_size`, `epochs`, `fine_tune_epochs` and
    fine-tuning (`fine_tune_layers` > 0 or not); else the median seconds per epoch and pixel of earlier runs of
    the same base, times this run's epochs and `image_size**2` (a CNN's cost grows with its input's area); else
    the median seconds per epoch of all earlier runs times this run's epochs.

    The cache build is added when no earlier finished run agrees with this one on every `CACHE_PARAMS` value
    (its entries would be read, not built): the median `cache_build_s` per `_build_units` of earlier runs of the
    same base that built entries, times this run's units; for a base no run has built with, the other bases'
    seconds per unit and multiply-add (`BASE_GMACS_224`) times this base's; nothing when neither is known, or
    when this run bypasses the cache (`models.spec.bypass_reason`: `activation_cache: false`, mixup / cutmix, or
    augmentation with `augmented_copies: 0`).

    Args:
        params: the run's parameters, after defaults.
        records: earlier records (`runner.records.RunRecord`; completed and pruned runs count).

    Returns:
        Seconds, or `None` without earlier runs.
    """
    done = [r for r in records if r.kind == RUN and r.timings.total_s and r.status in DONE_STATUSES]
    if not done:
        return None

    def training_s(r) -> float:
        return max(0.0, r.timings.total_s - (r.timings.cache_build_s or 0.0))

    def per_epoch(r) -> float:
        return training_s(r) / max(1, r.epochs_run or _phase_epochs(r.params))

    same_base = [r for r in done if all(r.params.get(k) == params.get(k) for k in ("base", "base_kwargs"))]
    key = ("image_size", "epochs", "fine_tune_epochs")
    same = [training_s(r) for r in same_base if r.status == COMPLETED and all(r.params.get(k) == params.get(k)
            for k in key) and bool(r.params.get("fine_tune_layers")) == bool(params.get("fine_tune_layers"))]
    if same:
        training = statistics.median(same)
    elif same_base:
        rate = statistics.median(per_epoch(r) / _pixels(r.params) for r in same_base)
        training = rate * _pixels(params) * _phase_epochs(params)
    else:
        training = statistics.median(per_epoch(r) for r in done) * _phase_epochs(params)
    spec = ExperimentSpec.model_validate({k: v for k, v in params.items() if k in ExperimentSpec.model_fields})
    if bypass_reason(spec) or any(all(r.params.get(k) == params.get(k) for k in CACHE_PARAMS) for r in done):
        return training
    built = [r.timings.cache_build_s / _build_units(r.params) for r in same_base if r.timings.cache_build_s]
    if built:
        return training + statistics.median(built) * _build_units(params)
    gmacs = _gmacs(params)
    other = [r.timings.cache_build_s / (_build_units(r.params) * _gmacs(r.params)) for r in done
             if r.timings.cache_build_s and _gmacs(r.params)]
    return training + (statistics.median(other) * _build_units(params) * gmacs if gmacs and other else 0.0)


