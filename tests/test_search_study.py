"""runner.search.study: the study's file name, the repair of a damaged journal, the sampler and pruner a study
is opened with, and the metric a pruner follows."""

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from runner.errors import ConfigError
from runner.records.query import parse_metric
from runner.search.space import PRUNERS, SAMPLERS, Dimension, SearchSpec
from runner.search.study import (
    DAMAGED_SUFFIX, PRUNABLE_METRICS, STUDY_SUFFIX, move_aside, open_study, pruner_config, pruning_metric,
    repair_journal, reseed_sampler, stem_study_path, study_path, unread_study_note,
)

DIMS = [Dimension("dense_units", "categorical", choices=([], [256])),
        Dimension("dropout", "float", low=0.0, high=0.5, step=0.25)]


def open_in(tmp_path: Path, search: SearchSpec, max_epochs: int = 4, notes=None):
    journal = study_path(tmp_path / "logs", tmp_path / "search.yaml", DIMS)
    return open_study(search, DIMS, journal, journal.name.removesuffix(STUDY_SUFFIX), max_epochs, notes=notes), journal


# The study's file ----------------------------------------------------------------------------------------------------

def test_a_studys_file_is_named_after_the_grid_files_stem_path_and_space():
    path = study_path(Path("/logs"), Path("/grids/search.yaml"), DIMS)
    # a pinned name: a change of the hashed form would orphan every study already on disk
    assert path == Path("/logs/search-4f12991e.optuna.journal")
    assert study_path(Path("/logs"), Path("/grids/search.yaml"), list(DIMS)) == path
    assert study_path(Path("/logs"), Path("/other/search.yaml"), DIMS) != path
    edited = [DIMS[0], Dimension("dropout", "float", low=0.0, high=0.75, step=0.25)]
    assert study_path(Path("/logs"), Path("/grids/search.yaml"), edited) != path


def test_a_journal_named_after_the_stem_alone_is_noted_not_read(tmp_path):
    logs, grid = tmp_path / "logs", tmp_path / "search.yaml"
    assert stem_study_path(logs, grid) == logs / f"search{STUDY_SUFFIX}"
    study, journal = open_in(tmp_path, SearchSpec(sampler="random"))
    assert unread_study_note(logs, grid, journal, study) is None  # no such file
    stem_study_path(logs, grid).write_text("", encoding="utf-8")
    note = unread_study_note(logs, grid, journal, study)
    assert note == (f"search{STUDY_SUFFIX} is not read: the study of {grid} is {journal.name} (named after the "
                    f"grid file's path and search space); the finished runs come from the run records")
    study.enqueue_trial({"dropout": 0.25})
    assert unread_study_note(logs, grid, journal, study) is None  # said once, on the study's first sweep


# Repairs -------------------------------------------------------------------------------------------------------------

def test_a_missing_or_sound_journal_needs_no_repair(tmp_path):
    assert repair_journal(tmp_path / "absent.journal") == []
    _, journal = open_in(tmp_path, SearchSpec(sampler="random"))
    before = journal.read_bytes()
    assert repair_journal(journal) == [] and journal.read_bytes() == before


def test_an_unfinished_last_line_is_cut_off(tmp_path):
    _, journal = open_in(tmp_path, SearchSpec(sampler="random"))
    sound = journal.read_bytes()
    journal.write_bytes(sound + b'{"op_code": 4, "worker')
    (message,) = repair_journal(journal)
    assert message.startswith(f"{journal}: its last line was unfinished (22 bytes without a newline")
    assert journal.read_bytes() == sound


@pytest.mark.parametrize("content, problem", [
    (b"not json\n", "line 1: not JSON (Expecting value, column 1)"),
    (b'{"no_op_code": 1}\n', "line 1: not an Optuna journal entry (no op_code)"),
    (b'{"op_code": 0}\n\xff\n', "line 2: byte 0xff is not UTF-8 text"),
    (b'{"op_code": 0}\ngarbage', "line 2: not JSON (no newline at its end)"),
])
def test_an_unreadable_journal_is_moved_aside(tmp_path, content, problem):
    journal = tmp_path / f"search{STUDY_SUFFIX}"
    journal.write_bytes(content)
    (message,) = repair_journal(journal)
    (aside,) = tmp_path.glob(f"*{DAMAGED_SUFFIX}*")
    assert message == (f"{journal}: the search study cannot be read ({problem}); moved it aside to {aside.name} and "
                       f"started the study again (rebuilt from the run records in {tmp_path})")
    assert not journal.exists() and aside.read_bytes() == content


