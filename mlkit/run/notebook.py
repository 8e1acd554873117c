"""Notebook execution: the one place that imports papermill and nbclient.

``execute`` runs a notebook through papermill with the ``mlkit`` engine and says,
from evidence, whether the run succeeded: no cell failed *and* the notebook
recorded its result. papermill alone calls a run complete after ``sys.exit(0)``
or when nothing was recorded; mlkit does not.

``MlkitEngine`` is registered as the papermill engine ``mlkit``, so ``papermill --engine
mlkit in.ipynb out.ipynb`` uses it too. Beyond papermill's default engine it gives the
kernel its own environment and working directory (papermill's ``cwd=`` changes the
driver's), and after the last cell it finishes the notebook's W&B run with the executed
notebook attached as an artifact. It writes the executed notebook on a clock (see
``SAVE_EVERY_S``) instead of twice per cell, each write atomic (``atomic_local_writes``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlkit._contract import RESULT_FILE, RESULT_MIME
from mlkit._io import read_json, write_text
from mlkit.errors import RecordWriteError
from mlkit.record_store import write_error
from mlkit.run import progress

EPILOGUE_TIMEOUT_S = 120
SAVE_EVERY_S = 1.0  # while cells run, the executed notebook on disk is at most this old
INTERRUPT_GRACE_S = 5.0  # after Ctrl-C, how long an interrupted cell has to answer


def skip_unused_schema_parsers() -> None:
    """Import jsonschema without rfc3987_syntax, which papermill's import pulls in.

    papermill -> nbformat -> jsonschema's format checkers import rfc3987_syntax, which
    builds grammar parsers at import: 0.75 s to 2.9 s of every driver start, for a
    format nbformat never checks. The block lasts only while jsonschema loads.
    """
    if "jsonschema" in sys.modules or "rfc3987_syntax" in sys.modules:
        return
    sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]
    try:
        import jsonschema  # noqa: F401
    finally:
        del sys.modules["rfc3987_syntax"]


@dataclass
class Outcome:
    """How an execution ended, with the evidence."""

    status: str  # "completed" or "failed"
    reason: str = ""
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "completed"


def lazy_engine(build: Callable[[], type], name: str) -> type:
    """A papermill engine class that builds the real one on first use.

    papermill loads engine entry points while it is itself being imported, so the
    class an entry point names must import nothing from papermill.
    """

    class LazyEngine:
        @classmethod
        def execute_notebook(cls, nb: Any, kernel_name: str, **kwargs: Any) -> Any:
            return build().execute_notebook(nb, kernel_name, **kwargs)

        @classmethod
        def nb_kernel_name(cls, nb: Any, name: str | None = None) -> str:
            return build().nb_kernel_name(nb, name)

        @classmethod
        def nb_language(cls, nb: Any, language: str | None = None) -> str:
            return build().nb_language(nb, language)

    LazyEngine.__name__ = LazyEngine.__qualname__ = name
    LazyEngine.__module__ = build.__module__
    LazyEngine.__doc__ = f"papermill engine, built on first use by {build.__qualname__}."
    return LazyEngine


def make_client(nb_man: Any, kernel_name: str, kwargs: dict[str, Any], **extra: Any) -> Any:
    """The mlkit notebook client from the keyword arguments papermill gives an engine."""
    from papermill.log import logger

    kwargs.pop("input_path", None)
    timeout = kwargs.pop("execution_timeout", None) or kwargs.pop("timeout", None)
    return _client_class()(
        nb_man,
        timeout=timeout,
        startup_timeout=kwargs.pop("start_timeout", 60),
        kernel_name=kernel_name,
        log=logger,
        log_output=kwargs.pop("log_output", False),
        stdout_file=kwargs.pop("stdout_file", None),
        stderr_file=kwargs.pop("stderr_file", None),
        **kwargs,
        **extra,
    )


class _CellSavingAndEpilogue:
    """The parts of mlkit's notebook client that need nothing from nbclient at import.

    Mixed into ``MlkitNotebookClient`` (built by :func:`_client_class`, which imports nbclient
    and papermill on first use): a cell still running after ``SAVE_EVERY_S`` writes the
    notebook, Ctrl-C settles the cell in the kernel, and the epilogue closes the run.
    ``self`` is that client: ``nb_man``, ``km``, ``kc`` and ``timeout`` are nbclient's.
    """

    nb_man: Any
    km: Any
    kc: Any
    timeout: Any
    epilogue_expressions: dict[str, str]
    epilogue_values: dict[str, Any] | None

    def _execute_cell_saving(self, cell: Any, index: int) -> None:
        """Execute a cell; write the notebook if it still runs after SAVE_EVERY_S."""
        from jupyter_core.utils import run_sync

        try:
            run_sync(self._async_execute_cell_saving)(cell, index)
        except KeyboardInterrupt:
            run_sync(self._settle_interrupted_cell)()
            raise

    async def _settle_interrupted_cell(self) -> None:
        """Ctrl-C stopped this thread's event loop in the middle of a cell: stop the cell
        in the kernel too and take its reply. Left pending, the cell's task would go on
        the next time the loop runs, find the kernel shut down, and print "Kernel died
        while waiting for execute reply" and an unretrieved exception."""
        import asyncio

        from jupyter_core.utils import ensure_async

        task = getattr(self, "_cell_task", None)
        if task is None or task.done():
            return
        with contextlib.suppress(Exception):
            await ensure_async(self.km.interrupt_kernel())
        await asyncio.wait([task], timeout=INTERRUPT_GRACE_S)
        if not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=1)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: the cell's KeyboardInterrupt is in its outputs

    async def _async_execute_cell_saving(self, cell: Any, index: int) -> None:
        import asyncio

        self._cell_task = asyncio.current_task()

        async def save_later() -> None:
            await asyncio.sleep(SAVE_EVERY_S)
            save_pending = getattr(self.nb_man, "save_pending", None)
            if save_pending is not None:
                save_pending()

        timer = asyncio.ensure_future(save_later())
        try:
            await self.async_execute_cell(cell, index)
        finally:
            timer.cancel()

    def _epilogue(self, failed: bool) -> None:
        """Save the executed notebook, then let the kernel close its W&B run."""
        output = self.nb_man.output_path
        if output:
            self.nb_man.save()
        code = (
            "import sys as _s\n"
            "_r = _s.modules.get('mlkit.record')\n"
            f"_r and _r.close_active({str(output) if output else None!r}, failed={failed})\n"
            "del _s, _r"
        )
        with contextlib.suppress(Exception):
            msg_id = self.kc.execute(
                code,
                silent=True,
                store_history=False,
                user_expressions=self.epilogue_expressions,
            )
            deadline = self.timeout
            self.timeout = EPILOGUE_TIMEOUT_S
            try:
                reply = self.wait_for_reply(msg_id)
            finally:
                self.timeout = deadline
            if reply is not None:
                self.epilogue_values = reply["content"].get("user_expressions")


