"""runner.search.space: the `search:` block, the table of samplers and pruners it may name, durations, the
dimensions of a space and the encoding of their values for Optuna."""

import math
from pathlib import Path

import optuna
import pytest
from pydantic import ValidationError

from runner.errors import ConfigError
from runner.grid import RunBuilder, docs_tables, load_grid
from runner.search.space import (
    PRUNERS, SAMPLERS, Dimension, PrunerKind, SamplerKind, SearchSpec, decode, encode, parse_duration, parse_space,
)

DIMS = [Dimension("dense_units", "categorical", choices=([], [256], [512, 256])),
        Dimension("dropout", "float", low=0.0, high=0.5, step=0.25),
        Dimension("epochs", "int", low=1, high=5, step=2)]


def space(tmp_path: Path, text: str):
    path = tmp_path / "search.yaml"
    path.write_text(text, encoding="utf-8")
    spec = load_grid(path)
    return parse_space(spec, path, RunBuilder(spec, path, base_dir=tmp_path))


# The table of samplers and pruners -----------------------------------------------------------------------------------

def test_search_spec_allows_exactly_the_names_of_the_tables_in_their_order():
    for key, table in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        names = list(table)
        expected = ", ".join(f"'{name}'" for name in names[:-1]) + f" or '{names[-1]}'"
        with pytest.raises(ValidationError, match=f"Input should be {expected}"):
            SearchSpec.model_validate({key: "bayes"})
        assert [SearchSpec.model_validate({key: name}).model_dump()[key] for name in names] == names


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_is_built_from_its_row_with_optunas_public_classes(name):
    kind = SAMPLERS[name]
    assert isinstance(kind, SamplerKind)
    search = SearchSpec(sampler=name, seed=7)
    sampler = search.sampler_kind.build(search, DIMS)
    assert type(sampler) is getattr(optuna.samplers, kind.optuna_class)
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    trial = study.ask({d.name: d.distribution() for d in DIMS})
    assert decode(trial.params["dense_units"]) in ([], [256], [512, 256])


def test_the_same_seed_proposes_the_same_points():
    def proposals(name):
        search = SearchSpec(sampler=name, seed=3)
        study = optuna.create_study(sampler=search.sampler_kind.build(search, DIMS), direction="maximize")
        points = []
        for value in range(4):
            trial = study.ask({d.name: d.distribution() for d in DIMS})
            points.append(trial.params)
            study.tell(trial, float(value))
        return points

    for name in SAMPLERS:
        assert proposals(name) == proposals(name), name


def test_only_the_grid_sampler_enumerates_the_grid():
    assert {name for name, kind in SAMPLERS.items() if kind.enumerates_grid} == {"grid"}
    search = SearchSpec(sampler="grid")
    sampler = search.sampler_kind.build(search, DIMS)
    study = optuna.create_study(sampler=sampler)
    seen = set()
    for _ in range(3 * 3 * 3):
        trial = study.ask({d.name: d.distribution() for d in DIMS})
        seen.add((trial.params["dense_units"], trial.params["dropout"], trial.params["epochs"]))
        try:
            study.tell(trial, 0.0)
        except RuntimeError:  # GridSampler's study.stop() outside optimize, after the last point
            pass
    assert len(seen) == 27 and {point[1] for point in seen} == {0.0, 0.25, 0.5}


@pytest.mark.parametrize("name", PRUNERS)
def test_every_pruner_is_described_by_its_row(name):
    kind = PRUNERS[name]
    assert isinstance(kind, PrunerKind)
    search = SearchSpec(pruner=name, min_epochs=2)
    config = search.pruner_kind.config(search, max_epochs=6)
    if not kind.prunes:
        assert name == "none" and config is None
        return
    assert config["class"] == kind.optuna_class
    pruner = getattr(optuna.pruners, config["class"])(**config["kwargs"])
    assert isinstance(pruner, optuna.pruners.BasePruner)


def test_the_pruners_arguments_follow_min_epochs_and_the_longest_run():
    def kwargs(name, min_epochs=3, max_epochs=8):
        search = SearchSpec(pruner=name, min_epochs=min_epochs)
        return search.pruner_kind.config(search, max_epochs)["kwargs"]

    assert kwargs("median") == {"n_startup_trials": 2, "n_warmup_steps": 2}
    assert kwargs("successive_halving") == {"min_resource": 3, "reduction_factor": 3}
    assert kwargs("hyperband") == {"min_resource": 3, "reduction_factor": 3, "max_resource": 8}
    assert kwargs("hyperband", min_epochs=5, max_epochs=2)["max_resource"] == 5  # never below min_resource


