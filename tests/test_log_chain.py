"""The prediction log's hash chain: what someone who can write the database cannot hide.

Triggers refuse UPDATE, DELETE and REPLACE; these tests drop them first, as an attacker with
the database file or a superuser would, and check that ``mlkit log verify`` names the row,
that readers stop at the break and that a server will not append to a broken chain.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlkit.errors import CheckFailedError
from mlkit.registry import store
from mlkit.serve import chain, log_tables, predlog
from tests.helpers import ROOT, fake_run, run_cli, wait_until


def _fill(url: str, n: int = 5, labels: int = 2) -> None:
    log = predlog.PredictionLog(url)
    try:
        for i in range(n):
            log.write(
                {
                    "request_id": f"r{i}",
                    "time": f"2026-12-04T10:00:0{i}+00:00",
                    "role": "primary",
                    "model": "m",
                    "version": 1,
                    "status": 200,
                    "latency_ms": 1 + i / 4,
                    "n": 1,
                    "input": {"input": [float(i), 2.0]},
                    "output": {"prediction": i % 2},
                }
            )
        if labels:
            log.add_feedback({f"r{i}": i % 2 for i in range(labels)}, source="test")
    finally:
        log.close()


def _verify(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("log", "verify", "m", "--log", url, *extra)


@pytest.fixture
def sqlite_log(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "predictions.sqlite"
    _fill(f"sqlite:///{path}")
    return f"sqlite:///{path}", path


def _sql(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    try:
        for sql in statements:
            conn.execute(sql)
        conn.commit()
    finally:
        conn.close()


# An untouched log verifies, exit 0, and says how many rows hold and where the head is.
def test_untouched_log_verifies(sqlite_log: tuple[str, Path]) -> None:
    url, _ = sqlite_log
    proc = _verify(url)
    assert proc.returncode == 0, proc.stderr
    assert "predictions: 5 of 5 rows verify (head 5:" in proc.stdout
    assert "feedback: 2 of 2 rows verify" in proc.stdout


# SQLite's REPLACE deletes the old row without firing delete triggers: refused by its own
# trigger; with that trigger dropped it goes through, and verify names the row, exit 1.
def test_replace_is_refused_and_detected_when_forced(sqlite_log: tuple[str, Path]) -> None:
    url, path = sqlite_log
    replace = (
        "REPLACE INTO predictions (id, request_id, status, prev_hash, row_hash) "
        "SELECT id, request_id, 500, prev_hash, row_hash FROM predictions WHERE id = 2"
    )
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        _sql(path, replace)
    assert _verify(url).returncode == 0
    _sql(path, "DROP TRIGGER predictions_no_replace", replace)
    proc = _verify(url)
    assert proc.returncode == 1
    assert "row 2: it was changed after it was written" in proc.stderr
    assert "predictions: 1 of 5 rows verify" in proc.stdout


# DELETE with the triggers dropped: a row from the middle, and the first row.
@pytest.mark.parametrize(
    ("deleted", "named"),
    [(3, "row 4: row 3, just before it, is missing"), (1, "row 2: the chain does not start")],
)
def test_deleted_row_is_named(sqlite_log: tuple[str, Path], deleted: int, named: str) -> None:
    url, path = sqlite_log
    _sql(
        path, "DROP TRIGGER predictions_no_delete", f"DELETE FROM predictions WHERE id = {deleted}"
    )
    proc = _verify(url)
    assert proc.returncode == 1 and named in proc.stderr, proc.stderr


# A row changed and re-hashed by someone who knows the scheme: its successor names it.
def test_rehashed_row_is_named_by_its_successor(sqlite_log: tuple[str, Path]) -> None:
    url, path = sqlite_log
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    row = dict(conn.execute("SELECT * FROM predictions WHERE id = 2").fetchone())
    conn.close()
    row["output"] = json.dumps({"prediction": 7}, separators=(",", ":"))
    values = [row[name] for name, *_ in predlog.COLUMNS]
    digest = chain.row_hash(row["prev_hash"], 2, values)
    _sql(
        path,
        "DROP TRIGGER predictions_no_update",
        f"UPDATE predictions SET output = '{row['output']}', row_hash = '{digest}' WHERE id = 2",
    )
    proc = _verify(url)
    assert proc.returncode == 1
    assert "row 3: it does not follow row 2: row 2 was changed and re-hashed" in proc.stderr


# A row appended around mlkit (no hash) is named; so is a forged label in the feedback table.
def test_rows_inserted_around_the_log_are_named(sqlite_log: tuple[str, Path]) -> None:
    url, path = sqlite_log
    _sql(path, "INSERT INTO feedback (id, request_id, label) VALUES (3, 'r4', '1')")
    proc = _verify(url)
    assert proc.returncode == 1
    assert "table feedback, row 3: it has no hash" in proc.stderr


# Rows cut from the end leave a shorter chain that verifies alone; the kept head catches it.
def test_kept_head_catches_rows_cut_from_the_end(sqlite_log: tuple[str, Path]) -> None:
    url, path = sqlite_log
    head = json.loads(_verify(url, "--json").stdout)["tables"][0]["head"]
    kept = f"{head[0]}:{head[1]}"
    assert _verify(url, "--head", kept).returncode == 0
    _sql(path, "DROP TRIGGER predictions_no_delete", "DELETE FROM predictions WHERE id >= 4")
    assert _verify(url).returncode == 0, "a shorter chain is still a chain"
    proc = _verify(url, "--head", kept)
    assert proc.returncode == 1 and "row 5, the head you kept, is gone" in proc.stderr
    bad = _verify(url, "--head", "5")
    assert bad.returncode == 2 and "--head must be ID:HASH" in bad.stderr


# The monitor, guard, A/B report and feedback read through rows()/feedback(): they get the
# rows before the break and a note on stderr saying what was left out.
def test_readers_stop_at_the_break_and_say_so(
    sqlite_log: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, path = sqlite_log
    _sql(
        path,
        "DROP TRIGGER predictions_no_update",
        "UPDATE predictions SET status = 500 WHERE id = 3",
        "DROP TRIGGER feedback_no_update",
        "UPDATE feedback SET label = '9' WHERE id = 2",
    )
    log = predlog.PredictionLog(url)
    try:
        assert [r["request_id"] for r in log.rows(role="primary")] == ["r0", "r1"]
        assert log.feedback() == {"r0": 0}
        assert not log.checks["predictions"].ok and log.checks["predictions"].verified == 2
    finally:
        log.close()
    err = capsys.readouterr().err
    assert "breaks at row 3" in err and "that row and the 2 after it are left out" in err
    assert "mlkit log verify" in err


# A server opening a log whose newest rows do not chain refuses to start (exit 1), and
# nothing is appended to the broken log.
def test_server_refuses_a_broken_log(exp_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    url = f"sqlite:///{path}"
    _fill(url, labels=0)
    _sql(path, "DROP TRIGGER predictions_no_delete", "DELETE FROM predictions WHERE id = 4")
    with pytest.raises(CheckFailedError, match="row 5: row 4, just before it, is missing"):
        predlog.open_log("m", url, check_tail=True)
    store.register(fake_run(exp_root), "m")
    proc = run_cli("serve", "m:v1", "--log", url, env={"MLKIT_EXPERIMENTS": str(exp_root)})
    assert proc.returncode == 1, proc.stderr
    assert "fails its hash chain" in proc.stderr and "serving" not in proc.stderr
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 4


# A log written before the chain: its rows count as unchained, new rows chain after them.
def test_log_from_before_the_chain_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    cols = ", ".join(f"{c} TEXT" for c, _, _ in predlog.COLUMNS if c != "variant")
    _sql(
        path,
        f"CREATE TABLE predictions (id INTEGER PRIMARY KEY, {cols})",
        "INSERT INTO predictions (request_id, version, status) VALUES ('old', 1, 200)",
    )
    _fill(f"sqlite:///{path}", n=2, labels=0)
    proc = _verify(f"sqlite:///{path}")
    assert proc.returncode == 0, proc.stderr
    assert "2 of 3 rows verify" in proc.stdout and "1 rows predate the chain" in proc.stdout


_WRITER = """
import sys
from mlkit.serve import predlog
log = predlog.PredictionLog(sys.argv[1])
for i in range(int(sys.argv[3])):
    log.write_many([{"request_id": f"{sys.argv[2]}-{i}-{j}", "status": 200} for j in range(3)])
