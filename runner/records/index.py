"""A derived index of a logs folder: each record's summary, kept in SQLite beside the JSON records.

Reading and validating 100,000 records (about 1 GB of JSON) takes longer than
a leaderboard may; ranking, the csv and the lineage tree need only a few
fields of each. `read_summaries` keeps those fields, one `RunSummary` per
record, in `<logs_dir>/.records-index.sqlite` (`INDEX_FILE`), and reads the
JSON files only where the index has no current entry for them.

The JSON files stay the source of truth; the index is never trusted over
them:

- an entry is keyed on its file's name, size, modification time (ns) and
  inode; a file whose key differs (changed, replaced atomically, new) is read
  and validated again (`runner.records.store.read_record`), an entry whose
  file is gone is dropped;
- a file modified less than `RACY_WINDOW_NS` before the scan that indexed
  it is read again on the next scan, however equal its key: a file system
  with coarse timestamps could otherwise hide a rewrite of the same size in
  the same tick (git's "racy clean" rule, `Documentation/technical/racy-git.txt`);
- an index written by another layout (`INDEX_VERSION`) or by other code
  (`summary_code_hash`: the code that validates a record and makes its
  summary), or that SQLite cannot read, is rebuilt from the files; one that cannot be written (a
  read-only folder, a locked database) is not kept, and the summaries are
  made from the files in memory;
- anything that needs more than a summary (a run's history, confusion matrix,
  saved files) reads the record itself (`runner.records.query.RecordSet.load`).

An unreadable file is indexed with the reason, as `read_all` reports it, so it
is not parsed again until it changes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import models.contract
import runner.records.schema
import runner.records.store
from models.contract import RANKING_METRICS
from models.hashing import sha256_code
from runner.records.query import RecordSet
from runner.records.schema import RunRecord
from runner.records.store import read_record

INDEX_FILE = ".records-index.sqlite"
"""The index's file name inside the logs folder (hidden; not a `*.json`, so `read_all` never reads it)."""
INDEX_VERSION = 2
"""The layout of `RunSummary` rows (SQLite `PRAGMA user_version`); an index of another version is rebuilt."""
RACY_WINDOW_NS = 2_000_000_000
"""A file modified within this many nanoseconds (2 s, the coarsest common timestamp resolution, FAT's)
before the scan that indexed it is read again by the next scan."""
PARALLEL_MIN_FILES = 5000
"""Files to read at or above which they are read by a pool of processes, one per CPU core (started with
"spawn": a fork of a process with threads, such as a sweep's, may deadlock; each worker's start, about
0.5 s of imports, pays off from a few thousand files)."""
_CHUNK = 500


class Figures(NamedTuple("_Figures", [(name, Optional[float]) for name in RANKING_METRICS])):
    """One split's figures in a summary: a field per `RANKING_METRICS` name (float in [0, 1] or `None`),
    read as `SplitMetrics`' attributes are (without per-class figures or the confusion matrix)."""

    __slots__ = ()


class SummaryTimings(NamedTuple):
    """`train_s`, `eval_s`, `total_s` of a summary (seconds, or `None`), as `RunRecord.timings` has them."""

    train_s: Optional[float]
    eval_s: Optional[float]
    total_s: Optional[float]


class SummaryError(NamedTuple):
    """`ename` and `evalue` of a run that did not complete (`RunRecord.error` without its traceback)."""

    ename: str
    evalue: str


class SummaryWarmStart(NamedTuple):
    """`checkpoint` of a warm start (`RunRecord.warm_start`: which of the parent's weights were loaded)."""

    checkpoint: Optional[str]


_FIELDS = ("run_id", "schema_version", "status", "kind", "name", "group_hash", "rerun_of", "refit_of",
           "parent_run_id", "started_at", "finished_at", "params", "epochs_run", "best_epoch", "best_phase")
_PARTS = ("metrics", "val_metrics", "timings", "paths", "error", "warm_start")


