"""``mlkit diff A B``: two runs side by side, only what differs, exit 0 only when they match.

Most tests read records written by hand (fast, every field under control); the slow ones
run templates/classify.ipynb for real, in a git repository of their own, so that the
code section sees commits and uncommitted changes of that project alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlkit._io import write_json, write_text
from mlkit.compare import compare
from mlkit.compare.notebooks import reduce, sanitize_rules
from mlkit.errors import ParameterError, RunNotFoundError
from mlkit.record_store import create_run_dir
from tests.helpers import ROOT, TEMPLATES, run_cli
from tests.test_table_data import credit_frame

RESULT = {"val/loss": 0.5, "val/accuracy": 0.8, "best_epoch": 2}
HISTORY = [
    {"epoch": 1, "val/loss": 0.9, "val/accuracy": 0.6, "seconds": 0.1},
    {"epoch": 2, "val/loss": 0.5, "val/accuracy": 0.8, "seconds": 0.2},
]
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def _notebook(run_id: str, printed: str = "best epoch 2", source: str = "fit()") -> dict:
    """An executed notebook whose outputs hold what changes every run (id, path, time)."""
    volatile = f"Run('{run_id}', path='/tmp/x/experiments/e/runs/{run_id}') in 1.2s at 0x7f3a"
    return {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "# Title"},
            {
                "cell_type": "code",
                "metadata": {"tags": ["injected-parameters"]},
                "source": f"lr = {len(run_id)}",
                "outputs": [],
                "execution_count": 1,
            },
            {
                "cell_type": "code",
                "metadata": {"papermill": {"duration": 0.3}},
                "source": source,
                "execution_count": 2,
                "outputs": [
                    {"output_type": "stream", "name": "stdout", "text": [volatile, "\n"]},
                    {"output_type": "stream", "name": "stdout", "text": printed + "\n"},
                ],
            },
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def record(root: Path, **changes: Any) -> Path:
    """A completed run record written by hand; ``changes`` replace its parts."""
    run_id, path = create_run_dir(changes.get("experiment", "hand"), root)
    params = {"lr": 0.1, "epochs": 2, **changes.get("params", {})}
    lineage = {
        "python": "3.11.7",
        "torch": "2.3.0",
        "mlkit": "0.1.0",
        "device": "cpu",
        "host": "box",
        "notebook_sha256": "abc",
        "git": {"commit": None, "dirty": None, "diff": ""},
        "packages": ["numpy==1.26.0", "torch==2.3.0"],
        "data": {"name": "digits", "version": "v1", "sizes": {"train": 10, "test": 5}},
        **changes.get("lineage", {}),
    }
    notebook = changes.get("notebook", "x.ipynb")
    write_json(path / "run.json", {"id": run_id, "status": "completed", "notebook": notebook})
    write_json(path / "params.json", {"notebook": notebook, "parameters": params})
    write_json(path / "result.json", {**RESULT, **changes.get("result", {})})
    write_json(path / "lineage.json", lineage)
    history = changes.get("history", HISTORY)
    write_text(path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    nb = _notebook(run_id, **changes.get("cells", {}))
    write_text(path / "output.ipynb", json.dumps(nb))
    (path / "learning_curves.png").write_bytes(changes.get("png", PNG))
    return path


def test_one_parameter_changed_names_it_and_every_metric_delta_only(exp_root: Path) -> None:
    # the default view shows the parameter that changed and each metric's deltas, and no
    # other section: volatile outputs (ids, paths, durations) are sanitized away
    a = record(exp_root)
    b = record(exp_root, params={"lr": 0.2}, result={"val/loss": 0.4, "val/accuracy": 0.9})
    out = compare(a.name, b.name)
    assert out["differs"] is True
    assert list(out["sections"]) == ["params", "metrics"]
    assert out["sections"]["params"]["rows"] == [
        {"key": "lr", "change": "changed", "a": 0.1, "b": 0.2}
    ]
    rows = {r["key"]: r for r in out["sections"]["metrics"]["rows"]}
    assert set(rows) == {"val/loss", "val/accuracy"}
    assert rows["val/loss"]["delta"] == pytest.approx(-0.1)
    assert rows["val/loss"]["relative"] == pytest.approx(-0.2)
    assert rows["val/accuracy"]["delta"] == pytest.approx(0.1)


def test_cli_exit_0_when_equal_1_when_different(exp_root: Path) -> None:
    # exit codes: 0 the runs match on everything compared, 1 something differs
    a, b = record(exp_root), record(exp_root)
    same = run_cli("diff", a.name, b.name)
    assert same.returncode == 0, same.stderr
    assert "match on everything compared" in same.stdout
    c = record(exp_root, params={"epochs": 3})
    changed = run_cli("diff", a.name, str(c))
    assert changed.returncode == 1, changed.stderr
    assert "epochs" in changed.stdout and "lr" not in changed.stdout
    assert "lr" in run_cli("diff", a.name, str(c), "--all").stdout


def test_json_shape(exp_root: Path) -> None:
    # --json: A and B, notes, differs, and the sections as rows of key/change/a/b
    a = record(exp_root)
    b = record(exp_root, params={"seed": 1}, lineage={"packages": ["numpy==2.0.0"]})
    proc = run_cli("diff", a.name, b.name, "--json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"a", "b", "notes", "differs", "sections"}
    assert out["a"]["id"] == a.name and out["b"]["id"] == b.name
    assert out["sections"]["params"]["rows"] == [
        {"key": "seed", "change": "added", "a": None, "b": 1}
    ]
    packages = {r["key"]: r for r in out["sections"]["environment"]["rows"]}
    assert packages["package numpy"]["change"] == "changed"
    assert packages["package torch"]["change"] == "removed"
    for section in out["sections"].values():
        for r in section["rows"]:
            assert {"key", "change", "a", "b"} <= set(r)


def test_curves_best_epoch_and_where_they_part(exp_root: Path) -> None:
    # curves: best epoch of each run (lowest loss, highest accuracy) and the first epoch
    # where they part; the epoch times never count
    a = record(exp_root)
    longer = [*HISTORY, {"epoch": 3, "val/loss": 0.3, "val/accuracy": 0.7, "seconds": 9}]
    b = record(exp_root, history=longer)
    rows = {r["key"]: r for r in compare(a.name, b.name)["sections"]["curves"]["rows"]}
    assert set(rows) == {"val/loss", "val/accuracy"}
    assert rows["val/loss"]["parted_at"] == 3
    assert (rows["val/loss"]["a"]["best_epoch"], rows["val/loss"]["b"]["best_epoch"]) == (2, 3)
    assert rows["val/accuracy"]["b"]["best_epoch"] == 2


def test_notebook_outputs_sanitized_changed_cell_shown(exp_root: Path) -> None:
    # a changed cell shows with its source and output diff; run ids, paths, durations and
    # addresses in outputs are replaced by nbval's sanitize rules before nbdime diffs
    a = record(exp_root)
    b = record(exp_root, cells={"source": "fit(lr=2)", "printed": "best epoch 1"})
    (cell,) = compare(a.name, b.name)["sections"]["notebook"]["cells"]
    assert (cell["a"], cell["b"], cell["change"]) == (1, 1, "changed")
    assert cell["parts"] == ["outputs", "source"]
    assert "+fit(lr=2)" in cell["source_diff"]
    changed = [line for line in cell["outputs_diff"] if line[:1] in "+-"]
    assert changed == ["-best epoch 2", "+best epoch 1"]


def test_sanitize_rules_read_from_nbval_file() -> None:
    # the rules come from notebooks/sanitize.cfg, in nbval's format
    rules = sanitize_rules(ROOT / "notebooks" / "sanitize.cfg")
    nb = reduce(_notebook("20260101-120000-abcdef"), rules)
    text = nb["cells"][1]["outputs"][0]["text"]
    assert "RUN-ID" in text and "EXPERIMENTS/" in text and "DURATION" in text
    assert "20260101" not in text


def test_data_section_version_rows_and_schema(exp_root: Path) -> None:
    # data: version, row counts per split, and the table's columns
    a = record(exp_root)
    data = {"name": "t.csv", "version": "v2", "sizes": {"train": 12, "test": 5}}
    b = record(exp_root, lineage={"data": data})
    write_json(b / "data.json", {"schema": {"columns": {"age": {"role": "feature"}}}})
    rows = {r["key"]: r for r in compare(a.name, b.name)["sections"]["data"]["rows"]}
    assert set(rows) == {"name", "version", "rows train", "column age"}
    assert (rows["rows train"]["a"], rows["rows train"]["b"]) == (10, 12)
    assert rows["column age"]["change"] == "added"


def test_different_notebooks_diff_anyway_with_a_note(exp_root: Path) -> None:
    # two runs of different notebooks: compared, and a note at the top says so
    a, b = record(exp_root), record(exp_root, notebook="y.ipynb")
    out = compare(a.name, b.name)
    assert out["notes"] and "different notebooks" in out["notes"][0]
    proc = run_cli("diff", a.name, b.name)
    assert proc.returncode == 1
    assert proc.stdout.index("note:") < proc.stdout.index("Code")


def test_bad_input_exit_2_with_the_fix(exp_root: Path) -> None:
    # an unknown id names the closest ones; an ambiguous prefix, a bad STUDY#N: exit 2
    a = record(exp_root)
    typo = a.name[:-1] + ("0" if a.name[-1] != "0" else "1")
    with pytest.raises(RunNotFoundError, match=a.name):
        compare(typo, a.name)
    proc = run_cli("diff", typo, a.name)
    assert proc.returncode == 2 and a.name in proc.stderr
    record(exp_root)
    assert run_cli("diff", a.name[:4], a.name).returncode == 2
    with pytest.raises(ParameterError, match="STUDY#N"):
        compare("study#x", a.name)
    proc = run_cli("diff", "nostudy#3", a.name)
    assert proc.returncode == 2 and "nostudy" in proc.stderr


def test_html_page_self_contained_and_deterministic(exp_root: Path, tmp_path: Path) -> None:
    # --html: one page, the same bytes twice, curves in #curves, figures paired, no network
    a = record(exp_root)
    b = record(exp_root, params={"lr": 0.3}, png=PNG + b"\1")
    pages = []
    for name in ("one.html", "two.html"):
        proc = run_cli("diff", a.name, b.name, "--html", str(tmp_path / name))
        assert proc.returncode == 1, proc.stderr
        pages.append((tmp_path / name).read_text(encoding="utf-8"))
    assert pages[0] == pages[1]
    page = pages[0]
    assert page.count('id="curves"') == 1
    assert page.count('class="figure-pair"') == 1
    assert page.count("<img alt=") == 2
    assert "<script src=" not in page and "<link" not in page


def test_diff_imports_no_torch_optuna_wandb_papermill(exp_root: Path) -> None:
    # `mlkit diff` stays fast: none of the heavy libraries load
    a, b = record(exp_root), record(exp_root, params={"lr": 0.3})
    code = (
        "import sys; from mlkit.cli import main; rc = main(['diff', sys.argv[1], sys.argv[2]]);"
        "heavy = {'torch', 'optuna', 'wandb', 'papermill'} & set(sys.modules);"
        "print('HEAVY', sorted(heavy))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, a.name, b.name], capture_output=True, text=True, cwd=ROOT
    )
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


# --- real runs of templates/classify.ipynb in a project of their own -----------------------


def _git(project: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository holding classify.ipynb, committed; runs recorded beside it."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(TEMPLATES / "classify.ipynb", project / "classify.ipynb")
    _git(project, "init", "-q")
    _git(project, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(project, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    monkeypatch.setenv("MLKIT_EXPERIMENTS", str(tmp_path / "experiments"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return project


def _mlkit(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "WANDB_SILENT": "true"}
    return subprocess.run(
        [sys.executable, "-m", "mlkit", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _run(project: Path, *params: str) -> str:
    """Run classify.ipynb tiny; returns the run id."""
    tiny = ("-p", "epochs", "1", "-p", "warmup_epochs", "0", "-p", "hidden", "16")
    proc = _mlkit(project, "run", "classify.ipynb", "-q", *tiny, *params)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("run "))


def _diff(project: Path, a: str, b: str) -> tuple[int, dict[str, Any]]:
    proc = _mlkit(project, "diff", a, b, "--json")
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.slow
def test_real_runs_reproduced_clean_then_parameter_then_code(project: Path) -> None:
    # a reproduction diffs clean (exit 0); one parameter changed names it and every metric;
    # an uncommitted edit of a cell shows as the tree's change and in the notebook section
    first = _run(project)
    proc = _mlkit(project, "reproduce", first, "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    again = proc.stdout.split(" reproduced as ")[1].split()[0]
    rc, out = _diff(project, first, again)
    assert (rc, out["sections"]) == (0, {}), out

    lr = _run(project, "-p", "lr", "0.01")
    rc, out = _diff(project, first, lr)
    assert rc == 1
    assert out["sections"]["params"]["rows"] == [
        {"key": "lr", "change": "changed", "a": 0.003, "b": 0.01}
    ]
    results = [json.loads((Path(out[s]["path"]) / "result.json").read_text()) for s in "ab"]
    differing = {k for k, v in results[0].items() if v != results[1][k]}
    assert differing  # a tenfold learning rate moves the metrics
    assert {r["key"] for r in out["sections"]["metrics"]["rows"] if "delta" in r} == differing
    assert set(out["sections"]) <= {"params", "metrics", "curves", "notebook", "figures"}
    assert all(c["parts"] == ["outputs"] for c in out["sections"]["notebook"]["cells"])

    nb = json.loads((project / "classify.ipynb").read_text())
    nb["cells"].append({"cell_type": "code", "metadata": {}, "source": "print('extra')",
                        "outputs": [], "execution_count": None})  # fmt: skip
    (project / "classify.ipynb").write_text(json.dumps(nb, indent=1))
    dirty = _run(project)
    rc, out = _diff(project, first, dirty)
    code = {r["key"]: r for r in out["sections"]["code"]["rows"]}
    assert {"notebook hash", "uncommitted change"} <= set(code)
    assert "print('extra')" in out["sections"]["code"]["uncommitted"]["b"]
    assert "a" not in out["sections"]["code"]["uncommitted"]
    (cell,) = out["sections"]["notebook"]["cells"]
    assert cell["change"] == "added" and "+print('extra')" in cell["source_diff"]
    assert "+extra" in cell["outputs_diff"]

    _git(project, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "extra")
    committed = _run(project)
    rc, out = _diff(project, first, committed)
    added = [ln for ln in out["sections"]["code"]["commit_diff"].splitlines() if ln[:1] == "+"]
    assert any("print('extra')" in line for line in added), added


@pytest.mark.slow
def test_real_runs_of_a_changed_csv_show_version_and_rows(project: Path) -> None:
    # the same CSV path with more rows: a new data version and the row counts per split
    csv = project / "credit.csv"
    table = ("-p", "dataset", str(csv), "-p", "target", "default")
    credit_frame(n=300).to_csv(csv, index=False)
    before = _run(project, *table)
    credit_frame(n=360).to_csv(csv, index=False)
    after = _run(project, *table)
    rc, out = _diff(project, before, after)
    assert rc == 1
    assert "params" not in out["sections"]
    rows = {r["key"]: r for r in out["sections"]["data"]["rows"]}
    assert rows["version"]["change"] == "changed"
    sizes = [k for k in rows if k.startswith("rows ")]
    assert sizes, rows
    assert sum(rows[k]["b"] for k in sizes) > sum(rows[k]["a"] for k in sizes)
