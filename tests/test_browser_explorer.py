"""The widget explorer in a real browser: JupyterLab driven by Playwright in headless Chromium.

Screenshots of every stage (01-notebook-open.png ... 06-second-run-cancelled.png) go to the
artifacts folder (see ``tests/browser.py``); the test prints where.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser import RUN_S, START_S, Lab, artifacts_folder
from tests.helpers import ROOT

# A real JupyterLab and a real browser: the slow tier.
pytestmark = pytest.mark.slow
NOTEBOOK = "notebooks/explore.ipynb"


@pytest.fixture
def artifacts() -> Path:
    folder = artifacts_folder()
    for old in folder.glob("[0-9][0-9]-*.png"):  # this test's screenshots of a former run
        old.unlink()
    return folder


# --- reading the page ------------------------------------------------------------------

# Installed before a Run: every image the live plot shows, with the status at that moment.
WATCH_PLOT = """() => {
    const img = document.querySelector('img.mlkit-live-plot');
    const status = document.querySelector('.mlkit-status');
    window.__mlkitPlots = [];
    if (window.__mlkitPlotObserver) window.__mlkitPlotObserver.disconnect();
    window.__mlkitPlotObserver = new MutationObserver(() => {
        window.__mlkitPlots.push({src: img.src, status: status.textContent});
    });
    window.__mlkitPlotObserver.observe(img, {attributes: true, attributeFilter: ['src']});
}"""

PLOTS_DRAWN = """(n) => {
    const img = document.querySelector('img.mlkit-live-plot');
    return window.__mlkitPlots.length >= n && img.complete && img.naturalWidth > 300;
}"""

# Installed before the click whose handling is timed: the time of the click (in the capture
# phase, before any handler) and of the first status change after it.
WATCH_CLICK = """(selector) => {
    const status = document.querySelector('.mlkit-status');
    const cancel = document.querySelector('button.mlkit-cancel');
    const t = window.__mlkitClick = {clicked: null, handled: null, busy: null, status: null};
    document.addEventListener('click', (event) => {
        if (t.clicked === null && event.target.closest(selector)) {
            t.clicked = performance.now();
            t.busy = !cancel.disabled;  // Cancel is enabled only while a run is in flight
            const before = status.textContent;
            const observer = new MutationObserver(() => {
                if (status.textContent !== before) {
                    t.handled = performance.now();
                    t.status = status.textContent;
                    observer.disconnect();
                }
            });
            observer.observe(status, {childList: true, subtree: true, characterData: true});
        }
    }, {capture: true});
}"""

RUNS_TABLE = """() => {
    const table = document.querySelector('.mlkit-table table');
    if (!table) return [];
    const head = [...table.querySelectorAll('thead th')].map((th) => th.textContent);
    return [...table.querySelectorAll('tbody tr')].map((tr) => {
        const row = {title: tr.title};
        [...tr.querySelectorAll('td')].forEach((td, i) => { row[head[i]] = td.textContent; });
        return row;
    });
}"""


def timed_click(page: Any, selector: str, when: str, report: Callable[[str], None]) -> str:
    """Click a control during a run; print how long the page took to show its effect.

    The time runs in the browser, from the click event to the status line's change.
    A figure, not an assert: returns the new status text.
    """
    page.evaluate(WATCH_CLICK, selector)
    page.locator(selector).click()
    page.wait_for_function("() => window.__mlkitClick.handled !== null", timeout=30_000)
    click = page.evaluate("() => window.__mlkitClick")
    assert click["busy"], f"the run had finished before the click on {selector}"
    seconds = (click["handled"] - click["clicked"]) / 1000
    label = page.locator(selector).inner_text().strip()
    report(f'click on "{label}" handled in {seconds:.2f} s during a run ({when})')
    return click["status"]


def runs_table(page: Any) -> dict[str, dict[str, str]]:
    """The runs table as {trial number: {column: text}} (plus the row's title)."""
    return {row["#"]: row for row in page.evaluate(RUNS_TABLE)}


def wait_for_row(page: Any, number: int, state: str, timeout_s: float) -> dict[str, str]:
    page.wait_for_function(
        """([number, state]) => [...document.querySelectorAll('.mlkit-table tbody tr')]
            .some((tr) => tr.cells[0].textContent === number && tr.cells[1].textContent === state)
        """,
        arg=[str(number), state],
        timeout=timeout_s * 1000,
    )
    return runs_table(page)[str(number)]


# --- the test ----------------------------------------------------------------------------


# In a real browser the explorer runs, plots live, lists runs, cancels, answers clicks mid-run.
def test_explorer_in_jupyterlab(
    page: Any, lab: Lab, artifacts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from playwright.sync_api import expect

    shots: list[Path] = []

    def shot(name: str) -> None:
        path = artifacts / f"{len(shots) + 1:02d}-{name}.png"
        page.screenshot(path=str(path))
        shots.append(path)

    def report(text: str) -> None:
        with capsys.disabled():
            print(f"\n[browser] {text}", flush=True)

    status = page.locator(".mlkit-status")
    started = time.monotonic()
    try:
        # Open the notebook and wait for its kernel.
        page.goto(f"{lab.url}/lab/tree/{NOTEBOOK}?token={lab.token}")
        spec = json.loads((ROOT / NOTEBOOK).read_text())["metadata"]["kernelspec"]
        kernel = page.get_by_role("button", name=f"{spec['display_name']} | Idle", exact=True)
        expect(kernel).to_be_visible(timeout=START_S * 1000)
        shot("notebook-open")

        # Run → Run All Cells, as a person would; the explorer replaces the saved output.
        page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-item", has_text=re.compile(r"^Run All Cells")).click()
        explorer = page.locator(".mlkit-explorer")
        expect(explorer).to_be_visible(timeout=START_S * 1000)
        expect(status).to_have_text("ready")
        expect(page.locator(".mlkit-table")).to_contain_text("no trials yet")
        explorer.scroll_into_view_if_needed()
        shot("explorer")

        # Move the dropout slider with the keyboard and read its new value off the page.
        readout = page.locator(".mlkit-control-dropout .widget-readout")
        before = readout.inner_text()
        page.locator(".mlkit-control-dropout .noUi-handle").focus()
        for _ in range(5):
            page.keyboard.press("ArrowRight")
        expect(readout).not_to_have_text(before)
        dropout = float(readout.inner_text())
        assert dropout > float(before), (before, dropout)
        report(f"dropout slider moved from {before} to {dropout:g}")

        # Run; as it starts (the worker acquires a warm kernel), a click on "Use best" is
        # handled by the notebook's kernel at once: no completed trial yet, it says.
        page.evaluate(WATCH_PLOT)
        page.locator("button.mlkit-run").click()
        expect(status).to_contain_text("running trial #0", timeout=RUN_S * 1000)
        expect(page.locator("button.mlkit-cancel")).to_be_enabled()
        text = timed_click(page, "button.mlkit-use-best", "as the run starts", report)
        assert "No completed trial yet" in text, text
        shot("click-during-run")

        # The live chart draws the run and the runs table gets its row.
        expect(status).to_contain_text("completed trial #0", timeout=RUN_S * 1000)
        page.wait_for_function(PLOTS_DRAWN, arg=2, timeout=30_000)
        row = wait_for_row(page, 0, "complete", timeout_s=30)
        assert row["source"] == "manual", row
        assert float(row["dropout"]) == pytest.approx(dropout), row
        assert float(row["val/accuracy"]) > 0.5, row
        assert row["epochs"] == "5", row  # the notebook's few epochs (default 30)
        expect(page.locator("button.mlkit-cancel")).to_be_disabled()
        page.locator(".mlkit-live-plot").scroll_into_view_if_needed()
        shot("first-run-complete")
        report(f"first run: {status.inner_text()} ({row['duration']})")

        # A long second run, cancelled once the live chart shows its epochs.
        epochs = page.locator(".mlkit-control-epochs input")
        epochs.fill("2000")
        epochs.press("Enter")
        patience = page.locator(".mlkit-control-patience input")
        patience.fill("0")  # never stop early
        patience.press("Enter")
        page.evaluate(WATCH_PLOT)
        page.locator("button.mlkit-run").click()
        expect(status).to_contain_text("running trial #1", timeout=RUN_S * 1000)
        page.wait_for_function(PLOTS_DRAWN, arg=3, timeout=RUN_S * 1000)
        plots = page.evaluate("() => window.__mlkitPlots")
        assert all("running trial #1" in p["status"] for p in plots), plots  # drawn live
        page.locator(".mlkit-live-plot").scroll_into_view_if_needed()
        shot("second-run-live")
        # Mid-training (epochs landing, the live plot redrawn), "Use best" is handled at
        # once too: the controls take trial #0's values; the run keeps its own.
        text = timed_click(page, "button.mlkit-use-best", "mid-training", report)
        assert text == "controls set to trial #0", text
        expect(epochs).to_have_value("5")
        expect(patience).to_have_value("8")
        page.locator("button.mlkit-cancel").click()
        expect(status).to_contain_text("cancelled by the user", timeout=60_000)
        expect(status).to_contain_text("failed trial #1")
        row = wait_for_row(page, 1, "fail", timeout_s=30)
        assert row["title"] == "cancelled by the user", row
        assert row["epochs"] == "2000", row
        assert runs_table(page)["0"]["state"] == "complete"
        expect(page.locator("button.mlkit-cancel")).to_be_disabled()
        page.locator(".mlkit-table").scroll_into_view_if_needed()
        shot("second-run-cancelled")

        # The cancelled run's record says so too.
        runs = lab.experiments / "classify-explore" / "runs"
        records = [json.loads(p.read_text()) for p in runs.glob("*/run.json")]
        assert [r.get("reason") for r in records if r.get("cancelled")] == [
            "cancelled by the user"
        ], records
    except BaseException:
        with contextlib.suppress(Exception):  # the page itself may be gone
            shot("failure")
        report(f"JupyterLab log: {lab.log}")
        raise
    finally:
        report(
            f"{len(shots)} screenshots in {artifacts} "
            f"({time.monotonic() - started:.0f} s in the browser)"
        )
