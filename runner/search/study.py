"""The Optuna study of a search: its file, sampler and pruner (Optuna is the oracle and nothing else)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from models.names import EPOCH_LOG_KEYS
from models.spec import ExperimentSpec
from runner.errors import ConfigError
from runner.records import RANKING_METRICS
from runner.records.query import Ranking, parse_metric
from runner.search.space import Dimension, SearchSpec, encode

STUDY_SUFFIX = ".optuna.journal"
MAX_DUPLICATE_PROPOSALS = 50
"""Proposals in a row that repeat a finished run before the search is taken as exhausted."""
DUPLICATE_ATTR = "nbsweep_duplicate_of"
"""User attribute of a trial that repeated a finished run (told its result; not counted in `n_runs`)."""
MAX_OVER_BUDGET_PROPOSALS = 20
"""Proposals in a row predicted not to fit in the budget's remaining time before no more runs start."""
SAMPLER_TRIES_OVER_BUDGET = 3
"""Proposals of the sampler in a row predicted not to fit before a random point that fits is run instead
(`SearchSource.peek`)."""
AFFORDABLE_DRAWS = 200
"""Uniform random draws of the space tried for a point predicted to fit (`SearchSource._affordable_point`)."""
AFFORDABLE_ATTR = "nbsweep_affordable_draw"
"""User attribute of a trial enqueued as a random point predicted to fit: the seconds it had to fit in."""
CHEAP_START_RUNS = 10
"""Points of a sampler with `SamplerKind.cheap_start` chosen by cost before the sampler proposes: TPE's
own number of uniform startup draws (`optuna.samplers.TPESampler`'s `n_startup_trials` default, 10)."""
CHEAP_START_DRAWS = 4
"""Uniform draws of which the cheapest (`runner.search.prior_cost`) is each cheap-start point after the
first: its expected place in the space's costs is the 20th percentile (the least of k uniform draws:
1 / (k + 1)), and the other points still vary, for the sampler to learn from."""
CHEAP_START_ATTR = "nbsweep_cheap_start"
"""User attribute of a trial enqueued as a cheap-start point: its `prior_cost`."""
OVER_BUDGET_ATTR = "nbsweep_over_budget_s"
"""User attribute of a trial refused unrun because its predicted seconds exceeded what was left of the budget
(or `max_run_share` of it): those seconds."""
BUDGET_CONSTRAINT = "nbsweep_budget"
"""The constraint (`optuna.trial.Trial.set_constraint`) of a refused trial: the seconds its prediction exceeded
the limit by (> 0: infeasible). The trial is told pruned, with no value: Optuna's TPE ranks such a trial
below every feasible one (its "above" group, with the largest excess last) and proposes less where it
was, where a failed trial would teach it nothing."""


def study_path(logs_dir: Path, grid_path: Path, dims: Sequence[Dimension]) -> Path:
    """`<logs_dir>/<grid file stem>-<8 hex>.optuna.journal`, the study's file; its stem is the study's name.

    The 8 hex digits are the sha256 of the grid file's resolved path and of
    its search space (every dimension's name, kind, choices or range): two
    grid files of the same name in one logs folder have studies of their
    own, and a grid whose space was edited starts a new study (Optuna cannot
    change a parameter's distribution within a study). Nothing is lost by
    that: a study is a cache of the run records, and `SearchSource.restore`
    gives it a trial for every finished run of the records that its space
    holds.

    Args:
        logs_dir: the grid's `logs_dir`.
        grid_path: the grid file.
        dims: its search space (`parse_space`).

    Returns:
        The journal's path (it may not exist yet).
    """
    from models.hashing import sha256_json

    space = [[d.name, d.kind, [encode(c) for c in d.choices], d.low, d.high, d.log, d.step] for d in dims]
    digest = sha256_json({"grid": str(Path(grid_path).resolve()), "space": space})[:8]
    return Path(logs_dir) / f"{Path(grid_path).stem}-{digest}{STUDY_SUFFIX}"


def stem_study_path(logs_dir: Path, grid_path: Path) -> Path:
    """`<logs_dir>/<grid file stem>.optuna.journal`: a journal named after the grid file's stem alone.

    No sweep reads such a file: a study's file is `study_path`, whose name adds
    the hash of the grid file's path and search space. `unread_study_note`
    tells a user who has one that its finished runs come from the run records.
    """
    return Path(logs_dir) / f"{Path(grid_path).stem}{STUDY_SUFFIX}"



