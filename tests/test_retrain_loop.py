"""The retraining loop, end to end: drift -> retrain -> replay -> promote, as a user runs it.

One scenario from a clean experiments folder, every step a real ``mlkit`` command and the
model served by a real ``mlkit serve`` process: the loop a cron job or CI runs as
``mlkit monitor NAME || mlkit retrain NAME --data NEW --promote``. Then the same loop as
``templates/retrain.ipynb`` shows it on the bundled digits (``-p demo digits``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import papermill
import pytest

from mlkit._io import read_json
from tests.helpers import ROOT, run_cli, start_server, stop, wait_until

pytestmark = pytest.mark.slow  # trains, serves and retrains a real model

FOLLOW_S = 0.5  # the server's --follow-every


def churn_frame(n: int, seed: int, *, shifted: bool = False) -> pd.DataFrame:
    """Customers: ``churn`` is ``usage > 0``; once shifted, usage moved up by one and churn
    is ``usage < 1``, so a model of the old relation is mostly wrong on the new rows."""
    rng = np.random.default_rng(seed)
    centre = 1.0 if shifted else 0.0
    usage = rng.normal(centre, 1.0, n).round(3)
    label = usage < centre if shifted else usage > centre
    return pd.DataFrame(
        {
            "usage": usage,
            "tenure": rng.normal(0.0, 1.0, n).round(3),
            "plan": rng.choice(["basic", "pro"], n),
            "churn": np.where(label, "yes", "no"),
        }
    )


def _cli(env: dict[str, str], *args: str, code: int = 0) -> Any:
    proc = run_cli(*args, env=env)
    assert proc.returncode == code, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc


def _send_traffic(url: str, frame: pd.DataFrame) -> dict[str, list[str]]:
    """The frame's rows as ``records`` in batches of 50, all answered by v1; the true
    labels by request id."""
    labels: dict[str, list[str]] = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        for start in range(0, len(frame), 50):
            batch = frame.iloc[start : start + 50]
            records = batch.drop(columns=["churn"]).to_dict("records")
            answer = client.post("/predict", json={"records": records})
            assert answer.status_code == 200, answer.text
            assert answer.json()["version"] == 1
            labels[answer.json()["request_id"]] = batch["churn"].tolist()
    return labels


def _answering_version(url: str, record: dict[str, Any]) -> int:
    return httpx.post(f"{url}/predict", json={"records": [record]}, timeout=30).json()["version"]


def test_drift_retrain_replay_promote(tmp_path: Path) -> None:
    root = tmp_path / "experiments"
    env = {"MLKIT_EXPERIMENTS": str(root), "WANDB_MODE": "disabled"}
    old, new, labels_file = tmp_path / "old.csv", tmp_path / "new.csv", tmp_path / "labels.json"
    churn_frame(400, seed=0).to_csv(old, index=False)
    churn_frame(400, seed=1, shifted=True).to_csv(new, index=False)
    quick = ("-p", "epochs", "4", "-p", "lr", "0.01", "-p", "hidden", "16")
    _cli(env, "run", "templates/classify.ipynb", "-q", "--tracking", "disabled",
         "-p", "dataset", str(old), "-p", "target", "churn", *quick)  # fmt: skip
    (first_run,) = root.glob("classify/runs/*")
    _cli(env, "model", "register", first_run.name, "--name", "churn", "--tracking", "disabled")
    _cli(env, "model", "promote", "churn", "v1", "--tracking", "disabled")

    server, url = start_server(root, "churn", "--follow-every", str(FOLLOW_S))
    try:
        # Shifted traffic answered by v1, then its true labels come back.
        traffic = churn_frame(300, seed=2, shifted=True)
        labels_file.write_text(json.dumps(_send_traffic(url, traffic)))
        proc = _cli(env, "feedback", "churn", "--labels", str(labels_file))
        assert "stored 6 labels" in proc.stdout

        # The monitor sees the moved column: exit 1, naming it.
        proc = _cli(env, "monitor", "churn", "-q", "--tracking", "disabled", code=1)
        assert "drift/features_drifted = usage" in proc.stdout, proc.stdout

        # Retrained on the new table and promoted on evidence: v2 is clearly better there.
        proc = _cli(env, "retrain", "churn", "--data", str(new), "--promote", "--json",
                    "--tracking", "disabled")  # fmt: skip
        out = json.loads(proc.stdout)
        assert out["version"]["version"] == 2 and out["parent"]["version"] == 1
        assert out["promotion"]["promoted"], out["promotion"]["reason"]
        comparison = out["promotion"]["comparison"]
        assert comparison["candidate"]["version"] == 2 and comparison["current"]["version"] == 1
        assert comparison["difference"]["low"] > 0, comparison
        registry = read_json(root / "registry" / "churn" / "registry.json")
        assert registry["aliases"]["production"] == 2
        event = registry["alias_history"]["production"][-1]
        assert (event["by"], event["parent"], event["from"], event["to"]) == ("retrain", 1, 1, 2)

        # The running server follows the alias: v2 answers, without a restart.
        record = traffic.drop(columns=["churn"]).iloc[0].to_dict()
        wait_until(
            lambda: _answering_version(url, record) == 2,
            timeout=FOLLOW_S + 10,
            message="the server to answer with v2",
        )
        assert server.poll() is None
    finally:
        stop(server)

    # v2 replayed on the traffic v1 answered: better on the labelled requests.
    proc = _cli(env, "replay", "churn:v1", "--candidate", "v2", "--json")
    accuracy = json.loads(proc.stdout)["accuracy"]
    assert accuracy["n"] == 300
    assert accuracy["candidate"]["ci95"][0] > accuracy["production"]["ci95"][1], accuracy

    # The retrained run reproduces exactly (CPU).
    proc = _cli(env, "reproduce", out["run"]["id"], "-q", "--tracking", "disabled")
    assert "metrics reproduced exactly" in proc.stdout, proc.stdout


# The template's demo on the bundled digits: v1 learns the old pixels, the new rows are the same
# kind of digits with inverted intensities, and the loop retrains and promotes on them.
def test_template_demo_on_digits(exp_root: Path, tmp_path: Path) -> None:
    executed = tmp_path / "retrain.ipynb"
    papermill.execute_notebook(
        ROOT / "templates" / "retrain.ipynb",
        executed,
        parameters={"demo": "digits"},
        cwd=ROOT / "templates",
        progress_bar=False,
        kernel_name="python3",
    )
    cells = json.loads(executed.read_text(encoding="utf-8"))["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error" or o.get("name") == "stderr"]
    printed = "".join("".join(o["text"]) for o in outputs if o.get("name") == "stdout")
    assert "demo: digits-demo v1 serves 300 digits drawn in inverted intensities" in printed
    assert "predictions drifted: True" in printed, printed
    assert "digits-demo v2 (candidate) retrained from v1" in printed, printed
    assert "promoted: accuracy of v2 (candidate)" in printed, printed

    (run_dir,) = exp_root.glob("retrain/runs/*")
    result = read_json(run_dir / "result.json")
    assert result["retrain/drift_detected"] == 1 and result["retrain/version"] == 2
    assert result["retrain/promoted"] == 1, result
    assert result["retrain/difference_low"] > 0, result
    assert (run_dir / "comparison.png").is_file()

    # Old and new tables are 64 pixel columns and the label; the new pixels are inverted.
    scratch = run_dir / "scratch"
    old, new = pd.read_csv(scratch / "old.csv"), pd.read_csv(scratch / "new.csv")
    assert list(old.columns) == list(new.columns) and len(old.columns) == 65
    assert old.columns[-1] == "label" and set(new["label"]) == set(range(10))
    assert old["pixel_0_0"].eq(0).all() and new["pixel_0_0"].eq(16).all()

    # The demo's registry is in the run's scratch folder, never in the user's.
    registry = read_json(scratch / "experiments" / "registry" / "digits-demo" / "registry.json")
    assert registry["aliases"]["production"] == 2
    assert not (exp_root / "registry").exists()
