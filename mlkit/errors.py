"""One root error for mlkit; each subclass also inherits the builtin it means."""


class MlkitError(Exception):
    """Root of every error mlkit raises on purpose."""


class ParameterError(MlkitError, ValueError):
    """A notebook parameter is unknown, of the wrong type, or out of range."""


class NotebookError(MlkitError, ValueError):
    """A notebook cannot be used as asked (no parameters cell, bad JSON, ...)."""


class NotebookNotFoundError(MlkitError, FileNotFoundError):
    """The notebook path does not exist."""


class DataError(MlkitError, ValueError):
    """The data would make training meaningless (NaN, labels out of range, ...)."""


class UnknownNameError(MlkitError, KeyError):
    """A registry lookup (dataset, model, optimizer, ...) failed."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class RunNotFoundError(MlkitError, FileNotFoundError):
    """No run record matches the given id or path."""


class SweepError(MlkitError, ValueError):
    """A sweep cannot start as asked."""


class RegistryError(MlkitError, ValueError):
    """A registry request cannot be done as asked (bad name, unknown alias, ...)."""


class ModelNotFoundError(MlkitError, FileNotFoundError):
    """No registered model, version or weights file matches."""


class UnsafeModelError(MlkitError, ValueError):
    """A checkpoint would need pickle (arbitrary code) to load, or the environment allows it."""


class PromotionBlockedError(RegistryError):
    """The version's evaluation breaks the model's bounds; ``violations`` lists how."""

    def __init__(self, message: str, violations: list[str]) -> None:
        super().__init__(message)
        self.violations = violations


class ServeError(MlkitError, ValueError):
    """The server cannot start as asked."""
