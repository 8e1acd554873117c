"""The model server, end to end: a real uvicorn on 127.0.0.1, a real registered run, the log."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mlkit.registry import aliases, loading, store
from tests.helpers import (
    ROOT,
    TEMPLATES,
    fake_run,
    free_port,
    log_rows,
    registered_digits_flat,
    run_cli,
    start_server,
    stop,
    trained_run,
    versions_answering,
    wait_until,
)

httpx = pytest.importorskip("httpx")
TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real run registered twice, v1 promoted to production, served with a token."""
    from mlkit import data

    run = trained_run(tmp_path_factory)
    root = tmp_path_factory.mktemp("serve") / "experiments"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLKIT_EXPERIMENTS", str(root))
        mp.setenv("WANDB_MODE", "disabled")
        store.register(run["path"], "digits")
        store.register(run["path"], "digits")
        aliases.promote("digits", "v1")
        loaded = loading.load_model("digits", "production")
    proc, url = start_server(root, "digits:production", env={"MLKIT_SERVE_TOKEN": TOKEN})
    ds = data.load("digits", seed=0)
    yield {
        "root": root,
        "url": url,
        "proc": proc,
        "loaded": loaded,
        "X": ds.test.X,
        "log": root / "registry" / "digits" / "predictions.sqlite",
    }
    stop(proc)


def malformed(X: Any) -> dict[str, tuple[bytes, int]]:
    """Bodies the server must refuse, with the status each must get."""
    good = X[0].tolist()
    nan = X[0].tolist()
    nan[0][3][4] = float("nan")
    inf = X[0].tolist()
    inf[0][7][7] = float("-inf")
    word = X[0].tolist()
    word[0][1][2] = "seven"
    return {
        "shape": (json.dumps({"inputs": [good[0]]}).encode(), 422),
        "nan": (json.dumps({"inputs": [good, nan]}).encode(), 422),
        "inf": (json.dumps({"input": inf}).encode(), 422),
        "word": (json.dumps({"inputs": [word]}).encode(), 422),
        "not json": (b'{"inputs": [[[', 422),
        "extra field": (json.dumps({"inputs": [good], "debug": True}).encode(), 422),
        "both": (json.dumps({"input": good, "inputs": [good]}).encode(), 422),
        "oversize": (b'{"inputs": [' + b" " * 1_100_000 + b"]}", 413),
    }


# 1000 requests, one in ten malformed: exactly one log row per response with the served
# version, refusals get 422/413 and no prediction, predictions are the model's, and the server
# stays up.
def test_thousand_requests_each_logged_once(served: dict[str, Any]) -> None:
    import torch

    X, url = served["X"], served["url"]
    bad = malformed(X)
    kinds = list(bad)

    def one(i: int) -> tuple[str, int, str, dict[str, Any], str]:
        if i % 10 == 9:
            kind = kinds[(i // 10) % len(kinds)]
            body = bad[kind][0]
        elif i % 3 == 0:
            kind, body = "single", json.dumps({"input": X[i % len(X)].tolist()}).encode()
        else:
            rows = [X[(i + k) % len(X)].tolist() for k in range(1 + i % 4)]
            kind, body = "batch", json.dumps({"inputs": rows}).encode()
        headers = {**AUTH, "Content-Type": "application/json"}
        resp = client.post(f"{url}/predict", content=body, headers=headers)
        return kind, resp.status_code, resp.headers["X-Request-ID"], resp.json(), body.decode()

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(1000)))

    assert len(results) == 1000
    for kind, status, rid, body, _ in results:
        assert body["request_id"] == rid
        expected = bad[kind][1] if kind in bad else 200
        assert status == expected, (kind, body)
        if status != 200:
            assert "prediction" not in body and "predictions" not in body
    nan_error = next(b for k, s, _, b, _ in results if k == "nan")["detail"][0]
    assert nan_error["loc"] == ["body", "inputs", 1, 0, 3, 4] and "finite" in nan_error["msg"]
    word_error = next(b for k, s, _, b, _ in results if k == "word")["detail"][0]
    assert word_error["loc"] == ["body", "inputs", 0, 0, 1, 2]

    rows = {r["request_id"]: r for r in log_rows(served["log"])}
    ours = [rid for _, _, rid, _, _ in results]
    assert len(set(ours)) == 1000 and set(ours) <= set(rows)
    all_ids = [r["request_id"] for r in log_rows(served["log"])]
    assert len(all_ids) == len(set(all_ids)), "one row per response"
    for _kind, status, rid, body, sent in results:
        row = rows[rid]
        assert (row["status"], row["version"], row["role"]) == (status, 1, "primary")
        assert row["sha256"] == served["loaded"].sha256 and row["latency_ms"] > 0
        if status == 200:
            assert json.loads(row["output"]) == {k: body[k] for k in body if "prediction" in k}
            assert row["input"] == sent
        else:
            assert row["output"] is None and row["error"]
            assert row["input"] is None if status == 413 else row["input"] == sent

    single = next((b, s) for k, _, _, b, s in results if k == "single")
    x = torch.tensor(json.loads(single[1])["input"]).unsqueeze(0)
    with torch.inference_mode():
        probs = torch.softmax(served["loaded"].module(x), dim=1)[0]
    assert single[0]["prediction"]["probabilities"] == pytest.approx(probs.tolist(), abs=1e-6)
    assert single[0]["prediction"]["index"] == int(probs.argmax())
    assert served["proc"].poll() is None
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "model": "digits", "version": 1}


