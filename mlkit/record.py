"""The live record of a run, from inside the notebook: ``mlkit.start_run`` and ``Run``.

``mlkit.start_run`` attaches to the directory the driver made (``MLKIT_RUN_DIR``) or
makes one, so the same notebook records itself when it is run by hand in JupyterLab or
by plain papermill. What the folder holds is described in :mod:`mlkit.record_store`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from mlkit import lineage, models, session, track
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
    REFERENCE_FILE,
    RESULT_FILE,
    RESULT_MIME,
    RUN_FILE,
    WEIGHTS,
    spec_from_env,
)
from mlkit._io import _jsonable, append_jsonl, fsync_file, hostname, now_iso, read_json, write_json
from mlkit.errors import ParameterError
from mlkit.figures import _display_png, render_png
from mlkit.record_store import (
    create_run_dir,
    experiments_root,
    find_run,
    history,
    list_runs,
    load_run,
    notebook_paths,
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
        self.started = time.monotonic()
        # Set by start_run in a kernel no driver started: it writes output.ipynb at finish.
        self.session: session.KernelSession | None = None

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
        reference = getattr(dataset, "reference", None)
        if reference is not None:
            import pyarrow.parquet as pq  # a table's run has pyarrow loaded already

            tmp = self.path / f".{REFERENCE_FILE}.tmp"
            pq.write_table(reference, tmp)
            os.replace(tmp, self.path / REFERENCE_FILE)

    def save_model(
        self, model: Any, *, name: str | None = None, build: dict[str, Any] | None = None
    ) -> Path:
        """Save weights as safetensors plus how to rebuild the module (no pickle).

        Args:
            model: the trained ``torch.nn.Module``.
            name: one of mlkit's architectures (``linear``, ``mlp``, ``cnn``); ``build`` then
                holds ``input_shape``, ``n_outputs`` and its options. Omit it for a class of
                your own, imported from a module beside the notebook: model.json then names
                the class (``mymodels:TinyNet``).
            build: for your own class, the keyword arguments it was constructed with
                (``{"hidden": 64}``), plus ``input_shape``, the shape of one example (required:
                a server checks requests against it), and ``n_outputs`` (measured with one
                zero example when left out). The two are passed to the class too when its
                ``__init__`` takes parameters of those names.

        Raises:
            ParameterError: the class cannot be rebuilt later: it is defined in the notebook
                itself or inside a function, ``build`` lacks ``input_shape`` or is not JSON,
                or the class called with ``build`` makes weights of other names or shapes.
        """
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        if name is not None and name in models.names():
            spec: dict[str, Any] = {"name": name, "build": build}
        else:
            spec = _class_spec(model, dict(build or {}), state, name)
        target = self.path / WEIGHTS
        tmp = target.with_suffix(".tmp")
        save_file(state, str(tmp))
        os.replace(tmp, target)
        write_json(self.path / BUILD, spec)
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
        if self.session is not None:
            self._update_lineage(self.session.finish())
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
        info["duration"] = round(time.monotonic() - self.started, 3)
        write_json(self.path / RUN_FILE, info)

    def __repr__(self) -> str:
        return f"Run({self.id!r}, experiment={self.experiment!r}, path='{self.path}')"


# --- a model class of the user's own ------------------------------------------------


def _class_spec(
    model: Any, build: dict[str, Any], state: dict[str, Any], name: str | None
) -> dict[str, Any]:
    """model.json for a class of the user's own, checked now so that it rebuilds later."""
    cls = type(model)
    path = models.class_path(cls)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        where = "this notebook" if cls.__module__ == "__main__" else "a function"
        raise ParameterError(
            f"run.save_model cannot record the class {cls.__qualname__}: it is defined in "
            f"{where}, so nothing can import it to rebuild the model when it is registered, "
            "served or evaluated. Define it in a module beside the notebook (e.g. mymodels.py) "
            f"and import it: from mymodels import {cls.__name__}."
        )
    try:
        json.dumps(build, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ParameterError(
            f"The build of run.save_model must hold JSON values (numbers, strings, lists), the "
            f"arguments {cls.__name__} was constructed with; got {build!r} ({exc}). Pass "
            'plain values, like build={"hidden": 64, "input_shape": [64]}.'
        ) from None
    if "input_shape" not in build:
        raise ParameterError(
            f"run.save_model of your own class {path} needs the shape of one example, so a "
            f"server knows what to accept; got build={build!r}. Pass "
            'build={"input_shape": list(data.input_shape), ...}.'
        )
    build["input_shape"] = list(_positive_ints(build["input_shape"], "input_shape"))
    if "n_outputs" in build:
        build["n_outputs"] = _positive_ints([build["n_outputs"]], "n_outputs")[0]
    else:
        build["n_outputs"] = _measured_outputs(model, build["input_shape"], path)
    _check_fits(cls, build, state, path)
    return {"name": name or path, "class": path, "build": build}


def _positive_ints(values: Any, key: str) -> tuple[int, ...]:
    try:
        ints = tuple(int(v) for v in values if not isinstance(v, bool) and int(v) == v)
        ok = len(ints) == len(values) > 0 and all(v >= 1 for v in ints)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ParameterError(
            f"build[{key!r}] of run.save_model must be positive ints, got {values!r}. Pass "
            'build={"input_shape": list(data.input_shape), "n_outputs": data.n_outputs}.'
        )
    return ints


def _measured_outputs(model: Any, input_shape: list[int], path: str) -> int:
    """Outputs per example of ``model``, from one zero example in eval mode."""
    import torch

    modes = {m: m.training for m in model.modules()}
    first = next(iter(model.state_dict().values()), None)
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape, device=getattr(first, "device", "cpu")))
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    except Exception as exc:
        shape = f"{type(exc).__name__}: {exc}"
    finally:
        for module, training in modes.items():
            module.training = training
    if not (isinstance(shape, tuple) and len(shape) == 2):
        raise ParameterError(
            f"run.save_model could not measure the outputs of {path} on one example of shape "
            f"{tuple(input_shape)}: got {shape}; mlkit serves models that return a tensor "
            '(batch, n_outputs). Pass build={"n_outputs": ...} and check input_shape.'
        )
    return int(shape[1])


