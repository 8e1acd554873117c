"""Sweep reports: what a study found, as an executed notebook and an HTML page.

The report is ``templates/sweep_report.ipynb`` executed like any other notebook, so
it can be opened, changed and re-run in JupyterLab; the HTML page is that notebook
converted, readable without Jupyter and without a network. The page shows the
outputs only: the code is in the notebook beside it.

The plots are Optuna's plotly figures, each an HTML output that draws itself: plotly.js
rides inline in the first one only (``figure_html``), so JupyterLab, the page and a
papermill run all show the same working figures. Hovering a trial's point shows its
record id, values and parameters (``trial_hover``).

A storage URL that holds a password reaches the kernel through the environment
(``MLKIT_REPORT_STORAGE``), never as a parameter: papermill writes parameters into
the executed notebook, and the page is made from that notebook.
"""

from __future__ import annotations

import html
import json
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlkit import storage as storages
from mlkit._contract import TEMPLATES_DIR
from mlkit._io import redact, write_text
from mlkit.errors import NotFoundError
from mlkit.record_store import check_experiment_name, experiments_root
from mlkit.run import notebook as nbexec

ENV_STORAGE = "MLKIT_REPORT_STORAGE"
TEMPLATE = "sweep_report.ipynb"
# No plotly logo linking to plotly.com: the page makes no request, not even on a click.
PLOTLY_CONFIG = {"displaylogo": False}
# nbconvert's lab page without the scripts it fetches from CDNs (require.js, MathJax): the
# report has no math, and its plots need only the plotly.js inlined in the first figure.
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
"""


def template_path() -> Path:
    """The report notebook shipped in ``templates/`` beside the package."""
    return TEMPLATES_DIR / TEMPLATE


def has_password(url: str) -> bool:
    """Whether the storage URL carries a secret (``user:pw@host`` or ``?password=``)."""
    return redact(url) != url  # redact returns a URL with nothing to hide unchanged


def storage_inputs(url: str) -> tuple[dict[str, str], dict[str, str]]:
    """How the notebook gets the storage URL: (parameters, environment variables).

    A URL with a password goes in the environment only, so it is never written into
    the executed notebook or the page made from it.
    """
    if has_password(url):
        return {}, {ENV_STORAGE: url}
    return {"storage": url}, {}


def sweep_report(
    study: str,
    *,
    storage: str | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Execute the sweep report for ``study`` and convert it to HTML.

    Args:
        study: the study name.
        storage: storage URL; default ``experiments/<study>/study.journal``.
        out_dir: where ``sweep_report.ipynb`` and ``sweep_report.html`` go; default
            ``report/`` beside a journal file, else ``experiments/<study>/report``.
        progress: show papermill's progress bar.

    Returns:
        ``{"status", "reason", "notebook", "html"}``; status is ``completed`` or
        ``failed`` (the reason says which cell raised what). A failed report still
        gets its notebook and page, which show the error.

    Raises:
        NotFoundError: before a kernel starts, when the study or its storage is not found.
    """

    url = _absolute(storages.find_storage(study, storage=storage))
    journal = storages._journal_path(url)
    storages.load_study(url, study)  # a missing study fails here, before anything is written
    if out_dir is None:
        out_dir = (
            journal.parent / "report"
            if journal is not None
            else experiments_root() / check_experiment_name(study) / "report"
        )
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / "sweep_report.ipynb"
    page = out_dir / "sweep_report.html"

    parameters, secret_env = storage_inputs(url)
    env = {k: v for k, v in os.environ.items() if k != ENV_STORAGE}
    env.update(secret_env)
    outcome = nbexec.execute(
        template_path(),
        output,
        {"study": study, **parameters},
        env=env,
        # Links to trial records are relative to the report's folder.
        cwd=out_dir,
        progress=progress,
        kernel_log=out_dir / "kernel.log",
    )
    if output.exists():
        write_text(page, to_html(output))
    return {
        "status": outcome.status,
        "reason": outcome.reason,
        "notebook": str(output),
        "html": str(page),
    }


def _absolute(url: str) -> str:
    """The URL with a local file made absolute: the kernel runs in the report folder.

    A local file that does not exist is an error here; opening it would create it.
    """
    journal = storages._journal_path(url)
    if journal is not None:
        path, prefix, query = journal, "", ""
    elif url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        rest, _, query = url[len("sqlite:///") :].partition("?")
        path, prefix, query = Path(rest), "sqlite:///", f"?{query}" if query else ""
    else:
        return url
    path = path.expanduser().resolve()
    if not path.is_file():
        raise NotFoundError(
            f"Storage file {path} does not exist. Pass --storage with the path or URL that "
            "mlkit sweep used."
        )
    return f"{prefix}{path}{query}"


