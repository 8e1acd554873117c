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
the limit, 422 invalid JSON, wrong shape, a non-number, or NaN/inf anywhere (the error names
the position), 503 when the prediction log cannot be written. Every /predict response, refusals
included, gets a row in the prediction log (:mod:`mlkit.predlog`) before it is sent, and carries
its request id in the ``X-Request-ID`` header and the body.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlkit._io import now_iso
from mlkit.errors import ParameterError, UsageError
from mlkit.registry import loading, store
from mlkit.registry.loading import score
from mlkit.registry.store import parse_target
from mlkit.serve import predlog
from mlkit.serve.predlog import LogBatch
from mlkit.serve.routing import DEFAULT_REF, Variant, parse_ab, route
from mlkit.serve.shadow import Shadow, _warn

if TYPE_CHECKING:
    from fastapi import FastAPI

    from mlkit.registry.loading import LoadedModel
    from mlkit.serve.predlog import PredictionLog


ENV_TOKEN = "MLKIT_SERVE_TOKEN"
# /predict body keys: scaled as in training, one or a batch; then raw features, one or a batch.
BODY_KEYS = ("input", "inputs", "raw_input", "raw_inputs")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def request_model(input_shape: tuple[int, ...], max_batch: int) -> Any:
    """The pydantic model of a /predict body for this input shape.

    Shape is checked by exact list lengths at every depth, dtype by strict finite numbers (no
    strings, booleans, NaN or inf), so a refusal names the exact position that is wrong.
    """
    from typing import Annotated

    from pydantic import ConfigDict, Field, Strict, create_model, model_validator

    example: Any = Annotated[float, Strict(), Field(allow_inf_nan=False)]
    for size in reversed(input_shape):
        example = Annotated[list[example], Field(min_length=size, max_length=size)]
    batch = Annotated[list[example], Field(min_length=1, max_length=max_batch)]

    def exactly_one(model: Any) -> Any:
        given = [k for k in BODY_KEYS if getattr(model, k) is not None]
        if len(given) != 1:
            raise ValueError(
                'give exactly one of "input" (one example) or "inputs" (a batch of examples), '
                'scaled as in training, or "raw_input" / "raw_inputs" in the data\'s own units'
            )
        return model

    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        __validators__={"exactly_one": model_validator(mode="after")(exactly_one)},
        input=(example | None, None),
        inputs=(batch | None, None),
        raw_input=(example | None, None),
        raw_inputs=(batch | None, None),
    )


