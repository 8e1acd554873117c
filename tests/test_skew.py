"""``mlkit skew``: the primary's and the shadow's logged answers, joined by request id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlkit import cli, record_store
from mlkit.errors import StateError
from mlkit.ops import skew
from mlkit.registry import aliases, store
from mlkit.serve import predlog
from tests.helpers import fake_run, wait_until

CLASSES = ["cat", "dog", "owl"]


@pytest.fixture
def served(exp_root: Path) -> Path:
    """Model m: v1 (production) and v2, 4 features, 3 classes; nothing logged yet."""
    store.register(fake_run(exp_root), "m")
    store.register(fake_run(exp_root), "m")
    aliases.promote("m", "v1", root=exp_root)
    return exp_root


def answer(index: int, p_top: float = 0.8) -> dict[str, Any]:
    probs = [(1 - p_top) / 2] * 3
    probs[index] = p_top
    return {"class": CLASSES[index], "index": index, "probabilities": probs}


def row(rid: str, role: str, version: int, output: Any, body: Any = None) -> dict[str, Any]:
    return {
        "request_id": rid,
        "time": "2025-01-01T00:00:00+00:00",
        "role": role,
        "model": "m",
        "version": version,
        "sha256": "0" * 64,
        "status": 200 if output is not None else 500,
        "latency_ms": 1.0,
        "n": 1,
        "input": body,
        "output": output,
    }


def write_log(root: Path, rows: list[dict[str, Any]], name: str = "m") -> None:
    log = predlog.open_log(name, root=root)
    try:
        log.write_many(rows)
    finally:
        log.close()


def planted_log(root: Path, n: int, p_flip: float, seed: int = 0) -> dict[str, Any]:
    """``n`` single-input requests answered by v1; the shadow v2 turns every cat into a dog,
    and the primary answers cat with probability ``p_flip``: the planted disagreement rate."""
    rng = np.random.default_rng(seed)
    rows, inputs, confusion = [], {}, np.zeros((3, 3), dtype=int)
    for i in range(n):
        cls = 0 if rng.random() < p_flip else int(rng.integers(1, 3))
        flipped = 1 if cls == 0 else cls
        confusion[cls, flipped] += 1
        x = rng.normal(size=4).round(3).tolist()
        rid = f"r{i:04d}"
        inputs[rid] = x
        # the shadow is less sure of some cats than of others: the ranking is checkable
        shadow_answer = answer(flipped)
        if cls == 0:
            shadow_answer["probabilities"][0] = round(0.01 + 0.001 * (i % 50), 4)
        rows.append(row(rid, "primary", 1, {"prediction": answer(cls)}, {"input": x}))
        rows.append(row(rid, "shadow", 2, {"predictions": [shadow_answer]}))
    write_log(root, rows)
    return {"confusion": confusion, "inputs": inputs, "rows": rows}


# A shadow that flips one class reports the planted rate inside its 95% interval, the exact
# confusion table, and the flipped examples the shadow was least sure of, with their inputs.
def test_planted_disagreement_rate_is_found(served: Path) -> None:
    planted = planted_log(served, 800, p_flip=0.15)
    report = skew.skew("m", window=800)
    confusion = planted["confusion"]
    assert report["task"] == "classification" and report["n"] == 800
    assert report["confusion"] == confusion.tolist()
    assert report["classes"] == CLASSES
    assert report["disagreements"] == confusion[0, 1] == confusion[0].sum()
    low, high = report["ci95"]
    assert low < 0.15 < high and low < report["rate"] < high
    assert high - low < 0.06, "800 examples give an interval about 5 points wide"
    assert report["shadows"] == ["m:v2"] and report["versions"] == [1]
    largest = report["largest"]
    assert len(largest) == 10
    support = [r["shadow_p_of_primary_class"] for r in largest]
    assert support == sorted(support) and support[0] == pytest.approx(0.01)
    for r in largest:
        assert (r["primary"], r["shadow"]) == ("cat", "dog")
        assert r["input"] == planted["inputs"][r["request_id"]]
    # the record: the report, the heatmap, the headline numbers, listed as a completed run
    path = Path(report["path"])
    assert json.loads((path / "skew.json").read_text())["confusion"] == confusion.tolist()
    assert (path / "skew.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = record_store.load_run(path)
    assert run["status"] == "completed" and run["experiment"] == "skew-m"
    assert run["result"]["skew/rate"] == report["rate"]
    assert run["params"]["window"] == 800


# The window is the newest examples both answered: a batch counts one per example, and
# requests the shadow dropped or failed on are counted, never paired.
def test_window_takes_newest_pairs_and_counts_the_unpaired(served: Path) -> None:
    rows = []
    for i in range(6):
        body = {"inputs": [[i, 0, 0, 0], [i, 1, 0, 0]]}
        rows.append(row(f"b{i}", "primary", 1, {"predictions": [answer(0), answer(1)]}, body))
        if i == 4:
            rows.append(row(f"b{i}", "shadow", 2, None))  # the shadow failed on this one
        elif i != 3:  # b3: dropped by the shadow, no row at all
            rows.append(row(f"b{i}", "shadow", 2, {"predictions": [answer(0), answer(2)]}))
    write_log(served, rows)
    report = skew.skew("m", window=3)
    assert report["n"] == 3 and report["requests"] == 2
    assert report["unpaired"] == {"no_shadow_row": 1, "shadow_failed": 1}
    assert report["disagreements"] == 2  # the second example of b5 and of b2
    assert {(r["request_id"], r["example"]) for r in report["largest"]} == {("b5", 1), ("b2", 1)}
    assert {tuple(r["input"]) for r in report["largest"]} == {(5, 1, 0, 0), (2, 1, 0, 0)}


# A shadow that answers as the primary does reports no disagreement, and the check passes.
def test_identical_shadow_reports_zero_and_exits_0(
    served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = []
    for i in range(200):
        out = {"prediction": answer(i % 3)}
        rows.append(row(f"r{i}", "primary", 1, out, {"input": [i, 0, 0, 0]}))
        rows.append(row(f"r{i}", "shadow", 2, {"predictions": [answer(i % 3)]}))
    write_log(served, rows)
    assert cli.main(["skew", "m", "--max-disagreement", "0.01", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["disagreements"] == 0 and report["rate"] == 0.0 and report["largest"] == []
    # the 95% Wilson interval of 0 of 200: [0, z^2 / (n + z^2)], z = 1.96
    assert report["ci95"] == [0.0, pytest.approx(1.96**2 / (200 + 1.96**2), abs=1e-4)]
    assert not report["crossed"]
    assert report["confusion"] == np.diag([67, 67, 66]).tolist()


# --max-disagreement is the guard's rule: exit 1 only when the interval's lower end is above it.
def test_max_disagreement_fails_only_when_the_lower_end_is_above(
    served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    planted_log(served, 400, p_flip=0.2)
    assert cli.main(["skew", "m:production", "--max-disagreement", "0.1"]) == 1
    out = capsys.readouterr().out
    assert "CROSSED" in out and "lower end above 0.1" in out and "cat -> dog" in out
    report = skew.skew("m", window=400)
    low = report["ci95"][0]
    assert low < 0.2 < report["ci95"][1]
    # a bound just under the lower end fails, one just above passes: no other rule decides
    assert cli.main(["skew", "m", "--max-disagreement", f"{low - 0.001:.4f}"]) == 1
    assert cli.main(["skew", "m", "--max-disagreement", f"{low + 0.001:.4f}"]) == 0
    assert "lower end not above" in capsys.readouterr().out


# Regression: the mean difference and the largest absolute ones with their inputs; with a
# tolerance the share beyond it is a rate that --max-disagreement can check.
def test_regression_differences(exp_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store.register(fake_run(exp_root, n_outputs=1), "r")
    store.register(fake_run(exp_root, n_outputs=1), "r")
    aliases.promote("r", "v1", root=exp_root)
    rows = []
    for i in range(100):
        shift = {7: -3.0, 42: 2.0}.get(i, 0.5)
        body = {"input": [i, -i, 0, 1]}
        primary = row(f"q{i}", "primary", 1, {"prediction": {"value": float(i)}}, body)
        shadow = row(f"q{i}", "shadow", 2, {"predictions": [{"value": i + shift}]})
        rows += [{**primary, "model": "r"}, {**shadow, "model": "r"}]
    write_log(exp_root, rows, name="r")
    report = skew.skew("r", top=2)
    assert report["task"] == "regression" and report["n"] == 100
    assert report["mean_difference"] == pytest.approx((98 * 0.5 - 3.0 + 2.0) / 100)
    assert report["mean_abs_difference"] == pytest.approx((98 * 0.5 + 3.0 + 2.0) / 100)
    assert report["max_abs_difference"] == pytest.approx(3.0)
    assert [(r["request_id"], r["difference"]) for r in report["largest"]] == [
        ("q7", pytest.approx(-3.0)),
        ("q42", pytest.approx(2.0)),
    ]
    assert report["largest"][0]["input"] == [7, -7, 0, 1]
    assert report.get("rate") is None and not report["crossed"]
    assert (Path(report["path"]) / "skew.png").exists()
    # a rate needs a tolerance: without one the check is refused (exit 2), with one it runs
    assert cli.main(["skew", "r", "--max-disagreement", "0.01"]) == 2
    assert "--tolerance" in capsys.readouterr().err
    checked = skew.skew("r", tolerance=1.0, max_disagreement=0.2)
    assert checked["disagreements"] == 2 and checked["n"] == 100 and not checked["crossed"]
    assert cli.main(["skew", "r", "--tolerance", "0.1", "--max-disagreement", "0.5"]) == 1


# No shadow in the log, an empty window, no log at all: exit 2 with the command that fixes it.
def test_no_shadow_or_empty_window_exits_2(
    served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["skew", "m"]) == 2
    assert "mlkit serve m --shadow" in capsys.readouterr().err  # no log file yet
    body = {"input": [0.0] * 4}
    rows = [row(f"r{i}", "primary", 1, {"prediction": answer(0)}, body) for i in range(5)]
    write_log(served, rows)
    assert cli.main(["skew", "m"]) == 2
    err = capsys.readouterr().err
    assert "holds no shadow answers" in err and "mlkit serve m:production --shadow m:ALIAS" in err
    with pytest.raises(StateError, match="no shadow answers"):
        skew.skew("m")
    # shadow answers exist, but production now points at v2, which answered nothing
    write_log(served, [row("r0", "shadow", 2, {"predictions": [answer(1)]})])
    aliases.promote("m", "v2", root=served)
    assert cli.main(["skew", "m"]) == 2
    err = capsys.readouterr().err
    assert "window is empty" in err and "(v2, what m:production points to now)" in err
    assert "mlkit skew m:vN" in err
    assert cli.main(["skew", "m:v1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["disagreements"] == 1


# End to end: a real server with a real shadow, v2 being v1 with its first two classes
# swapped, so the shadow disagrees exactly on the examples the primary calls class 0 or 1.
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_real_shadow_that_swaps_two_classes(exp_root: Path) -> None:
    from fastapi.testclient import TestClient
    from safetensors.torch import load_file, save_file

    from mlkit.serve import app as serve_app

    first = fake_run(exp_root)
    store.register(first, "m")
    swapped = fake_run(exp_root)
    weights = load_file(str(first / "model.safetensors"))
    for key, tensor in weights.items():
        if tensor.shape[0] == 3:  # the output layer's rows: classes 0 and 1 traded
            weights[key] = tensor[[1, 0, 2]].contiguous()
    save_file(weights, str(swapped / "model.safetensors"))
    store.register(swapped, "m")
    aliases.promote("m", "v1", root=exp_root)
    app = serve_app.create_app("m", "production", shadow="m:v2", root=exp_root)
    log = app.state.server.log
    rng = np.random.default_rng(1)
    predicted: list[int] = []
    with TestClient(app) as client:
        for _ in range(40):
            body = {"inputs": rng.normal(size=(5, 4)).round(3).tolist()}
            answers = client.post("/predict", json=body).json()["predictions"]
            predicted += [p["index"] for p in answers]
        wait_until(lambda: len(log.rows(role="shadow")) == 40, 10, 0.02, "40 shadow rows")
    report = skew.skew("m", window=200)
    counts = np.bincount(predicted, minlength=3)
    assert report["n"] == 200 and report["disagreements"] == counts[0] + counts[1]
    assert report["confusion"] == [[0, counts[0], 0], [counts[1], 0, 0], [0, 0, counts[2]]]