class RunSummary(NamedTuple("_RunSummary", [(name, Any) for name in (*_FIELDS, *_PARTS)])):
    """What ranking, `leaderboard.csv` and the lineage tree read of a record, under `RunRecord`'s names.

    A named tuple (made from an index row in a few microseconds, where validating the record takes
    about 100): its fields are read as a `RunRecord`'s attributes are.

    Attributes:
        run_id, schema_version, status, kind, name, group_hash, rerun_of,
        refit_of, parent_run_id, started_at, finished_at, params,
        epochs_run, best_epoch, best_phase: as in `RunRecord`.
        metrics, val_metrics: `Figures` of the test and validation splits, or `None`.
        timings: `SummaryTimings`.
        paths: `{"html": relative path or None}`: the saved notebook page only
            (`path_of` of any other key is `None`; read the record for those).
        error: `SummaryError`, or `None`.
        warm_start: `SummaryWarmStart`, or `None`.
    """

    __slots__ = ()

    def path_of(self, key: str, logs_dir: str | os.PathLike) -> Optional[Path]:
        """As `RunRecord.path_of`, for `key == "html"`; `None` for any other key.

        Args:
            key: a `RUN_FILES` key.
            logs_dir: the folder of the record.

        Returns:
            The absolute path, or `None`.
        """
        rel = self.paths.get(key)
        return (Path(logs_dir) / rel).resolve() if isinstance(rel, str) and rel else None


_N = len(RANKING_METRICS)
_COLUMNS = (*_FIELDS, "has_metrics", *(f"test_{m}" for m in RANKING_METRICS),
            "has_val_metrics", *(f"val_{m}" for m in RANKING_METRICS), "train_s", "eval_s", "total_s", "html",
            "has_error", "error_ename", "error_evalue", "has_warm_start", "warm_start_checkpoint")
"""The flat columns of a summary (`summary_row`), as the index's `records` table stores them."""


def summary_row(record: RunRecord) -> tuple[Any, ...]:
    """A record's summary as a flat tuple of `_COLUMNS` values (`summary_from_row` reads it back).

    Args:
        record: a validated record.

    Returns:
        The `_FIELDS` values (`params` as the record's dict), then per section
        (test figures, validation figures, error, warm start) a 0/1 flag for
        whether it is there followed by its values (`None` when it is not),
        the timings and the html path.
    """
    def figures(metrics) -> list[Any]:
        return [0, *[None] * _N] if metrics is None else [1, *(getattr(metrics, m) for m in RANKING_METRICS)]

    error, warm = record.error, record.warm_start
    return (*(getattr(record, name) for name in _FIELDS), *figures(record.metrics), *figures(record.val_metrics),
            record.timings.train_s, record.timings.eval_s, record.timings.total_s, record.paths.get("html"),
            *((0, None, None) if error is None else (1, error.ename, error.evalue)),
            *((0, None) if warm is None else (1, warm.checkpoint)))


_M = len(_FIELDS)  # where the test figures' flag is
_V = _M + 1 + _N  # the validation figures' flag
_T = _V + 1 + _N  # the timings


def summary_from_row(row: Sequence[Any]) -> RunSummary:
    """The `RunSummary` of a `summary_row` tuple (its `params` already a dict)."""
    return RunSummary(*row[:_M], Figures(*row[_M + 1:_V]) if row[_M] else None,
                      Figures(*row[_V + 1:_T]) if row[_V] else None, SummaryTimings(*row[_T:_T + 3]),
                      {"html": row[_T + 3]}, SummaryError(row[_T + 5], row[_T + 6]) if row[_T + 4] else None,
                      SummaryWarmStart(row[_T + 8]) if row[_T + 7] else None)


