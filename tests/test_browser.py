"""The widget explorer in a real browser: JupyterLab driven by Playwright in headless Chromium.

Needs Debian's chromium and the playwright Python package (in the dev extra; it never
downloads a browser here): `source .ci/chromium.sh` installs chromium and exports
MLKIT_TEST_CHROMIUM. Without them this test skips here and fails in CI.

Screenshots of every stage go to $MLKIT_TEST_ARTIFACTS (default
experiments/test-artifacts/browser/, ignored by git); the test prints where.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlkit import lineage, record_store
from mlkit._contract import (
    CELLS_RUN_FILE,
    LINEAGE_FILE,
    OUTPUT_NOTEBOOK,
    PARAMS_FILE,
    RUN_FILE,
)
from mlkit._io import read_json
from tests.helpers import ROOT, free_port, needs_service, run_cli, wait_until

# A real JupyterLab and a real browser: the slow tier.
pytestmark = pytest.mark.slow
NOTEBOOK = "notebooks/explore.ipynb"
# Known to work as root on a machine whose network is closed: without the background
# networking flags Chromium's own connections are refused and slow everything down.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_S = 90  # JupyterLab up, kernel idle, explorer drawn (a busy 2-core machine)
RUN_S = 180  # a run on a cold warm kernel: its start, `import torch`, 5 epochs
# JupyterLab settings for the test's own settings folder: never write the notebook back
# (autosave), never ask about news or updates (a toast over the page, network calls).
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "checkForUpdates": False,
        "fetchNews": "false",
    },
    # Every cell drawn, off screen too: a screenshot of the whole notebook shows them all.
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium and the playwright package, or a skip (a failure in CI)."""
    path = os.environ.get("MLKIT_TEST_CHROMIUM", "")
    reason = ""
    if not path:
        reason = "MLKIT_TEST_CHROMIUM is not set"
    elif not (Path(path).is_file() and os.access(path, os.X_OK)):
        reason = f"MLKIT_TEST_CHROMIUM={path} is not an executable file"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError as exc:
            reason = f"the playwright package is missing ({exc}); pip install -e '.[dev]'"
    if reason:
        message = (
            f"needs Chromium and Playwright ({reason}); run `source .ci/chromium.sh` to "
            "install Debian's chromium and export MLKIT_TEST_CHROMIUM"
        )
        needs_service(message)
    return path


@dataclass
class Lab:
    url: str  # http://127.0.0.1:PORT
    token: str
    experiments: Path  # MLKIT_EXPERIMENTS of the server and its kernels
    log: Path
    root: Path = ROOT  # the folder it serves


