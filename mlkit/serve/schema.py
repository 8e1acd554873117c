"""The /predict request: its pydantic model, a body read within a size limit, request ids.

A refusal names the exact position that is wrong, in FastAPI's ``{"detail": [...]}`` shape,
so clients that already parse FastAPI errors read ours too. pydantic is imported inside
:func:`request_model`, so importing the server's modules stays cheap until an app is built.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from typing import Any

# /predict body keys: scaled as in training, one or a batch; then raw features, one or a batch.
BODY_KEYS = ("input", "inputs", "raw_input", "raw_inputs")


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
