"""The prediction log's SQL side: its two tables, the engine, and the schema made
append-only (triggers refuse UPDATE and DELETE), the same in SQLite and PostgreSQL.

:mod:`mlkit.serve.predlog` reads and appends through these; a log made before a column
existed gets it by ``ALTER TABLE`` when it is opened.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mlkit.serve.chain import CHAIN_COLUMNS

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
ADDED_COLUMNS = ("variant", "prev_hash", "row_hash")

LOCK_KEY = 0x6D6C6B6974_7072  # "mlkit" "pr": the advisory lock for creating the table
# One advisory lock per table for appending: the chain needs one writer at a time.
# PostgreSQL's append-only guard: triggers call it before UPDATE, DELETE and TRUNCATE.
PG_REFUSE = """
CREATE OR REPLACE FUNCTION mlkit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE =
        'the prediction log is append-only (' || TG_OP || ' on ' || TG_TABLE_NAME || ')';
END $$
"""


def driver_url(url: str) -> str:
    """The URL SQLAlchemy is given: PostgreSQL through psycopg 3, whichever spelling was used."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def engine(url: str, sync: str, sqlite_path: str | None) -> Any:
    """The SQLAlchemy engine of the log; a SQLite file gets its folder, WAL and ``sync``."""
    import sqlalchemy as sa

    if sqlite_path is None:
        return sa.create_engine(url)
    Path(sqlite_path).parent.mkdir(parents=True, exist_ok=True)
    # Writers in other processes wait instead of failing with "database is locked".
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
    sa.event.listen(engine, "connect", sqlite_pragmas(sync))
    return engine


def table(meta: Any, name: str, columns: Sequence[tuple[str, str, str]]) -> Any:
    """A table of ``columns`` (name, SQLAlchemy type, help) behind an autoincrement id."""
    import sqlalchemy as sa

    return sa.Table(
        name,
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        *[sa.Column(col, getattr(sa, kind)) for col, kind, _ in (*columns, *CHAIN_COLUMNS)],
    )


def create_schema(conn: Any, meta: Any, *, postgres: bool) -> None:
    """Create both tables if missing, add later columns, and make them append-only."""
    import sqlalchemy as sa

    if postgres:
        # Servers starting together would race to create the table (a duplicate key in
        # pg_type): one at a time, for this transaction only.
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LOCK_KEY})")
    meta.create_all(conn, checkfirst=True)
    for table, columns in ((TABLE, COLUMNS), (FEEDBACK_TABLE, FEEDBACK_COLUMNS)):
        have = {c["name"] for c in sa.inspect(conn).get_columns(table)}
        for col, kind, _ in (*columns, *CHAIN_COLUMNS):
            if col in ADDED_COLUMNS and col not in have:
                sql_type = getattr(sa, kind)().compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {col} {sql_type}")
    if postgres:
        conn.exec_driver_sql(PG_REFUSE)
    for table in (TABLE, FEEDBACK_TABLE):
        _refuse_changes(conn, table, postgres=postgres)
        conn.exec_driver_sql(
            f"CREATE INDEX IF NOT EXISTS {table}_request_id ON {table} (request_id)"
        )


def _refuse_changes(conn: Any, table: str, *, postgres: bool) -> None:
    """Triggers that abort UPDATE and DELETE of ``table`` (and TRUNCATE on PostgreSQL).

    SQLite's REPLACE deletes the row it conflicts with without firing delete triggers, so
    an insert whose id is taken is refused before it gets that far. (PostgreSQL's
    ``ON CONFLICT DO UPDATE`` is an UPDATE, refused by the row trigger.)
    """
    if not postgres:
        refuse = "BEGIN SELECT RAISE(ABORT, 'the prediction log is append-only'); END"
        for verb in ("UPDATE", "DELETE"):
            conn.exec_driver_sql(
                f"CREATE TRIGGER IF NOT EXISTS {table}_no_{verb.lower()} BEFORE {verb} ON "
                f"{table} {refuse}"
            )
        conn.exec_driver_sql(
            f"CREATE TRIGGER IF NOT EXISTS {table}_no_replace BEFORE INSERT ON {table} "
            f"WHEN EXISTS (SELECT 1 FROM {table} WHERE id = NEW.id) {refuse}"
        )
        return
    for level, verbs in (("ROW", "UPDATE OR DELETE"), ("STATEMENT", "TRUNCATE")):
        conn.exec_driver_sql(
            f"CREATE OR REPLACE TRIGGER {table}_append_only_{level.lower()} BEFORE {verbs} ON "
            f"{table} FOR EACH {level} EXECUTE FUNCTION mlkit_refuse_change()"
        )


def sqlite_pragmas(sync: str) -> Callable[[Any, Any], None]:
    """A connect hook: WAL, and ``synchronous`` as asked (FULL fsyncs the WAL at every commit)."""

    def apply(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={sync.upper()}")
        cursor.close()

    return apply
