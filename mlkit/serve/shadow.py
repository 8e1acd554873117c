"""Shadow scoring: a second model answers every request too, never in the reply."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any

from mlkit._io import now_iso
from mlkit.registry.loading import LoadedModel, score
from mlkit.serve.predlog import PredictionLog


class Shadow:
    """A second model scoring the primary's inputs on its own thread, after the response.

    Its outputs go to the log (role ``shadow``, same request id) and nowhere else. The request
    path only puts the batch on a bounded queue and never waits: when the shadow falls behind,
    batches are dropped and counted, and its errors become log rows, never primary errors.
    """

    def __init__(self, loaded: LoadedModel, log: PredictionLog, capacity: int = 1000) -> None:
        import queue

        self.loaded = loaded
        self.log = log
        self.queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(capacity)
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, name="mlkit-shadow", daemon=True)
        self.thread.start()

    def submit(self, request_id: str, X: Any) -> None:
        import queue

        try:
            self.queue.put_nowait((request_id, X))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            request_id, X = item
            loaded = self.loaded  # fixed for this batch even if the alias moves meanwhile
            started, t0 = now_iso(), time.perf_counter()
            try:
                output: Any = {"predictions": score(loaded, X)}
                status, error = 200, None
            except Exception as exc:
                output, status, error = None, 500, f"{type(exc).__name__}: {exc}"
            try:
                self.log.write(
                    {
                        "request_id": request_id,
                        "time": started,
                        "role": "shadow",
                        "model": loaded.name,
                        "version": loaded.version,
                        "sha256": loaded.sha256,
                        "status": status,
                        "latency_ms": (time.perf_counter() - t0) * 1000.0,
                        "n": len(X),
                        "input": None,  # the primary row of the same request_id holds it
                        "output": output,
                        "error": error,
                    }
                )
            except Exception as exc:
                _warn(f"shadow log write failed: {self.log.redact(str(exc))}")

    def close(self, timeout: float = 5.0) -> None:
        """Let the queued batches finish (up to ``timeout`` s), then stop the thread."""
        with contextlib.suppress(Exception):
            self.queue.put(None, timeout=timeout)
        self.thread.join(timeout)


def _warn(message: str) -> None:
    print(f"mlkit serve: {message}", file=sys.stderr, flush=True)
