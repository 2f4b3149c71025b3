"""The sweep lock: one sweep (or rerun) at a time writes a logs folder."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from runner.errors import ConfigError

LOCK_NAME = ".sweep.lock"
"""The lock file, in the logs folder."""


@contextlib.contextmanager
def sweep_lock(logs_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<logs_dir>/.sweep.lock` for one sweep at a time.

    The lock is an `fcntl.flock`, released by the kernel when the process
    ends, so a crashed sweep never leaves a stale lock; the file records the
    holder's pid for the message. `flock` locks belong to open files: a
    second open in the same process is refused too.

    Args:
        logs_dir: the logs folder; created if missing.

    Raises:
        ConfigError: another process (or another open in this one) holds the
            lock ("another sweep is running (pid N)").
    """
    logs_dir.mkdir(parents=True, exist_ok=True)
    with open(logs_dir / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            raise ConfigError(f"another sweep is running (pid {handle.read().strip() or '?'}) on "
                              f"{logs_dir}; wait for it or use other logs_dir/experiments_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
