"""A/B traffic splitting in the model server and the statistics of ``mlkit abtest report``."""

from __future__ import annotations

import json
import random
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from mlkit.errors import ServeError
from mlkit.ops import abtest
from mlkit.ops import stats as opstats
from mlkit.registry import aliases, store
from mlkit.serve.routing import bucket, parse_ab, route
from tests.helpers import fake_run, log_rows, run_cli, start_server, stop

httpx = pytest.importorskip("httpx")


# --ab parses into variants of one model with weights summing to 1; anything else is refused.
def test_parse_ab_and_its_refusals() -> None:
    variants = parse_ab("m:production=0.9, m:v2=0.1")
    assert [(v.name, v.ref, v.weight) for v in variants] == [
        ("m", "production", 0.9),
        ("m", "v2", 0.1),
    ]
    for bad, why in (
        ("m:a=0.5", "at least two"),
        ("m:a=0.5,m:b=0.4", "sum to 1"),
        ("m:a=0.5,n:b=0.5", "one model"),
        ("m:a=0.5,m:a=0.5", "twice"),
        ("m:a=x,m:b=1", "number in (0, 1]"),
        ("m:a=0,m:b=1", "number in (0, 1]"),
        ("m=0.5,m:b=0.5", "NAME:ALIAS=WEIGHT"),
        ("m:a0.5,m:b=0.5", "NAME:ALIAS=WEIGHT"),
    ):
        with pytest.raises(ServeError, match=why.replace("(", r"\(").replace("]", r"\]")):
            parse_ab(bad)


# The split follows the weights: over 2000 client ids, 90/10 lands within 3 points of 90/10,
# and a three-way split within 3 points of each weight; buckets are fixed points in [0, 1).
def test_split_follows_weights() -> None:
    ids = [f"client-{i}" for i in range(2000)]
    assert all(0.0 <= bucket(c) < 1.0 for c in ids)
    counts = Counter(route(c, [0.9, 0.1]) for c in ids)
    assert abs(counts[0] / 2000 - 0.9) < 0.03
    three = Counter(route(c, [0.5, 0.3, 0.2]) for c in ids)
    for i, w in enumerate([0.5, 0.3, 0.2]):
        assert abs(three[i] / 2000 - w) < 0.03
    # no client id: random, still by the weights
    rng = random.Random(0)
    anon = Counter(route(None, [0.9, 0.1], rng) for _ in range(2000))
    assert abs(anon[0] / 2000 - 0.9) < 0.03
    # the same id always routes the same way
    assert all(route(c, [0.9, 0.1]) == route(c, [0.9, 0.1]) for c in ids[:100])


# Wilson interval matches the known value: 81/263 -> [0.2553, 0.3662] (Wilson 1927 /
# Newcombe 1998 worked example), and stays in [0, 1] at the edges.
def test_wilson_interval_known_value() -> None:
    low, high = opstats.wilson_interval(81, 263)
    assert low == pytest.approx(0.2553, abs=5e-4)
    assert high == pytest.approx(0.3662, abs=5e-4)
    low, high = opstats.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=5e-4)
    assert opstats.wilson_interval(0, 0) == (0.0, 1.0)


# The two-proportion test: a clear difference gives p < 0.01, identical variants p > 0.05,
# and the known value 0.5 vs 0.6 at n=500 each (z = 3.18, p = 0.0015).
def test_two_proportion_test_on_synthetic_counts() -> None:
    z, p = opstats.two_proportion_test(800, 1000, 900, 1000)
    assert p < 0.01 and z > 0
    z, p = opstats.two_proportion_test(450, 500, 450, 500)
    assert p > 0.05 and z == 0
    z, p = opstats.two_proportion_test(250, 500, 300, 500)
    assert z == pytest.approx(3.1782, abs=1e-3) and p == pytest.approx(0.00148, abs=5e-5)
    stats = abtest.compare([("a", 1, 1000, 800), ("b", 2, 1000, 900)], metric="error_rate")
    assert stats[0].z is None and stats[0].rate == pytest.approx(0.2)
    assert stats[1].rate == pytest.approx(0.1) and stats[1].p_value < 0.01