class Server:
    """What the app holds: the model, its request schema, the log and the token."""

    def __init__(
        self,
        loaded: LoadedModel,
        log: PredictionLog,
        *,
        ref: str,
        root: Path | None = None,
        token: str | None,
        max_body_bytes: int,
        max_batch: int,
    ) -> None:
        import numpy as np

        self.np = np
        self.loaded = loaded
        self.log = log
        self.ref = ref
        self.root = root
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.max_batch = max_batch
        self.schema = request_model(loaded.input_shape, max_batch)
        self.shadow: Shadow | None = None
        # A/B arms: (variant, its model); empty when one version answers everything.
        self.arms: list[tuple[Variant, LoadedModel]] = []
        self.shadow_ref: str | None = None

    def follow(self) -> list[str]:
        """Swap in the version each followed alias points at now; what moved, in words.

        A model is replaced by one reference assignment, so a request holding the old one
        finishes with it. A new version that cannot load, or takes another input shape, is
        not swapped in: the change is reported and the old version keeps answering.
        """

        cache: dict[tuple[str, int], LoadedModel] = {}

        def moved(current: LoadedModel, ref: str) -> LoadedModel | None:
            if loading.is_pinned(ref):
                return None
            number = store.resolve(current.name, ref, self.root)
            if number == current.version:
                return None
            key = (current.name, number)
            if key not in cache:
                cache[key] = loading.load_model(current.name, number, root=self.root)
            new = cache[key]
            if new.input_shape != current.input_shape:
                raise ParameterError(
                    f"{current.name}:{ref} now points at v{number}, which takes inputs of shape "
                    f"{list(new.input_shape)}, not {list(current.input_shape)}; still answering "
                    f"with v{current.version}. Serve v{number} on its own server."
                )
            return new

        changes = []
        if self.arms:
            for i, (variant, arm) in enumerate(self.arms):
                if (new := moved(arm, variant.ref)) is not None:
                    self.arms[i] = (variant, new)
                    changes.append(f"{arm.name}:{variant.ref} v{arm.version} -> v{new.version}")
                    if variant.ref == self.ref:
                        self.loaded = new
        elif (new := moved(self.loaded, self.ref)) is not None:
            changes.append(f"{new.name}:{self.ref} v{self.loaded.version} -> v{new.version}")
            self.loaded = new
        if self.shadow is not None and self.shadow_ref is not None:
            old = self.shadow.loaded
            if (new := moved(old, self.shadow_ref)) is not None:
                self.shadow.loaded = new
                changes.append(
                    f"shadow {old.name}:{self.shadow_ref} v{old.version} -> v{new.version}"
                )
        return changes

    def follow_every(self, seconds: float, stop: threading.Event) -> None:
        """Call :meth:`follow` every ``seconds`` until ``stop`` is set (a daemon thread's loop)."""
        while not stop.wait(seconds):
            try:
                for change in self.follow():
                    _warn(f"alias moved: {change}; new requests get the new version")
            except Exception as exc:  # the server keeps answering with what it has
                _warn(f"alias check failed, still serving what it had: {exc}")

    def pick(self, client_id: str | None) -> tuple[str | None, LoadedModel]:
        """The variant label and model that answer this client."""
        if not self.arms:
            return None, self.loaded
        variant, loaded = self.arms[route(client_id, [v.weight for v, _ in self.arms])]
        return variant.ref, loaded

    # -- pieces of a request --------------------------------------------------------
    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token
        )

    def predict(
        self, body: bytes, loaded: LoadedModel | None = None
    ) -> tuple[int, dict[str, Any], int, Any, str | None, Any]:
        """Validate and score one body: (status, payload, n examples, output, error, X)."""
        from pydantic import ValidationError

        np = self.np
        try:
            req = self.schema.model_validate_json(body)
        except ValidationError as exc:
            detail = json.loads(exc.json(include_url=False, include_input=False))
            for item in detail:
                item["loc"] = ["body", *item["loc"]]
            return 422, {"detail": detail}, 0, None, _summary(detail), None
        key = next(k for k in BODY_KEYS if getattr(req, k) is not None)
        single = not key.endswith("s")
        value = getattr(req, key)
        X = np.asarray([value] if single else value, dtype=np.float32)
        finite = np.isfinite(X)
        if not finite.all():  # finite in float64, out of float32's range
            bad = np.argwhere(~finite)
            pos = [int(i) for i in (bad[0][1:] if single else bad[0])]
            detail = [
                {
                    "type": "finite_number",
                    "loc": ["body", key, *pos],
                    "msg": "Input should be a finite float32 (|x| < 3.4e38)",
                }
            ]
            return 422, {"detail": detail}, 0, None, _summary(detail), None
        loaded = loaded or self.loaded
        if key.startswith("raw"):
            try:
                X = loaded.raw_to_inputs(X)
            except UsageError as exc:
                detail = [{"type": "raw_inputs", "loc": ["body", key], "msg": str(exc)}]
                return 422, {"detail": detail}, 0, None, _summary(detail), None
        preds = score(loaded, X)
        payload = {"prediction": preds[0]} if single else {"predictions": preds}
        return 200, payload, len(X), payload, None, X

    def row(
        self,
        *,
        request_id: str,
        started: str,
        t0: float,
        status: int,
        n: int = 0,
        body: bytes | None = None,
        output: Any = None,
        error: str | None = None,
        loaded: LoadedModel | None = None,
        variant: str | None = None,
    ) -> dict[str, Any]:
        """The prediction log row of one response."""
        loaded = loaded or self.loaded
        return {
            "request_id": request_id,
            "time": started,
            "role": "primary",
            "model": loaded.name,
            "version": loaded.version,
            "sha256": loaded.sha256,
            "status": status,
            "latency_ms": (time.perf_counter() - t0) * 1000.0,
            "n": n,
            "input": body.decode("utf-8", errors="replace") if body is not None else None,
            "output": output,
            "error": error,
            "variant": variant,
        }


