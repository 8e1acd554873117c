"""Optuna sweeps where every trial is an executed notebook with its own record.

A driver asks Optuna for a trial, runs the notebook with the suggested parameters
(plus the trial's coordinates in ``MLKIT_TRIAL``), and tells the outcome: COMPLETE
with the objective(s), PRUNED, or FAIL with the reason. ``ask_trial`` and ``run_trial`` are
the two steps; the widget explorer drives its trials through them too, following each
run with ``run_trial``'s hooks (the record as soon as it exists, a cancel with a reason).

Storage is a URL: a journal file by default (``experiments/<study>/study.journal``;
plain paths and ``journal:///abs/path`` both work), ``sqlite:///...`` for one
machine, ``postgresql://...`` for many. Known traps and their answers:

- a killed worker leaves its trial RUNNING forever (journal files have no
  heartbeat): every worker stamps a heartbeat on its running trial; any worker
  fails trials whose worker process is gone (same host), that it died before
  stamping, or whose heartbeat is stale, enqueues their parameters once more, and
  marks their run records crashed with the reason (``reaper``);
- a torn last line of a journal file breaks every later read once something is
  appended after it: the tail is checked and cut, under Optuna's own lock, before
  the study is opened;
- exactly N trials across machines: asking is serialised by a lock (a file lock
  for files, an advisory lock for PostgreSQL) around "count, then ask".
- two drivers, a resumed one or two jobs drawing the same points: each worker seeds
  its sampler apart (``config.sampler_seed``), and TPE and random redraw a point the
  study already has rather than run it again or tell it FAIL, which would spend a trial
  of the budget (``config.make_sampler`` says how).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mlkit import track
from mlkit._contract import ENV_TRIAL, PRUNED_FILE, RUN_FILE
from mlkit._io import read_json, write_json
from mlkit.run import lifetime, runner, warm
from mlkit.storage import ask_lock, make_pruner
from mlkit.sweep import space as _space
from mlkit.sweep.config import SweepConfig, _create_or_resume, make_sampler, sampler_seed
from mlkit.sweep.reaper import STALE_AFTER_S as STALE_AFTER_S  # where tests and tools look
from mlkit.sweep.reaper import budget_used, holds_lock, reap_stale
from mlkit.sweep.results import Summary, _best_text, _counts, summarize

HEARTBEAT_S = 15.0
CANCEL_POLL_S = 0.1  # how soon a cancel is seen
CANCEL_RETRY_S = 0.5  # how often it is sent again, until the run ends


# --- the worker loop -------------------------------------------------------------


def trial_seed(base: int, params: dict[str, Any]) -> int:
    """A trial's seed comes from the trial (its parameters), not the worker or the order."""
    text = json.dumps({"seed": base, "params": params}, sort_keys=True)
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % (2**31 - 1)


def _worker_tag(index: int = 0) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "index": index}


def _root(cfg: SweepConfig) -> Path | None:
    return Path(cfg.root) if cfg.root else None


class _Heartbeat:
    """Stamps the running trial so other workers can tell it from a dead one."""

    def __init__(self, study: Any, trial_id: int) -> None:
        self.study, self.trial_id = study, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):
                self.study._storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


class _Canceller:
    """Interrupts the trial's run once ``cancelled()`` names a reason, until the run ends.

    A cancel that lands before the kernel is acquired, or between two cells, has nothing
    to interrupt yet, so the interrupt is sent again every ``CANCEL_RETRY_S``.
    """

    def __init__(self, cancelled: Callable[[], str | None] | None) -> None:
        self.cancelled = cancelled
        self._reason: str | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mlkit-trial-cancel", daemon=True)

    def reason(self) -> str | None:
        """The cancel reason, or None while the trial is not cancelled (or has no hook).

        The first reason given is kept: a cancelled trial stays cancelled.
        """
        if self._reason is None and self.cancelled is not None:
            self._reason = self.cancelled() or None
        return self._reason

    def _run(self) -> None:
        next_at = 0.0
        while not self.stop.wait(CANCEL_POLL_S):
            now = time.monotonic()
            if now >= next_at and self.reason():
                warm.pool().interrupt()
                next_at = now + CANCEL_RETRY_S

    def __enter__(self) -> _Canceller:
        if self.cancelled is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)


