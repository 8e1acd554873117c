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

A/B split (``--ab NAME:a=0.9,NAME:b=0.1``): each request is answered by one variant. The
``X-Client-ID`` header is hashed to a fixed bucket in [0, 1), so a client always gets the same
variant; a request without it gets a random one. The body (``variant``), the ``X-Variant``
header and the log row's ``variant`` and ``version`` say which answered.

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
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mlkit.errors import ParameterError
from mlkit.registry import loading, store
from mlkit.registry.store import parse_target
from mlkit.serve import predlog
from mlkit.serve.routing import DEFAULT_REF, Variant, parse_ab
from mlkit.serve.schema import BODY_KEYS, request_ids, request_model
from mlkit.serve.server import Server
from mlkit.serve.shadow import Shadow

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "BODY_KEYS",
    "ENV_TOKEN",
    "LOOPBACK",
    "Server",
    "check_exposure",
    "create_app",
    "is_loopback",
    "request_ids",
    "request_model",
    "serve",
]

ENV_TOKEN = "MLKIT_SERVE_TOKEN"
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

    return build_app(server, follow_s=follow_s)


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
) -> None:
    """Run ``mlkit serve NAME[:alias]`` (or ``mlkit serve --ab ...``) with uvicorn.

    Raises:
        ParameterError: ``host`` is reachable from other machines, ``$MLKIT_SERVE_TOKEN``
            is unset and ``allow_unauthenticated`` is False (see :func:`check_exposure`).
    """
    import uvicorn

    check_exposure(
        host, token=os.environ.get(ENV_TOKEN), allow_unauthenticated=allow_unauthenticated
    )
    if bool(target) == bool(ab):
        raise ParameterError(
            "mlkit serve needs exactly one of NAME[:ALIAS] or --ab NAME:a=0.9,NAME:b=0.1."
        )
    if ab:
        first = parse_ab(ab)[0]
        name, ref = first.name, first.ref
    else:
        name, ref = parse_target(target or "")
    app = create_app(
        name,
        ref,
        log_url=log_url,
        log_sync=log_sync,
        max_body_bytes=max_body_bytes,
        threads=threads,
        shadow=shadow,
        ab=ab,
        follow_s=follow_s,
    )
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
        + (f"  ab: {ab}" if ab else ""),
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