def index_entry(folder: str, name: str) -> tuple[Optional[tuple[Any, ...]], Optional[str]]:
    """Read and validate one record file: `(summary_row, None)`, or `(None, why it is unreadable)`.

    The checks are `runner.records.query.read_all`'s: `read_record` (JSON,
    schema, version) and the `run_id` equal to the file name.

    Args:
        folder: the logs folder.
        name: the file name, `<run_id>.json`.

    Returns:
        The record's `summary_row`, or the reason the file is unreadable.
    """
    path = Path(folder) / name
    try:
        record = read_record(path)
    except (OSError, ValueError) as exc:
        return None, str(exc)
    if record.run_id != path.stem:  # a copied or renamed file: its id is another file's
        return None, f"{path}: run_id {record.run_id} does not match the file name"
    return summary_row(record), None


def _index_chunk(folder: str, names: list[str]) -> list[tuple[Optional[tuple[Any, ...]], Optional[str]]]:
    return [index_entry(folder, name) for name in names]


def _read_files(folder: str, names: list[str]) -> list[tuple[Optional[tuple[Any, ...]], Optional[str]]]:
    """`index_entry` of each name, in order; in a process pool when there are many and more than one core."""
    workers = min(os.cpu_count() or 1, 8)
    if len(names) < PARALLEL_MIN_FILES or workers < 2:
        return _index_chunk(folder, names)
    chunks = [names[i:i + _CHUNK] for i in range(0, len(names), _CHUNK)]
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            return [entry for chunk in pool.map(_index_chunk, [folder] * len(chunks), chunks) for entry in chunk]
    except (OSError, RuntimeError):  # no processes to be had (a sandbox, a limit): read them here
        return _index_chunk(folder, names)


_PARAMS = _FIELDS.index("params")
_KEY = ("file", "size", "mtime_ns", "ino", "indexed_ns", "problem")
_SCHEMA = (f"CREATE TABLE records ({', '.join(_KEY)}, {', '.join(_COLUMNS)}, PRIMARY KEY (file))",
           "CREATE TABLE params (id INTEGER PRIMARY KEY, name TEXT, value TEXT, UNIQUE (name, value))",
           "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
"""`records`: one row per file: its key, when it was indexed and why it is unreadable (`problem`, the summary
columns then empty), or its `summary_row` with `params` as a JSON list of `params` ids; `params`: each distinct
(name, JSON value) once, so that a value shared by thousands of runs is stored and decoded once; `meta`: the
`summary_code_hash` of the code that wrote it."""


def summary_code_hash() -> str:
    """The code a summary depends on, hashed: the record's schema and its reading (`runner.records.schema`,
    `runner.records.store`, `models.contract`) and this module (`models.hashing.sha256_code` of each: a
    docstring or comment edit leaves it unchanged).

    Returns:
        64 lowercase hex digits.
    """
    modules = (models.contract, runner.records.schema, runner.records.store, __import__(__name__))
    parts = [sha256_code(Path(module.__file__).read_text(encoding="utf-8")) for module in modules]
    return sha256_code(repr(parts))


def _connect(index_path: Path) -> Optional[sqlite3.Connection]:
    """The index database of the current `INDEX_VERSION` and `summary_code_hash`, or `None` when it cannot be
    used now (a read-only folder, or locked by another process for longer than the 10 s timeout).

    An index of another version or code is emptied and made again; a file that is not an SQLite database
    (damaged, or something else) is deleted and made again.
    """
    code = summary_code_hash()
    for attempt in range(2):
        try:
            db = sqlite3.connect(index_path, timeout=10)
        except sqlite3.Error:
            return None
        try:
            try:
                current = db.execute("PRAGMA user_version").fetchone()[0] == INDEX_VERSION and db.execute(
                    "SELECT value FROM meta WHERE key = 'code'").fetchone() == (code,)
            except sqlite3.OperationalError:  # no `meta` table: an empty file or an index of an older layout
                current = False
            if not current:
                with db:
                    for table in ("records", "params", "meta"):
                        db.execute(f"DROP TABLE IF EXISTS {table}")
                    for statement in _SCHEMA:
                        db.execute(statement)
                    db.execute("INSERT INTO meta VALUES ('code', ?)", (code,))
                    db.execute(f"PRAGMA user_version = {INDEX_VERSION}")
            return db
        except sqlite3.OperationalError:  # read-only, locked, disk full: no index this time
            db.close()
            return None
        except sqlite3.DatabaseError:  # not a database: it is derived, so start again
            db.close()
            if attempt == 1:
                return None
            try:
                index_path.unlink()
            except OSError:
                return None
    return None


class _ParamTable:
    """The `params` table in memory: (name, JSON value) <-> id, and each id's decoded value."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.ids: dict[tuple[str, str], int] = {}
        self.names: dict[int, str] = {}
        self.values: dict[int, Any] = {}
        rows = db.execute("SELECT id, name, value FROM params").fetchall()
        decoded = json.loads("[" + ",".join(value for _, _, value in rows) + "]")
        for (pid, name, value), parsed in zip(rows, decoded):
            self.ids[(name, value)] = pid
            self.names[pid] = name
            self.values[pid] = parsed

    def encode(self, params: dict[str, Any]) -> list[int]:
        """The ids of `params`' (name, value) pairs, in its order (new pairs are inserted)."""
        out = []
        for name, value in params.items():
            key = (name, json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False))
            pid = self.ids.get(key)
            if pid is None:
                pid = self.db.execute("INSERT INTO params (name, value) VALUES (?, ?)", key).lastrowid
                self.ids[key], self.names[pid], self.values[pid] = pid, name, value
            out.append(pid)
        return out

    def decode(self, ids: list[int]) -> dict[str, Any]:
        """The parameters of `encode`'s ids (equal values are one shared object: treat them as read-only)."""
        return dict(zip(map(self.names.__getitem__, ids), map(self.values.__getitem__, ids)))