def test_the_search_table_of_docs_search_md_is_written_from_the_tables():
    stale = [line for line in docs_tables.stale_sections() if line.startswith("docs/search.md")]
    assert not stale, (f"{', '.join(stale)}: the table differs from SAMPLERS / PRUNERS; run "
                       f"`{docs_tables.COMMAND}` and commit docs/search.md")
    table = docs_tables.search_section()
    assert all(f"| `sampler` | `{name}` |" in table for name in SAMPLERS)
    assert all(f"| `pruner` | `{name}` |" in table for name in PRUNERS)


# The search: block ---------------------------------------------------------------------------------------------------

def test_the_defaults():
    search = SearchSpec()
    assert (search.sampler, search.pruner, search.n_runs, search.budget_s, search.repeats) == ("tpe", "none", None,
                                                                                              None, 1)
    assert search.sampler_kind is SAMPLERS["tpe"] and search.pruner_kind is PRUNERS["none"]


@pytest.mark.parametrize("block, message", [
    ({"repeats": 2, "pruner": "median"}, r"repeats: 2 with pruner: median: a pruner stops one run by its curve"),
    ({"max_run_share": 0.5}, r"max_run_share is a share of the budget's time left: give a budget too"),
    ({"max_run_share": 1.5, "budget": "1h"}, r"max_run_share\n  Input should be less than or equal to 1"),
    ({"budget": "soon"}, r"expected a duration such as 45m, 1h30m or 90s, got 'soon'"),
    ({"n_runs": 0}, r"n_runs\n  Input should be greater than or equal to 1"),
    ({"seed": "1"}, r"seed\n  Input should be a valid integer"),
    ({"seed": -1}, r"seed\n  Value error, expected an integer with 0 <= seed < 2\*\*32 = 4294967296, the range of "
                   r"numpy.random.RandomState, which seeds Optuna's samplers"),
    ({"seed": 2**32}, r"seed\n  Value error, expected an integer with 0 <= seed < 2\*\*32"),
    ({"budget": "1h30"}, r"budget\n  Value error, ambiguous duration '1h30'"),
    ({"samplr": "tpe"}, r"samplr\n  Extra inputs are not permitted"),
])
def test_a_bad_search_block_is_refused(block, message):
    with pytest.raises(ValidationError, match=message):
        SearchSpec.model_validate(block)


def test_repeats_go_with_no_pruner():
    assert SearchSpec(repeats=3, pruner="none").repeats == 3


@pytest.mark.parametrize("text, seconds", [("45m", 2700), ("1h30m", 5400), ("90s", 90), ("2h", 7200), (45, 45),
                                           (1.5, 1.5), ("90", 90), ("0.5h", 1800), ("1h30s", 3630),
                                           ("1h30m15s", 5415), ("1h 30m", 5400), (" 90 ", 90), ("2m30s", 150)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, message", [
    ("soon", r"expected a duration such as 45m, 1h30m or 90s, got 'soon'"),
    ("", r"expected a duration"),
    (True, r"expected a duration such as 45m, 1h30m or 90s, got True"),
    (0, r"expected a positive, finite duration, got 0"),
    (math.inf, r"expected a positive, finite duration"),
    (math.nan, r"expected a positive, finite duration"),
    ("1h30x", r"expected a duration such as 45m, 1h30m or 90s, got '1h30x'"),
    ("30m1h", r"expected a duration such as 45m, 1h30m or 90s, got '30m1h'"),  # units out of order
    # a number after a unit without its own: both readings, then the accepted forms
    ("1h30", r"^ambiguous duration '1h30': 30 has no unit; write 1h30m \(5400 s\) or 1h30s \(3630 s\)\. Accepted: "
             r"45m, 2h, 90s, 1h30m, 1h30m15s, or a plain number of seconds; a number after a unit needs a unit of "
             r"its own$"),
    ("1h 30", r"^ambiguous duration '1h 30': 30 has no unit; write 1h30m \(5400 s\) or 1h30s \(3630 s\)\."),
    ("2m30", r"^ambiguous duration '2m30': 30 has no unit; write 2m30s \(150 s\)\. Accepted:"),
    ("1h30m15", r"^ambiguous duration '1h30m15': 15 has no unit; write 1h30m15s \(5415 s\)\. Accepted:"),
])
def test_bad_durations(text, message):
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


# Dimensions and their values --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [None, True, 3, 0.5, "gap"])
def test_scalars_are_encoded_as_they_are(value):
    assert encode(value) is value and decode(value) is value


