"""The live record of a run, from inside the notebook: ``mlkit.start_run`` and ``Run``.

``mlkit.start_run`` attaches to the directory the driver made (``MLKIT_RUN_DIR``) or
makes one, so the same notebook records itself when it is run by hand in JupyterLab or
by plain papermill. What the folder holds is described in :mod:`mlkit.record_store`.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

from mlkit import lineage, track
from mlkit._contract import (
    BUILD,
    DATA_FILE,
    ENV_DEFER_FINISH,
    ENV_EXPERIMENT,
    ENV_NOTEBOOK,
    ENV_RUN_DIR,
    LINEAGE_FILE,
    METRICS_FILE,
    PARAMS_FILE,
    PREPROCESS_FILE,
    RESULT_FILE,
    RESULT_MIME,
    RUN_FILE,
    WEIGHTS,
    spec_from_env,
)
from mlkit._io import _jsonable, append_jsonl, fsync_file, hostname, now_iso, read_json, write_json
from mlkit.figures import _display_png, render_png
from mlkit.record_store import (
    create_run_dir,
    experiments_root,
    find_run,
    history,
    list_runs,
    load_run,
)

# --- files -------------------------------------------------------------------


# --- where runs live ---------------------------------------------------------


# --- inside the notebook -----------------------------------------------------


def parameters(namespace: dict[str, Any]) -> dict[str, Any]:
    """The notebook's parameters: the annotated names of its parameters cell.

    Call it as ``mlkit.parameters(globals())`` right after the parameters cell;
    values injected by papermill have replaced the defaults by then.
    """
    names = namespace.get("__annotations__", {})
    return {name: namespace[name] for name in names if name in namespace}


# The run store and the file helpers stay importable from here (``record.list_runs``,
# ``from mlkit.record import write_json``), as notebooks written before the split use them.
__all__ = [
    "Run",
    "close_active",
    "experiments_root",
    "find_run",
    "history",
    "list_runs",
    "load_run",
    "parameters",
    "read_json",
    "start_run",
    "write_json",
]

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

        trial = spec_from_env()
        known = (read_json(path / LINEAGE_FILE, {}) or {}).get("git")
        self.tracker = track.Tracker(
            run_dir=path,
            run_id=run_id,
            experiment=experiment,
            config={**self.params, **({"trial": trial} if trial else {})},
            job_type=job_type,
            mode=tracking,
            git=lineage.wandb_git_settings(known),
        )
        info = read_json(path / RUN_FILE, {}) or {}
        info.update(self.tracker.describe())
        write_json(path / RUN_FILE, info)

    # metrics ---------------------------------------------------------------
    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log metrics to W&B; per-epoch rows also go to metrics.jsonl (fsynced at the end)."""
        self.tracker.log(metrics, step=step)
        if "epoch" in metrics and any(k.startswith("val/") for k in metrics):
            append_jsonl(self.path / METRICS_FILE, {"step": step, **metrics}, sync=False)

    def set_data(self, dataset: Any) -> None:
        """Record the data version (content hash) in the lineage and the W&B config.

        A table of the user's own also leaves its fitted preprocessing (``preprocess.json``,
        which the registry copies beside the model) and its schema and check findings
        (``data.json``) in the record.
        """
        spec = dataset.spec() if hasattr(dataset, "spec") else dict(dataset)
        self._update_lineage({"data": spec})
        self.tracker.update_config({"data": spec})
        preprocessor = getattr(dataset, "preprocessor", None)
        if preprocessor is not None:
            write_json(self.path / PREPROCESS_FILE, preprocessor.to_dict())
            described = {
                "source": dataset.source,
                "table_hash": dataset.table_hash,
                "version": dataset.version,
                "settings": dataset.settings,
                "task": dataset.task,
                "class_names": list(dataset.class_names),
                "feature_names": list(dataset.feature_names),
                "target_mean": dataset.target_mean,
                "target_std": dataset.target_std,
                "schema": preprocessor.schema(),
                "findings": dataset.findings,
            }
            write_json(self.path / DATA_FILE, described)

    def save_model(self, model: Any, *, name: str, build: dict[str, Any]) -> Path:
        """Save weights as safetensors plus how to rebuild the module (no pickle)."""
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        target = self.path / WEIGHTS
        tmp = target.with_suffix(".tmp")
        save_file(state, str(tmp))
        os.replace(tmp, target)
        write_json(self.path / BUILD, {"name": name, "build": build})
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
        fsync_file(self.path / METRICS_FILE)  # on disk before the sentinel says done
        write_json(self.path / RESULT_FILE, clean)
        self.result = clean
        self.tracker.summary(clean)
        if (self.path / WEIGHTS).exists():
            self.tracker.log_artifact(
                [self.path / WEIGHTS, self.path / BUILD],
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
            fsync_file(self.path / METRICS_FILE)
        if notebook_path and Path(notebook_path).exists():
            self.tracker.log_artifact(
                [Path(notebook_path)], name=f"notebook-{self.id}", type="notebook"
            )
        self.tracker.finish(exit_code=1 if failed or self.result is None else 0)

    # helpers ---------------------------------------------------------------
    def _update_lineage(self, extra: dict[str, Any]) -> None:
        lineage = read_json(self.path / LINEAGE_FILE, {}) or {}
        lineage.update(extra)
        write_json(self.path / LINEAGE_FILE, lineage)

    def _update_status(self, status: str, reason: str = "") -> None:
        info = read_json(self.path / RUN_FILE, {}) or {}
        info.update(status=status, reason=reason, ended=now_iso())
        write_json(self.path / RUN_FILE, info)

    def __repr__(self) -> str:
        return f"Run({self.id!r}, experiment={self.experiment!r}, path='{self.path}')"


def _nan_reason(bad: list[str]) -> str:
    return f"non-finite result: {', '.join(bad)}" if bad else ""


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
        write_json(path / PARAMS_FILE, {"notebook": notebook, "parameters": params})
        write_json(
            path / RUN_FILE,
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

        write_json(path / LINEAGE_FILE, lineage.collect(notebook or None))
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