def _get(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="module")
def lab(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 with a random token, its runs in a temporary folder."""
    with serve_lab(ROOT, tmp_path_factory.mktemp("lab")) as served:
        yield served


@contextlib.contextmanager
def serve_lab(root: Path, tmp: Path) -> Iterator[Lab]:
    """JupyterLab serving ``root``, its settings, runtime files and runs under ``tmp``."""
    settings = tmp / "settings"
    for name, value in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(value))
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env.update(
        MLKIT_EXPERIMENTS=str(tmp / "experiments"),
        WANDB_MODE="disabled",
        WANDB_SILENT="true",
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),  # no server files in ~/.local
    )
    log = tmp / "jupyter.log"
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.allow_root=True",  # CI runs as root
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
    ]
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        server = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=out)

    def log_tail() -> str:
        return log.read_text(errors="replace")[-3000:]

    def answering() -> bool:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab did not start on {url} (exit {server.poll()}):\n{log_tail()}")
        return _get(f"{url}/api/status?token={token}") is not None

    try:
        wait_until(answering, START_S, 0.2, lambda: f"JupyterLab on {url}:\n{log_tail()}")
        yield Lab(url, token, tmp / "experiments", log, root)
    finally:
        # A polite shutdown stops the kernels, which close their warm kernels on exit.
        request = urllib.request.Request(
            f"{url}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"}
        )
        with contextlib.suppress(OSError):  # URLError is an OSError
            urllib.request.urlopen(request, timeout=10).close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def artifacts_folder() -> Path:
    """Where screenshots go: $MLKIT_TEST_ARTIFACTS or experiments/test-artifacts/browser."""
    default = ROOT / "experiments" / "test-artifacts" / "browser"
    folder = Path(os.environ.get("MLKIT_TEST_ARTIFACTS") or default)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def artifacts() -> Path:
    folder = artifacts_folder()
    for old in folder.glob("[0-9][0-9]-*.png"):  # this test's screenshots of a former run
        old.unlink()
    return folder


@pytest.fixture
def page(chromium: str) -> Iterator[Any]:
    """A fresh headless Chromium page; a screenshot of it when the test fails."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2000})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


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


# --- runs made by hand in JupyterLab -----------------------------------------------------

KERNEL = "Python 3 (ipykernel)"  # the display name every bundled notebook's kernelspec has
# Every code cell shows an execution count: Run All went through the whole notebook.
ALL_RAN = """() => {
    const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
    const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
    return prompts.length > 0 && prompts.every((p) => /^\\[\\d+\\]:$/.test(p.textContent.trim()));
}"""
# Every image in the open notebook loaded and drawn.
IMAGES_DRAWN = """() => [...document.querySelectorAll(
    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea img'
)].every((img) => img.complete && img.naturalWidth > 0)"""
NOTEBOOK_HEIGHT = """() => document.querySelector(
    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer'
).scrollHeight"""


@pytest.fixture(scope="module")
def scratch_lab(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab serving a copy of templates/ outside any project: notebooks it may save."""
    tmp = tmp_path_factory.mktemp("scratch-lab")
    shutil.copytree(ROOT / "templates", tmp / "scratch" / "templates")
    assert record_store.project_root(tmp / "scratch") is None, "the copy must be outside"
    with serve_lab(tmp / "scratch", tmp) as served:
        yield served


def open_notebook(page: Any, lab: Lab, path: str) -> None:
    """Open a notebook and wait until its kernel is idle and its cells are drawn."""
    from playwright.sync_api import expect

    page.goto(f"{lab.url}/lab/tree/{path}?token={lab.token}")
    kernel = page.get_by_role("button", name=f"{KERNEL} | Idle", exact=True)
    expect(kernel).to_be_visible(timeout=START_S * 1000)
    cells = len(json.loads((lab.root / path).read_text())["cells"])
    expect(page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell")).to_have_count(cells)


def run_all(page: Any) -> None:
    """Run → Run All Cells, then wait until every code cell ran and the kernel is idle."""
    from playwright.sync_api import expect

    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item", has_text=re.compile(r"^Run All Cells")).click()
    page.wait_for_function(ALL_RAN, timeout=RUN_S * 1000, polling=500)
    kernel = page.get_by_role("button", name=f"{KERNEL} | Idle", exact=True)
    expect(kernel).to_be_visible(timeout=RUN_S * 1000)


def notebook_shot(page: Any, name: str) -> Path:
    """A screenshot of the whole open notebook: the window grows to its height for it."""
    page.wait_for_function(IMAGES_DRAWN, timeout=30_000)
    width, height = page.viewport_size["width"], page.viewport_size["height"]
    tall = min(page.evaluate(NOTEBOOK_HEIGHT) + 200, 16_000)  # Chromium's largest capture
    page.set_viewport_size({"width": width, "height": max(height, tall)})
    path = artifacts_folder() / f"{name}.png"
    try:
        page.keyboard.press("Escape")  # command mode: no cursor blinking in the picture
        page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer").evaluate(
            "(outer) => outer.scrollTo(0, 0)"
        )
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size({"width": width, "height": height})
    return path


def type_over(page: Any, prefix: str, old: str, new: str) -> None:
    """In the line starting with ``prefix + old``, select ``old`` and type ``new``."""
    line = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .cm-line").filter(
        has_text=re.compile("^" + re.escape(prefix + old))
    )
    line.click(position={"x": 2, "y": 5})
    page.keyboard.press("Home")
    for _ in prefix:
        page.keyboard.press("ArrowRight")
    for _ in old:
        page.keyboard.press("Shift+ArrowRight")
    page.keyboard.type(new)


def hand_made_record(lab: Lab, notebook: Path) -> Path:
    """The only record of a run of ``notebook``, once it is completed (or failed)."""

    def ended() -> Path | None:
        runs = [
            p.parent
            for p in lab.experiments.glob("*/runs/*/run.json")
            if read_json(p).get("notebook_abs") == str(notebook)
        ]
        assert len(runs) <= 1, runs
        if runs and read_json(runs[0] / RUN_FILE).get("status") in ("completed", "failed"):
            return runs[0]
        return None

    return wait_until(ended, RUN_S, 0.5, f"a finished record of {notebook}")


def failure_shot(page: Any, name: str, lab: Lab) -> None:
    with contextlib.suppress(Exception):  # the page itself may be gone
        page.screenshot(path=str(artifacts_folder() / f"{name}-failure.png"))
    print(f"JupyterLab log: {lab.log}")


# A parameter typed into the classify template, saved (Ctrl+S) and Run All: a full record
# (the executed notebook with its figure, the notebook's path and hash, a duration) that
# `mlkit reproduce` reproduces exactly from the repository root.
def test_classify_typed_saved_and_run_all(page: Any, scratch_lab: Lab) -> None:
    from playwright.sync_api import expect

    notebook = scratch_lab.root / "templates" / "classify.ipynb"
    try:
        open_notebook(page, scratch_lab, "templates/classify.ipynb")
        type_over(page, "epochs: int = ", "30", "2")
        expect(
            page.locator(".cm-line").filter(has_text=re.compile(r"^epochs: int = 2  #"))
        ).to_have_count(1)
        page.keyboard.press("Control+s")
        wait_until(lambda: "epochs: int = 2  #" in notebook.read_text(), 30, 0.2, "the saved edit")
        saved_hash = lineage.notebook_hash(notebook)
        run_all(page)
        notebook_shot(page, "classify-run-all")
    except BaseException:
        failure_shot(page, "classify-run-all", scratch_lab)
        raise
    run_dir = hand_made_record(scratch_lab, notebook)
    info, params = read_json(run_dir / RUN_FILE), read_json(run_dir / PARAMS_FILE)
    lineage_ = read_json(run_dir / LINEAGE_FILE)
    assert info["status"] == "completed", info
    assert info["duration"] > 0, info
    assert params["parameters"]["epochs"] == 2, params
    for record in (info, params, lineage_):  # outside any project: absolute both ways
        assert record["notebook"] == record["notebook_abs"] == str(notebook), record
    assert lineage_["notebook_sha256"] == saved_hash
    assert lineage_["notebook_found_by"] == "JPY_SESSION_NAME"
    assert lineage_["notebook_saved"] is True, lineage_
    out = json.loads((run_dir / OUTPUT_NOTEBOOK).read_text())
    curves = [c for c in out["cells"] if 'log_figure("learning_curves"' in "".join(c["source"])]
    assert len(curves) == 1
    assert any("image/png" in o.get("data", {}) for o in curves[0]["outputs"]), curves

    done = run_cli(
        "reproduce", run_dir.name, "-q", env={"MLKIT_EXPERIMENTS": str(scratch_lab.experiments)}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "metrics reproduced exactly" in done.stdout, done.stdout


# A cell after start_run edited in the browser and run without saving: the record says the
# notebook was not saved and keeps the code that ran.
def test_unsaved_edit_in_jupyterlab(page: Any, scratch_lab: Lab) -> None:
    from playwright.sync_api import expect

    # A copy with few epochs, written as a file: what this test types is the unsaved edit.
    notebook = scratch_lab.root / "templates" / "classify_unsaved.ipynb"
    source = (ROOT / "templates" / "classify.ipynb").read_text()
    notebook.write_text(source.replace("epochs: int = 30  #", "epochs: int = 2  #"))
    before = notebook.read_bytes()
    edit = 'print("edited in the browser")'
    try:
        open_notebook(page, scratch_lab, f"templates/{notebook.name}")
        # The end of the finish cell's code; a new line typed there.
        page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .cm-line").filter(
            has_text=re.compile(r"^run\.finish\(")
        ).click(position={"x": 2, "y": 5})
        page.keyboard.press("Control+End")
        page.keyboard.press("Enter")
        page.keyboard.type(edit)
        expect(page.locator(".cm-line").filter(has_text=edit)).to_have_count(1)
        run_all(page)
        notebook_shot(page, "classify-unsaved-edit")
    except BaseException:
        failure_shot(page, "classify-unsaved-edit", scratch_lab)
        raise
    run_dir = hand_made_record(scratch_lab, notebook)
    assert notebook.read_bytes() == before  # nothing saved it
    assert read_json(run_dir / RUN_FILE)["status"] == "completed"
    lineage_ = read_json(run_dir / LINEAGE_FILE)
    assert lineage_["notebook_saved"] is False, lineage_
    assert "unsaved" in lineage_["notebook_note"], lineage_
    assert edit in (run_dir / CELLS_RUN_FILE).read_text()
    out = json.loads((run_dir / OUTPUT_NOTEBOOK).read_text())
    edited = [c for c in out["cells"] if edit in "".join(c["source"])]
    assert len(edited) == 1 and edited[0]["metadata"]["mlkit"] == {"unsaved": True}, edited
    assert any(o.get("text") == "edited in the browser\n" for o in edited[0]["outputs"])


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
