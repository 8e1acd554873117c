"""A run made by hand in JupyterLab is as good a record as one made from the command line.

The notebook's cells go one by one to a real kernel started the way JupyterLab starts it
(``JPY_SESSION_NAME`` holding the notebook's absolute path, the notebook's folder as cwd,
each request naming its cell id), never through mlkit's runner.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import nbclient
import nbformat
import pytest
from jupyter_client.manager import KernelManager

from mlkit import record_store, runner
from mlkit._contract import CELLS_RUN_FILE, LINEAGE_FILE, OUTPUT_NOTEBOOK, PARAMS_FILE, RUN_FILE
from mlkit._io import read_json, write_json
from mlkit.errors import StateError
from tests.helpers import ROOT, SCENARIOS, run_cli

NOTEBOOK = SCENARIOS / "interactive.ipynb"


@contextmanager
def lab_kernel(notebook: Path, exp_root: Path) -> Iterator[Callable[[str, str], None]]:
    """A kernel as JupyterLab gives one to ``notebook``; yields ``execute(cell_id, code)``."""
    env = {
        **os.environ,
        "JPY_SESSION_NAME": str(notebook.resolve()),
        "MLKIT_EXPERIMENTS": str(exp_root),
        "WANDB_MODE": "disabled",
    }
    env.pop("MLKIT_RUN_DIR", None)
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(notebook.parent))
    client = km.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)

        def execute(cell_id: str, code: str) -> None:
            content = {"code": code, "silent": False, "store_history": True}
            msg = client.session.msg("execute_request", content, metadata={"cellId": cell_id})
            client.shell_channel.send(msg)
            while True:
                reply = client.get_shell_msg(timeout=120)
                if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                    break
            assert reply["content"]["status"] == "ok", reply["content"]

        yield execute
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)


def cells(notebook: Path) -> list[tuple[str, str]]:
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    return [(c["id"], "".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "code"]


def only_run(exp_root: Path) -> Path:
    runs = sorted(exp_root.glob("*/runs/*"))
    assert len(runs) == 1, runs
    return runs[0]


# Run All in JupyterLab leaves the notebook's paths, its hash, a duration and the executed
# notebook with its figure; `mlkit reproduce` from the root gives the same metrics.
@pytest.mark.slow
def test_lab_run_is_a_full_record(exp_root: Path) -> None:
    with lab_kernel(NOTEBOOK, exp_root) as execute:
        for cell_id, code in cells(NOTEBOOK):
            execute(cell_id, code)
    run_dir = only_run(exp_root)
    info, params = read_json(run_dir / RUN_FILE), read_json(run_dir / PARAMS_FILE)
    lineage = read_json(run_dir / LINEAGE_FILE)
    for record in (info, params, lineage):
        assert record["notebook"] == "tests/notebooks/interactive.ipynb"
        assert record["notebook_abs"] == str(NOTEBOOK.resolve())
    assert lineage["notebook_sha256"] and lineage["notebook_found_by"] == "JPY_SESSION_NAME"
    assert lineage["notebook_saved"] is True
    assert info["status"] == "completed" and info["duration"] > 0
    out = json.loads((run_dir / OUTPUT_NOTEBOOK).read_text())
    figure_cell, finish_cell = out["cells"][2], out["cells"][3]
    assert any("image/png" in o.get("data", {}) for o in figure_cell["outputs"])
    assert any(o.get("text") == "doubled: 4.0\n" for o in figure_cell["outputs"])
    assert any("double: 4.0" in str(o.get("data")) for o in finish_cell["outputs"])
    assert "run.finish" in (run_dir / CELLS_RUN_FILE).read_text()

    done = run_cli("reproduce", run_dir.name, "-q", env={"MLKIT_EXPERIMENTS": str(exp_root)})
    assert done.returncode == 0, done.stdout + done.stderr
    new = [p for p in exp_root.glob("*/runs/*") if p != run_dir]
    assert read_json(new[0] / "result.json") == {"double": 4.0, "label": "line"}


# A cell edited and run but not saved: the record says so and keeps the code that ran.
@pytest.mark.slow
def test_unsaved_edit_is_recorded(exp_root: Path) -> None:
    edited = [(i, c.replace("value * 2", "value * 3")) for i, c in cells(NOTEBOOK)]
    with lab_kernel(NOTEBOOK, exp_root) as execute:
        for cell_id, code in edited:
            execute(cell_id, code)
    run_dir = only_run(exp_root)
    lineage = read_json(run_dir / LINEAGE_FILE)
    assert lineage["notebook_saved"] is False
    assert "unsaved" in lineage["notebook_note"] and CELLS_RUN_FILE in lineage["notebook_note"]
    assert 'run.finish({"double": value * 3' in (run_dir / CELLS_RUN_FILE).read_text()
    out = json.loads((run_dir / OUTPUT_NOTEBOOK).read_text())
    assert "value * 3" in "".join(out["cells"][3]["source"])
    assert out["cells"][3]["metadata"]["mlkit"] == {"unsaved": True}


# A notebook run by the runner from another folder (quickstart runs ../templates/x.ipynb
# from notebooks/) is recorded relative to the root, and reproduces from the root.
@pytest.mark.slow
def test_run_from_a_subfolder_reproduces_from_the_root(
    exp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT / "notebooks")
    first = runner.run("../tests/notebooks/echo.ipynb", {"value": 5.0}, progress=False)
    assert read_json(Path(first["path"]) / PARAMS_FILE)["notebook"] == "tests/notebooks/echo.ipynb"
    done = run_cli("reproduce", first["id"], "-q")
    assert done.returncode == 0, done.stdout + done.stderr


# A record with no notebook says what is missing instead of "'.' is not a notebook file".
def test_record_without_notebook_names_what_is_missing(exp_root: Path) -> None:
    run_id, path = record_store.create_run_dir("notebooks")
    write_json(path / PARAMS_FILE, {"notebook": "", "parameters": {"value": 1.0}})
    write_json(path / RUN_FILE, {"id": run_id, "status": "completed", "notebook": ""})
    with pytest.raises(StateError, match="made interactively and recorded no notebook path"):
        runner.reproduce(run_id, progress=False)


# A record made before paths were relative to the root (relative to the cwd) still runs.
def test_old_record_relative_to_cwd_resolves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(NOTEBOOK, tmp_path / "old.ipynb")
    monkeypatch.chdir(tmp_path)
    assert record_store.resolve_notebook("old.ipynb") == Path("old.ipynb")
    assert record_store.resolve_notebook("gone.ipynb", str(tmp_path / "old.ipynb")) == (
        tmp_path / "old.ipynb"
    )


# A notebook that opens a file beside itself, run in JupyterLab (its folder is the kernel's
# cwd), reproduces from the repository root: the kernel runs in the notebook's folder again.
@pytest.mark.slow
def test_notebook_reading_beside_itself_reproduces_from_the_root(
    exp_root: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "beside.txt").write_text("3.5\n")
    notebook = folder / "reads_beside.ipynb"
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    nb["cells"] = [nb["cells"][0], nb["cells"][1]]
    nb["cells"].append(
        {
            **nb["cells"][1],
            "id": "reads-beside",
            "source": 'value = float(open("beside.txt").read())\nrun.finish({"value": value})\n',
        }
    )
    notebook.write_text(json.dumps(nb), encoding="utf-8")
    with lab_kernel(notebook, exp_root) as execute:
        for cell_id, code in cells(notebook):
            execute(cell_id, code)
    run_dir = only_run(exp_root)
    assert read_json(run_dir / "result.json") == {"value": 3.5}

    done = run_cli("reproduce", run_dir.name, "-q", env={"MLKIT_EXPERIMENTS": str(exp_root)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "metrics reproduced exactly" in done.stdout
    new = next(p for p in exp_root.glob("*/runs/*") if p != run_dir)
    assert read_json(new / PARAMS_FILE)["cwd"] == str(folder.resolve())


# `runner.run` in a notebook shows its cells' progress as one display that ends as a finished
# line, which the saved notebook keeps: not a widget's "0%" text, not one line per update.
@pytest.mark.slow
def test_run_from_a_notebook_saves_a_finished_progress_line(exp_root: Path) -> None:
    code = f"from mlkit import runner\nrunner.run({str(SCENARIOS / 'echo.ipynb')!r}, {{}})"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbclient.NotebookClient(nb, kernel_name="python3").execute()
    outputs = [o for o in nb.cells[0].outputs if o["output_type"] == "display_data"]
    assert len(outputs) == 1, nb.cells[0].outputs
    text = outputs[0]["data"]["text/plain"]
    assert re.fullmatch(r"Executed 3 cells in \d+\.\d s", text), text
    assert "widget" not in str(outputs[0]["data"]) and "%" not in text
