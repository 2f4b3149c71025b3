"""Where a search starts: the cost prior (`runner.search.prior_cost`), TPE's cheap start, promotion by rung."""

from __future__ import annotations

import itertools

import pytest

from helpers import _make_record
from models.spec import experiment_spec

SPACE = ("search: {sampler: tpe, seed: %d, n_runs: 30}\n"
         "fixed: {weights: imagenet, epochs: 4, fine_tune_epochs: 2}\n"
         "grid:\n"
         "  base: [vgg16, mobilenet]\n"
         "  image_size: [224, 160, 128]\n"
         "  fine_tune_layers: [6, 0]\n"
         "  augmentation: [{flip: horizontal}, null]\n"
         "  augmented_copies: [0, 2]\n"
         "  dropout: [0.5, 0.2]\n")
GMACS = {"vgg16": 15.47, "mobilenet": 0.569}  # BASE_GMACS_224, written out


def expected_cost(base, size, fine_tune_layers, augmentation, copies, epochs=4, fine_tune_epochs=2):
    """The prior worked out by hand: passes through the base per image, times its multiply-adds, for 1000 images."""
    if augmentation and not copies:  # on the fly: the frozen base runs every head epoch
        frozen = epochs
    else:  # the cache: built once, with its augmented copies
        frozen = 1 + (copies if augmentation else 0)
    passes = frozen + (3 * fine_tune_epochs if fine_tune_layers else 0)
    return GMACS[base] * (size / 224) ** 2 * passes * 1000


def test_prior_cost_counts_passes_through_the_base():
    from runner.search import prior_cost

    fixed = {"weights": "imagenet", "epochs": 4, "fine_tune_epochs": 2}
    for base, size, layers, aug, copies in itertools.product(("vgg16", "mobilenet"), (224, 128), (6, 0),
                                                             ({"flip": "horizontal"}, None), (0, 2)):
        spec = experiment_spec({**fixed, "base": base, "image_size": size, "fine_tune_layers": layers,
                                "augmentation": aug, "augmented_copies": copies})
        assert prior_cost(spec) == pytest.approx(expected_cost(base, size, layers, aug, copies))
    limited = experiment_spec({**fixed, "base": "mobilenet", "image_size": 224, "max_images_per_class": 50})
    assert prior_cost(limited) == pytest.approx(0.569 * 1 * 50)
    narrow = experiment_spec({**fixed, "base": "mobilenet", "image_size": 224, "base_kwargs": {"alpha": 0.5}})
    assert prior_cost(narrow) == pytest.approx(0.569 / 4 * 1000)
    scratch = experiment_spec({"weights": None, "base": "mobilenet", "image_size": 224, "epochs": 4,
                               "fine_tune_layers": 0})
    assert prior_cost(scratch) == pytest.approx(0.569 * 3 * 4 * 1000)  # every epoch trains the whole base
    assert prior_cost(experiment_spec({"base": "simple_cnn_small"})) is None  # no multiply-adds known


def search_source(tmp_path, seed: int, sampler: str = "tpe"):
    from runner.grid import RunBuilder, load_grid
    from runner.records.query import parse_metric, read_all
    from runner.search import SearchSource, open_study, parse_space

    path = tmp_path / f"space{seed}.yaml"
    path.write_text((SPACE % seed).replace("sampler: tpe", f"sampler: {sampler}"), encoding="utf-8")
    spec = load_grid(path)
    builder = RunBuilder(spec, path, base_dir=tmp_path)
    dims = parse_space(spec, path, builder)
    journal = tmp_path / "logs" / f"s{seed}.journal"
    study = open_study(spec.search, dims, journal, f"s{seed}", max_epochs=6)
    return SearchSource(study=study, dims=dims, search=spec.search, builder=builder,
                        found=read_all(tmp_path / "logs"), ranking=parse_metric("weighted_recall"), journal=journal)


def space_costs():
    """`expected_cost` of every point of SPACE (dropout does not change it)."""
    return sorted(expected_cost(*point) for point in itertools.product(
        ("vgg16", "mobilenet"), (224, 160, 128), (6, 0), ({"flip": "horizontal"}, None), (0, 2)))


