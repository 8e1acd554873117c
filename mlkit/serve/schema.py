"""The /predict request: its pydantic model, a body read within a size limit, request ids.

A refusal names the exact position that is wrong, in FastAPI's ``{"detail": [...]}`` shape,
so clients that already parse FastAPI errors read ours too. pydantic is imported inside
:func:`request_model`, so importing the server's modules stays cheap until an app is built.
:func:`openapi_paths` describes the three endpoints as the server answers them: the body is
read by hand (faster than FastAPI's parsing), so FastAPI alone would document none of it.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from typing import Any

# /predict body keys: scaled as in training, one or a batch; then raw features, one or a batch;
# then records in a table's own columns (a model trained on a table), one or a batch.
BODY_KEYS = ("input", "inputs", "raw_input", "raw_inputs", "record", "records")
# The largest finite float32: a number beyond it would be inf once cast, so it is a 422.
FLOAT32_MAX = 3.4028234663852886e38


def request_model(input_shape: tuple[int, ...], max_batch: int) -> Any:
    """The pydantic model of a /predict body for this input shape.

    Shape is checked by exact list lengths at every depth, dtype by strict numbers within
    float32's range (no strings, booleans, null, NaN or inf), so a refusal names the exact
    position that is wrong. A key given as null is refused like any other non-list.
    """
    from typing import Annotated

    from pydantic import ConfigDict, Field, Strict, create_model, model_validator

    # Bounded here, not only after the cast to float32 (which rounds values just beyond the
    # bound onto it): the schema /openapi.json declares is then exactly what is accepted.
    number = Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)
    example: Any = Annotated[float, Strict(), number]
    for size in reversed(input_shape):
        example = Annotated[list[example], Field(min_length=size, max_length=size)]
    batch = Annotated[list[example], Field(min_length=1, max_length=max_batch)]

    def exactly_one(model: Any) -> Any:
        given = [k for k in BODY_KEYS if getattr(model, k) is not None]
        if len(given) != 1:
            raise ValueError(
                'give exactly one of "input" (one example) or "inputs" (a batch of examples), '
                'scaled as in training, or "raw_input" / "raw_inputs" in the data\'s own units, '
                'or "record" / "records" in the table\'s own columns'
            )
        return model

    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        __validators__={"exactly_one": model_validator(mode="after")(exactly_one)},
        # None marks a key not given; it is not a value a client may send (defaults are not
        # validated, a null in the body is).
        input=(example, None),
        inputs=(batch, None),
        raw_input=(example, None),
        raw_inputs=(batch, None),
        # Checked column by column by the model's preprocessing, which names the record.
        record=(dict[str, Any], None),
        records=(Annotated[list[dict[str, Any]], Field(min_length=1, max_length=max_batch)], None),
    )


def summary(detail: list[dict[str, Any]]) -> str:
    """One line for the log row's ``error``: the first problem, where, and how many more."""
    first = detail[0] if detail else {}
    more = f" (+{len(detail) - 1} more)" if len(detail) > 1 else ""
    return f"{first.get('msg')} at {'.'.join(str(p) for p in first.get('loc', []))}{more}"


def request_ids() -> Callable[[], str]:
    """A source of request ids: 32 hex digits, unique across servers sharing a log.

    A random 64-bit prefix per app and a counter: as unique as a uuid4 in practice, without
    a system call per request, and in order within a server (cheaper index inserts).
    """
    prefix = secrets.token_hex(8)
    counter = itertools.count()
    return lambda: f"{prefix}{next(counter):016x}"


async def read_body(request: Any, limit: int) -> bytes | None:
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


# -- the OpenAPI description -------------------------------------------------------------
_STR, _INT, _NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}
_OPT_STR = {"type": ["string", "null"]}
# What every /predict response body says first: which request, which version answered.
_ANSWER = {
    "request_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    "model": _STR,
    "version": _INT,
    "sha256": _STR,
    "variant": {**_STR, "description": "the A/B variant that answered (only under --ab)"},
}
_PREDICTION = {
    "classification": {
        "type": "object",
        "required": ["class", "index", "probabilities"],
        "properties": {
            "class": _STR,
            "index": {"type": "integer", "minimum": 0},
            "probabilities": {"type": "array", "items": _NUM},
        },
    },
    "regression": {"type": "object", "required": ["value"], "properties": {"value": _NUM}},
}
# FastAPI's validation error list, which a 422 carries in ``detail``.
_VALIDATION = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["type", "loc", "msg"],
        "properties": {
            "type": _STR,
            "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
            "msg": _STR,
            "ctx": {"type": "object"},
        },
    },
}
_REFUSALS = {
    "401": "missing or wrong bearer token",
    "413": "body over the server's --max-body-bytes",
    "422": "invalid JSON, not exactly one key, wrong shape, a non-number, a number beyond "
    "float32's range, or an input whose output overflows (type finite_output); each problem "
    "names its position in the body",
    "500": "the model failed on this input",
    "503": "the prediction log cannot be written, so nothing is answered; retry later",
}
_WWW_AUTHENTICATE = {"description": "Bearer", "required": True, "schema": _STR}
_METADATA_KEYS = {
    "name": _STR,
    "version": _INT,
    "sha256": _STR,
    "model": _OPT_STR,
    "input_shape": {"type": "array", "items": _INT},
    "dtype": {"const": "float32"},
    "task": {"enum": ["classification", "regression"]},
    "classes": {"type": "array", "items": _STR},
    "data_version": {},
    "raw_inputs": {"type": "boolean"},
    "records": {"type": "boolean"},
    "run_id": _OPT_STR,
    "registered": _OPT_STR,
    "ref": _STR,
    "max_body_bytes": _INT,
    "max_batch": _INT,
    "log": _STR,
    "shadow": {"type": ["object", "null"]},
    "ab": {"type": ["array", "null"], "items": {"type": "object"}},
}
_METADATA = {"type": "object", "required": list(_METADATA_KEYS), "properties": _METADATA_KEYS}
_HEALTH = {
    "type": "object",
    "required": ["status", "model", "version"],
    "properties": {"status": {"const": "ok"}, "model": _STR, "version": _INT},
}