def request_ids() -> Callable[[], str]:
    """A source of request ids: 32 hex digits, unique across servers sharing a log.

    A random 64-bit prefix per app and a counter: as unique as a uuid4 in practice, without
    a system call per request, and in order within a server (cheaper index inserts).
    """
    prefix = secrets.token_hex(8)
    counter = itertools.count()
    return lambda: f"{prefix}{next(counter):016x}"


def _summary(detail: list[dict[str, Any]]) -> str:
    first = detail[0] if detail else {}
    more = f" (+{len(detail) - 1} more)" if len(detail) > 1 else ""
    return f"{first.get('msg')} at {'.'.join(str(p) for p in first.get('loc', []))}{more}"


async def _read_body(request: Any, limit: int) -> bytes | None:
    """The body, or None when it is over ``limit`` bytes.

    An oversize body is still drained (up to 8x the limit) so the client reads a clean 413
    instead of a reset connection; beyond that the connection is dropped.
    """
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) <= limit:
        return await request.body()  # the HTTP parser holds the body to its declared length
    too_big = bool(length and length.isdigit())
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            too_big = True
        if too_big:
            if size > 8 * limit:
                break
            continue
        chunks.append(chunk)
    return None if too_big else b"".join(chunks)


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
    import torch
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.background import BackgroundTask

    torch.set_num_threads(threads)
    loaded = loading.load_model(name, ref, root=root)
    log = predlog.open_log(name, log_url, root, sync=log_sync)
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
        other = loading.load_model(*shadow_target, root=root)
        if other.input_shape != loaded.input_shape:
            raise ParameterError(
                f"--shadow {shadow} takes inputs of shape {list(other.input_shape)}, but "
                f"{name}:{ref} takes {list(loaded.input_shape)}: it could score none of them. "
                "Shadow a version of a model trained on the same data."
            )
        server.shadow = Shadow(other, log)
        server.shadow_ref = shadow_target[1]
    for variant in variants:
        arm = loaded if variant.ref == ref else loading.load_model(name, variant.ref, root=root)
        if arm.input_shape != loaded.input_shape:
            raise ParameterError(
                f"--ab variant {name}:{variant.ref} takes inputs of shape "
                f"{list(arm.input_shape)}, but {name}:{ref} takes {list(loaded.input_shape)}. "
                "Split traffic only between versions trained on the same data."
            )
        server.arms.append((variant, arm))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        import gc

        # torch and the app are loaded for good: keep their objects out of every collection
        # (a full one walks all of them, a pause of milliseconds in the middle of requests).
        gc.collect()
        gc.freeze()
        stop = threading.Event()
        if follow_s > 0:
            threading.Thread(
                target=server.follow_every,
                args=(follow_s, stop),
                name="mlkit-follow-alias",
                daemon=True,
            ).start()
        yield
        stop.set()
        if server.shadow is not None:
            server.shadow.close()
        log.close()

    app = FastAPI(
        title=f"mlkit serve {name}",
        version=f"v{loaded.version}",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.server = server
    batch = LogBatch(log)
    next_request_id = request_ids()
    unauthorized = {"WWW-Authenticate": "Bearer"}

    def respond(
        rid: str,
        status: int,
        payload: dict[str, Any],
        arm: tuple[str | None, LoadedModel] | None = None,
        **headers: str,
    ) -> JSONResponse:
        variant, answered = arm or (None, server.loaded)
        body = {
            "request_id": rid,
            "model": answered.name,
            "version": answered.version,
            "sha256": answered.sha256,
            **({"variant": variant} if variant is not None else {}),
            **payload,
        }
        if variant is not None:
            headers = {**headers, "X-Variant": variant}
        return JSONResponse(body, status_code=status, headers={"X-Request-ID": rid, **headers})

    async def logged(
        rid: str,
        status: int,
        payload: dict[str, Any],
        arm: tuple[str | None, LoadedModel],
        **row: Any,
    ) -> JSONResponse:
        try:
            await batch.write(
                server.row(request_id=rid, status=status, variant=arm[0], loaded=arm[1], **row)
            )
        except Exception as exc:  # no row, no answer: the log is the record of what we said
            _warn(f"prediction log write failed: {log.redact(str(exc))}")
            return respond(rid, 503, {"detail": "prediction log unavailable; retry later"}, arm)
        headers = unauthorized if status == 401 else {}
        return respond(rid, status, payload, arm, **headers)

    async def predict(request: Request) -> JSONResponse:
        t0, started, rid = time.perf_counter(), now_iso(), next_request_id()
        row: dict[str, Any] = {"started": started, "t0": t0}
        arm = server.pick(request.headers.get("x-client-id"))
        if not server.authorized(request.headers.get("authorization")):
            detail = "missing or wrong bearer token"
            return await logged(rid, 401, {"detail": detail}, arm, error=detail, **row)
        body = await _read_body(request, server.max_body_bytes)
        if body is None:
            detail = f"request body over {server.max_body_bytes} bytes; send smaller batches"
            return await logged(rid, 413, {"detail": detail}, arm, error=detail, **row)

        # Scored on the event loop, as a bare FastAPI app would: a thread hop per request
        # costs more than a small model's forward pass. max_batch bounds the longest one.
        try:
            status, payload, n, output, error, X = server.predict(body, arm[1])
        except Exception as exc:  # a model error is the server's fault: 500, logged
            status, payload, n, output, X = 500, {"detail": "prediction failed"}, 0, None, None
            error = f"{type(exc).__name__}: {exc}"
        try:
            row_of_response = server.row(
                request_id=rid,
                status=status,
                n=n,
                body=body,
                output=output,
                error=error,
                loaded=arm[1],
                variant=arm[0],
                **row,
            )
            await batch.write(row_of_response)
        except Exception as exc:
            _warn(f"prediction log write failed: {log.redact(str(exc))}")
            return respond(rid, 503, {"detail": "prediction log unavailable; retry later"}, arm)
        response = respond(rid, status, payload, arm)
        if server.shadow is not None and X is not None:
            # Runs once the response is sent, and only enqueues: the client never waits on it.
            response.background = BackgroundTask(server.shadow.submit, rid, X)
        return response

    def health() -> JSONResponse:
        current = server.loaded
        return JSONResponse({"status": "ok", "model": current.name, "version": current.version})

    def metadata(request: Request) -> JSONResponse:
        if not server.authorized(request.headers.get("authorization")):
            return JSONResponse(
                {"detail": "missing or wrong bearer token"}, status_code=401, headers=unauthorized
            )
        return JSONResponse(
            {
                **server.loaded.metadata(),
                "ref": ref,
                "max_body_bytes": server.max_body_bytes,
                "max_batch": server.max_batch,
                "log": log.shown_url,
                "shadow": None
                if server.shadow is None
                else {
                    "name": server.shadow.loaded.name,
                    "version": server.shadow.loaded.version,
                    "sha256": server.shadow.loaded.sha256,
                    "dropped": server.shadow.dropped,
                },
                "ab": None
                if not server.arms
                else [
                    {
                        "variant": variant.ref,
                        "weight": variant.weight,
                        "version": arm.version,
                        "sha256": arm.sha256,
                    }
                    for variant, arm in server.arms
                ],
            }
        )

    # Annotations are strings here (from __future__ import annotations) naming classes that are
    # imported late; FastAPI needs the classes themselves to inject the Request.
    for func, method, path in (
        (predict, "POST", "/predict"),
        (health, "GET", "/health"),
        (metadata, "GET", "/metadata"),
    ):
        func.__annotations__ = {k: Request for k in func.__annotations__ if k == "request"} | {
            "return": JSONResponse
        }
        app.add_api_route(path, func, methods=[method], response_model=None)

    return app


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
) -> None:
    """Run ``mlkit serve NAME[:alias]`` (or ``mlkit serve --ab ...``) with uvicorn."""
    import uvicorn

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
    if host not in LOOPBACK and server.token is None:
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
