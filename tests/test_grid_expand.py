"""`repeats:` in a grid file (`runner.grid.expand`): each configuration runs with seeds seed, seed + 1, ...,
one run and one config_hash each, all with the configuration's group_hash."""

import pytest

from helpers import expand, make_image_folder, write_grid
from runner.errors import ConfigError
from runner.grid import load_grid


def test_repeats_run_each_configuration_with_consecutive_seeds(tmp_path):
    runs, notes = expand(tmp_path, """
repeats: 3
fixed: {seed: 10, weights: null, base: simple_cnn_small}
grid: {dropout: [0.1, 0.2]}
runs: [{dropout: 0.3, name: exp}]
""")
    assert notes == []
    assert [(r.params["dropout"], r.params["seed"]) for r in runs] == [
        (0.1, 10), (0.1, 11), (0.1, 12), (0.2, 10), (0.2, 11), (0.2, 12), (0.3, 10), (0.3, 11), (0.3, 12)]
    assert [r.index for r in runs] == list(range(9))
    assert len({r.config_hash for r in runs}) == 9
    assert [len({r.group_hash for r in runs[i:i + 3]}) for i in (0, 3, 6)] == [1, 1, 1]
    assert len({r.group_hash for r in runs}) == 3
    # a name stays on the first repeat (references to it keep working); the others get the seed
    assert [r.params["name"] for r in runs[6:]] == ["exp", "exp-seed11", "exp-seed12"]
    assert [r.origin for r in runs[6:]] == ["runs[0]", "runs[0] repeat 2", "runs[0] repeat 3"]
    # the first repeat is the run without repeats: same config_hash, so earlier runs are reused
    single, _ = expand(tmp_path, "fixed: {seed: 10, weights: null, base: simple_cnn_small}\n"
                                 "grid: {dropout: [0.1, 0.2]}\nruns: [{dropout: 0.3, name: exp}]\n")
    assert [r.config_hash for r in single] == [runs[0].config_hash, runs[3].config_hash, runs[6].config_hash]
    assert [r.group_hash for r in single] == [runs[0].group_hash, runs[3].group_hash, runs[6].group_hash]


def test_repeats_with_a_split_seed_share_their_split(tmp_path):
    """The manifest each run is expected to train on (`RunSpec.manifest_hash`, computed from the folder
    without TensorFlow): one per seed, unless split_seed fixes it."""
    make_image_folder(tmp_path / "images", 8)
    grid = "repeats: 3\ndata_dir: images\nfixed: {weights: null, base: simple_cnn_small, val_fraction: 0.25, " \
           "test_fraction: 0.25%s}\n"
    varying, _ = expand(tmp_path, grid % "")
    fixed, _ = expand(tmp_path, grid % ", split_seed: 7")
    assert [r.params["seed"] for r in fixed] == [42, 43, 44]
    assert len({r.manifest_hash for r in varying}) == 3 and None not in {r.manifest_hash for r in varying}
    assert len({r.manifest_hash for r in fixed}) == 1 and fixed[0].manifest_hash not in {
        r.manifest_hash for r in varying}
    assert len({r.group_hash for r in fixed}) == 1


def test_sample_picks_configurations_then_repeats_them(tmp_path):
    runs, _ = expand(tmp_path, "repeats: 2\nsample: 2\nseed: 1\nfixed: {weights: null}\n"
                               "grid: {dropout: [0.1, 0.2, 0.3, 0.4]}\n")
    assert len(runs) == 4 and [r.params["seed"] for r in runs] == [42, 43, 42, 43]
    assert runs[0].group_hash == runs[1].group_hash != runs[2].group_hash == runs[3].group_hash


def test_seeds_listed_in_the_grid_overlap_the_repeats_once(tmp_path):
    runs, notes = expand(tmp_path, "repeats: 2\nfixed: {weights: null}\ngrid: {seed: [1, 2]}\n")
    assert [r.params["seed"] for r in runs] == [1, 2, 3]
    assert notes == ["grid (seed 2) duplicates grid repeat 2 after repeats: run once"]
    assert len({r.group_hash for r in runs}) == 1  # one configuration: the seed is not part of it


@pytest.mark.parametrize("text, message", [
    ("repeats: 0\n", r"repeats: got 0, expected greater than or equal to 1"),
    ("repeats: true\n", r"repeats: got True, expected a valid integer"),
    ("repeats: 2\nsearch: {sampler: random}\ngrid: {dropout: [0.1]}\n", r"give it as search.repeats"),
    ("search: {sampler: random, repeats: 3, pruner: median}\ngrid: {dropout: [0.1]}\n",
     r"repeats: 3 with pruner: median"),
])
def test_bad_repeats_are_refused(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_grid(write_grid(tmp_path, text))
