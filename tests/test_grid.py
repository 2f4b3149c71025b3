"""Grid loading, expansion and validation (no notebook execution)."""

from pathlib import Path

import pytest
from sklearn.model_selection import ParameterGrid

from runner.errors import ConfigError
from runner.grid import DEFAULT_NOTEBOOK, notebook_parameters
from helpers import sweep_main

ASSETS = Path(__file__).parent / "assets"


from helpers import expand, write_grid  # noqa: E402


def test_notebook_parameters_match_defaults():
    params = notebook_parameters(DEFAULT_NOTEBOOK)
    assert params["head"] == "gap"
    assert params["dense_units"] == [256]
    assert params["augmentation"] is None
    assert "output_dir" in params


def test_notebook_parameters_cell_and_spec_agree():
    """The parameters cell has exactly the spec's fields (plus the runner's own), with its defaults."""
    from models.spec import ExperimentSpec
    from runner.grid.schema import RESERVED_PARAMS

    params = notebook_parameters(DEFAULT_NOTEBOOK)
    assert set(params) == set(ExperimentSpec.model_fields) | set(RESERVED_PARAMS)
    defaults = ExperimentSpec().model_dump(mode="json")
    assert {k: params[k] for k in defaults} == defaults


def test_expansion_is_sorted_cartesian_product_like_parameter_grid(tmp_path):
    runs, notes = expand(tmp_path, """
fixed: {weights: null, epochs: 2}
grid: {head: [flatten, gap], dropout: [0.1, 0.2, 0.3]}
""")
    expected = list(ParameterGrid({"head": ["flatten", "gap"], "dropout": [0.1, 0.2, 0.3]}))
    assert [(r.params["dropout"], r.params["head"]) for r in runs] == [(p["dropout"], p["head"]) for p in expected]
    assert [r.index for r in runs] == list(range(6))
    assert all(r.params["epochs"] == 2 and r.params["weights"] is None for r in runs)
    # defaults of the notebook fill the rest; output_dir is the runner's own
    assert runs[0].params["batch_size"] == 32 and "output_dir" not in runs[0].params
    assert notes == []


def test_subgrids_and_explicit_runs_in_order(tmp_path):
    runs, _ = expand(tmp_path, """
fixed: {weights: null}
grid:
  - {base: [simple_cnn_small], head: [flatten, gap]}
  - {base: [vgg16], dense_units: [[512, 256]]}
runs:
  - {base: mobilenet_v2, base_kwargs: {alpha: 0.35}, image_size: 96}
""")
    assert [r.origin for r in runs] == ["grid[0]", "grid[0]", "grid[1]", "runs[0]"]
    assert runs[2].params["dense_units"] == [512, 256]
    assert runs[3].params["base_kwargs"] == {"alpha": 0.35} and runs[3].params["image_size"] == 96


def test_duplicates_are_reported_and_run_once(tmp_path):
    runs, notes = expand(tmp_path, """
grid: {head: [gap, flatten]}
runs: [{head: gap}]
""")
    assert len(runs) == 2
    assert len(notes) == 1 and "runs[0] duplicates grid" in notes[0]


def test_sample_is_a_seeded_subset(tmp_path):
    text = "grid: {dropout: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]}\nsample: 3\nseed: 7\n"
    first, _ = expand(tmp_path, text)
    second, _ = expand(tmp_path, text)
    assert len(first) == 3
    assert [r.config_hash for r in first] == [r.config_hash for r in second]
    dropouts = [r.params["dropout"] for r in first]
    assert dropouts == sorted(dropouts)  # kept in expansion order
    other, _ = expand(tmp_path, text.replace("seed: 7", "seed: 8"))
    full, _ = expand(tmp_path, text.replace("sample: 3\n", ""))
    assert len(full) == 6 and {r.config_hash for r in first} <= {r.config_hash for r in full}
    assert {r.config_hash for r in other} <= {r.config_hash for r in full}


def test_relative_paths_become_absolute_and_overrides_apply(tmp_path):
    runs, _ = expand(tmp_path, "data_dir: photos\nfixed: {weights: w/vgg.weights.h5}\n",
                     overrides={"weights_dir": "offline"})
    params = runs[0].params
    assert params["data_dir"] == str(tmp_path / "photos")
    assert params["weights"] == str(tmp_path / "w" / "vgg.weights.h5")
    assert params["weights_dir"] == str(tmp_path / "offline")
    runs, _ = expand(tmp_path, "data_dir: builtin:digits\nfixed: {weights: imagenet}\n")
    assert runs[0].params["data_dir"] == "builtin:digits" and runs[0].params["weights"] == "imagenet"