def _check_fits(cls: type, build: dict[str, Any], state: dict[str, Any], path: str) -> None:
    """Refuse now a ``build`` that makes other weights than ``state``: it would not reload."""
    import torch

    kwargs = models.class_kwargs(cls, build)
    try:
        try:
            with torch.device("meta"):  # shapes without memory or the cost of initialising
                fresh = cls(**kwargs)
        except TypeError:
            raise
        except Exception:  # an __init__ that needs real tensors: build it for real once
            fresh = cls(**kwargs)
    except Exception as exc:
        raise ParameterError(
            f"{path} called with the arguments of build, {kwargs!r}, fails: "
            f"{type(exc).__name__}: {exc}. Pass in build= the keyword arguments the model was "
            "constructed with."
        ) from None
    want = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    if want != have:
        diff = [
            f"{k}: {have.get(k, 'missing')} saved, {want.get(k, 'none')} rebuilt"
            for k in sorted(want.keys() | have.keys())
            if want.get(k) != have.get(k)
        ]
        hint = (
            f" For one of mlkit's architectures pass name= ({', '.join(models.names())}); "
            "for layers of your own, write a class in a module beside the notebook."
            if cls.__module__.startswith("torch.")
            else ""
        )
        raise ParameterError(
            f"The model's weights do not fit {path} rebuilt from build={build!r}: "
            f"{'; '.join(diff[:3])}. Pass in build= every keyword argument the model was "
            f"constructed with, like build={{'hidden': 64, 'input_shape': [...]}}.{hint}"
        )


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
    if _ACTIVE is not None and _ACTIVE.session is not None:
        _ACTIVE.session.uninstall()  # its cells end here, finished or not
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
        ipython = session.shell()
        found, source = session.find_notebook(ipython.user_ns if ipython else None)
        notebook = found or os.environ.get(ENV_NOTEBOOK) or None
        named = notebook_paths(notebook) if notebook else {"notebook": ""}
        write_json(path / PARAMS_FILE, {**named, "parameters": params})
        write_json(
            path / RUN_FILE,
            {
                "id": run_id,
                "experiment": experiment,
                **named,
                "status": "running",
                "started": now_iso(),
                "pid": os.getpid(),
                "host": hostname(),
                "driver": "kernel",
            },
        )

        write_json(path / LINEAGE_FILE, {**lineage.collect(notebook), "notebook_found_by": source})
    run = Run(
        path, run_id, experiment, params, job_type=job_type, tracking=tracking, defer_finish=defer
    )
    if not run_dir and ipython is not None and hasattr(ipython, "history_manager"):
        run.session = session.KernelSession(ipython, path, found)
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