def test_moving_aside_twice_in_one_second_keeps_both(tmp_path):
    first = tmp_path / "a.journal"
    names = []
    for content in (b"1", b"2"):
        first.write_bytes(content)
        names.append(move_aside(first))
    assert names[0] != names[1] and {p.read_bytes() for p in names} == {b"1", b"2"}
    assert all(p.name.startswith(f"a.journal{DAMAGED_SUFFIX}") for p in names) and not first.exists()


def test_a_journal_optuna_cannot_replay_is_moved_aside_when_opened(tmp_path):
    journal = study_path(tmp_path / "logs", tmp_path / "search.yaml", DIMS)
    journal.parent.mkdir()
    journal.write_text(json.dumps({"op_code": 99, "worker_id": "x"}) + "\n", encoding="utf-8")
    notes: list[str] = []
    study, _ = open_in(tmp_path, SearchSpec(sampler="random"), notes=notes)
    assert len(notes) == 1 and "moved it aside" in notes[0]
    assert study.get_trials() == [] and len(list(journal.parent.glob(f"*{DAMAGED_SUFFIX}*"))) == 1


# The sampler and the pruner ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("pruner", PRUNERS)
def test_a_study_is_opened_with_the_sampler_and_pruner_of_their_rows(tmp_path, sampler, pruner):
    study, journal = open_in(tmp_path, SearchSpec(sampler=sampler, pruner=pruner))
    assert journal.is_file() and study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert type(study.sampler) is getattr(optuna.samplers, SAMPLERS[sampler].optuna_class)
    expected = PRUNERS[pruner].optuna_class or "NopPruner"
    assert type(study.pruner) is getattr(optuna.pruners, expected)


def test_pruner_config_is_the_rows_description():
    assert pruner_config(SearchSpec(pruner="none"), 5) is None
    assert pruner_config(SearchSpec(pruner="median", min_epochs=3), 5) == {
        "class": "MedianPruner", "kwargs": {"n_startup_trials": 2, "n_warmup_steps": 2}}
    assert pruner_config(SearchSpec(pruner="hyperband", min_epochs=2), 5) == {
        "class": "HyperbandPruner", "kwargs": {"min_resource": 2, "reduction_factor": 3, "max_resource": 5}}


def test_a_continued_study_fails_and_re_enqueues_the_trials_left_running(tmp_path):
    search = SearchSpec(sampler="random", seed=1)
    study, _ = open_in(tmp_path, search)
    left = study.ask({d.name: d.distribution() for d in DIMS})  # a sweep killed with this trial running
    study, _ = open_in(tmp_path, search)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].params == {} and study.ask({d.name: d.distribution() for d in DIMS}).params == left.params


def test_reseeding_gives_a_fresh_sampler_of_the_same_kind(tmp_path):
    study, _ = open_in(tmp_path, SearchSpec(sampler="tpe"))
    before = study.sampler
    reseed_sampler(study, SearchSpec(sampler="tpe"), DIMS)
    assert study.sampler is not before and type(study.sampler) is type(before)


# The metric a pruner follows -----------------------------------------------------------------------------------------

def test_prunable_metrics_have_a_value_after_every_epoch():
    assert PRUNABLE_METRICS == ("accuracy", "weighted_recall")


@pytest.mark.parametrize("metric, column", [("weighted_recall", "val_weighted_recall"),
                                            ("val_accuracy", "val_accuracy")])
def test_a_pruner_follows_the_grids_metric_on_the_validation_split(metric, column):
    assert pruning_metric(parse_metric(metric)) == column


@pytest.mark.parametrize("metric", ["macro_f1", "test_weighted_recall", "weighted_f1"])
def test_a_metric_without_a_value_per_epoch_cannot_prune(metric):
    with pytest.raises(ConfigError, match=rf"metric: got '{metric}', but search.pruner: hyperband judges each run "
                                          rf"after every epoch .* only accuracy, weighted_recall \(val_ prefix "
                                          rf"optional\) have a value then"):
        pruning_metric(parse_metric(metric), "hyperband")
