"""Optuna sweeps where every trial is an executed notebook with its own record.

The only module that creates or loads Optuna studies. A driver asks Optuna for a
trial, runs the notebook with the suggested parameters (plus the trial's
coordinates in ``MLKIT_TRIAL``), and tells the outcome: COMPLETE with the
objective(s), PRUNED, or FAIL with the reason.

Storage is a URL: a journal file by default (``experiments/<study>/study.journal``;
plain paths and ``journal:///abs/path`` both work), ``sqlite:///...`` for one
machine, ``postgresql://...`` for many. Known traps and their answers:

- a killed worker leaves its trial RUNNING forever (journal files have no
  heartbeat): every worker stamps a heartbeat on its running trial; any worker
  fails trials whose worker process is gone (same host) or whose heartbeat is
  stale, and enqueues their parameters once more;
- a torn last line of a journal file breaks every later read once something is
  appended after it: the tail is checked and cut, under Optuna's own lock, before
  the study is opened;
- exactly N trials across machines: asking is serialised by a lock (a file lock
  for files, an advisory lock for PostgreSQL) around "count, then ask".
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import socket
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlkit import space as _space
from mlkit.errors import MlkitError
from mlkit.record import pid_alive

SAMPLERS = ("tpe", "random", "grid", "cmaes", "qmc", "nsga2")
PRUNERS = ("median", "hyperband", "halving", "none")
HEARTBEAT_S = 15.0
STALE_AFTER_S = 90.0
MINIMIZE_HINTS = ("loss", "error", "rmse", "mae", "mse", "time")


class SweepError(MlkitError, ValueError):
    """A sweep cannot start as asked."""


# --- configuration ------------------------------------------------------------


@dataclass
class SweepConfig:
    """Everything a worker needs; JSON-able so spawned workers get it whole."""

    notebook: str
    study: str
    storage: str
    space: list[dict[str, Any]]
    objectives: list[str]
    directions: list[str]
    n_trials: int = 20
    timeout: float | None = None
    jobs: int = 1
    sampler: str = "tpe"
    pruner: str = "median"
    trial_timeout: float | None = None
    seed: int = 0
    fixed: dict[str, Any] = field(default_factory=dict)
    tracking: str | None = None
    root: str | None = None
    engine: str = "warm"
    started: float = 0.0

    def dims(self) -> list[_space.Dim]:
        return _space.parse({d["name"]: _dim_spec(d) for d in self.space}, "the study's space")


def _dim_spec(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "name"}


def parse_objective(text: str) -> tuple[str, str]:
    """``val/accuracy``, ``val/loss:min`` or ``val/accuracy:maximize`` -> (metric, direction)."""
    metric, _, direction = text.partition(":")
    metric = metric.strip()
    if not metric:
        raise SweepError(f"--objective {text!r} names no metric. Pass --objective val/accuracy.")
    direction = direction.strip().lower()
    if not direction:
        lowered = metric.lower()
        direction = "minimize" if any(h in lowered for h in MINIMIZE_HINTS) else "maximize"
    aliases = {"min": "minimize", "max": "maximize", "minimize": "minimize", "maximize": "maximize"}
    if direction not in aliases:
        raise SweepError(
            f"--objective {text!r}: direction must be min or max, got {direction!r}. "
            "Pass --objective val/loss:min."
        )
    return metric, aliases[direction]


def default_storage(study: str, root: Path) -> str:
    return str(root / study / "study.journal")


def redact(url: str) -> str:
    """The storage URL without its password, for anything that is written down."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


# --- storage ------------------------------------------------------------------


def _journal_path(url: str) -> Path | None:
    if url.startswith("journal:///"):
        return Path(url[len("journal://") :])
    if "://" in url:
        return None
    return Path(url)


