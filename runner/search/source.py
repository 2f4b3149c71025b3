"""The ask-and-tell loop of a search: `SearchSource` feeds the sweep one proposed run at a time, tells each result back.

A grid file with a `search:` block (`SearchSpec`) turns its `grid` mapping
into a search space: a list is a categorical choice, `{low, high, log, step}`
a float range, `{int: [low, high], step, log}` an integer range
(`parse_space`). Optuna is the oracle and nothing else, as keras-tuner's
`Oracle` is: it proposes parameters (its sampler, a row of
`runner.search.space.SAMPLERS`) and decides pruning (its pruner, a row of
`runner.search.space.PRUNERS`). Each proposal becomes
a `RunSpec` through the same `runner.grid.RunBuilder` as a grid point, so
execution, records, resume and the leaderboard do not care where a run came
from. The run's trial reaches its kernel as the notebook parameter
`pruning`, with the grid's metric on the validation split (its `metric`, e.g.
`val_weighted_recall`); `models.pruning` reports that figure after each epoch
and asks whether to stop, so a search prunes on what it ranks.

The study lives in `logs/<grid file stem>-<8 hex>.optuna.journal` (Optuna's
`JournalFileBackend`, which works for Dask workers on a shared filesystem
too; the hex digits hash the grid file's resolved path and its search space,
`runner.search.study.study_path`), so the same command again continues it:
`n_runs` counts completed and pruned trials; a trial left running by a killed
sweep, or whose run was interrupted or failed, is marked failed and its
parameters are enqueued to be run again. The study is a cache of the run
records, which are the truth: a journal with an unfinished last line is cut
back, an unreadable one is moved aside (`open_study`), and `SearchSource.restore`
gives a new, rebuilt or cut-back study a trial for every finished point of
the records that its space holds, so no finished run is lost or run twice.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence


from models.spec import ExperimentSpec
from runner.errors import ConfigError
from runner.records import COMPLETED, DONE_STATUSES, PRUNED, RUN
from runner.search.duration import predict_duration_s, prior_cost
from runner.search.space import Dimension, SearchSpec, decode, encode
from runner.search.study import (
    AFFORDABLE_ATTR, AFFORDABLE_DRAWS, BUDGET_CONSTRAINT, CHEAP_START_ATTR, CHEAP_START_DRAWS, CHEAP_START_RUNS,
    DUPLICATE_ATTR, MAX_DUPLICATE_PROPOSALS, MAX_OVER_BUDGET_PROPOSALS, OVER_BUDGET_ATTR, SAMPLER_TRIES_OVER_BUDGET,
    pruning_metric, reseed_sampler,
)

RESTORED_ATTR = "nbsweep_from_records"
"""User attribute of a trial added from the run records (`SearchSource.restore`): their run ids."""


@dataclass
class SearchSource:
    """Feeds a sweep's loop from a study: the next run on demand, each result told back.

    `runner.core.loop` pulls runs with `peek`/`pop` and reports each finished
    record with `finished`, exactly as it does a grid's list of runs.

    Args:
        study: from `open_study`.
        dims: the search space.
        search: the `search:` block.
        builder: a `runner.grid.RunBuilder`.
        found: the records already in the logs folder (`runner.records.query.RecordSet`).
        ranking: the grid's ranking metric (the objective told to the study and, on the validation
            split, the per-epoch figure a pruner follows: `runner.search.study.pruning_metric`).
        journal: the study's file (handed to each run for pruning).
        pruner: `pruner_config(...)`, handed to each run's kernel; `None`: no pruning.
        started: `time.monotonic()` at the sweep's start (for the budget).
        over_budget: proposals not started because they were predicted not to fit in the budget's time left.
        affordable: random points enqueued because the sampler's proposals did not fit (`peek`).
    """

    study: Any
    dims: Sequence[Dimension]
    search: SearchSpec
    builder: Any
    found: Any
    ranking: Any
    journal: Path
    pruner: Optional[dict] = None
    started: float = field(default_factory=time.monotonic)
    notes: list[str] = field(default_factory=list)
    over_budget: int = 0
    affordable: int = 0
    _next: Any = None
    _rest: list = field(default_factory=list)
    _last: Any = None
    _trials: dict = field(default_factory=dict)
    _repeats: dict = field(default_factory=dict)
    _started: set = field(default_factory=set)
    _index: int = 0
    _exhausted: bool = False

    def done_count(self) -> int:
        """Runs completed or pruned in the study (all sweeps of this grid file); proposals that repeated a finished
        run or were refused for the budget do not count (`_ran`)."""
        from optuna.trial import TrialState

        finished = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        return sum(_ran(t) for t in finished)

    @property
    def n_runs(self) -> int:
        """The target of finished runs: `search.n_runs`, or the number of grid points for a sampler that
        enumerates the grid (`SamplerKind.enumerates_grid`), else 20."""
        if self.search.n_runs:
            return self.search.n_runs
        if self.search.sampler_kind.enumerates_grid:
            return math.prod(len(d.grid_values()) for d in self.dims)
        return 20

    def remaining(self) -> int:
        """Proposals still to finish (runs, without `repeats`)."""
        return max(0, self.n_runs - self.done_count() - len({trial.number for trial in self._trials.values()}))

    def runs_remaining(self) -> int:
        """Runs still to start: `remaining()` proposals of `search.repeats` runs each, plus the repeats of a
        started proposal still queued (its trial no longer counts in `remaining()`)."""
        if self._next is None:
            queued = len(self._rest)  # repeats of the last proposal popped
        else:
            queued = 1 + len(self._rest) if self._next[1].number in self._started else 0
        return self.remaining() * self.search.repeats + queued

    def predicted_s(self, run) -> Optional[float]:
        """The predicted duration of `run` (`predict_duration_s` over the records read so far)."""
        return predict_duration_s(run.spec, self.found.records)

    @property
    def proposed(self):
        """The run proposed and not started yet, else the last one started, or `None` (asks the study nothing)."""
        return self._last if self._next is None else self._next[0]

    def peek(self):
        """The next run to start, or `None` (enough runs, budget spent, or the space exhausted).

        A sampler with `SamplerKind.cheap_start` (TPE) starts where runs are
        cheap: its first points are chosen by `prior_cost` (`_cheap_start`).

        With a budget, a proposal predicted not to finish in the time left
        (or in `max_run_share` of it) is not run (`_refuse`: its trial is
        told pruned and infeasible, so TPE proposes less there; user
        attribute `OVER_BUDGET_ATTR`, the predicted seconds) and the study is
        asked for another point, so a cheaper configuration can still use the
        time. A model-based sampler (TPE) may still propose what does not fit:
        after `SAMPLER_TRIES_OVER_BUDGET` such proposals in a row (with a
        sampler that does not enumerate the grid: `SamplerKind.enumerates_grid`),
        a uniformly drawn point predicted to fit
        (`_affordable_point`) is enqueued and runs next, and the sampler
        learns from its result. No more runs start once the budget is spent,
        when no drawn point fits, or after `MAX_OVER_BUDGET_PROPOSALS`
        proposals in a row that do not fit.
        """
        over_budget = 0
        while True:
            if self._next is None and self._rest:  # the next repeat of a proposal already started
                self._next = self._rest.pop(0)
            if self._next is None and not self._exhausted and self.remaining() > 0:
                proposal = self._propose()
                if proposal:
                    self._next, self._rest = proposal[0], list(proposal[1:])
            if self._next is None or self.search.budget_s is None or self._next[1].number in self._started:
                break
            run, trial = self._next
            predicted = (self.predicted_s(run) or 0.0) * (1 + len(self._rest))  # every repeat of the proposal
            left = self.search.budget_s - (time.monotonic() - self.started)
            limit = left * (self.search.max_run_share or 1.0)
            if predicted <= limit:
                break
            self._refuse(trial, predicted, limit)
            self._next, self._rest = None, []
            self._repeats.pop(trial.number, None)
            over_budget += 1
            self.over_budget += 1
            if left <= 0 or over_budget >= MAX_OVER_BUDGET_PROPOSALS:
                self.notes.append(f"budget: {max(0, left):.0f} s are left and the last {over_budget} proposed runs "
                                  f"are predicted to take longer than {max(0, limit):.0f} s (the last "
                                  f"{predicted:.0f} s); no more runs start")
                self._exhausted = True
                break
            if not self.search.sampler_kind.enumerates_grid and over_budget % SAMPLER_TRIES_OVER_BUDGET == 0:
                point = self._affordable_point(limit)
                if point is None:
                    self.notes.append(f"budget: {left:.0f} s are left and none of {AFFORDABLE_DRAWS} random points "
                                      f"of the space not run yet is predicted to take at most {limit:.0f} s; no "
                                      f"more runs start")
                    self._exhausted = True
                    break
                self.study.enqueue_trial(point, user_attrs={AFFORDABLE_ATTR: round(limit, 1)})
                self.affordable += 1
        return None if self._next is None else self._next[0]

    def _affordable_point(self, limit_s: float) -> Optional[dict[str, Any]]:
        """A uniformly drawn point of the space, not run yet, predicted to finish in `limit_s` seconds.

        The draws are `_new_draws`; a point's predicted seconds are
        `predicted_s` of its first run times its repeats, a run without a
        prediction counting as 0 (as in `peek`).

        Args:
            limit_s: the seconds the point's runs must fit in.

        Returns:
            The point as the study's parameters (`Study.enqueue_trial`'s
            `params`), or `None` when none of `AFFORDABLE_DRAWS` draws fits.
        """
        for params, runs in self._new_draws(AFFORDABLE_DRAWS):
            if (self.predicted_s(runs[0]) or 0.0) * len(runs) <= limit_s:
                return params
        return None

    def _new_draws(self, count: int):
        """Up to `count` uniform draws of the space, each as `(params, runs)` (the study's parameters and the
        point's `RunSpec`s with their repeats), those already run or running left out.

        The draws come from Optuna's `RandomSampler` in a throwaway in-memory
        study, seeded with `search.seed` plus the study's trial count (a
        resumed search draws other points). A point counts as run when all
        its repeats have a finished record or are running.
        """
        import optuna

        draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(
            seed=(self.search.seed + len(self.study.get_trials(deepcopy=False))) % ExperimentSpec.SEED_RANGE.stop))
        distributions = {d.name: d.distribution() for d in self.dims}
        taken = {rec.config_hash for rec in self.found.records if rec.kind == RUN and rec.status in DONE_STATUSES}
        taken |= set(self._trials)
        for _ in range(count):
            params = draws.ask(distributions).params
            runs, errors = self.builder.build_repeats("random draw", {name: decode(value) for name, value in
                                                                     params.items()}, repeats=self.search.repeats)
            if not errors and not all(run.config_hash in taken for run in runs):
                yield params, runs

    def _cheap_start(self) -> None:
        """Enqueue the next cheap-start point, when the sampler has `SamplerKind.cheap_start` and is due one.

        Due while fewer than `CHEAP_START_RUNS` trials of the study are
        finished (completed or pruned, repeated proposals not counted) or
        running, and no enqueued point waits (a re-enqueued interrupted run
        goes first). The point is the cheapest by `prior_cost` of
        `CHEAP_START_DRAWS` uniform draws not run yet (`_new_draws`), or of
        `AFFORDABLE_DRAWS` for the first point of a study with nothing
        finished, so that the first run, whose cost nothing predicts yet, is
        among the cheapest of the space rather than a uniform draw that may
        eat the budget. Draws of unknown cost (`prior_cost` is `None`) are
        left out; when all are, the sampler proposes as usual.
        """
        from optuna.trial import TrialState

        if not self.search.sampler_kind.cheap_start:
            return
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        trials = [t for t in self.study.get_trials(deepcopy=False, states=states) if _ran(t)]
        if len(trials) >= CHEAP_START_RUNS or any(t.state == TrialState.WAITING for t in trials):
            return
        first = not any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        costs = [(cost, index, params) for index, (params, runs) in
                 enumerate(self._new_draws(AFFORDABLE_DRAWS if first else CHEAP_START_DRAWS))
                 if (cost := prior_cost(runs[0].spec)) is not None]
        if costs:
            cost, _, params = min(costs, key=lambda c: c[:2])
            self.study.enqueue_trial(params, user_attrs={CHEAP_START_ATTR: round(cost, 3)})

    def pop(self):
        """The run `peek` returned, now running."""
        run, trial = self._next
        self._next, self._last = None, run
        self._trials[run.config_hash] = trial
        self._started.add(trial.number)
        return run

    def _propose(self):
        from optuna.trial import TrialState

        done = {rec.config_hash: rec for rec in self.found.records
                if rec.kind == RUN and rec.status in DONE_STATUSES}
        for _ in range(MAX_DUPLICATE_PROPOSALS):
            self._cheap_start()
            trial = self.study.ask({d.name: d.distribution() for d in self.dims})
            point = {name: decode(value) for name, value in trial.params.items()}
            runs, errors = self.builder.build_repeats(f"trial {trial.number}", point, index=self._index,
                                                      repeats=self.search.repeats)
            if errors:  # only reachable if a choice valid at its bounds is invalid inside them
                self._tell(trial, state=TrialState.FAIL)
                raise ConfigError("\n".join(errors))
            for run in runs:  # a record trained on other data than this run expects is not done for it
                if run.config_hash in done and not run.data_matches(done[run.config_hash]):
                    del done[run.config_hash]
            if all(run.config_hash in done for run in runs):  # proposed again: tell the study what those runs gave
                records = [done[run.config_hash] for run in runs]
                trial.set_user_attr(DUPLICATE_ATTR, ", ".join(rec.run_id for rec in records))
                args, kwargs = self._outcome(trial, records)
                self._tell(trial, *args, **kwargs)
                continue
            if any(run.config_hash in self._trials for run in runs):  # running now (a parallel proposal repeated it)
                self._tell(trial, state=TrialState.FAIL)
                continue
            todo = [run for run in runs if run.config_hash not in done]
            self._index += len(todo)
            if self.search.repeats > 1:  # each repeat's record, as it finishes (those done before: now)
                self._repeats[trial.number] = {run.config_hash: done.get(run.config_hash) for run in runs}
            trial_info = None if not self.pruner else {  # the notebook's `pruning` parameter (models.pruning)
                "storage": str(self.journal), "study_name": self.study.study_name, "trial_number": trial.number,
                "min_epochs": self.search.min_epochs, "pruner": self.pruner,
                "metric": pruning_metric(self.ranking, self.search.pruner)}
            return [(run.with_trial(trial_info), trial) for run in todo]
        self.notes.append(f"search: {MAX_DUPLICATE_PROPOSALS} proposals in a row repeat finished runs; "
                          f"the space looks exhausted")
        self._exhausted = True
        return None

    def _tell(self, trial, *args, **kwargs) -> None:
        """`study.tell`, tolerating the `RuntimeError` GridSampler raises on the last grid point in ask-and-tell use.

        GridSampler's `after_trial` calls `study.stop()`, which raises outside
        `study.optimize` (optuna issues #4121 and #5141; the GridSampler docs'
        note); Optuna stores the trial's state in a `finally` first, so the
        tell itself has happened (Hydra's Optuna sweeper does the same).
        """
        try:
            self.study.tell(trial, *args, **kwargs)
        except RuntimeError as exc:
            if "Study.stop" not in str(exc):
                raise

    def _outcome(self, trial, records) -> tuple[tuple, dict]:
        """What to tell the study of a proposal whose runs all ended: `(args, kwargs)` of `_tell`.

        Every run completed with a figure: the mean of the figures (with
        repeats, each figure in the trial's user attribute `nbsweep_repeat_values`);
        one run, pruned: pruned; else failed.
        """
        from optuna.trial import TrialState

        values = [self.ranking.value(rec) for rec in records]
        if all(rec.status == COMPLETED for rec in records) and None not in values:
            if len(records) > 1:
                trial.set_user_attr("nbsweep_repeat_values", values)
            return (statistics.fmean(values),), {"state": TrialState.COMPLETE}
        if len(records) == 1 and records[0].status == PRUNED:
            return (None,), {"state": TrialState.PRUNED}
        return (), {"state": TrialState.FAIL}

    def _fail(self, trial) -> None:
        from optuna.trial import TrialState

        self._tell(trial, state=TrialState.FAIL)

    def _refuse(self, trial, predicted_s: float, limit_s: float) -> None:
        """Tell the study that `trial` does not run: predicted to take `predicted_s` seconds, over `limit_s`.

        Told pruned with the constraint `BUDGET_CONSTRAINT`, `predicted_s - limit_s` (> 0, infeasible), and
        the user attribute `OVER_BUDGET_ATTR`, `predicted_s`; it counts as no run (`_ran`). Optuna's TPE ranks
        an infeasible trial below every feasible one and so proposes less where it was; the random sampler
        ignores it; the grid sampler counts its point as visited (as it does a failed one).
        """
        from optuna.trial import TrialState

        trial.set_user_attr(OVER_BUDGET_ATTR, round(predicted_s, 1))
        trial.set_constraint(BUDGET_CONSTRAINT, predicted_s - limit_s)  # `peek` refuses only predicted > limit
        self._tell(trial, state=TrialState.PRUNED)

    def finished(self, record) -> None:
        """Tell the study how a run ended: completed (its metric), pruned, or failed (re-enqueued if interrupted)."""
        from optuna.trial import TrialState

        trial = self._trials.pop(record.config_hash, None)
        if trial is None:
            return
        self.found.records.append(record)
        if trial.number in self._repeats:  # one of a proposal's repeats: told once all have ended
            records = self._repeats[trial.number]
            records[record.config_hash] = record
            if any(rec is None for rec in records.values()):
                return
            del self._repeats[trial.number]
            args, kwargs = self._outcome(trial, list(records.values()))
            self._tell(trial, *args, skip_if_finished=True, **kwargs)
            if any(rec.status == "interrupted" for rec in records.values()):  # run the missing repeats next time
                self.study.enqueue_trial(trial.params)
            return
        if record.status == COMPLETED and self.ranking.value(record) is not None:
            self._tell(trial, self.ranking.value(record), skip_if_finished=True)
        elif record.status == PRUNED:
            self._tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        else:
            self._tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            if record.status == "interrupted":  # run its configuration again next time
                self.study.enqueue_trial(trial.params)

    def close(self) -> None:
        """Fail a proposal with a run that never started (its configuration is enqueued again; repeats
        that did run are found by their `config_hash` then, and not run twice)."""
        if self.over_budget:
            self.notes.append(f"budget: {self.over_budget} proposed runs were not started, predicted not to finish "
                              f"in the time left (trials told pruned and infeasible, with user attribute "
                              f"{OVER_BUDGET_ATTR})"
                              + (f"; {self.affordable} random point(s) predicted to fit were run instead (user "
                                 f"attribute {AFFORDABLE_ATTR})" if self.affordable else ""))
        pending = ([self._next] if self._next is not None else []) + self._rest
        if pending:
            trial = pending[0][1]
            self._fail(trial)
            self.study.enqueue_trial(trial.params)
            self._repeats.pop(trial.number, None)
            self._next, self._rest = None, []

    def restore(self) -> list[str]:
        """Give the study a trial for every finished point of the records that none of its trials accounts for.

        The records are the truth and the study a cache of them. A study new
        to this grid's path and space (`runner.search.study.study_path`), one
        whose journal was moved aside as unreadable (`open_study`), or one
        whose last tell was cut off (a sweep killed between writing a record
        and telling the study: its trial was failed and re-enqueued) gets, for
        each point of the space whose runs the records hold finished (this
        grid's `RunBuilder` gives each repeat the same `config_hash`, trained
        on the data it expects), one trial with their outcome
        (`optuna.trial.create_trial` + `study.add_trial`; user attribute
        `RESTORED_ATTR`: the run ids). Those trials count in `n_runs`, like
        the trials that ran them. The sampler is then seeded past them.

        Returns:
            A note per restore (how many trials, from which runs); empty when the study was complete.
        """
        import optuna
        from optuna.trial import TrialState

        from models.hashing import canonical_json

        names = [d.name for d in self.dims]
        finished = (TrialState.COMPLETE, TrialState.PRUNED)
        covered = {canonical_json({n: decode(t.params[n]) for n in names})
                   for t in self.study.get_trials(deepcopy=False, states=finished)
                   if _ran(t) and set(names) <= set(t.params)}
        done = {rec.config_hash: rec for rec in self.found.records
                if rec.kind == RUN and rec.status in DONE_STATUSES}
        template, _ = self.builder.build("records", {d.name: d.bounds()[0] for d in self.dims})
        free = {*names, "seed", "name"}  # what differs between the runs of one search
        distributions = {d.name: d.distribution() for d in self.dims}
        added: list[str] = []
        for rec in list(done.values()):
            if template is None or not set(names) <= set(rec.params) or any(
                    rec.params.get(k) != v for k, v in template.params.items() if k not in free):
                continue
            point = {n: rec.params[n] for n in names}
            key = canonical_json(point)
            if key in covered:
                continue
            covered.add(key)
            runs, errors = self.builder.build_repeats("records", point, repeats=self.search.repeats)
            if errors or not runs or not all(run.config_hash in done and run.data_matches(done[run.config_hash])
                                             for run in runs):
                continue
            records = [done[run.config_hash] for run in runs]
            attrs = _UserAttrs({RESTORED_ATTR: ", ".join(r.run_id for r in records)})
            args, kwargs = self._outcome(attrs, records)
            if kwargs["state"] == TrialState.FAIL:
                continue
            try:
                trial = optuna.trial.create_trial(
                    params={d.name: encode(point[d.name]) if d.kind == "categorical" else point[d.name]
                            for d in self.dims},
                    distributions=distributions, state=kwargs["state"],
                    value=args[0] if kwargs["state"] == TrialState.COMPLETE else None, user_attrs=dict(attrs))
            except ValueError:  # a value outside this space's distributions
                continue
            self.study.add_trial(trial)
            added.append(attrs[RESTORED_ATTR])
        if not added:
            return []
        reseed_sampler(self.study, self.search, self.dims)
        shown = "; ".join(added[:5]) + (f"; and {len(added) - 5} more" if len(added) > 5 else "")
        return [f"study {self.study.study_name}: {len(added)} finished point(s) of the run records were missing "
                f"from it (a new or rebuilt study, or a result a stopped sweep did not tell); added them from "
                f"their records ({shown})"]


def open_search(spec, grid: Path, dims: Sequence[Dimension], builder, max_epochs: int,
                warnings: list[str], notes: list[str]) -> SearchSource:
    """The grid's study (`open_study` on its `study_path`) and the `SearchSource` over it, with the study given
    what it lacks of the run records (`SearchSource.restore`).

    Args:
        spec: the grid (`runner.grid.GridSpec`: its `search`, `logs_dir`, `metric`).
        grid: the grid file.
        dims: its search space (`parse_space`).
        builder: the sweep's `runner.grid.RunBuilder`.
        max_epochs: the most epochs a run of the grid trains (Hyperband's `max_resource`).
        warnings: where the journal's repairs are appended, one line each.
        notes: where the unread-journal note and the restores are appended, one line each.

    Returns:
        The source, ready for `runner.core.loop.run_sweep`.

    Raises:
        ConfigError: the journal cannot be read nor moved aside (`open_study`).
    """
    from runner.records.query import parse_metric, read_all
    from runner.search.study import STUDY_SUFFIX, open_study, pruner_config, study_path, unread_study_note

    journal = study_path(spec.logs_dir, Path(grid), dims)
    study = open_study(spec.search, dims, journal, journal.name.removesuffix(STUDY_SUFFIX), max_epochs, notes=warnings)
    unread = unread_study_note(spec.logs_dir, Path(grid), journal, study)
    if unread:
        notes.append(unread)
    source = SearchSource(study=study, dims=dims, search=spec.search, builder=builder, found=read_all(spec.logs_dir),
                          ranking=parse_metric(spec.metric), journal=journal,
                          pruner=pruner_config(spec.search, max_epochs))
    notes += source.restore()  # the records are the truth: what the study lacks of them
    return source


def _ran(trial) -> bool:
    """Whether a finished or running trial stands for runs of its own: not a proposal that repeated a finished
    run (`DUPLICATE_ATTR`) nor one refused for the budget (`OVER_BUDGET_ATTR`)."""
    return DUPLICATE_ATTR not in trial.user_attrs and OVER_BUDGET_ATTR not in trial.user_attrs


class _UserAttrs(dict):
    """User attributes gathered for a trial not created yet (`SearchSource._outcome` sets them on a trial)."""

    def set_user_attr(self, key: str, value: Any) -> None:
        self[key] = value
