"""mlkit: write a training notebook once; run, sweep, explore and ship it.

Importing mlkit is cheap: torch, wandb, papermill and ipywidgets load only when a
submodule that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from mlkit.errors import (
    DataError,
    MlkitError,
    NotebookError,
    NotebookNotFoundError,
    ParameterError,
    RunNotFoundError,
    UnknownNameError,
)

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "MlkitError",
    "NotebookError",
    "NotebookNotFoundError",
    "ParameterError",
    "RunNotFoundError",
    "UnknownNameError",
    "__version__",
    "data",
    "metrics",
    "models",
    "notebook",
    "parameters",
    "record",
    "runner",
    "space",
    "start_run",
    "sweep",
    "track",
    "train",
    "trial",
]

_SUBMODULES = {
    "data",
    "metrics",
    "models",
    "notebook",
    "record",
    "runner",
    "space",
    "sweep",
    "track",
    "train",
    "trial",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"mlkit.{name}")
    if name in {"start_run", "parameters"}:
        return getattr(importlib.import_module("mlkit.record"), name)
    raise AttributeError(f"module 'mlkit' has no attribute {name!r}")
