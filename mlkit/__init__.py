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
    "runs",
    "space",
    "start_run",
    "sweep",
    "track",
    "train",
    "trial",
]

# Submodules by the names templates, notebooks and users import (``from mlkit import
# runner``, ``mlkit.runner.run``), loaded on first use so ``import mlkit`` stays light.
_SUBMODULES = {
    "data": "mlkit.data",
    "evaluate": "mlkit.evaluate",
    "explore": "mlkit.explore",
    "lineage": "mlkit.lineage",
    "metrics": "mlkit.metrics",
    "models": "mlkit.models",
    "record": "mlkit.record",
    "rebuild": "mlkit.rebuild",
    "record_store": "mlkit.record_store",
    "storage": "mlkit.storage",
    "track": "mlkit.track",
    "train": "mlkit.train",
    "trial": "mlkit.trial",
    "registry": "mlkit.registry",
    "serve": "mlkit.serve",
    "sweep": "mlkit.sweep",
    "run": "mlkit.run",
    "ops": "mlkit.ops",
    # Modules that moved into a subpackage, under their earlier names.
    "kernel_state": "mlkit.run.kernel_state",
    "notebook": "mlkit.run.notebook",
    "params": "mlkit.run.params",
    "runner": "mlkit.run.runner",
    "warm": "mlkit.run.warm",
    "report": "mlkit.sweep.report",
    "space": "mlkit.sweep.space",
    "predlog": "mlkit.serve.predlog",
    "abtest": "mlkit.ops.abtest",
    "guard": "mlkit.ops.guard",
    "monitor": "mlkit.ops.monitor",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    if name in {"start_run", "parameters"}:
        return getattr(importlib.import_module("mlkit.record"), name)
    if name == "runs":  # the run records as a DataFrame: pandas loads on first use
        return importlib.import_module("mlkit.run_table").runs
    raise AttributeError(f"module 'mlkit' has no attribute {name!r}")
