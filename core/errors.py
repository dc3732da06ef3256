"""Errors that are the user's to fix.

Anything raised as a `UserError` reaches the user as one line (the CLI prints it without a
traceback, the window shows it in a dialog); every other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input: config, dataset, model path, command line."""


class ConfigError(UserError):
    """The config file or an override is invalid."""


class DataError(UserError):
    """The dataset cannot be read or has bad rows."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        where = path or ""
        if path and line is not None:
            where = f"{path}:{line}"
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.line = line


class ModelLoadError(UserError):
    """The model cannot be found or loaded as configured."""


class OutOfMemoryStop(UserError):
    """Training stopped because it cannot fit in GPU memory even at the smallest settings."""
