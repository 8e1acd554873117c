"""Warm kernels: a pool of kernels with torch, numpy and mlkit already imported.

A fresh papermill run pays for a kernel start, ``import torch`` and the first
optimizer step (which imports ``torch._dynamo``) every time: seconds before the
first line of a short trial runs. The ``mlkit-warm`` engine keeps kernels alive
and reuses them, resetting each to a clean state before every run (see
``mlkit.run.kernel_state`` for what is restored and what is not). The clearing starts
as soon as a run ends, while the driver records it and asks for the next trial.

A kernel is retired after ``MLKIT_WARM_MAX_RUNS`` runs (default 50), after any
failed run, after a timeout or a death, and whenever the run left something a
reset cannot undo (a running thread, an unfinished ``wandb.run``). Its
replacement starts warming at once, while the driver records the run that ended.
A kernel serves runs of the W&B mode it was warmed for; a run in another mode
retires it.

It is a papermill engine (``papermill --engine mlkit-warm``); the pool lives in
the driver process, so reuse happens across the runs one process makes
(``mlkit sweep``, the widgets, a Python loop over ``mlkit.runner.run``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlkit.run.notebook import base_engine, lazy_engine, make_client
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
)
WARM_TIMEOUT_S = 180
KILL_AFTER_S = 5.0  # after an interrupt, how long a run has to end before its kernel is killed
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


def _max_runs() -> int:
    return int(os.environ.get("MLKIT_WARM_MAX_RUNS", "50"))


class WarmKernel:
    """One kernel process, its single client, and what it has been through."""

    def __init__(self, kernel_name: str, wandb_mode: str | None = None) -> None:
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        self.kernel_name = kernel_name
        env = _kernel_env(wandb_mode)
        # The only W&B mode its runs have: W&B keeps state across a mode change that no
        # reset undoes (a run after a "disabled" one starts telemetry exporters).
        self.wandb_mode = env["WANDB_MODE"]
        self.runs = 0
        self.log_path = Path(tempfile.mkstemp(prefix="mlkit-kernel-", suffix=".log")[1])
        self._log_offset = 0
        self.km = AsyncKernelManager(kernel_name=kernel_name)
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
        self._warm_started = time.monotonic()
        self.warm_seconds: float | None = None
        self.kill_timer_for: int | None = None  # the run an interrupt's kill timer watches

    # -- messaging -------------------------------------------------------------
    def _wait_reply(
        self, msg_id: str, timeout: float, cancelled: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        from jupyter_core.utils import run_sync

        if msg_id in self._early:
            return self._early.pop(msg_id)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the kernel did not answer in time")
            if cancelled is not None and cancelled():
                raise KeyboardInterrupt("cancelled while waiting for the kernel")
            if not self.alive():
                raise RuntimeError("the kernel died")
            try:
                msg = run_sync(self.kc.get_shell_msg)(timeout=min(left, 1.0))
            except Exception:  # queue.Empty: poll again, checking the process is alive
                continue
            parent = msg["parent_header"].get("msg_id")
            if parent == msg_id:
                return msg["content"]
            if parent is not None and parent in (self._warm_msg, self._scrub_msg):
                self._early[parent] = msg["content"]  # its own waiter comes later

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
        """Ask the kernel to import the heavy modules; do not wait for the imports.

        It does wait for the kernel to be ready: that is also how it makes sure the IOPub
        subscription is connected, and without it a run's output could be lost (nbclient
        then times out waiting for it).
        """
        self._wait_until_ready(60)
        code = f"import mlkit.run.kernel_state as _ks\n_ks.warm({_imports()!r})\ndel _ks"
        self._warm_msg = self.kc.execute(code, silent=True, store_history=False)

    def _wait_until_ready(self, timeout: float) -> None:
        """jupyter_client's ``wait_for_ready`` without its last step.

        As there, a kernel_info reply proves the kernel answers, and then any IOPub message
        proves the IOPub subscription is connected. jupyter_client then waits until IOPub
        has been quiet for 0.2 s: 0.2 s of every kernel start, on the first run's path.
        Messages still queued there belong to no cell, and nbclient skips them.
        """
        from jupyter_core.utils import run_sync

        deadline = time.monotonic() + timeout
        while True:
            self.kc.kernel_info()
            try:
                reply = run_sync(self.kc.get_shell_msg)(timeout=1)
            except Exception:  # queue.Empty: ask again
                reply = None
            if reply is not None and reply["msg_type"] == "kernel_info_reply":
                try:
                    run_sync(self.kc.get_iopub_msg)(timeout=0.2)
                except Exception:  # queue.Empty: not subscribed yet, ask again
                    pass
                else:
                    self.kc._handle_kernel_info_reply(reply)
                    return
            if not self.alive():
                raise RuntimeError("the kernel died before it was ready")
            if time.monotonic() > deadline:
                raise TimeoutError("the kernel did not start in time")

    def ensure_warm(self, cancelled: Callable[[], bool] | None = None) -> None:
        if self._warm_msg is None:
            return
        content = self._wait_reply(self._warm_msg, WARM_TIMEOUT_S, cancelled)
        self._warm_msg = None
        self.warm_seconds = time.monotonic() - self._warm_started
        if content.get("status") != "ok":
            raise RuntimeError(f"warming the kernel failed: {content.get('evalue')}")

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


class KernelPool:
    """The driver process's warm kernels, by kernel name and by the thread that made them.

    A kernel's client channels belong to the event loop of the thread that started it (used
    from another thread's loop, replies never arrive: a hang), so a thread is only ever handed
    the kernels it started; the main thread, a sweep's worker and the explorer's worker each
    keep their own. Threads are told apart by the thread object, not its id, which a new
    thread can reuse. Idle kernels of threads that have ended are shut down.
    """

    def __init__(self) -> None:
        self.idle: dict[tuple[str, threading.Thread], list[WarmKernel]] = {}
        self._lock = threading.Lock()  # guards the dict; each list is used by one thread
        self.busy: list[WarmKernel] = []
        self.started = 0
        self.retired: list[str] = []
        self.interrupts = 0  # how many times interrupt() was called

    def interrupt(self) -> int:
        """Interrupt every run this process has in flight (a Cancel button); returns how many.

        The interrupted cell raises KeyboardInterrupt, so the run fails and its kernel
        is retired like after any failure. A run still waiting for its kernel to warm up
        raises KeyboardInterrupt before its first cell; the kernel goes on warming.

        An interrupt that lands in ipykernel's own code, as a cell starts, can leave the
        kernel idle without ever answering the cell: a run still going ``KILL_AFTER_S``
        after its interrupt has its kernel killed, so it fails as a dead kernel's does
        instead of hanging.
        """
        from jupyter_core.utils import run_sync

        self.interrupts += 1
        count = 0
        for kernel in list(self.busy):
            try:
                run_sync(kernel.km.interrupt_kernel)()
                count += 1
            except Exception:
                pass
            self._kill_if_still_running(kernel)
        return count

    def _kill_if_still_running(self, kernel: WarmKernel) -> None:
        run = kernel.runs  # counts runs ended: the same value later means the same run
        if kernel.kill_timer_for == run:
            return

        def kill() -> None:
            if kernel in self.busy and kernel.runs == run:
                kernel.kill()

        kernel.kill_timer_for = run
        timer = threading.Timer(KILL_AFTER_S, kill)
        timer.daemon = True
        timer.start()

    def _new(self, kernel_name: str, wandb_mode: str | None = None) -> WarmKernel:
        kernel = WarmKernel(kernel_name, wandb_mode)
        kernel.begin_warm()
        self.started += 1
        return kernel

    def idle_for(self, kernel_name: str) -> list[WarmKernel]:
        """This thread's idle kernels of ``kernel_name`` (the list itself)."""
        with self._lock:
            orphans = [self.idle.pop(k) for k in list(self.idle) if not k[1].is_alive()]
            mine = self.idle.setdefault((kernel_name, threading.current_thread()), [])
        for kernel in (k for kernels in orphans for k in kernels):
            self.retired.append("its thread ended")
            kernel.shutdown()
        return mine

    def prewarm(self, kernel_name: str, wandb_mode: str | None = None) -> None:
        """Start a kernel warming now, so it is ready by this thread's first run."""
        idle = self.idle_for(kernel_name)
        if not idle:
            idle.append(self._new(kernel_name, wandb_mode))

    def acquire(self, kernel_name: str, wandb_mode: str | None = None) -> WarmKernel:
        """A warm kernel for a run in ``wandb_mode`` (default: the default mode)."""
        wandb_mode = wandb_mode or _default_wandb_mode()
        interrupts = self.interrupts
        stopping = getattr(_CANCEL, "predicate", None)

        def cancelled() -> bool:
            return self.interrupts != interrupts or (stopping is not None and stopping())

        if cancelled():
            raise KeyboardInterrupt("cancelled before the run started")
        idle = self.idle_for(kernel_name)
        while idle:
            kernel = idle.pop()
            if kernel.wandb_mode != wandb_mode:
                self.retired.append(f"W&B mode {kernel.wandb_mode}, the run's {wandb_mode}")
            elif kernel.alive():
                try:
                    kernel.ensure_warm(cancelled)
                    self.busy.append(kernel)
                    return kernel
                except KeyboardInterrupt:
                    idle.append(kernel)  # still warming, for the next run
                    raise
                except Exception as exc:
                    self.retired.append(f"warm-up failed: {exc}")
            else:
                self.retired.append("died while idle")
            kernel.shutdown()
        kernel = self._new(kernel_name, wandb_mode)
        try:
            kernel.ensure_warm(cancelled)
        except KeyboardInterrupt:
            idle.append(kernel)
            raise
        self.busy.append(kernel)
        return kernel

    def release(self, kernel: WarmKernel, reasons: list[str]) -> None:
        """Back to the pool, or retired with a warm replacement already on its way."""
        if kernel in self.busy:
            self.busy.remove(kernel)
        if kernel.runs >= _max_runs():
            reasons = [*reasons, f"reached {kernel.runs} runs"]
        if reasons or not kernel.alive():
            self.retired.append("; ".join(reasons) or "not alive")
            kernel.shutdown()
            replacement = self._new(kernel.kernel_name, kernel.wandb_mode)
            self.idle_for(kernel.kernel_name).append(replacement)
            return
        kernel.scrub()
        self.idle_for(kernel.kernel_name).append(kernel)

    def close(self) -> None:
        with self._lock:
            kernels = [k for idle in self.idle.values() for k in idle]
            self.idle.clear()
        for kernel in kernels:
            kernel.shutdown()