def repair_journal_tail(path: Path) -> int:
    """Cut a torn last line (a write killed midway) so appends stay readable.

    Returns the number of bytes cut (kept beside the journal as ``.torn-<time>``).
    """
    from optuna.storages.journal import JournalFileSymlinkLock
    from optuna.storages.journal._file import get_lock_file

    if not path.exists() or path.stat().st_size == 0:
        return 0
    with get_lock_file(JournalFileSymlinkLock(str(path))):
        data = path.read_bytes()
        end = len(data)
        if data.endswith(b"\n"):
            last_start = data.rfind(b"\n", 0, end - 1) + 1
            try:
                json.loads(data[last_start:end])
                return 0
            except ValueError:
                cut_at = last_start
        else:
            cut_at = data.rfind(b"\n") + 1
        torn = data[cut_at:]
        (path.parent / f"{path.name}.torn-{int(time.time())}").write_bytes(torn)
        with open(path, "r+b") as fh:
            fh.truncate(cut_at)
            fh.flush()
            os.fsync(fh.fileno())
        return len(torn)


def open_storage(url: str, *, sync: bool = True) -> Any:
    """An Optuna storage from a URL or a journal file path.

    ``sync=False`` opens a journal whose appends are flushed to the OS (every process
    reads them at once) but not fsynced: for a trial's per-epoch reports (see
    ``_trial_storage``), never for what the driver tells.
    """
    import optuna

    journal = _journal_path(url)
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        journal.parent.mkdir(parents=True, exist_ok=True)
        repair_journal_tail(journal)
        backend = JournalFileBackend if sync else _unsynced_journal_backend()
        return JournalStorage(backend(str(journal)))
    if url.startswith(("sqlite:", "postgresql", "mysql")):
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite:"):
            # SQLite locks under concurrent writers; a long busy timeout rides it out.
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        if url.startswith("postgresql"):
            # Drivers starting at once on a fresh database race to create Optuna's tables
            # ("duplicate key ... studydirection"): create them one at a time.
            with _pg_advisory_lock(url, "mlkit:schema"):
                return optuna.storages.RDBStorage(url, **kwargs)
        return optuna.storages.RDBStorage(url, **kwargs)
    raise SweepError(
        f"Storage {redact(url)!r} is not understood. Use a journal file path (the default), "
        "sqlite:///path.db, or postgresql://user@host/db."
    )


@contextlib.contextmanager
def _pg_advisory_lock(url: str, name: str) -> Iterator[None]:
    """A PostgreSQL advisory lock: held by the session, released even if we die."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    key = int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


@contextlib.contextmanager
def ask_lock(url: str, study: str) -> Iterator[None]:
    """Serialise "count trials, then ask" across processes and machines."""
    journal = _journal_path(url)
    if url.startswith("postgresql"):
        with _pg_advisory_lock(url, f"mlkit:{study}"):
            yield
        return
    if journal is not None:
        lock_path = journal.with_name(journal.name + ".ask.lock")
    elif url.startswith("sqlite:///"):
        lock_path = Path(url[len("sqlite:///") :] + ".ask.lock")
    else:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def make_pruner(name: str) -> Any:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SweepError(f"Unknown pruner {name!r}. Valid: {', '.join(PRUNERS)}.")


def make_sampler(name: str, seed: int, dims: list[_space.Dim], n_objectives: int) -> Any:
    import warnings

    import optuna

    # multivariate/group TPE is "experimental" in Optuna, and the right choice for
    # conditional spaces; the warning would print once per worker.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, n_startup_trials=6
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(_space.grid(dims), seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise SweepError(f"Unknown sampler {name!r}. Valid: {', '.join(SAMPLERS)}.")


def load_study(
    url: str, name: str, *, sampler: Any = None, pruner: Any = None, storage: Any = None
) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(
            study_name=name, storage=storage or open_storage(url), sampler=sampler, pruner=pruner
        )
    except KeyError:
        raise SweepError(
            f"No study {name!r} in {redact(url)}. List studies with: optuna studies "
            f"--storage URL, or start one with mlkit sweep."
        ) from None


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


@functools.cache
def _unsynced_journal_backend() -> type:
    from optuna.storages.journal import JournalFileBackend
    from optuna.storages.journal._file import get_lock_file

    class UnsyncedJournalFileBackend(JournalFileBackend):
        """Optuna's journal file, appended under its lock and flushed, without fsync."""

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
            with get_lock_file(self._lock), open(self._file_path, "ab") as fh:
                fh.write(text.encode("utf-8"))

    return UnsyncedJournalFileBackend


