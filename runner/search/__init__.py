"""Search: an Optuna study proposes a sweep's runs and decides which to prune.

- `runner.search.space`: the `search:` block (`SearchSpec`), the samplers and pruners it may name
  (`SAMPLERS`, `PRUNERS`) and the search space (`parse_space`).
- `runner.search.study`: the study's journal file, its sampler and its pruner (`open_study`).
- `runner.search.duration`: a run's expected seconds (`predict_duration_s`), for the budget, and its relative
  cost from its parameters alone (`prior_cost`), for where a search starts.
- `runner.search.source`: `SearchSource`, the ask-and-tell loop that feeds the sweep one run at a time, and
  `open_search`, which opens a grid's study and gives it what it lacks of the run records.
"""

from runner.search.duration import predict_duration_s, prior_cost
from runner.search.source import SearchSource, open_search
from runner.search.space import (
    PRUNERS, SAMPLERS, Dimension, PrunerKind, SamplerKind, SearchSpec, decode, encode, parse_duration, parse_space,
)
from runner.search.study import PRUNABLE_METRICS, open_study, pruner_config, pruning_metric, study_path

__all__ = ["PRUNABLE_METRICS", "PRUNERS", "SAMPLERS", "Dimension", "PrunerKind", "SamplerKind", "SearchSource",
           "SearchSpec", "decode", "encode", "open_search", "open_study", "parse_duration", "parse_space",
           "predict_duration_s", "prior_cost", "pruner_config", "pruning_metric", "study_path"]