@pytest.mark.parametrize("value, text", [([512, 256], "json:[512, 256]"), ([], "json:[]"),
                                         ({"from_layer": "block5_conv1"}, 'json:{"from_layer": "block5_conv1"}')])
def test_lists_and_mappings_are_json_text_for_optuna(value, text):
    assert encode(value) == text and decode(text) == value


def test_a_dimensions_distribution_grid_and_bounds():
    dense, dropout, epochs = DIMS
    assert dense.distribution().choices == ("json:[]", "json:[256]", "json:[512, 256]")
    assert dense.grid_values() == ["json:[]", "json:[256]", "json:[512, 256]"] and dense.bounds() == [[], [256],
                                                                                                      [512, 256]]
    assert dropout.distribution() == optuna.distributions.FloatDistribution(0.0, 0.5, step=0.25)
    assert dropout.grid_values() == [0.0, 0.25, 0.5] and dropout.bounds() == [0.0, 0.5]
    assert epochs.distribution() == optuna.distributions.IntDistribution(1, 5, step=2)
    assert epochs.grid_values() == [1, 3, 5] and epochs.bounds() == [1, 5]
    with pytest.raises(ValueError, match="a float range needs a step for sampler: grid"):
        Dimension("dropout", "float", low=0.0, high=0.5).grid_values()


def test_parse_space_reads_each_form_sorted_by_name(tmp_path):
    dims = space(tmp_path, """
search: {sampler: random}
fixed: {weights: null}
grid:
  learning_rate: {low: 1.0e-5, high: 1.0e-2, log: true}
  head: [gap, flatten]
  fine_tune_epochs: {int: [0, 4], step: 2}
""")
    assert dims == [Dimension("fine_tune_epochs", "int", low=0, high=4, step=2),
                    Dimension("head", "categorical", choices=("gap", "flatten")),
                    Dimension("learning_rate", "float", low=1e-5, high=1e-2, log=True)]


def test_a_sampler_that_enumerates_the_grid_needs_a_step_for_every_float_range(tmp_path):
    text = "search: {{sampler: {sampler}}}\nfixed: {{weights: null}}\ngrid: {{dropout: {{low: 0.1, high: 0.2}}}}\n"
    assert space(tmp_path, text.format(sampler="random"))[0].step is None
    with pytest.raises(ConfigError, match=r"search.yaml: grid.dropout: a float range needs a step for sampler: grid"):
        space(tmp_path, text.format(sampler="grid"))


@pytest.mark.parametrize("grid, message", [
    ("epochs: {int: [1, 4], step: 0}", r"grid.epochs.step: got 0, expected an integer >= 1"),
    ("dropout: {low: 0.1, high: .nan}", r"grid.dropout.high: got nan, expected a finite number"),
    ("dropout: {low: 0.1, high: 0.2, log: yes please}", r"grid.dropout.log: got 'yes please', expected true or false"),
    ("learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true, step: 1.0e-4}",
     r"grid.learning_rate: log: true cannot have a step"),
])
def test_malformed_distributions_are_refused(tmp_path, grid, message):
    with pytest.raises(ConfigError, match=message):
        space(tmp_path, f"search: {{sampler: random}}\nfixed: {{weights: null}}\ngrid:\n  {grid}\n")


def test_every_problem_of_a_space_is_listed_at_once(tmp_path):
    with pytest.raises(ConfigError) as caught:
        space(tmp_path, "search: {sampler: random}\nfixed: {weights: null}\n"
                        "grid: {dropout: {low: 0.0, high: 1.5}, head: [gap, pyramid]}\n")
    lines = str(caught.value).splitlines()
    assert len(lines) == 2 and "grid.dropout: got 1.5" in lines[0] and "grid.head: got 'pyramid'" in lines[1]


@pytest.mark.parametrize("extra, message", [
    ("runs: [{dropout: 0.1}]", r"runs: not used with search: \(the sampler chooses the runs\); remove it"),
    ("sample: 1", r"sample: not used with search:"),
])
def test_a_space_is_one_grid_mapping_without_runs_or_sample(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        space(tmp_path, f"search: {{sampler: random}}\nfixed: {{weights: null}}\ngrid: {{dropout: [0.1]}}\n{extra}\n")
    with pytest.raises(ConfigError, match=r"grid: with search:, give one mapping"):
        space(tmp_path, "search: {sampler: random}\nfixed: {weights: null}\ngrid:\n  - {dropout: [0.1]}\n")
