"""Strict grid files: repeated keys and wrongly typed values are config errors.

PyYAML keeps the last of repeated keys without a word, and pydantic's lax mode
reads `true` as `1` and `"32"` as `32`; `runner.grid.load_grid` refuses both,
and `GridSpec`, `ExperimentSpec` and `Augmentation` validate in strict mode.
"""

from pathlib import Path

import pytest
from pydantic import ValidationError

from models.spec import Augmentation, ExperimentSpec
from runner.errors import ConfigError
from runner.grid import DEFAULT_NOTEBOOK, load_grid, notebook_parameters
from helpers import sweep_main


from helpers import expand, write_grid  # noqa: E402


def duplicate_message(path: Path, key: str, first: str, again: str) -> str:
    return (f"{path}: {key}: duplicate key, at {first} and again at {again} "
            f"(YAML would silently keep only the last); keep one")


# Repeated keys ---------------------------------------------------------------------------------


def test_duplicate_top_level_key(tmp_path):
    path = write_grid(tmp_path, "metric: accuracy\ntop_n: 3\nmetric: macro_f1\n")
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    assert str(info.value) == duplicate_message(path, "metric", "line 1", "line 3")


def test_duplicate_key_inside_fixed(tmp_path):
    path = write_grid(tmp_path, "fixed:\n  epochs: 2\n  head: gap\n  epochs: 5\n")
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    assert str(info.value) == duplicate_message(path, "fixed.epochs", "line 2", "line 4")


def test_duplicate_key_inside_grid(tmp_path):
    path = write_grid(tmp_path, "fixed: {weights: null}\ngrid:\n  dropout: [0.1, 0.2]\n"
                                "  head: [gap]\n  dropout: [0.5]\n")
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    assert str(info.value) == duplicate_message(path, "grid.dropout", "line 3", "line 5")


