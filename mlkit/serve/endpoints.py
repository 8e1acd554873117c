"""The HTTP side of the server: the FastAPI app, its lifespan and its three endpoints.

This module imports FastAPI and Starlette at the top, so only building an app pays for them:
:func:`mlkit.serve.app.create_app` imports it once the models have loaded. Every /predict
response, refusals included, is logged before it is sent; a response whose row cannot be
written becomes a 503 (the log is the record of what the server said). /openapi.json
describes the endpoints as they answer (:func:`mlkit.serve.schema.openapi_paths`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.background import BackgroundTask

from mlkit._io import now_iso
from mlkit.serve.batching import Batcher
from mlkit.serve.predlog import LogBatch
from mlkit.serve.schema import openapi_paths, read_body, request_ids, summary
from mlkit.serve.server import Outcome, Server
from mlkit.serve.shadow import _warn

if TYPE_CHECKING:
    from mlkit.registry.loading import LoadedModel

# Which variant answers a request, and with which model; the variant is None without --ab.
Arm = tuple[str | None, "LoadedModel"]
UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}
WRONG_TOKEN = "missing or wrong bearer token"
LOG_DOWN = "prediction log unavailable; retry later"
# Inputs far beyond the training range can overflow float32 inside the model; JSON has no
# number for the NaN or inf that comes out, and the input is what to change.
NOT_FINITE = [
    {
        "type": "finite_output",
        "loc": ["body"],
        "msg": "the model's output is not a finite number for this input; send inputs in the "
        "model's input space (scaled as in training), or raw features in the data's units",
    }
]
_JSON = "application/json"
# JSONResponse's rendering (UTF-8, compact, no NaN) without its per-response set-up: a body is
# encoded once, and that text is also the log row's output when it is ASCII (as the log writes).
_ENCODE = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False
).encode


def build_app(server: Server, *, follow_s: float, batcher: Batcher | None = None) -> FastAPI:
    """The FastAPI app around ``server``; it checks the served aliases every ``follow_s`` s.

    With a ``batcher`` (``--batch-max`` over 1), concurrent requests share forward passes.
    """

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
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
        server.log.close()

    loaded = server.loaded
    app = FastAPI(
        title=f"mlkit serve {loaded.name}",
        version=f"v{loaded.version}",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.server = server
    endpoints = Endpoints(server, batcher)
    app.add_api_route("/predict", endpoints.predict, methods=["POST"], response_model=None)
    app.add_api_route("/health", endpoints.health, methods=["GET"], response_model=None)
    app.add_api_route("/metadata", endpoints.metadata, methods=["GET"], response_model=None)
    # Built on every request, not cached: the version that answers can change while serving.
    app.openapi = lambda: openapi_document(app, server)  # type: ignore[method-assign]
    return app


def openapi_document(app: FastAPI, server: Server) -> dict[str, Any]:
    """/openapi.json: FastAPI's document with the endpoints described as the server answers.

    /predict reads its body by hand (faster than FastAPI's parsing), so FastAPI alone would
    declare no request body and no refusal; :func:`openapi_paths` declares both.
    """
    answering = [arm for _, arm in server.arms] or [server.loaded]
    doc = get_openapi(
        title=app.title,
        version=f"v{server.loaded.version}",
        openapi_version=app.openapi_version,
        routes=app.routes,
    )
    doc["paths"].update(
        openapi_paths(
            server.schema.model_json_schema(),
            task=server.loaded.task,
            raw=all(m.metadata()["raw_inputs"] for m in answering),
            records=all(m.preprocessor is not None for m in answering),
            token=server.token is not None,
            ab=bool(server.arms),
        )
    )
    if server.token is not None:
        bearer = {"type": "http", "scheme": "bearer", "description": "$MLKIT_SERVE_TOKEN"}
        doc.setdefault("components", {})["securitySchemes"] = {"bearer": bearer}
    return doc


class Endpoints:
    """/predict, /health and /metadata of one server, with its log batch and request ids."""

    def __init__(self, server: Server, batcher: Batcher | None = None) -> None:
        self.server = server
        self.batch = LogBatch(server.log)
        self.batcher = batcher
        self.next_request_id = request_ids()
        # (variant, name, version, sha256) -> that part of every response body it answers.
        self.heads: dict[tuple[str | None, str, int, str], str] = {}

    def respond(
        self,
        rid: str,
        status: int,
        payload: dict[str, Any] | str,
        arm: Arm | None = None,
        **headers: str,
    ) -> Response:
        """A response that says which request it answers and which version answered.

        ``payload`` is a dict or its compact JSON text; a payload holding NaN or inf raises
        ValueError, as JSONResponse would.
        """
        variant, answered = arm or (None, self.server.loaded)
        text = payload if isinstance(payload, str) else _ENCODE(payload)
        # The body's first keys, as JSONResponse would write them; then the payload's own.
        key = (variant, answered.name, answered.version, answered.sha256)
        head = self.heads.get(key)
        if head is None:
            head = _ENCODE(
                {
                    "model": answered.name,
                    "version": answered.version,
                    "sha256": answered.sha256,
                    **({"variant": variant} if variant is not None else {}),
                }
            )[1:-1]
            self.heads[key] = head
        body = f'{{"request_id":"{rid}",{head},{text[1:]}'.encode()
        if variant is not None:
            headers = {**headers, "X-Variant": variant}
        return Response(
            body, status_code=status, headers={"X-Request-ID": rid, **headers}, media_type=_JSON
        )

    async def refuse(
        self, rid: str, status: int, detail: str, arm: Arm, row: dict[str, Any]
    ) -> Response:
        """A refusal before scoring (401, 413), logged first like every answer."""
        server = self.server
        try:
            await self.batch.write(
                server.row(
                    request_id=rid,
                    status=status,
                    error=detail,
                    variant=arm[0],
                    loaded=arm[1],
                    **row,
                )
            )
        except Exception as exc:  # no row, no answer: the log is the record of what we said
            _warn(f"prediction log write failed: {server.log.redact(str(exc))}")
            return self.respond(rid, 503, {"detail": LOG_DOWN}, arm)
        headers = UNAUTHORIZED if status == 401 else {}
        return self.respond(rid, status, {"detail": detail}, arm, **headers)

    async def predict(self, request: Request) -> Response:
        """POST /predict: check the token and size, score, log, answer, then shadow."""
        server = self.server
        t0, started, rid = time.perf_counter(), now_iso(), self.next_request_id()
        row: dict[str, Any] = {"started": started, "t0": t0}
        arm = server.pick(request.headers.get("x-client-id"))
        if not server.authorized(request.headers.get("authorization")):
            return await self.refuse(rid, 401, WRONG_TOKEN, arm, row)
        body = await read_body(request, server.max_body_bytes)
        if body is None:
            detail = f"request body over {server.max_body_bytes} bytes; send smaller batches"
            return await self.refuse(rid, 413, detail, arm, row)

        status, payload, n, output, error, X = await self.score(body, arm[1])
        # Rendered before it is logged, so the row says what the client gets.
        try:
            text = _ENCODE(payload)
        except ValueError:  # NaN or inf in the output
            status, payload, n, output, X = 422, {"detail": NOT_FINITE}, 0, None, None
            error = summary(NOT_FINITE)
            text = _ENCODE(payload)
        response = self.respond(rid, status, text, arm)
        if output is payload and text.isascii():
            output = text  # the log's JSON of it, written once (the log escapes non-ASCII)
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
            await self.batch.write(row_of_response)
        except Exception as exc:
            _warn(f"prediction log write failed: {server.log.redact(str(exc))}")
            return self.respond(rid, 503, {"detail": LOG_DOWN}, arm)
        if server.shadow is not None and X is not None:
            # Runs once the response is sent, and only enqueues: the client never waits on it.
            response.background = BackgroundTask(server.shadow.submit, rid, X)
        return response

    async def score(self, body: bytes, loaded: LoadedModel) -> Outcome:
        """Validate and score one body; a model error is the server's fault: a 500."""
        server = self.server
        try:
            if self.batcher is None:
                # Scored on the event loop, as a bare FastAPI app would: a thread hop per
                # request costs more than a small model's forward pass. max_batch bounds it.
                return server.predict(body, loaded)
            refusal, X, single = server.prepare(body, loaded)
            if refusal is not None:  # a refused body never joins a batch
                return refusal
            return server.answer(X, single, await self.batcher.score(loaded, X))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            return 500, {"detail": "prediction failed"}, 0, None, error, None

    def health(self) -> JSONResponse:
        """GET /health: liveness, no token needed (it says nothing about inputs)."""
        current = self.server.loaded
        return JSONResponse({"status": "ok", "model": current.name, "version": current.version})

    def metadata(self, request: Request) -> JSONResponse:
        """GET /metadata: the served version, the limits, the log, the shadow and the arms."""
        server = self.server
        if not server.authorized(request.headers.get("authorization")):
            return JSONResponse({"detail": WRONG_TOKEN}, status_code=401, headers=UNAUTHORIZED)
        shadow = server.shadow
        return JSONResponse(
            {
                **server.loaded.metadata(),
                "ref": server.ref,
                "max_body_bytes": server.max_body_bytes,
                "max_batch": server.max_batch,
                "log": server.log.shown_url,
                "shadow": None
                if shadow is None
                else {
                    "name": shadow.loaded.name,
                    "version": shadow.loaded.version,
                    "sha256": shadow.loaded.sha256,
                    "dropped": shadow.dropped,
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
