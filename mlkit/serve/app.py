"""The model server: one registered version behind FastAPI, every response logged first.

The server follows its aliases: every ``follow_s`` seconds (2 by default) it re-reads the
registry, and when an alias it serves (``production``, ``latest``, an A/B or shadow alias) has
moved, it loads the new version beside the old one and swaps it in between requests. So
``mlkit model promote``, ``mlkit model rollback`` and the rollback guard (:mod:`mlkit.guard`)
take effect on running servers without a restart. A request keeps the version it started with,
and every response and log row says which version answered. ``NAME:v3`` pins a version.

Endpoints:
    POST /predict   ``{"input": example}`` or ``{"inputs": [example, ...]}``; each example is a
                    nested list of numbers of exactly the model's input shape, in the model's
                    input space (scaled as ``mlkit.data.load`` scales it). ``raw_input`` /
                    ``raw_inputs`` take features in the data's own units instead; the server
                    scales them with the training split's mean and std from the model card.
    GET  /health    liveness, no token needed (it says nothing about inputs).
    GET  /metadata  name, version, content hash, input shape, task, classes (and the A/B
                    variants with their weights under ``--ab``).

Several processes (``--workers N``): uvicorn starts N copies of the app on one port, each
built by :func:`worker_app` from the settings the parent puts in ``$MLKIT_SERVE_WORKER``.
The parent first builds the app once itself, so a bad model, alias or log fails before any
worker starts. Every worker loads the model, follows the aliases on its own and appends to
the same prediction log (one chain: see :mod:`mlkit.serve.predlog`); A/B buckets are a hash
of the client id, the same in every worker. Each response says which process answered in
its ``X-Worker-PID`` header. SIGINT or SIGTERM to the parent stops every worker.

A/B split (``--ab NAME:a=0.9,NAME:b=0.1``): each request is answered by one variant. The
``X-Client-ID`` header is hashed to a fixed bucket in [0, 1), so a client always gets the same
variant; a request without it gets a random one. The body (``variant``), the ``X-Variant``
header and the log row's ``variant`` and ``version`` say which answered.

Adaptive batching (``--batch-max K --batch-wait-ms M``, off by default): concurrent requests
for one version are scored together, up to K examples in one forward pass, the first waiting
at most M ms for the others (:mod:`mlkit.serve.batching`). Each is still answered and logged
on its own, with its own request id and latency; refusals never join a batch.

Refusals: 401 missing or wrong bearer token (when ``$MLKIT_SERVE_TOKEN`` is set), 413 body over
the limit, 422 invalid JSON, not exactly one body key, wrong shape, a non-number, a number
beyond float32's range, or NaN/inf anywhere (the error names the position), and an input
whose output overflows float32 (``finite_output``); 500 when the model fails; 503 when the
prediction log cannot be written. ``/openapi.json`` declares all of them. Every /predict
response, refusals included, gets a row in the prediction log (:mod:`mlkit.predlog`) before it
is sent, and carries its request id in the ``X-Request-ID`` header and the body.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlkit._io import write_json
from mlkit.errors import (
    CheckFailedError,
    MlkitError,
    ParameterError,
    ServiceUnavailableError,
    UnsafeArtifactError,
    UsageError,
)
from mlkit.registry import loading, store
from mlkit.registry.store import parse_target
from mlkit.serve import predlog
from mlkit.serve.batching import Batcher, check_batching
from mlkit.serve.routing import DEFAULT_REF, Variant, parse_ab
from mlkit.serve.schema import BODY_KEYS, request_ids, request_model
from mlkit.serve.server import Server
from mlkit.serve.shadow import Shadow

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "BODY_KEYS",
    "ENV_TOKEN",
    "ENV_WORKER",
    "LOOPBACK",
    "Server",
    "check_exposure",
    "create_app",
    "is_loopback",
    "request_ids",
    "request_model",
    "serve",
    "worker_app",
]

ENV_TOKEN = "MLKIT_SERVE_TOKEN"
# The settings (create_app's arguments, JSON) each process of ``--workers N`` builds its app from.
ENV_WORKER = "MLKIT_SERVE_WORKER"
# The exit status with which uvicorn's supervisor stops, rather than restarts, a worker.
_STARTUP_FAILURE = 3
# A worker's start-up error comes back to the parent as its exit code: the error it stands for.
_ERRORS_BY_CODE: dict[int, type[MlkitError]] = {
    CheckFailedError.exit_code: CheckFailedError,
    UsageError.exit_code: UsageError,
    UnsafeArtifactError.exit_code: UnsafeArtifactError,
    ServiceUnavailableError.exit_code: ServiceUnavailableError,
}
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def create_app(
    name: str,
    ref: str = DEFAULT_REF,
    *,
    log_url: str | None = None,
    log_sync: str = "normal",
    token_env: str = ENV_TOKEN,
    max_body_bytes: int = 1_000_000,
    max_batch: int = 1024,
    threads: int = 1,
    shadow: str | None = None,
    ab: str | None = None,
    follow_s: float = 2.0,
    batch_max: int = 1,
    batch_wait_ms: float = 2.0,
    root: Path | None = None,
) -> FastAPI:
    """A FastAPI app serving version ``ref`` (alias, ``v3`` or ``latest``) of model ``name``.

    Args:
        log_url: where the prediction log goes; default SQLite beside the model.
        log_sync: ``normal`` or ``full`` for a SQLite log: a row is in the file before its
            response is sent either way (a killed server loses none); ``full`` also fsyncs
            every commit, so an OS crash or power cut loses none, at a cost in throughput.
        token_env: environment variable holding the bearer token; unset means no token.
        max_body_bytes: larger /predict bodies get 413.
        max_batch: most examples in one request.
        threads: torch CPU threads; one is fastest for small models under concurrent requests.
        shadow: ``NAME:alias`` of a model that scores the same inputs after each response;
            its outputs are logged (role ``shadow``), never returned.
        ab: ``NAME:a=0.9,NAME:b=0.1``: split the traffic between versions of ``name`` (see the
            module docstring); ``ref`` is then ignored in favour of the first variant.
        follow_s: how often to check whether a served alias moved; 0 never checks.
        batch_max: most examples scored in one forward pass (adaptive batching, see
            :mod:`mlkit.serve.batching`); 1, the default, scores each request alone.
        batch_wait_ms: how long the first request of a batch waits for others to join.
    """
    loading.check_weights_only_env()
    variants = parse_ab(ab) if ab else []
    if variants:
        if variants[0].name != name:
            raise ParameterError(f"--ab {ab} splits model {variants[0].name!r}, not {name!r}.")
        ref = variants[0].ref
        for variant in variants:
            store.resolve(name, variant.ref, root)
    store.resolve(name, ref, root)  # an unknown model or alias fails before torch loads
    shadow_target = parse_target(shadow) if shadow else None
    if shadow_target:
        store.resolve(*shadow_target, root)
    _check_limits(follow_s=follow_s, max_body_bytes=max_body_bytes, max_batch=max_batch)
    check_batching(batch_max, batch_wait_ms)
    # Before torch loads: a log whose newest rows do not chain up is refused at once.
    log = predlog.open_log(name, log_url, root, sync=log_sync, check_tail=True)
    try:
        import torch

        torch.set_num_threads(threads)
        loaded = loading.load_model(name, ref, root=root)
    except BaseException:
        log.close()
        raise
    server = Server(
        loaded,
        log,
        ref=ref,
        root=root,
        token=os.environ.get(token_env) or None,
        max_body_bytes=max_body_bytes,
        max_batch=max_batch,
    )
    if shadow_target:
        _add_shadow(server, shadow_target, shown=shadow or "")
    for variant in variants:
        _add_arm(server, variant)
    # FastAPI and Starlette load here, once the models have: importing the server stays light.
    from mlkit.serve.endpoints import build_app

    batcher = Batcher(batch_max, batch_wait_ms / 1000.0) if batch_max > 1 else None
    return build_app(server, follow_s=follow_s, batcher=batcher)


def _check_limits(*, follow_s: float, max_body_bytes: int, max_batch: int) -> None:
    if not isinstance(follow_s, int | float) or follow_s < 0:
        raise ParameterError(
            f"The 'follow_s' parameter of create_app must be a number of seconds >= 0. Got "
            f"{follow_s!r} instead. Pass --follow-every 2, or 0 to never reload."
        )
    for param, value, low in (("max_body_bytes", max_body_bytes, 64), ("max_batch", max_batch, 1)):
        if not isinstance(value, int) or value < low:
            raise ParameterError(
                f"The {param!r} parameter of create_app must be an int >= {low}. Got {value!r} "
                f"instead. Pass --{param.replace('_', '-')} {low * 1000}."
            )


def _add_shadow(server: Server, target: tuple[str, str], *, shown: str) -> None:
    """Load the shadow model; it must take the served model's inputs."""
    loaded = server.loaded
    other = loading.load_model(*target, root=server.root)
    if other.input_shape != loaded.input_shape:
        raise ParameterError(
            f"--shadow {shown} takes inputs of shape {list(other.input_shape)}, but "
            f"{loaded.name}:{server.ref} takes {list(loaded.input_shape)}: it could score none "
            "of them. Shadow a version of a model trained on the same data."
        )
    server.shadow = Shadow(other, server.log)
    server.shadow_ref = target[1]


