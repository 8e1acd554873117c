"""``mlkit replay``: a candidate version scored offline on production's logged traffic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlkit import cli, record_store
from mlkit.errors import ParameterError, StateError
from mlkit.ops import replay
from mlkit.ops.stats import wilson_interval
from mlkit.registry import aliases, loading, store
from mlkit.serve import predlog
from tests.helpers import fake_run


def swapped_copy(root: Path, run: Path, order: list[int]) -> Path:
    """A run whose weights are ``run``'s with the output layer's rows put in ``order``."""
    from safetensors.torch import load_file, save_file

    copy = fake_run(root)
    weights = load_file(str(run / "model.safetensors"))
    for key, tensor in weights.items():
        if tensor.shape[0] == len(order):  # the output layer: class i answers as order[i]
            weights[key] = tensor[order].contiguous()
    save_file(weights, str(copy / "model.safetensors"))
    return copy


@pytest.fixture
def served(exp_root: Path) -> Path:
    """Model m, 4 features, 3 classes: v1 (production), v2 = v1 with classes 0 and 1 traded,
    v3 = v1's very weights (alias ``same``); nothing logged yet."""
    import torch  # fake_run draws v1's weights from torch's generator

    torch.manual_seed(0)  # a v1 that answers every class often enough to plant a rate
    first = fake_run(exp_root)
    store.register(first, "m")
    store.register(swapped_copy(exp_root, first, [1, 0, 2]), "m")
    store.register(swapped_copy(exp_root, first, [0, 1, 2]), "m")
    aliases.promote("m", "v1", root=exp_root)
    aliases.promote("m", "v3", alias="same", root=exp_root)
    return exp_root


def row(rid: str, output: Any, body: Any, *, version: int = 1, model: str = "m") -> dict:
    return {
        "request_id": rid,
        "time": "2025-01-01T00:00:00+00:00",
        "role": "primary",
        "model": model,
        "version": version,
        "sha256": "0" * 64,
        "status": 200 if output is not None else 500,
        "latency_ms": 1.0,
        "n": 1,
        "input": json.dumps(body),
        "output": output,
    }


def write_log(root: Path, rows: list[dict], labels: dict | None = None, name: str = "m") -> None:
    log = predlog.open_log(name, root=root)
    try:
        log.write_many(rows)
        if labels:
            log.add_feedback(labels, "test")
    finally:
        log.close()


def production_log(root: Path, n: int, p_class0: float, seed: int = 0) -> dict[str, Any]:
    """``n`` single-input requests with v1's real answers: class 0 with probability
    ``p_class0``, class 2 otherwise. v2 answers 1 wherever v1 answered 0: the planted rate."""
    production = loading.load_model("m", "v1", root=root)
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=(4000, 4)).round(3)
    by_class = np.array([a["index"] for a in loading.score(production, pool.astype(np.float32))])
    zeros, twos = pool[by_class == 0], pool[by_class == 2]
    assert len(zeros) > 50 and len(twos) > 50, "the pool holds both classes"
    rows, classes = [], []
    for i in range(n):
        source = zeros if rng.random() < p_class0 else twos
        x = source[rng.integers(len(source))].tolist()
        answer = loading.score(production, np.asarray([x], dtype=np.float32))[0]
        classes.append(answer["index"])
        rows.append(row(f"r{i:04d}", {"prediction": answer}, {"input": x}))
    return {"rows": rows, "classes": classes}


