"""Warm kernels: a pool of kernels with torch, numpy and mlkit already imported.

A fresh papermill run pays for a kernel start, ``import torch`` and the first
optimizer step (which imports ``torch._dynamo``) every time: seconds before the
first line of a short trial runs. The ``mlkit-warm`` engine keeps kernels alive
and reuses them, resetting each to a clean state before every run (see
``mlkit.run.kernel_state`` for what is restored and what is not). The clearing starts
as soon as a run ends, while the driver records it and asks for the next trial.

A kernel is retired after ``MLKIT_WARM_MAX_RUNS`` runs (default 50; more while its
successor is still warming, when runs are shorter than a warm-up), after any
failed run, after a timeout or a death, and whenever the run left something a
reset cannot undo (a running thread, an unfinished ``wandb.run``). The run count
is foreseeable, so its successor starts warming while the old kernel's last runs
go on: the pool measures how long a warm-up takes and how long runs take, and
starts it once the runs left no longer cover a warm-up and a margin. After an
unforeseen retirement the replacement starts at once, and a thread whose runs
often fail keeps a spare warm while the machine has a core for it. A kernel serves
runs of the W&B mode it was warmed for; a run in another mode retires it.

What the pool decides is in ``KernelPool.events`` and, at INFO, on the
``mlkit.warm`` logger: kernels started (and why), taken for a run (and how long
the run waited for a warm-up), retired (and why).

It is a papermill engine (``papermill --engine mlkit-warm``); the pool lives in
the driver process, so reuse happens across the runs one process makes
(``mlkit sweep``, the widgets, a Python loop over ``mlkit.runner.run``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mlkit.run.notebook import base_engine, lazy_engine, make_client
from mlkit.run.warm_kernel import (
    DEFAULT_IMPORTS,
    LEFTOVERS,
    WARM_TIMEOUT_S,
    WarmKernel,
    _default_wandb_mode,
)

__all__ = [
    "DEFAULT_IMPORTS",
    "WARM_TIMEOUT_S",
    "Event",
    "KernelPool",
    "WarmEngine",
    "WarmKernel",
    "cancel_when",
    "pool",
]

logger = logging.getLogger("mlkit.warm")

KILL_AFTER_S = 5.0  # after an interrupt, how long a run has to end before its kernel is killed
UNMEASURED_WARM_S = 15.0  # a warm-up's length until one is measured: torch and W&B, busy machine
# A successor starts when the runs left cover less than this many warm-ups, plus LEAD_EXTRA_S:
# a warm-up beside running trials (or another warm-up) is slower than the one measured alone.
LEAD_FACTOR = 1.5
LEAD_EXTRA_S = 1.0
# A kernel whose successor is still warming serves on, up to this many times its count.
KEPT_FACTOR = 10
MAX_AHEAD = 2  # standby kernels (successors, a spare) one thread may have warming or warm
FAILURE_WINDOW = 10  # a thread's last runs, of which...
FREQUENT_FAILURES = 2  # ...this many failed: it keeps a spare warm
EVENTS_KEPT = 10_000  # the newest: a long-lived process (the explorer) keeps starting runs


def _max_runs() -> int:
    return int(os.environ.get("MLKIT_WARM_MAX_RUNS", "50"))


def _cores() -> int:
    return os.cpu_count() or 1


class Event(NamedTuple):
    """One decision of the pool, as ``KernelPool.events`` keeps it."""

    kind: str  # "started", "acquired" (a kernel's first run), "reused", "retired"
    kernel: int  # the kernel's number: 1 for the first this pool started
    # started: "first", "successor of K", "replacement of K" or "spare"; retired: why;
    # acquired, reused: "run N", the kernel's run it is taken for
    reason: str
    waited_s: float  # acquired, reused: how long the run waited for a warm-up (0.0: not at all)
    thread: str
    at: float  # time.monotonic()

    @property
    def waited(self) -> bool:
        """The run waited for a warm-up (``waited_s`` counts no I/O with a warm kernel)."""
        return self.waited_s > 0


@dataclass
class _Lane:
    """One thread's kernels of one kernel name, and what that thread's runs have shown."""

    idle: list[WarmKernel] = field(default_factory=list)  # the in-service one and its standbys
    dying: list[WarmKernel] = field(default_factory=list)  # killed: shut down between runs
    run_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=FAILURE_WINDOW))
    failed: deque[bool] = field(default_factory=lambda: deque(maxlen=FAILURE_WINDOW))


class KernelPool:
    """The driver process's warm kernels, by kernel name and by the thread that made them.

    A kernel's client channels belong to the event loop of the thread that started it (used
    from another thread's loop, replies never arrive: a hang), so a thread is only ever handed
    the kernels it started; the main thread, a sweep's worker and the explorer's worker each
    keep their own lane: the kernel in service and its standbys, warming or warm. Threads are
    told apart by the thread object, not its id, which a new thread can reuse. Kernels of
    threads that have ended are shut down.
    """

    def __init__(self) -> None:
        self.lanes: dict[tuple[str, threading.Thread], _Lane] = {}
        self._lock = threading.Lock()  # guards the dict and the count; each lane has one thread
        self.busy: list[WarmKernel] = []
        self.started = 0
        self.retired: list[str] = []
        self.interrupts = 0  # how many times interrupt() was called
        self.events: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self.warm_seconds: deque[float] = deque(maxlen=5)  # the last warm-ups measured

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

    # -- the event log -------------------------------------------------------------
    def _record(self, kind: str, kernel: WarmKernel, reason: str, waited_s: float = 0.0) -> None:
        thread = threading.current_thread().name
        event = Event(kind, kernel.number, reason, waited_s, thread, time.monotonic())
        self.events.append(event)
        logger.info("[%s] %s", thread, describe(event))

    # -- starting and retiring -------------------------------------------------------
    def _new(self, kernel_name: str, wandb_mode: str | None, reason: str) -> WarmKernel:
        with self._lock:
            self.started += 1
            number = self.started
        kernel = WarmKernel(kernel_name, wandb_mode, number)
        kernel.begin_warm()
        self._record("started", kernel, reason)
        return kernel

    def _retire(self, kernel: WarmKernel, why: str, lane: _Lane | None = None) -> None:
        """Out of service: shut down now, or with ``lane``, killed now and shut down later.

        A shutdown waits for the process to end (0.1 to 0.2 s); a kernel killed after a
        run is long gone by the end of the next run, and its shutdown then waits for nothing.
        """
        self.retired.append(why)
        self._record("retired", kernel, why)
        if lane is None:
            kernel.shutdown()
        else:
            kernel.kill()
            lane.dying.append(kernel)

    def _lane(self, kernel_name: str) -> _Lane:
        with self._lock:
            orphans = [self.lanes.pop(k) for k in list(self.lanes) if not k[1].is_alive()]
            lane = self.lanes.setdefault((kernel_name, threading.current_thread()), _Lane())
        for old in orphans:
            for kernel in old.idle:
                self._retire(kernel, "its thread ended")
            for kernel in old.dying:
                kernel.shutdown()
        return lane

    def idle_for(self, kernel_name: str) -> list[WarmKernel]:
        """This thread's idle kernels of ``kernel_name`` (the list itself): the one in
        service, if any, and its standbys."""
        return self._lane(kernel_name).idle

    def prewarm(self, kernel_name: str, wandb_mode: str | None = None) -> None:
        """Start a kernel warming now, so it is ready by this thread's first run."""
        lane = self._lane(kernel_name)
        if not lane.idle:
            lane.idle.append(self._new(kernel_name, wandb_mode, "first"))

    # -- handing kernels out and taking them back ---------------------------------------
    def acquire(self, kernel_name: str, wandb_mode: str | None = None) -> WarmKernel:
        """A warm kernel for a run in ``wandb_mode`` (default: the default mode)."""
        wandb_mode = wandb_mode or _default_wandb_mode()
        interrupts = self.interrupts
        stopping = getattr(_CANCEL, "predicate", None)

        def cancelled() -> bool:
            return self.interrupts != interrupts or (stopping is not None and stopping())

        if cancelled():
            raise KeyboardInterrupt("cancelled before the run started")
        lane = self._lane(kernel_name)
        gone: WarmKernel | None = None
        for kernel in [k for k in lane.idle if k.wandb_mode != wandb_mode]:
            lane.idle.remove(kernel)
            self._retire(kernel, f"W&B mode {kernel.wandb_mode}, the run's {wandb_mode}")
            gone = kernel
        while lane.idle:
            # The oldest: the one in service, else the standby that has warmed longest.
            kernel = min(lane.idle, key=lambda k: k.number)
            lane.idle.remove(kernel)
            if not kernel.alive():
                self._retire(kernel, "died while idle")
                gone = kernel
                continue
            try:
                return self._take(kernel, cancelled)
            except KeyboardInterrupt:
                lane.idle.append(kernel)  # still warming, for the next run
                raise
            except Exception as exc:
                self._retire(kernel, f"warm-up failed: {exc}")
                gone = kernel
        kernel = self._new(
            kernel_name, wandb_mode, f"replacement of {gone.number}" if gone else "first"
        )
        try:
            return self._take(kernel, cancelled)
        except KeyboardInterrupt:
            lane.idle.append(kernel)
            raise

    def _take(self, kernel: WarmKernel, cancelled: Callable[[], bool]) -> WarmKernel:
        """``kernel``, warm, for a run; the log says whether the run waited for its warm-up."""
        fresh = kernel.runs == 0
        began = time.monotonic()
        waited = not kernel.warmed()
        kernel.ensure_warm(cancelled)
        now = time.monotonic()
        if fresh and kernel.warm_seconds is not None:
            self.warm_seconds.append(kernel.warm_seconds)
        kernel.acquired_at = now
        self.busy.append(kernel)
        kind = "acquired" if fresh else "reused"
        self._record(kind, kernel, f"run {kernel.runs + 1}", now - began if waited else 0.0)
        return kernel

    def release(self, kernel: WarmKernel, reasons: list[str]) -> None:
        """Back to the pool, or retired; a standby starts warming if the thread needs one."""
        if kernel in self.busy:
            self.busy.remove(kernel)
        lane = self._lane(kernel.kernel_name)
        for dead in lane.dying:
            dead.shutdown()
        lane.dying.clear()
        if kernel.acquired_at is not None:
            lane.run_seconds.append(time.monotonic() - kernel.acquired_at)
        alive = kernel.alive()
        lane.failed.append(bool(reasons) or not alive)
        foreseen = not reasons and alive
        if kernel.runs >= _max_runs():
            if foreseen and self._successor_still_warming(kernel, lane):
                # Runs shorter than a warm-up: the old kernel serves on rather than make
                # the next run wait (up to KEPT_FACTOR times the count). Said once.
                if kernel.runs == _max_runs():
                    self._record("kept", kernel, f"{kernel.runs} runs, its successor warming")
            else:
                reasons = [*reasons, f"reached {kernel.runs} runs"]
        serving: WarmKernel | None = kernel
        if reasons or not alive:
            self._retire(kernel, "; ".join(reasons) or "not alive", lane)
            serving = None
            if not lane.idle:  # no standby: the next run waits for this one's warm-up
                why = "successor" if foreseen else "replacement"
                self._add(lane, f"{why} of {kernel.number}", kernel)
        else:
            kernel.scrub()
            lane.idle.append(kernel)
        self._plan(lane, serving)

    @staticmethod
    def _successor_still_warming(kernel: WarmKernel, lane: _Lane) -> bool:
        """Whether a planned retirement of ``kernel`` would make the next run wait: every
        standby is still warming (and the kernel has not yet served KEPT_FACTOR times its
        count: a successor that never warms must not keep it forever)."""
        standbys = [k for k in lane.idle if k is not kernel]
        return (
            kernel.runs < KEPT_FACTOR * _max_runs()
            and bool(standbys)
            and not any(k.warmed() for k in standbys)
        )

    # -- standbys ---------------------------------------------------------------------
    def lead_seconds(self) -> float:
        """How long before a kernel is needed its warm-up must start."""
        warm = max(self.warm_seconds, default=UNMEASURED_WARM_S)
        return warm * LEAD_FACTOR + LEAD_EXTRA_S

    def _plan(self, lane: _Lane, serving: WarmKernel | None) -> None:
        """Start a standby now if the thread would otherwise wait for a warm-up.

        A successor, when the runs left to the kernels this thread has (the one in service,
        then its standbys, each ``MLKIT_WARM_MAX_RUNS``) would, after one more run, no
        longer cover ``lead_seconds``: the next chance to start one is at that run's end.
        Runs are counted at the shortest run time seen lately. Only the newest kernel gets
        one, so none has more than one, and a second warms beside the first only on a
        spare core. A spare, when runs often fail (a failure retires its kernel).
        """
        ahead = sorted((k for k in lane.idle if k is not serving), key=lambda k: k.number)
        newest = ahead[-1] if ahead else serving
        if newest is None or len(ahead) >= MAX_AHEAD or not lane.run_seconds:
            return
        runs_left = (_max_runs() - serving.runs if serving else 0) + _max_runs() * len(ahead)
        warming = sum(not k.warmed() for k in ahead)
        if (runs_left - 1) * min(lane.run_seconds) < self.lead_seconds():
            if not warming or self._spare_cores(warming):
                self._add(lane, f"successor of {newest.number}", newest)
            return
        spares = ahead if serving else ahead[1:]
        if sum(lane.failed) >= FREQUENT_FAILURES and not spares and self._spare_cores(0):
            self._add(lane, "spare", newest)

    def _spare_cores(self, warming: int) -> bool:
        """More cores than the kernels running (this thread's next run among them) and
        ``warming`` kernels warming up."""
        return _cores() > len(self.busy) + 1 + warming

    def _add(self, lane: _Lane, reason: str, like: WarmKernel) -> None:
        lane.idle.append(self._new(like.kernel_name, like.wandb_mode, reason))

    def close(self) -> None:
        with self._lock:
            lanes = list(self.lanes.values())
            self.lanes.clear()
        for lane in lanes:
            for kernel in (*lane.idle, *lane.dying):
                kernel.shutdown()


def describe(event: Event) -> str:
    """One line for the log: ``kernel 3 started: successor of 2``."""
    head = f"kernel {event.kernel} {event.kind}"
    if event.kind in ("acquired", "reused"):
        wait = f"waited {event.waited_s:.2f} s for its warm-up" if event.waited else "warm"
        return f"{head} for {event.reason}, {wait}"
    return f"{head}: {event.reason}"


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
