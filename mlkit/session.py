"""A run made by hand in a Jupyter kernel: which notebook it is, what ran, what it showed.

When ``mlkit.start_run`` runs in a kernel that no mlkit driver started (JupyterLab,
VS Code, plain papermill), nobody writes the executed notebook into the record. This
module does it from inside the kernel: it finds the notebook the front end opened, and
from ``start_run`` on follows each cell through IPython's ``pre_run_cell`` and
``post_run_cell`` events, keeping its code and the outputs it sent (streams, displays,
its result, as IPython 9 keeps them per cell; displays and results only, before it; its
error). ``Run.finish`` then leaves ``cells_run.py`` (the code that ran)
and ``output.ipynb`` (the saved notebook with this run's outputs) in the record.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from mlkit._contract import CELLS_RUN_FILE, ENV_JUPYTER_SESSION, OUTPUT_NOTEBOOK
from mlkit._io import write_json, write_text

# VS Code's Jupyter extension names the notebook in this global of the user's namespace.
VSCODE_GLOBAL = "__vsc_ipynb_file__"


def shell() -> Any:
    """The running IPython shell, or None in a plain Python process."""
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None


def find_notebook(namespace: dict[str, Any] | None = None) -> tuple[Path | None, str]:
    """The notebook this kernel runs, as its front end told the kernel, and who told.

    jupyter_server (2 and later) gives each session's kernel ``JPY_SESSION_NAME``, the
    notebook's absolute path when the kernel started; VS Code sets a global. A name that
    is not an existing ``.ipynb`` file (a console, a renamed notebook) counts as none.

    Returns:
        The path (or None) and where it came from (``JPY_SESSION_NAME``, ``vscode``, "").
    """
    candidates = [
        ((namespace or {}).get(VSCODE_GLOBAL), "vscode"),
        (os.environ.get(ENV_JUPYTER_SESSION), ENV_JUPYTER_SESSION),
    ]
    for value, source in candidates:
        if isinstance(value, str) and value.endswith(".ipynb") and Path(value).is_file():
            return Path(value).resolve(), source
    return None, ""


class KernelSession:
    """The cells run in this kernel since ``start_run``: their code and their outputs."""

    def __init__(self, ipython: Any, run_dir: Path, notebook: Path | None) -> None:
        self.shell = ipython
        self.run_dir = run_dir
        self.notebook = notebook
        self.finished = False
        raw = ipython.history_manager.input_hist_raw
        # The cell calling start_run is running now: its code is in the history already.
        self.cells: list[dict[str, Any]] = [
            {
                "count": ipython.execution_count,
                "id": None,
                "source": raw[-1] if raw else "",
                "outputs": [],
            }
        ]
        self._saved: dict[tuple[Any, str], Any] = {}
        self._install()

    # following the kernel ------------------------------------------------------
    def _install(self) -> None:
        self.shell.events.register("pre_run_cell", self._pre)
        self.shell.events.register("post_run_cell", self._post)
        self._wrap(self.shell.display_pub, "publish", self._on_display)
        self._wrap(self.shell.displayhook, "write_format_data", self._on_result)

    def outputs(self, cell: dict[str, Any]) -> list[dict[str, Any]]:
        """The notebook outputs of one cell that ran: its streams first, then the rest.

        IPython 9 keeps a cell's printed text by execution count (it swaps the streams'
        ``write`` for each cell, so only it can see them); earlier versions show none.
        """
        kept = getattr(self.shell.history_manager, "outputs", None)
        streams = []
        for output in (kept or {}).get(cell["count"], []) if isinstance(kept, dict) else []:
            if output.output_type in ("out_stream", "err_stream"):
                name = "stdout" if output.output_type == "out_stream" else "stderr"
                text = "".join(output.bundle["stream"])
                streams.append({"output_type": "stream", "name": name, "text": text})
        for output in cell["outputs"]:
            if output["output_type"] == "execute_result":
                output["execution_count"] = cell["count"]
        return streams + cell["outputs"]

    def _wrap(self, owner: Any, method: str, spy: Any) -> None:
        original = getattr(owner, method, None)
        if original is None:
            return

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            # A record that misses an output never breaks the notebook.
            with contextlib.suppress(Exception):
                spy(*args, **kwargs)
            return original(*args, **kwargs)

        try:
            previous = owner.__dict__.get(method)
            setattr(owner, method, wrapped)
        except (AttributeError, TypeError):  # an object that takes no attributes: not followed
            return
        self._saved[(owner, method)] = previous

    def uninstall(self) -> None:
        """Stop following the kernel; outputs of later cells are not this run's."""
        for event, callback in (("pre_run_cell", self._pre), ("post_run_cell", self._post)):
            if callback in self.shell.events.callbacks.get(event, []):
                self.shell.events.unregister(event, callback)
        for (owner, method), previous in self._saved.items():
            if previous is None:
                vars(owner).pop(method, None)
            else:
                setattr(owner, method, previous)
        self._saved.clear()

    def _pre(self, info: Any) -> None:
        self.cells.append(
            {
                "count": self.shell.execution_count,
                "id": getattr(info, "cell_id", None),
                "source": info.raw_cell,
                "outputs": [],
            }
        )

    def _post(self, result: Any) -> None:
        # The number the front end shows: IPython 9 counts up before a cell runs, 8 after.
        self.cells[-1]["count"] = result.execution_count
        error = result.error_in_exec or result.error_before_exec
        if error is not None:
            self.cells[-1]["outputs"].append(
                {
                    "output_type": "error",
                    "ename": type(error).__name__,
                    "evalue": str(error),
                    "traceback": traceback.format_exception(error),
                }
            )
        if self.finished:  # the cell that called finish() is done: its outputs complete
            self.uninstall()
            self.write_notebook()

    def _on_display(self, data: Any, metadata: Any = None, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("update"):  # a display updated in place: the first one is kept
            return
        output = {"output_type": "display_data", "data": data, "metadata": metadata or {}}
        self.cells[-1]["outputs"].append(output)

    def _on_result(self, data: Any, metadata: Any = None) -> None:
        self.cells[-1]["outputs"].append(
            {
                "output_type": "execute_result",
                "execution_count": self.cells[-1]["count"],
                "data": data,
                "metadata": metadata or {},
            }
        )

    # the record ---------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Write cells_run.py and output.ipynb; return what the lineage should say of them."""
        self.finished = True
        ran = "\n\n".join(
            f"# cell {n} after start_run:\n{c['source'].rstrip()}\n"
            for n, c in enumerate(self.cells)
        )
        write_text(self.run_dir / CELLS_RUN_FILE, ran)
        saved = self._saved_cells()
        unsaved = [n for n, c in enumerate(self.cells) if not _matches(c, saved)]
        self.write_notebook()
        out: dict[str, Any] = {"notebook_saved": not unsaved if saved is not None else None}
        if saved is None:
            out["notebook_note"] = (
                f"no notebook file was found; the code that ran is in {CELLS_RUN_FILE}"
            )
        elif unsaved:
            cells = ", ".join(str(n) for n in unsaved)
            out["notebook_note"] = (
                f"cells {cells} after start_run (0 is its own) ran code that differs from "
                f"the saved {self.notebook.name} "
                f"(unsaved edits); the code that ran is in {CELLS_RUN_FILE}, and "
                "`mlkit reproduce` runs the saved file"
            )
        return out

    def _saved_cells(self) -> list[dict[str, Any]] | None:
        if self.notebook is None:
            return None
        try:
            nb = json.loads(self.notebook.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]

    def write_notebook(self) -> None:
        """output.ipynb: the saved notebook with the outputs of the cells this run ran.

        Cells run before ``start_run`` or not at all keep no outputs; a cell whose code
        differs from the saved one shows the code that ran, marked ``unsaved``.
        """
        nb: dict[str, Any] = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        if self.notebook is not None:
            with contextlib.suppress(OSError, ValueError):
                nb = json.loads(self.notebook.read_text(encoding="utf-8"))
        code = [c for c in nb["cells"] if c.get("cell_type") == "code"]
        for cell in code:
            cell["outputs"], cell["execution_count"] = [], None
        for ran in self.cells:
            cell = _place(ran, code)
            if cell is None:
                cell = {"cell_type": "code", "metadata": {}, "source": ran["source"]}
                nb["cells"].append(cell)
                code.append(cell)
            if _source(cell) != ran["source"]:
                cell["source"] = ran["source"]
                cell.setdefault("metadata", {})["mlkit"] = {"unsaved": True}
            cell["outputs"] = self.outputs(ran)
            cell["execution_count"] = ran["count"]
        nb.setdefault("metadata", {})["mlkit"] = {
            "outputs": "captured in the kernel, from start_run to the end of finish's cell"
        }
        write_json(self.run_dir / OUTPUT_NOTEBOOK, nb)


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _matches(ran: dict[str, Any], saved: list[dict[str, Any]] | None) -> bool:
    if saved is None:
        return True
    by_id = [c for c in saved if ran["id"] and c.get("id") == ran["id"]]
    pool = by_id or saved
    return any(_source(c).rstrip() == ran["source"].rstrip() for c in pool)


def _place(ran: dict[str, Any], code: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The notebook cell a ran cell belongs to: same id, else the first free of same code."""
    for cell in code:
        if ran["id"] and cell.get("id") == ran["id"]:
            return cell
    for cell in code:
        if cell["execution_count"] is None and _source(cell).rstrip() == ran["source"].rstrip():
            return cell
    return None
