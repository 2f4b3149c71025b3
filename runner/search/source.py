"""Search: an Optuna study proposes the runs of a sweep and decides which to prune.

A grid file with a `search:` block (`SearchSpec`) turns its `grid` mapping
into a search space: a list is a categorical choice, `{low, high, log, step}`
a float range, `{int: [low, high], step, log}` an integer range
(`parse_space`). Optuna is the oracle and nothing else, as keras-tuner's
`Oracle` is: it proposes parameters (`grid`: `GridSampler`, `random`:
`RandomSampler`, `tpe`: `TPESampler` with `constant_liar`, so runs in
parallel sample different points) and decides pruning (`median`,
`successive_halving`, `hyperband`: Optuna's pruners). Each proposal becomes
a `RunSpec` through the same `runner.grid.RunBuilder` as a grid point, so
execution, records, resume and the leaderboard do not care where a run came
from. The run's trial reaches its kernel as the notebook parameter
`pruning`; `models.pruning` reports each epoch's validation value there and
asks whether to stop.

The study lives in `logs/<grid file stem>.optuna.journal` (Optuna's
`JournalFileBackend`, which works for Dask workers on a shared filesystem
too), so the same command again continues it: `n_runs` counts completed and
pruned trials; a trial left running by a killed sweep, or whose run was
interrupted or failed, is marked failed and its parameters are enqueued to be
run again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence


from runner.errors import ConfigError
from runner.records import COMPLETED, DONE_STATUSES, PRUNED, RUN

from runner.search.space import Dimension, SearchSpec, decode
from runner.search.study import DUPLICATE_ATTR, MAX_DUPLICATE_PROPOSALS, MAX_OVER_BUDGET_PROPOSALS, OVER_BUDGET_ATTR
from runner.search.duration import predict_duration_s

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
        ranking: the grid's ranking metric (the objective told to the study).
        journal: the study's file (handed to each run for pruning).
        pruner: `pruner_config(...)`, handed to each run's kernel; `None`: no pruning.
        started: `time.monotonic()` at the sweep's start (for the budget).
        over_budget: proposals not started because they were predicted not to fit in the budget's time left.
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
    _next: Any = None
    _last: Any = None
    _trials: dict = field(default_factory=dict)
    _index: int = 0
    _exhausted: bool = False

    def done_count(self) -> int:
        """Runs completed or pruned in the study (all sweeps of this grid file); repeated proposals do not count."""
        from optuna.trial import TrialState

        return sum(DUPLICATE_ATTR not in t.user_attrs
                   for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    @property
    def n_runs(self) -> int:
        """The target of finished runs (`search.n_runs`, or the grid size for `sampler: grid`, else 20)."""
        if self.search.n_runs:
            return self.search.n_runs
        if self.search.sampler == "grid":
            return math.prod(len(d.grid_values()) for d in self.dims)
        return 20

    def remaining(self) -> int:
        """Runs still to finish."""
        return max(0, self.n_runs - self.done_count() - len(self._trials))

    def predicted_s(self, run) -> Optional[float]:
        """The predicted duration of `run` (`predict_duration_s` over the records read so far)."""
        return predict_duration_s(run.params, self.found.records)

    @property
    def proposed(self):
        """The run proposed and not started yet, else the last one started, or `None` (asks the study nothing)."""
        return self._last if self._next is None else self._next[0]

    def peek(self):
        """The next run to start, or `None` (enough runs, budget spent, or the space exhausted).

        With a budget, a proposal predicted not to finish in the time left
        (or in `max_run_share` of it) is not run: its trial is failed (user
        attribute `OVER_BUDGET_ATTR`, the predicted seconds; the sampler
        learns nothing from it) and the study is asked for another point, so
        a cheaper configuration can still use the time. After
        `MAX_OVER_BUDGET_PROPOSALS` such proposals in a row, or once the
        budget is spent, no more runs start.
        """
        over_budget = 0
        while True:
            if self._next is None and not self._exhausted and self.remaining() > 0:
                self._next = self._propose()
            if self._next is None or self.search.budget_s is None:
                break
            run, trial = self._next
            predicted = self.predicted_s(run) or 0.0
            left = self.search.budget_s - (time.monotonic() - self.started)
            limit = left * (self.search.max_run_share or 1.0)
            if predicted <= limit:
                break
            trial.set_user_attr(OVER_BUDGET_ATTR, round(predicted, 1))
            self._fail(trial)
            self._next = None
            over_budget += 1
            self.over_budget += 1
            if left <= 0 or over_budget >= MAX_OVER_BUDGET_PROPOSALS:
                self.notes.append(f"budget: {max(0, left):.0f} s are left and the last {over_budget} proposed runs "
                                  f"are predicted to take longer than {max(0, limit):.0f} s (the last "
                                  f"{predicted:.0f} s); no more runs start")
                self._exhausted = True
                break
        return None if self._next is None else self._next[0]

    def pop(self):
        """The run `peek` returned, now running."""
        run, trial = self._next
        self._next, self._last = None, run
        self._trials[run.config_hash] = trial
        return run

    def _propose(self):
        from optuna.trial import TrialState

        done = {rec.config_hash: rec for rec in self.found.records
                if rec.kind == RUN and rec.status in DONE_STATUSES}
        for _ in range(MAX_DUPLICATE_PROPOSALS):
            trial = self.study.ask({d.name: d.distribution() for d in self.dims})
            point = {name: decode(value) for name, value in trial.params.items()}
            run, errors = self.builder.build(f"trial {trial.number}", point, index=self._index)
            if errors:  # only reachable if a choice valid at its bounds is invalid inside them
                self._tell(trial, state=TrialState.FAIL)
                raise ConfigError("\n".join(errors))
            if run.config_hash in done:  # proposed again: tell the study what that run gave
                rec = done[run.config_hash]
                trial.set_user_attr(DUPLICATE_ATTR, rec.run_id)
                self._tell(trial, self.ranking.value(rec) if rec.status == COMPLETED else None,
                                state=TrialState.COMPLETE if rec.status == COMPLETED else TrialState.PRUNED)
                continue
            if run.config_hash in self._trials:  # running now (a parallel proposal repeated it)
                self._tell(trial, state=TrialState.FAIL)
                continue
            self._index += 1
            trial_info = {"storage": str(self.journal), "study_name": self.study.study_name,
                          "trial_id": trial._trial_id, "trial_number": trial.number,
                          "min_epochs": self.search.min_epochs, "pruner": self.pruner}
            return run.with_trial(trial_info if self.pruner else None), trial
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

    def _fail(self, trial) -> None:
        from optuna.trial import TrialState

        self._tell(trial, state=TrialState.FAIL)

    def finished(self, record) -> None:
        """Tell the study how a run ended: completed (its metric), pruned, or failed (re-enqueued if interrupted)."""
        from optuna.trial import TrialState

        trial = self._trials.pop(record.config_hash, None)
        if trial is None:
            return
        self.found.records.append(record)
        if record.status == COMPLETED and self.ranking.value(record) is not None:
            self._tell(trial, self.ranking.value(record), skip_if_finished=True)
        elif record.status == PRUNED:
            self._tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        else:
            self._tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            if record.status == "interrupted":  # run its configuration again next time
                self.study.enqueue_trial(trial.params)

    def close(self) -> None:
        """Fail a proposed run that never started (its configuration is enqueued again)."""
        if self.over_budget:
            self.notes.append(f"budget: {self.over_budget} proposed runs were not started, predicted not to finish "
                              f"in the time left (trials failed with user attribute {OVER_BUDGET_ATTR})")
        if self._next is not None:
            self._fail(self._next[1])
            self.study.enqueue_trial(self._next[1].params)
            self._next = None