def ask_trial(
    cfg: SweepConfig,
    study: Any,
    index: int = 0,
    *,
    budget: int | None = None,
    enqueue: dict[str, Any] | None = None,
    user_attrs: dict[str, Any] | None = None,
) -> Any | None:
    """Ask the study for the next trial under its ask lock, stamped as this worker's.

    Under one lock, so workers on other machines count the same trials: fail stale
    trials (see ``reaper.reap_stale``), check the budget, ask, and stamp the trial with this
    worker and a first heartbeat.

    Args:
        cfg: the sweep's settings (storage and study name give the lock).
        study: the open study.
        index: this worker's index in the sweep, recorded on the trial.
        budget: ask only while fewer trials count against it (reaped ones do not) or a
            trial waits in the queue; None asks regardless.
        enqueue: a point chosen by hand: it is enqueued and asked at once. Stale trials
            are not reaped first, or the retries that reaping enqueues would be handed
            out in its place.
        user_attrs: user attributes of the enqueued point (with ``enqueue``).

    Returns:
        The asked ``optuna.Trial``, or None once the budget is spent.
    """
    with ask_lock(cfg.storage, cfg.study):
        if enqueue is None:
            reap_stale(study, root=_root(cfg), locked=holds_lock(cfg.storage))
        if budget is not None:
            counted, waiting = budget_used(study)
            if counted >= budget and not waiting:
                return None
        if enqueue is not None:
            study.enqueue_trial(enqueue, user_attrs=user_attrs, skip_if_exists=False)
        trial = study.ask()
        storage = study._storage
        storage.set_trial_user_attr(trial._trial_id, "worker", _worker_tag(index))
        storage.set_trial_user_attr(trial._trial_id, "heartbeat", time.time())
    return trial


def worker(cfg: SweepConfig, index: int = 0, stop: threading.Event | None = None) -> int:
    """Ask, run, tell, until the study has ``n_trials`` trials, time is up or ``stop`` is set.

    Returns the number of trials this worker ran.
    """
    if cfg.engine == "warm":
        _prewarm(cfg)  # the kernel imports torch while this process imports optuna
    study = worker_study(cfg, index)
    dims = cfg.dims()
    # After Ctrl-C (stop set) a trial not yet in its first cell is cancelled, not run.
    cancellable: Any = contextlib.nullcontext()
    if cfg.engine == "warm" and stop is not None:
        cancellable = warm.cancel_when(stop.is_set)
    ran = 0
    with cancellable:
        while True:
            if cfg.timeout and time.time() - cfg.started > cfg.timeout:
                break
            if stop is not None and stop.is_set():
                break
            trial = ask_trial(cfg, study, index, budget=cfg.n_trials)
            if trial is None:
                break
            run_trial(cfg, study, trial, dims)
            ran += 1
    return ran


def worker_study(cfg: SweepConfig, index: int = 0) -> Any:
    """The study as worker ``index`` uses it: the sweep's pruner, a sampler seeded its own way.

    Each worker takes its sampler's seed from ``sampler_seed``, or two workers (or a
    resumed driver) would draw the same points.
    """
    study = _create_or_resume(cfg)
    seed = sampler_seed(cfg, study, index)
    study.sampler = make_sampler(cfg.sampler, seed, cfg.dims(), len(cfg.objectives))
    study.pruner = make_pruner(cfg.pruner)
    return study


def _prewarm(cfg: SweepConfig) -> None:
    """Start warming a kernel for the trials now, so it is ready by the first one."""

    mode = track.resolve_mode(cfg.tracking)
    warm.pool().prewarm(runner.signature(cfg.notebook).kernel_name, mode)


