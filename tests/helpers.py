"""Plain helpers shared by several test files: paths, the CLI, polling, servers, fake runs.

Fixtures live in ``conftest.py``; everything here is an ordinary function to import.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from mlkit import record_store
from mlkit._contract import BUILD, WEIGHTS
from mlkit._io import write_json
from mlkit.registry import aliases, loading, store

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "tests" / "notebooks"
TEMPLATES = ROOT / "templates"

T = TypeVar("T")


def needs_service(message: str) -> None:
    """Skip a test whose system service is missing, saying how to enable it; fail under CI.

    CI installs and starts every service its tests need (``.ci/run``), so there a missing
    one is a broken set-up, not a reason to skip.
    """
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300):
    """Run the real ``mlkit`` command in a subprocess, as a user would."""
    full_env = dict(os.environ)
    full_env["COLUMNS"] = "200"  # rich tables fold to 80 columns in a pipe
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mlkit", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=timeout,
    )


def all_files(root: Path) -> list[Path]:
    """Every file under ``root`` (none when it does not exist)."""
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 60,
    interval: float = 0.05,
    message: str | Callable[[], str] = "the condition",
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that value.

    The test's way to wait for a state change: it returns as soon as the state is there and
    fails with a clear message at the deadline, instead of sleeping a fixed time that is
    too long on a fast machine and too short on a busy one. An exception raised by the
    predicate ends the wait at once (a predicate asserts that a process it waits on is alive).

    Args:
        predicate: Checks the state; called once more at the deadline.
        timeout: Seconds to wait before failing.
        interval: Seconds between two calls.
        message: What is awaited, for the failure (or a function that says it, called only
            on failure: a log tail, say).

    Returns:
        The predicate's first truthy value.

    Raises:
        AssertionError: The deadline passed with the predicate still falsy.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# Each pytest-xdist worker takes its servers' ports from a band of its own, below the
# ephemeral ports (32768 and up) that kernels and clients are given: a port one worker found
# free cannot be taken by the other before its server binds it.
_PORT_BAND = 4000
_next_port = [0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, in this worker's band."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    base = 10_000 + _PORT_BAND * (int(worker) if worker.isdigit() else 0)
    for _ in range(_PORT_BAND):
        port = base + _next_port[0] % _PORT_BAND
        _next_port[0] += 1
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {base}-{base + _PORT_BAND - 1}")


def start_server(
    root: Path, target: str, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """`python -m mlkit serve ...` on a free port; returns once /health answers."""
    port = free_port()
    full_env = {**os.environ, "MLKIT_EXPERIMENTS": str(root), "WANDB_MODE": "disabled"}
    full_env.update(env or {})
    log = root / f"serve-{port}.log"
    stderr = open(log, "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlkit", "serve", target, "--port", str(port), *extra],
        cwd=ROOT,
        env=full_env,
        stdout=stderr,
        stderr=stderr,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()}")
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, timeout=60, message="the server to answer /health")
    except AssertionError:
        proc.kill()
        raise
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server started by :func:`start_server` (kill it after 10 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_rows(path: Path, table: str = "predictions") -> list[dict[str, Any]]:
    """Every row of a SQLite prediction log's ``table``, oldest first."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY id")]
    finally:
        conn.close()


def versions_answering(client: Any, want: int, deadline_s: float = 10) -> list[int]:
    """Versions of successive answers, until one is ``want`` (or the deadline passes).

    Not a wait that fails: a test may show that ``want`` never comes.
    """
    seen: list[int] = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and (not seen or seen[-1] != want):
        seen.append(client.post("/predict", json={"input": [1.0, 2.0, 3.0, 4.0]}).json()["version"])
        time.sleep(0.01)
    return seen


_RUN: dict[str, Any] = {}


def trained_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real run of templates/classify.ipynb per test session (2 epochs, warm kernel).

    Shared by test_registry and test_serve: it is the slowest thing either needs.
    """
    if not _RUN:
        from mlkit.run import runner  # starts no kernel, but only these tests need it

        root = tmp_path_factory.mktemp("trained") / "experiments"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLKIT_EXPERIMENTS", str(root))
            mp.setenv("WANDB_MODE", "disabled")
            mp.chdir(ROOT)
            info = runner.run(
                TEMPLATES / "classify.ipynb",
                {"epochs": 2, "hidden": "32"},
                progress=False,
                engine="warm",
                root=root,
            )
        assert info["status"] == "completed", info.get("reason")
        _RUN.update(info)
    return dict(_RUN)


def fake_run(
    root: Path,
    *,
    status: str = "completed",
    weights: bool = True,
    input_shape: tuple = (4,),
    n_outputs: int = 3,
) -> Path:
    """A run record made by hand: fast, for the cases a real run cannot show (failed runs)."""
    run_id, path = record_store.create_run_dir("fake", root)
    write_json(path / "run.json", {"id": run_id, "status": status})
    write_json(path / "params.json", {"notebook": "x.ipynb", "parameters": {"lr": 0.1}})
    if status == "completed":
        write_json(path / "result.json", {"test/accuracy": 0.5})
    if weights:
        # torch loads in a second: only the tests that ask for weights pay for it
        from safetensors.torch import save_file

        from mlkit import models

        net = models.build("linear", input_shape=input_shape, n_outputs=n_outputs)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path / WEIGHTS)
        shape = list(input_shape)
        build = {"name": "linear", "build": {"input_shape": shape, "n_outputs": n_outputs}}
        write_json(path / BUILD, build)
    return path


def registered_digits_flat(root: Path) -> tuple[loading.LoadedModel, Any]:
    """A linear model on digits_flat registered by hand (fast: no training) and promoted."""
    # torch loads in a second: only the tests that ask for a model pay for it
    import torch
    from safetensors.torch import save_file

    from mlkit import data, models

    ds = data.load("digits_flat", seed=0, check=False)
    run_id, path = record_store.create_run_dir("fake", root)
    write_json(path / "run.json", {"id": run_id, "status": "completed"})
    write_json(path / "params.json", {"notebook": "x.ipynb", "parameters": {}})
    write_json(path / "result.json", {"test/accuracy": 0.5})
    write_json(path / "lineage.json", {"data": ds.spec()})
    torch.manual_seed(0)
    net = models.build("linear", input_shape=(64,), n_outputs=10)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path / WEIGHTS)
    build = {"name": "linear", "build": {"input_shape": [64], "n_outputs": 10}}
    write_json(path / BUILD, build)
    store.register(path, "digits")
    aliases.promote("digits", "v1")
    return loading.load_model("digits", "production"), ds