def figure_html(figure: Any, *, plotlyjs: bool) -> str:
    """A plotly figure as an HTML fragment that draws itself where it is shown.

    Args:
        figure: a ``plotly.graph_objects.Figure``.
        plotlyjs: inline plotly.js (4.8 MB) in this fragment; the report's first figure
            does, the later ones use the ``Plotly`` it defined.
    """
    # Optuna sizes some plots for one screen each (the slice plot: 300 px a parameter);
    # the page's width suits every plot, and a plot's height stays Optuna's or plotly's.
    figure.update_layout(width=None, autosize=True)
    # One label a decade on log axes: plotly's 2..9 between them crowd a narrow panel.
    figure.for_each_xaxis(lambda axis: axis.update(dtick=1) if axis.type == "log" else None)
    figure.for_each_yaxis(lambda axis: axis.update(dtick=1) if axis.type == "log" else None)
    height = f"{figure.layout.height or 450}px"
    return figure.to_html(
        full_html=False,
        include_plotlyjs=plotlyjs,
        config=PLOTLY_CONFIG,
        default_height=height,
    )


def trial_hover(figure: Any, trials: Sequence[Any], objectives: Sequence[str]) -> Any:
    """``figure`` with each trial's point hovering its number, record id, values and params.

    Applies to Optuna's plots of trials as points (history, slice, Pareto front); other
    traces keep their hover. Optuna's own hover, where it has one, is every user attribute
    as JSON (heartbeats, the whole result): this one is what a reader compares.
    """
    by_number = {t.number: t for t in trials}
    points, others = [], []
    for trace in figure.data:
        which = _trial_numbers(trace)
        if which is None or not all(n in by_number for n in which):
            others.append(trace)
            continue
        trace.customdata = [hover_text(by_number[n], objectives) for n in which]
        trace.hovertemplate = "%{customdata}<extra></extra>"
        trace.text = None
        points.append(trace)
    # Drawn last, the points lie on top of the history's best-value line, which passes
    # through every improving trial: the pointer over such a point then hovers the trial.
    figure.data = [*others, *points]
    return figure


def hover_text(trial: Any, objectives: Sequence[str]) -> str:
    """One trial as plotly hover text: ``trial 3 · RUN_ID``, then its values and params."""
    e = html.escape
    record = trial.user_attrs.get("run_id")
    lines = [f"<b>trial {trial.number}</b>" + (f" · {e(str(record))}" if record else "")]
    values = trial.values or []
    lines += [f"{e(name)} {_short(v)}" for name, v in zip(objectives, values, strict=False)]
    lines += [f"{e(name)} {e(_short(v))}" for name, v in trial.params.items()]
    return "<br>".join(lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _trial_numbers(trace: Any) -> list[int] | None:
    """Which trial each point of an Optuna plot's trace is; None for a trace of no trials.

    The Pareto front's hover text is each trial as JSON, the slice plot colours its points
    by trial number, the history plot puts trial numbers on x.
    """
    if trace.type != "scatter" or trace.mode != "markers" or trace.x is None:
        return None
    if trace.text is not None and not isinstance(trace.text, str):
        try:
            return [int(json.loads(t.replace("<br>", "\n"))["number"]) for t in trace.text]
        except (AttributeError, TypeError, ValueError, KeyError):
            return None
    color = trace.marker.color
    if _integers(color) and len(color) == len(trace.x):
        return [int(n) for n in color]
    return [int(n) for n in trace.x] if _integers(trace.x) else None


def _integers(values: Any) -> bool:
    return (
        isinstance(values, Sequence)
        and not isinstance(values, str)
        and bool(values)
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values)
    )


def to_html(notebook: Path) -> str:
    """The executed notebook as one self-contained HTML page, outputs only.

    Images are embedded as data URIs and plotly.js is inline in the first figure: the
    page loads nothing from the network, neither when made nor when viewed.
    """
    import logging  # nbconvert takes seconds to import: only making a page needs it

    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.get("outputs"):
            # scrapbook's scraps are data for read_result, with nothing to show.
            cell.outputs = [o for o in cell.outputs if not _scrap_only(o)]
    # nbconvert warns that plots have no alt text: true, and nothing a user can fix.
    log = logging.getLogger("mlkit.report.nbconvert")
    log.setLevel(logging.ERROR)
    exporter = HTMLExporter(
        embed_images=True,
        exclude_input=True,
        log=log,
        extra_loaders=[DictLoader({"offline.html.j2": OFFLINE_TEMPLATE})],
        template_file="offline.html.j2",
    )
    body, _ = exporter.from_notebook_node(nb)
    return body


def _scrap_only(output: dict[str, Any]) -> bool:
    data = output.get("data") or {}
    return bool(data) and all(k.startswith("application/scrapbook") for k in data)