def unread_study_note(logs_dir: Path, grid_path: Path, journal: Path, study) -> Optional[str]:
    """A note for the sweep's output when a journal at `stem_study_path` is there but not read.

    Args:
        logs_dir: the grid's `logs_dir`.
        grid_path: the grid file.
        journal: the study's file (`study_path`).
        study: the study opened from `journal` (`open_study`).

    Returns:
        The note, when `stem_study_path` is a file and `study` holds no trial
        yet (the first sweep of this grid file's path and space); else `None`.
    """
    unread = stem_study_path(logs_dir, grid_path)
    if not unread.is_file() or study.get_trials(deepcopy=False):
        return None
    return (f"{unread.name} is not read: the study of {grid_path} is {Path(journal).name} (named after the grid "
            f"file's path and search space); the finished runs come from the run records")


DAMAGED_SUFFIX = ".damaged-"
"""What a journal that cannot be read is renamed to: `<journal>.damaged-<UTC time>` beside it."""


def _journal_problem(data: bytes) -> Optional[str]:
    """Why a journal's complete lines are not Optuna's log (UTF-8 JSON objects with an `op_code`), or `None`."""
    import json

    for number, line in enumerate(data.splitlines(), start=1):
        try:
            entry = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            return f"line {number}: byte 0x{line[exc.start]:02x} is not UTF-8 text"
        except json.JSONDecodeError as exc:
            return f"line {number}: not JSON ({exc.msg}, column {exc.colno})"
        if not isinstance(entry, dict) or "op_code" not in entry:
            return f"line {number}: not an Optuna journal entry (no op_code)"
    return None


def move_aside(path: Path) -> Path:
    """Rename a damaged journal to `<name>.damaged-<UTC time>` beside it (kept for inspection); the new name."""
    import datetime
    import os

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside, n = path.with_name(f"{path.name}{DAMAGED_SUFFIX}{stamp}"), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}{DAMAGED_SUFFIX}{stamp}-{n}")
    os.replace(path, aside)
    return aside


