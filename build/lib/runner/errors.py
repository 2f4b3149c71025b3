"""The runner's exceptions: subclasses of the project's one root, that encode policy.

The root, `models.errors.NbsweepError`, lives in `models/` (which must not
import `runner/`); `RunnerError` is the runner's branch of it. Modelled on
keras-tuner's errors: a config error stops everything before any run starts,
a fatal error stops the sweep after what is already recorded has been kept.
A run that fails is not an exception here: it is recorded with status
`failed` (`runner.core.execute`) and the sweep goes on.
"""

import reprlib
from typing import Any

from models.errors import NbsweepError

SHOWN_CHARS = 200
"""About how many characters of a value a message echoes (`shorten`)."""


class RunnerError(NbsweepError):
    """Root of every error raised on purpose by `runner`."""


class ConfigError(RunnerError, ValueError):
    """Invalid grid file, parameter or CLI option; nothing has run.

    The CLI prints the message without a traceback and exits with code 2.
    """


class FatalError(RunnerError):
    """The sweep cannot go on (e.g. a record cannot be written); it stops."""


def shorten(value: Any, limit: int = SHOWN_CHARS, *, quote: bool = True) -> str:
    """A value as a message echoes it: its `repr`, at most about `limit` characters.

    The one way every validation message shows what it received, so a
    10,000-character `name` or a deeply nested value costs a line, not a
    screenful (`reprlib` shortens without building the whole `repr`). A
    string cut short says how long it was.

    Args:
        value: anything.
        limit: characters kept, about. Defaults to `SHOWN_CHARS`.
        quote: `repr` the value (`True`, the default), or show a string as
            it is (a key path, a file name), cut the same way.

    Returns:
        E.g. `'aaaa...aaaa' (10000 characters)`, `{'a': [1, 1, ...]}`, `0.5`.
    """
    if not quote and isinstance(value, str):
        text = value if len(value) <= limit else f"{value[:limit // 2]}...{value[-limit // 4:]}"
    else:
        shown = reprlib.Repr()
        shown.maxstring = shown.maxother = limit
        shown.maxlist = shown.maxtuple = shown.maxset = shown.maxfrozenset = shown.maxdict = shown.maxdeque = 12
        shown.maxlevel, shown.maxlong = 4, 60
        text = shown.repr(value)
        if len(text) > limit + limit // 2:  # many short items, each within its own limit
            text = text[:limit] + "..."
    if isinstance(value, str) and len(value) > limit:
        text += f" ({len(value)} characters)"
    return text
