"""What a running server holds and does, apart from HTTP: its models, scoring, log rows.

:class:`Server` keeps the version that answers (or the A/B arms and the shadow), follows the
aliases it serves and swaps in a version that moved, checks the bearer token, validates and
scores one /predict body, and builds the prediction log row of a response. The FastAPI routes
around it are in :mod:`mlkit.serve.endpoints`.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlkit.errors import ParameterError, UsageError
from mlkit.registry import loading, store
from mlkit.registry.loading import score
from mlkit.serve.routing import Variant, route
from mlkit.serve.schema import BODY_KEYS, request_model, summary
from mlkit.serve.shadow import Shadow, _warn

if TYPE_CHECKING:
    from mlkit.registry.loading import LoadedModel
    from mlkit.serve.predlog import PredictionLog

# What one /predict body comes to: (status, payload, n examples, output, error, X).
Outcome = tuple[int, dict[str, Any], int, Any, str | None, Any]


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

    def predict(self, body: bytes, loaded: LoadedModel | None = None) -> Outcome:
        """Validate and score one body: (status, payload, n examples, output, error, X)."""
        loaded = loaded or self.loaded
        refusal, X, single = self.prepare(body, loaded)
        if refusal is not None:
            return refusal
        return self.answer(X, single, score(loaded, X))

    def prepare(self, body: bytes, loaded: LoadedModel) -> tuple[Outcome | None, Any, bool]:
        """Validate one body into the model's inputs: (refusal or None, X, single example).

        Everything that can refuse a request happens here, before scoring: a refused body
        never reaches the model (nor, under ``--batch-max``, a batch).
        """
        from pydantic import ValidationError

        np = self.np
        try:
            req = self.schema.model_validate_json(body)
        except ValidationError as exc:
            detail = json.loads(exc.json(include_url=False, include_input=False))
            for item in detail:
                item["loc"] = ["body", *item["loc"]]
            return (422, {"detail": detail}, 0, None, summary(detail), None), None, False
        key = next(k for k in BODY_KEYS if getattr(req, k) is not None)
        single = not key.endswith("s")
        value = getattr(req, key)
        if key.startswith("record"):
            return self._prepare_records(loaded, key, [value] if single else value, single)
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
            return (422, {"detail": detail}, 0, None, summary(detail), None), None, single
        if key.startswith("raw"):
            try:
                X = loaded.raw_to_inputs(X)
            except UsageError as exc:
                detail = [{"type": "raw_inputs", "loc": ["body", key], "msg": str(exc)}]
                return (422, {"detail": detail}, 0, None, summary(detail), None), None, single
        return None, X, single

    @staticmethod
    def answer(X: Any, single: bool, preds: list[dict[str, Any]]) -> Outcome:
        """The outcome of a scored body: its predictions as the client gets and the log keeps."""
        payload = {"prediction": preds[0]} if single else {"predictions": preds}
        return 200, payload, len(X), payload, None, X

    def _prepare_records(
        self, loaded: LoadedModel, key: str, records: list[dict[str, Any]], single: bool
    ) -> tuple[Outcome | None, Any, bool]:
        """Records in the table's own columns, through the version's preprocessing."""
        try:
            X = loaded.records_to_inputs(records)
        except UsageError as exc:
            # A RecordError (mlkit.preprocess, not imported here) names the record and column;
            # other usage errors say the model takes no records.
            loc: list[Any] = ["body", key]
            if getattr(exc, "index", None) is not None:
                loc += [] if single else [exc.index]  # type: ignore[attr-defined]
                loc += [exc.column] if exc.column is not None else []  # type: ignore[attr-defined]
            kind = "record" if hasattr(exc, "index") else "records"
            detail = [{"type": kind, "loc": loc, "msg": str(exc)}]
            return (422, {"detail": detail}, 0, None, summary(detail), None), None, single
        return None, X, single

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