@functools.cache
def _client_class() -> type:
    """papermill's notebook client plus a kernel env/cwd/log and a closing epilogue.

    Built on first use, so that importing this module loads neither nbclient nor papermill.
    """
    from nbclient.exceptions import CellExecutionError
    from papermill.clientwrap import PapermillNotebookClient
    from traitlets import Dict, Unicode

    class MlkitNotebookClient(_CellSavingAndEpilogue, PapermillNotebookClient):
        """papermill's client with a per-kernel env and cwd, and a closing epilogue."""

        kernel_env = Dict(default_value=None, allow_none=True).tag(config=True)
        kernel_cwd = Unicode(default_value=None, allow_none=True).tag(config=True)
        kernel_log = Unicode(default_value=None, allow_none=True).tag(config=True)
        # Expressions the kernel evaluates right after the epilogue, in the same request
        # (the warm engine's check for what a run left behind), and what they gave.
        epilogue_expressions = Dict(default_value={})
        epilogue_values: dict[str, Any] | None = None

        def execute(self, **kwargs: Any) -> Any:
            if self.kernel_env is not None:
                kwargs.setdefault("env", dict(self.kernel_env))
            if self.kernel_cwd:
                kwargs.setdefault("cwd", self.kernel_cwd)
            if not self.kernel_log:
                return super().execute(**kwargs)
            # The kernel's own stderr (start-up warnings, shutdown noise, a crash's last
            # words) goes to a file in the record instead of the user's terminal.
            with open(self.kernel_log, "ab") as log:
                kwargs.setdefault("stderr", log)
                return super().execute(**kwargs)

        def papermill_execute_cells(self) -> None:
            failed = False
            index = -1
            try:
                for index, cell in enumerate(self.nb.cells):
                    try:
                        self.nb_man.cell_start(cell, index)
                        self._execute_cell_saving(cell, index)
                    except CellExecutionError as ex:
                        self.nb_man.cell_exception(
                            self.nb.cells[index], cell_index=index, exception=ex
                        )
                        failed = True
                        break
                    finally:
                        self.nb_man.cell_complete(self.nb.cells[index], cell_index=index)
            except BaseException as exc:
                exc.mlkit_cell_index = index  # type: ignore[attr-defined]
                raise
            self._epilogue(failed)

    return MlkitNotebookClient