def read_summaries(logs_dir: str | os.PathLike, *, use_index: bool = True) -> RecordSet:
    """Every `*.json` record of `logs_dir` as a `RunSummary`, in file-name (= run id) order, through the index.

    Args:
        logs_dir: folder of the records; a missing folder holds no records (and gets no index).
        use_index: keep and use `<logs_dir>/INDEX_FILE`. Defaults to `True`;
            `False` reads every file (what the index saves).

    Returns:
        A `RecordSet` whose `records` are `RunSummary`s (`RecordSet.load`
        reads one's full record) and whose `unreadable` maps file names to
        the reason, exactly as `runner.records.query.read_all` would report them.
    """
    folder = Path(logs_dir).resolve()
    found = RecordSet(folder)
    if not folder.is_dir():
        return found
    scan_ns = time.time_ns()
    stats, problems = _scan_folder(folder)
    db = _connect(folder / INDEX_FILE) if use_index else None
    current = _read_index(db, stats, problems) if db is not None else None
    if current is None and db is not None:  # SQLite cannot read it: every file is read, nothing is kept
        db.close()
        db = None
    table, cached, gone = current if current is not None else (None, [], [])
    known = {row[0] for row in cached}
    stale = sorted(name for name in stats if name not in known and name not in problems)
    fresh: dict[str, tuple[Any, ...]] = {}
    for name, (row, problem) in zip(stale, _read_files(str(folder), stale)):
        if row is None:
            problems[name] = problem
        else:
            fresh[name] = row
    if db is not None:
        _update_index(db, table, gone, [(name, stats[name], fresh.get(name), problems.get(name)) for name in stale],
                      scan_ns)
    rows = _decode_cached(cached, table)
    rows.update(fresh)
    found.records = [summary_from_row(rows[name]) for name in sorted(rows)]
    found.unreadable = {name: problems[name] for name in sorted(problems)}
    return found