def _add_arm(server: Server, variant: Variant) -> None:
    """Load one A/B variant; every arm must take the served model's inputs."""
    loaded, ref = server.loaded, server.ref
    name = loaded.name
    arm = loaded if variant.ref == ref else loading.load_model(name, variant.ref, root=server.root)
    if arm.input_shape != loaded.input_shape:
        raise ParameterError(
            f"--ab variant {name}:{variant.ref} takes inputs of shape "
            f"{list(arm.input_shape)}, but {name}:{ref} takes {list(loaded.input_shape)}. "
            "Split traffic only between versions trained on the same data."
        )
    server.arms.append((variant, arm))


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``127.0.0.0/8``, ``::1``)."""
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only ``localhost`` is known to stay on this machine
        return False


def check_exposure(host: str, *, token: str | None, allow_unauthenticated: bool = False) -> None:
    """Refuse to serve beyond this machine without a token unless told to in so many words.

    Args:
        host: the address the server would bind.
        token: the bearer token requests must carry (``$MLKIT_SERVE_TOKEN``), None for none.
        allow_unauthenticated: serve other machines without a token all the same.

    Raises:
        ParameterError: ``host`` is not a loopback address, there is no token, and
            ``allow_unauthenticated`` is False.
    """
    if token or allow_unauthenticated or is_loopback(host):
        return
    raise ParameterError(
        f"--host {host} is reachable from other machines and {ENV_TOKEN} is not set, so "
        "anyone who can reach it could query the model and fill its prediction log. Set "
        f"{ENV_TOKEN} to require a bearer token, or pass --allow-unauthenticated to serve "
        "without one."
    )


def serve(
    target: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_url: str | None = None,
    log_sync: str = "normal",
    max_body_bytes: int = 1_000_000,
    threads: int = 1,
    shadow: str | None = None,
    ab: str | None = None,
    follow_s: float = 2.0,
    allow_unauthenticated: bool = False,
    workers: int = 1,
    batch_max: int = 1,
    batch_wait_ms: float = 2.0,
) -> None:
    """Run ``mlkit serve NAME[:alias]`` (or ``mlkit serve --ab ...``) with uvicorn.

    Args:
        workers: processes on the one port; the app is built here first, to fail early.
        batch_max: most examples in one forward pass (1: no batching); each worker batches
            its own requests.
        batch_wait_ms: how long the first request of a batch waits for others.

    Raises:
        ParameterError: ``host`` is reachable from other machines, ``$MLKIT_SERVE_TOKEN``
            is unset and ``allow_unauthenticated`` is False (see :func:`check_exposure`),
            or ``workers`` is not an int >= 1.
        MlkitError: a worker failed to build its app (the others are stopped): the error it
            met, with its exit code.
    """
    import uvicorn

    check_exposure(
        host, token=os.environ.get(ENV_TOKEN), allow_unauthenticated=allow_unauthenticated
    )
    _check_workers(workers)
    name, ref = _served(target, ab)
    settings: dict[str, Any] = {
        "name": name,
        "ref": ref,
        "log_url": log_url,
        "log_sync": log_sync,
        "max_body_bytes": max_body_bytes,
        "threads": threads,
        "shadow": shadow,
        "ab": ab,
        "follow_s": follow_s,
        "batch_max": batch_max,
        "batch_wait_ms": batch_wait_ms,
    }
    app = create_app(**settings)
    server: Server = app.state.server
    if not is_loopback(host) and server.token is None:
        print(
            f"mlkit serve: warning: listening on {host} with no token; set {ENV_TOKEN} to "
            "require one.",
            file=sys.stderr,
        )
    loaded = server.loaded
    print(
        f"serving {loaded.name} v{loaded.version} ({ref}, sha256 {loaded.sha256[:12]}) on "
        f"http://{host}:{port}  log: {server.log.shown_url}"
        + (f"  shadow: {shadow}" if shadow else "")
        + (f"  ab: {ab}" if ab else "")
        + (f"  workers: {workers}" if workers > 1 else "")
        + (f"  batch: {batch_max} / {batch_wait_ms:g} ms" if batch_max > 1 else ""),
        file=sys.stderr,
        flush=True,
    )
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
        return
    # Checked: the workers build their own. This process only supervises them from here on.
    if server.shadow is not None:
        server.shadow.close()
    server.log.close()
    del app, server
    _run_workers(settings, host=host, port=port, workers=workers)


def _served(target: str | None, ab: str | None) -> tuple[str, str]:
    """The model and ref ``mlkit serve`` answers with: its target, or the first A/B variant."""
    if bool(target) == bool(ab):
        raise ParameterError(
            "mlkit serve needs exactly one of NAME[:ALIAS] or --ab NAME:a=0.9,NAME:b=0.1."
        )
    if ab:
        first = parse_ab(ab)[0]
        return first.name, first.ref
    return parse_target(target or "")


def _check_workers(workers: int) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ParameterError(
            f"The 'workers' parameter of mlkit serve must be an int >= 1. Got {workers!r} "
            "instead. Pass --workers 2 to serve from two processes."
        )


def _run_workers(settings: dict[str, Any], *, host: str, port: int, workers: int) -> None:
    """uvicorn's process model: ``workers`` processes build :func:`worker_app` from ``settings``.

    It returns once they have all stopped (SIGINT or SIGTERM to this process stops them). A
    worker that fails to build its app leaves its error in a file beside the settings: uvicorn
    then stops the others, and that error is raised here.
    """
    import uvicorn

    fd, failed = tempfile.mkstemp(prefix="mlkit-serve-", suffix=".failed.json")
    os.close(fd)
    os.environ[ENV_WORKER] = json.dumps({**settings, "failed": failed})
    try:
        uvicorn.run(
            f"{__name__}:worker_app",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
        )
        report = Path(failed).read_text(encoding="utf-8")
    finally:
        os.environ.pop(ENV_WORKER, None)
        Path(failed).unlink(missing_ok=True)
    if report:
        error = json.loads(report)
        kind = _ERRORS_BY_CODE.get(error["exit_code"], CheckFailedError)
        raise kind(f"{error['message']} (worker process {error['pid']}; every worker stopped)")


def worker_app() -> FastAPI:
    """The app of one ``--workers`` process: uvicorn's factory, run in each worker.

    Built from the settings :func:`serve` put in ``$MLKIT_SERVE_WORKER``; every response
    carries this process's id in ``X-Worker-PID``.
    """
    settings = json.loads(os.environ[ENV_WORKER])
    failed = settings.pop("failed")
    try:
        app = create_app(**settings)
    except Exception as exc:  # the parent checked all this; the registry or log changed since
        code = exc.exit_code if isinstance(exc, MlkitError) else CheckFailedError.exit_code
        message = str(exc) if isinstance(exc, MlkitError) else f"{type(exc).__name__}: {exc}"
        write_json(failed, {"exit_code": code, "message": message, "pid": os.getpid()})
        sys.exit(_STARTUP_FAILURE)  # uvicorn's supervisor stops every worker, restarts none
    app.add_middleware(_WorkerPID)
    return app


class _WorkerPID:
    """ASGI middleware: an ``X-Worker-PID`` header on every response, this process's id."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.header = (b"x-worker-pid", str(os.getpid()).encode())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_pid(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        await self.app(scope, receive, send_with_pid)
