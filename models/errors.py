"""Errors of the machine-learning pipeline."""


class ModelConfigError(ValueError):
    """A run's parameters or inputs cannot work (bad name, folder, file or size).

    Raised before any training starts; the message echoes the value received
    and what is allowed, so a sweep can report it without a traceback.
    """
