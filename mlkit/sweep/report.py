"""Sweep reports: what a study found, as an executed notebook and an HTML page.

The report is ``templates/sweep_report.ipynb`` executed like any other notebook, so
it can be opened, changed and re-run in JupyterLab; the HTML page is that notebook
converted with its images embedded, readable without Jupyter. The page shows the
outputs only: the code is in the notebook beside it.

A storage URL that holds a password reaches the kernel through the environment
(``MLKIT_REPORT_STORAGE``), never as a parameter: papermill writes parameters into
the executed notebook, and the page is made from that notebook.
"""

from __future__ import annotations

import os
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


def to_html(notebook: Path) -> str:
    """The executed notebook as one self-contained HTML page, outputs only.

    Images are embedded as data URIs. Conversion reads nothing from the network; the
    page itself refers to MathJax and require.js CDNs, used only when viewed.
    """
    import logging

    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.get("outputs"):
            # scrapbook's scraps are data for read_result, with nothing to show.
            cell.outputs = [o for o in cell.outputs if not _scrap_only(o)]
    # nbconvert warns that plots have no alt text: true, and nothing a user can fix.
    log = logging.getLogger("mlkit.report.nbconvert")
    log.setLevel(logging.ERROR)
    exporter = HTMLExporter(embed_images=True, exclude_input=True, log=log)
    body, _ = exporter.from_notebook_node(nb)
    return body


def _scrap_only(output: dict[str, Any]) -> bool:
    data = output.get("data") or {}
    return bool(data) and all(k.startswith("application/scrapbook") for k in data)
