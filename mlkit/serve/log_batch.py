"""Many requests' log rows in one commit: what keeps the prediction log off the hot path."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["LogBatch"]


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
