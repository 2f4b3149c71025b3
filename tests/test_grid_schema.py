"""`runner.grid.schema`: the grid file's schema (`GridSpec`, `EnsembleSpec`), one expanded run (`RunSpec`)
and the runner's own notebook parameters (`RunnerParams`, `RESERVED_PARAMS`). Validated in memory: no grid
file, no notebook, no Keras."""

from dataclasses import FrozenInstanceError, asdict

import pytest
from pydantic import ValidationError

from models.contract import DataSection
from models.spec import ExperimentSpec
from runner import PROJECT_ROOT
from runner.grid.schema import (DEFAULT_NOTEBOOK, NON_PATH_VALUES, PATH_PARAMS, RENAMED_PARAMS, RESERVED_PARAMS,
                                EnsembleSpec, GridSpec, RunnerParams, RunSpec)

RANKING = ("accuracy", "weighted_precision", "weighted_recall", "weighted_f1", "macro_precision", "macro_recall",
           "macro_f1")
"""The ranking metrics as the docs list them (`docs/grid.md`), written out here rather than imported."""


def errors(**grid) -> list[tuple[tuple, str]]:
    """`(location, message)` of each error `GridSpec` raises for `grid` (pydantic's "Value error, " dropped)."""
    with pytest.raises(ValidationError) as info:
        GridSpec.model_validate(grid)
    return [(err["loc"], err["msg"].removeprefix("Value error, ")) for err in info.value.errors()]


# RunnerParams / RESERVED_PARAMS / parameter tables ----------------------------------------------------


def test_reserved_params_are_the_runner_params_fields_in_order():
    assert RESERVED_PARAMS == ("output_dir", "resolved_warm_start", "pruning")
    injected = RunnerParams(output_dir="/runs/r1", resolved_warm_start=None, pruning={"metric": "val_accuracy"})
    assert asdict(injected) == {"output_dir": "/runs/r1", "resolved_warm_start": None,
                                "pruning": {"metric": "val_accuracy"}}
    assert tuple(asdict(injected)) == RESERVED_PARAMS
    with pytest.raises(FrozenInstanceError):
        injected.output_dir = "/elsewhere"  # type: ignore[misc]
    # the runner's parameters are never experiment parameters a grid could set
    assert not set(RESERVED_PARAMS) & set(ExperimentSpec.model_fields)


def test_path_params_renamed_params_and_non_path_values_name_real_spec_fields():
    assert PATH_PARAMS == ("data_dir", "weights", "weights_dir", "cache_dir")
    assert set(PATH_PARAMS) <= set(ExperimentSpec.model_fields)
    assert NON_PATH_VALUES == {"weights": ("imagenet",), "data_dir": ("builtin:",)}
    assert set(NON_PATH_VALUES) <= set(PATH_PARAMS)
    new_name, why = RENAMED_PARAMS["sampler"]
    assert new_name == "batch_sampler" and "search: {sampler: ...}" in why
    assert new_name in ExperimentSpec.model_fields and "sampler" not in ExperimentSpec.model_fields


def test_default_notebook_is_the_checkouts_base_notebook():
    assert DEFAULT_NOTEBOOK == PROJECT_ROOT / "notebooks" / "base_experiment.ipynb"
    assert DEFAULT_NOTEBOOK.is_file()


# GridSpec ---------------------------------------------------------------------------------------------


def test_grid_spec_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = GridSpec()
    cwd = tmp_path.resolve()
    assert spec.notebook == DEFAULT_NOTEBOOK.resolve()
    assert (spec.experiments_dir, spec.logs_dir, spec.leaderboard) == (
        cwd / "experiments", cwd / "logs", cwd / "leaderboard.html")
    assert (spec.data_dir, spec.fixed, spec.grid, spec.runs, spec.search, spec.ensembles) == (
        None, {}, {}, [], None, [])
    assert (spec.repeats, spec.refit, spec.sample, spec.seed, spec.metric, spec.top_n) == (
        1, False, None, 0, "weighted_recall", 10)


def test_relative_and_home_paths_become_absolute_from_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    spec = GridSpec(notebook="nb/mine.ipynb", experiments_dir="out/../runs", logs_dir="~/logs",
                    leaderboard=str(tmp_path / "site" / "board.html"))
    cwd = tmp_path.resolve()
    assert spec.notebook == cwd / "nb" / "mine.ipynb"
    assert spec.experiments_dir == cwd / "runs"
    assert spec.logs_dir == cwd / "home" / "logs"
    assert spec.leaderboard == cwd / "site" / "board.html"
    assert all(p.is_absolute() for p in (spec.notebook, spec.experiments_dir, spec.logs_dir, spec.leaderboard))
    # made absolute when validated: changing folder afterwards moves nothing
    monkeypatch.chdir(tmp_path / "..")
    assert spec.experiments_dir == cwd / "runs"


