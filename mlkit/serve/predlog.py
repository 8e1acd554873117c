"""Prediction log: one append-only row per response of the model server, written before it is sent.

SQLite by default (``experiments/registry/<name>/predictions.sqlite``) in WAL mode. A row is in
the database file when ``write`` returns, so a server killed with SIGKILL loses no row of a
response a client received. ``sync`` picks what a power cut or an OS crash may cost:
``normal`` (the default; SQLite's ``synchronous=NORMAL``) may lose the last commits then,
``full`` fsyncs every commit and loses none, at a price in requests per second (see
``benchmarks/serve.py``). ``write_many`` commits many rows in one transaction: the server
gathers the rows of the requests answered in one turn of its event loop into one commit.

Several server processes on one machine (``mlkit serve --workers N``) append to one SQLite
file: each append takes the database's write lock, then links to the newest row, whoever wrote
it. Across machines, ``--log postgresql://...`` writes the same table to PostgreSQL (an
advisory lock plays the write lock's part). Append-only is enforced by the database too:
triggers abort any UPDATE or DELETE (and TRUNCATE on PostgreSQL) of either table, and SQLite's
REPLACE of an existing row, whoever sends it. And it is evident: every row carries a SHA-256
chained to the row before it (:mod:`mlkit.serve.chain`), so a row changed, removed or slipped
in by someone who dropped the triggers first is found by ``mlkit log verify``. Readers
(:meth:`PredictionLog.rows`, :meth:`PredictionLog.feedback`: the monitor, the guard, the A/B
report) read rows only up to the first break of the chain and say on stderr what they left
out; a server checks the newest rows when it opens the log and refuses to append to a broken
chain.

Labels that arrive later (``mlkit feedback``) go to a second append-only table, ``feedback``, in
the same database: request id, label (JSON), time, source. A log made before it gets the table
on open. A request id may be labelled again; the newest row wins when read.

Secrets stay out: the Authorization header is never logged, and the URL this module shows or
records is redacted.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mlkit._io import redact, redact_text
from mlkit.errors import CheckFailedError, ParameterError, ServiceUnavailableError
from mlkit.registry.store import model_dir
from mlkit.serve import log_tables
from mlkit.serve.chain import ChainReport, link
from mlkit.serve.chain import verify as verify_chain
from mlkit.serve.log_batch import Checkpointer, LogBatch
from mlkit.serve.log_tables import (
    COLUMNS,
    FEEDBACK_COLUMNS,
    FEEDBACK_TABLE,
    TABLE,
)

__all__ = [
    "COLUMNS",
    "FEEDBACK_COLUMNS",
    "FeedbackError",
    "LogBatch",
    "PredictionLog",
    "default_url",
    "open_log",
]

_NAMES = tuple(name for name, _, _ in COLUMNS)
_FEEDBACK_NAMES = tuple(name for name, _, _ in FEEDBACK_COLUMNS)
# What each table's rows hold, as the chain hashes them: (name, SQLAlchemy type) in order.
_KINDS = {
    TABLE: tuple((name, kind) for name, kind, _ in COLUMNS),
    FEEDBACK_TABLE: tuple((name, kind) for name, kind, _ in FEEDBACK_COLUMNS),
}
SYNC_MODES = ("normal", "full")
# How many of the newest rows a server checks when it opens the log.
TAIL_CHECK = 1000
# How long an append waits for another process's write lock before it fails (a 503).
BUSY_TIMEOUT_S = 30.0

# One advisory lock per table for appending: the chain needs one writer at a time.
_APPEND_KEYS = {TABLE: log_tables.LOCK_KEY + 1, FEEDBACK_TABLE: log_tables.LOCK_KEY + 2}


# Kept importable under their earlier names; raised as ParameterError.
LogError = FeedbackError = ParameterError


def _retries(*, first_pause: float, most: float) -> Iterator[bool]:
    """Attempts at something SQLite may refuse as locked, ``True`` for the last one: after
    each but the first a pause, doubling from ``first_pause`` up to ``most``, until
    ``BUSY_TIMEOUT_S`` has passed."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    pause = first_pause
    while True:
        yield time.monotonic() > deadline
        time.sleep(pause)
        pause = min(2 * pause, most)


def default_url(name: str, root: Path | None = None) -> str:
    return f"sqlite:///{model_dir(name, root) / 'predictions.sqlite'}"