def repair_journal(path: Path) -> list[str]:
    """Make a study's journal file readable again, before Optuna opens it; what was done, one line each.

    - A last line without its newline (a sweep killed while writing it, a
      full disk), after complete lines that are all readable: the unfinished
      line is cut off (Optuna would append the next entry to it, and every
      later read would fail). The trial it was about is set right from the
      run records (`SearchSource.restore`).
    - Any other line that is not UTF-8 JSON of Optuna's journal (a file
      overwritten, garbage): the file is moved aside (`move_aside`) and the
      study starts again empty, to be rebuilt from the run records.

    Args:
        path: the journal (a missing file is fine: nothing to do).

    Returns:
        Messages naming the file, what was wrong and what was done; empty when nothing was.

    Raises:
        ConfigError: the file cannot be read or changed (permissions...).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the search study ({exc.strerror or exc})") from exc
    complete, _, tail = data.rpartition(b"\n")
    complete = complete + b"\n" if complete or data.startswith(b"\n") else b""
    problem = _journal_problem(complete)
    try:
        if problem is None and tail and tail.startswith(b"{"):
            with open(path, "r+b") as handle:
                handle.truncate(len(complete))
            return [f"{path}: its last line was unfinished ({len(tail)} bytes without a newline: a sweep stopped "
                    f"while writing it); cut it off, the study goes on from the line before"]
        if problem is None and tail:
            problem = f"line {len(complete.splitlines()) + 1}: not JSON (no newline at its end)"
        if problem is None:
            return []
        aside = move_aside(path)
    except OSError as exc:
        raise ConfigError(f"{path}: the search study cannot be read ({problem or 'an unfinished last line'}) "
                          f"nor repaired ({exc.strerror or exc}); move it away") from exc
    return [f"{path}: the search study cannot be read ({problem}); moved it aside to {aside.name} and started "
            f"the study again (rebuilt from the run records in {path.parent})"]


def reseed_sampler(study, search: SearchSpec, dims: Sequence[Dimension]) -> None:
    """Give `study` a fresh sampler seeded past the trials it holds, so it does not replay their points."""
    seeded = search.model_copy(update={"seed": (search.seed + len(study.get_trials(deepcopy=False)))
                                           % ExperimentSpec.SEED_RANGE.stop})  # a seed Optuna takes
    study.sampler = seeded.sampler_kind.build(seeded, dims)


PRUNABLE_METRICS = tuple(m for m in RANKING_METRICS if parse_metric(m).column in EPOCH_LOG_KEYS)
"""The ranking metrics a pruner can follow: those with a value after every epoch on the validation split
(`models.names.EPOCH_LOG_KEYS`: accuracy and weighted recall, which for single-label classification is
the accuracy). Macro averages and F1 scores are computed once, after training (`models.evaluate`)."""


def pruning_metric(ranking: Ranking, pruner: str = "median") -> str:
    """The per-epoch validation figure a pruner judges a run by: the grid's ranking metric on the validation
    split, so that a search prunes on what it ranks (`val_weighted_recall` for `metric: weighted_recall`).

    Args:
        ranking: the grid's metric (`runner.records.query.parse_metric`).
        pruner: the `search.pruner` value, for the message. Defaults to `"median"`.

    Returns:
        A `models.names.EPOCH_LOG_KEYS` name, e.g. `"val_weighted_recall"`; the kernel's
        `models.pruning` reads it from the notebook's `pruning` parameter (its `metric`).

    Raises:
        ConfigError: the metric has no per-epoch value (`PRUNABLE_METRICS`), or ranks on the test split.
    """
    if ranking.split != "val" or ranking.column not in EPOCH_LOG_KEYS:
        raise ConfigError(
            f"metric: got {ranking.name!r}, but search.pruner: {pruner} judges each run after every epoch by "
            f"the grid's metric on the validation split, and only {', '.join(PRUNABLE_METRICS)} (val_ prefix "
            f"optional) have a value then; set metric to one of them, or search.pruner: none")
    return ranking.column


def pruner_config(search: SearchSpec, max_epochs: int) -> Optional[dict[str, Any]]:
    """The pruner as `{"class": name in optuna.pruners, "kwargs": {...}}`, or `None` when `search.pruner` does
    not prune: `PrunerKind.config` of its row of `runner.search.space.PRUNERS`.

    Built the same way in the sweep (`open_study`) and in each run's kernel
    (`models.pruning`), because Optuna keeps the pruner with the study
    object, not in its storage.

    Args:
        search: the `search:` block (`pruner`, `min_epochs`).
        max_epochs: the most epochs a run trains (Hyperband's `max_resource`).

    Returns:
        The description `models.pruning.build_pruner` builds the pruner from, or `None`.
    """
    return search.pruner_kind.config(search, max_epochs)


def open_study(search: SearchSpec, dims: Sequence[Dimension], path: Path, name: str, max_epochs: int,
               notes: Optional[list[str]] = None):
    """Create or continue the study in `path`; trials a killed sweep left running are failed and re-enqueued.

    The journal is repaired first (`repair_journal`): an unfinished last line
    is cut off, an unreadable file is moved aside and the study starts again
    (as does one that Optuna cannot replay), for `SearchSource.restore` to
    rebuild from the run records.

    Args:
        search: the `search:` block.
        dims: the search space.
        path: the journal file (created with its folder).
        name: the study's name (`study_path`'s stem).
        max_epochs: the most epochs a run trains (Hyperband's `max_resource`).
        notes: where the repairs are reported, one line each. Defaults to
            `None` (not reported).

    Returns:
        The `optuna.Study` (direction: maximize).

    Raises:
        ConfigError: the journal cannot be read nor moved aside.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path.parent.mkdir(parents=True, exist_ok=True)
    repairs = repair_journal(path)
    from models.pruning import build_pruner

    try:
        storage = JournalStorage(JournalFileBackend(str(path)))  # replays every line of the journal
        try:  # a continued study: seed its sampler past the trials it has, so it does not replay them
            earlier = len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
        except KeyError:  # no study of this name yet
            earlier = 0
    except Exception as exc:  # well-formed lines Optuna cannot replay: the same as an unreadable file
        try:
            aside = move_aside(path)
        except OSError as error:
            raise ConfigError(f"{path}: the search study cannot be read ({type(exc).__name__}: {exc}) nor moved "
                              f"aside ({error.strerror or error}); move it away") from exc
        repairs.append(f"{path}: the search study cannot be read ({type(exc).__name__}: {exc}); moved it aside "
                       f"to {aside.name} and started the study again (rebuilt from the run records in {path.parent})")
        storage, earlier = JournalStorage(JournalFileBackend(str(path))), 0
    if notes is not None:
        notes += repairs
    seeded = search.model_copy(update={"seed": (search.seed + earlier) % ExperimentSpec.SEED_RANGE.stop})
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=seeded.sampler_kind.build(seeded, dims),
                                pruner=build_pruner(pruner_config(search, max_epochs)))
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
    return study