# --- checking and starting -----------------------------------------------------


def prepare(
    notebook: str | Path,
    space_path: str | Path,
    *,
    study: str | None = None,
    n_trials: int = 20,
    timeout: float | None = None,
    jobs: int = 1,
    storage: str | None = None,
    sampler: str = "tpe",
    pruner: str = "median",
    objectives: list[str] | None = None,
    trial_timeout: float | None = None,
    seed: int = 0,
    fixed: dict[str, Any] | None = None,
    from_cli: bool = False,
    tracking: str | None = None,
    root: Path | None = None,
    engine: str = "warm",
) -> SweepConfig:
    """Check everything that can be checked before a trial runs; nothing is written."""
    from mlkit import params as _params
    from mlkit.record import check_experiment_name, experiments_root

    signature = _params.read_signature(notebook)
    dims = _space.load(space_path)
    _space.check_against(dims, signature, str(space_path))
    fixed = _params.validate(fixed or {}, signature, from_cli=from_cli)
    overlap = sorted(set(fixed) & {d.name for d in dims})
    if overlap:
        raise SweepError(
            f"Parameter '{overlap[0]}' is both fixed with -p and searched in {space_path}. "
            "Drop one of them."
        )
    for name, value, low in (("--trials", n_trials, 1), ("--jobs", jobs, 1)):
        if not isinstance(value, int) or value < low:
            raise SweepError(f"{name} must be an int >= {low}, got {value!r}.")
    for name, value in (("--timeout", timeout), ("--trial-timeout", trial_timeout)):
        if value is not None and not value > 0:
            raise SweepError(f"{name} must be a number of seconds > 0, got {value!r}.")
    if engine not in ("warm", "papermill"):
        raise SweepError(f"Unknown engine {engine!r}. Valid: warm, papermill.")
    if sampler not in SAMPLERS:
        raise SweepError(f"Unknown sampler {sampler!r}. Valid: {', '.join(SAMPLERS)}.")
    if pruner not in PRUNERS:
        raise SweepError(f"Unknown pruner {pruner!r}. Valid: {', '.join(PRUNERS)}.")
    parsed = [parse_objective(o) for o in (objectives or ["val/accuracy"])]
    if len(parsed) > 2:
        raise SweepError("At most two objectives (a Pareto front of two metrics).")
    if len(parsed) == 2 and pruner != "none":
        pruner = "none"  # Optuna cannot prune multi-objective studies
    if sampler == "grid":
        _space.grid(dims)
    name = study or f"{Path(notebook).stem}-sweep"
    check_experiment_name(name)
    root = root or experiments_root()
    url = storage or default_storage(name, root)
    if _journal_path(url) is None and "://" not in url:
        raise SweepError(f"Storage {redact(url)!r} is not understood.")
    return SweepConfig(
        notebook=str(notebook),
        study=name,
        storage=url,
        space=[{"name": d.name, **d.to_dict()} for d in dims],
        objectives=[m for m, _ in parsed],
        directions=[d for _, d in parsed],
        n_trials=n_trials,
        timeout=timeout,
        jobs=jobs,
        sampler=sampler,
        pruner=pruner,
        trial_timeout=trial_timeout,
        seed=seed,
        fixed=fixed,
        tracking=tracking,
        root=str(root),
        engine=engine,
    )


