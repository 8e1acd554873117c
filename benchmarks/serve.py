"""Throughput and latency of `mlkit serve` against a bare FastAPI app serving the same model.

One invocation starts both servers (uvicorn, one process each, one torch thread) on loopback:

- the baseline, a minimal FastAPI app that parses the JSON body, calls the same torch module
  (loaded through the registry) and returns the class and probabilities;
- `mlkit serve NAME:production` with everything on: body limit, pydantic shape and dtype
  checks, the NaN policy, and a hash-chained prediction log row committed (SQLite in WAL
  mode, the default ``--log-sync normal``) before each response is sent;
- the same with ``--log-sync full``, which also fsyncs every commit (printed for the record;
  the target is on the default).

The same client drives both: C threads, each with its own keep-alive connection, posting one
digits-sized example per request. Rounds alternate baseline, mlkit, baseline, mlkit, ... so
machine noise hits both alike; each server's figures pool its rounds. After the last round the
benchmark checks that each log holds exactly one row per mlkit request (logging really was on)
and that its hash chain verifies over all of them.
Prints requests/s, p50 and p99 latency per server and the ratio mlkit / baseline of requests/s
(target: at least 0.8).

    python benchmarks/serve.py [--requests 1500] [--rounds 5] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.8
MODEL = "bench"

BARE_APP = '''\
"""A minimal FastAPI app calling the registered torch model directly (serve.py's baseline)."""

import sys
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mlkit import registry

root, port = Path(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(1)
loaded = registry.load_model("{model}", "production", root=root)
app = FastAPI()


@app.post("/predict")
async def predict(request: Request) -> JSONResponse:
    body = await request.json()
    X = torch.tensor([body["input"]], dtype=torch.float32)
    with torch.inference_mode():
        probs = torch.softmax(loaded.module(X), dim=1)[0]
    return JSONResponse(dict(index=int(probs.argmax()), probabilities=probs.tolist()))


@app.get("/health")
def health() -> dict:
    return dict(status="ok")


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
'''


def register_model(root: Path) -> None:
    """An MLP for 8x8 digits (64 features, 10 classes) registered and promoted by hand."""
    import torch
    from safetensors.torch import save_file

    from mlkit import data, models, record_store
    from mlkit._contract import BUILD, WEIGHTS
    from mlkit._io import write_json
    from mlkit.registry import aliases, store

    ds = data.load("digits_flat", seed=0, check=False)
    run_id, path = record_store.create_run_dir("bench", root)
    write_json(path / "run.json", {"id": run_id, "status": "completed"})
    write_json(path / "params.json", {"notebook": "bench", "parameters": {}})
    write_json(path / "result.json", {"test/accuracy": 0.0})
    write_json(path / "lineage.json", {"data": ds.spec()})
    torch.manual_seed(0)
    build = {"input_shape": [64], "n_outputs": 10, "hidden": [128, 64]}
    net = models.build("mlp", **build)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path / WEIGHTS)
    write_json(path / BUILD, {"name": "mlp", "build": build})
    store.register(path, MODEL, root=root, tracking="disabled")
    aliases.promote(MODEL, "v1", root=root, tracking="disabled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, proc: subprocess.Popen, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on port {port} exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not come up in {deadline_s} s")


def drive(port: int, bodies: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    """Post every body (``concurrency`` keep-alive clients); wall time and latencies (s)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    chunks = [bodies[i::concurrency] for i in range(concurrency)]
    headers = {"Content-Type": "application/json"}

    def client(chunk: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        for body in chunk:
            t0 = time.perf_counter()
            conn.request("POST", "/predict", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            mine.append(time.perf_counter() - t0)
            if resp.status != 200:
                errors.append(f"status {resp.status}")
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in chunks]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} requests failed on port {port}: {errors[0]}")
    return wall, latencies


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="per server per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    import numpy as np

    from mlkit import data
    from mlkit.serve import predlog

    tmp = Path(tempfile.mkdtemp(prefix="mlkit-bench-serve-"))
    root = tmp / "experiments"
    env = {**os.environ, "MLKIT_EXPERIMENTS": str(root), "WANDB_MODE": "disabled"}
    env.pop("MLKIT_SERVE_TOKEN", None)
    register_model(root)
    (tmp / "bare_app.py").write_text(BARE_APP.replace("{model}", MODEL), encoding="utf-8")

    ds = data.load("digits_flat", seed=0, check=False)
    X = np.concatenate([ds.val.X, ds.test.X]).astype(np.float32)
    bodies = [json.dumps({"input": X[i % len(X)].tolist()}).encode() for i in range(args.requests)]
    full_log = tmp / "full.sqlite"
    serve_cmd = [sys.executable, "-m", "mlkit", "serve", f"{MODEL}:production"]
    commands = {
        "bare FastAPI": [sys.executable, str(tmp / "bare_app.py"), str(root)],
        "mlkit serve": serve_cmd,
        "  sync=full": [*serve_cmd, "--log-sync", "full", "--log", f"sqlite:///{full_log}"],
    }
    ports = {way: free_port() for way in commands}
    procs = {}
    try:
        for way, cmd in commands.items():
            port = ports[way]
            extra = [str(port)] if way == "bare FastAPI" else ["--port", str(port)]
            procs[way] = subprocess.Popen(cmd + extra, cwd=ROOT, env=env)
        for way, proc in procs.items():
            wait_up(ports[way], proc)
        for way in procs:  # warm both: first requests import and compile lazily
            drive(ports[way], bodies[:200], args.concurrency)
        walls: dict[str, list[float]] = {way: [] for way in procs}
        lats: dict[str, list[float]] = {way: [] for way in procs}
        for r in range(args.rounds):
            for way in procs:
                wall, latencies = drive(ports[way], bodies, args.concurrency)
                walls[way].append(wall)
                lats[way].extend(latencies)
                print(f"round {r + 1} {way:<13} {args.requests / wall:8.0f} req/s", flush=True)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(timeout=30)

    expected = 200 + args.rounds * args.requests
    for url in (None, f"sqlite:///{full_log}"):
        log = predlog.open_log(MODEL, url, root=root)
        rows = len(log.rows(role="primary"))
        chain = log.verify()[0]
        log.close()
        print(f"prediction log {log.shown_url}: {rows} rows for {expected} requests")
        print(f"  hash chain: {chain.summary()}")
        if rows != expected:
            print("FAIL: the log does not hold exactly one row per request")
            return 1
        if not chain.ok or chain.verified != expected:
            print("FAIL: the log's hash chain does not cover every row")
            return 1

    rps = {way: args.rounds * args.requests / sum(walls[way]) for way in walls}
    print(
        f"\n{args.rounds} rounds x {args.requests} requests, {args.concurrency} keep-alive clients"
    )
    print(f"{'server':<14} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for way in walls:
        p50, p99 = quantile(lats[way], 0.5) * 1000, quantile(lats[way], 0.99) * 1000
        print(f"{way:<14} {rps[way]:>8.0f} {p50:>8.2f} {p99:>8.2f}")
    spread = {way: statistics.pstdev(args.requests / w for w in walls[way]) for way in walls}
    ratio = rps["mlkit serve"] / rps["bare FastAPI"]
    print(
        f"\nratio mlkit serve / bare FastAPI (requests/s): {ratio:.2f} "
        f"(target >= {TARGET}: {'met' if ratio >= TARGET else 'missed'}; "
        f"round-to-round sd {spread['bare FastAPI']:.0f} and {spread['mlkit serve']:.0f} req/s)"
    )
    full = rps["  sync=full"] / rps["bare FastAPI"]
    print(f"ratio with --log-sync full (fsync every commit): {full:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
