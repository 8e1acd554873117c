"""The notebook's side of a sweep trial: report intermediate values, ask to prune.

``mlkit.trial.current()`` returns a live handle when the notebook runs as a trial
of ``mlkit sweep`` (the driver passes the trial's coordinates in ``MLKIT_TRIAL``)
and a do-nothing handle otherwise, so the same notebook runs by hand unchanged::

    trial = mlkit.trial.current()
    fitted = train.fit(..., callbacks=[trial.callback()])   # reports val metric per epoch

When the pruner says stop, ``fit`` stops, the notebook still records its result, and
the driver tells Optuna the trial was PRUNED at that step (``pruned.json`` says so).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlkit._contract import ENV_TRIAL, PRUNED_FILE
from mlkit._io import write_json
from mlkit.storage import load_study, make_pruner, open_storage


class NullTrial:
    """Outside a sweep: every call is a no-op, ``should_prune`` is always False."""

    active = False
    number: int | None = None
    study_name: str | None = None
    metric: str | None = None
    pruned = False
    pruned_step: int | None = None

    def report(self, value: float, step: int) -> None:
        """Do nothing: there is no trial to report to."""

    def should_prune(self) -> bool:
        return False

    def callback(self, metric: str | None = None) -> Callable[[int, dict[str, Any]], Any]:
        def noop(epoch: int, metrics: dict[str, Any]) -> None:
            return None

        return noop

    def __repr__(self) -> str:
        return "NullTrial()  # not running inside a sweep"


class TrialHandle(NullTrial):
    """A trial of a running sweep, attached through the study's storage."""

    active = True

    def __init__(self, spec: dict[str, Any]) -> None:

        self.spec = spec
        self.number = int(spec["number"])
        self.study_name = spec["study"]
        self.metric = spec.get("metric")
        self._trial = attach_trial(
            spec["storage"], spec["study"], self.number, spec.get("pruner"), spec.get("session")
        )
        self.pruned = False
        self.pruned_step = None

    def report(self, value: float, step: int) -> None:
        if self.metric is None:  # multi-objective studies cannot prune
            return
        self._trial.report(float(value), int(step))
        self._last_step = int(step)

    def should_prune(self) -> bool:
        if self.metric is None or self.pruned:
            return self.pruned
        if self._trial.should_prune():
            self.pruned = True
            self.pruned_step = getattr(self, "_last_step", None)
            _write_pruned(self.pruned_step)
        return self.pruned

    def callback(self, metric: str | None = None) -> Callable[[int, dict[str, Any]], Any]:
        """A ``fit`` callback: report ``metric`` each epoch, return "stop" when pruned."""
        key = metric or self.metric

        def report_and_prune(epoch: int, metrics: dict[str, Any]) -> str | None:
            if key is None or key not in metrics:
                return None
            self.report(metrics[key], epoch)
            return "stop" if self.should_prune() else None

        return report_and_prune

    def __repr__(self) -> str:
        return f"TrialHandle(study={self.study_name!r}, number={self.number})"


def _write_pruned(step: int | None) -> None:
    run_dir = os.environ.get("MLKIT_RUN_DIR")
    if run_dir:
        write_json(Path(run_dir) / PRUNED_FILE, {"step": step})


_CURRENT: tuple[str, NullTrial] | None = None


def current() -> NullTrial:
    """The running trial's handle, or a no-op handle outside a sweep."""
    global _CURRENT
    raw = os.environ.get(ENV_TRIAL, "")
    if _CURRENT is not None and _CURRENT[0] == raw:
        return _CURRENT[1]
    handle: NullTrial = TrialHandle(json.loads(raw)) if raw else NullTrial()
    _CURRENT = (raw, handle)
    return handle


def attach_trial(
    url: str, study_name: str, number: int, pruner: str | None, session: Any = None
) -> Any:
    """A live ``optuna.Trial`` for a trial another process asked for (the notebook side)."""
    import optuna

    storage = _trial_storage(url, session)
    study = load_study(url, study_name, pruner=make_pruner(pruner or "none"), storage=storage)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)


_TRIAL_STORAGE: dict[tuple[str, Any], Any] = {}


def _trial_storage(url: str, session: Any) -> Any:
    """The storage a notebook's trial reports through, kept for the rest of its sweep.

    Opening a journal replays it from its first line, so a kernel that reopened it for
    every trial would pay 20 ms a trial after 100 trials and 0.2 s after 1000; kept, it
    reads only what was appended since. It is kept per sweep ``session`` (each start or
    resume of a sweep has its own), so a journal replaced between two sweeps is never read
    from stale offsets. Reports are not fsynced: 30 fsyncs were 1% of a one-second
    trial, and a report lost to a machine crash belongs to a trial a resume reaps anyway.
    """
    if session is None:
        return open_storage(url, sync=False)
    key = (url, session)
    if key not in _TRIAL_STORAGE:
        _TRIAL_STORAGE.clear()  # one sweep at a time per kernel
        _TRIAL_STORAGE[key] = open_storage(url, sync=False)
    return _TRIAL_STORAGE[key]