log.close()
"""


def _two_writers(url: str, batches: int) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, url, name, str(batches)], cwd=ROOT)
        for name in ("a", "b")
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0


# Two processes appending to one SQLite log at once: one chain, no id taken twice.
def test_two_processes_append_one_chain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.sqlite'}"
    _two_writers(url, batches=150)
    proc = _verify(url)
    assert proc.returncode == 0, proc.stderr
    assert "900 of 900 rows verify" in proc.stdout


# A server's log is checkpointed by its own thread, never inside a commit the requests wait on;
# the rows still chain, and reach the database file without waiting for a full WAL.
def test_served_log_checkpoints_off_the_commit_path(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    log = predlog.PredictionLog(f"sqlite:///{path}")
    try:
        batch = predlog.LogBatch(log)
        row = {"request_id": "r", "role": "primary", "model": "m", "status": 200, "n": 1}

        async def answer(n: int) -> None:
            await asyncio.gather(*(batch.write({**row, "request_id": f"r{i}"}) for i in range(n)))

        asyncio.run(answer(20))
        assert log._writer.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)

        def rows_in_the_file() -> int:  # immutable: the database file alone, not its WAL
            db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
            try:
                return db.execute("SELECT count(*) FROM predictions").fetchone()[0]
            except sqlite3.OperationalError:  # not even the table is in the file yet
                return 0
            finally:
                db.close()

        wait_until(lambda: rows_in_the_file() == 20, timeout=30, message="20 rows in the file")
    finally:
        log.close()
    proc = _verify(f"sqlite:///{path}")
    assert "20 of 20 rows verify" in proc.stdout, proc.stdout + proc.stderr


# Tampering on paper: any one change, removal or swap of rows in a chain is found.
@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(2, 12),
    data=st.data(),
    kind=st.sampled_from(["change", "remove", "swap", "rehash"]),
)
def test_any_single_tamper_is_found(n: int, data: st.DataObject, kind: str) -> None:
    rows = chain.link(None, [(f"r{i}", i) for i in range(n)])
    at = data.draw(st.integers(0, n - 2))
    if kind == "change":
        rows[at] = (rows[at][0], "forged", *rows[at][2:])
    elif kind == "remove":
        del rows[at]
    elif kind == "swap":
        rows[at], rows[at + 1] = rows[at + 1], rows[at]
    else:
        row_id, _, value, prev, _ = rows[at]
        rows[at] = (row_id, "forged", value, prev, chain.row_hash(prev, row_id, ["forged", value]))
    report = chain.verify("t", ((r[0], r[-2], r[-1], list(r[1:-2])) for r in rows))
    assert report.first_break is not None, kind
    assert report.first_break.row_id in (at + 1, at + 2), (kind, report.first_break)


# --- PostgreSQL: the same attacks, on a schema of their own ---------------------------


@pytest.fixture
def pg_log(pg_url: str) -> Iterator[str]:
    """A URL whose tables live in a fresh schema, dropped afterwards."""
    import sqlalchemy as sa

    schema = f"chain_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in pg_url else "?"
    url = f"{pg_url}{sep}options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


def _pg(url: str, *statements: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(log_tables.driver_url(url))
    try:
        with engine.begin() as conn:
            for sql in statements:
                conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


# PostgreSQL: an upsert is an UPDATE, refused; with the triggers dropped, a rewritten row
# and a deleted row are each named by mlkit log verify, exit 1.
@pytest.mark.slow
def test_postgres_tampering_is_found(pg_log: str) -> None:
    import sqlalchemy as sa

    _fill(pg_log)
    assert _verify(pg_log).returncode == 0
    upsert = (
        "INSERT INTO predictions (id, request_id, status) VALUES (2, 'x', 500) "
        "ON CONFLICT (id) DO UPDATE SET status = 500"
    )
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        _pg(pg_log, upsert)
    _pg(
        pg_log,
        "DROP TRIGGER predictions_append_only_row ON predictions",
        upsert,
        "DELETE FROM predictions WHERE id = 4",
    )
    proc = _verify(pg_log)
    assert proc.returncode == 1 and "row 2: it was changed" in proc.stderr, proc.stderr
    assert "mlkit-test-only" not in proc.stdout + proc.stderr, "the password stays out"
    # Opening the log (verify did) puts the triggers back: drop them again.
    _pg(
        pg_log,
        "DROP TRIGGER predictions_append_only_row ON predictions",
        "DELETE FROM predictions WHERE id = 2",
    )
    proc = _verify(pg_log)
    assert proc.returncode == 1 and "row 3: row 2, just before it, is missing" in proc.stderr


# Two processes appending to one PostgreSQL log at once: one chain.
@pytest.mark.slow
def test_postgres_two_processes_append_one_chain(pg_log: str) -> None:
    _two_writers(pg_log, batches=60)
    proc = _verify(pg_log)
    assert proc.returncode == 0, proc.stderr
    assert "360 of 360 rows verify" in proc.stdout