@functools.cache
def _manager_class() -> type:
    """papermill's execution manager, writing the notebook on a clock, not at every cell."""
    from papermill.engines import NotebookExecutionManager

    class ExecutionManager(NotebookExecutionManager):
        """Writes the executed notebook at most every SAVE_EVERY_S while cells run.

        papermill writes the whole notebook (a JSON dump and a schema validation) when
        each cell starts and ends: 2 writes per cell, 32 per trial of the classify
        template, about 50 ms of a one-second trial. Here a cell boundary writes only when
        the file is older than SAVE_EVERY_S, and a cell still running after SAVE_EVERY_S
        is written then (see ``_execute_cell_saving``): the file is about a second behind
        at most. The start, an error and the end are written at once, as before. In a
        notebook, the progress bar is ``progress.CellProgress``.
        """

        pending = False
        _deferring = False

        def __init__(self, nb: Any, *, progress_bar: Any = True, **kwargs: Any) -> None:
            ours = progress.cell_progress(len(nb.cells), progress_bar)  # not a tqdm widget
            super().__init__(nb, progress_bar=progress_bar if ours is None else False, **kwargs)
            self.pbar = ours or self.pbar

        @contextlib.contextmanager
        def _at_cell_boundary(self) -> Iterator[None]:
            """papermill's saves in here wait for the clock (see ``save``)."""
            self._deferring = True
            try:
                yield
            finally:
                self._deferring = False

        def cell_start(self, cell: Any, cell_index: Any = None, **kwargs: Any) -> None:
            with self._at_cell_boundary():
                super().cell_start(cell, cell_index, **kwargs)

        def cell_complete(self, cell: Any, cell_index: Any = None, **kwargs: Any) -> None:
            with self._at_cell_boundary():
                super().cell_complete(cell, cell_index, **kwargs)

        def save(self, **kwargs: Any) -> None:
            if self._deferring and self.output_path:
                age = (self.now() - self.last_save_time).total_seconds()
                if age < SAVE_EVERY_S:
                    self.pending = True
                    return
            super().save(**kwargs)
            self.pending = False

        def save_pending(self) -> None:
            """Write the notebook if a cell boundary was left unwritten."""
            if self.pending:
                self.save()

    return ExecutionManager


@functools.cache
def atomic_local_writes() -> None:
    """Make papermill write local notebooks atomically: temp file, fsync, rename.

    papermill rewrites the whole executed notebook in place while cells run and at the
    end; a kill, a full disk or a crash in the middle of one left a truncated file that is
    not JSON. Now a reader sees the previous notebook or the new one, never half, and a
    write that fails raises :class:`RecordWriteError` naming the notebook. Replaces
    papermill's own local handler, keeping another package's, for this process.
    """
    from papermill.iorw import LocalHandler, papermill_io
    from papermill.utils import chdir

    class AtomicLocalHandler(LocalHandler):
        def write(self, buf: str, path: str) -> None:
            with chdir(self._cwd):
                folder = os.path.dirname(path)
                if folder and not os.path.exists(folder):  # as papermill: never make folders
                    raise FileNotFoundError(f"output folder {folder} doesn't exist.")
                try:
                    write_text(path, buf)
                except OSError as exc:
                    raise write_error(exc, path) from None

    handlers = papermill_io._handlers  # no public way to replace the "local" handler
    for index, (scheme, handler) in enumerate(handlers):
        if scheme == "local" and type(handler) is LocalHandler:
            handlers[index] = (scheme, AtomicLocalHandler())