class PredictionLog:
    """An append-only, hash-chained table of responses; thread-safe, one per server process.

    Processes that each hold one may append to the same database at once.
    """

    def __init__(self, url: str, sync: str = "normal") -> None:
        import sqlalchemy as sa

        if sync not in SYNC_MODES:
            raise ParameterError(
                f"The 'sync' parameter of the prediction log must be one of "
                f"{', '.join(SYNC_MODES)}. Got {sync!r} instead. Pass --log-sync full to fsync "
                "every commit."
            )
        self.sync = sync
        self.url = url
        self.shown_url = redact(url)
        self.is_sqlite = url.startswith("sqlite")
        if not (self.is_sqlite or url.startswith(("postgresql", "postgres"))):
            raise ParameterError(
                f"--log must be a sqlite:///PATH or postgresql://... URL, got {self.shown_url!r}. "
                "Leave it out for the default SQLite file beside the model."
            )
        url = log_tables.driver_url(url)
        self._sqlite_path = url[len("sqlite:///") :] if self.is_sqlite else None
        self.engine = log_tables.engine(url, sync, self._sqlite_path)
        self._writer: Any = None  # the raw sqlite3 connection rows are inserted through
        self.checkpointer: Checkpointer | None = None  # a server's: see checkpoint_in_background
        meta = sa.MetaData()
        self.table = log_tables.table(meta, TABLE, COLUMNS)
        self.feedback_table = log_tables.table(meta, FEEDBACK_TABLE, FEEDBACK_COLUMNS)
        self._tables = {TABLE: self.table, FEEDBACK_TABLE: self.feedback_table}
        # One writer per process: SQLite serialises writers anyway, and a Python lock is
        # cheaper than its busy-wait.
        self._lock = threading.Lock() if self.is_sqlite else None
        self._said: set[str] = set()
        # What the last read of each table found when it walked the chain.
        self.checks: dict[str, ChainReport] = {}
        try:
            self._create(meta)
        except sa.exc.SQLAlchemyError as exc:
            reason = redact_text(str(exc).splitlines()[0], url)
            raise ServiceUnavailableError(
                f"Cannot open the prediction log {self.shown_url}: {reason}. Check the URL and "
                "that the database is up."
            ) from None

    def _create(self, meta: Any) -> None:
        """Create the tables if missing. Servers opening a new SQLite file together race to
        create them (PostgreSQL takes a lock): the loser finds them made and goes on.

        SQLite answers "database is locked" without waiting when a transaction that read
        the schema must then write while another process writes (WAL's snapshot rule, which
        no busy timeout covers), and when two processes switch a new file to WAL at once:
        both are retried until ``BUSY_TIMEOUT_S``.
        """
        import sqlalchemy as sa

        races = 0
        for last in _retries(first_pause=1e-3, most=0.05):
            try:
                with self.engine.begin() as conn:
                    log_tables.create_schema(conn, meta, postgres=not self.is_sqlite)
                return
            except sa.exc.OperationalError as exc:
                text = str(exc)
                racing = "already exists" in text or "duplicate column" in text
                locked = "locked" in text or "busy" in text
                races += racing
                if not self.is_sqlite or not (racing or locked) or races > 2 or last:
                    raise

    def write(self, row: dict[str, Any]) -> None:
        """Insert one row and commit it before returning."""
        self.write_many([row])

    def write_many(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert rows in one transaction, committed before returning: all of them or none."""
        self._append(TABLE, [_values(row) for row in rows])

    def _append(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        """Chain ``rows`` (values in column order) onto ``table``'s newest row and commit."""
        if not rows:
            return
        if self._lock is None:
            import sqlalchemy as sa

            t = self._tables[table]
            names = ["id", *(n for n, _ in _KINDS[table]), "prev_hash", "row_hash"]
            with self.engine.begin() as conn:
                # Writers in other processes or hosts wait here: each links to the row before.
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_APPEND_KEYS[table]})")
                tail = conn.execute(
                    sa.select(t.c.id, t.c.row_hash).order_by(t.c.id.desc()).limit(1)
                ).first()
                linked = link(tuple(tail) if tail else None, rows)
                conn.execute(t.insert(), [dict(zip(names, r, strict=True)) for r in linked])
            return
        # SQLite through its own driver: SQLAlchemy's per-statement work would cost more
        # than the insert itself, and the server writes a row per request.
        import sqlite3

        with self._lock:
            if self._writer is None:
                self._writer = sqlite3.connect(
                    self._sqlite_path, timeout=30, check_same_thread=False
                )
                log_tables.sqlite_pragmas(self.sync)(self._writer, None)
                # Appends wait for the write lock below, in short steps: SQLite's own busy
                # handler sleeps 1 ms at the first conflict (up to 100 ms later), many
                # commits' worth, so server processes sharing the file would mostly sleep.
                self._writer.execute("PRAGMA busy_timeout = 0")
                if self.checkpointer is not None:
                    self._writer.execute("PRAGMA wal_autocheckpoint = 0")
            for last in _retries(first_pause=20e-6, most=1e-3):
                try:
                    _sqlite_append(self._writer, table, rows)
                    if self.checkpointer is not None:
                        self.checkpointer.poke()
                    return
                except sqlite3.OperationalError as exc:
                    # Another process holds the write lock for one commit: try again soon.
                    if "locked" not in str(exc) or last:
                        raise

    def checkpoint_in_background(self) -> None:
        """Checkpoint a SQLite log on a thread of its own, not inside commits (a server's)."""
        with self._lock or contextlib.nullcontext():
            if self.checkpointer is None and self._sqlite_path is not None:
                self.checkpointer = Checkpointer(
                    self._sqlite_path, log_tables.sqlite_pragmas(self.sync)
                )
                if self._writer is not None:
                    self._writer.execute("PRAGMA wal_autocheckpoint = 0")

    def rows(self, since: str | None = None, **where: Any) -> list[dict[str, Any]]:
        """Rows matching column == value (and time >= ``since``), oldest first.

        Only rows up to the first break of the hash chain are read; what was left out is
        said on stderr and kept in ``self.checks``.
        """
        for key in where:
            if key not in self.table.c:
                raise ParameterError(f"Unknown prediction log column {key!r}; known: {_NAMES}.")
        rows = self._verified(TABLE)
        if since is not None:
            rows = [r for r in rows if r["time"] is not None and r["time"] >= since]
        for key, value in where.items():
            rows = [r for r in rows if r[key] == value]
        return rows

    def verify(self) -> list[ChainReport]:
        """Walk the chain of both tables from their first row; one report per table."""
        reports = []
        for table in (TABLE, FEEDBACK_TABLE):
            with self.engine.connect() as conn:
                result = conn.execute(self._select(table)).yield_per(2000)
                reports.append(verify_chain(table, (_chained(table, r._mapping) for r in result)))
        return reports

    def row_hash(self, row_id: int) -> str | None:
        """The stored ``row_hash`` of prediction row ``row_id`` (None when there is none)."""
        import sqlalchemy as sa

        query = sa.select(self.table.c.row_hash).where(self.table.c.id == row_id)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def check_tail(self, newest: int = TAIL_CHECK) -> None:
        """Refuse (exit 1) a log whose ``newest`` rows of either table do not chain up.

        A server calls this on open: appending to a broken chain would bury the break.
        """
        for table, t in self._tables.items():
            query = self._select(table).order_by(None).order_by(t.c.id.desc()).limit(newest)
            with self.engine.connect() as conn:
                rows = [_chained(table, r._mapping) for r in conn.execute(query)]
            report = verify_chain(table, reversed(rows), start=None)
            if not report.ok:
                raise CheckFailedError(
                    f"The prediction log {self.shown_url} fails its hash chain in table "
                    f"{table}, {report.first_break}. Nothing was served. Run `mlkit log verify "
                    "NAME` to see the whole log, keep this file as evidence, and serve with "
                    "--log URL naming a new log."
                )

    def unknown_ids(self, request_ids: Sequence[str]) -> list[str]:
        """Those of ``request_ids`` that no logged prediction has, in the order given."""
        import sqlalchemy as sa

        wanted = list(dict.fromkeys(str(r) for r in request_ids))
        known: set[str] = set()
        column = self.table.c.request_id
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                query = sa.select(column).where(column.in_(chunk)).distinct()
                known.update(r[0] for r in conn.execute(query))
        return [r for r in wanted if r not in known]

    def add_feedback(self, labels: dict[str, Any], source: str) -> int:
        """Append one feedback row per request id, all or nothing; the number written.

        Every request id must be in the log: otherwise :class:`FeedbackError` names how many
        are not and one of them, and nothing is written.
        """
        from datetime import UTC, datetime

        if not labels:
            raise ParameterError("No labels to store.")
        unknown = self.unknown_ids(list(labels))
        if unknown:
            raise ParameterError(
                f"{len(unknown)} of {len(labels)} request ids are not in the prediction log "
                f"{self.shown_url} (e.g. {unknown[0]!r}); nothing was written. Labels must "
                "name request ids this model's server logged (the X-Request-ID header)."
            )
        now = datetime.now(UTC).isoformat()
        values = [(str(rid), _dumps(label), now, str(source)) for rid, label in labels.items()]
        self._append(FEEDBACK_TABLE, values)
        return len(values)

    def feedback_rows(self) -> list[dict[str, Any]]:
        """Every feedback row up to the first break of its chain, oldest first, label decoded."""
        rows = self._verified(FEEDBACK_TABLE)
        for row in rows:
            row["label"] = json.loads(row["label"]) if row["label"] is not None else None
        return rows

    def feedback(self) -> dict[str, Any]:
        """request id -> label, the newest stored label of each request id winning."""
        return {row["request_id"]: row["label"] for row in self.feedback_rows()}

    def _select(self, table: str) -> Any:
        import sqlalchemy as sa

        t = self._tables[table]
        return sa.select(t).order_by(t.c.id)

    def _verified(self, table: str) -> list[dict[str, Any]]:
        """``table``'s rows, oldest first, up to the first break of its chain."""
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(self._select(table))]
        report = verify_chain(table, (_chained(table, r) for r in rows))
        self.checks[table] = report
        if report.unchained:
            self._say(
                f"{report.unchained} rows of {table} predate the hash chain and are read "
                "unverified."
            )
        kept = report.unchained + report.verified
        if not report.ok:
            self._say(
                f"the hash chain of {table} breaks at {report.first_break}; that row and the "
                f"{len(rows) - kept - 1} after it are left out. Run `mlkit log verify NAME` "
                "for the whole log."
            )
        return rows[:kept]

    def _say(self, text: str) -> None:
        """A note on stderr about what a read left out, once per log object and text."""
        if text not in self._said:
            self._said.add(text)
            print(f"mlkit: prediction log {self.shown_url}: {text}", file=sys.stderr)

    def redact(self, text: str) -> str:
        """``text`` safe to print: the log URL's password replaced."""
        return redact_text(text, self.url)

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
            self.checkpointer = None
        if self._writer is not None:
            with self._lock or contextlib.nullcontext():
                self._writer.close()
                self._writer = None
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"PredictionLog({self.shown_url!r})"


