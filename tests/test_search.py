"""runner.search: the search: block, distributions validated like every value, and a real search with pruning."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import timed_search_source
from runner import PROJECT_ROOT
from runner.errors import ConfigError
from runner.grid import RunBuilder, load_grid
from runner.records.query import parse_metric, read_all
from runner.records import COMPLETED, INTERRUPTED, PRUNED
from runner.search import parse_duration, parse_space


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def space(tmp_path: Path, text: str):
    path = write(tmp_path, text)
    spec = load_grid(path)
    return parse_space(spec, path, RunBuilder(spec, path, base_dir=tmp_path))


def test_good_space_is_sorted_and_typed(tmp_path):
    dims = space(tmp_path, """
search: {sampler: tpe, n_runs: 4, pruner: hyperband, min_epochs: 2, budget: 45m}
fixed: {weights: imagenet, base: mobilenet, fine_tune_epochs: 2}
grid:
  learning_rate: {low: 1.0e-5, high: 1.0e-2, log: true}
  dropout: {low: 0.0, high: 0.6}
  dense_units: [[], [256], [512, 256]]
  fine_tune_layers: {int: [0, 24], step: 6}
""")
    assert [(d.name, d.kind) for d in dims] == [("dense_units", "categorical"), ("dropout", "float"),
                                               ("fine_tune_layers", "int"), ("learning_rate", "float")]
    assert dims[2].grid_values() == [0, 6, 12, 18, 24]
    assert dims[0].distribution().choices == ('json:[]', 'json:[256]', 'json:[512, 256]')


@pytest.mark.parametrize("grid, message", [
    ("dropout: {low: 0.0, high: 1.5}", r"grid.dropout: got 1.5, expected less than 1"),
    ("dropout: {low: 0.5, high: 0.1}", r"grid.dropout: got low 0.5 > high 0.1"),
    ("learning_rate: {low: 0.0, high: 0.1, log: true}", r"grid.learning_rate.low: got 0.0, expected > 0 for log"),
    ("learning_rate: {low: 1e-5, high: 0.1}", r"grid.learning_rate.low: got '1e-5', expected a number"),
    ("dropout: {lo: 0.1, high: 0.2}", r"grid.dropout: got .*unknown or missing keys: lo"),
    ("epochs: {int: [1, 2.5]}", r"grid.epochs: got .*integer bounds"),
    ("head: [gap, pyramid]", r"grid.head: got 'pyramid', expected 'flatten' or 'gap'"),
    ("learnig_rate: [0.1]", r"unknown notebook parameter \(did you mean learning_rate"),
])
def test_bad_distributions_are_refused_with_the_grid_style(tmp_path, grid, message):
    with pytest.raises(ConfigError, match=message):
        space(tmp_path, f"search: {{sampler: random}}\nfixed: {{weights: null}}\ngrid:\n  {grid}\n")


def test_search_block_itself_is_validated(tmp_path):
    with pytest.raises(ConfigError, match=r"search.sampler: got 'bayes', expected 'grid', 'random' or 'tpe'"):
        load_grid(write(tmp_path, "search: {sampler: bayes}\n"))
    with pytest.raises(ConfigError, match=r"search.budget: .*expected a duration"):
        load_grid(write(tmp_path, "search: {budget: soon}\n"))
    with pytest.raises(ConfigError, match=r"needs a search: block"):
        load_grid(write(tmp_path, "grid: {dropout: {low: 0.1, high: 0.2}}\n"))
    with pytest.raises(ConfigError, match=r"float range needs a step for sampler: grid"):
        space(tmp_path, "search: {sampler: grid}\nfixed: {weights: null}\ngrid: {dropout: {low: 0.1, high: 0.2}}\n")
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90 and parse_duration(45) == 45


SEARCH_GRID = """
notebook: {notebook}
data_dir: builtin:digits
search: {{sampler: random, n_runs: 3, pruner: median, min_epochs: 1, seed: 1}}
fixed:
  weights: null
  base: simple_cnn_small
  image_size: 32
  epochs: 3
  batch_size: 32
  dense_units: [16]
  max_images_per_class: 25
  keep_checkpoints: 0
  early_stopping_patience: null
  activation_cache: false
grid:
  learning_rate: [0.01, 1.0e-9]
  dropout: {{low: 0.0, high: 0.5}}
