"""What the bundled notebooks show in JupyterLab: screenshots to look at, and their checks.

The committed outputs of the guided notebooks, and the sweep report run untouched without a
study and on a small study (see ``tests/browser.py`` for where screenshots go).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser import Lab, failure_shot, notebook_shot, open_notebook, run_all
from tests.helpers import run_cli

# A real JupyterLab and a real browser: the slow tier.
pytestmark = pytest.mark.slow


# The committed outputs of the guided notebooks as JupyterLab shows them: screenshots to
# look at (experiments/test-artifacts/browser/), every image drawn.
@pytest.mark.parametrize("notebook", ["notebooks/quickstart.ipynb", "notebooks/explore.ipynb"])
def test_committed_outputs_screenshot(page: Any, lab: Lab, notebook: str) -> None:
    try:
        open_notebook(page, lab, notebook)
        path = notebook_shot(page, Path(notebook).stem)
    except BaseException:
        failure_shot(page, Path(notebook).stem, lab)
        raise
    assert path.stat().st_size > 10_000


# The sweep report run untouched without a study says how to make one.
def test_sweep_report_without_a_study(page: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    runs = set(lab.experiments.glob("*/runs/*"))  # other tests of this lab made some
    try:
        open_notebook(page, lab, "templates/sweep_report.ipynb")
        run_all(page)
        notebook_shot(page, "sweep_report")
        outputs = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output")
        expect(outputs.filter(has_text="mlkit sweep templates/classify.ipynb")).not_to_have_count(0)
        errors = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) [data-mime-type*=error]")
        expect(errors).to_have_count(0)
    except BaseException:
        failure_shot(page, "sweep_report", lab)
        raise
    assert set(lab.experiments.glob("*/runs/*")) == runs  # a report, not a run


# The report on a small study (4 one-epoch trials of the classify template, no warm-up), as a person
# runs it in JupyterLab: every cell ran without an error, the summary names the study and
# its trials, the trials table scrolls in its own box. The screenshot is to look at.
def test_sweep_report_on_a_study(page: Any, scratch_lab: Lab) -> None:
    from playwright.sync_api import expect

    templates = scratch_lab.root / "templates"
    made = run_cli(
        *("sweep", "run", str(templates / "classify.ipynb"), "--space"),
        *(str(templates / "classify_space.yaml"), "--study", "classify-sweep"),
        *("--trials", "4", "-p", "epochs", "1", "-p", "warmup_epochs", "0", "-q"),
        *("--tracking", "disabled"),
        env={"MLKIT_EXPERIMENTS": str(scratch_lab.experiments)},
        timeout=600,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    panel = ".jp-NotebookPanel:not(.lm-mod-hidden)"
    try:
        open_notebook(page, scratch_lab, "templates/sweep_report.ipynb")
        run_all(page)
        notebook_shot(page, "sweep_report-study")
        outputs = page.locator(f"{panel} .jp-OutputArea-output")
        expect(outputs.filter(has_text="study      classify-sweep")).to_have_count(1)
        expect(outputs.filter(has_text=re.compile(r"trials\s+4: 4 complete"))).to_have_count(1)
        expect(page.locator(f"{panel} [data-mime-type*=error]")).to_have_count(0)
        expect(page.locator(f"{panel} [data-mime-type*=stderr]")).to_have_count(0)
        # Every table of trials sits in a box that scrolls sideways, not past the page.
        boxes = page.locator(f"{panel} .jp-OutputArea-output div:has(> table)")
        expect(boxes).not_to_have_count(0)
        for box in boxes.all():
            assert box.evaluate("(d) => getComputedStyle(d).overflowX") == "auto"
            assert box.evaluate("(d) => d.clientWidth <= d.parentElement.clientWidth")
    except BaseException:
        failure_shot(page, "sweep_report-study", scratch_lab)
        raise


# The page fixture needs no JupyterLab: a plain HTML file opens in it.
def test_page_opens_a_plain_file(page: Any, tmp_path: Path) -> None:
    html = tmp_path / "plain.html"
    html.write_text("<!doctype html><title>plain</title><p id='hello'>hello</p>")
    page.goto(html.as_uri())
    assert page.locator("#hello").inner_text() == "hello"