def run_trial(
    cfg: SweepConfig,
    study: Any,
    trial: Any,
    dims: list[_space.Dim],
    *,
    on_start: Callable[[int, Path], None] | None = None,
    cancelled: Callable[[], str | None] | None = None,
) -> str:
    """Execute one trial's notebook and tell Optuna how it ended. Returns the state name.

    Args:
        cfg: the sweep's settings.
        study: the open study.
        trial: the trial to run, as ``ask_trial`` gives it.
        dims: the search space's dimensions (``cfg.dims()``).
        on_start: called as ``on_start(trial_number, run_dir)`` as soon as the trial's run
            record exists, before the kernel runs: a live view follows its
            ``metrics.jsonl`` from there.
        cancelled: polled while the trial runs; once it returns a reason (a non-empty
            string, kept from then on) the warm runs of this process are interrupted (a
            run still waiting for its kernel never runs a cell) and the trial is told FAIL
            with that reason as ``fail_reason`` and ``cancelled`` set; its run.json says so
            too. Needs the warm engine. A cancelled trial returns "FAIL" where Ctrl-C
            raises KeyboardInterrupt.
    """
    canceller = _Canceller(cancelled)
    run_dir: list[Path] = []

    def fail(reason: str | None) -> str:
        return _fail(study, trial, reason, canceller.reason(), run_dir[0] if run_dir else None)

    try:
        # Drawn, checked against the study and stored under the ask lock: two workers never
        # both draw a point before either has stored it.
        with ask_lock(cfg.storage, cfg.study):
            suggested = _space.suggest(trial, dims)
        values, seed = _trial_values(cfg, suggested)
        storage = study._storage
        storage.set_trial_user_attr(trial._trial_id, "seed", seed)
    except Exception as exc:
        fail(None)
        return f"FAIL: could not sample: {exc}"
    except KeyboardInterrupt as exc:  # Ctrl-C before the run began: it must not stay RUNNING
        fail(f"KeyboardInterrupt: {runner.interrupt_reason(exc)}")
        raise

    def started(record: dict[str, Any]) -> None:  # named while it runs, and if interrupted
        storage.set_trial_user_attr(trial._trial_id, "run_id", record["id"])
        storage.set_trial_user_attr(trial._trial_id, "run_path", record["path"])
        run_dir.append(Path(record["path"]))
        if on_start is not None:
            on_start(trial.number, run_dir[0])

    try:
        with _Heartbeat(study, trial._trial_id), canceller:
            info = _run_notebook(cfg, trial, values, started)
    except Exception as exc:  # the driver itself failed: the trial must not stay RUNNING
        return fail(f"driver error: {exc}")
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM: the sweep ends, and says why
        why = runner.interrupt_reason(exc)
        state = fail(f"KeyboardInterrupt: {why}")
        if canceller.reason() is None:
            raise
        return state  # a cancel, not Ctrl-C: the caller goes on
    return _judge(cfg, study, trial, info, fail)


