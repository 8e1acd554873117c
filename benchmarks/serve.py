"""Throughput and latency of `mlkit serve` against a bare FastAPI app serving the same model.

One invocation starts each server (uvicorn, one torch thread) on loopback:

- the baseline, a minimal FastAPI app that parses the JSON body, calls the same torch module
  (loaded through the registry) and returns the class and probabilities;
- `mlkit serve NAME:production` with everything on: body limit, pydantic shape and dtype
  checks, the NaN policy, and a hash-chained prediction log row committed (SQLite in WAL
  mode, the default ``--log-sync normal``) before each response is sent (target: at least
  0.9 of the baseline's requests/s, and at most 1 ms more p99 latency, ``--concurrency``
  clients, 8 by default);
- the same with ``--log-sync full``, which also fsyncs every commit (printed for the record);
- under load, ``--load-concurrency`` clients (32 by default), the one-process `mlkit serve`
  against the same with ``--workers W`` (2 by default): W processes on one port, all
  appending to one log (target: at least 1.3x the one process's requests/s on a 2-core
  machine, the client running beside them);
- under the same load, adaptive batching, ``--batch-max K --batch-wait-ms M`` (32 and 2 by
  default): concurrent requests share one forward pass, each still answered and logged on
  its own. Batching pays where the forward pass is a large part of a request, so it runs on
  two models: the small MLP of the rows above (``--hidden``, 128,64: HTTP and the log are
  most of a request; printed for the record) and a wide one (``--wide-hidden``,
  2048,2048,2048), each against the unbatched one-process server of the same model
  (target on the wide one: at least 1.5x).

The same client drives them all: C keep-alive connections on one asyncio loop (a light
client: the CPU it leaves goes to the servers), posting one digits-sized example per request.
The connections open one after another, each once the one before has had its first answer, as
a client's pool grows under load: uvicorn's workers share one listening socket, and a burst
of connections opened at the same instant would all be taken by whichever worker woke first
(the workers line says how the requests spread over them).
After one untimed round, rounds alternate the rows, baseline, mlkit, ..., so machine noise
hits all alike; each row's figures pool its rounds. After the last round the benchmark checks
that each log holds exactly one row per answered request (logging really was on) and that its
hash chain verifies over all of them. Exits 1 when a target is missed.

    python benchmarks/serve.py [--requests 1500] [--rounds 5] [--concurrency 8]
        [--load-concurrency 32] [--workers 2] [--batch-max 32] [--batch-wait-ms 2]
        [--hidden 128,64] [--wide-hidden 2048,2048,2048] [--wide-requests 600]
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
WIDE = "bench-wide"

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


def register_model(root: Path, name: str, hidden: list[int]) -> None:
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
    store.register(path, name, root=root, tracking="disabled")
    aliases.promote(name, "v1", root=root, tracking="disabled")


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
    parser.add_argument("--requests", type=int, default=1500, help="per row per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8, help="clients of the first rows")
    parser.add_argument(
        "--load-concurrency", type=int, default=32, help="clients of the workers and batch rows"
    )
    parser.add_argument("--workers", type=int, default=2, help="processes of the workers row")
    parser.add_argument("--batch-max", type=int, default=32, help="K of the batching rows")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="M of the batching rows")
    parser.add_argument("--hidden", default="128,64", help="hidden layer sizes of the MLP")
    parser.add_argument(
        "--wide-hidden",
        default="2048,2048,2048",
        help="hidden layer sizes of the wide MLP of the last batching row",
    )
    parser.add_argument("--wide-requests", type=int, default=600, help="per wide row per round")
    args = parser.parse_args()

    import numpy as np

    from mlkit import data
    from mlkit.serve import predlog

    tmp = Path(tempfile.mkdtemp(prefix="mlkit-bench-serve-"))
    root = tmp / "experiments"
    env = {**os.environ, "MLKIT_EXPERIMENTS": str(root), "WANDB_MODE": "disabled"}
    env.pop("MLKIT_SERVE_TOKEN", None)
    register_model(root, MODEL, [int(n) for n in args.hidden.split(",")])
    register_model(root, WIDE, [int(n) for n in args.wide_hidden.split(",")])
    (tmp / "bare_app.py").write_text(BARE_APP.replace("{model}", MODEL), encoding="utf-8")

    ds = data.load("digits_flat", seed=0, check=False)
    X = np.concatenate([ds.val.X, ds.test.X]).astype(np.float32)
    bodies = [json.dumps({"input": X[i % len(X)].tolist()}).encode() for i in range(args.requests)]
    wide_bodies = bodies[: args.wide_requests]
    batch = ["--batch-max", str(args.batch_max), "--batch-wait-ms", str(args.batch_wait_ms)]

    def serve(model: str, *flags: str, log: str | None = None) -> list[str]:
        url = ["--log", f"sqlite:///{tmp / log}"] if log else []
        return [sys.executable, "-m", "mlkit", "serve", f"{model}:production", *flags, *url]

    # Each server: its command, its model, and its log (None: the registry's own).
    servers = {
        "bare": ([sys.executable, str(tmp / "bare_app.py"), str(root)], MODEL, None),
        "mlkit": (serve(MODEL), MODEL, None),
        "full": (serve(MODEL, "--log-sync", "full", log="full.sqlite"), MODEL, "full.sqlite"),
        "workers": (
            serve(MODEL, "--workers", str(args.workers), log="workers.sqlite"),
            MODEL,
            "workers.sqlite",
        ),
        "batch": (serve(MODEL, *batch, log="batch.sqlite"), MODEL, "batch.sqlite"),
        "wide": (serve(WIDE), WIDE, None),
        "wide batch": (serve(WIDE, *batch, log="wide-batch.sqlite"), WIDE, "wide-batch.sqlite"),
    }
    c, load = args.concurrency, args.load_concurrency
    many, batched = f"workers={args.workers}", f"batch={args.batch_max}/{args.batch_wait_ms:g}ms"
    # Each row: the server it drives, its clients, its requests.
    rows = {
        "bare FastAPI": ("bare", c, bodies),
        "mlkit serve": ("mlkit", c, bodies),
        "  sync=full": ("full", c, bodies),
        f"mlkit serve x{load}": ("mlkit", load, bodies),
        f"  {many}": ("workers", load, bodies),
        f"  {batched}": ("batch", load, bodies),
        f"wide x{load}": ("wide", load, wide_bodies),
        f"  wide {batched}": ("wide batch", load, wide_bodies),
    }
    ports = {key: free_port() for key in servers}
    procs = {}
    try:
        for key, (cmd, _, _) in servers.items():
            port = [str(ports[key])] if key == "bare" else ["--port", str(ports[key])]
            procs[key] = subprocess.Popen(cmd + port, cwd=ROOT, env=env)
        for key, proc in procs.items():
            wait_up(ports[key], proc)
        # A first round, untimed: first requests import and compile lazily, and a log's
        # first thousands of rows grow its file and the page cache (fresh memory, slow to
        # touch on some virtual machines), costs the baseline never pays.
        for key, clients, sent in rows.values():
            drive(ports[key], sent, clients)
        walls: dict[str, list[float]] = {row: [] for row in rows}
        lats: dict[str, list[float]] = {row: [] for row in rows}
        pids: collections.Counter = collections.Counter()
        for r in range(args.rounds):
            for row, (key, clients, sent) in rows.items():
                counter = pids if key == "workers" else None
                wall, latencies = drive(ports[key], sent, clients, counter)
                walls[row].append(wall)
                lats[row].extend(latencies)
                print(f"round {r + 1} {row:<22} {len(sent) / wall:8.0f} req/s", flush=True)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(timeout=30)

    for key, (_, model, log_name) in servers.items():
        if key == "bare":
            continue
        # The untimed round's answers and every timed round's, over the rows it answered.
        expected = (args.rounds + 1) * sum(len(s) for k, _, s in rows.values() if k == key)
        log = predlog.open_log(model, log_name and f"sqlite:///{tmp / log_name}", root=root)
        logged = len(log.rows(role="primary"))
        chain = log.verify()[0]
        log.close()
        print(f"{key}: log rows {logged}, answered requests {expected} ({log.shown_url})")
        print(f"  hash chain: {chain.summary()}")
        if logged != expected:
            print("FAIL: the log does not hold exactly one row per request")
            return 1
        if not chain.ok or chain.verified != expected:
            print("FAIL: the log's hash chain does not cover every row")
            return 1
    return report(args, rows, walls, lats, pids)


def report(
    args: argparse.Namespace,
    rows: dict[str, tuple[str, int, list[bytes]]],
    walls: dict[str, list[float]],
    lats: dict[str, list[float]],
    pids: collections.Counter,
) -> int:
    """The table of rows, then each ratio against its target; 0 when every target is met."""
    rps = {row: args.rounds * len(sent) / sum(walls[row]) for row, (_, _, sent) in rows.items()}
    names = list(rows)
    print(
        f"\n{args.rounds} rounds; MLP hidden {args.hidden} (wide: {args.wide_hidden}); "
        f"{args.requests} requests a row a round ({args.wide_requests} for wide rows)"
    )
    print(f"{'row':<22} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for row, (_, clients, _) in rows.items():
        p50, p99 = quantile(lats[row], 0.5) * 1000, quantile(lats[row], 0.99) * 1000
        print(f"{row:<22} {clients:>7} {rps[row]:>8.0f} {p50:>8.2f} {p99:>8.2f}")
    results = []

    def line(text: str, value: float, target: float, higher: bool = True) -> None:
        met = value >= target if higher else value <= target
        results.append(met)
        sign = ">=" if higher else "<="
        print(f"{text} (target {sign} {target:g}: {'met' if met else 'missed'})")

    bare, mlkit, full, one, many, batch, wide, wide_batch = names
    spread = {r: statistics.pstdev(args.requests / w for w in walls[r]) for r in (bare, mlkit)}
    print()
    line(
        f"ratio mlkit serve / bare FastAPI (requests/s): {rps[mlkit] / rps[bare]:.2f}; "
        f"round-to-round sd {spread[bare]:.0f} and {spread[mlkit]:.0f} req/s",
        rps[mlkit] / rps[bare],
        TARGET,
    )
    added = (quantile(lats[mlkit], 0.99) - quantile(lats[bare], 0.99)) * 1000
    line(f"p99 mlkit serve - bare FastAPI: {added:+.2f} ms", added, P99_TARGET_MS, higher=False)
    print(f"ratio with --log-sync full (fsync every commit): {rps[full] / rps[bare]:.2f}")
    shares = ", ".join(f"{n / sum(pids.values()):.0%}" for _, n in pids.most_common())
    line(
        f"ratio --workers {args.workers} / 1 worker, {args.load_concurrency} clients: "
        f"{rps[many] / rps[one]:.2f}; requests per worker {shares}; {os.cpu_count()} cores, "
        "the client beside them",
        rps[many] / rps[one],
        WORKERS_TARGET,
    )
    print(
        f"ratio --batch-max {args.batch_max} --batch-wait-ms {args.batch_wait_ms:g} / "
        f"unbatched, MLP {args.hidden}: {rps[batch] / rps[one]:.2f} (HTTP and the log "
        "dominate a request here: batching saves only the forward pass)"
    )
    line(
        f"ratio batched / unbatched, wide MLP {args.wide_hidden}, {args.load_concurrency} "
        f"clients: {rps[wide_batch] / rps[wide]:.2f}",
        rps[wide_batch] / rps[wide],
        BATCH_TARGET,
    )
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
