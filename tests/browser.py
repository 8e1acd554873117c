"""The browser harness: headless Chromium driven by Playwright, and JupyterLab to drive.

Needs Debian's chromium and the playwright Python package (in the dev extra; it never
downloads a browser here): `source .ci/chromium.sh` installs chromium and exports
MLKIT_TEST_CHROMIUM. Without them the browser tests skip here and fail in CI.

Fixtures (exposed to every test through ``tests/conftest.py``):
- ``chromium``: the browser's path, or the skip;
- ``page``: a fresh Chromium page, no server needed: ``page.goto(path.as_uri())`` opens a
  plain HTML file;
- ``lab``: JupyterLab serving the repository, its runs in a temporary folder;
- ``scratch_lab``: JupyterLab serving a copy of ``templates/`` outside any project.

Screenshots go to $MLKIT_TEST_ARTIFACTS (default experiments/test-artifacts/browser/,
ignored by git): ``artifacts_folder()``, ``notebook_shot()``, ``failure_shot()``.
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
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlkit import record_store
from tests.helpers import ROOT, free_port, needs_service, wait_until

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


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
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
def page(chromium: str) -> Iterator[Any]:
    """A fresh headless Chromium page, 1280x2000; any page: a lab's or a plain file."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2000})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


# --- notebooks in JupyterLab --------------------------------------------------------------

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


@pytest.fixture(scope="session")
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


def failure_shot(page: Any, name: str, lab: Lab) -> None:
    with contextlib.suppress(Exception):  # the page itself may be gone
        page.screenshot(path=str(artifacts_folder() / f"{name}-failure.png"))
    print(f"JupyterLab log: {lab.log}")
