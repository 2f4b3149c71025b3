"""One way to query run records: read them all, find one, rank them by a metric.

Everything that chooses runs goes through here: the leaderboard (rank, top
N), `warm_start: best` and explicit parents (`find`), ensembles (`top`),
`load_run` / predict (`find`) and the MLflow export (`read_all`).

Ranking metrics are validated once, by `parse_metric`, into a `Ranking`:

- `weighted_recall` (any of `RANKING_METRICS`) or `val_weighted_recall`: the
  **validation** split, what runs are selected by. A schema-1 record, which
  has no validation metrics, ranks by its test figure instead and is marked
  so (`Ranking.split_of` gives `"test (schema 1)"`).
- `test_weighted_recall`: the test split (today's behaviour before
  validation metrics; choosing on the test split makes its figure optimistic).
"""

from __future__ import annotations

import gc
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Optional, Sequence

from models.names import DEFAULT_METRIC
from runner.errors import ConfigError
from runner.records.store import LOGS_DIR
from runner.records import (
    COMPLETED, KINDS, RANKING_METRICS, RunLoadError, RunRecord, SplitMetrics, read_record,
)
from runner.records.groups import Group, finite_figure, group_ranked

SPLIT_PREFIXES = {"val_": "val", "test_": "test"}
METRIC_NAMES = (*RANKING_METRICS, *(f"{prefix}{m}" for prefix in SPLIT_PREFIXES for m in RANKING_METRICS))
"""Every name `parse_metric` accepts."""


@dataclass(frozen=True)
class Ranking:
    """A validated ranking metric.

    Attributes:
        name: the name as given (`"weighted_recall"`, `"test_accuracy"`...).
        metric: the `RANKING_METRICS` key (`"weighted_recall"`).
        split: `"val"` or `"test"`: the split that ranks.
    """

    name: str
    metric: str
    split: Literal["val", "test"]

    @property
    def column(self) -> str:
        """The column the value is shown in: `val_<metric>` or `test_<metric>`."""
        return f"{self.split}_{self.metric}"

    def _source(self, record: RunRecord) -> tuple[Optional[SplitMetrics], str]:
        if self.split == "test":
            return record.metrics, "test"
        if record.val_metrics is None and record.schema_version == 1:
            return record.metrics, "test (schema 1)"
        return record.val_metrics, "val"

    def value(self, record: RunRecord) -> Optional[float]:
        """The record's figure for this metric, or `None` when it has none.

        Args:
            record: a run record.

        Returns:
            A float in [0, 1] from `val_metrics` (validation split; for a
            schema-1 record, `metrics`, the test split) or, for a `test_`
            ranking, from `metrics`; `None` if that section is missing or
            the figure is not a finite number (`NaN`, `Infinity`:
            `runner.records.groups.finite_figure`, `not_finite`).
        """
        metrics, _ = self._source(record)
        return None if metrics is None else finite_figure(getattr(metrics, self.metric))

    def not_finite(self, record: RunRecord) -> Optional[str]:
        """Why a record that holds this metric has no figure for it: the value is not a finite number.

        Args:
            record: a run record.

        Returns:
            E.g. `"val_weighted_recall is Infinity in its record, not a finite number: not ranked"`
            (the value as JSON writes it: `NaN`, `Infinity`, `-Infinity`); `None` when the figure is
            finite or its section is missing.
        """
        metrics, split = self._source(record)
        if metrics is None:
            return None
        raw = getattr(metrics, self.metric)
        if finite_figure(raw) is not None:
            return None
        # a record's metrics are required floats: a section without one is a summary read back from the records
        # index (`runner.records.index`), where SQLite keeps a NaN as NULL
        shown = "NaN" if raw is None else json.dumps(raw)
        column = f"{'val' if split == 'val' else 'test'}_{self.metric}"
        return f"{column} is {shown} in its record, not a finite number: not ranked"

    def split_of(self, record: RunRecord) -> str:
        """Which split `value(record)` comes from: `"val"`, `"test"` or `"test (schema 1)"`."""
        return self._source(record)[1]


def parse_metric(name: str, where: str = "metric") -> Ranking:
    """Validate a ranking metric name.

    Args:
        name: one of `METRIC_NAMES`: a `RANKING_METRICS` key (validation
            split), or it with a `val_` or `test_` prefix.
        where: what the message names (a grid key, a CLI option). Defaults
            to `"metric"`.

    Returns:
        The `Ranking`.

    Raises:
        ConfigError: `name` is not one of `METRIC_NAMES`.
    """
    if isinstance(name, str):
        for prefix, split in SPLIT_PREFIXES.items():
            if name.startswith(prefix) and name[len(prefix):] in RANKING_METRICS:
                return Ranking(name, name[len(prefix):], split)
        if name in RANKING_METRICS:
            return Ranking(name, name, "val")
    raise ConfigError(f"{where}: got {name!r}, expected one of {', '.join(RANKING_METRICS)} "
                      f"(validation split), or one of them prefixed with val_ or test_")


