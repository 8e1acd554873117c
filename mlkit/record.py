"""Run records: the directory on disk that is the source of truth for a run.

Layout, under ``experiments/<experiment>/runs/<run-id>/``::

    run.json       status (running, completed, failed), reason, timing, W&B location
    params.json    the notebook and the parameters it ran with
    lineage.json   what is needed to reproduce it (code, data, environment, seed)
    result.json    the metrics the notebook recorded: the success sentinel
    metrics.jsonl  one line per epoch, appended as training goes, fsynced at the end
    output.ipynb   the executed notebook
    model.safetensors, model.json   weights (loadable without pickle) and how to rebuild

Inside a notebook, ``mlkit.start_run`` attaches to the directory the driver made
(``MLKIT_RUN_DIR``) or makes one, so the same notebook records itself when it is
run by hand in JupyterLab or by plain papermill.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

from mlkit.errors import MlkitError, RunNotFoundError

RESULT_MIME = "application/vnd.mlkit.result+json"
ENV_RUN_DIR = "MLKIT_RUN_DIR"
ENV_EXPERIMENT = "MLKIT_EXPERIMENT"
ENV_NOTEBOOK = "MLKIT_NOTEBOOK"
ENV_DEFER_FINISH = "MLKIT_DEFER_FINISH"
ENV_ROOT = "MLKIT_EXPERIMENTS"


# --- files -------------------------------------------------------------------


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half."""
    text = json.dumps(_jsonable(data), indent=2, sort_keys=False, allow_nan=True) + "\n"
    write_text(path, text)


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically and durably (temp file, fsync, rename, fsync dir)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; records are shared files
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def append_jsonl(path: str | Path, row: dict[str, Any], *, sync: bool = True) -> None:
    """Append one JSON line, so a kill loses at most the line in flight.

    ``sync=False`` leaves the line with the OS (a killed process loses nothing; a machine
    crash may lose the last lines) until ``fsync_file``: for rows written many times a
    second, where an fsync each was 1% of a short training run.
    """
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(_jsonable(row)) + "\n")
        fh.flush()
        if sync:
            os.fsync(fh.fileno())


def fsync_file(path: str | Path) -> None:
    """Force a file's appended lines to disk (see ``append_jsonl``); no file, no-op."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str | Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder
        fsync_file(path)


def _jsonable(value: Any) -> Any:
    """Convert numpy and torch scalars, paths and tuples into JSON builtins."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


# --- where runs live ---------------------------------------------------------


def experiments_root() -> Path:
    """``$MLKIT_EXPERIMENTS``, else ``experiments/`` at the project root above the cwd.

    The project root is the nearest folder holding ``.git`` or ``pyproject.toml``,
    so a notebook run from ``notebooks/`` in JupyterLab records where a CLI run does.
    """
    if os.environ.get(ENV_ROOT):
        return Path(os.environ[ENV_ROOT]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / ".git").exists() or (folder / "pyproject.toml").exists():
            return folder / "experiments"
    return here / "experiments"