@pytest.mark.parametrize("field, value, kind", [
    ("sample", True, "int_type"),        # YAML `true` is not 1
    ("top_n", "5", "int_type"),          # a quoted number is not a number
    ("seed", 1.0, "int_type"),
    ("refit", 1, "bool_type"),
    ("data_dir", 5, "string_type"),
    ("fixed", ["epochs", 1], "dict_type"),
    ("runs", {"head": "gap"}, "list_type"),
])
def test_types_are_strict(field, value, kind):
    with pytest.raises(ValidationError) as info:
        GridSpec.model_validate({field: value})
    assert [(err["loc"], err["type"]) for err in info.value.errors()] == [((field,), kind)]


@pytest.mark.parametrize("field, value, bound", [("top_n", 0, 1), ("repeats", 0, 1), ("sample", 0, 1)])
def test_counts_have_lower_bounds(field, value, bound):
    assert errors(**{field: value}) == [((field,), f"Input should be greater than or equal to {bound}")]
    assert getattr(GridSpec.model_validate({field: bound}), field) == bound


def test_unknown_top_level_key_is_refused_by_name():
    assert errors(fixd={"epochs": 1}) == [(("fixd",), "Extra inputs are not permitted")]


def test_every_ranking_metric_with_or_without_a_split_prefix_is_accepted():
    for name in RANKING:
        for metric in (name, f"val_{name}", f"test_{name}"):
            assert GridSpec(metric=metric).metric == metric


@pytest.mark.parametrize("metric", ["recall", "train_accuracy", "val_loss", "Accuracy", ""])
def test_unknown_metric_lists_the_allowed_ones(metric):
    assert errors(metric=metric) == [(("metric",), f"expected one of {', '.join(RANKING)} (validation split), "
                                                   "or one of them prefixed with val_ or test_")]


def test_empty_value_lists_are_refused_naming_the_parameter():
    assert errors(grid={"head": ["gap"], "dropout": []}) == [
        (("grid",), "dropout: empty list of values (give at least one)")]
    assert errors(grid=[{"head": ["gap"]}, {"epochs": []}]) == [
        (("grid",), "epochs: empty list of values (give at least one)")]
    sub_grids = GridSpec(grid=[{"head": ["gap", "flatten"]}, {"dropout": [0.1]}]).grid
    assert sub_grids == [{"head": ["gap", "flatten"]}, {"dropout": [0.1]}]


def test_a_distribution_needs_a_search_block():
    assert errors(grid={"head": ["gap"], "dropout": {"low": 0.1, "high": 0.5}}) == [
        ((), "grid.dropout: got {'low': 0.1, 'high': 0.5}: a distribution ({low, high} or {int: [low, high]}) "
             "needs a search: block; a plain grid takes a list of values")]
    spec = GridSpec(search={"sampler": "random"}, grid={"dropout": {"low": 0.1, "high": 0.5}})
    assert spec.grid == {"dropout": {"low": 0.1, "high": 0.5}} and spec.search.sampler == "random"


def test_repeats_with_a_search_belong_in_the_search_block():
    assert errors(search={"sampler": "random"}, repeats=3) == [
        ((), "repeats: 3 with a search: block: give it as search.repeats (each proposal then runs 3 seeds "
             "and is scored by their mean)")]
    assert GridSpec(search={"sampler": "random", "repeats": 3}).search.repeats == 3
    assert GridSpec(repeats=3).repeats == 3


@pytest.mark.parametrize("metric", ["macro_f1", "weighted_precision", "test_accuracy", "test_weighted_recall"])
def test_a_pruner_needs_a_per_epoch_validation_metric(metric):
    """Only accuracy and weighted recall have a value after every epoch; a test-split metric never does."""
    assert errors(search={"pruner": "median"}, metric=metric) == [
        ((), f"metric: got {metric!r}, but search.pruner: median judges each run after every epoch by the grid's "
             f"metric on the validation split, and only accuracy, weighted_recall (val_ prefix optional) have a "
             f"value then; set metric to one of them, or search.pruner: none")]


@pytest.mark.parametrize("metric", ["accuracy", "val_accuracy", "weighted_recall", "val_weighted_recall"])
def test_a_pruner_accepts_accuracy_and_weighted_recall_on_validation(metric):
    assert GridSpec(search={"pruner": "hyperband"}, metric=metric).metric == metric


def test_without_a_pruner_any_metric_goes_with_a_search():
    assert GridSpec(search={"pruner": "none"}, metric="test_macro_f1").metric == "test_macro_f1"


# EnsembleSpec -----------------------------------------------------------------------------------------


def test_ensemble_is_top_n_or_named_runs():
    assert EnsembleSpec(top=3) == EnsembleSpec(top=3, runs=[])
    assert EnsembleSpec(runs=["exp_001", "20261121-120000-abcdef01"]).top is None
    grid = GridSpec(ensembles=[{"top": 2}, {"runs": ["a", "b", "c"]}])
    assert [(e.top, e.runs) for e in grid.ensembles] == [(2, []), (None, ["a", "b", "c"])]