def _trial_values(cfg: SweepConfig, suggested: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The notebook's values for a suggested point, and the seed it runs with."""
    seed = trial_seed(cfg.seed, suggested)
    values = {**cfg.fixed, **suggested}
    # A seed fixed with -p is fixed for every trial, as -p says (and as best_params reads it).
    fixed = "seed" in suggested or "seed" in cfg.fixed
    if "seed" in runner.signature(cfg.notebook).names and not fixed:
        values["seed"] = seed
    return values, values.get("seed", seed)


def _run_notebook(
    cfg: SweepConfig,
    trial: Any,
    values: dict[str, Any],
    started: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """``runner.run`` for a trial: recorded under its study, its coordinates in the kernel."""
    retry_of = trial.user_attrs.get("retry_of") if hasattr(trial, "user_attrs") else None
    spec = {
        "storage": cfg.storage,
        "study": cfg.study,
        "number": trial.number,
        "metric": cfg.objectives[0] if len(cfg.objectives) == 1 else None,
        "pruner": cfg.pruner,
        "session": cfg.started,  # the notebook keeps its storage open for this sweep
    }
    return runner.run(
        cfg.notebook,
        values,
        experiment=cfg.study,
        cell_timeout=cfg.trial_timeout,
        tracking=cfg.tracking,
        job_type="trial",
        progress=False,
        extra={
            "study": cfg.study,
            "trial": trial.number,
            **({"retry_of": retry_of} if retry_of is not None else {}),
        },
        env={ENV_TRIAL: json.dumps(spec)},
        root=Path(cfg.root) if cfg.root else None,
        engine=cfg.engine,
        on_start=started,
    )


def _judge(
    cfg: SweepConfig, study: Any, trial: Any, info: dict[str, Any], fail: Callable[[str], str]
) -> str:
    """Tell the outcome of a run that ended: COMPLETE, PRUNED or FAIL with its reason."""
    from optuna.trial import TrialState

    storage = study._storage
    if (info.get("wandb") or {}).get("id"):
        storage.set_trial_user_attr(trial._trial_id, "wandb_id", info["wandb"]["id"])
    result = info.get("result") or {}
    storage.set_trial_user_attr(trial._trial_id, "result", _finite_only(result))
    pruned = Path(info["path"], PRUNED_FILE)
    if info["status"] == "completed" and pruned.exists():
        _tell(study, trial, state=TrialState.PRUNED)
        return "PRUNED"
    if info["status"] != "completed":
        return fail(info.get("reason", ""))
    missing = [m for m in cfg.objectives if m not in result]
    if missing:
        return fail(f"objective {missing[0]!r} not in the result (it has: {', '.join(result)})")
    objective = [float(result[m]) for m in cfg.objectives]
    if not all(math.isfinite(v) for v in objective):
        return fail("non-finite objective")
    _tell(study, trial, objective if len(objective) > 1 else objective[0])
    return "COMPLETE"


def _fail(
    study: Any, trial: Any, reason: str | None, cancel_reason: str | None, run_dir: Path | None
) -> str:
    """Tell FAIL with its reason; a cancelled trial gives the cancel's, and its record too."""
    from optuna.trial import TrialState

    storage = study._storage
    if cancel_reason:
        reason = cancel_reason
        storage.set_trial_user_attr(trial._trial_id, "cancelled", True)
        if run_dir is not None:
            _mark_cancelled(run_dir, cancel_reason)
    if reason is not None:
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
    _tell(study, trial, state=TrialState.FAIL)
    return "FAIL"


def _mark_cancelled(run_dir: Path, reason: str) -> None:
    """run.json says the run failed as cancelled, and what the interrupt looked like."""
    info = read_json(run_dir / RUN_FILE, {}) or {}
    if info.get("reason") != reason:
        info["interrupted_as"] = info.get("reason", "")
    info.update(status="failed", reason=reason, cancelled=True)
    write_json(run_dir / RUN_FILE, info)


def _tell(study: Any, trial: Any, *args: Any, **kwargs: Any) -> None:
    """``study.tell`` for ask-and-tell drivers.

    The grid sampler calls ``study.stop()`` from ``tell`` once every grid point is
    finished, and ``stop`` raises outside ``study.optimize``. The trial's state is
    stored before that (Optuna writes it in a ``finally``), and our workers stop by
    counting trials, so that one error is expected and dropped.
    """
    try:
        study.tell(trial, *args, **kwargs)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def _finite_only(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not (isinstance(v, float) and not math.isfinite(v))}


def _worker_main(cfg_dict: dict[str, Any], index: int) -> None:
    """Entry point of a spawned worker process (run through ``lifetime.run_as_child``).

    The driver stops it with SIGTERM: its running trial then fails naming the signal.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    with contextlib.suppress(KeyboardInterrupt), runner.terminate_as_interrupt():
        worker(SweepConfig(**cfg_dict), index)


# --- the driver -------------------------------------------------------------------


def run(cfg: SweepConfig, *, progress: bool = True) -> Summary:
    """Run the sweep with ``cfg.jobs`` workers and show progress.

    Worker 0 runs on this thread. With the warm engine the other workers are threads of
    this process too: each drives its own kernels, so the trials are still processes, and
    a thread costs nothing to start where a spawned worker costs an interpreter and
    mlkit's imports, about a second of CPU that the kernels warming at the same time
    want. With the papermill engine they are spawned processes.
    """
    import multiprocessing

    cfg.started = time.time()
    if cfg.engine == "warm":
        _prewarm(cfg)  # for worker 0, which runs on this thread
    study = _create_or_resume(cfg)  # fail fast on a conflicting study, before workers start
    with ask_lock(cfg.storage, cfg.study):
        reap_stale(study, root=_root(cfg), locked=holds_lock(cfg.storage))
    stop = threading.Event()
    threads: list[threading.Thread] = []
    procs = []
    ctx = multiprocessing.get_context("spawn")
    for index in range(1, cfg.jobs):
        if cfg.engine == "warm":
            thread = threading.Thread(
                target=_worker_thread,
                args=(cfg, index, stop),
                name=f"mlkit-sweep-worker-{index}",
                daemon=True,
            )
            thread.start()
            threads.append(thread)
        else:
            # It ends with this process, even one killed by SIGKILL (see lifetime).
            args = (os.getpid(), _worker_main, asdict(cfg), index)
            proc = ctx.Process(target=lifetime.run_as_child, args=args, daemon=False)
            proc.start()
            procs.append(proc)
    # Worker 0 runs here, on the thread whose kernel _prewarm started (a kernel's channels
    # belong to the thread that made it); the progress display runs beside it.
    ended = threading.Event()
    watcher = threading.Thread(
        target=_watch,
        args=(cfg, study, progress, ended),
        name="mlkit-sweep-progress",
        daemon=True,
    )
    watcher.start()
    interrupted = False
    try:
        with runner.terminate_as_interrupt():  # SIGTERM, SIGHUP: as Ctrl-C, named
            worker(cfg, 0, stop)
            for thread in threads:
                thread.join()
            for proc in procs:
                proc.join()
    except KeyboardInterrupt as exc:
        # Ctrl-C ends the whole sweep: no worker asks for another trial, and the trials
        # running on other threads are interrupted (or, still waiting for their kernel,
        # cancelled), so they fail and say so, like this thread's; a worker process is
        # sent the signal this one got (SIGTERM for Ctrl-C) and fails its trial with it.
        interrupted = True
        stop.set()
        warm.pool().interrupt()
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, getattr(exc, "signum", signal.SIGTERM))
        raise
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10 if interrupted else None)
        for proc in procs:
            proc.join(timeout=30 if interrupted else None)
            if proc.is_alive():  # it did not stop on the signal: it does not outlive us
                proc.kill()
        ended.set()
        watcher.join()
    return summarize(cfg.study, cfg.storage, time.time() - cfg.started)


def _worker_thread(cfg: SweepConfig, index: int, stop: threading.Event) -> None:
    """A worker on a thread of the driver; an unexpected error is reported, not lost."""
    try:
        worker(cfg, index, stop)
    except KeyboardInterrupt:
        pass  # the sweep was interrupted; the trial this worker ran said so
    except Exception as exc:
        print(f"mlkit sweep: worker {index} stopped: {type(exc).__name__}: {exc}", file=sys.stderr)


def _watch(cfg: SweepConfig, study: Any, progress: bool, ended: threading.Event) -> None:
    """Poll the storage and draw trials done, pruned, failed, best so far, time left.

    It waits on ``ended`` between polls, so when the workers end the display shows the
    last trial and stops at once.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [
        TextColumn("[bold]{task.fields[study]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} trials"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("left ~{task.fields[eta]}"),
    ]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("sweep", total=cfg.n_trials, study=cfg.study, status="", eta="?")
        while True:
            running = not ended.is_set()
            counts = _counts(study)
            done = counts["complete"] + counts["pruned"] + counts["fail"]
            elapsed = time.time() - cfg.started
            left = max(cfg.n_trials - done, 0)
            eta = "?"
            if done:
                eta = f"{elapsed / done * left:.0f}s"
            best = _best_text(study)
            bar.update(
                task,
                completed=min(done, cfg.n_trials),
                status=f"ok {counts['complete']} pruned {counts['pruned']} "
                f"failed {counts['fail']} running {counts['running']}  best {best}",
                eta=eta,
            )
            if not running:
                break
            ended.wait(0.5)
