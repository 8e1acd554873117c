"""`mlkit serve --workers N`: several processes on one port, the guarantees of one.

A real `mlkit serve --workers 2` on 127.0.0.1 serving tiny 4-feature models: every answer is
logged once in one hash chain, each worker follows an alias move, A/B buckets agree across
workers, start-up errors come before any worker starts, and a stop leaves no process behind.
Which worker answered is the ``X-Worker-PID`` response header.
"""

from __future__ import annotations

import signal
import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mlkit.errors import UsageError
from mlkit.registry import aliases, store
from mlkit.serve import app as serve_app
from mlkit.serve import predlog
from mlkit.serve.routing import route
from tests.helpers import (
    fake_run,
    free_port,
    log_rows,
    run_cli,
    start_server,
    stop,
    wait_until,
)

httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")
BODY = {"input": [0.5, -1.0, 2.0, 0.0]}
WORKERS = ("--workers", "2")


@pytest.fixture
def model_m(exp_root: Path) -> Path:
    """m v1 (production) and m v2 (candidate): tiny 4-feature linear models."""
    store.register(fake_run(exp_root), "m")
    store.register(fake_run(exp_root), "m")
    aliases.promote("m", "v1")
    aliases.promote("m", "v2", alias="candidate")
    return exp_root


@pytest.fixture
def serve_two(model_m: Path) -> Iterator[Callable[..., tuple[str, set[int]]]]:
    """Start `mlkit serve ... --workers 2`: its URL and its workers' pids; stopped after."""
    procs = []

    def start(target: str, *extra: str) -> tuple[str, set[int]]:
        proc, url = start_server(model_m, target, *WORKERS, *extra)
        procs.append(proc)
        workers = wait_until(lambda: _workers(proc), 30, message="two worker processes")
        return url, workers

    yield start
    for proc in procs:
        family = _family(proc.pid)
        stop(proc)
        assert proc.returncode == 0
        wait_until(lambda f=family: not _alive(f), 10, message="no process left behind")


def _family(pid: int) -> set[int]:
    """The pids of ``pid``'s descendants (uvicorn's workers, multiprocessing's helpers)."""
    return {child.pid for child in psutil.Process(pid).children(recursive=True)}


def _workers(proc: Any) -> set[int]:
    """The pids of the server's worker processes, once both are up (spawned by uvicorn)."""
    found = {
        child.pid
        for child in psutil.Process(proc.pid).children()
        if "spawn_main" in " ".join(child.cmdline())
    }
    return found if len(found) == 2 else set()


