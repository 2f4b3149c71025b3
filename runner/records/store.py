"""Reading and writing run records (`logs/<run_id>.json`) and the pages a sweep writes, atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError

from models.contract import write_json_atomic, write_text_atomic
from runner.errors import FatalError
from runner.records.schema import SCHEMA_VERSION, RunRecord, upgrade_v1

LOGS_DIR = Path("logs")
"""Default folder of the run records, relative to where a command runs (a grid's `logs_dir`, `--logs-dir`)."""
EXPERIMENTS_DIR = Path("experiments")
"""Default parent of the run folders (a grid's `experiments_dir`, `--experiments-dir`)."""
LEADERBOARD_PATH = Path("leaderboard.html")
"""Default leaderboard page (a grid's `leaderboard`, `--leaderboard`/`--out`)."""
TOP_N = 10
"""Default count of configurations (rows) the leaderboard page shows (a grid's `top_n`, `--top-n`)."""

def write_page(path: str | os.PathLike, text: str) -> Path:
    """Write a page the sweep produces (leaderboard, csv, lineage) with `write_text_atomic`.

    Raises:
        FatalError: it cannot be written (disk full, read-only); the previous
            file is left as it was.
    """
    try:
        return write_text_atomic(path, text)
    except OSError as exc:
        raise FatalError(f"cannot write {path}: {exc.strerror or exc}; the previous file is left as it was") from exc


def write_record(record: RunRecord, logs_dir: str | os.PathLike) -> Path:
    """Write `record` to `<logs_dir>/<run_id>.json` atomically.

    Args:
        record: the run record.
        logs_dir: folder of the records; created if missing.

    Returns:
        Path of the written record.

    Raises:
        FatalError: the record cannot be written (read-only folder, disk
            full); no partial file is left and existing records are untouched.
    """
    path = Path(logs_dir) / f"{record.run_id}.json"
    try:
        return write_json_atomic(path, record.model_dump(mode="json"))
    except OSError as exc:
        raise FatalError(f"cannot write run record {path}: {exc}") from exc


def read_record(path: str | os.PathLike) -> RunRecord:
    """Read and validate one run record (schema 1 records are upgraded with `upgrade_v1`).

    Args:
        path: a `logs/<run_id>.json` file.

    Returns:
        The parsed `RunRecord`.

    Raises:
        ValueError: the file is not valid JSON, does not match the schema, or
            has a `schema_version` other than 1 or `SCHEMA_VERSION`.
        OSError: the file cannot be read.
    """
    data = Path(path).read_bytes()
    try:  # the common case, parsed and validated in one pass by pydantic-core
        record = RunRecord.model_validate_json(data)
        if record.schema_version == SCHEMA_VERSION:
            return record
    except ValidationError:
        pass
    try:
        payload = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    version = payload.get("schema_version") if isinstance(payload, dict) else None
    if version not in (1, SCHEMA_VERSION):
        newer = (" (written by a newer version of nbsweep: update this one to read it)"
                 if isinstance(version, int) and version > SCHEMA_VERSION else "")
        raise ValueError(f"{path}: schema_version: got {version!r}, expected 1 or {SCHEMA_VERSION}{newer}")
    try:
        return RunRecord.model_validate(upgrade_v1(payload) if version == 1 else payload)
    except ValidationError as exc:
        raise ValueError(f"{path}: not a run record: {exc}") from exc


