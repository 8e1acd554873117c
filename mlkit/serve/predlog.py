"""Prediction log: one append-only row per response of the model server, written before it is sent.

SQLite by default (``experiments/registry/<name>/predictions.sqlite``) in WAL mode. A row is in
the database file when ``write`` returns, so a server killed with SIGKILL loses no row of a
response a client received. ``sync`` picks what a power cut or an OS crash may cost:
``normal`` (the default; SQLite's ``synchronous=NORMAL``) may lose the last commits then,
``full`` fsyncs every commit and loses none, at a price in requests per second (see
``benchmarks/serve.py``). ``write_many`` commits many rows in one transaction: the server
gathers the rows of the requests answered in one turn of its event loop into one commit.

With several server processes or machines, ``--log postgresql://...`` writes the same table to
PostgreSQL. Append-only is enforced by the database too: triggers abort any UPDATE or DELETE
(and TRUNCATE on PostgreSQL) of either table, whoever sends it.

Labels that arrive later (``mlkit feedback``) go to a second append-only table, ``feedback``, in
the same database: request id, label (JSON), time, source. A log made before it gets the table
on open. A request id may be labelled again; the newest row wins when read.

Secrets stay out: the Authorization header is never logged, and the URL this module shows or
records is redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mlkit._io import redact, redact_text
from mlkit.errors import ParameterError, ServiceUnavailableError
from mlkit.registry.store import model_dir

__all__ = [
    "COLUMNS",
    "FEEDBACK_COLUMNS",
    "FeedbackError",
    "PredictionLog",
    "default_url",
    "open_log",
]

TABLE = "predictions"
# name, SQLAlchemy type, what it holds (the same in SQLite and PostgreSQL)
COLUMNS = (
    ("request_id", "String", "server-made id, also in the X-Request-ID response header"),
    ("time", "String", "UTC ISO time the request arrived"),
    ("role", "String", "primary (returned to the client) or shadow (logged only)"),
    ("model", "String", "registered model name"),
    ("version", "Integer", "registered version number"),
    ("sha256", "String", "content hash of the weights that answered"),
    ("status", "Integer", "HTTP status of the response"),
    ("latency_ms", "Float", "from the request's arrival to this row"),
    ("n", "Integer", "examples in the request (0 when it was refused)"),
    ("input", "Text", "the request body as JSON, or null when it was not read (401, 413)"),
    ("output", "Text", "the predictions as JSON, null for refused requests"),
    ("error", "Text", "why the request was refused"),
    ("variant", "String", "the A/B variant (alias or vN of --ab) that answered; null otherwise"),
)
FEEDBACK_TABLE = "feedback"
# name, SQLAlchemy type, what it holds: labels that arrive after the response
FEEDBACK_COLUMNS = (
    ("request_id", "String", "the request id of a logged prediction"),
    ("label", "Text", "the true label as JSON (a list, one per example, for a batch request)"),
    ("time", "String", "UTC ISO time the label was stored"),
    ("source", "String", "where it came from: the labels file, or cli for a single label"),
)
# Columns added after the first release: a log made before them gets them by ALTER TABLE.
ADDED_COLUMNS = ("variant",)
_NAMES = tuple(name for name, _, _ in COLUMNS)
SYNC_MODES = ("normal", "full")


_LOCK_KEY = 0x6D6C6B6974_7072  # "mlkit" "pr": the advisory lock for creating the table
# PostgreSQL's append-only guard: triggers call it before UPDATE, DELETE and TRUNCATE.
_PG_REFUSE = """
CREATE OR REPLACE FUNCTION mlkit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE =
        'the prediction log is append-only (' || TG_OP || ' on ' || TG_TABLE_NAME || ')';
