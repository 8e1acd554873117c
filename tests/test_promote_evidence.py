"""Promotion on evidence: a retrained candidate against production, on the same rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlkit._io import read_json
from mlkit.registry import comparison, retrain_steps
from mlkit.serve import predlog
from tests.helpers import run_cli
from tests.test_retrain import _log_row, train_and_register


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


def _traffic_log(path: Path, n: int, *, flipped: bool) -> str:
    """A prediction log of credit v1 answering ``n`` records, labelled by the relation as it
    was (``income > 50``) or as it flipped; its URL."""
    frame = rule_frame(n, seed=3, flipped=flipped)
    labels = frame.pop("default").tolist()
    url = f"sqlite:///{path}"
    log = predlog.open_log("credit", url)
    try:
        log.write_many(
            [_log_row(f"r{i}", {"record": r}, 1) for i, r in enumerate(frame.to_dict("records"))]
        )
        log.add_feedback({f"r{i}": label for i, label in enumerate(labels)}, "test")
    finally:
        log.close()
    return url


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Like ``credit`` but its own: v1 (production) learned income > 50."""
    tmp = tmp_path_factory.mktemp("traffic")
    registered = train_and_register(
        tmp, rule_frame(600, seed=0), "-p", "epochs", "3", "-p", "lr", "0.01"
    )
    shifted = tmp / "shifted.csv"
    rule_frame(600, seed=1, flipped=True).to_csv(shifted, index=False)
    return {**registered, "shifted": shifted, "tmp": tmp}


# Labelled traffic is evidence beside the test split (the default when the log has labels):
# a candidate better on its test split but worse on the traffic production answered is not
# promoted, the reason naming the source it fails on; comparison.json holds both sources.
@pytest.mark.slow
def test_traffic_evidence_must_agree_with_the_test_split(fresh: dict[str, Any]) -> None:
    url = _traffic_log(fresh["tmp"] / "as-was.sqlite", 120, flipped=False)
    proc = _retrain(fresh, fresh["shifted"], "--log", url)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    registry = _registry(fresh["root"])
    number = max(v["version"] for v in registry["versions"])
    assert registry["aliases"]["production"] == 1
    out = read_json(fresh["root"] / "registry" / "credit" / f"v{number}" / "comparison.json")
    assert out["evidence"] == ["test", "traffic"]
    test, traffic = out["sources"]["test"], out["sources"]["traffic"]
    assert test["difference"]["low"] > 0, "better on its own test split"
    assert traffic["rows"] == {"source": "labelled traffic", "n": 120, "left_out": 0}
    assert traffic["difference"]["high"] < 0, "worse on what production answered"
    assert out["rows"] == test["rows"] and out["candidate"] == test["candidate"]
    reason = out["decision"]["reason"]
    assert "of the test split" in reason and "of the labelled traffic" in reason
    assert "fails on labelled traffic" in reason
    assert "labelled traffic" in proc.stdout and "test split" in proc.stdout
    assert f"{traffic['candidate']['value']:.4f}" in proc.stdout
    event = registry["alias_history"]["production"][-1]
    assert event["action"] == "refused" and event["comparison"]["sources"]["traffic"]["rows"] == 120


# Traffic labelled as the relation now is: the candidate passes on both sources and is
# promoted, the reason saying the rule holds on every source used. --evidence traffic
# alone scores on the traffic only; with no labelled traffic it is refused (exit 2).
@pytest.mark.slow
def test_traffic_evidence_that_agrees_promotes(fresh: dict[str, Any]) -> None:
    url = _traffic_log(fresh["tmp"] / "now.sqlite", 120, flipped=True)
    proc = _retrain(fresh, fresh["shifted"], "--log", url, "--evidence", "both")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    registry = _registry(fresh["root"])
    number = registry["aliases"]["production"]
    assert number == max(v["version"] for v in registry["versions"]) != 1
    out = read_json(fresh["root"] / "registry" / "credit" / f"v{number}" / "comparison.json")
    assert out["decision"]["promoted"]
    assert "holds on every source used (test split and labelled traffic)" in proc.stdout
    empty = f"sqlite:///{fresh['tmp'] / 'empty.sqlite'}"
    predlog.open_log("credit", empty).close()
    proc = _retrain(fresh, fresh["shifted"], "--log", empty, "--evidence", "traffic")
    assert proc.returncode == 2 and "--evidence traffic" in proc.stderr, proc.stderr
    assert _registry(fresh["root"])["versions"] == registry["versions"]