# A missing or wrong token gets 401 (logged, no input kept); /metadata needs it too and then
# names the model, version, hash, input shape and classes.
def test_token_required(served: dict[str, Any]) -> None:
    url = served["url"]
    body = {"input": served["X"][0].tolist()}
    answers = [
        httpx.post(f"{url}/predict", json=body),
        httpx.post(f"{url}/predict", json=body, headers={"Authorization": "Bearer wrong"}),
        httpx.post(f"{url}/predict", json=body, headers={"Authorization": TOKEN}),
    ]
    assert [a.status_code for a in answers] == [401, 401, 401]
    assert all(a.headers["WWW-Authenticate"] == "Bearer" for a in answers)
    rows = {r["request_id"]: r for r in log_rows(served["log"])}
    for answer in answers:
        row = rows[answer.headers["X-Request-ID"]]
        assert row["status"] == 401 and row["input"] is None and row["output"] is None
    assert httpx.get(f"{url}/metadata").status_code == 401
    meta = httpx.get(f"{url}/metadata", headers=AUTH).json()
    loaded = served["loaded"]
    assert meta["name"] == "digits" and meta["version"] == 1 and meta["ref"] == "production"
    assert meta["sha256"] == loaded.sha256 and len(meta["sha256"]) == 64
    assert meta["input_shape"] == [1, 8, 8] and meta["classes"] == [str(i) for i in range(10)]
    text = "".join(json.dumps(r) for r in log_rows(served["log"]))
    assert TOKEN not in text and TOKEN not in json.dumps(meta)


# SIGKILL during load: every 2xx response a client received has its row in the log.
def test_sigkill_loses_no_answered_row(served: dict[str, Any], tmp_path: Path) -> None:
    log = tmp_path / "kill.sqlite"
    proc, url = start_server(served["root"], "digits:v2", "--log", f"sqlite:///{log}")
    answered: list[str] = []
    stop_flag = threading.Event()
    body = json.dumps({"inputs": [served["X"][0].tolist(), served["X"][1].tolist()]})

    def load() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop_flag.is_set():
                try:
                    resp = client.post(f"{url}/predict", content=body)
                except httpx.TransportError:
                    return
                if 200 <= resp.status_code < 300:
                    answered.append(resp.headers["X-Request-ID"])

    threads = [threading.Thread(target=load) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(answered) >= 300, 30, 0.01, "300 answered requests")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop_flag.set()
        for t in threads:
            t.join(timeout=10)
        stop(proc)
    assert len(answered) >= 300
    rows = log_rows(log)
    logged = {r["request_id"] for r in rows}
    missing = [rid for rid in answered if rid not in logged]
    assert not missing, f"{len(missing)} answered requests have no log row"
    assert {r["version"] for r in rows} == {2}