END $$
"""


# Kept importable under its earlier name; raised as ParameterError.
LogError = ParameterError


# Kept importable under its earlier name; raised as ParameterError.
FeedbackError = ParameterError


def default_url(name: str, root: Path | None = None) -> str:

    return f"sqlite:///{model_dir(name, root) / 'predictions.sqlite'}"


class PredictionLog:
    """An append-only table of responses; thread-safe, one per server process."""

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
        url = _driver_url(url)
        self._sqlite_path = url[len("sqlite:///") :] if self.is_sqlite else None
        self.engine = _engine(url, sync, self._sqlite_path)
        self._writer: Any = None  # the raw sqlite3 connection rows are inserted through
        meta = sa.MetaData()
        self.table = _table(meta, TABLE, COLUMNS)
        self.feedback_table = _table(meta, FEEDBACK_TABLE, FEEDBACK_COLUMNS)
        self._insert = self.table.insert()
        # One writer per process: SQLite serialises writers anyway, and a Python lock is
        # cheaper than its busy-wait.
        self._lock = threading.Lock() if self.is_sqlite else None
        try:
            with self.engine.begin() as conn:
                _create_schema(conn, meta, postgres=not self.is_sqlite)
        except sa.exc.SQLAlchemyError as exc:
            reason = redact_text(str(exc).splitlines()[0], url)
            raise ServiceUnavailableError(
                f"Cannot open the prediction log {self.shown_url}: {reason}. Check the URL and "
                "that the database is up."
            ) from None

    def write(self, row: dict[str, Any]) -> None:
        """Insert one row and commit it before returning."""
        self.write_many([row])

    def write_many(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert rows in one transaction, committed before returning: all of them or none."""
        values = [_values(row) for row in rows]
        if not values:
            return
        if self._lock is None:
            with self.engine.begin() as conn:
                conn.execute(self._insert, values)
            return
        # SQLite through its own driver: SQLAlchemy's per-statement work would cost more
        # than the insert itself, and the server writes a row per request.
        with self._lock:
            if self._writer is None:
                import sqlite3

                self._writer = sqlite3.connect(
                    self._sqlite_path, timeout=30, check_same_thread=False
                )
                _sqlite_pragmas(self.sync)(self._writer, None)
            with self._writer:  # commits, or rolls back on an error
                self._writer.executemany(_INSERT_SQL, [tuple(v.values()) for v in values])

    def rows(self, since: str | None = None, **where: Any) -> list[dict[str, Any]]:
        """Rows matching column == value (and time >= ``since``), oldest first."""
        import sqlalchemy as sa

        query = sa.select(self.table).order_by(self.table.c.id)
        if since is not None:
            query = query.where(self.table.c.time >= since)
        for key, value in where.items():
            query = query.where(self.table.c[key] == value)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

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
        values = [
            {"request_id": str(rid), "label": _dumps(label), "time": now, "source": source}
            for rid, label in labels.items()
        ]
        insert = self.feedback_table.insert()
        if self._lock is None:
            with self.engine.begin() as conn:
                conn.execute(insert, values)
        else:
            with self._lock, self.engine.begin() as conn:
                conn.execute(insert, values)
        return len(values)

    def feedback_rows(self) -> list[dict[str, Any]]:
        """Every feedback row, oldest first, label decoded from JSON."""
        import sqlalchemy as sa

        query = sa.select(self.feedback_table).order_by(self.feedback_table.c.id)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:
            row["label"] = json.loads(row["label"]) if row["label"] is not None else None
        return rows

    def feedback(self) -> dict[str, Any]:
        """request id -> label, the newest stored label of each request id winning."""
        return {row["request_id"]: row["label"] for row in self.feedback_rows()}

    def redact(self, text: str) -> str:
        """``text`` safe to print: the log URL's password replaced."""
        return redact_text(text, self.url)

    def close(self) -> None:
        if self._writer is not None:
            with self._lock or contextlib.nullcontext():
                self._writer.close()
                self._writer = None
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"PredictionLog({self.shown_url!r})"