# A traffic label reads as a class (by name, or by production's index) or as a value; a
# label that is neither is left out, never guessed.
def test_traffic_labels_read_as_classes_or_values() -> None:
    truth = comparison._truth
    assert truth(1, "classification", ["no", "yes"]) == "yes"
    assert truth("no", "classification", ["no", "yes"]) == "no"
    assert truth([1], "classification", ["no", "yes"]) is None
    assert truth("2.5", "regression", []) == 2.5 and truth("x", "regression", []) is None


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Its own v1 (production), trained on income > 50; the relation flipped, and noise."""
    tmp = tmp_path_factory.mktemp("bounded")
    registered = train_and_register(
        tmp, rule_frame(600, seed=0), "-p", "epochs", "3", "-p", "lr", "0.01"
    )
    shifted, noise = tmp / "shifted.csv", tmp / "noise.csv"
    rule_frame(600, seed=1, flipped=True).to_csv(shifted, index=False)
    rule_frame(600, seed=2, shuffled=True).to_csv(noise, index=False)
    return {**registered, "shifted": shifted, "noise": noise}


def _bound(bounded: dict[str, Any], bound: str) -> None:
    proc = run_cli("model", "bounds", "credit", "--clear", "--set", bound, env=bounded["env"])
    assert proc.returncode == 0, proc.stderr


# A model with bounds: retrain --promote evaluates the candidate's run first, so the gate
# checks its numbers instead of blocking for want of an evaluation; a bound it meets lets it
# through (the history names the evaluation), one it breaks refuses it: exit 1, the reason
# naming the bound (labels shuffled across rows cannot be learned to 0.999, whatever the
# draws of training). --margin 1 keeps the evidence out of the way: the gate decides.
@pytest.mark.slow
def test_retrain_evaluates_the_candidate_for_the_gate(bounded: dict[str, Any]) -> None:
    root = bounded["root"]
    _bound(bounded, "test/accuracy>=0.6")
    proc = _retrain(bounded, bounded["shifted"], "--margin", "1", "--sensitive", "purpose")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    registry = _registry(root)
    number = registry["aliases"]["production"]
    assert number == max(v["version"] for v in registry["versions"]) != 1
    event = registry["alias_history"]["production"][-1]
    (evaluation,) = [p for p in root.glob("evaluate/runs/*")]
    assert event["action"] == "promote" and event["evaluation"] == evaluation.name
    info = read_json(evaluation / "run.json")
    assert info["evaluates"] == registry["versions"][-1]["run_id"]
    assert read_json(evaluation / "params.json")["parameters"]["sensitive"] == "purpose"
    assert f"evaluation: {evaluation.name}" in proc.stdout

    _bound(bounded, "test/accuracy>=0.999")
    proc = _retrain(bounded, bounded["noise"], "--margin", "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    after = _registry(root)
    assert after["aliases"]["production"] == number, "production stays"
    refused = max(v["version"] for v in after["versions"])
    event = after["alias_history"]["production"][-1]
    assert event["action"] == "refused" and event["to"] == refused
    for reason in (event["reason"], proc.stdout):
        assert "test/accuracy" in reason and "at least 0.999" in reason
    assert "not promoted:" in proc.stdout
    assert len(list(root.glob("evaluate/runs/*"))) == 2


# --sensitive names a column of the parent's table, and belongs to --promote: refused
# before any run otherwise.
def test_sensitive_is_checked_before_any_run(bounded: dict[str, Any]) -> None:
    runs = sorted(p.name for p in bounded["root"].glob("*/runs/*"))
    proc = _retrain(bounded, bounded["shifted"], "--sensitive", "zodiac")
    assert proc.returncode == 2 and "zodiac" in proc.stderr and "purpose" in proc.stderr
    proc = run_cli(
        *("retrain", "credit", "--data", str(bounded["shifted"]), "--sensitive", "purpose"),
        env=bounded["env"],
    )
    assert proc.returncode == 2 and "--promote" in proc.stderr
    assert sorted(p.name for p in bounded["root"].glob("*/runs/*")) == runs


# The newest labelled records grade the candidate; when they also train it
# (--labels-from-log), the newest fifth is held out of training, so no graded row was learned.
def test_split_traffic_holds_the_graded_records_out_of_training() -> None:
    records = [{"request_id": str(i)} for i in range(1500)]
    train, graded = retrain_steps.split_traffic(records, trains_too=False)
    assert train == [] and graded == records[-retrain_steps.TRAFFIC_ROWS :]
    train, graded = retrain_steps.split_traffic(records[:50], trains_too=True)
    assert graded == records[40:50] and train == records[:40]
    train, graded = retrain_steps.split_traffic(records[:2], trains_too=True)
    assert graded == records[1:2] and train == records[:1]
