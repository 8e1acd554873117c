"""The progress of a run's cells, shown in the notebook that started the run.

A run started from a notebook (``runner.run`` in a Jupyter kernel) gets papermill's
progress bar, which is a tqdm widget there. A saved notebook keeps no widget, only the
widget's text at creation: ``Executing:   0%|  | 0/16``, read as a run that never
started. :class:`CellProgress` draws the bar as one updatable display instead: live in
JupyterLab while cells run, then replaced by one line, ``Executed 16 cells in 5.2 s``,
which nbclient and papermill also write into the saved output.
"""

from __future__ import annotations

import html
import sys
import time
from typing import Any


def in_kernel() -> bool:
    """Whether this process is a Jupyter kernel (a notebook, not a terminal)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


class CellProgress:
    """A tqdm-like bar that papermill's execution manager drives (update, refresh, close).

    Args:
        total: the number of cells the notebook has.
    """

    def __init__(self, total: int) -> None:
        from IPython.display import display  # a kernel is running: IPython is loaded

        self.total, self.n = total, 0
        self.description = "Executing"
        self.start = time.monotonic()
        self.handle = display(self.bundle(), raw=True, display_id=True)

    def bundle(self) -> dict[str, str]:
        """The display: a bar while cells run, one line once closed."""
        line = f"{self.description} {self.total} cells: {self.n} done"
        bar = f'<progress max="{self.total}" value="{self.n}"></progress>'
        return {"text/plain": line, "text/html": f"{html.escape(line)} {bar}"}

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def set_description(self, text: str) -> None:
        self.description = text
        self.refresh()

    def refresh(self) -> None:
        if self.handle is not None:
            self.handle.update(self.bundle(), raw=True)

    def close(self) -> None:
        """Leave one finished line: how many cells ran and how long they took."""
        if self.handle is None:
            return
        seconds = time.monotonic() - self.start
        if self.n >= self.total:
            line = f"Executed {self.total} cells in {seconds:.1f} s"
        else:
            line = f"Executed {self.n} of {self.total} cells in {seconds:.1f} s, then stopped"
        self.handle.update({"text/plain": line, "text/html": html.escape(line)}, raw=True)
        self.handle = None


def cell_progress(total: int, progress_bar: Any) -> CellProgress | None:
    """Our bar where papermill's would be a widget (a kernel, progress asked); else None."""
    return CellProgress(total) if progress_bar is True and in_kernel() else None