@dataclass
class RecordSet:
    """The records of one logs folder, read once.

    Attributes:
        logs_dir: the folder (absolute).
        records: the readable records, in run-id order: `RunRecord`s (`read_all`), or the
            `runner.records.index.RunSummary`s of `runner.records.index.read_summaries` (`load` reads one's record).
        unreadable: file name -> why it could not be read.
    """

    logs_dir: Path
    records: list[RunRecord] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)

    def path_of(self, record: RunRecord) -> Path:
        """The record's file, `<logs_dir>/<run_id>.json`."""
        return self.logs_dir / f"{record.run_id}.json"

    def unreadable_ids(self) -> list[str]:
        """The run ids (file stems) of the unreadable records."""
        return [Path(name).stem for name in self.unreadable]

    def unreadable_names(self) -> dict[str, str]:
        """The run `name` each unreadable record gives itself, where its file still parses as JSON (a record of a
        newer schema, or one that breaks this schema elsewhere): file name -> name. Read from the files now.

        Returns:
            File names (keys of `unreadable`) -> the `name` string of their JSON; files without one, or not
            JSON, are left out.
        """
        names = {}
        for file_name in self.unreadable:
            try:
                payload = json.loads((self.logs_dir / file_name).read_bytes())
            except (OSError, ValueError):
                continue
            name = payload.get("name") if isinstance(payload, dict) else None
            if isinstance(name, str) and name:
                names[file_name] = name
        return names

    def by_id(self) -> dict[str, RunRecord]:
        """Run id -> record."""
        return {rec.run_id: rec for rec in self.records}

    def load(self, record) -> RunRecord:
        """The full record of one of `records`: itself if it is a `RunRecord`, else (a summary from
        `runner.records.index.read_summaries`) its file read and validated again.

        Args:
            record: a `RunRecord`, or anything with its `run_id` (a `RunSummary`).

        Returns:
            The `RunRecord`.

        Raises:
            RunLoadError: its file cannot be read now, is no longer a valid record, or holds another run id
                (it changed since it was indexed).
        """
        if isinstance(record, RunRecord):
            return record
        path = self.path_of(record)
        try:
            full = read_record(path)
        except (OSError, ValueError) as exc:
            raise RunLoadError(str(exc)) from exc
        if full.run_id != record.run_id:
            raise RunLoadError(f"{path}: run_id {full.run_id} does not match the file name")
        return full


def read_all(logs_dir: str | os.PathLike) -> RecordSet:
    """Read every `*.json` record in `logs_dir`, in file-name (= run id) order.

    Args:
        logs_dir: folder of the records; a missing folder holds no records.

    Returns:
        A `RecordSet`; files that could not be read, or whose `run_id` is not
        their file name, are in `unreadable` with the reason.
    """
    folder = Path(logs_dir).resolve()
    found = RecordSet(folder)
    names = sorted(entry.name for entry in os.scandir(folder) if entry.name.endswith(".json")) if folder.is_dir() else []
    paused = gc.isenabled()
    gc.disable()  # thousands of small objects and no cycles: the collector would only slow reading down
    try:
        _read_into(found, folder, names)
    finally:
        if paused:
            gc.enable()
    return found


def _read_into(found: RecordSet, folder: Path, names: list[str]) -> None:
    for path in (folder / name for name in names):
        try:
            record = read_record(path)
        except (OSError, ValueError) as exc:
            found.unreadable[path.name] = str(exc)
            continue
        if record.run_id != path.stem:  # a copied or renamed file: its id is another file's
            found.unreadable[path.name] = f"{path}: run_id {record.run_id} does not match the file name"
            continue
        found.records.append(record)


def rank(records: Iterable[RunRecord], ranking: Ranking, *, kinds: Sequence[str] = KINDS,
         statuses: Sequence[str] = (COMPLETED,),
         accept: Optional[Callable[[RunRecord], bool]] = None) -> list[RunRecord]:
    """Records sorted by `ranking`, best first; ties keep run-id order.

    Args:
        records: run records.
        ranking: from `parse_metric`.
        kinds: record kinds kept. Defaults to all (`KINDS`).
        statuses: statuses kept. Defaults to `(COMPLETED,)`: pruned,
            failed and interrupted runs never rank unless asked for.
        accept: a further filter. Defaults to `None` (all).

    Returns:
        The kept records that have a value for `ranking` (`Ranking.value`: a
        finite number; a `NaN` or `Infinity` never ranks), best first. A refit
        (`RunRecord.refit_of`) never ranks: it trained on the validation split, and
        was chosen by the ranking itself.
    """
    kept = [rec for rec in records if rec.kind in kinds and rec.status in statuses and rec.refit_of is None
            and ranking.value(rec) is not None and (accept is None or accept(rec))]
    kept.sort(key=lambda rec: rec.run_id)
    return sorted(kept, key=ranking.value, reverse=True)  # stable: ties keep run-id order


def rank_groups(records: Iterable[RunRecord], ranking: Ranking, **filters) -> list[Group]:
    """The ranked records (`rank(records, ranking, **filters)`) as groups of repeats, best mean first
    (`runner.records.groups.group_ranked`; a run without repeats is a group of one)."""
    return group_ranked(rank(records, ranking, **filters), ranking)


