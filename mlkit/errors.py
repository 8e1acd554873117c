"""Errors by meaning: what went wrong, not which module noticed.

One root, :class:`MlkitError`. Each family maps to one exit code of the command line, and
each class also inherits the builtin it means, so ``except ValueError`` or ``except
FileNotFoundError`` keep working for code that knows nothing of mlkit:

========================  =====  ======================================================
family                    exit   meaning
========================  =====  ======================================================
:class:`UsageError`       2      bad input: a parameter, a name, a file, a request that
                                 does not fit what exists; the message says the fix
:class:`CheckFailedError` 1      a run or a check ran and failed (a gate, a reproduction)
:class:`UnsafeArtifactError` 3   an artifact is unsafe or corrupt (weights that fail their
                                 checksum or need pickle): never loaded, never trusted
:class:`ServiceUnavailableError` 4  a database or storage cannot be reached
========================  =====  ======================================================

Every message has one shape: what was wrong, what was given, and the fix.
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNSAFE = 3
EXIT_UNAVAILABLE = 4


class MlkitError(Exception):
    """Root of every error mlkit raises on purpose."""

    exit_code = EXIT_FAILED


# --- bad input: exit 2 ----------------------------------------------------------------


class UsageError(MlkitError):
    """Bad input: the request cannot be done as given; the message says what to pass."""

    exit_code = EXIT_USAGE


class ParameterError(UsageError, ValueError):
    """A parameter, flag or setting is unknown, of the wrong type, or out of range."""


class NotebookError(UsageError, ValueError):
    """A notebook cannot be used as asked (no parameters cell, bad JSON, ...)."""


class DataError(UsageError, ValueError):
    """The data would make training meaningless (NaN, labels out of range, ...)."""


class StateError(UsageError, ValueError):
    """What was asked does not fit what exists (a run not completed, no alias to move)."""


class UnknownNameError(UsageError, KeyError):
    """A lookup by name (dataset, model, optimizer, ...) failed."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class NotFoundError(UsageError, FileNotFoundError):
    """A named thing (notebook, run, model, study) does not exist."""


class NotebookNotFoundError(NotFoundError):
    """The notebook path does not exist."""


class RunNotFoundError(NotFoundError):
    """No run record matches the given id or path."""


class ModelNotFoundError(NotFoundError):
    """No registered model, version or weights file matches."""


# --- a failed run or check: exit 1 ----------------------------------------------------


class CheckFailedError(MlkitError, RuntimeError):
    """A run or a check ran and failed; the message says what failed and where to look."""

    exit_code = EXIT_FAILED


class RecordWriteError(CheckFailedError):
    """A run's record cannot be written (disk full, read-only): the message names the file."""


class PromotionBlockedError(CheckFailedError):
    """The version's evaluation breaks the model's bounds; ``violations`` lists how."""

    def __init__(self, message: str, violations: list[str]) -> None:
        super().__init__(message)
        self.violations = violations


# --- an unsafe or corrupt artifact: exit 3 --------------------------------------------


class UnsafeArtifactError(MlkitError, ValueError):
    """An artifact is unsafe or corrupt: it is refused, never loaded or trusted."""

    exit_code = EXIT_UNSAFE


class UnsafeModelError(UnsafeArtifactError):
    """Weights fail their checksum, would need pickle to load, or the environment allows it."""


# --- a service that cannot be reached: exit 4 -----------------------------------------


class ServiceUnavailableError(MlkitError, ConnectionError):
    """A database or storage cannot be reached; the message names it (without secrets)."""

    exit_code = EXIT_UNAVAILABLE


def exit_code(exc: BaseException) -> int:
    """The command line's exit status for an error: its family's code, 1 for anything else."""
    return exc.exit_code if isinstance(exc, MlkitError) else EXIT_FAILED


# Names of earlier releases, kept importable. Each was raised for bad input.
SweepError = UsageError
ServeError = UsageError
RegistryError = UsageError
