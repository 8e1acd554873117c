"""Where run records live: make a run's folder, find one by id or prefix, list and read them.

Layout, under ``experiments/<experiment>/runs/<run-id>/``::

    run.json       status (running, completed, failed), reason, timing, W&B location
    params.json    the notebook and the parameters it ran with
    lineage.json   what is needed to reproduce it (code, data, environment, seed)
    result.json    the metrics the notebook recorded: the success sentinel
    metrics.jsonl  one line per epoch, appended as training goes, fsynced at the end
    output.ipynb   the executed notebook
    model.safetensors, model.json   weights (loadable without pickle) and how to rebuild

The driver and the notebook both use it: the file names are in ``mlkit._contract``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
from pathlib import Path
from typing import Any, TypedDict

from mlkit._contract import ENV_ROOT, METRICS_FILE, PARAMS_FILE, REGISTRY_DIR, RESULT_FILE, RUN_FILE
from mlkit._io import hostname, pid_alive, read_json
from mlkit.errors import MlkitError, ParameterError, RecordWriteError, RunNotFoundError


class RunRecord(TypedDict, total=False):
    """A run as readers see it: ``run.json`` plus its parameters, result and folder.

    Read once by :func:`load_run`; commands pass it around instead of re-reading the files.
    """

    id: str
    experiment: str
    path: str
    # running, completed, failed; crashed when its driver died; unreadable when a file of the
    # record is not valid JSON (reason names the file and the parse error)
    status: str
    reason: str
    notebook: str
    started: str
    ended: str
    duration: float  # seconds of execution
    error: dict[str, Any]  # the failing cell: index, source, exception name and value
    pid: int  # while running: the driver's process, to tell "crashed" from "running"
    host: str
    driver: str  # mlkit (the runner), kernel (a notebook run by hand)
    engine: str  # papermill, warm
    job_type: str  # run, trial, evaluate, report
    evaluates: str  # an evaluation's evaluated run
    result_source: str  # scrapbook, when the notebook recorded its result with glue
    wandb: dict[str, Any]  # mode, id, dir (and url online)
    params: dict[str, Any]
    result: dict[str, Any] | None


def experiments_root() -> Path:
    """``$MLKIT_EXPERIMENTS``, else ``experiments/`` at the project root above the cwd.

    The project root is the nearest folder holding ``.git`` or ``pyproject.toml``,
    so a notebook run from ``notebooks/`` in JupyterLab records where a CLI run does.
    """
    if os.environ.get(ENV_ROOT):
        return Path(os.environ[ENV_ROOT]).resolve()
    return (project_root() or Path.cwd().resolve()) / "experiments"


def project_root(start: str | Path | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default the cwd) holding ``.git`` or
    ``pyproject.toml``; None outside any project."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".git").exists() or (folder / "pyproject.toml").exists():
            return folder
    return None


def notebook_paths(notebook: str | Path) -> dict[str, str]:
    """How a record names its notebook: relative to the project root, and absolute.

    The relative path reads the same whichever folder the run was started from (a CLI
    at the root, JupyterLab in ``notebooks/``), so ``mlkit reproduce`` finds it from the
    root; a notebook outside any project is named by its absolute path in both.
    """
    absolute = Path(notebook).resolve()
    root = project_root(absolute.parent)
    relative = absolute.relative_to(root).as_posix() if root else str(absolute)
    return {"notebook": relative, "notebook_abs": str(absolute)}


def resolve_notebook(recorded: str, absolute: str | None = None) -> Path | None:
    """The notebook a record names, found from any cwd; None when no candidate exists.

    Tried in order: the path relative to the project root of the cwd (records name it so),
    relative to the cwd (records made before they did), then the absolute path recorded.
    """
    path = Path(recorded)
    root = project_root()
    candidates = [path] if path.is_absolute() else [*([root / path] if root else []), path]
    if absolute:
        candidates.append(Path(absolute))
    return next((c for c in candidates if c.is_file()), None)


def new_run_id() -> str:
    """Sortable by time, unique without coordination (W&B accepts it as a run id)."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{now}-{secrets.token_hex(3)}"


def check_experiment_name(name: str) -> str:
    """``name`` when it can name a folder under experiments/ of its own, else ParameterError."""
    ok = name and all(c.isalnum() or c in "-_." for c in name) and not name.startswith(".")
    if not ok:
        raise ParameterError(
            f"Experiment name {name!r} must be letters, digits, '-', '_' or '.', and not start "
            "with '.'. Pass --experiment digits-mlp, for example."
        )
    if name == REGISTRY_DIR:  # its runs would land among the registered models
        raise ParameterError(
            f"Experiment name {name!r} is reserved: experiments/{REGISTRY_DIR}/ holds the model "
            "registry. Pass another --experiment, such as digits-mlp."
        )
    return name


