"""Optuna sweeps where every trial is an executed notebook with its own record.

``config`` checks a sweep's settings once; ``driver`` asks, runs and tells (with hooks for
the explorer); ``reaper`` fails and retries the trials of dead workers; ``results``
summarises a study; ``space`` reads search spaces; ``report`` executes the report notebook.
Storages live one floor down, in :mod:`mlkit.storage`, because a notebook's trial opens
them too.
"""

from mlkit._io import redact
from mlkit.errors import SweepError
from mlkit.storage import find_storage, load_study, open_storage
from mlkit.sweep.config import SweepConfig, prepare
from mlkit.sweep.driver import ask_trial, run, run_trial, trial_seed
from mlkit.sweep.results import Summary, best_params, summarize

__all__ = [
    "Summary",
    "SweepConfig",
    "SweepError",
    "ask_trial",
    "best_params",
    "find_storage",
    "load_study",
    "open_storage",
    "prepare",
    "redact",
    "run",
    "run_trial",
    "summarize",
    "trial_seed",
]
