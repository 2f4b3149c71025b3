"""The runner's exceptions: subclasses of the project's one root, that encode policy.

The root, `models.errors.NbsweepError`, lives in `models/` (which must not
import `runner/`); `RunnerError` is the runner's branch of it. Modelled on
keras-tuner's errors: a config error stops everything before any run starts,
a fatal error stops the sweep after what is already recorded has been kept.
A run that fails is not an exception here: it is recorded with status
`failed` (`runner.core.execute`) and the sweep goes on.
"""

from models.errors import NbsweepError


class RunnerError(NbsweepError):
    """Root of every error raised on purpose by `runner`."""


class ConfigError(RunnerError, ValueError):
    """Invalid grid file, parameter or CLI option; nothing has run.

    The CLI prints the message without a traceback and exits with code 2.
    """


class FatalError(RunnerError):
    """The sweep cannot go on (e.g. a record cannot be written); it stops."""
