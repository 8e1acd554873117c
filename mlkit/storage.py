"""Optuna storages from a URL, for the sweep driver and for a notebook's trial alike.

Storage is a URL: a journal file by default (``experiments/<study>/study.journal``;
plain paths and ``journal:///abs/path`` both work), ``sqlite:///...`` for one
machine, ``postgresql://...`` for many. Known traps and their answers:

- a torn last line of a journal file breaks every later read once something is
  appended after it: the tail is checked and cut, under Optuna's own lock, before
  the study is opened;
- exactly N trials across machines: asking is serialised by a lock (a file lock
  for files, an advisory lock for PostgreSQL) around "count, then ask".

Both sides of a trial open studies here: the driver to ask and tell, the notebook to
report and ask whether to prune (the pruner is not kept in the storage, so both sides
build it from its name with :func:`make_pruner`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from mlkit._io import redact, redact_text
from mlkit.errors import NotFoundError, ParameterError
from mlkit.record_store import experiments_root

PRUNERS = ("median", "hyperband", "halving", "none")


def default_storage(study: str, root: Path) -> str:
    return str(root / study / "study.journal")


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

    Raises:
        ParameterError: the URL is not understood, or its database refuses the
            connection (wrong password, no such database, host down): one line, the
            password hidden.
    """
    journal = _journal_path(url)
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        journal.parent.mkdir(parents=True, exist_ok=True)
        repair_journal_tail(journal)
        backend = JournalFileBackend if sync else _unsynced_journal_backend()
        return JournalStorage(backend(str(journal)))
    if url.startswith(("sqlite:", "postgresql", "mysql")):
        import sqlalchemy

        try:
            return _rdb_storage(url)
        except sqlalchemy.exc.OperationalError as exc:
            raise _cannot_connect(url, exc) from None
    raise ParameterError(
        f"Storage {redact(url)!r} is not understood. Use a journal file path (the default), "
        "sqlite:///path.db, or postgresql://user@host/db."
    )


def _rdb_storage(url: str) -> Any:
    """Optuna's storage over SQLAlchemy, for a database URL."""
    import optuna

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


def _cannot_connect(url: str, exc: Exception) -> ParameterError:
    """One line for a database that refused us: the URL shown without its password.

    The driver's own first line says which of the usual causes it is (password, missing
    database, host down or unknown); the rest of its text and the traceback add nothing a
    person can act on.
    """
    driver_error = getattr(exc, "orig", None) or exc
    reason = " ".join(redact_text(str(driver_error).strip().splitlines()[0], url).split())
    fix = (
        "Check that its folder exists and is writable."
        if url.startswith("sqlite:")
        else "Check the user, password, host and database name in the URL, and that the "
        "database server is up."
    )
    return ParameterError(f"Cannot open the storage {redact(url)}: {reason}. {fix}")


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
    with FileLock(lock_path):
        yield


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
    raise ParameterError(f"Unknown pruner {name!r}. Valid: {', '.join(PRUNERS)}.")


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
        raise NotFoundError(
            f"No study {name!r} in {redact(url)}. List studies with: optuna studies "
            f"--storage URL, or start one with mlkit sweep."
        ) from None


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


def find_storage(name: str, root: Path | None = None, storage: str | None = None) -> str:
    """The storage of a study by name: the given URL, else its default journal file."""

    if storage:
        return storage
    path = Path(default_storage(name, root or experiments_root()))
    if not path.exists():
        raise NotFoundError(
            f"No study {name!r} under {path.parent.parent}. Pass --storage URL if it lives "
            "elsewhere."
        )
    return str(path)
