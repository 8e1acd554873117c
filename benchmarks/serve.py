"""Throughput and latency of `mlkit serve` against a bare FastAPI app serving the same model.

One invocation starts both servers (uvicorn, one process each, one torch thread) on loopback:

- the baseline, a minimal FastAPI app that parses the JSON body, calls the same torch module
  (loaded through the registry) and returns the class and probabilities;
- `mlkit serve NAME:production` with everything on: body limit, pydantic shape and dtype
  checks, the NaN policy, and a hash-chained prediction log row committed (SQLite in WAL
  mode, the default ``--log-sync normal``) before each response is sent;
- the same with ``--log-sync full``, which also fsyncs every commit (printed for the record;
  the target is on the default);
- the same with ``--workers W`` (2 by default): W processes on one port, all appending to one
  log, against the one-process `mlkit serve` (target: at least 1.3x its requests/s on a
  2-core machine, the client running beside it);
- the same with adaptive batching, ``--batch-max K --batch-wait-ms M`` (32 and 2 by default):
  concurrent requests share one forward pass, each still answered and logged on its own,
  against the unbatched one-process `mlkit serve` (target: at least 1.5x its requests/s under
  32 concurrent clients, ``--concurrency 32``).

The same client drives them all: C keep-alive connections on one asyncio loop (a light
client: the CPU it leaves goes to the servers), posting one digits-sized example per request.
The connections open one after another, each once the one before has had its first answer, as
a client's pool grows under load: uvicorn's workers share one listening socket, and a burst
of connections opened at the same instant would all be taken by whichever worker woke first
(the last line says how the requests spread over the workers).
Rounds alternate the servers, baseline, mlkit, ..., so machine noise hits all alike; each
server's figures pool its rounds. After the last round the benchmark checks that each log
holds exactly one row per answered request (logging really was on) and that its hash chain
verifies over all of them.
Prints requests/s, p50 and p99 latency per server, the ratio mlkit / baseline of requests/s
(target: at least 0.9) and the p99 mlkit serve adds (target: at most 1 ms), the ratio
W workers / 1 worker (target: at least 1.3) and the ratio batched / unbatched (target: at
least 1.5).

    python benchmarks/serve.py [--requests 1500] [--rounds 5] [--concurrency 8] [--workers 2]
                               [--batch-max 32] [--batch-wait-ms 2] [--hidden 128,64]

The served model is an MLP of ``--hidden`` layers (128,64 by default: its forward pass is a
small part of a request's time, HTTP and the log the rest); a wider one, such as
``--hidden 1024,1024,1024``, shows batching where the forward pass dominates.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.9
P99_TARGET_MS = 1.0
WORKERS_TARGET = 1.3
BATCH_TARGET = 1.5
REQUEST = (
    b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n"
)
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


def register_model(root: Path, hidden: list[int]) -> None:
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
    build = {"input_shape": [64], "n_outputs": 10, "hidden": hidden}
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


def drive(
    port: int, bodies: list[bytes], concurrency: int, pids: collections.Counter | None = None
) -> tuple[float, list[float]]:
    """Post every body (``concurrency`` keep-alive clients); wall time and latencies (s).

    The clients are coroutines on one asyncio loop speaking HTTP/1.1 themselves: a few tens
    of microseconds of CPU per request, where threads with http.client cost several times
    that (and the GIL), CPU the servers beside them would not get. Each client opens its
    connection once the one before has had its first answer; ``pids`` counts the answers per
    ``X-Worker-PID`` (the process that gave them).
    """
    return asyncio.run(_drive(port, bodies, concurrency, pids))


async def _drive(
    port: int, bodies: list[bytes], concurrency: int, pids: collections.Counter | None
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    errors: list[str] = []
    chunks = [bodies[i::concurrency] for i in range(concurrency)]
    answered = [asyncio.Event() for _ in chunks]

    async def client(i: int, chunk: list[bytes]) -> None:
        if i:
            await answered[i - 1].wait()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for body in chunk:
                t0 = time.perf_counter()
                writer.write(REQUEST % len(body) + body)
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                fields = dict(line.lower().split(": ", 1) for line in head[1:] if line)
                await reader.readexactly(int(fields["content-length"]))
                latencies.append(time.perf_counter() - t0)
                answered[i].set()
                if pids is not None:
                    pids[fields.get("x-worker-pid")] += 1
                if head[0].split()[1] != "200":
                    errors.append(head[0])
        finally:
            answered[i].set()  # a failed client must not hold the next one back
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client(i, chunk) for i, chunk in enumerate(chunks)))
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
    parser.add_argument("--workers", type=int, default=2, help="processes of the workers row")
    parser.add_argument("--batch-max", type=int, default=32, help="K of the batching row")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="M of the batching row")
    parser.add_argument(
        "--hidden",
        default="128,64",
        help="hidden layer sizes of the served MLP; wider ones (1024,1024,1024) make the "
        "forward pass the larger part of a request, where batching pays",
    )
    args = parser.parse_args()

    import numpy as np

    from mlkit import data
    from mlkit.serve import predlog

    tmp = Path(tempfile.mkdtemp(prefix="mlkit-bench-serve-"))
    root = tmp / "experiments"
    env = {**os.environ, "MLKIT_EXPERIMENTS": str(root), "WANDB_MODE": "disabled"}
    env.pop("MLKIT_SERVE_TOKEN", None)
    register_model(root, [int(n) for n in args.hidden.split(",")])
    (tmp / "bare_app.py").write_text(BARE_APP.replace("{model}", MODEL), encoding="utf-8")

    ds = data.load("digits_flat", seed=0, check=False)
    X = np.concatenate([ds.val.X, ds.test.X]).astype(np.float32)
    bodies = [json.dumps({"input": X[i % len(X)].tolist()}).encode() for i in range(args.requests)]
    full_log, workers_log = tmp / "full.sqlite", tmp / "workers.sqlite"
    batch_log = tmp / "batch.sqlite"
    serve_cmd = [sys.executable, "-m", "mlkit", "serve", f"{MODEL}:production"]
    many = f"  workers={args.workers}"
    batched = f"  batch={args.batch_max}/{args.batch_wait_ms:g}ms"
    batch_flags = ["--batch-max", str(args.batch_max), "--batch-wait-ms", str(args.batch_wait_ms)]
    commands = {
        "bare FastAPI": [sys.executable, str(tmp / "bare_app.py"), str(root)],
        "mlkit serve": serve_cmd,
        "  sync=full": [*serve_cmd, "--log-sync", "full", "--log", f"sqlite:///{full_log}"],
        many: [*serve_cmd, "--workers", str(args.workers), "--log", f"sqlite:///{workers_log}"],
        batched: [*serve_cmd, *batch_flags, "--log", f"sqlite:///{batch_log}"],
    }
    logs = {"mlkit serve": None, "  sync=full": full_log, many: workers_log, batched: batch_log}
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
        pids: collections.Counter = collections.Counter()
        for r in range(args.rounds):
            for way in procs:
                counter = pids if way == many else None
                wall, latencies = drive(ports[way], bodies, args.concurrency, counter)
                walls[way].append(wall)
                lats[way].extend(latencies)
                print(f"round {r + 1} {way:<13} {args.requests / wall:8.0f} req/s", flush=True)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(timeout=30)

    expected = 200 + args.rounds * args.requests  # the warm-up's and every round's answers
    for way, path in logs.items():
        log = predlog.open_log(MODEL, path and f"sqlite:///{path}", root=root)
        rows = len(log.rows(role="primary"))
        chain = log.verify()[0]
        log.close()
        print(f"{way.strip()}: log rows {rows}, answered requests {expected} ({log.shown_url})")
        print(f"  hash chain: {chain.summary()}")
        if rows != expected:
            print("FAIL: the log does not hold exactly one row per request")
            return 1
        if not chain.ok or chain.verified != expected:
            print("FAIL: the log's hash chain does not cover every row")
            return 1

    rps = {way: args.rounds * args.requests / sum(walls[way]) for way in walls}
    print(
        f"\n{args.rounds} rounds x {args.requests} requests, {args.concurrency} keep-alive "
        f"clients, MLP hidden {args.hidden}"
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
    added = (quantile(lats["mlkit serve"], 0.99) - quantile(lats["bare FastAPI"], 0.99)) * 1000
    print(
        f"p99 mlkit serve - bare FastAPI: {added:+.2f} ms (target <= {P99_TARGET_MS:g} ms: "
        f"{'met' if added <= P99_TARGET_MS else 'missed'})"
    )
    full = rps["  sync=full"] / rps["bare FastAPI"]
    print(f"ratio with --log-sync full (fsync every commit): {full:.2f}")
    scale = rps[many] / rps["mlkit serve"]
    shares = ", ".join(f"{n / sum(pids.values()):.0%}" for _, n in pids.most_common())
    print(
        f"ratio mlkit serve --workers {args.workers} / 1 worker (requests/s): {scale:.2f} "
        f"(target >= {WORKERS_TARGET}: {'met' if scale >= WORKERS_TARGET else 'missed'}; "
        f"requests per worker {shares}; {os.cpu_count()} cores, the client beside them)"
    )
    gain = rps[batched] / rps["mlkit serve"]
    print(
        f"ratio mlkit serve --batch-max {args.batch_max} --batch-wait-ms {args.batch_wait_ms:g} "
        f"/ unbatched (requests/s): {gain:.2f} (target >= {BATCH_TARGET}: "
        f"{'met' if gain >= BATCH_TARGET else 'missed'}; {args.concurrency} clients)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
