"""Every template runs through the real papermill with tiny parameters, and reproduces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlkit.run import runner
from tests.helpers import TEMPLATES, run_cli

TINY = {
    "classify": {"epochs": 2, "hidden": "32", "batch_size": 128},
    "regress": {"epochs": 2, "hidden": "16", "batch_size": 64},
}


def leet_summary(wandb_dir: str) -> dict:
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "wandb"),
            "leet",
            "inspect",
            "--summary",
            "--json",
            wandb_dir,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# Smoke: each template trains, evaluates, plots, saves weights and records a W&B run.
@pytest.mark.parametrize("name", ["classify", pytest.param("regress", marks=pytest.mark.slow)])
def test_template_smoke(exp_root: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    info = runner.run(TEMPLATES / f"{name}.ipynb", TINY[name], progress=False)
    assert info["status"] == "completed", info.get("reason")
    run_dir = Path(info["path"])
    for file in ("model.safetensors", "model.json", "learning_curves.png", "metrics.jsonl"):
        assert (run_dir / file).exists(), file
    metric = "test/accuracy" if name == "classify" else "test/r2"
    assert metric in info["result"]
    summary = leet_summary(str(run_dir / "wandb"))
    assert summary["config"]["epochs"] == TINY[name]["epochs"]
    assert summary["config"]["data"]["version"]
    assert summary["summary"][metric] == pytest.approx(info["result"][metric])
    assert "train/loss" in summary["summary"] and "val/loss" in summary["summary"]
    assert summary["state"] == "finished"
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in epochs] == list(range(1, len(epochs) + 1))


# The saved model loads without pickle and gives the recorded test metric.
@pytest.mark.slow
def test_model_loads_weights_only(exp_root: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from mlkit import data, models, train

    info = runner.run(TEMPLATES / "classify.ipynb", TINY["classify"], progress=False)
    run_dir = Path(info["path"])
    spec = json.loads((run_dir / "model.json").read_text())
    build = dict(spec["build"])
    net = models.build(
        spec["name"],
        input_shape=tuple(build.pop("input_shape")),
        n_outputs=build.pop("n_outputs"),
        **build,
    )
    net.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    torch.set_num_threads(1)
    dataset = data.load("digits", seed=0)
    test = train.evaluate(net, dataset.test, task=dataset.task, device="cpu")
    assert test["accuracy"] == pytest.approx(info["result"]["test/accuracy"], abs=1e-9)


# `mlkit reproduce RUN` re-executes from the record and the metrics match exactly.
@pytest.mark.slow
def test_reproduce_matches_exactly(exp_root: Path) -> None:
    args = [x for k, v in TINY["classify"].items() for x in ("-p", k, str(v))]
    first = run_cli("run", "templates/classify.ipynb", *args, "-q")
    assert first.returncode == 0, first.stderr
    run_id = next(exp_root.glob("*/runs/*")).name
    proc = run_cli("reproduce", run_id, "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "metrics reproduced exactly" in proc.stdout
    records = sorted(exp_root.glob("*/runs/*/run.json"))
    assert len(records) == 2
    newest = max((json.loads(p.read_text()) for p in records), key=lambda r: r["started"])
    assert newest["reproduce_of"] == run_id
