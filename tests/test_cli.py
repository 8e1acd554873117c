"""The command line: instant start, readable tables, records a person can inspect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mlkit.run import runner
from tests.conftest import ROOT, SCENARIOS, run_cli

HEAVY = ("torch", "wandb", "papermill", "ipywidgets", "optuna", "nbclient", "IPython")


# `import mlkit` and `mlkit --help` stay instant: no heavy library is imported.
def test_import_and_help_import_nothing_heavy() -> None:
    code = (
        "import sys, mlkit, mlkit.cli, mlkit.run.params, mlkit.record\n"
        "try:\n    mlkit.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('HEAVY=' + ','.join(heavy))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "usage: mlkit" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY="


# `mlkit inspect` shows every parameter with its help, from the cell alone.
def test_inspect_lists_parameters() -> None:
    proc = run_cli("inspect", "templates/classify.ipynb", "--json")
    assert proc.returncode == 0, proc.stderr
    params = {p["name"]: p for p in json.loads(proc.stdout)}
    assert params["epochs"]["type"] == "int" and params["epochs"]["rule"] == "at least 1"
    assert params["lr"]["help"] == "peak learning rate"


# runs, show: a table of the runs and one run's record, failed ones included.
def test_runs_and_show(exp_root: Path) -> None:
    ok = runner.run(SCENARIOS / "echo.ipynb", {"value": 3.0}, progress=False)
    bad = runner.run(SCENARIOS / "raises.ipynb", {}, progress=False, experiment="echo")
    proc = run_cli("runs", "echo")
    assert proc.returncode == 0, proc.stderr
    assert ok["id"] in proc.stdout and bad["id"] in proc.stdout
    assert "completed" in proc.stdout and "failed" in proc.stdout
    listed = json.loads(run_cli("runs", "--json").stdout)
    assert {r["id"] for r in listed} == {ok["id"], bad["id"]}
    shown = run_cli("show", bad["id"][:-2])  # a unique prefix is enough
    assert shown.returncode == 0, shown.stderr
    assert "ValueError" in shown.stdout and "value = 1.0" in shown.stdout


# An unknown run id is a clear error with exit 2.
def test_show_unknown_run(exp_root: Path) -> None:
    proc = run_cli("show", "20990101-000000-ffffff")
    assert proc.returncode == 2
    assert "No run '20990101-000000-ffffff'" in proc.stderr and "mlkit runs" in proc.stderr


# A crashed driver leaves "running" in run.json; readers report it as crashed.
def test_crashed_driver_is_reported(exp_root: Path) -> None:
    from mlkit._io import write_json
    from mlkit.record_store import create_run_dir, load_run

    run_id, path = create_run_dir("x", exp_root)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    import socket

    write_json(
        path / "run.json",
        {"id": run_id, "status": "running", "pid": int(dead), "host": socket.gethostname()},
    )
    assert load_run(path)["status"] == "crashed"


# Parameters from a YAML file, overridden by -p.
def test_params_file_and_override(exp_root: Path, tmp_path: Path) -> None:
    file = tmp_path / "p.yaml"
    file.write_text("value: 1e-3\ntext: from file\n")
    proc = run_cli("run", str(SCENARIOS / "echo.ipynb"), "-f", str(file), "-p", "text", "cli", "-q")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(next(exp_root.glob("*/runs/*/result.json")).read_text())
    assert result == {"value": 0.001, "text": "cli"}