def _driver_url(url: str) -> str:
    """The URL SQLAlchemy is given: PostgreSQL through psycopg 3, whichever spelling was used."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def _engine(url: str, sync: str, sqlite_path: str | None) -> Any:
    """The SQLAlchemy engine of the log; a SQLite file gets its folder, WAL and ``sync``."""
    import sqlalchemy as sa

    if sqlite_path is None:
        return sa.create_engine(url)
    Path(sqlite_path).parent.mkdir(parents=True, exist_ok=True)
    # Writers in other processes wait instead of failing with "database is locked".
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
    sa.event.listen(engine, "connect", _sqlite_pragmas(sync))
    return engine


def _table(meta: Any, name: str, columns: Sequence[tuple[str, str, str]]) -> Any:
    """A table of ``columns`` (name, SQLAlchemy type, help) behind an autoincrement id."""
    import sqlalchemy as sa

    return sa.Table(
        name,
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        *[sa.Column(col, getattr(sa, kind)) for col, kind, _ in columns],
    )


def _create_schema(conn: Any, meta: Any, *, postgres: bool) -> None:
    """Create both tables if missing, add later columns, and make them append-only."""
    import sqlalchemy as sa

    if postgres:
        # Servers starting together would race to create the table (a duplicate key in
        # pg_type): one at a time, for this transaction only.
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
    meta.create_all(conn, checkfirst=True)
    have = {c["name"] for c in sa.inspect(conn).get_columns(TABLE)}
    for col, kind, _ in COLUMNS:
        if col in ADDED_COLUMNS and col not in have:
            sql_type = getattr(sa, kind)().compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {TABLE} ADD COLUMN {col} {sql_type}")
    if postgres:
        conn.exec_driver_sql(_PG_REFUSE)
    for table in (TABLE, FEEDBACK_TABLE):
        _refuse_changes(conn, table, postgres=postgres)
        conn.exec_driver_sql(
            f"CREATE INDEX IF NOT EXISTS {table}_request_id ON {table} (request_id)"
        )


def _refuse_changes(conn: Any, table: str, *, postgres: bool) -> None:
    """Triggers that abort UPDATE and DELETE of ``table`` (and TRUNCATE on PostgreSQL)."""
    if not postgres:
        for verb in ("UPDATE", "DELETE"):
            conn.exec_driver_sql(
                f"CREATE TRIGGER IF NOT EXISTS {table}_no_{verb.lower()} BEFORE {verb} ON "
                f"{table} BEGIN SELECT RAISE(ABORT, 'the prediction log is append-only'); END"
            )
        return
    for level, verbs in (("ROW", "UPDATE OR DELETE"), ("STATEMENT", "TRUNCATE")):
        conn.exec_driver_sql(
            f"CREATE OR REPLACE TRIGGER {table}_append_only_{level.lower()} BEFORE {verbs} ON "
            f"{table} FOR EACH {level} EXECUTE FUNCTION mlkit_refuse_change()"
        )


_INSERT_SQL = f"INSERT INTO {TABLE} ({', '.join(_NAMES)}) VALUES ({', '.join('?' * len(_NAMES))})"


def _values(row: dict[str, Any]) -> dict[str, Any]:
    """A row with every column, in COLUMNS order, its JSON columns as text."""
    unknown = set(row).difference(_NAMES)
    if unknown:
        raise ParameterError(f"Unknown prediction log columns {sorted(unknown)}; known: {_NAMES}.")
    values = {name: row.get(name) for name in _NAMES}
    for key in ("input", "output"):
        if values[key] is not None and not isinstance(values[key], str):
            values[key] = _dumps(values[key])
    return values


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


def _sqlite_pragmas(sync: str) -> Callable[[Any, Any], None]:
    """A connect hook: WAL, and ``synchronous`` as asked (FULL fsyncs the WAL at every commit)."""

    def apply(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={sync.upper()}")
        cursor.close()

    return apply


def open_log(
    name: str, url: str | None = None, root: Path | None = None, sync: str = "normal"
) -> PredictionLog:
    """The log of model ``name``: ``url`` if given, else its SQLite file in the registry."""
    return PredictionLog(url or default_url(name, root), sync=sync)


class LogBatch:
    """Rows of the responses answered in one turn of the event loop, committed together.

    Each request awaits its row's commit before its response is sent. A SQLite commit under
    ``--log-sync normal`` only hands pages to the OS (tens of microseconds, less than a
    thread handoff), so it runs on the loop. A commit that waits on the disk (``full``: an
    fsync) or the network (PostgreSQL) runs in a worker thread, one at a time, while the rows
    of requests answered meanwhile gather into the next one.
    """

    def __init__(self, log: PredictionLog) -> None:
        self.log = log
        self.on_loop = log.is_sqlite and log.sync == "normal"
        self.rows: list[dict[str, Any]] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.flushing = False

    async def write(self, row: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        committed = loop.create_future()
        self.rows.append(row)
        self.waiters.append(committed)
        if not self.flushing:
            self.flushing = True
            loop.call_soon(self._flush, loop)
        await committed

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        rows, waiters = self.rows, self.waiters
        self.rows, self.waiters = [], []
        if self.on_loop:
            try:
                self.log.write_many(rows)
            except Exception as exc:
                self._settle(waiters, exc)
            else:
                self._settle(waiters, None)
            self.flushing = False
            return
        future = loop.run_in_executor(None, self.log.write_many, rows)
        future.add_done_callback(lambda done: self._committed(loop, waiters, done))

    def _committed(
        self, loop: asyncio.AbstractEventLoop, waiters: list[asyncio.Future[None]], done: Any
    ) -> None:
        failed = RuntimeError("the log commit was cancelled") if done.cancelled() else None
        self._settle(waiters, failed or done.exception())
        if self.rows:
            loop.call_soon(self._flush, loop)
        else:
            self.flushing = False

    @staticmethod
    def _settle(waiters: list[asyncio.Future[None]], exc: BaseException | None) -> None:
        for waiter in waiters:
            if waiter.done():  # its request was cancelled (the client went away)
                continue
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)
