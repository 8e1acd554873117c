"""The explorer's background jobs: one worker thread per process, and what Cancel reaches.

Warm kernels and their ZMQ clients must stay on the thread that made them, and the UI
thread must never wait on a kernel, so every explorer of the process hands its runs and
sweeps to one worker thread. The trials themselves are asked and run by the sweep driver
(``mlkit.sweep.driver.ask_trial`` and ``run_trial``); a ``Job`` is what its ``cancelled``
hook asks.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from collections.abc import Callable
from typing import Any

from mlkit.run import warm

CANCEL_REASON = "cancelled by the user"

_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


def submit(task: Callable[[], Any]) -> concurrent.futures.Future:
    """Run ``task`` on the worker thread, after the jobs queued before it."""
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="mlkit-explore"
            )
        return _EXECUTOR.submit(task)


def shutdown() -> None:
    """Stop the idle warm kernels on the thread that made them, then the worker thread.

    Call it before other code in this process uses the warm pool from another thread.
    """
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        executor, _EXECUTOR = _EXECUTOR, None
    if executor is None:
        return
    executor.submit(warm.pool().close).result()
    executor.shutdown(wait=True)


@dataclasses.dataclass
class Job:
    """One run or sweep, queued or in flight."""

    kind: str  # "run" or "sweep"
    reason: str = ""  # why it was cancelled; empty while it goes on
    done: threading.Event = dataclasses.field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Cancel the trial in flight and every later one of this job."""
        self.reason = CANCEL_REASON

    def cancelled(self) -> str | None:
        """The driver's ``cancelled`` hook: the reason, once Cancel was clicked."""
        return self.reason or None
