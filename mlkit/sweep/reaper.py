"""Trials whose worker died: fail them with the reason, retry them once, close their records.

A worker killed with SIGKILL (its driver killed, a machine lost) leaves its trial RUNNING
and, when the notebook had started, its run record ``running`` with no reason. Any worker
that asks for a trial first reaps such trials under the ask lock (see ``driver.ask_trial``):
it fails a RUNNING trial whose worker process is gone (same host), whose worker died
before stamping it, or whose heartbeat is stale, with the reason; enqueues its parameters
once more (a retry is not retried again); and marks the trial's run record ``crashed``
with the same reason, so no record is left saying nothing.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from mlkit._contract import RUN_FILE
from mlkit._io import pid_alive, read_json
from mlkit.run import runner
from mlkit.storage import _journal_path

STALE_AFTER_S = 90.0


def reap_stale(
    study: Any, now: float | None = None, root: Path | None = None, *, locked: bool = False
) -> list[int]:
    """Fail RUNNING trials whose worker is gone; enqueue their parameters once more.

    Args:
        study: the open study; call this under the study's ask lock.
        now: the time to judge heartbeats by (default: now).
        root: the experiments folder of the sweep's records, to find the record of a trial
            killed before it was linked to one (``run_path``).
        locked: the caller holds a real ask lock (``holds_lock``). A worker holds it from
            asking for a trial until the trial bears its stamp, so a RUNNING trial seen
            without a stamp lost its worker in between, and is reaped at once; without
            the lock it waits for the heartbeat's deadline like any other.

    Returns:
        The numbers of the trials reaped.
    """
    from optuna.trial import TrialState

    now = now or time.time()
    host = socket.gethostname()
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        beat = trial.user_attrs.get(
            "heartbeat", trial.datetime_start.timestamp() if trial.datetime_start else now
        )
        dead = worker.get("host") == host and worker.get("pid") and not pid_alive(worker["pid"])
        unstamped = locked and not worker
        stale = now - float(beat) > STALE_AFTER_S
        if dead:
            why = f"worker pid {worker.get('pid')} on {host} is gone"
        elif unstamped:
            why = "its worker died between asking for it and stamping it"
        elif stale:
            why = f"no heartbeat for {now - float(beat):.0f} s"
        else:
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", f"reaped: {why}")
            study._storage.set_trial_user_attr(trial._trial_id, "reaped", True)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except Exception:  # another worker reaped it first
            continue
        reaped.append(trial.number)
        if "retry_of" not in trial.user_attrs:
            study.enqueue_trial(
                trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False
            )
        reason = f"the sweep's worker died: trial #{trial.number} reaped ({why})"
        for run_dir in _records_of(study.study_name, trial, root):
            runner.mark_crashed(run_dir, reason)
    return reaped


def holds_lock(url: str) -> bool:
    """Whether ``storage.ask_lock`` really locks for this storage URL (not for MySQL)."""
    return url.startswith(("postgresql", "sqlite:///")) or _journal_path(url) is not None


def budget_used(study: Any) -> tuple[int, int]:
    """(trials that count against --trials, trials waiting in the queue).

    Reaped trials do not count: their worker died, and a first reap queues the point again.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counted = sum(1 for t in trials if not t.user_attrs.get("reaped"))
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    return counted, waiting


def _records_of(study_name: str, trial: Any, root: Path | None) -> list[Path]:
    """The run record of ``trial``: its ``run_path``, or the one run.json naming the trial.

    A worker killed after the record was made but before the trial was linked to it
    (lineage is collected in between) leaves only run.json's ``study`` and ``trial``.
    """
    linked = trial.user_attrs.get("run_path")
    if linked:
        return [Path(linked)]
    runs = root / study_name / "runs" if root is not None else None
    if runs is None or not runs.is_dir():
        return []
    found = []
    for run_json in runs.glob(f"*/{RUN_FILE}"):
        try:
            info = read_json(run_json, None)
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and (info.get("study"), info.get("trial")) == (
            study_name,
            trial.number,
        ):
            found.append(run_json.parent)
    return found