def new_run_id() -> str:
    """Sortable by time, unique without coordination (W&B accepts it as a run id)."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{now}-{secrets.token_hex(3)}"


def check_experiment_name(name: str) -> str:
    ok = name and all(c.isalnum() or c in "-_." for c in name) and not name.startswith(".")
    if not ok:
        raise MlkitError(
            f"Experiment name {name!r} must be letters, digits, '-', '_' or '.', and not start "
            "with '.'. Pass --experiment digits-mlp, for example."
        )
    return name


def create_run_dir(experiment: str, root: Path | None = None) -> tuple[str, Path]:
    """Make a fresh run directory; an existing one is never reused or overwritten."""
    root = root or experiments_root()
    runs = root / check_experiment_name(experiment) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        run_id = new_run_id()
        path = runs / run_id
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return run_id, path
    raise MlkitError(f"Could not create a new run directory under {runs}.")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def find_run(ref: str | Path, root: Path | None = None) -> Path:
    """Resolve a run id, a unique id prefix, or a path to its directory."""
    path = Path(ref)
    if (path / "run.json").exists() or (path / "params.json").exists():
        return path.resolve()
    root = root or experiments_root()
    matches = sorted(root.glob(f"*/runs/{ref}*")) if root.exists() else []
    matches = [m for m in matches if m.is_dir()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunNotFoundError(f"No run '{ref}' under {root}. List runs with: mlkit runs")
    names = ", ".join(m.name for m in matches[:5])
    raise MlkitError(f"Run '{ref}' is ambiguous ({names}, ...). Give more of the id.")


def list_runs(experiment: str | None = None, root: Path | None = None) -> list[dict[str, Any]]:
    """Every run record (newest first), each as run.json plus params and result."""
    root = root or experiments_root()
    pattern = f"{experiment}/runs/*" if experiment else "*/runs/*"
    rows = []
    for path in root.glob(pattern) if root.exists() else []:
        if not path.is_dir():
            continue
        rows.append(load_run(path))
    rows.sort(key=lambda r: r.get("started") or "", reverse=True)
    return rows


def load_run(path: Path) -> dict[str, Any]:
    info = read_json(path / "run.json", {}) or {}
    info.setdefault("id", path.name)
    info.setdefault("experiment", path.parent.parent.name)
    info["path"] = str(path)
    info["params"] = (read_json(path / "params.json", {}) or {}).get("parameters", {})
    info["result"] = read_json(path / "result.json")
    if info.get("status") == "running" and info.get("result") is None:
        # A driver that died leaves "running"; say so instead of pretending.
        pid = info.get("pid")
        if pid and not pid_alive(pid) and info.get("host") == hostname():
            info["status"] = "crashed"
    return info


def history(ref: str | Path, root: Path | None = None) -> list[dict[str, Any]]:
    """The per-epoch rows a run logged (metrics.jsonl), for curves and comparisons."""
    path = find_run(ref, root) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line torn by a kill: everything before it is intact
    return rows


def pid_alive(pid: int) -> bool:
    """Whether a process of this host still runs (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def hostname() -> str:
    import socket

    return socket.gethostname()


# --- inside the notebook -----------------------------------------------------


def parameters(namespace: dict[str, Any]) -> dict[str, Any]:
    """The notebook's parameters: the annotated names of its parameters cell.

    Call it as ``mlkit.parameters(globals())`` right after the parameters cell;
    values injected by papermill have replaced the defaults by then.
    """
    names = namespace.get("__annotations__", {})
    return {name: namespace[name] for name in names if name in namespace}


_ACTIVE: Run | None = None


class Run:
    """The live record of one execution, used from inside the notebook."""

    def __init__(
        self,
        path: Path,
        run_id: str,
        experiment: str,
        params: dict[str, Any],
        *,
        job_type: str = "run",
        tracking: str | None = None,
        defer_finish: bool = False,
    ) -> None:
        self.path = path
        self.id = run_id
        self.experiment = experiment
        self.params = dict(params)
        self.job_type = job_type
        self.defer_finish = defer_finish
        self.result: dict[str, Any] | None = None
        self.figures: list[str] = []
        from mlkit import lineage, track
        from mlkit.trial import spec_from_env

        trial = spec_from_env()
        known = (read_json(path / "lineage.json", {}) or {}).get("git")
        self.tracker = track.Tracker(
            run_dir=path,
            run_id=run_id,
            experiment=experiment,
            config={**self.params, **({"trial": trial} if trial else {})},
            job_type=job_type,
            mode=tracking,
            git=lineage.wandb_git_settings(known),
        )
        info = read_json(path / "run.json", {}) or {}
        info.update(self.tracker.describe())
        write_json(path / "run.json", info)

    # metrics ---------------------------------------------------------------
    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log metrics to W&B; per-epoch rows also go to metrics.jsonl (fsynced at the end)."""
        self.tracker.log(metrics, step=step)
        if "epoch" in metrics and any(k.startswith("val/") for k in metrics):
            append_jsonl(self.path / "metrics.jsonl", {"step": step, **metrics}, sync=False)

    def set_data(self, dataset: Any) -> None:
        """Record the data version (content hash) in the lineage and the W&B config."""
        spec = dataset.spec() if hasattr(dataset, "spec") else dict(dataset)
        self._update_lineage({"data": spec})
        self.tracker.update_config({"data": spec})

    def save_model(self, model: Any, *, name: str, build: dict[str, Any]) -> Path:
        """Save weights as safetensors plus how to rebuild the module (no pickle)."""
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        target = self.path / "model.safetensors"
        tmp = target.with_suffix(".tmp")
        save_file(state, str(tmp))
        os.replace(tmp, target)
        write_json(self.path / "model.json", {"name": name, "build": build})
        return target

    def log_figure(self, name: str, figure: Any, *, show: bool = True) -> Path:
        """Save a matplotlib figure as PNG in the record, log it to W&B and show it.

        The figure is rendered once: the same PNG is written, logged and displayed
        (``plt.show()`` after ``savefig`` would draw it a second time), then closed.
        """
        png = render_png(figure)
        target = self.path / f"{name}.png"
        with open(target, "wb") as fh:
            fh.write(png)
        self.tracker.log_image(name, target)
        self.figures.append(target.name)
        if show:
            _display_png(png)
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(figure)
        return target

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Log a table (a list of row dicts) to the W&B run."""
        self.tracker.log_table(name, [_jsonable(r) for r in rows])

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """Record the result: result.json (the sentinel), W&B summary and artifacts."""
        clean = {k: _jsonable(v) for k, v in result.items()}
        bad = [k for k, v in clean.items() if isinstance(v, float) and not math.isfinite(v)]
        fsync_file(self.path / "metrics.jsonl")  # on disk before the sentinel says done
        write_json(self.path / "result.json", clean)
        self.result = clean
        self.tracker.summary(clean)
        if (self.path / "model.safetensors").exists():
            self.tracker.log_artifact(
                [self.path / "model.safetensors", self.path / "model.json"],
                name=f"model-{self.id}",
                type="model",
            )
        if not self.defer_finish:
            self._update_status("failed" if bad else "completed", _nan_reason(bad))
            self.tracker.finish(exit_code=1 if bad else 0)
        _display_result(clean)
        return clean

    def close(self, notebook_path: str | None = None, failed: bool = False) -> None:
        """Finish the W&B run after the driver saved the executed notebook."""
        if self.result is None:  # finish() did not run: the rows logged so far, to disk
            fsync_file(self.path / "metrics.jsonl")
        if notebook_path and Path(notebook_path).exists():
            self.tracker.log_artifact(
                [Path(notebook_path)], name=f"notebook-{self.id}", type="notebook"
            )
        self.tracker.finish(exit_code=1 if failed or self.result is None else 0)

    # helpers ---------------------------------------------------------------
    def _update_lineage(self, extra: dict[str, Any]) -> None:
        lineage = read_json(self.path / "lineage.json", {}) or {}
        lineage.update(extra)
        write_json(self.path / "lineage.json", lineage)

    def _update_status(self, status: str, reason: str = "") -> None:
        info = read_json(self.path / "run.json", {}) or {}
        info.update(status=status, reason=reason, ended=now_iso())
        write_json(self.path / "run.json", info)

    def __repr__(self) -> str:
        return f"Run({self.id!r}, experiment={self.experiment!r}, path='{self.path}')"


def _nan_reason(bad: list[str]) -> str:
    return f"non-finite result: {', '.join(bad)}" if bad else ""


def render_png(figure: Any, dpi: int = 100) -> bytes:
    """The figure as PNG, cropped to what is drawn, as ``savefig(bbox_inches="tight")``.

    savefig draws a figure twice for that crop: once to measure it, once to save. When
    everything drawn lies inside the canvas, one drawing cropped to the same box gives
    the same picture in about two thirds of the time (a tenth of a short sweep trial).
    A figure that draws past its edges, or a non-default savefig style, is saved by
    savefig, so nothing is ever clipped (past the edges, the drawing done to measure
    makes it about 15% slower than savefig alone: give figures room for their labels).
    """
    import io
    import zlib

    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    rc = matplotlib.rcParams
    pad = rc["savefig.pad_inches"]
    box: Any = "tight"
    plain = (
        isinstance(pad, (int, float))
        and not rc["savefig.transparent"]
        and rc["savefig.facecolor"] == "auto"
        and rc["savefig.edgecolor"] == "auto"
    )
    if plain:
        old_canvas, old_dpi = figure.canvas, figure.dpi
        try:
            figure.dpi = dpi
            canvas = FigureCanvasAgg(figure)
            canvas.draw()
            box = figure.get_tightbbox(canvas.get_renderer()).padded(pad)
            width, height = figure.get_size_inches()
            if box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height:
                rgba = np.asarray(canvas.buffer_rgba())
                rows, cols = rgba.shape[:2]
                # savefig's size for the same box (whole pixels, rounded down), anchored
                # where savefig anchors it: the box's lower left corner.
                w, h = int(box.width * dpi), int(box.height * dpi)
                left = min(round(box.x0 * dpi), cols - w)
                top = max(rows - round(box.y0 * dpi) - h, 0)
                crop = rgba[top : top + h, left : left + w]
                if crop[..., 3].min() == 255:  # opaque: no alpha channel to store
                    crop = crop[..., :3]
                buffer = io.BytesIO()
                # Run-length zlib: a third faster than the default for charts' flat colours,
                # and smaller. Any PNG reader reads it.
                Image.fromarray(crop).save(buffer, format="png", compress_type=zlib.Z_RLE)
                return buffer.getvalue()
        finally:
            figure.dpi = old_dpi
            figure.set_canvas(old_canvas)
    # Drawn past its edges: savefig grows the canvas to the box measured above (one more
    # drawing, not the two of "tight"). A non-default savefig style: savefig's "tight".
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches=box)
    return buffer.getvalue()


