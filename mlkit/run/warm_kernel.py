"""One warm kernel: a kernel process with the heavy imports done, and its single client.

A kernel starts warming as soon as it is started: the import request is queued on its shell
channel before the kernel has even bound its sockets (ZeroMQ delivers it once connected), so
starting one costs its caller only the process launch. Before its first run, ``ensure_warm``
waits for the imports and then for the IOPub subscription (see ``_wait_until_ready``).
``mlkit.run.warm`` keeps these in a pool and decides when to start, reuse and retire them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlkit.track import resolve_mode

DEFAULT_IMPORTS = (
    "numpy",
    "torch",
    "mlkit",
    "mlkit.record",
    "mlkit.train",
    "mlkit.data",
    "mlkit.models",
    "mlkit.trial",
    "mlkit.track",
    "sklearn.datasets",  # mlkit.data's loaders and split: about 1 s, else in the first run
    "sklearn.model_selection",
    "wandb",
    "matplotlib.pyplot",
    "optuna",  # a sweep's trial reports through it: else in each new kernel's first trial
)
WARM_TIMEOUT_S = 180
LEFTOVERS = "__import__('mlkit.run.kernel_state').run.kernel_state.leftovers()"


def _imports() -> list[str]:
    raw = os.environ.get("MLKIT_WARM_IMPORTS")
    return [m.strip() for m in raw.split(",") if m.strip()] if raw else list(DEFAULT_IMPORTS)


def _kernel_env(wandb_mode: str | None = None) -> dict[str, str]:
    """The driver's environment, with the W&B mode of the runs the kernel is for.

    A warming kernel sets W&B up, and W&B reads its variables only then: the same mode
    as the runs' means no second set-up in the first run. By default, the mode runs get
    by default (``mlkit.runner``).
    """
    env = dict(os.environ)
    env["WANDB_MODE"] = wandb_mode or _default_wandb_mode()
    return env


def _default_wandb_mode() -> str:

    try:
        return resolve_mode(None)
    except Exception:  # an unknown WANDB_MODE: the run reports it
        return os.environ.get("WANDB_MODE", "")


class WarmKernel:
    """One kernel process, its single client, and what it has been through.

    ``number`` names it in the pool's event log (1 for the first kernel a pool started).
    """

    def __init__(self, kernel_name: str, wandb_mode: str | None = None, number: int = 0) -> None:
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        self.kernel_name = kernel_name
        self.number = number
        env = _kernel_env(wandb_mode)
        # The only W&B mode its runs have: W&B keeps state across a mode change that no
        # reset undoes (a run after a "disabled" one starts telemetry exporters).
        self.wandb_mode = env["WANDB_MODE"]
        self.runs = 0
        self.log_path = Path(tempfile.mkstemp(prefix="mlkit-kernel-", suffix=".log")[1])
        self._log_offset = 0
        self.km = AsyncKernelManager(kernel_name=kernel_name)
        self._started_at = time.time()  # wall clock: a reply's header date is the kernel's
        self._warm_started = time.monotonic()
        with open(self.log_path, "ab") as log:
            # No SQLite history: runs never read it, a thread writes it every few cells,
            # and parallel kernels would share one file. ``In`` and ``Out`` still work.
            run_sync(self.km.start_kernel)(
                stderr=log, env=env, extra_arguments=["--HistoryManager.enabled=False"]
            )
        self.kc = self.km.client()
        self.kc.start_channels()
        self._warm_msg: str | None = None
        self._scrub_msg: str | None = None
        # Replies to the warm-up and the scrub that another wait read first.
        self._early: dict[str, dict[str, Any]] = {}
        self.ready = False  # answered a kernel_info request with IOPub connected
        self.warm_seconds: float | None = None
        self.acquired_at: float | None = None  # when its current run took it (monotonic)
        self.kill_timer_for: int | None = None  # the run an interrupt's kill timer watches

    # -- messaging -------------------------------------------------------------
    def _read_shell(self, timeout: float) -> dict[str, Any] | None:
        """The next shell reply, or None when none comes within ``timeout`` (0: no wait).

        A reply to the warm-up or the scrub is also kept for its own waiter, and the
        warm-up's tells how long the imports took, by the kernel's clock.
        """
        from jupyter_core.utils import run_sync

        try:
            msg = run_sync(self.kc.get_shell_msg)(timeout=timeout)
        except Exception:  # queue.Empty
            return None
        parent = msg["parent_header"].get("msg_id")
        if parent is not None and parent in (self._warm_msg, self._scrub_msg):
            self._early[parent] = msg
            if parent == self._warm_msg:
                self.warm_seconds = max(_sent_at(msg) - self._started_at, 0.0)
        return msg

    def _wait_reply(
        self, msg_id: str, timeout: float, cancelled: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            if msg_id in self._early:
                return self._early.pop(msg_id)["content"]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the kernel did not answer in time")
            if cancelled is not None and cancelled():
                raise KeyboardInterrupt("cancelled while waiting for the kernel")
            if not self.alive():
                raise RuntimeError("the kernel died")
            msg = self._read_shell(min(left, 1.0))
            if msg is not None and msg["parent_header"].get("msg_id") == msg_id:
                self._early.pop(msg_id, None)
                return msg["content"]

    def run_code(self, code: str, timeout: float = 60, **expressions: str) -> dict[str, Any]:
        """Execute hidden code (not in any notebook); raise when it fails."""
        msg_id = self.kc.execute(
            code, silent=True, store_history=False, user_expressions=expressions, allow_stdin=False
        )
        content = self._wait_reply(msg_id, timeout)
        if content.get("status") != "ok":
            raise RuntimeError(f"{content.get('ename')}: {content.get('evalue')}")
        return content.get("user_expressions", {})

    # -- life cycle ----------------------------------------------------------------
    def begin_warm(self) -> None:
        """Ask the kernel to import the heavy modules; wait for nothing.

        The request waits in the shell channel's queue until the kernel is up. Whether
        the IOPub subscription is connected (without it a run's output could be lost, and
        nbclient would time out waiting for it) is checked later, by ``ensure_warm``.
        """
        code = f"import mlkit.run.kernel_state as _ks\n_ks.warm({_imports()!r})\ndel _ks"
        self._warm_msg = self.kc.execute(code, silent=True, store_history=False)

    @property
    def warming(self) -> bool:
        """The warm-up was asked for and its reply has not been read yet (no I/O)."""
        return self._warm_msg is not None and self._warm_msg not in self._early

    def warmed(self) -> bool:
        """Whether the warm-up has ended, from the replies already here: never waits."""
        while self.warming:
            if self._read_shell(0) is None:
                return False
        return True

    def _wait_until_ready(self, timeout: float) -> None:
        """jupyter_client's ``wait_for_ready`` without its last step.

        As there, a kernel_info reply proves the kernel answers, and then any IOPub message
        proves the IOPub subscription is connected. jupyter_client then waits until IOPub
        has been quiet for 0.2 s: 0.2 s of every kernel start, on the first run's path.
        Messages still queued there (the warm-up's) belong to no cell, and nbclient skips
        them. After the warm-up this is one round trip.
        """
        from jupyter_core.utils import run_sync

        deadline = time.monotonic() + timeout
        while True:
            self.kc.kernel_info()
            reply = self._read_shell(1.0)
            if reply is not None and reply["msg_type"] == "kernel_info_reply":
                try:
                    run_sync(self.kc.get_iopub_msg)(timeout=0.2)
                except Exception:  # queue.Empty: not subscribed yet, ask again
                    pass
                else:
                    self.kc._handle_kernel_info_reply(reply)
                    self.ready = True
                    return
            if not self.alive():
                raise RuntimeError("the kernel died before it was ready")
            if time.monotonic() > deadline:
                raise TimeoutError("the kernel did not start in time")

    def ensure_warm(self, cancelled: Callable[[], bool] | None = None) -> None:
        """Wait until the imports are done and the kernel is ready for a run's output."""
        if self._warm_msg is not None:
            content = self._wait_reply(self._warm_msg, WARM_TIMEOUT_S, cancelled)
            self._warm_msg = None
            if self.warm_seconds is None:
                self.warm_seconds = time.monotonic() - self._warm_started
            if content.get("status") != "ok":
                raise RuntimeError(f"warming the kernel failed: {content.get('evalue')}")
        if not self.ready:
            self._wait_until_ready(60)

    def alive(self) -> bool:
        from jupyter_core.utils import run_sync

        try:
            return bool(run_sync(self.km.is_alive)())
        except Exception:
            return False

    def scrub(self) -> None:
        """Start clearing what the last run left (``kernel_state.scrub``); do not wait.

        It runs while the driver records the run and sets up the next one; ``reset``
        waits for it.
        """
        code = "__import__('mlkit.run.kernel_state').run.kernel_state.scrub()"
        self._scrub_msg = self.kc.execute(code, silent=True, store_history=False)

    def reset(self, env: dict[str, str], cwd: str | None) -> None:
        if self._scrub_msg is not None:
            msg_id, self._scrub_msg = self._scrub_msg, None
            content = self._wait_reply(msg_id, 60)
            if content.get("status") != "ok":
                raise RuntimeError(
                    f"clearing the kernel failed: {content.get('ename')}: {content.get('evalue')}"
                )
        # Binds no name: reset() clears the user namespace it would live in.
        code = f"__import__('mlkit.run.kernel_state').run.kernel_state.reset({env!r}, {cwd!r})"
        self.run_code(code, timeout=60)

    def leftovers(self, evaluated: dict[str, Any] | None = None) -> list[str]:
        """Why the kernel cannot be reused, from ``LEFTOVERS`` as the epilogue evaluated it
        (``evaluated``: one request less a run), else asked for now."""
        value = (evaluated or {}).get("leftovers")
        if value is None:
            value = self.run_code("", timeout=30, leftovers=LEFTOVERS)["leftovers"]
        if value.get("status") != "ok":
            return ["could not inspect the kernel"]
        import ast

        return list(ast.literal_eval(value["data"]["text/plain"]))

    def copy_log(self, target: Path | None) -> None:
        """Append what the kernel wrote to stderr since the last run to ``target``."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                chunk = fh.read()
                self._log_offset = fh.tell()
        except OSError:
            return
        if target is not None and chunk:
            with open(target, "ab") as out:
                out.write(chunk)

    def kill(self) -> None:
        """SIGKILL the kernel process (safe from any thread): its run sees a dead kernel."""
        with contextlib.suppress(Exception):
            self.km.provisioner.process.kill()

    def shutdown(self) -> None:
        from jupyter_core.utils import run_sync

        try:
            self.kc.stop_channels()
            run_sync(self.km.shutdown_kernel)(now=True)
        except Exception:
            pass
        self.log_path.unlink(missing_ok=True)


def _sent_at(msg: dict[str, Any]) -> float:
    """When the kernel sent ``msg`` (its header's date), as a ``time.time()`` value."""
    date = msg.get("header", {}).get("date")
    try:
        return float(date.timestamp())
    except (AttributeError, TypeError, ValueError, OverflowError):
        return time.time()
