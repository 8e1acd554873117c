"""The explorer's widgets: one control per parameter, the buttons, the status, the plots.

The only module of mlkit that imports ipywidgets, so ``import mlkit`` and the sweep
machinery never pay for it. ``Explorer`` lays the widgets out and turns clicks into jobs
for the worker thread (``jobs``); every trial is asked and run by the sweep driver.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import html
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import traitlets

from mlkit import record_store
from mlkit import storage as storages
from mlkit._contract import PARAMS_FILE
from mlkit._io import read_json, write_text
from mlkit.errors import MlkitError, ParameterError
from mlkit.explore import domains, jobs, plots, table
from mlkit.explore.live import LiveCurves
from mlkit.run import params as _params
from mlkit.sweep import config, driver
from mlkit.sweep import space as _space

CSS = {
    "run": "mlkit-run",
    "cancel": "mlkit-cancel",
    "status": "mlkit-status",
    "table": "mlkit-table",
    "live_plot": "mlkit-live-plot",
}

# Kept importable under its earlier name; raised as ParameterError.
ExploreError = ParameterError


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
            value=domains.clamp(default, dim.low, dim.high),
            base=10,
            min=low,
            max=high,
            step=(high - low) / 100,
            readout_format=".2e",
            **common,
        )
    if dim is not None and dim.kind in ("float", "int"):
        low, high, step = dim.low, dim.high, dim.step
    elif bounds := domains.rule_range(param):
        low, high, step = bounds
    else:
        return _unbounded_control(param, common)
    if (dim is not None and dim.kind == "int") or param.type == "int":
        return widgets.IntSlider(
            value=int(domains.clamp(default, low, high)),
            min=int(low),
            max=int(high),
            step=int(step or 1),
            **common,
        )
    return widgets.FloatSlider(
        value=domains.clamp(default, low, high),
        min=low,
        max=high,
        step=step or (high - low) / 100,
        readout_format=".3g",
        **common,
    )


def _unbounded_control(param: _params.Parameter, common: dict[str, Any]) -> widgets.Widget:
    """A control for a parameter with no range: a checkbox, a dropdown or a text field."""
    default = param.default
    if param.type == "bool":
        return widgets.Checkbox(value=bool(default), indent=False, **common)
    if param.rule and param.rule.choices:
        options = domains.choices(param, param.rule)
        value = default if default in options else options[0]
        return widgets.Dropdown(options=options, value=value, **common)
    if param.type == "int":
        return widgets.IntText(value=int(default or 0), **common)
    if param.type == "float":
        return widgets.FloatText(value=float(default or 0.0), **common)
    if param.type == "str":
        return widgets.Text(value=str(default or ""), **common)
    return widgets.Text(value=json.dumps(default), **common)  # list, dict, untyped: YAML/JSON


class Explorer:
    """Widgets to run, compare and sweep one notebook; every run is a trial of one study.

    Args:
        notebook: the notebook to tune (one ``parameters`` cell).
        space: search-space YAML; without one, a space is derived from the parameters'
            rules (see ``domains.derived_space``) and "Sweep N more" is off.
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
        self.space_path = Path(space) if space is not None else self._derive_space(root / name)
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
        seed = config.sampler_seed(self.cfg, self.study)  # a resumed study draws anew
        self.study.sampler = config.make_sampler(
            self.cfg.sampler, seed, self.dims, len(self.cfg.objectives)
        )
        self.study.pruner = storages.make_pruner(self.cfg.pruner)
        self._job: jobs.Job | None = None
        self._pending: list[concurrent.futures.Future] = []
        self._rows: dict[int, dict[str, Any]] = {}
        self._build()
        self.live = LiveCurves(self._show_live)
        self.refresh()

    def _derive_space(self, folder: Path) -> Path:
        """Write the space made from the parameters' rules (rewritten only when it changes)."""
        import yaml

        path = folder / "explore_space.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(domains.derived_space(self.signature), sort_keys=False)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            write_text(path, text)
        return path

    # -- building the UI -------------------------------------------------------------
    def _build(self) -> None:
        self._build_buttons()
        self.status = widgets.HTML(value="ready")
        self.live_plot = widgets.Image(format="png", layout={"width": "720px"})
        self.live_hint = widgets.HTML("<i>The learning curves of a run appear here.</i>")
        _show_picture(self.live_plot, self.live_hint, b"")
        self.status.add_class(CSS["status"])
        self.live_plot.add_class(CSS["live_plot"])
        self._build_results()
        title = f"<b>{html.escape(str(self.notebook))}</b> &middot; study {self.cfg.study}"
        buttons = [self.run_button, self.cancel_button, self.best_button]
        buttons += [self.sweep_count, self.sweep_button, self.progress]
        self.widget = widgets.VBox(
            [
                widgets.HTML(title),
                widgets.VBox(self._build_controls()),
                widgets.HBox(buttons),
                self.status,
                self.live_hint,
                self.live_plot,
                widgets.Accordion(
                    children=[
                        widgets.VBox([self.sort_by, self.table]),
                        widgets.VBox([self.compare, self.compare_hint, self.compare_plot]),
                        self.study_plots,
                    ],
                    titles=("Runs", "Compare learning curves", "Study plots"),
                    selected_index=0,
                ),
            ]
        )
        self.widget.add_class("mlkit-explorer")

    def _build_controls(self) -> list[widgets.Widget]:
        """One row per parameter: its control and its help text."""
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
        return rows

    def _build_buttons(self) -> None:
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True)
        self.best_button = widgets.Button(description="Use best", icon="trophy")
        self.sweep_count = widgets.IntText(value=5, description="N", layout={"width": "120px"})
        self.sweep_count.style.description_width = "20px"
        # As wide as its label, never shrunk by the row (the hidden progress bar still takes
        # room): a button squeezed to fit cuts "Sweep N more" to "Sweep N ...".
        self.sweep_button = widgets.Button(
            description="Sweep N more", icon="forward", layout={"width": "auto", "flex": "0 0 auto"}
        )
        self.sweep_button.disabled = not self.sweepable
        if not self.sweepable:
            self.sweep_button.tooltip = "pass space='space.yaml' to sweep"
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="sweep")
        self.progress.layout.visibility = "hidden"
        self.run_button.add_class(CSS["run"])
        self.cancel_button.add_class(CSS["cancel"])
        self.best_button.add_class("mlkit-use-best")
        self.sweep_button.add_class("mlkit-sweep")
        self.sweep_count.add_class("mlkit-sweep-n")
        self.progress.add_class("mlkit-progress")
        self.run_button.on_click(lambda _: self._click(self.run))
        self.cancel_button.on_click(lambda _: self.cancel())
        self.best_button.on_click(lambda _: self._click(self.use_best))
        self.sweep_button.on_click(lambda _: self._click(self.sweep_more, self.sweep_count.value))

    def _build_results(self) -> None:
        """The runs table with its sort order, the compare list, the study plots."""
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
        self.compare_hint = widgets.HTML("<i>Pick runs to overlay their learning curves.</i>")
        _show_picture(self.compare_plot, self.compare_hint, b"")
        self.study_plots = widgets.Tab()
        self.study_plots.add_class("mlkit-study-plots")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """The live widget in JupyterLab; one line instead of its repr where no widget
        can be drawn (a saved notebook opened later, GitHub, an HTML page)."""
        bundle = dict(self.widget._repr_mimebundle_(**kwargs))
        text = f"Explorer of {self.notebook.name}: run this cell in JupyterLab to get its controls."
        bundle["text/plain"] = text
        bundle["text/html"] = f"<p><i>{html.escape(text)}</i></p>"
        return bundle

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

    def _show_live(self, png: bytes) -> None:
        _show_picture(self.live_plot, self.live_hint, png)

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
        job = jobs.Job("run")
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
        job = jobs.Job("sweep")
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
        job.cancel()  # the driver interrupts the trial and tells it FAIL with the reason
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
            recorded = read_json(Path(run_path) / PARAMS_FILE, {}) or {}
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
    def _submit(
        self, fn: Callable[..., Any], job: jobs.Job, *args: Any
    ) -> concurrent.futures.Future:
        def task() -> Any:
            self._job = job
            self._set_busy(True)
            try:
                return fn(job, *args)
            finally:
                job.done.set()
                self._set_busy(False)

        future = jobs.submit(task)
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

    def _run_manual(
        self, job: jobs.Job, in_space: dict[str, Any], fixed: dict[str, Any]
    ) -> dict[str, Any]:
        # Asked under the sweep's lock: a `mlkit sweep` on the same study cannot take the point.
        manual = {"manual": True}
        trial = driver.ask_trial(self.cfg, self.study, enqueue=in_space, user_attrs=manual)
        row = self._run_one(job, trial, fixed)
        self.refresh()
        return row

    def _run_sweep(self, job: jobs.Job, n: int, fixed: dict[str, Any]) -> list[dict[str, Any]]:
        rows = []
        for index in range(n):
            if job.cancelled():
                break
            trial = driver.ask_trial(self.cfg, self.study)
            rows.append(self._run_one(job, trial, fixed, f"sweep {index + 1}/{n}: "))
            self.progress.value = index + 1
            self.refresh()
        self.progress.layout.visibility = "hidden"
        return rows

    def _run_one(
        self, job: jobs.Job, trial: Any, fixed: dict[str, Any], prefix: str = ""
    ) -> dict[str, Any]:
        """Run one asked trial through the driver; its curves are drawn as epochs land."""
        source = "manual" if trial.user_attrs.get("manual") else "sampled"
        self._say(f"{prefix}running trial #{trial.number} ({source})...")
        self.live.begin(trial.number)
        try:
            driver.run_trial(
                dataclasses.replace(self.cfg, fixed=fixed),
                self.study,
                trial,
                self.dims,
                on_start=self.live.on_start,
                cancelled=job.cancelled,
            )
        finally:
            self.live.end()
        row = table.trial_row(self.study.get_trials(deepcopy=False)[trial.number])
        level = "ok" if row["state"] == "COMPLETE" else "error"
        self._say(prefix + table.outcome_text(row, self.cfg.objectives[0]), level)
        return row

    # -- records and trials ----------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """One dict per trial of the study, in trial order (see the runs table)."""
        return [table.trial_row(t) for t in self.study.get_trials(deepcopy=False)]

    def refresh(self) -> None:
        """Redraw the runs table, the compare list and the study plots from the storage."""
        rows = self.rows()
        self._draw_table(rows)
        self._rows = {r["number"]: r for r in rows}
        selected = set(self.compare.value)
        options = table.compare_options(rows)
        self.compare.options = options
        self.compare.value = tuple(n for _, n in options if n in selected)
        self._draw_study_plots(rows)

    def _draw_table(self, rows: list[dict[str, Any]]) -> None:
        self.table.value = table.table_html(
            rows,
            table.key_params(rows, self.dims, self.signature),
            {d.name for d in self.dims},
            metric=self.cfg.objectives[0],
            sort_by=self.sort_by.value,
            minimize=self.study.directions[0].name == "MINIMIZE",
        )

    def _draw_compare(self) -> None:
        chosen = list(self.compare.value)
        if not chosen:
            _show_picture(self.compare_plot, self.compare_hint, b"")
            return
        histories = {f"#{n}": record_store.history(self._rows[n]["run_path"]) for n in chosen}
        _show_picture(self.compare_plot, self.compare_hint, plots.curves_png(histories))

    def _draw_study_plots(self, rows: list[dict[str, Any]]) -> None:
        complete = sum(r["state"] == "COMPLETE" for r in rows)
        drawn = plots.study_plots(self.study, complete)
        children: list[widgets.Widget] = []
        for picture in drawn.values():
            if isinstance(picture, bytes):
                children.append(widgets.Image(value=picture))
            else:  # why it is not drawn
                children.append(widgets.HTML(f"<i>{html.escape(picture)}</i>"))
        self.study_plots.children = children
        self.study_plots.titles = tuple(drawn)


def _show_picture(image: widgets.Image, hint: widgets.HTML, png: bytes) -> None:
    """Show ``png`` in ``image``, or the hint while there is none.

    An Image widget without a picture draws the browser's broken-image icon.
    """
    image.value = png
    image.layout.display = "" if png else "none"
    hint.layout.display = "none" if png else ""