def _create_or_resume(cfg: SweepConfig) -> Any:
    """Create the study, or resume it when the same notebook, space and objectives match."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(cfg.storage)
    study = optuna.create_study(
        study_name=cfg.study,
        storage=storage,
        directions=cfg.directions,
        load_if_exists=True,
    )
    attrs = study.user_attrs
    identity = {
        "notebook": cfg.notebook,
        "space": cfg.space,
        "objectives": cfg.objectives,
        "fixed": cfg.fixed,
    }
    if "mlkit" not in attrs:
        study.set_user_attr(
            "mlkit", {**identity, "sampler": cfg.sampler, "pruner": cfg.pruner, "seed": cfg.seed}
        )
    else:
        old = attrs["mlkit"]
        for key, value in identity.items():
            if old.get(key) != json.loads(json.dumps(value)):
                raise SweepError(
                    f"Study {cfg.study!r} already exists with a different {key} "
                    f"({old.get(key)!r}). Resume it with the same settings, or pass "
                    f"--study NEW_NAME."
                )
    if list(study.directions) != [
        optuna.study.StudyDirection.MINIMIZE
        if d == "minimize"
        else optuna.study.StudyDirection.MAXIMIZE
        for d in cfg.directions
    ]:
        raise SweepError(f"Study {cfg.study!r} exists with other directions; use a new --study.")
    return study


# --- the worker loop -------------------------------------------------------------


def trial_seed(base: int, params: dict[str, Any]) -> int:
    """A trial's seed comes from the trial (its parameters), not the worker or the order."""
    text = json.dumps({"seed": base, "params": params}, sort_keys=True)
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % (2**31 - 1)


def _worker_tag(index: int = 0) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "index": index}


def reap_stale(study: Any, now: float | None = None) -> list[int]:
    """Fail RUNNING trials whose worker is gone; enqueue their parameters once more."""
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
        stale = now - float(beat) > STALE_AFTER_S
        if not (dead or stale):
            continue
        why = (
            f"worker pid {worker.get('pid')} on {host} is gone"
            if dead
            else f"no heartbeat for {now - float(beat):.0f} s"
        )
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
    return reaped


