"""The live plot: the running trial's learning curves, redrawn as its epochs land.

The sweep driver names the trial's record the moment it exists (``run_trial``'s
``on_start`` hook); from then on a thread reads the record's ``metrics.jsonl`` every
``POLL_S`` and redraws when it grew, so the worker thread that runs the trial never draws.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from mlkit import record_store
from mlkit.explore.plots import curves_png

POLL_S = 0.5


class LiveCurves:
    """Follows one trial at a time and hands each new picture (PNG bytes) to ``show``."""

    def __init__(self, show: Callable[[bytes], None]) -> None:
        self.show = show
        self.number: int | None = None
        self.record: Path | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self, number: int) -> None:
        """Blank the plot for trial ``number``; follow its record once the driver names it."""
        self.number, self.record = number, None
        self.show(curves_png({}, f"trial #{number}"))
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._follow, args=(self._stop,), name="mlkit-explore-live", daemon=True
        )
        self._thread.start()

    def on_start(self, number: int, run_dir: Path) -> None:
        """The driver's ``on_start`` hook: trial ``number``'s record exists now."""
        if number == self.number:
            self.record = run_dir

    def end(self) -> None:
        """Stop following, and draw the trial's curves as they ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._draw(final=True)

    def _follow(self, stop: threading.Event) -> None:
        seen = -1
        while not stop.wait(POLL_S):
            if self.record is None:
                continue
            count = len(record_store.history(self.record))
            if count != seen:
                seen = count
                self._draw()

    def _draw(self, final: bool = False) -> None:
        if self.record is None:
            return
        rows = record_store.history(self.record)
        done = "" if final else f", epoch {len(rows)}"
        self.show(curves_png({f"#{self.number}": rows}, f"trial #{self.number}{done}"))
