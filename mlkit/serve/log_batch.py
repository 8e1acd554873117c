"""Many requests' log rows in one commit, and WAL checkpoints off the commits' path.

Together they keep the prediction log off the hot path.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["CHECKPOINT_EVERY_S", "Checkpointer", "LogBatch"]

# The most often a server's SQLite log is checkpointed while rows keep coming.
CHECKPOINT_EVERY_S = 1.0


class LogBatch:
    """Rows of the responses answered in one turn of the event loop, committed together.

    Each request awaits its row's commit before its response is sent. A SQLite commit under
    ``--log-sync normal`` only hands pages to the OS (tens of microseconds, less than a
    thread handoff), so it runs on the loop. A commit that waits on the disk (``full``: an
    fsync) or the network (PostgreSQL) runs in a worker thread, one at a time, while the rows
    of requests answered meanwhile gather into the next one.
    """

    def __init__(self, log: Any) -> None:  # a PredictionLog
        self.log = log
        if log.is_sqlite:
            log.checkpoint_in_background()
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
            # One turn of the loop later: the requests whose bodies arrived meanwhile join
            # this commit, so a busy server commits several rows at a time.
            loop.call_soon(loop.call_soon, self._flush, loop)
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


class Checkpointer:
    """WAL checkpoints of one SQLite file on a thread of their own, at most every ``every_s``.

    SQLite's automatic checkpoint runs inside the commit that fills the WAL past 1000 pages:
    it copies them into the database file and fsyncs both, milliseconds to tens of them during
    which that commit, and under ``--log-sync normal`` the server's event loop, wait. Here the
    same PASSIVE checkpoint (it never blocks a writer) runs on its own connection, with the
    log's ``synchronous`` setting, so it syncs exactly as the automatic one would; the writer
    then turns its own off (``wal_autocheckpoint = 0``). :meth:`poke` after each commit.
    """

    def __init__(
        self,
        path: str,
        pragmas: Callable[[Any, Any], None],
        every_s: float = CHECKPOINT_EVERY_S,
    ) -> None:
        self.path = path
        self.pragmas = pragmas
        self.every_s = every_s
        self.wanted = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mlkit-log-checkpoint", daemon=True)
        self.thread.start()

    def poke(self) -> None:
        """Say rows were committed: a checkpoint follows, within ``every_s``."""
        self.wanted.set()

    def stop(self) -> None:
        """End the thread after its current checkpoint; closing the log checkpoints the rest."""
        self.stopping.set()
        self.wanted.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        try:
            self.pragmas(db, None)
            while True:
                self.wanted.wait()
                if self.stopping.is_set():
                    return
                self.wanted.clear()
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the next one tries again; rows are in the WAL
                    print(f"mlkit serve: log checkpoint failed: {exc}", file=sys.stderr)
                if self.stopping.wait(self.every_s):
                    return
        finally:
            db.close()