def _json(schema: dict[str, Any], description: str, **headers: str) -> dict[str, Any]:
    """One OpenAPI response: a JSON body and the headers it always carries."""
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = {
            name: {"description": text, "required": True, "schema": _STR}
            for name, text in headers.items()
        }
    return response


def _answer(*, ab: bool, **fields: dict[str, Any]) -> dict[str, Any]:
    """The body of a /predict response with ``fields`` after the request id and version."""
    required = ["request_id", "model", "version", "sha256", *(["variant"] if ab else [])]
    return {
        "type": "object",
        "required": [*required, *fields],
        "properties": {**_ANSWER, **fields},
    }


def predict_body(
    request_schema: dict[str, Any], *, raw: bool, records: bool = False
) -> dict[str, Any]:
    """The /predict request body schema, from the pydantic model's JSON schema.

    The pydantic model checks "exactly one key" in a validator, which JSON Schema has no word
    for; with the keys closed, ``minProperties`` and ``maxProperties`` of 1 say the same.
    ``raw`` is whether every version that may answer can scale raw features: without it a
    ``raw_input`` gets a 422, so those keys are not offered.
    """
    keys = [*BODY_KEYS[:2], *(BODY_KEYS[2:4] if raw else ()), *(BODY_KEYS[4:] if records else ())]
    props = request_schema["properties"]
    return {
        "title": "PredictRequest",
        "description": 'exactly one of "input" (one example) or "inputs" (a batch), scaled as '
        'in training, or "raw_input" / "raw_inputs" in the data\'s own units',
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {k: {n: v for n, v in props[k].items() if n != "default"} for k in keys},
    }


def predict_responses(*, task: str, token: bool, ab: bool) -> dict[str, Any]:
    """Every response of POST /predict: 200 and each refusal, with its body and headers."""
    headers = {"X-Request-ID": "the request id, as in the body and the prediction log"}
    if ab:
        headers["X-Variant"] = "the A/B variant that answered"
    one = _PREDICTION[task]
    many = {"type": "array", "items": one}
    responses = {
        "200": _json(
            {"oneOf": [_answer(ab=ab, prediction=one), _answer(ab=ab, predictions=many)]},
            'the prediction ("input") or one per example ("inputs")',
            **headers,
        )
    }
    for code, text in _REFUSALS.items():
        if code == "401" and not token:
            continue
        detail = _VALIDATION if code == "422" else _STR
        responses[code] = _json(_answer(ab=ab, detail=detail), text, **headers)
    if token:
        responses["401"]["headers"]["WWW-Authenticate"] = _WWW_AUTHENTICATE
    return responses


def openapi_paths(
    request_schema: dict[str, Any],
    *,
    task: str,
    raw: bool,
    token: bool,
    ab: bool,
    records: bool = False,
) -> dict[str, Any]:
    """The OpenAPI ``paths`` of /predict, /health and /metadata, as the server answers them.

    Args:
        request_schema: the JSON schema of :func:`request_model`.
        task: ``classification`` or ``regression``: the shape of a prediction.
        raw: whether ``raw_input`` / ``raw_inputs`` are accepted (see :func:`predict_body`).
        token: whether a bearer token is required; 401 is declared only then, since without
            one the server never answers it.
        ab: whether an A/B split answers (every answer then names its ``variant``).
    """
    secured: dict[str, Any] = {"security": [{"bearer": []}]} if token else {}
    client_id = {
        "name": "X-Client-ID",
        "in": "header",
        "required": False,
        "description": "pins a client to one A/B variant (ignored without --ab)",
        "schema": _STR,
    }
    metadata = {"200": _json(_METADATA, "the served version, limits, log and arms")}
    if token:
        refusal = {"type": "object", "required": ["detail"], "properties": {"detail": _STR}}
        metadata["401"] = _json(refusal, _REFUSALS["401"])
        metadata["401"]["headers"] = {"WWW-Authenticate": _WWW_AUTHENTICATE}
    body = {"application/json": {"schema": predict_body(request_schema, raw=raw, records=records)}}
    return {
        "/predict": {
            "post": {
                "summary": "Predict",
                "description": "Score one example or a batch. Every response, refusals "
                "included, is logged before it is sent.",
                "operationId": "predict",
                "parameters": [client_id],
                "requestBody": {"required": True, "content": body},
                "responses": predict_responses(task=task, token=token, ab=ab),
                **secured,
            }
        },
        "/health": {
            "get": {
                "summary": "Health",
                "description": "Liveness; no token needed.",
                "operationId": "health",
                "responses": {"200": _json(_HEALTH, "the server is up")},
            }
        },
        "/metadata": {
            "get": {
                "summary": "Metadata",
                "operationId": "metadata",
                "responses": metadata,
                **secured,
            }
        },
    }
