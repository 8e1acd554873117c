"""Every notebook under templates/ and notebooks/ runs untouched, as Run All in JupyterLab would.

Each runs with its default parameters through papermill, from its own folder (JupyterLab's
working directory for a notebook), into an empty experiments folder: no earlier run, no study.
A notebook passes when no cell raised and none wrote to stderr (a pink box in JupyterLab:
a warning the reader did not ask for).
"""

from __future__ import annotations

import json
from pathlib import Path

import papermill
import pytest

from tests.helpers import ROOT

NOTEBOOKS = sorted(
    p for folder in ("templates", "notebooks") for p in (ROOT / folder).glob("*.ipynb")
)
# What a notebook must say when it runs untouched, beside running cleanly.
SAYS = {
    # No study yet: the report explains how to make one, naming its own parameters.
    "sweep_report.ipynb": [
        "mlkit sweep templates/classify.ipynb --space templates/classify_space.yaml "
        "--study classify-sweep",
        "`study`",
        "`storage`",
    ],
}

# Notebooks that, run untouched, say one thing in one cell: the report without a study says
# how to make one, and the cells below it do not repeat that there is nothing to show.
SAYS_ONCE = {"sweep_report.ipynb"}


def _visible(output: dict) -> bool:
    """Whether JupyterLab shows the output: scrapbook's scraps are data, not shown."""
    data = output.get("data")
    return not data or not all(k.startswith("application/scrapbook") for k in data)


def _outputs(executed: Path) -> list[dict]:
    cells = json.loads(executed.read_text(encoding="utf-8"))["cells"]
    return [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_runs_untouched(exp_root: Path, tmp_path: Path, notebook: Path) -> None:
    executed = tmp_path / notebook.name
    papermill.execute_notebook(
        notebook, executed, cwd=notebook.parent, progress_bar=False, kernel_name="python3"
    )
    outputs = _outputs(executed)
    errors = [o for o in outputs if o["output_type"] == "error"]
    stderr = ["".join(o["text"]) for o in outputs if o.get("name") == "stderr"]
    assert not errors, errors
    assert not stderr, stderr
    # A figure's path or the result's raw dict after it was shown formatted: noise.
    values = [
        o["data"].get("text/plain", "") for o in outputs if o["output_type"] == "execute_result"
    ]
    assert not [v for v in values if "PosixPath(" in "".join(v)], values
    if notebook.parent.name == "templates":
        last = [c for c in json.loads(executed.read_text())["cells"] if c["cell_type"] == "code"][
            -1
        ]
        assert not [o for o in last["outputs"] if o["output_type"] == "execute_result"]
    text = "".join("".join(o.get("text", "")) for o in outputs if o.get("name") == "stdout")
    for expected in SAYS.get(notebook.name, []):
        assert expected in text
    if notebook.name in SAYS_ONCE:
        cells = json.loads(executed.read_text(encoding="utf-8"))["cells"]
        speaking = [
            c["source"]
            for c in cells
            if c["cell_type"] == "code" and [o for o in c["outputs"] if _visible(o)]
        ]
        assert len(speaking) == 1, speaking