# The server refuses to start when the environment lets torch.load unpickle code.
def test_refuses_to_start_without_weights_only(served: dict[str, Any]) -> None:
    env = {"MLKIT_EXPERIMENTS": str(served["root"]), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    proc = run_cli("serve", "digits", env=env, timeout=60)
    assert proc.returncode == 3  # an unsafe setting: its own exit code
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1" in proc.stderr and "Unset it" in proc.stderr


# An unknown model or alias stops `mlkit serve` before it binds, naming the fix.
def test_serve_unknown_model_or_alias(served: dict[str, Any]) -> None:
    env = {"MLKIT_EXPERIMENTS": str(served["root"])}
    proc = run_cli("serve", "nope", env=env, timeout=60)
    assert proc.returncode == 2 and "No registered model 'nope'" in proc.stderr
    proc = run_cli("serve", "digits:canary", env=env, timeout=60)
    assert proc.returncode == 2 and "mlkit model promote digits VERSION" in proc.stderr


# A version whose safetensors was swapped for a weights-only .pt with altered tensors is never
# served under the registered hash: `mlkit serve` refuses it before it binds (exit 3), naming
# the file and the fix.
def test_serve_refuses_swapped_weights(exp_root: Path) -> None:
    import torch
    from safetensors.torch import load_file

    store.register(fake_run(exp_root), "m")
    folder = exp_root / "registry" / "m" / "v1"
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({k: v + 1.0 for k, v in state.items()}, folder / "model.pt")
    port = str(free_port())
    env = {"MLKIT_EXPERIMENTS": str(exp_root)}
    proc = run_cli("serve", "m:v1", "--port", port, env=env, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert str(folder / "model.pt") in proc.stderr and "mlkit model register" in proc.stderr


# `mlkit model --help` and `mlkit serve --help` import neither the server stack nor torch.
def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys, mlkit.cli\n"
        "for argv in (['model', '--help'], ['serve', '--help'], ['model', 'list', '--help']):\n"
        "    try:\n        mlkit.cli.main(argv)\n    except SystemExit:\n        pass\n"
        "heavy = ('torch', 'fastapi', 'uvicorn', 'starlette', 'sqlalchemy', 'wandb')\n"
        "print('HEAVY=' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "NAME[:ALIAS]" in proc.stdout and "promote" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY="


def shadow_app(root: Path, shadow: str | None) -> Any:
    """An in-process app serving m:v1 (a 4-feature linear model), maybe shadowed by m:v2."""
    from mlkit.serve import app as serve_app

    return serve_app.create_app("m", "v1", shadow=shadow, root=root)


def rows_when(log: Any, deadline_s: float = 10, **where: Any) -> list[dict[str, Any]]:
    return wait_until(lambda: log.rows(**where), deadline_s, 0.02, f"log rows where {where}")


@pytest.fixture
def two_versions(exp_root: Path) -> Path:
    store.register(fake_run(exp_root), "m")
    store.register(fake_run(exp_root), "m")
    return exp_root


# A running server follows its alias: a rollback (and a promotion back) reaches it without a
# restart, each answer and its log row name the version that gave it, and a pinned version
# (m:v2) never moves.
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_server_follows_alias_without_restart(two_versions: Path) -> None:
    from fastapi.testclient import TestClient

    from mlkit.serve import app as serve_app

    aliases.promote("m", "v1", root=two_versions)
    aliases.promote("m", "v2", root=two_versions)
    app = serve_app.create_app("m", "production", follow_s=0.05, root=two_versions)
    pinned = serve_app.create_app("m", "v2", follow_s=0.05, root=two_versions)
    with TestClient(app) as client, TestClient(pinned) as pinned_client:
        assert versions_answering(client, 2) == [2]
        aliases.rollback("m", root=two_versions)
        after_rollback = versions_answering(client, 1)
        assert after_rollback[-1] == 1 and set(after_rollback) <= {1, 2}
        assert client.get("/health").json()["version"] == 1
        assert client.get("/metadata").json()["version"] == 1
        assert versions_answering(pinned_client, 1, deadline_s=0.5)[-1] == 2
        aliases.promote("m", "v2", root=two_versions)
        assert versions_answering(client, 2)[-1] == 2
    rows = app.state.server.log.rows(role="primary")
    assert {r["version"] for r in rows} == {1, 2}
    for row in rows:
        assert row["sha256"] == loading.load_model("m", row["version"], root=two_versions).sha256


# A version that takes another input shape is never swapped in: the server says why and keeps
# answering with the version it has.
def test_follow_refuses_another_input_shape(exp_root: Path) -> None:
    from mlkit import errors
    from mlkit.serve import app as serve_app
    from mlkit.serve import predlog

    store.register(fake_run(exp_root), "m")
    store.register(fake_run(exp_root, input_shape=(6,)), "m")
    aliases.promote("m", "v1", root=exp_root)
    server = serve_app.Server(
        loading.load_model("m", "production", root=exp_root),
        predlog.open_log("m", root=exp_root),
        ref="production",
        root=exp_root,
        token=None,
        max_body_bytes=1000,
        max_batch=10,
    )
    assert server.follow() == []
    aliases.promote("m", "v2", root=exp_root)
    with pytest.raises(errors.ServeError, match=r"shape \[6\], not \[4\]; still answering with v1"):
        server.follow()
    assert server.loaded.version == 1
    server.log.close()


# The shadow scores every accepted input after the response: logged under the same request
# id with its own version, never returned; primary responses are those of an unshadowed app.
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_shadow_is_logged_never_returned(two_versions: Path) -> None:
    from fastapi.testclient import TestClient

    body = {"inputs": [[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]]}
    with TestClient(shadow_app(two_versions, None)) as plain:
        expected = plain.post("/predict", json=body).json()["predictions"]
    app = shadow_app(two_versions, "m:v2")
    log = app.state.server.log
    with TestClient(app) as client:
        answer = client.post("/predict", json=body)
        refused = client.post("/predict", json={"inputs": [[1.0]]})
        rid = answer.headers["X-Request-ID"]
        shadow_rows = rows_when(log, role="shadow", request_id=rid)
        assert client.get("/metadata").json()["shadow"]["version"] == 2
    assert answer.status_code == 200 and answer.json()["predictions"] == expected
    assert answer.json()["version"] == 1 and "shadow" not in answer.text
    (row,) = shadow_rows
    assert (row["model"], row["version"], row["status"], row["n"]) == ("m", 2, 200, 2)
    shadow_out = json.loads(row["output"])["predictions"]
    assert shadow_out != expected, "v2 has other weights, so other probabilities"
    assert refused.status_code == 422
    assert not log.rows(role="shadow", request_id=refused.headers["X-Request-ID"])


# A shadow that fails or is slow leaves primary responses unchanged and fast; its failures
# are log rows with status 500.
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
@pytest.mark.parametrize("trouble", ["fails", "slow"])
def test_shadow_trouble_never_touches_primary(two_versions: Path, trouble: str) -> None:
    from fastapi.testclient import TestClient

    body = {"input": [0.5, -1.0, 2.0, 0.0]}
    with TestClient(shadow_app(two_versions, None)) as plain:
        expected = plain.post("/predict", json=body).json()["prediction"]
    app = shadow_app(two_versions, "m:v2")
    shadow = app.state.server.shadow

    def broken(x: Any) -> Any:
        if trouble == "slow":
            time.sleep(0.5)  # the slow shadow under test
            return x[:, :3]
        raise RuntimeError("shadow exploded")

    shadow.loaded.module.forward = broken
    with TestClient(app) as client:
        t0 = time.monotonic()
        answers = [client.post("/predict", json=body) for _ in range(4)]
        elapsed = time.monotonic() - t0
        rows = rows_when(
            app.state.server.log, role="shadow", request_id=answers[0].headers["X-Request-ID"]
        )
    assert all(a.status_code == 200 and a.json()["prediction"] == expected for a in answers)
    assert elapsed < 1.5, "four answers never waited on a 0.5 s shadow each"
    (row,) = rows
    if trouble == "fails":
        assert row["status"] == 500 and "shadow exploded" in row["error"]
    else:
        assert row["status"] == 200


# A shadow whose input shape differs from the primary's could score nothing: refused at start.
def test_shadow_of_another_shape_is_refused(two_versions: Path) -> None:
    from mlkit import errors

    store.register(fake_run(two_versions, input_shape=(5,)), "wide")
    with pytest.raises(errors.ServeError, match="takes inputs of shape"):
        shadow_app(two_versions, "wide:latest")


# With --log postgresql://..., two servers write one table with the SQLite schema; the
# password never appears in what the server shows.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_postgres_log_same_schema(two_versions: Path, pg_url: str) -> None:
    import sqlalchemy as sa
    from fastapi.testclient import TestClient

    from mlkit.serve import app as serve_app
    from mlkit.serve import predlog

    apps = [serve_app.create_app("m", "v1", log_url=pg_url, root=two_versions) for _ in range(2)]
    ids = []
    for app in apps:
        with TestClient(app) as client:
            for body in ({"input": [1.0, 2.0, 3.0, 4.0]}, {"input": [1.0]}):
                ids.append(client.post("/predict", json=body).headers["X-Request-ID"])
            meta = client.get("/metadata").json()
    password = sa.engine.make_url(pg_url).password
    if password:
        assert password not in json.dumps(meta) and "***" in meta["log"]
    log = predlog.PredictionLog(pg_url)
    rows = [r for r in log.rows() if r["request_id"] in ids]
    assert sorted(r["request_id"] for r in rows) == sorted(ids)
    assert sorted(r["status"] for r in rows) == [200, 200, 422, 422]
    sqlite_log = predlog.open_log("m", root=two_versions)
    columns = {
        name: [c["name"] for c in sa.inspect(lg.engine).get_columns(predlog.TABLE)]
        for name, lg in (("pg", log), ("sqlite", sqlite_log))
    }
    assert columns["pg"] == columns["sqlite"]


# On PostgreSQL too the database refuses UPDATE, DELETE and TRUNCATE of both tables, whoever
# connects, and appends still work after the refusal.
@pytest.mark.slow
def test_postgres_log_is_append_only(pg_url: str) -> None:
    import sqlalchemy as sa

    from mlkit.serve import predlog

    log = predlog.PredictionLog(pg_url)
    rid = f"append-only-{os.getpid()}"
    log.write({"request_id": rid, "status": 200, "input": None, "output": None})
    log.add_feedback({rid: 1}, source="test")
    for table in ("predictions", "feedback"):
        for sql in (
            f"UPDATE {table} SET request_id = 'x' WHERE request_id = '{rid}'",
            f"DELETE FROM {table} WHERE request_id = '{rid}'",
            f"TRUNCATE {table}",
        ):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), log.engine.begin() as c:
                c.exec_driver_sql(sql)
    log.write({"request_id": rid, "status": 201, "input": None, "output": None})
    assert [r["status"] for r in log.rows(request_id=rid)] == [200, 201]
    assert log.feedback()[rid] == 1
    log.close()


# A regression model answers values (one per example), the module's own outputs.
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_regression_answers_values(exp_root: Path) -> None:
    import torch
    from fastapi.testclient import TestClient

    from mlkit.serve import app as serve_app

    store.register(fake_run(exp_root, n_outputs=1), "r")
    app = serve_app.create_app("r", "latest")
    rows = [[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    with TestClient(app) as client:
        answer = client.post("/predict", json={"inputs": rows}).json()
        meta = client.get("/metadata").json()
    with torch.inference_mode():
        expected = app.state.server.loaded.module(torch.tensor(rows))[:, 0].tolist()
    assert [p["value"] for p in answer["predictions"]] == pytest.approx(expected, abs=1e-6)
    assert meta["task"] == "regression" and meta["classes"] == []


# The whole path: a sweep, its best trial registered by study name, promoted and served;
# every answer carries that version and has its log row, refusals included.
@pytest.mark.slow
def test_sweep_best_trial_to_served_model(exp_root: Path, tmp_path: Path) -> None:
    from mlkit import data
    from mlkit.sweep import config, driver

    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n")
    cfg = config.prepare(
        TEMPLATES / "classify.ipynb",
        space,
        study="e2e",
        n_trials=2,
        fixed={"epochs": 2, "hidden": "32"},
        tracking="disabled",
    )
    summary = driver.run(cfg, progress=False)
    assert summary.n_complete == 2
    proc = run_cli("model", "register", "--study", "e2e", "--name", "e2e")
    assert proc.returncode == 0, proc.stderr
    assert run_cli("model", "promote", "e2e", "v1").returncode == 0
    card = json.loads((exp_root / "registry" / "e2e" / "v1" / "card.json").read_text())
    assert card["run"]["path"] == summary.best["run_path"]
    assert card["run"]["study"] == "e2e" and card["run"]["trial"] == summary.best["number"]
    X = data.load("digits", seed=0).test.X
    server, url = start_server(exp_root, "e2e")
    try:
        with httpx.Client(timeout=30) as client:
            answers = [
                client.post(f"{url}/predict", json={"input": X[i].tolist()})
                if i % 10
                else client.post(f"{url}/predict", json={"input": X[i].tolist()[0]})
                for i in range(100)
            ]
    finally:
        stop(server)
    rows = {
        r["request_id"]: r for r in log_rows(exp_root / "registry" / "e2e" / "predictions.sqlite")
    }
    assert len(rows) == 100
    for i, answer in enumerate(answers):
        row = rows[answer.headers["X-Request-ID"]]
        assert answer.status_code == row["status"] == (200 if i % 10 else 422)
        assert answer.json()["version"] == row["version"] == 1
        assert (row["output"] is None) == (answer.status_code != 200)


# Raw features in the data's own units are scaled with the training split's statistics from
# the card: the answer is the one the same example gets when sent scaled, the card says so, and
# the monitor's window holds raw and scaled requests alike in the model's input space.
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_raw_inputs_are_scaled_like_training(exp_root: Path) -> None:
    import numpy as np
    from fastapi.testclient import TestClient

    from mlkit import data
    from mlkit.ops import monitor
    from mlkit.serve import app as serve_app

    loaded, ds = registered_digits_flat(exp_root)  # standardised features
    raw = data.load("digits_flat", seed=0, scale=False, check=False).test.X[:6]
    scaled = ds.test.X[:6]
    assert not np.allclose(raw, scaled)
    assert loaded.card["data"]["feature_scaling"]["mean"][10] > 0
    card_md = store.model_dir("digits", exp_root) / "v1" / "card.md"
    assert "raw features (`raw_input`)" in card_md.read_text()
    log = exp_root / "log.sqlite"
    app = serve_app.create_app("digits", "production", log_url=f"sqlite:///{log}", root=exp_root)
    with TestClient(app) as client:
        one = client.post("/predict", json={"raw_input": raw[0].tolist()})
        many = client.post("/predict", json={"raw_inputs": raw[1:].tolist()})
        same = client.post("/predict", json={"inputs": scaled.tolist()})
        both = client.post(
            "/predict", json={"input": scaled[0].tolist(), "raw_input": raw[0].tolist()}
        )
        meta = client.get("/metadata").json()
    assert one.status_code == many.status_code == same.status_code == 200
    expected = same.json()["predictions"]
    got = [one.json()["prediction"], *many.json()["predictions"]]
    assert [p["index"] for p in got] == [p["index"] for p in expected]
    assert np.allclose([p["probabilities"] for p in got], [p["probabilities"] for p in expected])
    assert both.status_code == 422 and meta["raw_inputs"] is True
    window = monitor.window_from_log(log, "digits", last=12, raw_to_inputs=loaded.raw_to_inputs)
    assert np.allclose(window.X, np.concatenate([scaled, scaled]), atol=1e-4)
    unscaled = monitor.window_from_log(log, "digits", last=12)
    assert len(unscaled) == 6, "raw rows are skipped when the scaling is not given"


# Images are not standardised: their card records no scaling, and raw pixels are the inputs.
def test_image_model_takes_raw_pixels_as_they_are(served: dict[str, Any]) -> None:
    import numpy as np

    loaded = served["loaded"]
    assert loaded.card["data"]["feature_scaling"] is None
    assert np.array_equal(loaded.raw_to_inputs(served["X"][:3]), served["X"][:3])


# A card that does not record the scaling refuses raw features with 422 and the fix.
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_raw_inputs_refused_without_recorded_scaling(two_versions: Path) -> None:
    from fastapi.testclient import TestClient

    from mlkit.serve import app as serve_app

    app = serve_app.create_app("m", "v1", root=two_versions)
    with TestClient(app) as client:
        answer = client.post("/predict", json={"raw_input": [1.0, 2.0, 3.0, 4.0]})
    assert answer.status_code == 422
    assert "register the run again" in answer.json()["detail"][0]["msg"]


# No row, no answer: when the log cannot be written the client gets 503 and no prediction, and
# the server keeps answering once the log works again (commits on the loop, and in a thread).
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
@pytest.mark.parametrize("sync", ["normal", "full"])
def test_log_failure_answers_503_without_prediction(
    two_versions: Path, tmp_path: Path, sync: str
) -> None:
    from fastapi.testclient import TestClient

    from mlkit.serve import app as serve_app

    path = tmp_path / "log.sqlite"
    app = serve_app.create_app(
        "m", "v1", log_url=f"sqlite:///{path}", log_sync=sync, root=two_versions
    )
    assert app.state.server.log.sync == sync
    body = {"input": [1.0, 2.0, 3.0, 4.0]}
    with TestClient(app) as client:
        assert client.post("/predict", json=body).status_code == 200
        conn = sqlite3.connect(path)
        conn.execute("ALTER TABLE predictions RENAME TO predictions_away")
        conn.commit()
        refused = client.post("/predict", json=body)
        assert refused.status_code == 503 and "prediction" not in refused.json()
        assert "prediction log unavailable" in refused.json()["detail"]
        assert client.get("/health").status_code == 200
        conn.execute("ALTER TABLE predictions_away RENAME TO predictions")
        conn.commit()
        conn.close()
        again = client.post("/predict", json=body)
        assert again.status_code == 200 and "prediction" in again.json()
    statuses = [r["status"] for r in log_rows(path)]
    assert statuses == [200, 200], "the refused request has no row, the others one each"


# The SQLite log is append-only: the database itself refuses UPDATE and DELETE.
def test_sqlite_log_is_append_only(tmp_path: Path) -> None:
    from mlkit.serve import predlog

    log = predlog.PredictionLog(f"sqlite:///{tmp_path / 'p.sqlite'}")
    log.write({"request_id": "a", "status": 200, "input": {"input": [1.0]}, "output": None})
    log.close()
    conn = sqlite3.connect(tmp_path / "p.sqlite")
    try:
        for sql in ("UPDATE predictions SET status = 500", "DELETE FROM predictions"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(sql)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert log_rows(tmp_path / "p.sqlite")[0]["input"] == '{"input":[1.0]}'


# A server other machines can reach needs a token, or the words --allow-unauthenticated.
def test_serve_on_an_open_host_without_a_token_is_refused(exp_root: Path) -> None:
    no_token = {"MLKIT_SERVE_TOKEN": ""}  # empty counts as unset
    proc = run_cli("serve", "digits", "--host", "0.0.0.0", env=no_token, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "MLKIT_SERVE_TOKEN" in proc.stderr and "--allow-unauthenticated" in proc.stderr
    assert "serving" not in proc.stderr


# Loopback needs no token; an open host passes with a token or when explicitly allowed.
def test_exposure_check_passes_loopback_token_or_explicit_allow() -> None:
    from mlkit.errors import ParameterError
    from mlkit.serve.app import check_exposure

    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        check_exposure(host, token=None)
    check_exposure("0.0.0.0", token=TOKEN)
    check_exposure("0.0.0.0", token=None, allow_unauthenticated=True)
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.org"):
        with pytest.raises(ParameterError, match="MLKIT_SERVE_TOKEN"):
            check_exposure(host, token=None)