experiments_dir: experiments
logs_dir: logs
leaderboard: leaderboard.html
"""


def run_search(work: Path, *extra: str, wait: bool = True):
    grid = work / "search.yaml"
    grid.write_text(SEARCH_GRID.format(notebook=PROJECT_ROOT / "notebooks" / "base_experiment.ipynb"),
                    encoding="utf-8")
    command = [sys.executable, str(PROJECT_ROOT / "runner" / "sweep.py"), str(grid), *extra]
    if not wait:
        return subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=900)


def trials(work: Path):
    return load_study(work / "logs", "search").get_trials(deepcopy=False)


def load_study(logs: Path, stem: str):
    """The study of grid file `<stem>.yaml` in `logs` (its journal is `<stem>-<8 hex>.optuna.journal`)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    (journal,) = logs.glob(f"{stem}-*.optuna.journal")
    return optuna.load_study(study_name=journal.name.removesuffix(".optuna.journal"),
                             storage=JournalStorage(JournalFileBackend(str(journal))))


@pytest.mark.slow
def test_a_real_search_prunes_and_resumes_without_duplicates(tmp_path):
    """3 runs of the real notebook, random sampler, median pruner: a run whose learning rate is 1e-9
    stays at chance and is pruned once two runs have set the median; the same command again adds nothing.
    (Seed 1 draws learning rates 0.01, 0.01, 1e-9: the third run, the first the pruner may stop, is at chance.)"""
    proc = run_search(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = read_all(tmp_path / "logs")
    statuses = sorted(r.status for r in found.records)
    assert COMPLETED in statuses and PRUNED in statuses, statuses
    assert len(found.records) == 3
    pruned = [r for r in found.records if r.status == PRUNED]
    for rec in pruned:
        assert rec.epochs_run < 3 and rec.history["head"]["val_loss"]  # stopped early, partial history kept
        assert len(rec.history["head"]["val_loss"]) == rec.epochs_run
        assert (tmp_path / "logs" / rec.paths["notebook"]).is_file() and rec.paths["html"]
        assert rec.metrics is not None and rec.val_metrics is not None  # evaluated on its best weights so far
    states = sorted(t.state.name for t in trials(tmp_path))
    assert states.count("COMPLETE") + states.count("PRUNED") == 3
    page = (tmp_path / "leaderboard.html").read_text(encoding="utf-8")
    assert "Pruned" in page or "pruned" in page

    again = run_search(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(read_all(tmp_path / "logs").records) == 3  # the study was already finished: no new run
    assert len(trials(tmp_path)) == 3


@pytest.mark.slow
def test_an_interrupted_search_is_completed_by_the_same_command(tmp_path):
    """Ctrl-C during the second run: it is recorded interrupted, its trial failed and its configuration
    enqueued; the same command again runs it and finishes the study with 3 done trials."""
    grid = tmp_path / "resume.yaml"
    grid.write_text(f"notebook: {Path(__file__).parent / 'assets' / 'faults.ipynb'}\n"
                    "search: {sampler: random, n_runs: 3, seed: 2}\n"
                    "fixed: {action: sleep, seconds: 3}\n"
                    "grid: {score: {low: 0.0, high: 1.0}}\n", encoding="utf-8")
    command = [sys.executable, str(PROJECT_ROOT / "runner" / "sweep.py"), str(grid)]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((tmp_path / "experiments").glob("2*"))) < 2:
        time.sleep(0.2)
    time.sleep(2)  # the second run's notebook is sleeping
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    (interrupted,) = [r for r in read_all(tmp_path / "logs").records if r.status == INTERRUPTED]

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    study = load_study(tmp_path / "logs", "resume")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3
    completed = [r for r in read_all(tmp_path / "logs").records if r.status == COMPLETED]
    assert len(completed) == 3
    assert interrupted.params["score"] in [r.params["score"] for r in completed]  # run again, to the end


@pytest.mark.slow
def test_parallel_workers_sample_distinct_points(tmp_path):
    """--workers 2 with TPE (constant_liar): 4 runs, 4 different points, the study counts 4 finished trials."""
    grid = tmp_path / "par.yaml"
    grid.write_text(f"notebook: {Path(__file__).parent / 'assets' / 'faults.ipynb'}\n"
                    "search: {sampler: tpe, n_runs: 4, seed: 1}\n"
                    "fixed: {action: sleep, seconds: 1.5}\n"
                    "grid: {score: {low: 0.0, high: 1.0}}\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "runner" / "sweep.py"), str(grid), "--workers", "2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_all(tmp_path / "logs").records
    scores = [r.params["score"] for r in records]
    assert len(records) == 4 and len(set(scores)) == 4
    assert len({r.config_hash for r in records}) == 4
    study = load_study(tmp_path / "logs", "par")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 4
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(scores))  # the objective is the score


def test_a_run_predicted_over_budget_is_skipped_and_a_cheaper_one_starts(tmp_path, make_record):
    """Budget 100 s: earlier runs say 64 px takes 500 s and 32 px 10 s. The 64 px proposal is refused unrun
    (told pruned, infeasible by the 400 s it is over, its predicted seconds kept on the trial; it counts as
    no run) and the 32 px one starts; once only 64 px is left, no run starts."""
    from runner.search import SearchSource, open_study
    from runner.search.study import BUDGET_CONSTRAINT, OVER_BUDGET_ATTR

    path = write(tmp_path, "search: {sampler: grid, budget: 100}\ngrid:\n  image_size: [64, 32]\n")
    spec = load_grid(path)
    builder = RunBuilder(spec, path, base_dir=tmp_path)
    dims = parse_space(spec, path, builder)
    earlier = []
    for size, seconds in ((64, 500.0), (32, 10.0)):
        run = builder.build("earlier", {"image_size": size})[0]
        rec = make_record(f"earlier-{size}", 0.8, **run.params)
        earlier.append(rec.model_copy(update={"timings": rec.timings.model_copy(update={"total_s": seconds})}))
    found = read_all(tmp_path / "logs")
    found.records.extend(earlier)
    study = open_study(spec.search, dims, tmp_path / "logs" / "s.journal", "s", max_epochs=2)
    source = SearchSource(study=study, dims=dims, search=spec.search, builder=builder, found=found,
                          ranking=parse_metric("weighted_recall"), journal=tmp_path / "logs" / "s.journal")
    first = source.peek()
    assert first is not None and first.params["image_size"] == 32
    source.pop()
    assert source.peek() is None  # only 64 px is left, and it does not fit
    skipped = [t for t in study.get_trials(deepcopy=False) if OVER_BUDGET_ATTR in t.user_attrs]
    assert skipped and all(t.params["image_size"] == 64 and t.state.name == "PRUNED" for t in skipped)
    assert {t.user_attrs[OVER_BUDGET_ATTR] for t in skipped} == {500.0}
    for trial in skipped:  # the limit is the 100 s budget less the moments the test has taken
        assert trial.constraints == {BUDGET_CONSTRAINT: pytest.approx(400.0, abs=1.0)}
    assert source.done_count() == 0  # the 32 px run has not finished, and a refusal is no run
    assert any("no more runs start" in note for note in source.notes)
    source.close()
    assert any(f"{len(skipped)} proposed runs were not started" in note for note in source.notes)


def test_a_sampler_proposing_runs_over_budget_again_and_again_gets_a_random_point_that_fits(tmp_path):
    """TPE's model keeps preferring 64 px (500 s), which does not fit in a 100 s budget: after three such
    proposals in a row a random point predicted to fit (32 px, 10 s), not run yet, is enqueued and runs
    next, instead of the search stopping with its budget left."""
    from runner.search.study import AFFORDABLE_ATTR, OVER_BUDGET_ATTR, SAMPLER_TRIES_OVER_BUDGET

    source, _ = timed_search_source(tmp_path, "search: {sampler: tpe, budget: 100, seed: 3}\n"
                                              "grid:\n  image_size: [64, 32]\n  dropout: [0.1, 0.2]\n",
                                    {64: 500.0, 32: 10.0})
    for dropout in (0.1, 0.2, 0.1):  # what the sampler's model prefers, proposed again and again
        source.study.enqueue_trial({"image_size": 64, "dropout": dropout})
    run = source.peek()
    assert run is not None and run.params["image_size"] == 32 and run.params["dropout"] in (0.1, 0.2)
    trials = source.study.get_trials(deepcopy=False)
    over = [t for t in trials if OVER_BUDGET_ATTR in t.user_attrs]
    assert len(over) == SAMPLER_TRIES_OVER_BUDGET == 3
    assert all(t.params["image_size"] == 64 and t.state.name == "PRUNED" for t in over)
    (drawn,) = [t for t in trials if AFFORDABLE_ATTR in t.user_attrs]
    assert drawn.params["image_size"] == 32 and 99 < drawn.user_attrs[AFFORDABLE_ATTR] <= 100
    source.pop()
    source.close()
    assert any("3 proposed runs were not started" in note and "1 random point(s) predicted to fit were run "
               "instead" in note for note in source.notes), source.notes


def test_no_more_runs_start_when_no_random_point_fits(tmp_path):
    """Every point of the space takes 500 s and the budget is 100 s: the random draws find nothing either."""
    source, _ = timed_search_source(tmp_path, "search: {sampler: random, budget: 100, seed: 1}\n"
                                              "grid:\n  image_size: [64]\n  dropout: [0.1, 0.2]\n", {64: 500.0})
    assert source.peek() is None
    assert any("none of 200 random points of the space not run yet is predicted to take at most" in note
               for note in source.notes), source.notes


def test_predicted_duration_adds_the_cache_build_only_for_a_new_entry(make_record):
    """One earlier run: 100 s, 60 s of it building its cache, 4 epochs at 128 px. The same entry again costs
    its 40 s of training; 256 px costs 4x the pixels for both parts; augmentation with 2 copies triples the
    build; another base falls back on seconds per epoch, its build scaled by multiply-adds where they are known."""
    from models.spec import experiment_spec
    from runner.search import predict_duration_s

    params = {"base": "mobilenet", "image_size": 128, "epochs": 4, "fine_tune_layers": 0,
              "augmentation": None, "augmented_copies": 2}
    rec = make_record("earlier", 0.8, **params)
    rec = rec.model_copy(update={"epochs_run": 4, "timings": rec.timings.model_copy(
        update={"total_s": 100.0, "cache_build_s": 60.0})})
    assert predict_duration_s(experiment_spec(params), []) is None
    assert predict_duration_s(experiment_spec(params), [rec]) == pytest.approx(40.0)
    assert predict_duration_s(experiment_spec({**params, "image_size": 256}), [rec]) == pytest.approx(4 * 40.0 + 4 * 60.0)
    flip = {**params, "augmentation": {"flip": "horizontal"}}
    assert predict_duration_s(experiment_spec(flip), [rec]) == pytest.approx(40.0 + 3 * 60.0)
    # bypassing the cache, each of the 4 epochs passes the images through the base as the build did once
    assert predict_duration_s(experiment_spec({**flip, "augmented_copies": 0}), [rec]) == pytest.approx(4 * 60.0)
    assert predict_duration_s(experiment_spec({**params, "augmentation": {"mixup": 0.2}}), [rec]) == pytest.approx(4 * 60.0)  # so does mixup
    assert predict_duration_s(experiment_spec({**params, "image_size": 256, "activation_cache": False}), [rec]) == pytest.approx(4 * 4 * 60.0)
    # VGG16 at 224 px fine-tuned 2 epochs: its 4 head epochs on cached features at the others' 10 s, then
    # 2 x 3 passes (forward and backward) at the build's seconds per pass and multiply-add; and its build
    per_gmac_pass = 60.0 / (0.569 * (128 / 224) ** 2)
    tuned = {**params, "base": "vgg16", "image_size": 224, "fine_tune_layers": 6, "fine_tune_epochs": 2}
    assert predict_duration_s(experiment_spec(tuned), [rec]) == pytest.approx(
        4 * 10.0 + per_gmac_pass * 15.47 * 2 * 3 + per_gmac_pass * 15.47)
    # VGG16: seconds per epoch of the other runs (10 s x 8), and a build of 15.47 / 0.569 GMACs times MobileNet's
    assert predict_duration_s(experiment_spec({**params, "base": "vgg16", "epochs": 8}), [rec]) == pytest.approx(
        80.0 + 60.0 * 15.47 / 0.569)
    half = {**params, "base_kwargs": {"alpha": 0.5}}  # another base: a quarter of the multiply-adds
    assert predict_duration_s(experiment_spec(half), [rec]) == pytest.approx(40.0 + 60.0 / 4)
    assert predict_duration_s(experiment_spec({**params, "base": "simple_cnn_small"}), [rec]) == pytest.approx(40.0)  # unknown cost


def test_max_run_share_skips_a_run_that_fits_the_budget_but_would_take_most_of_it(tmp_path):
    """Budget 1000 s, max_run_share 0.25: a 500 s run fits the budget but not a quarter of it, so only the
    10 s run starts (without the share both would)."""
    from runner.search.study import OVER_BUDGET_ATTR

    source, _ = timed_search_source(tmp_path, "search: {sampler: grid, budget: 1000, max_run_share: 0.25}\n"
                                              "grid:\n  image_size: [64, 32]\n", {64: 500.0, 32: 10.0})
    study = source.study
    assert source.peek().params["image_size"] == 32
    source.pop()
    assert source.peek() is None
    assert {t.user_attrs[OVER_BUDGET_ATTR] for t in study.get_trials(deepcopy=False)
            if OVER_BUDGET_ATTR in t.user_attrs} == {500.0}
    assert any("longer than 250 s" in note for note in source.notes)
    source.close()


def test_max_run_share_is_validated(tmp_path):
    with pytest.raises(ConfigError, match=r"max_run_share is a share of the budget's time left: give a budget"):
        load_grid(write(tmp_path, "search: {max_run_share: 0.25}\n"))
    with pytest.raises(ConfigError, match=r"search.max_run_share"):
        load_grid(write(tmp_path, "search: {budget: 10m, max_run_share: 1.5}\n"))


def test_runs_remaining_counts_the_queued_repeats_of_a_started_proposal(tmp_path):
    """One proposal of 3 repeats, 2 proposals in all: 6 runs to start; after each repeat starts, one fewer."""
    source, _ = timed_search_source(tmp_path, "search: {sampler: grid, n_runs: 2, repeats: 3}\n"
                                              "grid:\n  image_size: [64, 32]\n", {})
    assert source.runs_remaining() == 6
    for left in (5, 4, 3, 2, 1, 0):
        assert source.peek() is not None
        source.pop()
        assert source.runs_remaining() == left
    assert source.peek() is None
