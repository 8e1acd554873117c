"""The widget explorer: controls from the notebook, runs as manual trials, cancel, sweeps."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import ipywidgets as widgets
import pytest
from optuna.trial import TrialState

from mlkit import explore, record_store
from mlkit.errors import ParameterError
from mlkit.explore import table as explore_table
from tests.helpers import ROOT, SCENARIOS, TEMPLATES, wait_until

WAIT_S = 180  # a cold warm kernel on a busy 2-core machine


@pytest.fixture(scope="module", autouse=True)
def _close_kernels_on_their_thread():
    yield
    explore.shutdown()


@pytest.fixture
def env(exp_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs in a temporary experiments folder; warm kernels skip torch (these never use it)."""
    monkeypatch.setenv("MLKIT_WARM_IMPORTS", "mlkit,mlkit.record,mlkit.trial")
    return exp_root


def objective_explorer(tmp_path: Path, **kwargs) -> explore.Explorer:
    space = tmp_path / "space.yaml"
    space.write_text("x: {type: float, low: -2.0, high: 4.0}\nkind: [a, b]\n")
    ex = explore.Explorer(SCENARIOS / "objective.ipynb", space, objective="loss:min", **kwargs)
    ex.controls["epochs"].value = 2
    return ex


# `import mlkit` (and its sweep machinery) never imports ipywidgets; mlkit.explore does.
def test_only_explore_imports_ipywidgets() -> None:
    code = (
        "import sys, mlkit, mlkit.sweep, mlkit.run.runner; "
        "assert 'ipywidgets' not in sys.modules; "
        "import mlkit.explore; assert 'ipywidgets' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


# Controls follow the space first (log, range, choices), then the parameter's rule.
def test_controls_from_space_and_rules(env: Path) -> None:
    ex = explore.Explorer(TEMPLATES / "classify.ipynb", TEMPLATES / "classify_space.yaml")
    c = ex.controls
    assert isinstance(c["lr"], widgets.FloatLogSlider)
    assert (c["lr"].min, c["lr"].max) == (-3.0, pytest.approx(math.log10(3e-2)))
    assert c["lr"].value == pytest.approx(0.003)
    assert isinstance(c["dropout"], widgets.FloatSlider)
    assert (c["dropout"].min, c["dropout"].max, c["dropout"].value) == (0.0, 0.4, 0.1)
    assert isinstance(c["batch_size"], widgets.Dropdown)
    assert [v for _, v in c["batch_size"].options] == [32, 64, 128]
    assert isinstance(c["optimizer"], widgets.Dropdown)  # `one of` rule, not in the space
    assert list(c["optimizer"].options) == ["adam", "adamw", "sgd"]
    assert isinstance(c["epochs"], widgets.IntText)  # one-sided rule: a text field
    assert c["lr"].tooltip == "peak learning rate"
    assert c["seed"].disabled, "seeds come from the trial"
    for name, control in c.items():
        assert f"mlkit-control-{name}" in control._dom_classes
    assert ex.cfg.study == "classify-explore"
    assert ex.cfg.storage == str(env / "classify-explore" / "study.journal")
    assert "mlkit-run" in ex.run_button._dom_classes and ex.run_button.description == "Run"
    view = "application/vnd.jupyter.widget-view+json"
    bundle = ex._repr_mimebundle_()
    assert bundle[view] == ex.widget._repr_mimebundle_()[view]
    # Where no widget is drawn (a saved notebook), a sentence, not `VBox(children=...`.
    assert bundle["text/plain"] == (
        "Explorer of classify.ipynb: run this cell in JupyterLab to get its controls."
    )
    assert "VBox" not in bundle["text/html"] and "classify.ipynb" in bundle["text/html"]


# values() converts and validates; a bad value names the parameter and a fix.
def test_values_are_validated(env: Path) -> None:
    ex = explore.Explorer(TEMPLATES / "classify.ipynb", TEMPLATES / "classify_space.yaml")
    ex.controls["epochs"].value = 3
    assert ex.values()["epochs"] == 3 and ex.values()["lr"] == pytest.approx(0.003)
    ex.controls["epochs"].value = 0
    with pytest.raises(ParameterError, match=r"'epochs'.*at least 1"):
        ex.values()
    with pytest.raises(ParameterError, match="'epochs'"):
        ex.run()
    assert not ex.rows(), "nothing ran"


# Without a space one is derived from the rules, and sweeping asks for a real one.
def test_no_space_derives_one_and_refuses_to_sweep(env: Path) -> None:
    ex = explore.Explorer(SCENARIOS / "objective.ipynb", objective="loss:min")
    assert {d.name for d in ex.dims} == {"kind", "fail"}
    assert isinstance(ex.controls["x"], widgets.FloatText)
    assert ex.sweep_button.disabled
    with pytest.raises(explore.ExploreError, match="space="):
        ex.sweep_more(2)


# Run returns a Future at once; the run is a COMPLETE trial tagged manual, listed in rows().
def test_manual_run_is_a_manual_trial(env: Path, tmp_path: Path) -> None:
    ex = objective_explorer(tmp_path)
    ex.controls["x"].value = 1.5
    future = ex.run()
    assert not future.done(), "the UI thread never waits for the kernel"
    row = future.result(timeout=WAIT_S)
    assert row["state"] == "COMPLETE", row["fail_reason"]
    assert row["objective"] == pytest.approx((1.5 - 2) ** 2 + 1 + 1 / 2)
    (trial,) = ex.study.get_trials()
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["manual"] is True
    assert trial.params == {"x": 1.5, "kind": "a"}
    (listed,) = ex.rows()
    assert listed["source"] == "manual" and listed["params"]["epochs"] == 2  # fixed, not searched
    assert record_store.load_run(Path(listed["run_path"]))["trial"] == 0
    assert "completed" in ex.status.value and "mlkit-status" in ex.status._dom_classes
    assert "manual" in ex.table.value


def cancel_a_hanging_run(env: Path, tmp_path: Path, cancel_once: Path | None = None) -> dict:
    """Run a notebook that hangs, click Cancel once its record (and ``cancel_once``) exists;
    check the trial FAILed as cancelled, and say so in run.json and the status line.
    Returns the row."""
    space = tmp_path / "hangs_space.yaml"
    space.write_text("value: {type: float, low: 0.0, high: 2.0}\n")
    ex = explore.Explorer(SCENARIOS / "hangs.ipynb", space, objective="value")
    future = ex.run()
    runs = env / "hangs-explore" / "runs"
    wait_until(lambda: runs.exists() and any(runs.iterdir()), WAIT_S, message="the run record")
    if cancel_once is not None:
        wait_until(cancel_once.exists, WAIT_S, message=str(cancel_once))
    ex.cancel_button.click()
    row = future.result(timeout=WAIT_S)
    (trial,) = ex.study.get_trials()
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == explore.CANCEL_REASON
    info = json.loads((Path(row["run_path"]) / "run.json").read_text())
    assert info["status"] == "failed" and "cancelled" in info["reason"]
    assert "cancelled" in ex.status.value
    return row


# Cancel interrupts the run: trial FAIL "cancelled by the user", run.json says so; runs go on.
def test_cancel_fails_the_trial_as_cancelled(env: Path, tmp_path: Path) -> None:
    cancel_a_hanging_run(env, tmp_path)
    after = objective_explorer(tmp_path).run().result(timeout=WAIT_S)
    assert after["state"] == "COMPLETE", after["fail_reason"]


# Cancel while the run still waits for its kernel to warm up: the run stops there, before
# its first cell, and the trial fails as cancelled all the same.
def test_cancel_while_the_kernel_warms(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlkit.run import warm

    # A warm-up that takes a minute: Cancel lands in it however fast the machine is.
    began = tmp_path / "warm-up-began"
    (tmp_path / "slow_to_import.py").write_text(
        f"import pathlib, time\n\npathlib.Path({str(began)!r}).touch()\ntime.sleep(60)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("MLKIT_WARM_IMPORTS", "mlkit,slow_to_import")
    warm.pool().close()  # the next run starts a kernel, with the slow warm-up
    started = time.monotonic()
    try:
        row = cancel_a_hanging_run(env, tmp_path, cancel_once=began)
    finally:
        warm.pool().close()  # the still-warming kernel is no use to later tests
    assert time.monotonic() - started < 45, "Cancel did not wait for the warm-up"
    executed = json.loads((Path(row["run_path"]) / "output.ipynb").read_text())
    counts = [c.get("execution_count") for c in executed["cells"] if c["cell_type"] == "code"]
    assert counts == [None] * len(counts), "no cell ran"


# Sweep N more adds N sampled trials to the same study, and the plots and table follow.
def test_sweep_more_adds_sampled_trials(env: Path, tmp_path: Path) -> None:
    ex = objective_explorer(tmp_path)
    ex.run(wait=True)
    ex.sweep_more(2, wait=True)
    rows = ex.rows()
    assert [r["source"] for r in rows] == ["manual", "sampled", "sampled"]
    assert all(r["state"] == "COMPLETE" for r in rows), [r["fail_reason"] for r in rows]
    assert all(r["params"]["epochs"] == 2 for r in rows), "non-space values stay as set"
    assert ex.progress.value == 2
    assert isinstance(ex.study_plots.children[0], widgets.Image)  # optimization history
    ex.sort_by.value = "objective"
    assert [o[1] for o in ex.compare.options] == [0, 1, 2]
    ex.compare.value = (0, 2)
    assert bytes(ex.compare_plot.value).startswith(b"\x89PNG")


# Use best fills the controls with the best trial's values, as its record ran them.
def test_use_best_fills_controls(env: Path, tmp_path: Path) -> None:
    ex = objective_explorer(tmp_path)
    with pytest.raises(explore.ExploreError, match="Run first"):
        ex.use_best()
    for x in (-1.0, 2.0):
        ex.controls["x"].value = x
        ex.run(wait=True)
    ex.controls["x"].value = 0.0
    ex.controls["epochs"].value = 7
    ex.best_button.click()
    assert ex.controls["x"].value == 2.0
    assert ex.controls["epochs"].value == 2


# The runs table reads in a narrow panel: padded cells (headers do not run together) in a
# box that scrolls sideways rather than cutting the last columns.
def test_runs_table_is_padded_and_scrolls() -> None:
    row = {
        "number": 0,
        "state": "COMPLETE",
        "source": "manual",
        "searched": {"lr": 0.003},
        "params": {"lr": 0.003, "weight_decay": 1e-4},
        "objective": 0.9,
        "test": {"test/accuracy": 0.91},
        "duration": 4.2,
        "fail_reason": "",
    }
    page = explore_table.table_html(
        [row], ["lr", "weight_decay"], {"lr"}, metric="val/accuracy", sort_by="#", minimize=False
    )
    assert page.startswith('<div style="overflow-x:auto')
    assert page.count("padding:") == 2 * 8, page  # 8 headers, 8 cells