def top(records: Iterable[RunRecord], ranking: Ranking, n: Optional[int], **filters) -> list[RunRecord]:
    """The first `n` of `rank(records, ranking, **filters)` (all when `n` is `None`)."""
    ranked = rank(records, ranking, **filters)
    return ranked if n is None else ranked[:n]


def find(ref: str, found: RecordSet, *, ranking: Optional[Ranking] = None, kinds: Sequence[str] = KINDS,
         accept: Optional[Callable[[RunRecord], bool]] = None, what: str = "run") -> RunRecord:
    """The record that `ref` names.

    Resolution order: `"best"`; an exact run id; a run's `name`; a unique
    run-id prefix. `"best"` is the best configuration by the mean of its
    repeats (`rank_groups`), represented by its best run on the validation
    split; without repeats, the best run.

    Args:
        ref: `"best"`, a run id, a run name, or a unique prefix of a run id.
        found: the records (`read_all`).
        ranking: what `"best"` ranks by. Defaults to `parse_metric(models.names.DEFAULT_METRIC)`.
        kinds: kinds `"best"` chooses from. Defaults to all.
        accept: a further filter of what `"best"` chooses from. Defaults to `None`.
        what: the name in messages. Defaults to `"run"`.

    Returns:
        The record (`found.path_of(record)` is its file).

    Raises:
        RunLoadError: nothing matches, the prefix is ambiguous, or there is
            no completed run for `"best"`. When no readable record matches
            but an unreadable one does (`found.unreadable`: bad JSON, a newer
            schema), by its id or by the `name` in its JSON (`RecordSet.unreadable_names`), the message
            names that file and why, not "no record".
    """
    ref = str(ref)
    if ref == "best":
        ranking = ranking or parse_metric(DEFAULT_METRIC)
        best = rank_groups(found.records, ranking, kinds=kinds, accept=accept)
        if not best:
            raise RunLoadError(f"best: no completed{' matching' if accept else ''} run with "
                               f"{ranking.column} in {found.logs_dir}")
        return best[0].best
    if not ref or "/" in ref or "\\" in ref or ref.startswith("."):
        raise RunLoadError(f"{what}: got {ref!r}, expected a run id, a unique prefix, a run name, "
                           f"'best' or a record path")
    by_id = found.by_id()
    if ref in by_id:
        return by_id[ref]
    named = [rec for rec in found.records if rec.name == ref]
    if named:
        return named[-1]  # the latest run of that name
    matches = [rec for rec in found.records if rec.run_id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        named_unreadable = {file for file, name in found.unreadable_names().items() if name == ref}
        unreadable = {name: why for name, why in found.unreadable.items()
                      if Path(name).stem.startswith(ref) or name in named_unreadable}
        if unreadable:  # there, but not readable: say so, never "no record"
            name, why = next(iter(unreadable.items()))
            more = f" (and {len(unreadable) - 1} more unreadable records match)" if len(unreadable) > 1 else ""
            raise RunLoadError(f"{what}: the record for {ref!r}, {name} in {found.logs_dir}, exists but cannot be "
                               f"read: {why}{more}")
        raise RunLoadError(f"{what}: no record for {ref!r} in {found.logs_dir}")
    ids = [rec.run_id for rec in matches]
    raise RunLoadError(f"{what}: {ref!r} matches {len(ids)} runs ({', '.join(ids[:5])}"
                       f"{', ...' if len(ids) > 5 else ''}); give more of the id")


def find_path(ref: str | os.PathLike, logs_dir: str | os.PathLike = LOGS_DIR, **options) -> tuple[Path, RunRecord]:
    """`find` for the command line and `load_run`: `ref` may also be a record file.

    Args:
        ref: a record path (`logs/<run_id>.json`), or a reference as for `find`.
        logs_dir: folder of the records. Defaults to `runner.records.LOGS_DIR`.
        **options: passed to `find`.

    Returns:
        `(record path, record)`.

    Raises:
        RunLoadError: as `find`, the record file cannot be read, or
            `logs_dir` does not exist (`require_logs_dir`).
    """
    text = str(ref)
    if text.endswith(".json") and Path(text).is_file():
        try:
            return Path(text).resolve(), read_record(text)
        except (OSError, ValueError) as exc:
            raise RunLoadError(str(exc)) from exc
    require_logs_dir(logs_dir, exc=RunLoadError)
    found = read_all(logs_dir)
    record = find(text, found, **options)
    return found.path_of(record), record


def require_logs_dir(logs_dir: str | os.PathLike, option: str = "--logs-dir", exc: type = ConfigError) -> Path:
    """The folder of run records a command reads, which must exist (a typo must not read as "no runs").

    Args:
        logs_dir: the folder.
        option: what the message names. Defaults to `"--logs-dir"`.
        exc: the exception to raise. Defaults to `ConfigError`.

    Returns:
        `logs_dir` as a `Path`.

    Raises:
        ConfigError: (or `exc`) the folder does not exist, or is a file.
    """
    folder = Path(logs_dir)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise exc(f"{option}: {folder} {what}; expected the folder of the run records (a grid's logs_dir)")
    return folder