# A candidate with production's very weights reports no disagreement, and the command exits 0.
def test_candidate_equal_to_production_reports_zero(
    served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    planted = production_log(served, 120, p_class0=0.5)
    write_log(served, planted["rows"])
    assert cli.main(["replay", "m", "--candidate", "same", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["candidate"] == "m:v3" and report["version"] == 1
    assert report["n"] == 120 and report["requests"] == 120
    assert report["disagreements"] == 0 and report["rate"] == 0.0 and report["largest"] == []
    assert report["ci95"] == [0.0, pytest.approx(1.96**2 / (120 + 1.96**2), abs=1e-4)]
    assert report["accuracy"]["n"] == 0  # no labels stored
    latency = report["latency"]
    assert latency["requests"] == 120 and 0 < latency["median_ms"] <= latency["p99_ms"]
    assert cli.main(["replay", "m:production", "--candidate", "v3"]) == 0
    out = capsys.readouterr().out
    assert "m:v3 replayed on 120 examples" in out and "disagreement 0/120" in out
    assert "no labelled examples" in out


# A candidate that turns one class into another reports the planted rate inside its 95%
# interval, the exact confusion table, and a completed record with its figure.
def test_flipped_class_reports_the_planted_rate(served: Path) -> None:
    planted = production_log(served, 600, p_class0=0.2)
    write_log(served, planted["rows"])
    report = replay.replay("m", "v2", window=500)
    class0 = sum(c == 0 for c in planted["classes"][-500:])
    assert report["n"] == 500 and report["disagreements"] == class0
    low, high = report["ci95"]
    assert low < 0.2 < high and high - low < 0.08
    assert report["confusion"] == [[0, class0, 0], [0, 0, 0], [0, 0, 500 - class0]]
    assert all((r["primary"], r["shadow"]) == ("0", "1") for r in report["largest"])
    newest = {r["request_id"] for r in planted["rows"][-500:]}
    assert {r["request_id"] for r in report["largest"]} <= newest
    path = Path(report["path"])
    assert json.loads((path / "replay.json").read_text())["disagreements"] == class0
    assert (path / "replay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = record_store.load_run(path)
    assert run["status"] == "completed" and run["experiment"] == "replay-m"
    assert run["result"]["replay/rate"] == report["rate"]
    assert run["result"]["replay/latency_ms_p99"] == report["latency"]["p99_ms"]
    assert run["params"]["candidate"] == "v2" and run["params"]["window"] == 500


# Labelled requests give both sides' accuracy with Wilson intervals, on the same examples;
# a batch's labels count one per example, a list of the wrong length is counted, not used.
def test_labels_give_both_accuracies(served: Path, capsys: pytest.CaptureFixture[str]) -> None:
    planted = production_log(served, 200, p_class0=0.3, seed=1)
    rows, classes = planted["rows"], planted["classes"]
    production = loading.load_model("m", "v1", root=served)
    batch = np.random.default_rng(2).normal(size=(3, 4)).round(3).tolist()
    answers = loading.score(production, np.asarray(batch, dtype=np.float32))
    rows.append(row("batch", {"predictions": answers}, {"inputs": batch}))
    rows.append(row("short", {"predictions": answers}, {"inputs": batch}))
    # every even request labelled with production's class, every 4th with the other one
    labels: dict[str, Any] = {}
    for i in range(0, 200, 2):
        labels[f"r{i:04d}"] = classes[i] if i % 4 else {0: 1, 2: 0}[classes[i]]
    labels["batch"] = [a["index"] for a in answers]
    labels["short"] = [0, 1]
    write_log(served, rows, labels)
    report = replay.replay("m", "v2", window=300)
    accuracy = report["accuracy"]
    assert accuracy["n"] == 100 + 3 and accuracy["unmatched"] == 3
    right_prod = sum(1 for i in range(0, 200, 2) if i % 4) + 3
    flipped_batch = sum(a["index"] in (0, 1) for a in answers)
    right_cand = sum(1 for i in range(0, 200, 4) if classes[i] == 0)
    right_cand += sum(1 for i in range(2, 200, 4) if classes[i] == 2) + 3 - flipped_batch
    assert accuracy["production"]["correct"] == right_prod
    assert accuracy["candidate"]["correct"] == right_cand
    assert accuracy["production"]["accuracy"] == pytest.approx(right_prod / 103)
    assert accuracy["candidate"]["ci95"] == list(wilson_interval(right_cand, 103))
    assert cli.main(["replay", "m", "--candidate", "v2", "--window", "300"]) == 0
    assert "accuracy on 103 labelled examples: production" in capsys.readouterr().out


# Regression: differences as in skew, and the MAE of each side on the labelled examples.
def test_regression_mae(exp_root: Path) -> None:
    first = fake_run(exp_root, n_outputs=1)
    store.register(first, "r")
    store.register(fake_run(exp_root, n_outputs=1), "r")
    aliases.promote("r", "v1", root=exp_root)
    production = loading.load_model("r", "v1", root=exp_root)
    candidate = loading.load_model("r", "v2", root=exp_root)
    X = np.random.default_rng(3).normal(size=(40, 4)).round(3).astype(np.float32)
    ours, theirs = loading.score(production, X), loading.score(candidate, X)
    rows = [
        row(f"q{i}", {"prediction": ours[i]}, {"input": X[i].tolist()}, model="r")
        for i in range(40)
    ]
    labels = {f"q{i}": 1.0 for i in range(10)}
    write_log(exp_root, rows, labels, name="r")
    report = replay.replay("r", "v2", top=2)
    diff = np.array([b["value"] - a["value"] for a, b in zip(ours, theirs, strict=True)])
    assert report["task"] == "regression" and report["n"] == 40
    assert report["mean_difference"] == pytest.approx(diff.mean(), abs=1e-5)
    accuracy = report["accuracy"]
    mae = [np.mean([abs(side[i]["value"] - 1.0) for i in range(10)]) for side in (ours, theirs)]
    assert accuracy["n"] == 10
    assert accuracy["production"]["mae"] == pytest.approx(mae[0], abs=1e-5)
    assert accuracy["candidate"]["mae"] == pytest.approx(mae[1], abs=1e-5)
    assert (Path(report["path"]) / "replay.png").exists()


# Bad input exits 2 with the fix: no log, an empty window, a candidate that does not exist,
# a candidate whose input schema is not production's.
def test_bad_input_exits_2(served: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["replay", "m", "--candidate", "v2"]) == 2
    assert "No prediction log" in capsys.readouterr().err
    failed = [row(f"e{i}", None, {"input": [0.0] * 4}) for i in range(3)]
    write_log(served, failed)
    assert cli.main(["replay", "m", "--candidate", "v2"]) == 2
    err = capsys.readouterr().err
    assert "window is empty" in err and "mlkit replay m:vN" in err
    with pytest.raises(StateError, match="window is empty"):
        replay.replay("m", "v2", root=served)
    write_log(served, production_log(served, 20, p_class0=0.5)["rows"])
    assert cli.main(["replay", "m", "--candidate", "nope"]) == 2
    assert "has no alias 'nope'" in capsys.readouterr().err
    assert cli.main(["replay", "m", "--candidate", "v9"]) == 2
    store.register(fake_run(served, input_shape=(5,)), "m")
    assert cli.main(["replay", "m", "--candidate", "v4"]) == 2
    err = capsys.readouterr().err
    assert "input shape [5]" in err and "production v1 has [4]" in err
    store.register(fake_run(served, n_outputs=4), "m")
    with pytest.raises(ParameterError, match="classes"):
        replay.replay("m", "v5", root=served)
    assert cli.main(["replay", "m", "--candidate", "v2", "--window", "0"]) == 2


# Features sent already scaled are in production's input space: a candidate that scales
# otherwise gets them unscaled by production's scaling and scaled by its own.
def test_scaled_inputs_move_into_the_candidates_space() -> None:
    def model(version: int, mean: float, std: float) -> loading.LoadedModel:
        card = {"data": {"feature_scaling": {"mean": [mean] * 2, "std": [std] * 2}}}
        return loading.LoadedModel("m", version, "", None, card, (2,), "regression")  # type: ignore[arg-type]

    convert = replay._converter(model(1, 1.0, 2.0), model(2, 0.0, 4.0))
    X = convert("inputs", [[0.5, -1.0]])
    # raw = x * 2 + 1 = [2, -1]; the candidate's = raw / 4
    assert X.tolist() == [[0.5, -0.25]]
    assert convert("raw_input", [[2.0, -1.0]]).tolist() == [[0.5, -0.25]]
    same = replay._converter(model(1, 1.0, 2.0), model(2, 1.0, 2.0))
    assert same("input", [[0.5, -1.0]]).tolist() == [[0.5, -1.0]]


# --log postgresql://...: the same replay from a log shared by several servers; other
# models' rows in it are never replayed.
def test_postgres_log(exp_root: Path, pg_url: str) -> None:
    import uuid

    name = f"replay{uuid.uuid4().hex[:8]}"
    first = fake_run(exp_root)
    store.register(first, name)
    store.register(swapped_copy(exp_root, first, [1, 0, 2]), name)
    aliases.promote(name, "v1", root=exp_root)
    production = loading.load_model(name, "v1", root=exp_root)
    X = np.random.default_rng(4).normal(size=(30, 4)).round(3)
    answers = loading.score(production, X.astype(np.float32))
    rows = [
        row(f"{name}-{i}", {"prediction": a}, {"input": x}, model=name)
        for i, (a, x) in enumerate(zip(answers, X.tolist(), strict=True))
    ]
    log = predlog.open_log(name, pg_url)
    try:
        log.write_many(rows)
        log.add_feedback({f"{name}-0": answers[0]["index"]}, "test")
    finally:
        log.close()
    report = replay.replay(name, "v2", log=pg_url, root=exp_root)
    flipped = sum(a["index"] in (0, 1) for a in answers)
    assert report["n"] == 30 and report["disagreements"] == flipped
    assert report["accuracy"]["n"] == 1 and report["accuracy"]["production"]["correct"] == 1
    assert "mlkit-test-only" not in json.dumps(report)  # the password never reaches a record