def _alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie reaped by nobody counts as running)."""
    return {pid for pid in pids if psutil.pid_exists(pid)}


def _post(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """One /predict on a new connection (so any worker may take it): (worker pid, body)."""
    r = httpx.post(f"{url}/predict", json=BODY, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return int(r.headers["X-Worker-PID"]), r.json()


@pytest.fixture(params=["sqlite", "postgresql"])
def log_url(request: pytest.FixtureRequest, model_m: Path) -> Iterator[str]:
    """The default SQLite log of m, or tables in a fresh PostgreSQL schema (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{model_m / 'registry' / 'm' / 'predictions.sqlite'}"
        return
    import sqlalchemy as sa

    pg_url = request.getfixturevalue("pg_url")
    schema = f"workers_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{pg_url}{'&' if '?' in pg_url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


# Two workers under concurrent clients: every answer has exactly one log row, both workers
# wrote into the same log (SQLite or PostgreSQL), and `mlkit log verify` finds one unbroken
# chain over all of them.
@pytest.mark.slow
def test_two_workers_log_every_answer_once(
    serve_two: Callable[..., tuple[str, set[int]]], model_m: Path, log_url: str
) -> None:
    url, workers = serve_two("m:production", "--log", log_url)

    def client(_: int) -> list[tuple[int, str]]:
        with httpx.Client(base_url=url, timeout=30) as c:
            answers = []
            for _ in range(40):
                r = c.post("/predict", json=BODY)
                assert r.status_code == 200, r.text
                answers.append((int(r.headers["X-Worker-PID"]), r.json()["request_id"]))
            return answers

    with ThreadPoolExecutor(8) as pool:
        answers = [a for batch in pool.map(client, range(8)) for a in batch]

    def both_answered() -> bool:
        pid, body = _post(url)
        answers.append((pid, body["request_id"]))
        return {p for p, _ in answers} == workers

    wait_until(both_answered, 30, 0, "answers from both workers")
    log = predlog.PredictionLog(log_url)
    try:
        logged = Counter(row["request_id"] for row in log.rows())
    finally:
        log.close()
    assert logged == Counter(rid for _, rid in answers)
    assert set(logged.values()) == {1}
    # Request ids start with a prefix of the app that made them: one per worker.
    assert len({rid[:16] for rid in logged}) == 2
    env = {"MLKIT_EXPERIMENTS": str(model_m)}
    proc = run_cli("log", "verify", "m", "--log", log_url, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"predictions: {len(answers)} of {len(answers)} rows verify" in proc.stdout


# An alias moved while two workers serve: each follows on its own, and both end up answering
# with the new version.
@pytest.mark.slow
def test_both_workers_follow_an_alias_move(
    serve_two: Callable[..., tuple[str, set[int]]], model_m: Path
) -> None:
    url, workers = serve_two("m:production", "--follow-every", "0.1")
    latest: dict[int, int] = {}  # worker pid -> the version of its newest answer

    def answer() -> dict[int, int]:
        pid, body = _post(url)
        latest[pid] = body["version"]
        return latest

    wait_until(lambda: set(answer()) == workers, 30, 0, "answers from both workers")
    assert set(latest.values()) == {1}
    aliases.promote("m", "v2")
    latest.clear()
    wait_until(
        lambda: set(answer()) == workers and set(latest.values()) == {2},
        30,
        0,
        lambda: f"both workers answering v2 (newest answer per worker: {latest})",
    )


# --ab through two workers: a client id gets the same variant from either worker, the one its
# sha256 bucket names.
@pytest.mark.slow
def test_ab_buckets_agree_across_workers(serve_two: Callable[..., tuple[str, set[int]]]) -> None:
    url, workers = serve_two("", "--ab", "m:production=0.5,m:candidate=0.5")
    clients = [f"client-{i}" for i in range(12)]
    seen: dict[str, dict[int, set[str]]] = {cid: {} for cid in clients}

    def every_client_from_both() -> bool:
        for cid in clients:
            if len(seen[cid]) < 2:
                pid, body = _post(url, {"X-Client-ID": cid})
                seen[cid].setdefault(pid, set()).add(body["variant"])
        return all(len(by_worker) == 2 for by_worker in seen.values())

    wait_until(every_client_from_both, 60, 0, lambda: f"each client from both workers: {seen}")
    names = ("production", "candidate")
    for cid, by_worker in seen.items():
        assert set(by_worker) == workers
        assert set().union(*by_worker.values()) == {names[route(cid, [0.5, 0.5])]}, cid
    assert {names[route(cid, [0.5, 0.5])] for cid in clients} == set(names)


# Ctrl-C (SIGINT) or SIGTERM to the parent alone stops every worker: it exits 0 and leaves no
# process behind, and each worker's log rows are all there.
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_leaves_no_process_behind(model_m: Path, sig: signal.Signals) -> None:
    proc, url = start_server(model_m, "m:production", *WORKERS)
    try:
        workers = wait_until(lambda: _workers(proc), 30, message="two worker processes")
        family = _family(proc.pid)
        answered = {_post(url)[1]["request_id"] for _ in range(10)}
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
    finally:
        stop(proc)
    assert workers <= family
    wait_until(lambda: not _alive(family), 10, message=lambda: f"{_alive(family)} to exit")
    rows = log_rows(model_m / "registry" / "m" / "predictions.sqlite")
    assert {row["request_id"] for row in rows} == answered


# A bad model or an unreachable log stops `mlkit serve --workers 2` in the parent, with the
# message and exit code of one worker, before any worker starts (nothing was served).
@pytest.mark.slow
def test_start_up_errors_come_before_any_worker(model_m: Path) -> None:
    env = {"MLKIT_EXPERIMENTS": str(model_m)}
    port = str(free_port())
    proc = run_cli("serve", "nope", *WORKERS, "--port", port, env=env, timeout=60)
    assert proc.returncode == 2 and "No registered model 'nope'" in proc.stderr
    assert "serving" not in proc.stderr
    down = f"postgresql://mlkit:pw@127.0.0.1:{free_port()}/none"
    proc = run_cli("serve", "m", *WORKERS, "--port", port, "--log", down, env=env, timeout=60)
    assert proc.returncode == 4, proc.stderr
    assert "Cannot open the prediction log" in proc.stderr and "serving" not in proc.stderr
    proc = run_cli("serve", "m", "--workers", "0", "--port", port, env=env, timeout=60)
    assert proc.returncode == 2 and "--workers 2" in proc.stderr


# A worker that cannot build its app (the registry changed after the parent checked it) exits
# with uvicorn's start-up failure status, so it is not restarted in a loop, and its error
# reaches the parent, which raises it with its own class (exit code).
def test_worker_start_up_error_reaches_the_parent(
    model_m: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    exits: list[Any] = []

    def one_worker(target: str, **kwargs: Any) -> None:
        # Stands in for uvicorn's supervisor: the weights go away, then a worker starts.
        assert kwargs["factory"] and kwargs["workers"] == 2
        (model_m / "registry" / "m" / "v1" / "model.safetensors").unlink()
        module, name = target.split(":")
        assert module == serve_app.__name__
        with pytest.raises(SystemExit) as exc:
            getattr(serve_app, name)()
        exits.append(exc.value.code)

    monkeypatch.setattr(uvicorn, "run", one_worker)
    with pytest.raises(UsageError, match=r"has no weights.*worker process \d+; every worker") as e:
        serve_app.serve("m:production", workers=2, follow_s=0)
    assert exits == [3] and e.value.exit_code == 2


# Two processes' logs on one SQLite file, appending in turn: each append links to the true
# newest row, written by the other one, so the chain holds.
def test_append_links_to_another_writers_row(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.sqlite'}"
    a, b = predlog.PredictionLog(url), predlog.PredictionLog(url)
    try:
        for i in range(3):
            a.write({"request_id": f"a{i}", "status": 200})
            b.write_many([{"request_id": f"b{i}-{j}", "status": 200} for j in range(2)])
        a.add_feedback({"a0": 1}, source="cli")
        b.add_feedback({"b0-0": 0}, source="cli")
        a.add_feedback({"a1": 1}, source="cli")
        reports = a.verify()
    finally:
        a.close()
        b.close()
    assert [(r.verified, r.checked, r.ok) for r in reports] == [(9, 9, True), (3, 3, True)]
    conn = sqlite3.connect(tmp_path / "p.sqlite")
    rows = conn.execute("SELECT request_id, prev_hash, row_hash FROM predictions ORDER BY id")
    ordered = list(rows)
    conn.close()
    assert [r[0] for r in ordered[:3]] == ["a0", "b0-0", "b0-1"]
    assert ordered[3][0] == "a1" and ordered[3][1] == ordered[2][2]  # follows b's row
