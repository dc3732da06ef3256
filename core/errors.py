"""Errors that are the user's to fix, and the typed cause every failed run carries.

Anything raised as a `UserError` reaches the user as one line (the CLI prints it without a
traceback, the window shows it in a dialog); every other exception is a bug and keeps its
traceback. A failed run carries a `FailureCause`, never a message to search: the CLI's exit code
and the window's reaction are read off the cause.
"""

from __future__ import annotations

from enum import Enum


class FailureCause(str, Enum):
    """Why a run did not finish, as data (the JSON value is the enum's value)."""

    USER = "user"  # a setting, path or command-line mistake
    DATA = "data"  # the dataset cannot be read or has bad rows
    OOM = "oom"  # out of GPU memory even at the smallest settings allowed
    CRASH = "crash"  # a bug or an unexpected library error: keeps its traceback
    NAN = "nan"  # the loss or the gradients became NaN/Inf: training diverged
    DISK = "disk"  # the output folder cannot be written, or the disk is full

    @property
    def is_users_to_fix(self) -> bool:
        return self is not FailureCause.CRASH

    @property
    def run_status(self) -> str:
        """The run folder status a failure of this cause leaves: an out-of-memory stop is resumable."""
        return "stopped" if self is FailureCause.OOM else "failed"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self]


EXIT_CODES = {FailureCause.USER: 2, FailureCause.DATA: 2, FailureCause.OOM: 3, FailureCause.CRASH: 1,
              FailureCause.NAN: 4, FailureCause.DISK: 5}


class UserError(Exception):
    """A mistake in the user's input: config, dataset, model path, command line."""

    cause = FailureCause.USER

    def __init__(self, message: str = "", *args: object):
        super().__init__(one_line(str(message)), *args)


def one_line(text: str) -> str:
    """Control characters (a newline inside a key, a file name or a row) shown escaped: a message is one line."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class ConfigError(UserError):
    """The config file or an override is invalid."""


class DataError(UserError):
    """The dataset cannot be read or has bad rows."""

    cause = FailureCause.DATA

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

    cause = FailureCause.OOM


class DivergedError(UserError):
    """The loss or the gradients became NaN/Inf; the message names the likely cause and the fix."""

    cause = FailureCause.NAN


class DiskError(UserError):
    """The run folder cannot be written: no permission, or not enough free space."""

    cause = FailureCause.DISK


def cause_of(exc: BaseException) -> FailureCause:
    return exc.cause if isinstance(exc, UserError) else FailureCause.CRASH
