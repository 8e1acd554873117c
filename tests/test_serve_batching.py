"""Adaptive batching in `mlkit serve --batch-max K --batch-wait-ms M`.

Concurrent requests share forward passes, yet each client gets its own answer, request id and
log row, bitwise the answer it gets alone; refusals never join a batch; a failing batch fails
only its own requests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mlkit import errors
from mlkit.registry import aliases, store
from mlkit.serve import app as serve_app
from mlkit.serve import predlog
from tests.helpers import (
    fake_run,
    log_rows,
    registered_digits_flat,
    run_cli,
    start_server,
    stop,
)

httpx = pytest.importorskip("httpx")


def bodies(X: Any, count: int) -> list[bytes]:
    """``count`` bodies: singles, and client-side batches of 2 and 3 examples."""
    out = []
    for i in range(count):
        if i % 3 == 0:
            rows = [X[(i + k) % len(X)].tolist() for k in range(1 + i % 4)]
            out.append(json.dumps({"inputs": rows}).encode())
        else:
            out.append(json.dumps({"input": X[i % len(X)].tolist()}).encode())
    return out


def record_passes(loaded: Any) -> list[int]:
    """The rows of every forward pass ``loaded`` makes from now on."""
    passes: list[int] = []
    forward = loaded.module.forward

    def counted(x: Any) -> Any:
        passes.append(len(x))
        return forward(x)

    loaded.module.forward = counted
    return passes


def post_all(
    app: Any, posts: list[tuple[bytes, dict[str, str]]], *, together: bool
) -> list[httpx.Response]:
    """POST each body to the in-process ``app``: all at once, or one after another."""

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:

            def one(body: bytes, headers: dict[str, str]) -> Any:
                headers = {"Content-Type": "application/json", **headers}
                return client.post("/predict", content=body, headers=headers)

            if together:
                return list(await asyncio.gather(*(one(b, h) for b, h in posts)))
            return [await one(b, h) for b, h in posts]

    return asyncio.run(go())


def answer(response: httpx.Response) -> Any:
    body = response.json()
    return body.get("prediction", body.get("predictions"))


@pytest.fixture
def digits(exp_root: Path) -> Any:
    """digits_flat inputs and a 64-feature model, whose matmul sums in a row-count order."""
    _, ds = registered_digits_flat(exp_root)
    return ds.test.X


# A burst of 20 concurrent requests shares forward passes of K rows, yet each client gets its
# own request id and exactly (bitwise) the answer the same inputs get one by one; each has one
# log row with its input and output, and the chain verifies.
def test_burst_answers_each_client_its_own(digits: Any, exp_root: Path) -> None:
    app = serve_app.create_app("digits", batch_max=8, batch_wait_ms=200, follow_s=0)
    server = app.state.server
    passes = record_passes(server.loaded)
    sent = bodies(digits, 20)
    burst = post_all(app, [(b, {}) for b in sent], together=True)
    burst_passes = list(passes)
    alone = post_all(app, [(b, {}) for b in sent], together=False)
    server.log.close()

    assert [r.status_code for r in burst + alone] == [200] * 40
    assert [answer(r) for r in burst] == [answer(r) for r in alone]
    examples = sum(len(r.json()["predictions"]) if "predictions" in r.json() else 1 for r in burst)
    assert set(burst_passes) == {8} and len(burst_passes) < 20, burst_passes
    assert len(burst_passes) * 8 >= examples
    assert len(passes) - len(burst_passes) == 20, "one by one: each request a pass of its own"
    ids = [r.headers["X-Request-ID"] for r in burst]
    assert len(set(ids)) == 20 and ids == [r.json()["request_id"] for r in burst]

    log = predlog.open_log("digits", root=exp_root)
    rows = {r["request_id"]: r for r in log.rows(role="primary")}
    report = log.verify()[0]
    log.close()
    assert len(rows) == 40 and report.ok and report.verified == 40
    for response, body in zip(burst, sent, strict=True):
        row = rows[response.headers["X-Request-ID"]]
        assert (row["status"], row["version"], row["input"]) == (200, 1, body.decode())
        assert row["latency_ms"] > 0
        assert json.loads(row["output"]) == {
            k: v for k, v in response.json().items() if "pred" in k
        }


# Batched answers agree with an unbatched server's to float32 rounding, with the same class.
def test_batched_answers_match_unbatched(digits: Any) -> None:
    sent = [(b, {}) for b in bodies(digits, 12)]
    plain = serve_app.create_app("digits", follow_s=0)
    unbatched = post_all(plain, sent, together=True)
    plain.state.server.log.close()
    batched_app = serve_app.create_app("digits", batch_max=16, batch_wait_ms=100, follow_s=0)
    batched = post_all(batched_app, sent, together=True)
    batched_app.state.server.log.close()
    for one, other in zip(unbatched, batched, strict=True):
        a, b = answer(one), answer(other)
        a, b = (a, b) if isinstance(a, list) else ([a], [b])
        for p, q in zip(a, b, strict=True):
            assert p["index"] == q["index"]
            assert p["probabilities"] == pytest.approx(q["probabilities"], abs=1e-6)


# A malformed body in a burst gets its 422 (logged) and never reaches the model; the others
# of the burst get 200.
def test_bad_input_refused_outside_the_batch(digits: Any, exp_root: Path) -> None:
    app = serve_app.create_app("digits", batch_max=32, batch_wait_ms=100, follow_s=0)
    passes = record_passes(app.state.server.loaded)
    sent = bodies(digits, 9)
    sent.insert(4, json.dumps({"input": [1.0, 2.0]}).encode())
    responses = post_all(app, [(b, {}) for b in sent], together=True)
    app.state.server.log.close()
    assert [r.status_code for r in responses] == [200] * 4 + [422] + [200] * 5
    assert responses[4].json()["detail"][0]["loc"][:2] == ["body", "input"]
    assert passes == [32], "one batch: the nine good bodies"
    rows = {r["request_id"]: r for r in log_rows(exp_root / "registry/digits/predictions.sqlite")}
    assert [rows[r.headers["X-Request-ID"]]["status"] for r in responses] == [
        r.status_code for r in responses
    ]


# A forward pass that raises fails the requests of its batch (a logged 500 each) and nothing
# else: the next batch is answered and the server stays up.
def test_model_failure_fails_only_its_batch(digits: Any, exp_root: Path) -> None:
    app = serve_app.create_app("digits", batch_max=16, batch_wait_ms=200, follow_s=0)
    module = app.state.server.loaded.module
    forward = module.forward

    def poisoned(x: Any) -> Any:
        if (x[:, 0] == 1234.0).any():
            raise RuntimeError("the model met a poison row")
        return forward(x)

    module.forward = poisoned
    poison = digits[0].tolist()
    poison[0] = 1234.0
    doomed = [json.dumps({"input": poison}).encode(), *bodies(digits, 5)]
    first = post_all(app, [(b, {}) for b in doomed], together=True)
    second = post_all(app, [(b, {}) for b in bodies(digits, 5)], together=True)
    app.state.server.log.close()
    assert [r.status_code for r in first] == [500] * 6
    assert first[0].json()["detail"] == "prediction failed"
    assert [r.status_code for r in second] == [200] * 5
    rows = {r["request_id"]: r for r in log_rows(exp_root / "registry/digits/predictions.sqlite")}
    for response in first:
        row = rows[response.headers["X-Request-ID"]]
        assert row["status"] == 500 and "poison row" in row["error"] and row["output"] is None


# Under an A/B split each version batches its own requests: every answer names the version
# that gave it and equals that version's answer alone.
def test_ab_versions_batch_apart(exp_root: Path) -> None:
    store.register(fake_run(exp_root), "m")
    store.register(fake_run(exp_root), "m")
    aliases.promote("m", "v1", root=exp_root)
    ab = "m:production=0.5,m:v2=0.5"
    batched = serve_app.create_app("m", ab=ab, batch_max=8, batch_wait_ms=200, follow_s=0)
    plain = serve_app.create_app("m", ab=ab, follow_s=0)
    arms = [arm for _, arm in batched.state.server.arms]
    passes = [record_passes(arm) for arm in arms]
    posts = [
        (json.dumps({"input": [i / 3, 1.0 - i, 2.0, float(i)]}).encode(), {"X-Client-ID": f"c{i}"})
        for i in range(16)
    ]
    together = post_all(batched, posts, together=True)
    alone = post_all(plain, posts, together=False)
    for app in (batched, plain):
        app.state.server.log.close()
    assert {r.json()["version"] for r in together} == {1, 2}
    for a, b in zip(together, alone, strict=True):
        assert (a.json()["version"], a.json()["variant"]) == (
            b.json()["version"],
            b.json()["variant"],
        )
        mine, its_own = a.json()["prediction"], b.json()["prediction"]
        assert mine["index"] == its_own["index"]
        assert mine["probabilities"] == pytest.approx(its_own["probabilities"], abs=1e-6)
    assert all(p and len(p) < 16 for p in passes), passes


# Batching is off by default: each request is its own forward pass of its own examples.
def test_off_by_default_one_pass_per_request(digits: Any) -> None:
    app = serve_app.create_app("digits", follow_s=0)
    passes = record_passes(app.state.server.loaded)
    sent = bodies(digits, 6)
    responses = post_all(app, [(b, {}) for b in sent], together=True)
    app.state.server.log.close()
    assert [r.status_code for r in responses] == [200] * 6
    sizes = [len(json.loads(b).get("inputs", [None])) for b in sent]
    assert sorted(passes) == sorted(sizes) and max(sizes) > 1


# A batch size below 1 or a negative wait is refused before the model loads (exit 2).
@pytest.mark.parametrize(
    ("setting", "flag"),
    [({"batch_max": 0}, ["--batch-max", "0"]), ({"batch_wait_ms": -1.0}, ["--batch-wait-ms=-1"])],
)
def test_bad_batching_settings_are_refused(
    exp_root: Path, setting: dict[str, Any], flag: list[str]
) -> None:
    store.register(fake_run(exp_root), "m")
    (name,) = setting
    with pytest.raises(errors.ParameterError, match=name):
        serve_app.create_app("m", "latest", **setting)
    proc = run_cli("serve", "m:latest", "--batch-max", "2", *flag, "--port", "1")
    assert proc.returncode == 2 and name in proc.stderr, proc.stderr


# A real server process under a burst of 20 concurrent clients: each gets its own answer,
# bitwise the one the same input gets alone, and the log holds one row each, chained.
@pytest.mark.slow
def test_real_server_burst(digits: Any, exp_root: Path) -> None:
    proc, url = start_server(
        exp_root, "digits:production", "--batch-max", "8", "--batch-wait-ms", "20"
    )
    sent = bodies(digits, 20)
    post: Callable[[bytes], httpx.Response]
    with httpx.Client(timeout=30) as client:

        def post(body: bytes) -> httpx.Response:
            headers = {"Content-Type": "application/json"}
            return client.post(f"{url}/predict", content=body, headers=headers)

        try:
            with ThreadPoolExecutor(20) as pool:
                burst = list(pool.map(post, sent))
            alone = [post(b) for b in sent]
        finally:
            stop(proc)
    assert [r.status_code for r in burst + alone] == [200] * 40
    assert [answer(r) for r in burst] == [answer(r) for r in alone]
    ids = [r.headers["X-Request-ID"] for r in burst + alone]
    assert len(set(ids)) == 40
    log = predlog.open_log("digits", root=exp_root)
    rows = log.rows(role="primary")
    report = log.verify()[0]
    log.close()
    assert sorted(r["request_id"] for r in rows) == sorted(ids)
    assert report.ok and report.verified == 40