_CANCEL = threading.local()


@contextlib.contextmanager
def cancel_when(predicate: Callable[[], bool]) -> Iterator[None]:
    """Runs this thread starts in the block are cancelled once ``predicate()`` is true.

    A sweep's workers pass their stop flag: after Ctrl-C, a run that has not reached
    its first cell (still waiting for a kernel to warm, or not yet there) raises
    KeyboardInterrupt instead of running the whole trial.
    """
    previous = getattr(_CANCEL, "predicate", None)
    _CANCEL.predicate = predicate
    try:
        yield
    finally:
        _CANCEL.predicate = previous


_POOL: KernelPool | None = None
_POOL_LOCK = threading.Lock()  # a sweep's worker threads may ask for it at the same time


def pool() -> KernelPool:
    """The process-wide pool (created on first use, closed at exit)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            import atexit

            _POOL = KernelPool()
            atexit.register(_POOL.close)
    return _POOL


@functools.cache
def _engine() -> type:

    class Engine(base_engine()):  # type: ignore[misc]
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):  # type: ignore[override]
            env = kwargs.pop("kernel_env", None) or dict(os.environ)
            cwd = kwargs.pop("kernel_cwd", None) or os.getcwd()
            log = kwargs.pop("kernel_log", None)
            the_pool = pool()
            kernel = the_pool.acquire(kernel_name, env.get("WANDB_MODE"))
            reasons: list[str] = []
            try:
                kernel.reset(env, cwd)
                client = make_client(nb_man, kernel_name, kwargs, km=kernel.km)
                client.kc = kernel.kc
                client.epilogue_expressions = {"leftovers": LEFTOVERS}
                result = client.execute()
                if _has_error(nb_man.nb):
                    reasons.append("the run failed")
                else:
                    reasons.extend(kernel.leftovers(client.epilogue_values))
                return result
            except BaseException as exc:
                reasons.append(f"{type(exc).__name__}")
                raise
            finally:
                kernel.runs += 1
                kernel.copy_log(Path(log) if log else None)
                the_pool.release(kernel, reasons)

    return Engine


def _warm_engine_class() -> type:

    return lazy_engine(_engine, "WarmEngine")


def _has_error(nb: Any) -> bool:
    return any(
        out.get("output_type") == "error" for cell in nb.cells for out in cell.get("outputs", [])
    )


WarmEngine = _warm_engine_class()
