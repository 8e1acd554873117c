"""The rollback guard: live evidence against the policy, and the alias moved back when it fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlkit._io import now_iso
from mlkit.ops import guard
from mlkit.registry import aliases, store
from mlkit.serve import predlog
from tests.helpers import (
    ROOT,
    fake_run,
    registered_digits_flat,
    run_cli,
    versions_answering,
    wait_until,
)


@pytest.fixture
def live(exp_root: Path) -> Path:
    """Model m with v1 then v2 promoted to production (v2 is live)."""
    store.register(fake_run(exp_root), "m")
    store.register(fake_run(exp_root), "m")
    aliases.promote("m", "v1", root=exp_root)
    aliases.promote("m", "v2", root=exp_root)
    return exp_root


def answer(client: Any, n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for x in rng.normal(size=(n, 4)).tolist():
        resp = client.post("/predict", json={"input": x})
        assert resp.status_code == 200
        out.append(resp.json())
    return out


def label(answers: list[dict[str, Any]], wrong: int) -> dict[str, int]:
    """Labels for the answers: the first ``wrong`` of them contradict the prediction."""
    return {
        a["request_id"]: (a["prediction"]["index"] + (1 if i < wrong else 0)) % 3
        for i, a in enumerate(answers)
    }


def write_rows(root: Path, version: int, statuses: list[int], first: int = 0) -> None:
    log = predlog.open_log("m", root=root)
    for i, status in enumerate(statuses, start=first):
        row = {"request_id": f"r{version}-{i}", "time": now_iso(), "role": "primary"}
        log.write({**row, "model": "m", "version": version, "status": status, "n": 1})
    log.close()


# Wrong answers of the live version beyond the bound roll the alias back to the previous
# version; the running server follows without a restart, the history says why, and the old
# version starts with a clean slate (v2's errors are not counted against v1).
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_error_rate_over_bound_rolls_back_and_server_follows(live: Path) -> None:
    from fastapi.testclient import TestClient

    from mlkit.serve import app as serve_app

    app = serve_app.create_app("m", "production", follow_s=0.05, root=live)
    with TestClient(app) as client:
        answers = answer(client, 60)
        assert {a["version"] for a in answers} == {2}
        app.state.server.log.add_feedback(label(answers, wrong=40), source="test")
        report = guard.check("m", root=live)
        assert report["action"] == "rolled back" and report["to"] == 1
        assert versions_answering(client, 1)[-1] == 1
    error = report["checks"][0]
    assert error["check"] == "error_rate" and error["crossed"]
    assert (error["bad"], error["n"]) == (40, 60) and error["ci95"][0] > 0.2
    assert store.resolve("m", "production", live) == 1
    event = store.show("m", live)["alias_history"]["production"][-1]
    assert event["action"] == "rollback" and event["by"] == "guard"
    assert event["reason"].startswith("error_rate 40/60")
    again = guard.check("m", root=live)
    assert again["version"] == 1 and again["action"] == "none" and not again["crossed"]
    assert again["checks"][0]["n"] == 0
    lines = (store.model_dir("m", live) / "guard.jsonl").read_text().splitlines()
    assert [json.loads(line)["action"] for line in lines] == ["rolled back", "none"]


# Mostly right answers, or too few labels to judge, move nothing; a bound below the observed
# rate moves it only when the Wilson interval's lower end clears the bound.
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_within_bounds_or_thin_evidence_moves_nothing(live: Path) -> None:
    from fastapi.testclient import TestClient

    from mlkit.serve import app as serve_app

    app = serve_app.create_app("m", "production", follow_s=0, root=live)
    with TestClient(app) as client:
        answers = answer(client, 40)
    log = predlog.open_log("m", root=live)
    log.add_feedback(label(answers[:10], wrong=10), source="test")  # 10/10 wrong, too few
    thin = guard.check("m", root=live)
    assert thin["action"] == "none" and "waiting for 30" in thin["checks"][0]["note"]
    log.add_feedback(label(answers, wrong=10), source="test")  # 10/40 = 0.25, CI from 0.14
    held = guard.check("m", root=live)
    assert held["action"] == "none" and held["checks"][0]["rate"] == 0.25
    tight = guard.check("m", root=live, overrides={"max_error_rate": 0.1}, dry_run=True)
    assert tight["action"] == "would roll back"
    assert store.resolve("m", "production", live) == 2
    log.close()


# Server errors count against the version that gave them; the CLI exits 1 when a bound is
# crossed, 0 when all hold, 2 on a bad setting, and the stored policy is what it applies.
def test_server_errors_cli_and_policy(live: Path) -> None:
    write_rows(live, 2, [200] * 30 + [500] * 20)
    env = {"MLKIT_EXPERIMENTS": str(live), "WANDB_MODE": "disabled"}
    dry = run_cli("model", "guard", "m", "--dry-run", env=env)
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert "server_error_rate  CROSSED  20/50" in dry.stdout and "would roll back" in dry.stdout
    assert store.resolve("m", "production", live) == 2
    lenient = run_cli("model", "policy", "m", "--set", "max_server_error_rate=0.6", env=env)
    assert lenient.returncode == 0 and "* max_server_error_rate = 0.6" in lenient.stdout
    calm = run_cli("model", "guard", "m:production", "--json", env=env)
    assert calm.returncode == 0, calm.stdout + calm.stderr
    assert json.loads(calm.stdout)["policy"]["max_server_error_rate"] == 0.6
    bad = run_cli("model", "policy", "m", "--set", "max_error_rate=2", env=env)
    assert bad.returncode == 2 and "'max_error_rate' policy setting must be a rate" in bad.stderr
    assert "max_error_rate" not in aliases.get_policy("m", root=live)
    unknown = run_cli("model", "guard", "m", "--set", "drift=sometimes", env=env)
    assert unknown.returncode == 2 and "one of any, predictions, off" in unknown.stderr
    pinned = run_cli("model", "guard", "m:v2", env=env)
    assert pinned.returncode == 2 and "not one" in pinned.stderr
    aliases.set_policy("m", "production", {}, clear=True, root=live)
    real = run_cli("model", "guard", "m", env=env)
    assert real.returncode == 1 and "rolled back: m:production -> v1" in real.stdout
    shown = run_cli("model", "show", "m", env=env).stdout
    assert "production -> v1  (rolled back from v2 by guard at " in shown
    assert ": server_error_rate 20/50 = 0.400" in shown
    no_earlier = run_cli("model", "guard", "m", "--set", "min_requests=1", env=env)
    assert no_earlier.returncode == 0, "v1 has no responses since the rollback"


# Only v1 is left: a crossed bound is reported, and the alias stays (nothing to go back to).
def test_crossed_with_no_earlier_version(exp_root: Path) -> None:
    store.register(fake_run(exp_root), "m")
    aliases.promote("m", "v1", root=exp_root)
    write_rows(exp_root, 1, [500] * 40)
    report = guard.check("m", root=exp_root)
    assert report["crossed"] and report["action"] == "cannot roll back"
    assert "no earlier version" in report["note"]
    assert store.resolve("m", "production", exp_root) == 1


# With --monitor the guard runs the real monitor notebook over the live version's answers;
# one shifted feature is drift, which rolls back under drift=any and not under drift=off.
@pytest.mark.slow
def test_monitor_drift_rolls_back(exp_root: Path) -> None:
    from mlkit.registry import loading

    registered_digits_flat(exp_root)
    loaded, ds = registered_digits_flat(exp_root)  # v2, same weights
    aliases.promote("digits", "v2", root=exp_root)
    loaded = loading.load_model("digits", "production", root=exp_root)
    X = np.concatenate([ds.val.X, ds.test.X]).astype(np.float32)
    j = ds.feature_names.index("pixel_3_4")
    X[:, j] += ds.train.X[:, j].std()
    log = predlog.open_log("digits", root=exp_root)
    for i in range(0, 400, 10):
        batch = X[i : i + 10]
        row = {"request_id": f"q{i}", "time": now_iso(), "role": "primary", "model": "digits"}
        row.update(version=2, status=200, n=len(batch), sha256=loaded.sha256)
        row.update(input=json.dumps({"inputs": batch.tolist()}))
        log.write({**row, "output": {"predictions": loading.score(loaded, batch)}})
    log.close()
    env = {"MLKIT_EXPERIMENTS": str(exp_root), "WANDB_MODE": "disabled"}
    off = run_cli("model", "guard", "digits", "--monitor", "--set", "drift=off", env=env)
    assert off.returncode == 0, off.stdout + off.stderr
    assert "drift              ok       off in this policy" in off.stdout
    on = run_cli("model", "guard", "digits", "--monitor", "--json", env=env)
    assert on.returncode == 1, on.stdout + on.stderr
    report = json.loads(on.stdout)
    drift = report["checks"][-1]
    assert drift["crossed"] and "pixel_3_4" in drift["note"]
    assert report["action"] == "rolled back" and report["to"] == 1
    assert store.resolve("digits", "production", exp_root) == 1


# --every keeps watching: healthy answers hold, a check that fails (the log is unreadable for
# a while) is reported and retried, the first check after a bound is crossed rolls back,
# every check is appended to guard.jsonl, and Ctrl-C ends the watch with exit 130.
def test_guard_every_keeps_watching(live: Path) -> None:
    write_rows(live, 2, [200] * 40)
    env = {**os.environ, "MLKIT_EXPERIMENTS": str(live), "WANDB_MODE": "disabled"}
    bad = run_cli("model", "guard", "m", "--every", "0", env=env)
    assert bad.returncode == 2 and "--every must be a number of seconds > 0" in bad.stderr
    checks = live / "registry" / "m" / "guard.jsonl"

    def rows() -> list[dict[str, Any]]:
        text = checks.read_text() if checks.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    cmd = [sys.executable, "-m", "mlkit", "model", "guard", "m", "--every", "0.2"]
    out_path, err_path = live / "guard.out", live / "guard.err"
    db = live / "registry" / "m" / "predictions.sqlite"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=err)
        try:
            wait_until(lambda: len(rows()) >= 2, message="two checks")
            assert store.resolve("m", "production", live) == 2
            assert all(r["action"] == "none" for r in rows())
            db.rename(db.with_suffix(".away"))
            db.mkdir()  # SQLite cannot open a directory: the next checks fail
            wait_until(lambda: "check failed" in out_path.read_text(), message="a failed check")
            db.rmdir()
            db.with_suffix(".away").rename(db)
            write_rows(live, 2, [500] * 40, first=40)
            wait_until(lambda: store.resolve("m", "production", live) == 1, message="the rollback")
            wait_until(lambda: rows()[-1]["version"] == 1, message="a check of v1")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    assert proc.returncode == 130, err_path.read_text()
    assert "rolled back: m:production -> v1" in out_path.read_text()
    actions = [r["action"] for r in rows()]
    assert actions.count("rolled back") == 1 and actions[-1] == "none"