def run_search(source, runs: int, score) -> list:
    """Start and finish `runs` runs of `source`, each told `score(params)` as its weighted recall."""
    started = []
    for index in range(runs):
        run = source.peek()
        assert run is not None
        source.pop()
        started.append(run)
        source.finished(_make_record(f"r{index}", score(run.params), **run.params).model_copy(
            update={"config_hash": run.config_hash}))
    return started


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tpe_starts_with_the_cheapest_point_and_cheap_draws_when_nothing_is_known(tmp_path, seed):
    """A space whose points cost from 0.19 to 557 units (VGG16 at 224 px, augmentation on the fly,
    fine-tuned): the first run is the cheapest point of the space, the next nine each the cheapest of 4
    draws (so their median sits low in the space's costs); the eleventh comes from TPE."""
    import statistics

    from runner.search import prior_cost
    from runner.search.study import CHEAP_START_ATTR, CHEAP_START_RUNS, DUPLICATE_ATTR

    source = search_source(tmp_path, seed)
    started = run_search(source, CHEAP_START_RUNS + 1, lambda params: 0.5 + params["dropout"])
    costs = [prior_cost(run.spec) for run in started]
    every = space_costs()
    assert costs[0] == pytest.approx(every[0])  # the first run: the cheapest the space has
    assert statistics.median(costs[:CHEAP_START_RUNS]) <= statistics.median(every) / 4
    trials = [t for t in source.study.get_trials(deepcopy=False) if DUPLICATE_ATTR not in t.user_attrs]
    assert [CHEAP_START_ATTR in t.user_attrs for t in trials] == [True] * CHEAP_START_RUNS + [False]
    assert trials[0].user_attrs[CHEAP_START_ATTR] == pytest.approx(every[0], abs=1e-3)
    assert len({run.config_hash for run in started}) == len(started)  # no point twice


