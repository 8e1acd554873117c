"""Processes that end with the process that started them, however it ends.

A child process the parent forgot to stop (the parent killed with SIGKILL, a crash) is
re-parented and goes on alone: a sweep worker would keep asking for trials and running
them after the user killed the sweep. ``die_with_parent`` ties a child's life to its
parent's: on Linux the kernel sends the child SIGKILL when the parent ends
(``PR_SET_PDEATHSIG``), elsewhere a thread watches the parent's pid.

Kernels need nothing of this: ``jupyter_client`` starts each kernel with its parent's pid
in ``JPY_PARENT_PID``, and ipykernel ends itself within a second once its parent changes.
W&B's service process (``wandb-core``) watches the pid of the process that started it
(``--pid``) and ends with it the same way.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from mlkit._io import pid_alive

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
POLL_S = 0.5  # how soon the fallback watcher sees its parent gone


def die_with_parent(parent_pid: int) -> None:
    """End this process as soon as the process ``parent_pid`` (its parent) ends.

    Call it first thing in a child. On Linux the parent's death sends this process
    SIGKILL; the death signal follows the thread that started the child, so start the
    child from a thread that lives as long as its parent (the main thread). Elsewhere a
    daemon thread polls the parent's pid and ends this process
    (``os._exit``) once the parent is gone.

    Args:
        parent_pid: the pid of the parent, as the parent gave it: a parent that died
            before this call (this process already re-parented) ends this one at once.
    """
    if not _set_parent_death_signal(signal.SIGKILL):
        threading.Thread(
            target=_watch_parent, args=(parent_pid,), name="mlkit-parent-watch", daemon=True
        ).start()
    elif os.getppid() != parent_pid:  # it died before the signal was set: none will come
        os._exit(1)


def run_as_child(parent_pid: int, target: Callable[..., Any], *args: Any) -> None:
    """``target(*args)`` in a process that ends with ``parent_pid``: a process's target.

    For example ``Process(target=run_as_child, args=(os.getpid(), main, cfg))``.
    """
    die_with_parent(parent_pid)
    target(*args)


def _set_parent_death_signal(signum: int) -> bool:
    """Ask Linux to send ``signum`` when the parent ends; False where that cannot be done."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc to load, or no prctl in it
        return False


def _watch_parent(parent_pid: int) -> None:
    # Re-parented (POSIX) or gone (where a child keeps its parent's pid as its ppid).
    while os.getppid() == parent_pid and pid_alive(parent_pid):
        time.sleep(POLL_S)
    os._exit(1)