def test_second_fixed_block(tmp_path):
    path = write_grid(tmp_path, "fixed:\n  epochs: 2\ngrid: {head: [gap]}\nfixed:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    assert str(info.value) == duplicate_message(path, "fixed", "line 1", "line 4")


def test_duplicate_in_one_flow_mapping_gives_columns(tmp_path):
    path = write_grid(tmp_path, "fixed: {epochs: 1, epochs: 2}\n")
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    assert str(info.value) == duplicate_message(path, "fixed.epochs", "line 1, column 9", "line 1, column 20")


def test_every_duplicate_is_listed_with_its_path(tmp_path):
    path = write_grid(tmp_path, "grid:\n  - {head: [gap], head: [flatten]}\nruns:\n  - head: gap\n"
                                "    epochs: 1\n    head: flatten\n")
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    assert str(info.value).splitlines() == [
        duplicate_message(path, "grid[0].head", "line 2, column 6", "line 2, column 19"),
        duplicate_message(path, "runs[0].head", "line 4", "line 6"),
    ]


def test_merge_keys_override_without_being_duplicates(tmp_path):
    runs, _ = expand(tmp_path, "runs:\n  - &first {weights: null, epochs: 2, head: gap}\n"
                               "  - {<<: *first, head: flatten}\n")
    assert [(r.params["head"], r.params["epochs"]) for r in runs] == [("gap", 2), ("flatten", 2)]


def test_cli_dry_run_of_a_duplicate_key_grid_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_grid(tmp_path, "grid:\n  dropout: [0.1, 0.2]\n  dropout: [0.5]\n")
    assert sweep_main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert duplicate_message(path, "grid.dropout", "line 2", "line 3") in err
    assert "Traceback" not in err
    assert not (tmp_path / "experiments").exists() and not (tmp_path / "logs").exists()


# Wrong types -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("sample: true\n", "sample: got True, expected a valid integer"),
        ("top_n: '5'\n", "top_n: got '5', expected a valid integer (a quoted number is a string; "
                         "write 5 without quotes)"),
        ("fixed: {epochs: true}\n", "fixed.epochs: got True, expected a valid integer"),
        ("fixed: {image_size: \"32\"}\n", "fixed.image_size: got '32', expected a valid integer "
                                          "(a quoted number is a string; write 32 without quotes)"),
        ("fixed: {activation_cache: \"yes\"}\n", "fixed.activation_cache: got 'yes', expected a valid "
                                                 "boolean (a quoted word is a string; write true or false "
                                                 "without quotes)"),
        ("fixed: {activation_cache: 1}\n", "fixed.activation_cache: got 1, expected a valid boolean"),
        ("fixed: {learning_rate: 1e-3}\n", "fixed.learning_rate: got '1e-3', expected a valid number "
                                           "(YAML reads 1e-3 as a string; write 1.0e-3)"),
        ("grid: {epochs: [1e3]}\n", "grid.epochs: got '1e3', expected a valid integer "
                                    "(YAML reads 1e3 as a string; write 1000)"),
        ("fixed: {dropout: true}\n", "fixed.dropout: got True, expected a valid number"),
        ("fixed: {epochs: 2.0}\n", "fixed.epochs: got 2.0, expected a valid integer"),
        ("runs: [{dense_units: ['64']}]\n", "runs[0].dense_units.0: got '64', expected a valid integer"),
        ("fixed: {augmentation: {rotation: '0.1'}}\n", "fixed.augmentation.rotation: got '0.1', "
                                                       "expected a valid number"),
        ("fixed: {max_images_per_class: false}\n", "fixed.max_images_per_class: got False, "
                                                   "expected a valid integer"),
    ],
)
def test_wrong_types_are_refused(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        expand(tmp_path, text)
    assert f"{tmp_path / 'grid.yaml'}: {message}" in str(info.value)


def test_good_types_still_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs, _ = expand(tmp_path, f"notebook: {DEFAULT_NOTEBOOK}\n" + """
experiments_dir: out/experiments
logs_dir: out/logs
fixed: {dropout: 0, learning_rate: 1, l2: 0, max_images_per_class: null, weights: null,
        early_stopping_patience: null, augmentation: {flip: horizontal, rotation: 0}}
grid: {dense_units: [[8], [16, 8]], fine_tune_learning_rate: [1.0e-5]}
sample: 2
""", overrides={"data_dir": "photos", "weights_dir": "offline"})
    assert [r.params["dense_units"] for r in runs] == [[8], [16, 8]]
    params = runs[0].params
    assert params["dropout"] == 0.0 and isinstance(params["dropout"], float)
    assert params["learning_rate"] == 1.0 and params["max_images_per_class"] is None
    assert params["fine_tune_learning_rate"] == 1e-5
    assert params["augmentation"]["flip"] == "horizontal"
    assert params["data_dir"] == str(tmp_path / "photos") and params["weights_dir"] == str(tmp_path / "offline")
    assert load_grid(tmp_path / "grid.yaml").logs_dir == (tmp_path / "out" / "logs").resolve()


def test_spec_round_trips_and_takes_the_notebook_defaults():
    assert ExperimentSpec.model_validate(ExperimentSpec().model_dump(mode="json")) == ExperimentSpec()
    full = ExperimentSpec(augmentation={"flip": "vertical", "zoom": 0.1}, warm_start_checkpoint=3,
                          base_kwargs={"alpha": 0.35}, lr_step_milestones=[2, 4], max_images_per_class=5)
    assert ExperimentSpec.model_validate(full.model_dump(mode="json")) == full
    assert ExperimentSpec.model_validate(full.model_dump()) == full
    # What the notebook's parameters cell holds (`augmentation = None`, `base_kwargs = {}`, ...),
    # passed as the notebook passes it.
    cell = notebook_parameters(DEFAULT_NOTEBOOK)
    assert ExperimentSpec(**{name: cell[name] for name in ExperimentSpec.model_fields}) == ExperimentSpec()


@pytest.mark.parametrize("model, kwargs", [
    (ExperimentSpec, {"epochs": True}),
    (ExperimentSpec, {"image_size": "32"}),
    (ExperimentSpec, {"activation_cache": "yes"}),
    (ExperimentSpec, {"dense_units": (8, 4)}),
    (Augmentation, {"rotation": "0.1"}),
    (Augmentation, {"zoom": False}),
])
def test_models_are_strict_in_python_too(model, kwargs):
    with pytest.raises(ValidationError):
        model(**kwargs)
