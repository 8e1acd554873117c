"""Runs made by hand in JupyterLab, in a real browser: typed, saved, run, edited unsaved.

The notebooks are copies of the templates outside any project (the ``scratch_lab``), so the
browser may save them; screenshots classify-run-all.png and classify-unsaved-edit.png.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from mlkit import lineage
from mlkit._contract import CELLS_RUN_FILE, LINEAGE_FILE, OUTPUT_NOTEBOOK, PARAMS_FILE, RUN_FILE
from mlkit._io import read_json
from tests.browser import RUN_S, Lab, failure_shot, notebook_shot, open_notebook, run_all
from tests.helpers import ROOT, run_cli, wait_until

# A real JupyterLab and a real browser: the slow tier.
pytestmark = pytest.mark.slow


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


def runs_of(lab: Lab) -> set[Path]:
    """The run folders in the lab's experiments now (other tests of this lab make some)."""
    return set(lab.experiments.glob("*/runs/*"))


def hand_made_record(lab: Lab, notebook: Path, before: set[Path]) -> Path:
    """The only new record of a run of ``notebook``, once it is completed (or failed)."""

    def ended() -> Path | None:
        runs = [
            p.parent
            for p in lab.experiments.glob("*/runs/*/run.json")
            if p.parent not in before and read_json(p).get("notebook_abs") == str(notebook)
        ]
        assert len(runs) <= 1, runs
        if runs and read_json(runs[0] / RUN_FILE).get("status") in ("completed", "failed"):
            return runs[0]
        return None

    return wait_until(ended, RUN_S, 0.5, f"a finished record of {notebook}")


# A parameter typed into the classify template, saved (Ctrl+S) and Run All: a full record
# (the executed notebook with its figure, the notebook's path and hash, a duration) that
# `mlkit reproduce` reproduces exactly from the repository root.
def test_classify_typed_saved_and_run_all(page: Any, scratch_lab: Lab) -> None:
    from playwright.sync_api import expect

    notebook = scratch_lab.root / "templates" / "classify.ipynb"
    before = runs_of(scratch_lab)  # a sweep test of this lab ran this notebook too
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
    run_dir = hand_made_record(scratch_lab, notebook, before)
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
    saved = notebook.read_bytes()
    runs = runs_of(scratch_lab)
    edit = 'print("edited in the browser")'
    try:
        open_notebook(page, scratch_lab, f"templates/{notebook.name}")
        # The end of the finish cell's code; a new line typed there. A click that lands
        # while the notebook still renders leaves it in command mode, where typed letters
        # are shortcuts ("r" makes the cell raw): click until its editor has the focus.
        finish = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .cm-line").filter(
            has_text=re.compile(r"^run\.finish\(")
        )
        editing = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-mod-editMode")
        for _ in range(10):
            finish.click(position={"x": 2, "y": 5})
            with contextlib.suppress(AssertionError):
                expect(editing).to_have_count(1, timeout=2000)
                break
        expect(editing).to_have_count(1)
        page.keyboard.press("Control+End")
        page.keyboard.press("Enter")
        page.keyboard.type(edit)
        expect(page.locator(".cm-line").filter(has_text=edit)).to_have_count(1)
        run_all(page)
        notebook_shot(page, "classify-unsaved-edit")
    except BaseException:
        failure_shot(page, "classify-unsaved-edit", scratch_lab)
        raise
    run_dir = hand_made_record(scratch_lab, notebook, runs)
    assert notebook.read_bytes() == saved  # nothing saved it
    assert read_json(run_dir / RUN_FILE)["status"] == "completed"
    lineage_ = read_json(run_dir / LINEAGE_FILE)
    assert lineage_["notebook_saved"] is False, lineage_
    assert "unsaved" in lineage_["notebook_note"], lineage_
    assert edit in (run_dir / CELLS_RUN_FILE).read_text()
    out = json.loads((run_dir / OUTPUT_NOTEBOOK).read_text())
    edited = [c for c in out["cells"] if edit in "".join(c["source"])]
    assert len(edited) == 1 and edited[0]["metadata"]["mlkit"] == {"unsaved": True}, edited
    assert any(o.get("text") == "edited in the browser\n" for o in edited[0]["outputs"])
