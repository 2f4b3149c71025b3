"""Faults in reading a grid found by trying to break the sweep (issue 31): seeds outside what NumPy takes,
a repeat count that took minutes to refuse, a budget read as the wrong duration, and a weights folder
whose unrelated files changed every run's `config_hash`.

One test per situation, set up as a user would write the grid: `python runner/sweep.py grid.yaml --dry-run`
(in this process, `helpers.sweep_main`) exits 2 with one line naming the grid file, the key, the value and
what is allowed, and no traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import expand, sweep_main, write_grid
from runner.errors import ConfigError
from runner.grid import expand as expand_module
from runner.grid.expand import count_runs, expand_runs, too_many_runs
from runner.grid.strict_yaml import load_grid

SMALL = "data_dir: builtin:digits\nfixed: {base: simple_cnn_small, weights: null, image_size: 32, epochs: 1%s}\n"
"""A one-run grid on the builtin digits; `%s` adds keys to `fixed` (`, seed: 3`)."""

NUMPY_SEEDS = ("the range of numpy.random.seed (which keras.utils.set_random_seed calls) and of scikit-learn's "
               "random_state")


def dry_run(tmp_path: Path, text: str, monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`python runner/sweep.py <tmp_path>/grid.yaml --dry-run *args`: (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, text)
    code = sweep_main([str(grid), "--dry-run", *args])
    out, err = capsys.readouterr()
    return code, out, err


# 1. seeds -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [("seed", -1), ("split_seed", -1), ("seed", 2**32), ("split_seed", 2**32),
                                        ("seed", 2**63)])
def test_a_seed_outside_numpys_range_is_refused_naming_it(tmp_path, monkeypatch, capsys, key, value):
    code, out, err = dry_run(tmp_path, SMALL % f", {key}: {value}", monkeypatch, capsys)
    assert code == 2 and out == ""
    assert err == (f"error: {tmp_path / 'grid.yaml'}: fixed.{key}: got {value}, expected an integer with "
                   f"0 <= {key} < 2**32 = 4294967296, {NUMPY_SEEDS}\n")


def test_the_ends_of_the_seed_range_are_accepted(tmp_path):
    runs, _ = expand(tmp_path, SMALL % ", seed: 0, split_seed: 4294967295")
    assert (runs[0].params["seed"], runs[0].params["split_seed"]) == (0, 2**32 - 1)


def test_repeats_whose_last_seed_passes_the_range_are_refused_naming_repeats(tmp_path, monkeypatch, capsys):
    code, out, err = dry_run(tmp_path, "repeats: 3\n" + SMALL % ", seed: 4294967294", monkeypatch, capsys)
    assert code == 2 and out == ""
    assert err == (f"error: {tmp_path / 'grid.yaml'}: repeats: 3 runs seeds 4294967294 to 4294967296 (seed, "
                   f"seed + 1, ...), past the largest seed 4294967295 (0 <= seed < 2**32); give repeats at most 2 "
                   f"or seed at most 4294967293\n")
    runs, _ = expand(tmp_path, "repeats: 2\n" + SMALL % ", seed: 4294967294")  # the last seed is the largest
    assert [r.params["seed"] for r in runs] == [2**32 - 2, 2**32 - 1]


SEARCH = SMALL + "grid: {dropout: {low: 0.0, high: 0.5}}\nsearch: {sampler: random, n_runs: 2%s}\n"
"""A search over `dropout`; the second `%s` adds keys to the `search:` block."""


def test_search_repeats_whose_last_seed_passes_the_range_are_refused(tmp_path, monkeypatch, capsys):
    code, out, err = dry_run(tmp_path, SEARCH % (", seed: 4294967295", ", repeats: 2"), monkeypatch, capsys)
    assert code == 2 and out == ""
    assert err == (f"error: {tmp_path / 'grid.yaml'}: search.repeats: 2 runs seeds 4294967295 to 4294967296 "
                   f"(seed, seed + 1, ...), past the largest seed 4294967295 (0 <= seed < 2**32); give "
                   f"search.repeats at most 1 or seed at most 4294967294\n")


@pytest.mark.parametrize("value", [-1, 2**32])
def test_a_search_seed_outside_numpys_range_is_refused(tmp_path, monkeypatch, capsys, value):
    """Optuna's samplers seed `numpy.random.RandomState` with it: out of range, the first proposal raised."""
    code, out, err = dry_run(tmp_path, SEARCH % ("", f", seed: {value}"), monkeypatch, capsys)
    assert code == 2 and out == ""
    assert err == (f"error: {tmp_path / 'grid.yaml'}: search.seed: got {value}, expected an integer with 0 <= seed "
                   f"< 2**32 = 4294967296, the range of numpy.random.RandomState, which seeds Optuna's samplers\n")


# 2. a repeat count beyond --max-runs ---------------------------------------------------------------------------