@pytest.mark.parametrize(
    "text, match",
    [
        ("grid: [unclosed", r"grid\.yaml: not valid YAML"),
        ("- a\n- b\n", r"grid\.yaml: expected a mapping of keys"),
        ("fixd: {epochs: 1}\n", r"grid\.yaml: fixd: got .*unknown key, expected one of notebook, data_dir, fixed"),
        ("search: {budgt: 10m}\n", r"grid\.yaml: search\.budgt: got '10m', unknown key, expected one of sampler, "
                                   r"n_runs, budget, max_run_share, pruner, min_epochs, seed, repeats$"),
        ("ensembles: [{topp: 3}]\n", r"grid\.yaml: ensembles\.0\.topp: got 3, unknown key, expected one of top, runs$"),
        ("fixed: {epoch: 3}\n", r"grid\.yaml: fixed\.epoch: unknown notebook parameter \(did you mean epochs"),
        ("grid: {hed: [gap]}\n", r"grid\.yaml: grid\.hed: unknown notebook parameter"),
        ("fixed: {head: pyramid}\n", r"grid\.yaml: fixed\.head: got 'pyramid', expected 'flatten' or 'gap'"),
        ("grid: {epochs: [ten]}\n", r"grid\.yaml: grid\.epochs: got 'ten', expected a valid integer"),
        ("grid: {epochs: [0]}\n", r"grid\.yaml: grid: epochs=0 skips the head phase and needs fine-tuning"),
        ("runs: [{learning_rate: -0.1}]\n", r"grid\.yaml: runs\[0\]\.learning_rate: got -0\.1, expected greater than 0"),
        ("fixed: {val_fraction: 0.6, test_fraction: 0.5}\n", r"val_fraction \+ test_fraction must be < 1"),
        ("fixed: {optimizer: rmsprop}\n", r"fixed\.optimizer: got 'rmsprop', expected 'adam', 'sgd' or 'adamw'"),
        ("fixed: {augmentation: {flip: diagonal}}\n", r"fixed\.augmentation\.flip: got 'diagonal'"),
        ("fixed: {augmentation: {blur: 0.1}}\n", r"fixed\.augmentation\.blur: got 0\.1, unknown key|augmentation\.blur"),
        ("grid: {head: []}\n", r"grid: .*head: empty list of values"),
        ("grid: {head: [gap, flatten]}\nsample: 3\n", r"sample: got 3, expected at most 2"),
        ("fixed: {output_dir: /tmp}\n", r"fixed\.output_dir: output_dir is set by the runner"),
        ("metric: recall\n", r"metric: got 'recall', expected one of accuracy, weighted_precision"),
        ("notebook: missing.ipynb\n", r"grid\.yaml: notebook: .*/missing\.ipynb does not exist"),
        (f"notebook: {ASSETS / 'no_parameters.ipynb'}\n", r"has no cell tagged 'parameters'"),
    ],
)
def test_bad_grids_are_refused_with_file_key_and_allowed_values(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        expand(tmp_path, text)


def test_cli_config_error_exits_2_without_traceback_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_grid(tmp_path, "fixed: {head: pyramid}\n")
    assert sweep_main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "fixed.head: got 'pyramid'" in err and "Traceback" not in err
    assert not (tmp_path / "experiments").exists() and not (tmp_path / "logs").exists()


def test_cli_dry_run_prints_the_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_grid(tmp_path, "fixed: {base: simple_cnn_small, weights: null}\n"
                                "grid: {head: [flatten, gap], dropout: [0.1, 0.2]}\n")
    assert sweep_main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 runs (dry run" in out and "flatten" in out and "dropout" in out
    assert not (tmp_path / "experiments").exists()


def test_sha256_code_ignores_docstrings_comments_and_layout_not_code():
    from models.hashing import sha256_code

    base = sha256_code('"""Module."""\nimport os\n\n\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    assert base == sha256_code('"""Other words."""\nimport os  # why\n\ndef f(x):\n    """More."""\n\n    return x + 1\n')
    assert base == sha256_code("import os\ndef f(x):\n    return x + 1\n")
    assert base != sha256_code("import os\ndef f(x):\n    return x + 2\n")
    assert base != sha256_code("import os\ndef f(y):\n    return y + 1\n")
    assert sha256_code('def f():\n    """Only a docstring."""\n') == sha256_code("def f():\n    pass\n")


SHIPPED_GRIDS = sorted((PROJECT_ROOT_FOR_GRIDS := Path(__file__).resolve().parents[1]).glob("grids/**/*.yaml"))


@pytest.mark.parametrize("grid", SHIPPED_GRIDS, ids=lambda p: str(p.relative_to(PROJECT_ROOT_FOR_GRIDS)))
def test_shipped_grids_pass_dry_run(grid, capsys):
    """grids/*.yaml and the source projects' grids in grids/examples/ expand and pass the pre-flight check."""
    from helpers import SHARED

    if not (SHARED / "data" / "trashnet").is_dir() or not (SHARED / "weights").is_dir():
        pytest.skip("needs ../shared (TrashNet photos and the offline ImageNet weights)")
    code = sweep_main([str(grid), "--dry-run", "--weights-dir", str(SHARED / "weights")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(dry run: nothing executed)" in out