def test_random_search_draws_uniformly_without_a_cheap_start(tmp_path):
    """The random sampler is the baseline: its points are its own uniform draws, costly ones included."""
    from runner.search import prior_cost
    from runner.search.study import CHEAP_START_ATTR

    source = search_source(tmp_path, 0, sampler="random")
    started = run_search(source, 10, lambda params: 0.5)
    assert not any(CHEAP_START_ATTR in t.user_attrs for t in source.study.get_trials(deepcopy=False))
    assert max(prior_cost(run.spec) for run in started) > sorted(space_costs())[len(space_costs()) // 2]


def test_a_continued_search_with_ten_finished_trials_gets_no_cheap_start(tmp_path):
    """A second sweep of the same study, whose ten trials finished: TPE proposes at once."""
    from runner.search.study import CHEAP_START_ATTR, CHEAP_START_RUNS

    run_search(search_source(tmp_path, 0), CHEAP_START_RUNS, lambda params: 0.5)
    again = search_source(tmp_path, 0)  # the same journal, opened again
    before = len(again.study.get_trials(deepcopy=False))
    assert before >= CHEAP_START_RUNS
    run_search(again, 2, lambda params: 0.5)
    added = again.study.get_trials(deepcopy=False)[before:]
    assert len(added) >= 2 and not any(CHEAP_START_ATTR in t.user_attrs for t in added)


def test_a_run_is_promoted_past_a_rung_only_in_the_best_third():
    """Successive halving at the first rung (epoch `min_epochs` = 1, reduction factor 3): each run goes on
    past it only when its figure is among the best `n // 3` of the n runs that reached it, itself
    included (Li et al. 2020's ASHA rule); here worked out by hand for runs arriving one at a time."""
    import optuna

    from models.pruning import build_pruner
    from runner.search import SearchSpec, pruner_config

    config = pruner_config(SearchSpec(sampler="random", pruner="successive_halving", min_epochs=1), max_epochs=9)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=build_pruner(config))
    arriving = (0.3, 0.1, 0.5, 0.2, 0.6, 0.4, 0.55, 0.65, 0.45, 0.62)
    promoted, seen = [], []
    for value in arriving:
        trial = study.ask()
        trial.report(value, step=1)
        pruned = trial.should_prune()
        study.tell(trial, None if pruned else value,
                   state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE)
        seen.append(value)
        promoted.append(not pruned)
    by_hand = []
    for n in range(1, len(arriving) + 1):
        best = sorted(arriving[:n], reverse=True)[:max(1, n // 3)]
        by_hand.append(arriving[n - 1] >= best[-1])
    assert promoted == by_hand == [True, False, True, False, True, False, True, True, False, True]


def test_a_fine_tuning_run_of_another_base_is_predicted_by_passes_through_the_base(make_record):
    """Earlier: a MobileNet head on cached features (4 epochs, 40 s, its cache built in 60 s) and a MobileNet
    fine-tuned 2 epochs after the same 4 head epochs (100 s of training). A VGG16 at 224 px fine-tuned
    3 epochs costs its head epochs at 10 s each plus the fine-tuned run's seconds per pass through the
    base, scaled by multiply-adds and pixels, not a cached head epoch's 10 s per epoch."""
    from runner.search import predict_duration_s

    def record(name, total_s, cache_build_s, **params):
        rec = make_record(name, 0.8, **params)
        return rec.model_copy(update={"epochs_run": params["epochs"] + params.get("fine_tune_epochs", 0),
                                      "timings": rec.timings.model_copy(update={"total_s": total_s,
                                                                                "cache_build_s": cache_build_s})})

    common = {"base": "mobilenet", "image_size": 128, "epochs": 4, "augmentation": None}
    head = record("head", 100.0, 60.0, **common, fine_tune_layers=0)
    tuned = record("tuned", 130.0, 30.0, **common, fine_tune_layers=6, fine_tune_epochs=2)
    per_gmac_pass = (100.0 - 4 * 10.0) / (0.569 * (128 / 224) ** 2 * 2 * 3)  # the tuned run's base part
    vgg = {**common, "base": "vgg16", "image_size": 224, "fine_tune_layers": 6, "fine_tune_epochs": 3}
    build = (60.0 + 30.0) / 2 / (0.569 * 128 ** 2) * 15.47 * 224 ** 2  # the median build per multiply-add and pixel
    predicted = predict_duration_s(experiment_spec(vgg), [head, tuned])
    assert predicted == pytest.approx(4 * 10.0 + per_gmac_pass * 15.47 * 3 * 3 + build, rel=1e-6)
    assert predicted > 20 * (4 + 3) * 10.0  # the cached head's seconds per epoch would say 70 s


def test_tpe_proposes_less_where_its_proposals_were_refused_for_the_budget(tmp_path, monkeypatch):
    """Budget 100 s; earlier runs say 64 px takes 500 s and 32 px 10 s; dropout in [0, 0.5] sets the score.
    Over 30 runs, TPE told each refusal as an infeasible pruned trial proposes 64 px less than half as often
    as TPE told a failed trial, which teaches it nothing (the counterfactual, patched in here), for each of
    three seeds."""
    from optuna.trial import TrialState

    from helpers import timed_search_source
    from runner.search import SearchSource
    from runner.search.study import OVER_BUDGET_ATTR

    def refusals(seed: int, folder) -> int:
        folder.mkdir()
        source, _ = timed_search_source(folder, f"search: {{sampler: tpe, budget: 100, seed: {seed}, n_runs: 100}}\n"
                                                "grid:\n  image_size: [64, 32]\n  dropout: {low: 0.0, high: 0.5}\n",
                                        {64: 500.0, 32: 10.0})
        for index in range(30):
            run = source.peek()
            assert run is not None and run.params["image_size"] == 32
            source.pop()
            record = _make_record(f"r{index}", 0.4 + run.params["dropout"], **run.params)
            source.finished(record.model_copy(update={"config_hash": run.config_hash, "timings": record.timings
                                                      .model_copy(update={"total_s": 10.0})}))
        return sum(OVER_BUDGET_ATTR in t.user_attrs for t in source.study.get_trials(deepcopy=False))

    told = [refusals(seed, tmp_path / f"told{seed}") for seed in (0, 1, 2)]

    def fail(self, trial, predicted_s, limit_s):  # what a refusal was before: a failed trial
        trial.set_user_attr(OVER_BUDGET_ATTR, round(predicted_s, 1))
        self._tell(trial, state=TrialState.FAIL)

    monkeypatch.setattr(SearchSource, "_refuse", fail)
    failed = [refusals(seed, tmp_path / f"failed{seed}") for seed in (0, 1, 2)]
    for mine, before in zip(told, failed):
        assert mine < before / 2, (told, failed)