def create_run_dir(experiment: str, root: Path | None = None) -> tuple[str, Path]:
    """Make a fresh run directory; an existing one is never reused or overwritten.

    Raises:
        RecordWriteError: the folder cannot be made (disk full, read-only, ...).
    """
    root = root or experiments_root()
    runs = root / check_experiment_name(experiment) / "runs"
    try:
        runs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, runs) from None
    for _ in range(10):
        run_id = new_run_id()
        path = runs / run_id
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise write_error(exc, path) from None
        return run_id, path
    raise MlkitError(f"Could not create a new run directory under {runs}.")


def write_error(exc: OSError, path: str | Path) -> RecordWriteError:
    """The one-line error for a record file or folder that cannot be written.

    Args:
        exc: what the write raised (``ENOSPC``, ``EROFS``, ``EACCES``, ...).
        path: the file or folder being written (not the temp file an atomic write used).
    """
    return RecordWriteError(
        f"{exc.strerror or exc} while writing {path}. Free space there or make it writable, "
        "or keep runs elsewhere with MLKIT_EXPERIMENTS=<folder>."
    )


def find_run(ref: str | Path, root: Path | None = None) -> Path:
    """Resolve a run id, a unique id prefix, or a path to its directory."""
    path = Path(ref)
    if (path / RUN_FILE).exists() or (path / PARAMS_FILE).exists():
        return path.resolve()
    root = root or experiments_root()
    matches = sorted(root.glob(f"*/runs/{ref}*")) if root.exists() else []
    matches = [m for m in matches if m.is_dir()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunNotFoundError(f"No run '{ref}' under {root}. List runs with: mlkit runs")
    names = ", ".join(m.name for m in matches[:5])
    raise ParameterError(f"Run '{ref}' is ambiguous ({names}, ...). Give more of the id.")


def list_runs(experiment: str | None = None, root: Path | None = None) -> list[RunRecord]:
    """Every run record (newest first), each as run.json plus params and result."""
    root = root or experiments_root()
    pattern = f"{experiment}/runs/*" if experiment else "*/runs/*"
    rows = []
    for path in root.glob(pattern) if root.exists() else []:
        if not path.is_dir():
            continue
        rows.append(load_run(path))
    # An unreadable record has no start time; its id starts with the time it was made.
    rows.sort(key=lambda r: r.get("started") or r["id"], reverse=True)
    return rows


def load_run(path: Path) -> RunRecord:
    """The run in ``path`` as one record: run.json, its parameters and its result.

    Never raises for a damaged record: a file of it that is not valid JSON (a disk that
    filled up, a hand edit) gives ``status: "unreadable"`` with a ``reason`` naming the
    file and the parse error, so one bad run never hides the others.
    """
    try:
        info: RunRecord = _read_object(path / RUN_FILE) or {}
        params = _read_object(path / PARAMS_FILE) or {}
        result = _read_object(path / RESULT_FILE)
    except _Unreadable as exc:
        return {
            "id": path.name,
            "experiment": path.parent.parent.name,
            "path": str(path),
            "status": "unreadable",
            "reason": str(exc),
            "params": {},
            "result": None,
        }
    info.setdefault("id", path.name)
    info.setdefault("experiment", path.parent.parent.name)
    info["path"] = str(path)
    info["params"] = params.get("parameters", {})
    info["result"] = result
    if info.get("status") == "running" and info.get("result") is None:
        # A driver that died leaves "running"; say so instead of pretending.
        pid = info.get("pid")
        if pid and not pid_alive(pid) and info.get("host") == hostname():
            info["status"] = "crashed"
    return info


class _Unreadable(Exception):
    """A record file that exists but cannot be read as a JSON object; says which and why."""


def _read_object(path: Path) -> Any:
    """The JSON object in ``path``; None when the file is missing or holds ``null``."""
    try:
        data = read_json(path)
    except OSError as exc:
        raise _Unreadable(f"{path} cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        what = "is empty" if _is_empty(path) else f"is not valid JSON: {exc}"
        raise _Unreadable(f"{path} {what}") from None
    if data is not None and not isinstance(data, dict):
        raise _Unreadable(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def history(ref: str | Path, root: Path | None = None) -> list[dict[str, Any]]:
    """The per-epoch rows a run logged (metrics.jsonl), for curves and comparisons."""
    return read_history(find_run(ref, root) / METRICS_FILE)


def read_history(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file; none when it is missing."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line torn by a kill: everything before it is intact
    return rows