def _budget_used(study: Any) -> tuple[int, int]:
    """(trials that count against --trials, trials waiting in the queue)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counted = sum(1 for t in trials if not t.user_attrs.get("reaped"))
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    return counted, waiting


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


def worker(cfg: SweepConfig, index: int = 0, stop: threading.Event | None = None) -> int:
    """Ask, run, tell, until the study has ``n_trials`` trials, time is up or ``stop`` is set.

    Returns the number of trials this worker ran.
    """
    if cfg.engine == "warm":
        _prewarm(cfg)  # the kernel imports torch while this process imports optuna
    study = _create_or_resume(cfg)
    dims = cfg.dims()
    # Grid and QMC map a shared sequence onto trial slots: every worker needs the same
    # seed. Samplers that draw at random need different ones, or workers on the same
    # study draw the same start-up points.
    host = zlib.crc32(socket.gethostname().encode()) % 100_003
    seed = cfg.seed if cfg.sampler in ("grid", "qmc") else cfg.seed + 7919 * index + host
    study.sampler = make_sampler(cfg.sampler, seed, dims, len(cfg.objectives))
    study.pruner = make_pruner(cfg.pruner)
    # After Ctrl-C (stop set) a trial not yet in its first cell is cancelled, not run.
    cancellable: Any = contextlib.nullcontext()
    if cfg.engine == "warm" and stop is not None:
        from mlkit import warm

        cancellable = warm.cancel_when(stop.is_set)
    ran = 0
    with cancellable:
        while True:
            if cfg.timeout and time.time() - cfg.started > cfg.timeout:
                break
            if stop is not None and stop.is_set():
                break
            with ask_lock(cfg.storage, cfg.study):
                reap_stale(study)
                counted, waiting = _budget_used(study)
                if counted >= cfg.n_trials and not waiting:
                    break
                trial = study.ask()
                storage = study._storage
                storage.set_trial_user_attr(trial._trial_id, "worker", _worker_tag(index))
                storage.set_trial_user_attr(trial._trial_id, "heartbeat", time.time())
            run_trial(cfg, study, trial, dims)
            ran += 1
    return ran


def _prewarm(cfg: SweepConfig) -> None:
    """Start warming a kernel for the trials now, so it is ready by the first one."""
    from mlkit import runner, track, warm

    mode = track.resolve_mode(cfg.tracking)
    warm.pool().prewarm(runner.signature(cfg.notebook).kernel_name, mode)


def run_trial(cfg: SweepConfig, study: Any, trial: Any, dims: list[_space.Dim]) -> str:
    """Execute one trial's notebook and tell Optuna how it ended. Returns the state name."""
    from optuna.trial import TrialState

    from mlkit import runner
    from mlkit.trial import ENV_TRIAL, PRUNED_FILE

    retry_of = trial.user_attrs.get("retry_of") if hasattr(trial, "user_attrs") else None
    try:
        suggested = _space.suggest(trial, dims)
    except Exception as exc:
        _tell(study, trial, state=TrialState.FAIL)
        return f"FAIL: could not sample: {exc}"
    seed = trial_seed(cfg.seed, suggested)
    values = {**cfg.fixed, **suggested}
    if "seed" in runner.signature(cfg.notebook).names and "seed" not in suggested:
        values["seed"] = seed
    spec = {
        "storage": cfg.storage,
        "study": cfg.study,
        "number": trial.number,
        "metric": cfg.objectives[0] if len(cfg.objectives) == 1 else None,
        "pruner": cfg.pruner,
        "session": cfg.started,  # the notebook keeps its storage open for this sweep
    }
    storage = study._storage
    storage.set_trial_user_attr(trial._trial_id, "seed", values.get("seed", seed))

    def started(record: dict[str, Any]) -> None:  # named while it runs, and if interrupted
        storage.set_trial_user_attr(trial._trial_id, "run_id", record["id"])
        storage.set_trial_user_attr(trial._trial_id, "run_path", record["path"])

    with _Heartbeat(study, trial._trial_id):
        try:
            info = runner.run(
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
        except Exception as exc:  # the driver itself failed: the trial must not stay RUNNING
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", f"driver error: {exc}")
            _tell(study, trial, state=TrialState.FAIL)
            return "FAIL"
        except KeyboardInterrupt:  # Ctrl-C: the sweep ends, and says why this trial did
            storage.set_trial_user_attr(
                trial._trial_id, "fail_reason", "KeyboardInterrupt: interrupted by the user"
            )
            _tell(study, trial, state=TrialState.FAIL)
            raise
    if (info.get("wandb") or {}).get("id"):
        storage.set_trial_user_attr(trial._trial_id, "wandb_id", info["wandb"]["id"])
    result = info.get("result") or {}
    storage.set_trial_user_attr(trial._trial_id, "result", _finite_only(result))
    pruned = Path(info["path"], PRUNED_FILE)
    if info["status"] == "completed" and pruned.exists():
        _tell(study, trial, state=TrialState.PRUNED)
        return "PRUNED"
    if info["status"] != "completed":
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", info.get("reason", ""))
        _tell(study, trial, state=TrialState.FAIL)
        return "FAIL"
    missing = [m for m in cfg.objectives if m not in result]
    if missing:
        storage.set_trial_user_attr(
            trial._trial_id,
            "fail_reason",
            f"objective {missing[0]!r} not in the result (it has: {', '.join(result)})",
        )
        _tell(study, trial, state=TrialState.FAIL)
        return "FAIL"
    objective = [float(result[m]) for m in cfg.objectives]
    if not all(math.isfinite(v) for v in objective):
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", "non-finite objective")
        _tell(study, trial, state=TrialState.FAIL)
        return "FAIL"
    _tell(study, trial, objective if len(objective) > 1 else objective[0])
    return "COMPLETE"


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
    """Entry point of a spawned worker process."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    worker(SweepConfig(**cfg_dict), index)


# --- the driver -------------------------------------------------------------------


@dataclass
class Summary:
    study: str
    storage: str
    n_complete: int
    n_pruned: int
    n_failed: int
    best: dict[str, Any] | None
    pareto: list[dict[str, Any]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        reap_stale(study)
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
            proc = ctx.Process(target=_worker_main, args=(asdict(cfg), index), daemon=False)
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
        worker(cfg, 0, stop)
        for thread in threads:
            thread.join()
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:
        # Ctrl-C ends the whole sweep: no worker asks for another trial, and the trials
        # running on other threads are interrupted (or, still waiting for their kernel,
        # cancelled), so they fail and say so, like this thread's.
        interrupted = True
        stop.set()
        from mlkit import warm

        warm.pool().interrupt()
        for proc in procs:
            proc.terminate()
        raise
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10 if interrupted else None)
        for proc in procs:
            proc.join()
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


def _counts(study: Any) -> dict[str, int]:
    from optuna.trial import TrialState

    counts = {"complete": 0, "pruned": 0, "fail": 0, "running": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif t.state == TrialState.PRUNED:
            counts["pruned"] += 1
        elif t.state == TrialState.FAIL and not t.user_attrs.get("reaped"):
            counts["fail"] += 1
        elif t.state == TrialState.RUNNING:
            counts["running"] += 1
    return counts


def _best_text(study: Any) -> str:
    try:
        if len(study.directions) > 1:
            return f"{len(study.best_trials)} on the Pareto front"
        return f"{study.best_value:.4f}"
    except ValueError:
        return "-"


def summarize(name: str, url: str, seconds: float = 0.0) -> Summary:
    """Counts, the best trial (or the Pareto front) and where its record is."""
    study = load_study(url, name)
    counts = _counts(study)
    best, pareto = None, []
    try:
        if len(study.directions) == 1:
            best = _trial_dict(study.best_trial)
        else:
            pareto = [_trial_dict(t) for t in study.best_trials]
    except ValueError:
        pass
    return Summary(
        name,
        redact(url),
        counts["complete"],
        counts["pruned"],
        counts["fail"],
        best,
        pareto,
        seconds,
    )


def _trial_dict(trial: Any) -> dict[str, Any]:
    return {
        "number": trial.number,
        "values": trial.values,
        "params": trial.params,
        "seed": trial.user_attrs.get("seed"),
        "run_id": trial.user_attrs.get("run_id"),
        "run_path": trial.user_attrs.get("run_path"),
        "result": trial.user_attrs.get("result", {}),
    }


def best_params(name: str, url: str) -> dict[str, Any]:
    """The best trial's full parameters (fixed ones and its seed included), for ``mlkit run -f``."""
    study = load_study(url, name)
    try:
        trial = study.best_trial
    except ValueError:
        raise SweepError(f"Study {name!r} has no completed trial yet.") from None
    except RuntimeError:
        raise SweepError(
            f"Study {name!r} has two objectives: pick a trial from the Pareto front "
            "(mlkit sweep report) instead."
        ) from None
    meta = study.user_attrs.get("mlkit", {})
    out = dict(meta.get("fixed", {}))
    out.update(trial.params)
    if trial.user_attrs.get("seed") is not None and "seed" not in out:
        out["seed"] = trial.user_attrs["seed"]
    return out


def find_storage(name: str, root: Path | None = None, storage: str | None = None) -> str:
    """The storage of a study by name: the given URL, else its default journal file."""
    from mlkit.record import experiments_root

    if storage:
        return storage
    path = Path(default_storage(name, root or experiments_root()))
    if not path.exists():
        raise SweepError(
            f"No study {name!r} under {path.parent.parent}. Pass --storage URL if it lives "
            "elsewhere."
        )
    return str(path)
