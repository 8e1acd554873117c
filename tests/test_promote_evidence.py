"""Promotion on evidence: a retrained candidate against production, on the same rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlkit._io import read_json
from mlkit.registry import comparison
from tests.helpers import run_cli
from tests.test_retrain import train_and_register


def rule_frame(n: int, seed: int, *, flipped: bool = False, shuffled: bool = False):
    """Loan applications where ``default`` is ``income > 50`` (or its opposite, when the
    relation flipped), or that label shuffled across rows, so nothing can be learned."""
    rng = np.random.default_rng(seed)
    income = rng.normal(50, 15, n).round(2)
    label = (income > 50) != flipped
    if shuffled:
        label = rng.permutation(label)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 80, n).astype(float),
            "income": income,
            "purpose": rng.choice(["car", "house", "education"], n),
            "default": np.where(label, "yes", "no"),
        }
    )


@pytest.fixture(scope="module")
def credit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """v1 (production) learned income > 50; tables where that flipped, and of noise."""
    tmp = tmp_path_factory.mktemp("evidence")
    registered = train_and_register(
        tmp, rule_frame(600, seed=0), "-p", "epochs", "3", "-p", "lr", "0.01"
    )
    shifted, noise = tmp / "shifted.csv", tmp / "noise.csv"
    rule_frame(600, seed=1, flipped=True).to_csv(shifted, index=False)
    rule_frame(600, seed=2, shuffled=True).to_csv(noise, index=False)
    return {**registered, "shifted": shifted, "noise": noise}


def _registry(root: Path) -> dict[str, Any]:
    return read_json(root / "registry" / "credit" / "registry.json")


def _retrain(credit: dict[str, Any], data: Path, *args: str):
    return run_cli(
        *("retrain", "credit", "--data", str(data), "--promote", *args),
        *("-q", "--tracking", "disabled"),
        env=credit["env"],
    )


# A candidate trained where the relation flipped is better on its held-out rows (the
# flipped relation): it is promoted, and the history names retrain and the parent version.
@pytest.mark.slow
def test_better_candidate_is_promoted_by_retrain(credit: dict[str, Any]) -> None:
    before = _registry(credit["root"])
    parent = before["aliases"]["production"]
    proc = _retrain(credit, credit["shifted"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = _registry(credit["root"])
    number = max(v["version"] for v in after["versions"])
    assert after["aliases"]["production"] == number != parent
    event = after["alias_history"]["production"][-1]
    assert event["action"] == "promote" and event["by"] == "retrain"
    assert event["parent"] == parent and event["from"] == parent and event["to"] == number
    assert event["comparison"]["metric"] == "accuracy"
    assert event["comparison"]["candidate"] > event["comparison"]["current"]
    assert "promoted: accuracy of" in proc.stdout and "not worse by more than" in proc.stdout


# The comparison beside the candidate holds both metrics with their intervals, the paired
# difference with its interval, the rows they were scored on and the decision.
@pytest.mark.slow
def test_comparison_json_holds_both_metrics_and_the_difference(credit: dict[str, Any]) -> None:
    number = _registry(credit["root"])["aliases"]["production"]
    out = read_json(credit["root"] / "registry" / "credit" / f"v{number}" / "comparison.json")
    assert out["metric"] == "accuracy" and out["rows"]["n"] == 90  # 15% of 600
    for side in ("candidate", "current", "difference"):
        entry = out[side]
        assert entry["low"] <= entry["value"] <= entry["high"], side
    cand, cur = out["candidate"], out["current"]
    assert out["difference"]["value"] == pytest.approx(cand["value"] - cur["value"])
    assert out["difference"]["low"] > 0, "the flipped relation: clearly better"
    assert cur["version"] == 1 and cur["alias"] == "production"
    assert "bootstrap" in out["method"]["difference"]
    assert out["decision"]["promoted"] and out["decision"]["margin"] == 0.01


# A candidate trained on shuffled labels is not promoted: exit 1, the reason names the
# metric, both values and the margin (printed and kept in the history), production stays.
@pytest.mark.slow
def test_candidate_of_shuffled_labels_is_not_promoted(credit: dict[str, Any]) -> None:
    before = _registry(credit["root"])
    proc = _retrain(credit, credit["noise"], "--margin", "0.02")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    after = _registry(credit["root"])
    number = max(v["version"] for v in after["versions"])
    assert after["aliases"]["production"] == before["aliases"]["production"]
    assert after["aliases"]["candidate"] == number
    comparison = read_json(
        credit["root"] / "registry" / "credit" / f"v{number}" / "comparison.json"
    )
    cand, cur = comparison["candidate"]["value"], comparison["current"]["value"]
    event = after["alias_history"]["production"][-1]
    assert event["action"] == "refused" and event["by"] == "retrain" and event["to"] == number
    for reason in (event["reason"], proc.stdout):
        assert "accuracy" in reason and "margin 0.02" in reason
        assert f"{cand:.4f}" in reason and f"{cur:.4f}" in reason
    assert "not promoted:" in proc.stdout
    # The same decision by hand, and a rollback still walks back over the moves alone.
    proc = run_cli(
        *("model", "promote", "credit", f"v{number}", "--evidence", "--tracking", "disabled"),
        env=credit["env"],
    )
    assert proc.returncode == 1 and "margin 0.01" in proc.stdout, proc.stderr
    assert _registry(credit["root"])["aliases"] == after["aliases"]
    proc = run_cli("model", "rollback", "credit", "--tracking", "disabled", env=credit["env"])
    assert proc.returncode == 0, proc.stderr
    assert _registry(credit["root"])["aliases"]["production"] == 1


# --margin is the rule of --promote: alone, or negative, it is refused before any run.
def test_margin_is_checked_before_any_run(tmp_path: Path) -> None:
    env = {"MLKIT_EXPERIMENTS": str(tmp_path / "experiments")}
    proc = run_cli("retrain", "credit", "--data", "x.csv", "--margin", "0.1", env=env)
    assert proc.returncode == 2 and "--promote" in proc.stderr
    proc = run_cli("retrain", "credit", "--data", "x.csv", "--promote", "--margin", "-1", env=env)
    assert proc.returncode == 2 and "--margin must be a number >= 0" in proc.stderr
    proc = run_cli("model", "promote", "credit", "v2", "--evidence", "--force", env=env)
    assert proc.returncode == 2 and "--evidence" in proc.stderr
    assert not (tmp_path / "experiments").exists()


# For MAE lower is better: a candidate whose errors are smaller on the same rows passes on
# the upper end of the difference, one whose errors are larger by more than the margin fails.
def test_mae_is_judged_on_the_upper_end_of_the_difference() -> None:
    rng = np.random.default_rng(0)
    current = np.abs(rng.normal(0, 2.0, 200))
    better = current * 0.5
    for cand, passes in ((better, True), (current + 0.3, False)):
        out = comparison._statistics(cand, current, "regression")
        out.update(
            metric="mae",
            higher_is_better=False,
            rows={"n": 200},
            candidate={"version": 2, **out["candidate"]},
            current={"version": 1, "alias": "production", **out["current"]},
        )
        assert out["candidate"]["low"] <= out["candidate"]["value"] <= out["candidate"]["high"]
        passed, reason = comparison._judge(out, 0.1)
        assert passed is passes, reason
        assert "mae of v2 (candidate)" in reason and "margin 0.1" in reason