def _display_png(png: bytes) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return
    if get_ipython() is not None:
        display(Image(data=png, format="png"))


def _display_result(result: dict[str, Any]) -> None:
    """Show the result in the notebook under a mime type readers can find."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is None:
        return
    text = "\n".join(
        f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items()
    )
    display({RESULT_MIME: result, "text/plain": text}, raw=True)


def start_run(
    params: dict[str, Any],
    *,
    experiment: str | None = None,
    job_type: str = "run",
    tracking: str | None = None,
) -> Run:
    """Attach to the record the driver made, or make one when run by hand.

    Args:
        params: the notebook's parameters, usually ``mlkit.parameters(globals())``.
        experiment: groups runs on disk and in W&B; the driver's choice wins.
        job_type: W&B job type (run, trial, report).
        tracking: W&B mode (offline, online, disabled); default ``$WANDB_MODE`` or offline.
    """
    global _ACTIVE
    if os.environ.get("MLKIT_TRIAL") and job_type == "run":
        job_type = "trial"
    if _ACTIVE is not None and _ACTIVE.result is None:
        _ACTIVE.tracker.finish(exit_code=1)  # an abandoned run in a reused kernel
    run_dir = os.environ.get(ENV_RUN_DIR)
    if run_dir:
        path = Path(run_dir)
        run_id = path.name
        experiment = os.environ.get(ENV_EXPERIMENT) or experiment or path.parent.parent.name
        defer = os.environ.get(ENV_DEFER_FINISH) == "1"
    else:
        experiment = experiment or os.environ.get(ENV_EXPERIMENT) or "notebooks"
        run_id, path = create_run_dir(experiment)
        defer = False
        notebook = os.environ.get(ENV_NOTEBOOK, "")
        write_json(path / "params.json", {"notebook": notebook, "parameters": params})
        write_json(
            path / "run.json",
            {
                "id": run_id,
                "experiment": experiment,
                "notebook": notebook,
                "status": "running",
                "started": now_iso(),
                "pid": os.getpid(),
                "host": hostname(),
                "driver": "kernel",
            },
        )
        from mlkit import lineage

        write_json(path / "lineage.json", lineage.collect(notebook or None))
    run = Run(
        path, run_id, experiment, params, job_type=job_type, tracking=tracking, defer_finish=defer
    )
    run._update_lineage(_kernel_lineage(params))
    _ACTIVE = run
    return run


def _kernel_lineage(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"seed": params.get("seed")}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda
        out["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return out


def close_active(notebook_path: str | None = None, failed: bool = False) -> None:
    """Called by the mlkit engine after the last cell, inside the same kernel."""
    global _ACTIVE
    if _ACTIVE is not None:
        try:
            _ACTIVE.close(notebook_path, failed)
        finally:
            _ACTIVE = None
