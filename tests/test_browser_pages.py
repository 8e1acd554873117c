"""The HTML pages mlkit writes, opened as files in a real browser: screenshots to look at.

The sweep report page (``mlkit sweep report``) and the comparison page (``mlkit diff
--html``) must work offline, straight from disk: no server, no network. Screenshots go to
experiments/test-artifacts/browser/ (see ``tests/browser.py``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser import artifacts_folder
from tests.helpers import run_cli

# Real runs and a real browser: the slow tier.
pytestmark = pytest.mark.slow

TINY = ("-p", "warmup_epochs", "0", "-q")
RECORD_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")
# Every finished image on the page has pixels.
IMAGES_LOADED = "(imgs) => imgs.map((img) => img.complete && img.naturalWidth > 0)"
# The elements that reach past the window's right edge (the page would scroll sideways).
WIDER_THAN_WINDOW = """() => [...document.querySelectorAll('body *')]
    .filter((e) => e.getBoundingClientRect().right > window.innerWidth)
    .map((e) => `${e.tagName}#${e.id}.${e.className}`)"""


def offline(page: Any) -> list[str]:
    """Refuse every request that leaves the disk; returns the list of those refused."""
    refused: list[str] = []

    def route(request: Any) -> None:
        if request.request.url.startswith(("file:", "data:")):
            request.continue_()
        else:
            refused.append(request.request.url)
            request.abort()

    page.route("**/*", route)
    return refused


# The report of a small study (4 one-epoch trials of the classify template): its plots draw
# offline, hovering a trial in the history plot shows its record id and parameters, and a
# record id in the trials table stays on one line.
def test_sweep_report_page_hover(page: Any, exp_root: Path) -> None:
    made = run_cli(
        *("sweep", "run", "templates/classify.ipynb", "--space"),
        *("templates/classify_space.yaml", "--study", "classify-sweep", "--trials", "4"),
        *("-p", "epochs", "1", *TINY, "--tracking", "disabled"),
        timeout=600,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    reported = run_cli("sweep", "report", "classify-sweep", "-q")
    assert reported.returncode == 0, reported.stdout + reported.stderr
    html = exp_root / "classify-sweep" / "report" / "sweep_report.html"
    records = {p.name for p in (exp_root / "classify-sweep" / "runs").iterdir()}

    refused = offline(page)
    page.goto(html.as_uri())
    plots = page.locator(".js-plotly-plot")
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 5")
    history = plots.first
    assert "Optimization History" in history.inner_text()
    # plotly's drag layer lies over the points and takes the pointer: hover through it.
    history.locator(".scatterlayer .point").first.hover(force=True)
    label = page.locator(".hoverlayer .hovertext").first
    label.wait_for()
    text = label.text_content() or ""
    assert "lr" in text and "model" in text, text
    shown = RECORD_ID.search(text)
    assert shown and shown.group() in records, text
    path = artifacts_folder() / "sweep_report-hover.png"
    page.screenshot(path=str(path), full_page=True)

    links = page.locator("table a[href$='output.ipynb']")
    assert links.count() == 4
    for link in links.all():
        assert link.evaluate("(a) => a.getClientRects().length") == 1, link.inner_text()
    assert refused == []


def _run(epochs: int) -> str:
    """A tiny real run of the classify template in the test's experiments; returns its id."""
    proc = run_cli(
        *("run", "templates/classify.ipynb", "-p", "epochs", str(epochs)),
        *("-p", "hidden", "16", *TINY),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("run "))


# The page of `mlkit diff --html` for runs of 1 and 2 epochs: both runs' curves drawn in
# #curves, and the logged figures paired side by side with their images loaded, offline.
def test_diff_page_curves_and_figures(page: Any, exp_root: Path, tmp_path: Path) -> None:
    a, b = _run(1), _run(2)
    html = tmp_path / "diff.html"
    proc = run_cli("diff", a, b, "--html", str(html))
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the runs differ

    refused = offline(page)
    page.goto(html.as_uri())
    page.locator("#curves .scatterlayer .trace").first.wait_for()
    names = page.evaluate("() => document.getElementById('curves').data.map((t) => t.name)")
    assert {f"A {a}", f"B {b}"} <= set(names), names
    drawn = page.locator("#curves .scatterlayer .trace")
    assert drawn.count() == len(names)  # every trace in the data has its SVG
    pairs = page.locator(".figure-pair")
    assert pairs.count() >= 1
    loaded = [pair.locator("img").evaluate_all(IMAGES_LOADED) for pair in pairs.all()]
    assert [True, True] in loaded, loaded
    # A pair of wide figures shrinks into the window: the page never scrolls sideways.
    wider = page.evaluate(WIDER_THAN_WINDOW)
    assert wider == [], wider
    path = artifacts_folder() / "diff-page.png"
    page.screenshot(path=str(path), full_page=True)
    assert "epochs A / B" in page.locator("#section-curves").inner_text()
    assert refused == []
