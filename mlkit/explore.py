"""The widget explorer: tune a notebook by hand in JupyterLab, every run a trial.

``Explorer(notebook, space)`` builds one control per parameter of the notebook's
parameters cell (ranges and log scale from the search space, else from the
parameter's rule), runs the notebook with the chosen values on a warm kernel in
the background, draws its learning curves live, and records every run as a
trial, tagged ``manual``, of one Optuna study. "Sweep N more" asks the study's
sampler for more trials, so hand tuning and search share one table and one best.

The only module that imports ipywidgets. Runs happen on one worker thread per
process: warm kernels and their ZMQ clients must stay on the thread that made
them, and the UI thread must never wait on a kernel.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import html
import io
import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import traitlets

from mlkit import record_store
from mlkit import storage as storages
from mlkit._io import read_json, write_json, write_text
from mlkit.errors import MlkitError, ParameterError
from mlkit.run import params as _params
from mlkit.run import warm
from mlkit.sweep import config, driver
from mlkit.sweep import space as _space

CANCEL_REASON = "cancelled by the user"
POLL_S = 0.5
CSS = {
    "run": "mlkit-run",
    "cancel": "mlkit-cancel",
    "status": "mlkit-status",
    "table": "mlkit-table",
    "live_plot": "mlkit-live-plot",
}


# Kept importable under its earlier name; raised as ParameterError.
ExploreError = ParameterError


# --- the worker thread ------------------------------------------------------------

_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()
# optuna's matplotlib plots go through pyplot, whose figure registry is global.
_PYPLOT_LOCK = threading.Lock()


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    """One worker thread for every explorer of the process (the warm pool is per process)."""
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="mlkit-explore"
            )
        return _EXECUTOR


def shutdown() -> None:
    """Stop the idle warm kernels on the thread that made them, then the worker thread.

    Call it before other code in this process uses the warm pool from another thread.
    """
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        executor, _EXECUTOR = _EXECUTOR, None
    if executor is None:
        return

    executor.submit(warm.pool().close).result()
    executor.shutdown(wait=True)


@dataclasses.dataclass
class _Job:
    """One run or sweep in flight: what Cancel and the live plot need to reach it."""

    kind: str
    cancelled: bool = False
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    number: int | None = None  # the trial running now
    record: Path | None = None  # its run record, once found
    trial_done: threading.Event = dataclasses.field(default_factory=threading.Event)


class _CancelAwareStudy:
    """The study as ``run_trial`` sees it: a FAIL told after Cancel says it was cancelled.

    ``run_trial`` tells the outcome itself and a finished trial cannot be updated, so
    the reason must be set in the moment before the tell.
    """

    def __init__(self, study: Any, job: _Job) -> None:
        self._study = study
        self._job = job

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def tell(self, trial: Any, values: Any = None, state: Any = None, **kwargs: Any) -> Any:
        from optuna.trial import TrialState

        if self._job.cancelled and state == TrialState.FAIL:
            self._study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", CANCEL_REASON)
            self._study._storage.set_trial_user_attr(trial._trial_id, "cancelled", True)
        return self._study.tell(trial, values, state=state, **kwargs)


# --- controls -----------------------------------------------------------------------


def _clamp(value: Any, low: float, high: float) -> float:
    try:
        return min(max(float(value), low), high)
    except (TypeError, ValueError):
        return low


def _rule_range(param: _params.Parameter) -> tuple[float, float, float] | None:
    """(low, high, step) for a slider from a two-sided rule, else None.

    The step is a round number (0.01 on [0, 1)); an exclusive end moves one step
    inside. A default outside the range (lr 0.003 on "above 0 and at most 10") gets
    a text field instead: a linear slider cannot reach it.
    """
    rule = param.rule
    if param.type not in ("int", "float") or rule is None or rule.choices:
        return None
    if rule.low is None or rule.high is None:
        return None
    if not (math.isfinite(rule.low) and math.isfinite(rule.high)) or rule.low >= rule.high:
        return None
    step = 1 if param.type == "int" else 10 ** math.floor(math.log10((rule.high - rule.low) / 100))
    low = rule.low if rule.low_inclusive else rule.low + step
    high = rule.high if rule.high_inclusive else rule.high - step
    default = param.default
    if isinstance(default, bool) or not isinstance(default, int | float):
        return None
    return (low, high, step) if low < high and low <= default <= high else None


def _choices(param: _params.Parameter, rule: _params.Rule) -> list[Any]:
    """A ``one of`` rule's choices in the parameter's type (``one of 1, 2`` on an int)."""
    return [c if param.type in ("str", "any") else _params.coerce(param, c) for c in rule.choices]


def _control(param: _params.Parameter, dim: _space.Dim | None) -> widgets.Widget:
    """The widget for one parameter: the space's range wins over the rule's."""
    common: dict[str, Any] = {
        "description": param.name,
        "tooltip": param.help or param.name,
        "style": {"description_width": "110px"},
        "layout": widgets.Layout(width="380px"),
    }
    default = param.default
    if dim is not None and dim.kind == "categorical":
        options = [(str(c), c) for c in dim.choices]
        value = default if default in dim.choices else dim.choices[0]
        return widgets.Dropdown(options=options, value=value, **common)
    if dim is not None and dim.kind == "float" and dim.log:
        low, high = math.log10(dim.low), math.log10(dim.high)
        return widgets.FloatLogSlider(
            value=_clamp(default, dim.low, dim.high),
            base=10,
            min=low,
            max=high,
            step=(high - low) / 100,
            readout_format=".2e",
            **common,
        )
    if dim is not None and dim.kind in ("float", "int"):
        low, high, step = dim.low, dim.high, dim.step
    elif bounds := _rule_range(param):
        low, high, step = bounds
    else:
        low = high = step = None
    if (dim is not None and dim.kind == "int") or (low is not None and param.type == "int"):
        return widgets.IntSlider(
            value=int(_clamp(default, low, high)),
            min=int(low),
            max=int(high),
            step=int(step or 1),
            **common,
        )
    if low is not None:
        return widgets.FloatSlider(
            value=_clamp(default, low, high),
            min=low,
            max=high,
            step=step or (high - low) / 100,
            readout_format=".3g",
            **common,
        )
    if param.type == "bool":
        return widgets.Checkbox(value=bool(default), indent=False, **common)
    if param.rule and param.rule.choices:
        options = _choices(param, param.rule)
        value = default if default in options else options[0]
        return widgets.Dropdown(options=options, value=value, **common)
    if param.type == "int":
        return widgets.IntText(value=int(default or 0), **common)
    if param.type == "float":
        return widgets.FloatText(value=float(default or 0.0), **common)
    if param.type == "str":
        return widgets.Text(value=str(default or ""), **common)
    return widgets.Text(value=json.dumps(default), **common)  # list, dict, untyped: YAML/JSON


def _derived_space(signature: _params.Signature) -> dict[str, Any]:
    """A space for a notebook given none: what the controls can take, no more.

    Each parameter whose control has a finite domain becomes a dimension with exactly
    that domain (a ``one of`` rule, a bool, a two-sided numeric rule), so a hand-picked
    value always fits the study. Other parameters travel as fixed values per run.
    Sampling such a space would search datasets and devices, so sweeping needs a real one.
    """
    out: dict[str, Any] = {}
    for param in signature.parameters:
        if param.name == "seed":
            continue
        if param.type == "bool":
            out[param.name] = [False, True]
        elif param.rule and param.rule.choices:
            out[param.name] = _choices(param, param.rule)
        elif bounds := _rule_range(param):
            low, high, _ = bounds
            kind = param.type
            out[param.name] = {
                "type": kind,
                "low": int(low) if kind == "int" else low,
                "high": int(high) if kind == "int" else high,
            }
    if not out:
        raise ParameterError(
            f"Notebook {signature.notebook} has no parameter with a 'one of' rule, a bool or a "
            "two-sided range, so no search space can be made from it. Pass "
            "space='space.yaml' (see mlkit.space for the format)."
        )
    return out


# --- plots --------------------------------------------------------------------------


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return buffer.getvalue()


def curves_png(histories: dict[str, list[dict[str, Any]]], title: str = "") -> bytes:
    """Loss curves (left) and other validation metrics (right) of several runs, as PNG.

    Uses a bare ``Figure`` rather than pyplot: it is drawn on the worker thread, and
    pyplot's figure registry would leak it into whichever cell finishes next.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3))
    FigureCanvasAgg(figure)
    ax_loss, ax_metric = figure.subplots(1, 2)
    drawn = False
    for index, (label, rows) in enumerate(histories.items()):
        color = f"C{index % 10}"
        x = [r.get("epoch", r.get("step")) for r in rows]
        # Only losses and validation metrics: lr and seconds would flatten the axes.
        keys = sorted({k for r in rows for k in r if k.endswith("loss") or k.startswith("val/")})
        for key in keys:
            y = [r.get(key) for r in rows]
            if not any(isinstance(v, int | float) for v in y):
                continue
            ax = ax_loss if key.endswith("loss") else ax_metric
            style = "-" if key.startswith("train/") else "--"
            ax.plot(x, y, style, color=color, label=f"{label} {key}", marker=".")
            drawn = True
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss (train solid, val dashed)")
    ax_metric.set(xlabel="epoch", title="Validation metrics")
    for ax in (ax_loss, ax_metric):
        if ax.lines:
            ax.legend(fontsize=7)
    if not drawn:
        ax_loss.text(0.5, 0.5, "no epochs logged yet", ha="center", transform=ax_loss.transAxes)
    if title:
        figure.suptitle(title)
    return _png(figure)


