"""The project's exception root, and the machine-learning pipeline's own error.

`NbsweepError` is the root of every error the project raises on purpose. It
lives here, in `models/`, because `models/` must not import `runner/` (the
pipeline runs inside a notebook kernel and on the predict path, and knows
nothing about sweeps), while `runner/` imports `models/`: so `runner.errors`
subclasses it, and one `except NbsweepError` catches both.
"""


class NbsweepError(Exception):
    """Root of every error raised on purpose by `models` and `runner`."""


class ModelConfigError(NbsweepError, ValueError):
    """A run's parameters or inputs cannot work (bad name, folder, file or size).

    Raised before any training starts; the message echoes the value received
    and what is allowed, so a sweep can report it without a traceback.
    """