def _scan_folder(folder: Path) -> tuple[dict[str, tuple[int, int, int]], dict[str, str]]:
    """The `*.json` files of `folder`: `({name: (size, mtime_ns, inode)}, {name: why it cannot be stat'ed})`."""
    stats: dict[str, tuple[int, int, int]] = {}
    problems: dict[str, str] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(".json"):
                try:
                    st = entry.stat()
                except OSError as exc:
                    problems[entry.name] = str(exc)
                    continue
                if entry.is_file():
                    stats[entry.name] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return stats, problems


def _read_index(db: sqlite3.Connection, stats: dict[str, tuple[int, int, int]],
                problems: dict[str, str]) -> Optional[tuple[_ParamTable, list[tuple[Any, ...]], list[str]]]:
    """The index's current entries: `(params table, cached rows, names of files gone)`, or `None` when SQLite
    cannot read it.

    A row is current when its file's key (`stats`) is unchanged and the file was modified more than
    `RACY_WINDOW_NS` before it was indexed; a current unreadable file's reason is added to `problems`.
    Cached rows are `_KEY` then `_COLUMNS` values, `params` still a JSON list of `params` ids.
    """
    cached: list[tuple[Any, ...]] = []
    gone: list[str] = []
    found_problems: dict[str, str] = {}
    try:
        table = _ParamTable(db)
        for row in db.execute(f"SELECT {', '.join(_KEY)}, {', '.join(_COLUMNS)} FROM records"):
            name, size, mtime_ns, ino, indexed_ns, problem = row[:6]
            if name not in stats:
                gone.append(name)
            elif stats[name] == (size, mtime_ns, ino) and mtime_ns < indexed_ns - RACY_WINDOW_NS:
                if problem is not None:
                    found_problems[name] = problem
                else:
                    cached.append(row)
    except sqlite3.Error:
        return None
    problems.update(found_problems)
    return table, cached, gone


def _make_index_row(name: str, stat: tuple[int, int, int], row: Optional[tuple[Any, ...]], problem: Optional[str],
               scan_ns: int, table: _ParamTable) -> tuple[Any, ...]:
    """The `records` row of a file read in this scan: its key, then its `summary_row` (`params` as ids) or,
    for an unreadable file (`row` `None`), why and empty columns."""
    if row is None:
        return (name, *stat, scan_ns, problem, *(None,) * len(_COLUMNS))
    ids = json.dumps(table.encode(row[_PARAMS]), separators=(",", ":"))
    return (name, *stat, scan_ns, None, *row[:_PARAMS], ids, *row[_PARAMS + 1:])


def _update_index(db: sqlite3.Connection, table: _ParamTable, gone: list[str],
                  read: list[tuple[str, tuple[int, int, int], Optional[tuple[Any, ...]], Optional[str]]],
                  scan_ns: int) -> None:
    """Drop the entries of the files `gone`, write those of the files `read` in this scan (`_make_index_row` of
    each `(name, stat, summary_row or None, problem or None)`), in one transaction, and close `db`.

    An index that cannot be written (read-only folder, locked, disk full) is left as it was: the summaries
    came from the files anyway.
    """
    try:
        with db:
            db.executemany("DELETE FROM records WHERE file = ?", [(name,) for name in gone])
            entries = [_make_index_row(*each, scan_ns, table) for each in read]
            marks = ", ".join("?" * (len(_KEY) + len(_COLUMNS)))
            db.executemany(f"INSERT OR REPLACE INTO records VALUES ({marks})", entries)
    except sqlite3.Error:
        pass
    finally:
        db.close()


def _decode_cached(cached: list[tuple[Any, ...]], table: Optional[_ParamTable]) -> dict[str, tuple[Any, ...]]:
    """File name -> `summary_row` of each cached row (`_read_index`), its parameters decoded.

    The parameter ids of all rows are parsed in one `json.loads`: far faster than one call per row.
    """
    skip = len(_KEY)
    ids = json.loads("[" + ",".join(row[skip + _PARAMS] for row in cached) + "]")
    return {row[0]: (*row[skip:skip + _PARAMS], table.decode(pids), *row[skip + _PARAMS + 1:])
            for row, pids in zip(cached, ids)}
