"""The runner's exceptions: one root, subclasses that encode policy.

Modelled on keras-tuner's errors: a config error stops everything before any
run starts, a run error is recorded and the sweep goes on, a fatal error stops
the sweep after what is already recorded has been kept.
"""


class RunnerError(Exception):
    """Root of every error raised on purpose by `runner`."""


class ConfigError(RunnerError, ValueError):
    """Invalid grid file, parameter or CLI option; nothing has run.

    The CLI prints the message without a traceback and exits with code 2.
    """


class RunFailedError(RunnerError):
    """One run failed; it is recorded with status `failed` and the sweep goes on."""


class FatalError(RunnerError):
    """The sweep cannot go on (e.g. a record cannot be written); it stops."""