def _sqlite_append(db: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
    """Link ``rows`` to ``table``'s newest row and commit them, in one write transaction.

    IMMEDIATE takes the database's write lock before the tail is read, so the rows link to
    the true newest row even when other processes (``--workers``, other servers) append to
    the same file: none can slip a row in between the read and the insert. Raises
    ``sqlite3.OperationalError`` (database is locked) at once while another holds the lock.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        linked = link(db.execute(_TAIL_SQL[table]).fetchone(), rows)
        db.executemany(_INSERT_SQL[table], linked)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _insert_sql(table: str) -> str:
    names = ["id", *(n for n, _ in _KINDS[table]), "prev_hash", "row_hash"]
    return f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"


_INSERT_SQL = {table: _insert_sql(table) for table in _KINDS}
_TAIL_SQL = {
    table: f"SELECT id, row_hash FROM {table} ORDER BY id DESC LIMIT 1" for table in _KINDS
}
_CASTS: dict[str, Callable[[Any], Any]] = {"Integer": int, "Float": float}

_JSON_COLUMNS = ("input", "output")
# (name, how a value is cast to the type the database hands back; None for text), in order.
_ROW_CASTS = tuple((name, _CASTS.get(kind)) for name, kind in _KINDS[TABLE])
_NAME_SET = frozenset(_NAMES)


def _values(row: dict[str, Any]) -> tuple[Any, ...]:
    """A row's values in COLUMNS order, as the database will hand them back: JSON columns as
    text, numbers as the column's type (so the hash of a row read back is the one written)."""
    if not _NAME_SET.issuperset(row):
        unknown = sorted(set(row) - _NAME_SET)
        raise ParameterError(f"Unknown prediction log columns {unknown}; known: {_NAMES}.")
    out = []
    for name, cast in _ROW_CASTS:
        value = row.get(name)
        if value is not None:
            if cast is None:
                if type(value) is not str:
                    value = _dumps(value) if name in _JSON_COLUMNS else str(value)
            elif type(value) is not cast:
                value = cast(value)
        out.append(value)
    return tuple(out)


def _chained(table: str, row: Any) -> tuple[int, Any, Any, list[Any]]:
    """(id, prev_hash, row_hash, values) of a row read back, values typed as when written."""
    values = []
    for name, kind in _KINDS[table]:
        value = row[name]
        if value is not None:
            # A value that does not cast is not what was written: the hash will say so.
            with contextlib.suppress(TypeError, ValueError):
                value = _CASTS.get(kind, str)(value)
        values.append(value)
    return row["id"], row["prev_hash"], row["row_hash"], values


def _dumps(value: Any) -> str:
    """JSON with non-finite floats written as strings, so every database can store it."""
    try:  # the common case, finite numbers only, without walking the value first
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), separators=(",", ":"))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def open_log(
    name: str,
    url: str | None = None,
    root: Path | None = None,
    sync: str = "normal",
    *,
    check_tail: bool = False,
) -> PredictionLog:
    """The log of model ``name``: ``url`` if given, else its SQLite file in the registry.

    ``check_tail`` (a server opening the log to append) refuses a log whose newest rows do
    not chain up: :meth:`PredictionLog.check_tail`.
    """
    log = PredictionLog(url or default_url(name, root), sync=sync)
    if check_tail:
        try:
            log.check_tail()
        except BaseException:
            log.close()
            raise
    return log