def _optuna_png(plot: Callable[..., Any], study: Any, **kwargs: Any) -> bytes:
    import warnings

    import matplotlib.pyplot as plt

    with _PYPLOT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = plot(study, **kwargs)
        figure = (result.flat[0] if hasattr(result, "flat") else result).figure
        try:
            return _png(figure)
        finally:
            plt.close(figure)


# --- the explorer ---------------------------------------------------------------------


class Explorer:
    """Widgets to run, compare and sweep one notebook; every run is a trial of one study.

    Args:
        notebook: the notebook to tune (one ``parameters`` cell).
        space: search-space YAML; without one, a space is derived from the parameters'
            rules (see ``_derived_space``) and "Sweep N more" is off.
        study: study name; default ``<notebook stem>-explore`` (or ``experiment``).
        storage: storage URL; default ``experiments/<study>/study.journal``.
        experiment: the name records are grouped under; trials are recorded under their
            study, so it is the study's default name and must agree with ``study``.
        engine: "warm" (Cancel works) or "papermill" (a fresh kernel per run).
        objective: ``METRIC[:min|max]``, as for ``mlkit sweep --objective``.
        sampler, pruner, seed: as for ``mlkit sweep``.
        trial_timeout: seconds any one cell may run.
    """

    def __init__(
        self,
        notebook: str | Path,
        space: str | Path | None = None,
        study: str | None = None,
        *,
        storage: str | None = None,
        experiment: str | None = None,
        engine: str = "warm",
        objective: str = "val/accuracy",
        sampler: str = "tpe",
        pruner: str = "median",
        seed: int = 0,
        trial_timeout: float | None = None,
    ) -> None:
        if study and experiment and study != experiment:
            raise ParameterError(
                f"study={study!r} and experiment={experiment!r} differ, but every run is a "
                f"trial recorded under its study's name. Pass only study={study!r}."
            )
        self.notebook = Path(notebook)
        self.signature = _params.read_signature(self.notebook)
        name = study or experiment or f"{self.notebook.stem}-explore"
        root = record_store.experiments_root()
        self.sweepable = space is not None
        if space is None:
            import yaml

            space = root / name / "explore_space.yaml"
            space.parent.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(_derived_space(self.signature), sort_keys=False)
            if not space.exists() or space.read_text(encoding="utf-8") != text:
                write_text(space, text)
        self.space_path = Path(space)
        self.cfg = config.prepare(
            self.notebook,
            self.space_path,
            study=name,
            storage=storage,
            objectives=[objective],
            sampler=sampler,
            pruner=pruner,
            seed=seed,
            trial_timeout=trial_timeout,
            root=root,
            engine=engine,
        )
        self.dims = self.cfg.dims()
        self.study = config._create_or_resume(self.cfg)
        self.study.sampler = config.make_sampler(
            self.cfg.sampler, self.cfg.seed, self.dims, len(self.cfg.objectives)
        )
        self.study.pruner = storages.make_pruner(self.cfg.pruner)
        self._job: _Job | None = None
        self._pending: list[concurrent.futures.Future] = []
        self._records: dict[int, Path] = {}
        self._rows: dict[int, dict[str, Any]] = {}
        self._build()
        self.refresh()

    # -- building the UI -------------------------------------------------------------
    def _build(self) -> None:
        by_name = {d.name: d for d in self.dims}
        self.controls: dict[str, widgets.Widget] = {}
        rows = []
        for param in self.signature.parameters:
            control = _control(param, by_name.get(param.name))
            control.add_class(f"mlkit-control-{param.name}")
            help_text = param.help + (f" ({param.rule.text})" if param.rule else "")
            if param.name == "seed" and param.name not in by_name:
                # run_trial seeds every trial from its parameters (reproducible points).
                control.disabled = True
                help_text = "set per trial from its parameters, so a point always trains alike"
            self.controls[param.name] = control
            rows.append(widgets.HBox([control, widgets.HTML(f"<small>{html.escape(help_text)}")]))

        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True)
        self.best_button = widgets.Button(description="Use best", icon="trophy")
        self.sweep_count = widgets.IntText(value=5, description="N", layout={"width": "120px"})
        self.sweep_count.style.description_width = "20px"
        self.sweep_button = widgets.Button(description="Sweep N more", icon="forward")
        self.sweep_button.disabled = not self.sweepable
        if not self.sweepable:
            self.sweep_button.tooltip = "pass space='space.yaml' to sweep"
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="sweep")
        self.progress.layout.visibility = "hidden"
        self.status = widgets.HTML(value="ready")
        self.live_plot = widgets.Image(format="png", layout={"width": "720px"})
        for widget, key in (
            (self.run_button, "run"),
            (self.cancel_button, "cancel"),
            (self.status, "status"),
            (self.live_plot, "live_plot"),
        ):
            widget.add_class(CSS[key])
        self.best_button.add_class("mlkit-use-best")
        self.sweep_button.add_class("mlkit-sweep")
        self.sweep_count.add_class("mlkit-sweep-n")
        self.progress.add_class("mlkit-progress")
        self.run_button.on_click(lambda _: self._click(self.run))
        self.cancel_button.on_click(lambda _: self.cancel())
        self.best_button.on_click(lambda _: self._click(self.use_best))
        self.sweep_button.on_click(lambda _: self._click(self.sweep_more, self.sweep_count.value))

        self.sort_by = widgets.Dropdown(
            options=["#", "objective", "duration", *[d.name for d in self.dims]],
            value="objective",
            description="sort by",
        )
        self.sort_by.observe(lambda _: self._draw_table(self.rows()), names="value")
        self.table = widgets.HTML()
        self.table.add_class(CSS["table"])
        self.compare = widgets.SelectMultiple(options=[], rows=6, description="compare")
        self.compare.add_class("mlkit-compare")
        self.compare.observe(lambda _: self._draw_compare(), names="value")
        self.compare_plot = widgets.Image(format="png", layout={"width": "720px"})
        self.study_plots = widgets.Tab()
        self.study_plots.add_class("mlkit-study-plots")

        buttons = widgets.HBox(
            [
                self.run_button,
                self.cancel_button,
                self.best_button,
                self.sweep_count,
                self.sweep_button,
                self.progress,
            ]
        )
        title = f"<b>{html.escape(str(self.notebook))}</b> &middot; study {self.cfg.study}"
        self.widget = widgets.VBox(
            [
                widgets.HTML(title),
                widgets.VBox(rows),
                buttons,
                self.status,
                self.live_plot,
                widgets.Accordion(
                    children=[
                        widgets.VBox([self.sort_by, self.table]),
                        widgets.VBox([self.compare, self.compare_plot]),
                        self.study_plots,
                    ],
                    titles=("Runs", "Compare learning curves", "Study plots"),
                    selected_index=0,
                ),
            ]
        )
        self.widget.add_class("mlkit-explorer")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _click(self, action: Callable[..., Any], *args: Any) -> None:
        """Button handlers return at once; a refused action shows why in the status."""
        try:
            action(*args)
        except MlkitError as exc:
            self._say(f"not started: {exc}", "error")

    def _say_queued(self, what: str) -> None:
        busy = self._job is not None and not self._job.done.is_set()
        if not busy:  # else keep showing the run in flight
            self._say(f"{what} queued")

    def _say(self, text: str, level: str = "info") -> None:
        color = {"info": "inherit", "ok": "green", "error": "firebrick"}[level]
        self.status.value = f'<span style="color:{color}">{html.escape(text)}</span>'

    # -- values ----------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        """The controls' values, converted and checked against the parameters cell.

        Raises:
            ParameterError: a value breaks its parameter's type or rule (the message
                names the parameter and a valid value).
        """
        raw: dict[str, Any] = {}
        for param in self.signature.parameters:
            value = self.controls[param.name].value
            if isinstance(value, str) and param.type not in ("str",):
                value = _params.coerce(param, value, str(self.notebook))
            raw[param.name] = value
        return _params.validate(raw, self.signature)

    def _split(self, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(values of the active dimensions, other values that differ from the defaults)."""
        in_space = {d.name: values[d.name] for d in self.dims if d.active(values)}
        names = {d.name for d in self.dims}
        defaults = self.signature.defaults()
        fixed = {
            k: v
            for k, v in values.items()
            if k not in names and k != "seed" and v != defaults.get(k)
        }
        return in_space, {**self.cfg.fixed, **fixed}

    # -- actions -----------------------------------------------------------------------
    def run(self, wait: bool = False) -> concurrent.futures.Future:
        """Run the notebook with the controls' values as a manual trial, in the background.

        Returns a Future of the trial's row (see ``rows``); ``wait=True`` waits for it.
        """
        in_space, fixed = self._split(self.values())
        job = _Job("run")
        self._say_queued("run")
        future = self._submit(self._run_manual, job, in_space, fixed)
        return self._wait(future) if wait else future

    def sweep_more(self, n: int, wait: bool = False) -> concurrent.futures.Future:
        """Run ``n`` trials sampled by the study's sampler; returns a Future of their rows.

        Parameters that are not dimensions keep the controls' values.
        """
        if not self.sweepable:
            raise ParameterError(
                f"Explorer of {self.notebook} has no search space, so there is nothing to "
                "sample. Pass space='space.yaml' to Explorer to sweep."
            )
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ParameterError(f"Sweep N more needs an int N >= 1, got {n!r}. Set N to 5.")
        _, fixed = self._split(self.values())
        job = _Job("sweep")
        self.progress.max, self.progress.value = n, 0
        self.progress.layout.visibility = "visible"
        self._say_queued(f"sweep of {n}")
        future = self._submit(self._run_sweep, job, n, fixed)
        return self._wait(future) if wait else future

    def cancel(self) -> bool:
        """Interrupt the run in flight and drop queued ones; the trial FAILs as cancelled."""
        dropped = sum(f.cancel() for f in self._pending)
        job = self._job
        if job is None or job.done.is_set():
            self._say("nothing is running" if not dropped else "queued runs dropped")
            return bool(dropped)
        if self.cfg.engine != "warm":
            self._say("Cancel needs engine='warm'; this run goes on", "error")
            return False
        job.cancelled = True
        self._interrupt(job)
        self._say("cancelling...")
        return True

    def use_best(self) -> dict[str, Any]:
        """Fill the controls with the best trial's parameters (as its record ran them)."""
        if len(self.study.directions) > 1:
            raise ParameterError("Two objectives have no single best trial: pick from the table.")
        try:
            best = self.study.best_trial
        except ValueError:
            raise ParameterError("No completed trial yet: click Run first.") from None
        chosen = dict(best.params)
        run_path = best.user_attrs.get("run_path")
        if run_path:
            recorded = read_json(Path(run_path) / "params.json", {}) or {}
            chosen = {**recorded.get("parameters", {}), **chosen}
        for name, value in chosen.items():
            control = self.controls.get(name)
            if control is None or control.disabled:
                continue
            if isinstance(control, widgets.Text) and not isinstance(value, str):
                value = json.dumps(value)
            with contextlib.suppress(traitlets.TraitError):  # a choice the space dropped
                control.value = value
        self._say(f"controls set to trial #{best.number}", "ok")
        return chosen

    # -- on the worker thread --------------------------------------------------------------
    def _submit(self, fn: Callable[..., Any], job: _Job, *args: Any) -> concurrent.futures.Future:
        def task() -> Any:
            self._job = job
            self._set_busy(True)
            try:
                return fn(job, *args)
            finally:
                job.done.set()
                self._set_busy(False)

        future = _executor().submit(task)
        self._pending = [f for f in self._pending if not f.done()] + [future]
        future.add_done_callback(self._report_crash)
        return future

    def _wait(self, future: concurrent.futures.Future) -> concurrent.futures.Future:
        future.result()
        return future

    def _report_crash(self, future: concurrent.futures.Future) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._say(f"failed: {type(exc).__name__}: {exc}", "error")

    def _set_busy(self, busy: bool) -> None:
        self.cancel_button.disabled = not busy
        self.sweep_button.disabled = busy or not self.sweepable

    def _ask(self, enqueue: dict[str, Any] | None) -> Any:
        # Under the sweep's lock: a `mlkit sweep` on the same study must not take our point.
        with storages.ask_lock(self.cfg.storage, self.cfg.study):
            if enqueue is not None:
                self.study.enqueue_trial(enqueue, user_attrs={"manual": True}, skip_if_exists=False)
            trial = self.study.ask()
            tag = {"host": socket.gethostname(), "pid": os.getpid()}
            self.study._storage.set_trial_user_attr(trial._trial_id, "worker", tag)
            self.study._storage.set_trial_user_attr(trial._trial_id, "heartbeat", time.time())
        return trial

    def _run_manual(self, job: _Job, in_space: dict[str, Any], fixed: dict[str, Any]) -> Any:
        trial = self._ask(in_space)
        row = self._run_one(job, trial, fixed)
        self.refresh()
        return row

    def _run_sweep(self, job: _Job, n: int, fixed: dict[str, Any]) -> list[dict[str, Any]]:
        rows = []
        for index in range(n):
            if job.cancelled:
                break
            with storages.ask_lock(self.cfg.storage, self.cfg.study):
                driver.reap_stale(self.study)
            trial = self._ask(None)
            rows.append(self._run_one(job, trial, fixed, f"sweep {index + 1}/{n}: "))
            self.progress.value = index + 1
            self.refresh()
        self.progress.layout.visibility = "hidden"
        return rows

    def _run_one(
        self, job: _Job, trial: Any, fixed: dict[str, Any], prefix: str = ""
    ) -> dict[str, Any]:
        """Run one asked trial through ``run_trial``, following its record while it runs."""
        job.number, job.record, job.trial_done = trial.number, None, threading.Event()
        source = "manual" if trial.user_attrs.get("manual") else "sampled"
        self._say(f"{prefix}running trial #{trial.number} ({source})...")
        self.live_plot.value = curves_png({}, f"trial #{trial.number}")
        known = self._run_dirs()
        follower = threading.Thread(target=self._follow, args=(job, known), daemon=True)
        follower.start()
        cfg = dataclasses.replace(self.cfg, fixed=fixed)
        try:
            state = driver.run_trial(cfg, _CancelAwareStudy(self.study, job), trial, self.dims)
        except KeyboardInterrupt:
            if not job.cancelled:
                raise
            state = "FAIL"  # cancelled before its first cell; run_trial told the study
        finally:
            job.trial_done.set()
            follower.join(timeout=5)
        record = self._record_of(trial.number) or job.record
        if record is not None:
            self._records[trial.number] = record
        if job.cancelled and state.startswith("FAIL"):
            self._mark_cancelled(record)
        row = self._row(self.study.get_trials(deepcopy=False)[trial.number])
        self._draw_live(job, final=True)
        self._say(prefix + self._outcome_text(row), "ok" if row["state"] == "COMPLETE" else "error")
        return row

    def _follow(self, job: _Job, known: set[Path]) -> None:
        """Find the trial's record, redraw its curves as epochs land, retry a Cancel."""
        seen = -1
        while not job.trial_done.wait(POLL_S):
            if job.record is None:
                for path in self._run_dirs() - known:
                    info = read_json(path / "run.json", {}) or {}
                    if info.get("trial") == job.number:
                        job.record = path
            if job.cancelled:
                # A Cancel before the kernel was acquired, or between cells, has nothing to
                # interrupt yet: keep trying until the run ends.
                self._interrupt(job)
            if job.record is not None:
                count = len(record_store.history(job.record))
                if count != seen:
                    seen = count
                    self._draw_live(job)

    def _interrupt(self, job: _Job) -> None:

        if not (job.done.is_set() or job.trial_done.is_set()):
            warm.pool().interrupt()

    def _mark_cancelled(self, record: Path | None) -> None:
        if record is None:
            return
        info = read_json(record / "run.json", {}) or {}
        if info.get("reason") != CANCEL_REASON:
            info["interrupted_as"] = info.get("reason", "")
        info.update(status="failed", reason=CANCEL_REASON, cancelled=True)
        write_json(record / "run.json", info)

    def _draw_live(self, job: _Job, final: bool = False) -> None:
        if job.record is None:
            return
        rows = record_store.history(job.record)
        done = "" if final else f", epoch {len(rows)}"
        self.live_plot.value = curves_png({f"#{job.number}": rows}, f"trial #{job.number}{done}")

    def _outcome_text(self, row: dict[str, Any]) -> str:
        number, state = row["number"], row["state"]
        if state == "COMPLETE":
            metric = self.cfg.objectives[0]
            return f"completed trial #{number}: {metric} = {_fmt(row['objective'])}"
        if state == "PRUNED":
            return f"trial #{number} pruned"
        return f"failed trial #{number}: {row.get('fail_reason') or 'no reason recorded'}"

    # -- records and trials ----------------------------------------------------------------
    def _runs_folder(self) -> Path:
        return Path(self.cfg.root or record_store.experiments_root()) / self.cfg.study / "runs"

    def _run_dirs(self) -> set[Path]:
        folder = self._runs_folder()
        return {p for p in folder.iterdir() if p.is_dir()} if folder.exists() else set()

    def _record_of(self, number: int) -> Path | None:
        trial = self.study.get_trials(deepcopy=False)[number]
        if trial.user_attrs.get("run_path"):
            return Path(trial.user_attrs["run_path"])
        if number in self._records:
            return self._records[number]
        for path in self._run_dirs():
            if (read_json(path / "run.json", {}) or {}).get("trial") == number:
                return path
        return None

    def _row(self, trial: Any) -> dict[str, Any]:
        record = self._record_of(trial.number)
        info = record_store.load_run(record) if record is not None and record.exists() else {}
        result = info.get("result") or trial.user_attrs.get("result") or {}
        duration = trial.duration.total_seconds() if trial.duration else info.get("duration")
        return {
            "number": trial.number,
            "state": trial.state.name,
            "source": "manual" if trial.user_attrs.get("manual") else "sampled",
            "params": {**(info.get("params") or {}), **trial.params},
            "searched": dict(trial.params),
            "objective": trial.values[0] if trial.values else None,
            "result": result,
            "test": {k: v for k, v in result.items() if k.startswith("test/")},
            "duration": duration,
            "fail_reason": trial.user_attrs.get("fail_reason", ""),
            "run_id": info.get("id"),
            "run_path": str(record) if record is not None else None,
        }

    def rows(self) -> list[dict[str, Any]]:
        """One dict per trial of the study, in trial order (see the runs table)."""
        return [self._row(t) for t in self.study.get_trials(deepcopy=False)]

    def refresh(self) -> None:
        """Redraw the runs table, the compare list and the study plots from the storage."""
        rows = self.rows()
        self._draw_table(rows)
        self._rows = {r["number"]: r for r in rows}
        selected = set(self.compare.value)
        options = [
            (f"#{r['number']} {r['state'].lower()} {r['source']} {_fmt(r['objective'])}", n)
            for n, r in self._rows.items()
            if r["run_path"]
        ]
        self.compare.options = options
        self.compare.value = tuple(n for _, n in options if n in selected)
        self._draw_study_plots(rows)

    def _key_params(self, rows: list[dict[str, Any]]) -> list[str]:
        """The dimensions, then parameters some run changed from the notebook's default."""
        names = [d.name for d in self.dims]
        defaults = self.signature.defaults()
        for param in self.signature.parameters:
            if param.name in names or param.name == "seed":
                continue
            default = defaults[param.name]
            if any(r["params"].get(param.name, default) != default for r in rows):
                names.append(param.name)
        return names

    def _draw_table(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            self.table.value = "<i>no trials yet: click Run</i>"
            return
        rows = _sorted(rows, self.sort_by.value, self.study.directions[0].name == "MINIMIZE")
        keys = self._key_params(rows)
        dims = {d.name for d in self.dims}
        tests = sorted({k for r in rows for k in r["test"]})
        head = ["#", "state", "source", *keys, self.cfg.objectives[0], *tests, "duration"]
        body = []
        for r in rows:
            cells = [
                r["number"],
                r["state"].lower(),
                r["source"],
                # An inactive dimension (channels of an mlp) did not shape the run.
                *[(r["searched"] if k in dims else r["params"]).get(k, "") for k in keys],
                r["objective"],
                *[r["test"].get(k) for k in tests],
                f"{r['duration']:.1f} s" if r["duration"] is not None else "",
            ]
            title = html.escape(r["fail_reason"], quote=True)
            body.append(
                f'<tr title="{title}">'
                + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in cells)
                + "</tr>"
            )
        header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        self.table.value = (
            '<table class="mlkit-runs" style="border-collapse:collapse">'
            f"<thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        )

    def _draw_compare(self) -> None:
        chosen = list(self.compare.value)
        if not chosen:
            self.compare_plot.value = b""
            return
        histories = {f"#{n}": record_store.history(self._rows[n]["run_path"]) for n in chosen}
        self.compare_plot.value = curves_png(histories)

    def _draw_study_plots(self, rows: list[dict[str, Any]]) -> None:
        from optuna.visualization import matplotlib as ovm

        complete = sum(r["state"] == "COMPLETE" for r in rows)
        plots = {
            "history": (ovm.plot_optimization_history, 1),
            "importances": (ovm.plot_param_importances, 2),
            "parallel coordinates": (ovm.plot_parallel_coordinate, 2),
        }
        children = []
        for title, (plot, needed) in plots.items():
            if len(self.study.directions) > 1:
                children.append(widgets.HTML("<i>plots need a single objective</i>"))
            elif complete < needed:
                children.append(
                    widgets.HTML(f"<i>{title} needs {needed} completed trials, have {complete}</i>")
                )
            else:
                try:
                    children.append(widgets.Image(value=_optuna_png(plot, self.study)))
                except Exception as exc:  # too few distinct values, a constant parameter...
                    children.append(widgets.HTML(f"<i>{title}: {html.escape(str(exc))}</i>"))
        self.study_plots.children = children
        self.study_plots.titles = tuple(plots)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _sorted(rows: list[dict[str, Any]], key: str, minimize: bool) -> list[dict[str, Any]]:
    """Rows sorted by a column, empty cells last; the objective best first."""

    def value(row: dict[str, Any]) -> Any:
        if key == "#":
            return row["number"]
        if key == "objective":
            v = row["objective"]
            return v if v is None or minimize else -v
        if key == "duration":
            return row["duration"]
        return row["params"].get(key)

    present = [r for r in rows if value(r) is not None]
    missing = [r for r in rows if value(r) is None]
    try:
        present.sort(key=value)
    except TypeError:  # mixed types in one column
        present.sort(key=lambda r: str(value(r)))
    return present + missing