@pytest.fixture
def ab_model(exp_root: Path) -> Path:
    """m v1 (alias production) and m v2 (alias candidate): tiny 4-feature linear models."""
    store.register(fake_run(exp_root), "m")
    store.register(fake_run(exp_root), "m")
    aliases.promote("m", "v1", alias="production")
    aliases.promote("m", "v2", alias="candidate")
    return exp_root


# Stickiness against a real uvicorn: each client id gets the same variant on every request,
# each log row records the variant and the version that answered, /metadata lists the
# variants, and abtest report joins the log with a labels file and exits 0.
def test_sticky_variants_logged_and_reported(ab_model: Path, tmp_path: Path) -> None:
    proc, url = start_server(ab_model, "", "--ab", "m:production=0.5,m:candidate=0.5")
    try:
        meta = httpx.get(f"{url}/metadata").json()
        assert [(a["variant"], a["weight"], a["version"]) for a in meta["ab"]] == [
            ("production", 0.5, 1),
            ("candidate", 0.5, 2),
        ]
        body = {"input": [0.5, -1.0, 2.0, 0.0]}
        seen: dict[str, set[tuple[str, int]]] = {}
        answers: dict[str, tuple[str, int]] = {}
        with httpx.Client(base_url=url, timeout=10) as client:
            for i in range(200):
                cid = f"client-{i % 20}"
                r = client.post("/predict", json=body, headers={"X-Client-ID": cid})
                assert r.status_code == 200
                data = r.json()
                assert r.headers["X-Variant"] == data["variant"]
                seen.setdefault(cid, set()).add((data["variant"], data["version"]))
                answers[data["request_id"]] = (data["variant"], data["version"])
            anon = client.post("/predict", json=body).json()
            assert anon["variant"] in ("production", "candidate")
    finally:
        stop(proc)
    assert all(len(v) == 1 for v in seen.values()), seen
    assert {next(iter(v)) for v in seen.values()} == {("production", 1), ("candidate", 2)}
    rows = {
        r["request_id"]: r for r in log_rows(ab_model / "registry" / "m" / "predictions.sqlite")
    }
    for rid, (variant, version) in answers.items():
        assert (rows[rid]["variant"], rows[rid]["version"]) == (variant, version)

    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\n" + "".join(f"{rid},0\n" for rid in answers))
    env = {"MLKIT_EXPERIMENTS": str(ab_model)}
    proc = run_cli("abtest", "report", "m", "--labels", str(labels), env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0].split()[:4] == ["variant", "version", "n", "accuracy"]
    assert out[2].split()[:3] == [
        "production",
        "v1",
        str(sum(v[0] == "production" for v in answers.values())),
    ]
    assert "control" in out[2]


# A log created before the variant column gets it on open (old rows read as null), and the
# report refuses labels it cannot join, exit 2 with a clear message.
def test_old_log_gains_variant_column_and_report_refusals(tmp_path: Path) -> None:
    from mlkit.serve import predlog

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    cols = ", ".join(f"{c} TEXT" for c, _, _ in predlog.COLUMNS if c != "variant")
    conn.execute(f"CREATE TABLE predictions (id INTEGER PRIMARY KEY, {cols})")
    conn.execute("INSERT INTO predictions (request_id, role) VALUES ('old', 'primary')")
    conn.commit()
    conn.close()
    log = predlog.PredictionLog(f"sqlite:///{path}")
    log.write({"request_id": "new", "role": "primary", "variant": "a", "version": 1})
    rows = log.rows()
    log.close()
    assert [(r["request_id"], r["variant"]) for r in rows] == [("old", None), ("new", "a")]

    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"nope": 1}))
    proc = run_cli("abtest", "report", "m", "--labels", str(labels), "--log", f"sqlite:///{path}")
    assert proc.returncode == 2 and "No labelled A/B rows" in proc.stderr
    proc = run_cli("serve", "m:production", "--ab", "m:a=0.7,m:b=0.7")
    assert proc.returncode == 2 and "exactly one of" in proc.stderr
    proc = run_cli("serve", "--ab", "m:a=0.7,m:b=0.7")
    assert proc.returncode == 2 and "sum to 1" in proc.stderr
