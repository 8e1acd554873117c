"""The driver side of a run: validate, make the record, execute, judge, reproduce.

Everything that can be checked before a kernel starts is checked first, so bad
input leaves nothing under ``experiments/``. Once the record exists it is never
deleted: a failed or crashed run keeps its notebook and says why. A record that
cannot be written (a full or read-only disk) is a :class:`RecordWriteError` naming the
file; the run is left marked failed with that reason, or, when even that cannot be
written before the kernel started, not left at all.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlkit import lineage, table_sources, track
from mlkit._contract import (
    ENV_DEFER_FINISH,
    ENV_EXPERIMENT,
    ENV_NOTEBOOK,
    ENV_ROOT,
    ENV_RUN_DIR,
    LINEAGE_FILE,
    OUTPUT_NOTEBOOK,
    PARAMS_FILE,
    RESULT_FILE,
    RUN_FILE,
)
from mlkit._io import hostname, now_iso, pid_alive, read_json, write_json
from mlkit.errors import NotFoundError, ParameterError, RecordWriteError, StateError
from mlkit.record_store import (
    RunRecord,
    check_experiment_name,
    create_run_dir,
    find_run,
    load_run,
    notebook_paths,
    project_root,
    resolve_notebook,
    write_error,
)
from mlkit.run import notebook as nbexec
from mlkit.run import params as _params

ENGINES = {"papermill": "mlkit", "warm": "mlkit-warm"}


_SIGNATURES: dict[tuple[str, str], tuple[tuple[int, int], _params.Signature]] = {}


def signature(notebook: str | Path) -> _params.Signature:
    """``params.read_signature``, kept while the file is unchanged (same mtime and size).

    A sweep reads the same notebook's signature for every trial. Treat it as read-only.
    """
    key = (os.path.abspath(notebook), str(notebook))  # messages name the path as given
    try:
        stat = os.stat(key[0])
    except OSError:
        return _params.read_signature(notebook)  # its error names the missing file
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _SIGNATURES.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    found = _params.read_signature(notebook)
    _SIGNATURES[key] = (stamp, found)
    return found


def prepare(
    notebook: str | Path, given: dict[str, Any], *, from_cli: bool = False
) -> tuple[_params.Signature, dict[str, Any], dict[str, Any]]:
    """Validate ``given`` against the notebook; return signature, given and full values."""
    found = signature(notebook)
    values = _params.validate(given, found, from_cli=from_cli)
    full = {p.name: p.default for p in found.parameters if _is_literal(p.default)}
    full.update(values)
    return found, values, full


def _is_literal(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str | list | dict)


def run(
    notebook: str | Path,
    given: dict[str, Any] | None = None,
    *,
    experiment: str | None = None,
    from_cli: bool = False,
    cell_timeout: float | None = None,
    tracking: str | None = None,
    job_type: str = "run",
    progress: bool = True,
    inject: str = "given",
    extra: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    root: Path | None = None,
    engine: str = "papermill",
    on_start: Callable[[dict[str, Any]], None] | None = None,
    cwd: str | Path | None = None,
) -> RunRecord:
    """Execute ``notebook`` as a recorded run and return its record.

    Args:
        notebook: path of the notebook to run.
        given: parameter values (strings are converted when ``from_cli``).
        experiment: groups runs; defaults to the notebook's file name.
        cell_timeout: seconds any one cell may run.
        tracking: W&B mode (offline, online, disabled); default ``$WANDB_MODE`` or offline.
        job_type: W&B job type.
        progress: show a progress bar while cells run.
        inject: "given" injects only the values passed, "all" every parameter.
        extra: more fields for run.json (for example ``reproduce_of``).
        env: more environment variables for the kernel (never written to the record).
        root: experiments folder; default ``experiments/`` at the project root.
        engine: "papermill" runs a fresh kernel; "warm" reuses a warm kernel of this
            process's pool (see ``mlkit.run.warm``).
        on_start: called with run.json's content (``path`` added) once the record exists,
            before the kernel runs; live views use it to follow ``metrics.jsonl``.
        cwd: the kernel's working directory, recorded in params.json; default the
            caller's, as papermill does.

    Raises:
        MlkitError: before anything is written, for any bad input.
        RecordWriteError: the record cannot be written (disk full, read-only).
    """

    notebook = Path(notebook)
    sig, values, full = prepare(notebook, given or {}, from_cli=from_cli)
    mode = track.resolve_mode(tracking)
    experiment = experiment or notebook.stem
    _check_options(experiment, engine, cell_timeout, full)
    cwd = Path(cwd or Path.cwd()).resolve()

    run_id, run_dir = create_run_dir(experiment, root)
    info = _start_record(
        run_id,
        run_dir,
        notebook,
        experiment=experiment,
        job_type=job_type,
        engine=engine,
        extra=extra or {},
        parameters=full,
        given=values,
        cwd=cwd,
    )
    if on_start is not None:
        on_start({**info, "path": str(run_dir)})
    return _execute(
        notebook,
        run_dir,
        full if inject == "all" else values,
        env=_kernel_env(env, run_dir, experiment, notebook, mode, root),
        cwd=cwd,
        cell_timeout=cell_timeout,
        progress=progress,
        kernel_name=sig.kernel_name,
        engine=ENGINES[engine],
    )


def _kernel_env(
    env: dict[str, str] | None,
    run_dir: Path,
    experiment: str,
    notebook: Path,
    mode: str,
    root: Path | None,
) -> dict[str, str]:
    """The kernel's environment: ours, the caller's, and where its record and root are."""
    kernel_env = {
        **os.environ,
        **(env or {}),
        ENV_RUN_DIR: str(run_dir),
        ENV_EXPERIMENT: experiment,
        ENV_NOTEBOOK: str(notebook),
        ENV_DEFER_FINISH: "1",
        "WANDB_MODE": mode,
    }
    if root is not None:  # a template that opens the registry or a log finds them there too
        kernel_env[ENV_ROOT] = str(Path(root).resolve())
    return kernel_env


def _execute(
    notebook: Path,
    run_dir: Path,
    parameters: dict[str, Any],
    *,
    env: dict[str, str],
    cwd: Path,
    cell_timeout: float | None,
    progress: bool,
    kernel_name: str | None,
    engine: str,
) -> dict[str, Any]:
    """Run the notebook into the record and finish run.json with the outcome, even on error."""
    try:
        outcome = nbexec.execute(
            notebook,
            run_dir / OUTPUT_NOTEBOOK,
            parameters,
            env=env,
            cwd=cwd,
            cell_timeout=cell_timeout,
            progress=progress,
            kernel_name=kernel_name,
            run_dir=run_dir,
            kernel_log=run_dir / "kernel.log",
            engine=engine,
        )
    except KeyboardInterrupt as exc:
        reason = interrupt_reason(exc)
        _finalize_failed(run_dir, reason)
        raise
    except RecordWriteError as exc:
        _finalize_failed(run_dir, str(exc))
        raise
    except BaseException as exc:
        _finalize_failed(run_dir, f"driver error: {type(exc).__name__}: {exc}")
        raise
    reason = outcome.reason
    if _TERMINATED and (outcome.error or {}).get("ename") == "KeyboardInterrupt":
        # A run on another thread, its cell interrupted because the process was told to stop.
        reason = f"{_TERMINATED[-1]}: {reason}"
    return _finalize(
        run_dir,
        status=outcome.status,
        reason=reason,
        error=outcome.error,
        result=outcome.result,
        duration=outcome.duration,
    )


def _preflight_table(values: dict[str, Any]) -> None:
    """A notebook given a table of the user's own as ``dataset`` has it checked first.

    A missing file, an unknown column or a one-class target then exits 2 before a record
    exists, instead of failing the run in its data cell.
    """
    source = values.get("dataset")
    if isinstance(source, str) and table_sources.is_table_source(source):
        # Here, not at the top: pyarrow costs a quarter second that other runs need not pay.
        from mlkit import table_data

        table_data.preflight(source, **{k: values.get(k) for k in table_sources.TABLE_OPTIONS})


def _check_options(
    experiment: str, engine: str, cell_timeout: float | None, values: dict[str, Any]
) -> None:
    _preflight_table(values)
    check_experiment_name(experiment)
    if engine not in ENGINES:
        raise ParameterError(f"Unknown engine {engine!r}. Valid: {', '.join(ENGINES)}.")
    if cell_timeout is not None and not cell_timeout > 0:
        raise ParameterError(f"--timeout must be a number of seconds > 0, got {cell_timeout}.")


def _start_record(
    run_id: str,
    run_dir: Path,
    notebook: Path,
    *,
    experiment: str,
    job_type: str,
    engine: str,
    extra: dict[str, Any],
    parameters: dict[str, Any],
    given: dict[str, Any],
    cwd: Path,
) -> dict[str, Any]:
    """Write run.json (status running), params.json and lineage.json; return run.json's content.

    A disk that refuses them leaves run.json marked failed, or no run folder at all.
    """
    named = notebook_paths(notebook)
    info: dict[str, Any] = {
        "id": run_id,
        "experiment": experiment,
        **named,
        "status": "running",
        "reason": "",
        "job_type": job_type,
        "started": now_iso(),
        "pid": os.getpid(),
        "host": hostname(),
        "driver": "mlkit",
        "engine": engine,
        **extra,
    }
    try:
        _write_record(run_dir / RUN_FILE, info)
        _write_record(
            run_dir / PARAMS_FILE,
            {**named, "parameters": parameters, "given": given, "cwd": str(cwd)},
        )
        _write_record(run_dir / LINEAGE_FILE, lineage.collect(notebook))
    except RecordWriteError as exc:
        _abandon(run_dir, str(exc))
        raise
    return info


def _finalize(run_dir: Path, **fields: Any) -> RunRecord:
    info = read_json(run_dir / RUN_FILE, {}) or {}
    result = fields.get("result")
    if result is not None and not (run_dir / RESULT_FILE).exists():
        # Recorded with scrapbook's glue: keep one place where every reader looks.
        _write_record(run_dir / RESULT_FILE, result)
        info["result_source"] = "scrapbook"
    info.update({k: v for k, v in fields.items() if v is not None})
    info["ended"] = now_iso()
    info.pop("pid", None)
    _write_record(run_dir / RUN_FILE, info)
    return load_run(run_dir)


def _finalize_failed(run_dir: Path, reason: str) -> None:
    """Mark the run failed on the way out of an error, which stays the error to report."""
    # A disk that refused the notebook may refuse run.json too; it then reads "crashed".
    with contextlib.suppress(RecordWriteError):
        _finalize(run_dir, status="failed", reason=reason)


def mark_crashed(run_dir: Path, reason: str) -> bool:
    """Say why a run whose driver died never ended: run.json becomes ``crashed``, ``reason``.

    A driver killed with SIGKILL leaves run.json ``running`` with no reason; whoever finds
    the run's driver gone (a sweep reaping its trial) writes why. Only a record still
    ``running`` whose driver process, on this host, is gone is changed.

    Returns:
        Whether run.json was changed.
    """
    try:
        info = read_json(run_dir / RUN_FILE, None)
    except (OSError, ValueError):  # unreadable: load_run already says so, naming the file
        return False
    if not isinstance(info, dict) or info.get("status") != "running":
        return False
    pid = info.get("pid")
    if not pid or info.get("host") != hostname() or pid_alive(pid):
        return False
    info.update(status="crashed", reason=reason)
    info.pop("pid", None)
    with contextlib.suppress(OSError):  # a full disk: it still reads "crashed", without why
        write_json(run_dir / RUN_FILE, info)
        return True
    return False


def _abandon(run_dir: Path, reason: str) -> None:
    """A record that could not be started: mark it failed, or leave no folder behind."""
    if (run_dir / RUN_FILE).exists():
        info = read_json(run_dir / RUN_FILE, {}) or {}
        info.update(status="failed", reason=reason, ended=now_iso())
        info.pop("pid", None)
        with contextlib.suppress(OSError):
            write_json(run_dir / RUN_FILE, info)
            return
    shutil.rmtree(run_dir, ignore_errors=True)


def _write_record(path: Path, data: Any) -> None:
    """``write_json``, with a failing disk reported as a :class:`RecordWriteError`."""
    try:
        write_json(path, data)
    except OSError as exc:
        raise write_error(exc, path) from None


# The signal that ended this process's work, if one did: runs on other threads (a sweep's
# workers) are interrupted with a plain KeyboardInterrupt and must still name it.
_TERMINATED: list[Terminated] = []


def interrupt_reason(exc: BaseException) -> str:
    """Why a KeyboardInterrupt ended a run: the signal behind it, on any thread, or Ctrl-C."""
    if isinstance(exc, Terminated):
        return str(exc)
    return str(_TERMINATED[-1]) if _TERMINATED else "interrupted by the user"


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, ended like Ctrl-C: the kernel is stopped, the run marked failed."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While in this block, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread.

    For the command line: ``kill`` or a closed terminal then leaves a record that says
    "terminated by SIGTERM" instead of "running". A signal already ignored (``nohup``) or
    handled by the caller is left alone, and so is every signal off the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    _TERMINATED.clear()

    def terminate(signum: int, frame: Any) -> None:
        _TERMINATED.append(Terminated(signum))
        raise _TERMINATED[-1]

    previous: dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            previous[signum] = signal.signal(signum, terminate)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def reproduce(
    ref: str, *, root: Path | None = None, progress: bool = True, tracking: str | None = None
) -> RunRecord:
    """Re-execute a run from its record and compare the metrics exactly.

    Returns a dict with the new run, the per-metric comparison and ``match``.
    """

    old_dir = find_run(ref, root)
    record = read_json(old_dir / PARAMS_FILE)
    if not record:
        raise StateError(f"Run {old_dir.name} has no params.json, so it cannot be reproduced.")
    notebook = _recorded_notebook(old_dir.name, record)
    old = load_run(old_dir)
    _check_table_unchanged(old_dir, record.get("parameters") or {})
    warnings = []
    old_lineage = read_json(old_dir / LINEAGE_FILE, {}) or {}
    recorded_hash = old_lineage.get("notebook_sha256")
    if notebook.exists() and recorded_hash and lineage.notebook_hash(notebook) != recorded_hash:
        warnings.append(f"{notebook} changed since run {old['id']}")
    new = run(
        notebook,
        record["parameters"],
        experiment=old["experiment"],
        root=root or old_dir.parent.parent.parent,
        progress=progress,
        tracking=tracking,
        inject="all",
        extra={"reproduce_of": old["id"]},
        cwd=_recorded_cwd(record, notebook),
    )
    comparison = compare(old.get("result") or {}, new.get("result") or {})
    match = bool(comparison) and all(row["equal"] for row in comparison)
    return {"old": old, "new": new, "comparison": comparison, "match": match, "warnings": warnings}


def _recorded_cwd(record: dict[str, Any], notebook: Path) -> Path:
    """Where the run's kernel ran: its recorded folder, else the notebook's own.

    A run made by hand records no folder: JupyterLab and VS Code start the kernel in the
    notebook's folder, so a notebook that opens ``data.csv`` beside itself finds it there
    too, whichever folder ``mlkit reproduce`` is called from.
    """
    recorded = record.get("cwd")
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    return notebook.resolve().parent


def _recorded_notebook(run_id: str, record: dict[str, Any]) -> Path:
    """The notebook a run's params.json names, found from any cwd, or a StateError."""
    recorded, absolute = record.get("notebook") or "", record.get("notebook_abs")
    if not recorded and not absolute:
        raise StateError(
            f"Run {run_id} was made interactively and recorded no notebook path: its kernel "
            "did not say which notebook it ran (no JPY_SESSION_NAME from JupyterLab, no "
            "VS Code notebook path). Run the notebook as a new record with "
            "`mlkit run NOTEBOOK -p NAME VALUE ...`, with the parameters in its params.json."
        )
    found = resolve_notebook(recorded or absolute, absolute)
    if found is None:
        tried = ", ".join(dict.fromkeys(p for p in (recorded, absolute) if p))
        raise NotFoundError(
            f"Run {run_id} ran the notebook {tried}, which does not exist now (looked at the "
            f"project root {project_root() or Path.cwd()} and the current folder). Restore "
            "the notebook there, or run `mlkit reproduce` from the folder the run was made in."
        )
    return found


def _check_table_unchanged(run_dir: Path, parameters: dict[str, Any]) -> None:
    """Refuse to reproduce a run on a table of the user's own whose content has changed.

    The same code on other rows cannot give the same metrics, and saying "metrics differ"
    after minutes of training would hide why.
    """
    data = (read_json(run_dir / LINEAGE_FILE, {}) or {}).get("data") or {}
    recorded, source = data.get("table_hash"), parameters.get("dataset")
    if not recorded or not isinstance(source, str):
        return
    # Here, not at the top: pyarrow costs a quarter second that other runs need not pay.
    from mlkit import table_data

    now = table_data.source_hash(
        source, table=parameters.get("table"), query=parameters.get("query"), like=recorded
    )
    if now != recorded:
        raise StateError(
            f"The table {source} has changed since run {run_dir.name}: its content hash was "
            f"{recorded[:16]}..., now {now[:16]}.... Reproducing needs the same rows: restore "
            "them, or start a new run on the table as it is."
        )


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Metric by metric, exact equality (NaN equals NaN)."""
    rows = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        equal = a == b or (
            isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
        )
        rows.append({"metric": key, "old": a, "new": b, "equal": equal})
    return rows