@functools.cache
def base_engine() -> type:
    """papermill's nbclient engine with mlkit's execution manager; mlkit's engines extend it."""
    from papermill.engines import NBClientEngine

    atomic_local_writes()

    class Engine(NBClientEngine):
        @classmethod
        def execute_notebook(  # type: ignore[override]
            cls,
            nb: Any,
            kernel_name: str,
            output_path: Any = None,
            progress_bar: Any = True,
            log_output: bool = False,
            autosave_cell_every: int = 30,
            **kwargs: Any,
        ) -> Any:
            """papermill's ``Engine.execute_notebook`` with ``_manager_class()``."""
            nb_man = _manager_class()(
                nb,
                output_path=output_path,
                progress_bar=progress_bar,
                log_output=log_output,
                autosave_cell_every=autosave_cell_every,
            )
            nb_man.notebook_start()
            try:
                cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
            finally:
                nb_man.cleanup_pbar()
                nb_man.notebook_complete()
            return nb_man.nb

    return Engine


@functools.cache
def _engine() -> type:
    class Engine(base_engine()):  # type: ignore[misc]
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):  # type: ignore[override]
            return make_client(nb_man, kernel_name, kwargs).execute()

    return Engine


MlkitEngine = lazy_engine(_engine, "MlkitEngine")


def execute(
    notebook: str | Path,
    output: str | Path,
    parameters: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    cell_timeout: float | None = None,
    progress: bool = True,
    kernel_name: str | None = None,
    run_dir: Path | None = None,
    kernel_log: Path | None = None,
    engine: str = "mlkit",
) -> Outcome:
    """Execute ``notebook`` into ``output`` and judge the outcome from evidence.

    Args:
        notebook: the source notebook (left untouched).
        output: where the executed notebook is written, also when a cell fails.
        parameters: validated values injected after the parameters cell.
        env: the kernel's whole environment (the driver's is not changed).
        cwd: the kernel's working directory.
        cell_timeout: seconds any one cell may run; None for no limit.
        progress: show papermill's progress bar.
        kernel_name: override the notebook's kernel.
        run_dir: where the notebook's mlkit record is, to read its result.
        kernel_log: file that receives the kernel process's stderr.
        engine: "mlkit" for a fresh kernel, "mlkit-warm" for a reused warm one.

    Raises:
        RecordWriteError: the executed notebook cannot be written (disk full, read-only).
    """
    skip_unused_schema_parsers()
    import papermill as pm

    atomic_local_writes()
    start = time.monotonic()
    outcome = Outcome(status="completed")
    nb: dict[str, Any] | None = None
    try:
        pm.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            engine_name=engine,
            kernel_name=kernel_name,
            progress_bar=progress,
            execution_timeout=cell_timeout,
            kernel_env=env,
            kernel_cwd=str(cwd) if cwd else None,
            kernel_log=str(kernel_log) if kernel_log else None,
        )
    except RecordWriteError:
        raise  # the disk, not the notebook: the runner says so and marks the run failed
    except Exception as exc:
        nb = _read_output(output)
        outcome = _classify_exception(exc, cell_timeout, nb)
    else:
        nb = _read_output(output)
        early = _first_error(nb) if nb is not None else None
        if early is not None:  # papermill raises for most errors, not for SystemExit
            outcome = _failed_from_error(early)
    outcome.duration = time.monotonic() - start
    outcome.result = read_result(output, run_dir)
    if outcome.ok:
        if outcome.result is None:
            outcome.status = "failed"
            outcome.reason = (
                "the notebook finished without recording a result; end it with "
                "run.finish({...}) (mlkit) or scrapbook.glue(name, value)"
            )
        else:
            bad = [k for k, v in outcome.result.items() if _non_finite(v)]
            if bad:
                outcome.status = "failed"
                outcome.reason = f"non-finite result: {', '.join(bad)}"
    return outcome


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _cell_source(nb: dict[str, Any] | None, index: int | None) -> str:
    if nb is None or index is None or not 0 <= index < len(nb.get("cells", [])):
        return ""
    source = nb["cells"][index].get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _where(error: dict[str, Any]) -> str:
    """Name a cell the way a person finds it: its index, In [n] and its first line."""
    where = f"cell {error.get('cell_index')}"
    if error.get("execution_count") is not None:
        where += f" (In [{error['execution_count']}])"
    first = next((ln.strip() for ln in (error.get("source") or "").splitlines() if ln.strip()), "")
    if first:
        where += f" `{first[:60]}`"
    return where