def test_repeats_beyond_max_runs_are_refused_before_expansion(tmp_path, monkeypatch):
    grid = write_grid(tmp_path, "repeats: 10000\n" + SMALL % "")
    spec = load_grid(grid)

    def no_expansion(*args, **kwargs):
        raise AssertionError("the grid was expanded before its size was checked")

    monkeypatch.setattr(expand_module, "RunBuilder", no_expansion)
    with pytest.raises(ConfigError) as info:
        expand_runs(spec, grid, max_runs=1000)
    assert str(info.value) == (f"{grid}: the grid expands to 10000 runs (1 configuration x repeats: 10000), more "
                               f"than --max-runs 1000; pass --yes to run them all, or lower repeats: / narrow the "
                               f"grid / use sample:")


def test_a_grid_within_max_runs_expands(tmp_path):
    runs, _ = expand(tmp_path, "repeats: 3\n" + SMALL % "", max_runs=3)
    assert [r.params["seed"] for r in runs] == [42, 43, 44]


def test_count_runs_counts_points_runs_sample_and_repeats_without_building_them(tmp_path):
    text = ("grid: [{dropout: [0.1, 0.2], head: [flatten, gap, gap]}, {dropout: [0.3]}]\n"
            "runs: [{dropout: 0.4}, {dropout: 0.5}]\n")
    assert count_runs(load_grid(write_grid(tmp_path, text))) == (9, 9)  # 2 x 3 + 1 + 2, a duplicate included
    assert count_runs(load_grid(write_grid(tmp_path, text + "repeats: 3\n"))) == (27, 9)
    assert count_runs(load_grid(write_grid(tmp_path, text + "repeats: 3\nsample: 4\n"))) == (12, 4)
    assert count_runs(load_grid(write_grid(tmp_path, SMALL % ""))) == (1, 1)  # fixed only: one run
    # a grid of 10**12 points is counted, not built
    huge = "grid: {" + ", ".join(f"p{i}: [{', '.join(map(str, range(10)))}]" for i in range(12)) + "}\n"
    assert count_runs(load_grid(write_grid(tmp_path, huge))) == (10**12, 10**12)


def test_without_repeats_the_message_is_the_sweeps_own():
    """The words `python runner/sweep.py` has refused a grid of more runs than --max-runs with
    (`tests/test_core_loop.py::test_max_runs_needs_yes`)."""
    assert too_many_runs("g.yaml", 3, 2) == ("g.yaml: the grid expands to 3 runs, more than --max-runs 2; pass "
                                             "--yes to run them all, or narrow the grid / use sample:")


def test_the_sweep_refuses_repeats_beyond_max_runs_before_expanding(tmp_path, monkeypatch, capsys):
    code, out, err = dry_run(tmp_path, "repeats: 3\n" + SMALL % "", monkeypatch, capsys, "--max-runs", "2")
    assert code == 2 and out == ""
    assert err == (f"error: {tmp_path / 'grid.yaml'}: the grid expands to 3 runs (1 configuration x repeats: 3), "
                   f"more than --max-runs 2; pass --yes to run them all, or lower repeats: / narrow the grid / "
                   f"use sample:\n")


# 3. a budget of 1h30 -------------------------------------------------------------------------------------------


def test_a_budget_with_a_number_without_unit_is_refused_as_ambiguous(tmp_path, monkeypatch, capsys):
    """`1h30` was read as 1 h 30 s (a unitless number was seconds); a clock reads 1 h 30 min."""
    code, out, err = dry_run(tmp_path, SEARCH % ("", ", budget: 1h30"), monkeypatch, capsys)
    assert code == 2 and out == ""
    assert err == (f"error: {tmp_path / 'grid.yaml'}: search.budget: got '1h30', ambiguous duration '1h30': 30 has "
                   f"no unit; write 1h30m (5400 s) or 1h30s (3630 s). Accepted: 45m, 2h, 90s, 1h30m, 1h30m15s, or "
                   f"a plain number of seconds; a number after a unit needs a unit of its own\n")
    code, out, _ = dry_run(tmp_path, SEARCH % ("", ", budget: 1h30m"), monkeypatch, capsys)
    assert code == 0 and "dry run: nothing executed" in out


# 4. the weights folder in config_hash --------------------------------------------------------------------------


def test_a_runs_hash_covers_its_own_offline_weights_file_not_the_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("NBSWEEP_WEIGHTS_DIR", raising=False)
    offline = tmp_path / "weights"
    offline.mkdir()
    (offline / "vgg16_imagenet_notop.weights.h5").write_bytes(b"vgg16 weights")
    (offline / "mobilenet_1.0_imagenet_notop.weights.h5").write_bytes(b"mobilenet weights")
    text = ("data_dir: builtin:digits\nfixed: {weights: imagenet, weights_dir: weights, image_size: 32}\n"
            "grid: {base: [vgg16, mobilenet]}\n")

    def hashes() -> dict[str, str]:
        runs, _ = expand(tmp_path, text)
        return {run.params["base"]: run.config_hash for run in runs}

    before = hashes()
    (offline / "resnet50_imagenet_notop.weights.h5").write_bytes(b"an unrelated file")
    (offline / "notes.txt").write_text("neither is this")
    assert hashes() == before
    (offline / "vgg16_imagenet_notop.weights.h5").write_bytes(b"vgg16 weights, retrained")
    after = hashes()
    assert after["vgg16"] != before["vgg16"] and after["mobilenet"] == before["mobilenet"]