@pytest.mark.parametrize("given, loc, message", [
    ({}, (), "give either top: N (N >= 2) or runs: [names or ids]"),
    ({"top": 3, "runs": ["a", "b"]}, (), "give either top: N (N >= 2) or runs: [names or ids]"),
    ({"top": 1}, ("top",), "Input should be greater than or equal to 2"),
    ({"runs": ["a"]}, (), "runs: an ensemble needs at least 2 runs"),
    ({"top": "3"}, ("top",), "Input should be a valid integer"),
    ({"topp": 3}, ("topp",), "Extra inputs are not permitted"),
])
def test_bad_ensembles_are_refused(given, loc, message):
    with pytest.raises(ValidationError) as info:
        EnsembleSpec.model_validate(given)
    assert (info.value.errors()[0]["loc"], info.value.errors()[0]["msg"].removeprefix("Value error, ")) == (
        loc, message)
    assert errors(ensembles=[given])[0] == (("ensembles", 0, *loc), message)  # located within the grid


# RunSpec ----------------------------------------------------------------------------------------------


def run_spec(params: dict, **fields) -> RunSpec:
    return RunSpec(index=0, params=params, config_hash="c" * 64, origin="runs[0]", **fields)


def test_run_spec_validates_its_spec_from_params_when_not_given():
    run = run_spec({"base": "MobileNet-V2", "dropout": 0.2, "dense_units": [64, 32], "epochs": 3,
                    "my_notebook_option": "x"})  # a custom notebook's own parameter is left out of the spec
    assert isinstance(run.spec, ExperimentSpec)
    assert (run.spec.base, run.spec.dropout, run.spec.dense_units, run.spec.epochs) == (
        "mobilenet_v2", 0.2, [64, 32], 3)
    defaults = ExperimentSpec()
    assert (run.spec.head, run.spec.batch_size) == (defaults.head, defaults.batch_size)
    assert run.params["base"] == "MobileNet-V2"  # params stay as given: they are what config_hash covers
    assert run_spec({}).spec == defaults


def test_run_spec_keeps_a_given_spec_and_leaves_it_out_of_equality_and_repr():
    given = ExperimentSpec(base="simple_cnn_small", dropout=0.3)
    run = run_spec({"base": "simple_cnn_small", "dropout": 0.3}, spec=given)
    assert run.spec is given
    assert run == run_spec({"base": "simple_cnn_small", "dropout": 0.3})  # spec is not compared
    assert "spec=" not in repr(run) and "dropout" in repr(run)


def test_run_spec_with_invalid_params_raises_at_construction():
    with pytest.raises(ValidationError, match=r"dropout\n  Input should be less than 1"):
        run_spec({"dropout": 2.0})
    with pytest.raises(ValidationError, match="head"):
        run_spec({"head": "pyramid"})


def test_run_spec_is_frozen_and_with_trial_returns_a_copy():
    run = run_spec({"dropout": 0.1}, group_hash="g" * 64, manifest_hash="m" * 64)
    with pytest.raises(FrozenInstanceError):
        run.index = 3  # type: ignore[misc]
    trial = {"study": "s", "trial": 4, "metric": "val_accuracy"}
    pruned = run.with_trial(trial)
    assert pruned.trial == trial and run.trial is None
    assert (pruned.index, pruned.params, pruned.config_hash, pruned.origin, pruned.group_hash,
            pruned.manifest_hash) == (run.index, run.params, run.config_hash, run.origin, run.group_hash,
                                      run.manifest_hash)
    assert pruned.spec is run.spec
    assert pruned.with_trial(None).trial is None


def with_manifest(record, manifest_hash):
    return record.model_copy(update={"data": DataSection(dir="/d", class_names=["a", "b"],
                                                         manifest_hash=manifest_hash)})


def test_data_matches_compares_the_recorded_manifest_with_the_expected_one(make_record):
    record = make_record("r1", 0.8)
    expected = run_spec({}, manifest_hash="1" * 64)
    assert expected.data_matches(with_manifest(record, "1" * 64))
    assert not expected.data_matches(with_manifest(record, "2" * 64))  # the data changed under it
    # who cannot tell matches: a record without a data section, or a run that expects no manifest
    assert record.data is None and expected.data_matches(record)
    assert run_spec({}).data_matches(with_manifest(record, "2" * 64))
    assert expected.data_matches(object())


@pytest.mark.parametrize("name, value, expected", [
    ("data_dir", "photos", True), ("data_dir", "builtin:digits", False), ("weights", "imagenet", False),
    ("weights", "w.weights.h5", True), ("cache_dir", "mycache", True), ("weights_dir", None, False),
    ("base", "backbones/tiny.keras", True), ("base", "VGG16", False), ("base", "efficientnet_lite0", False),
    ("head", "gap", False)])
def test_a_path_value_is_a_path_parameter_or_a_saved_model_base(name, value, expected):
    from runner.grid.schema import path_value

    assert path_value(name, value) is expected