def _classify_exception(
    exc: Exception, cell_timeout: float | None, nb: dict[str, Any] | None
) -> Outcome:
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        error = {
            "cell_index": exc.cell_index,
            "execution_count": exc.exec_count,
            "ename": exc.ename,
            "evalue": exc.evalue,
            "source": exc.source,
        }
        return _failed_from_error(error)
    index = getattr(exc, "mlkit_cell_index", None)
    error = {
        "cell_index": index,
        "ename": type(exc).__name__,
        "evalue": str(exc),
        "source": _cell_source(nb, index),
    }
    if isinstance(exc, CellTimeoutError):
        if cell_timeout is None:  # nbclient's own wait for the kernel's output ran out
            return Outcome("failed", f"{_where(error)}: {str(exc).splitlines()[0]}", error)
        return Outcome("failed", f"{_where(error)} timed out after {cell_timeout:g} s", error)
    if isinstance(exc, DeadKernelError):
        return Outcome("failed", f"the kernel died while running {_where(error)}", error)
    return Outcome("failed", f"execution error: {type(exc).__name__}: {exc}", error)


def _failed_from_error(error: dict[str, Any]) -> Outcome:
    if error.get("ename") == "SystemExit":
        reason = (
            f"the notebook exited early with sys.exit({error.get('evalue')}) in {_where(error)}"
        )
    else:
        reason = f"{_where(error)} raised {error.get('ename')}: {error.get('evalue')}"
    return Outcome("failed", reason, error)


def _read_output(path: str | Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _first_error(nb: dict[str, Any]) -> dict[str, Any] | None:
    """The first error output; papermill raises for most, but not for SystemExit."""
    for index, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []) or []:
            if out.get("output_type") == "error":
                source = cell.get("source", "")
                return {
                    "cell_index": index,
                    "execution_count": cell.get("execution_count"),
                    "ename": out.get("ename"),
                    "evalue": out.get("evalue"),
                    "source": "".join(source) if isinstance(source, list) else source,
                }
    return None


def read_result(output: str | Path, run_dir: Path | None = None) -> dict[str, Any] | None:
    """The result a notebook recorded: mlkit's result.json, its output, or scrapbook scraps.

    Notebooks that never import mlkit still sweep and report: their ``scrapbook.glue``
    values are the result.
    """
    if run_dir is not None:
        result = read_json(Path(run_dir) / RESULT_FILE)
        if result is not None:
            return result
    nb = _read_output(output)
    if nb is None:
        return None
    found: dict[str, Any] | None = None
    has_scraps = False
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) or []:
            data = out.get("data") or {}
            if RESULT_MIME in data:
                found = data[RESULT_MIME]
            has_scraps = has_scraps or "scrapbook" in (out.get("metadata") or {})
    if found is not None or not has_scraps:
        return found
    import scrapbook  # decodes every scrapbook encoder (json, text, pandas, ...)

    scraps = scrapbook.read_notebook(str(output)).scraps.data_dict
    return {name: value for name, value in scraps.items()} or None
