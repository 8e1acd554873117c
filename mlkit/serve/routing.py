"""Which model answers a request: NAME[:ALIAS] targets, A/B variants, sticky buckets."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlkit.errors import ParameterError

DEFAULT_REF = "production"


@dataclass
class Variant:
    """One arm of an A/B split: ``name:ref`` answers a ``weight`` share of the clients."""

    name: str
    ref: str
    weight: float


def parse_ab(text: str) -> list[Variant]:
    """``NAME:a=0.9,NAME:b=0.1`` into variants: one model, distinct refs, weights summing to 1."""
    example = "Pass --ab digits:production=0.9,digits:candidate=0.1."
    variants: list[Variant] = []
    for part in (p.strip() for p in text.split(",")):
        target, eq, weight_text = part.rpartition("=")
        name, colon, ref = target.partition(":")
        if not (eq and name and colon and ref):
            raise ParameterError(f"--ab item {part!r} must be NAME:ALIAS=WEIGHT. {example}")
        try:
            weight = float(weight_text)
        except ValueError:
            weight = float("nan")
        if not 0.0 < weight <= 1.0:
            raise ParameterError(
                f"--ab item {part!r} has weight {weight_text!r}; it must be a number in (0, 1]. "
                f"{example}"
            )
        variants.append(Variant(name, ref, weight))
    if len(variants) < 2:
        raise ParameterError(f"--ab needs at least two variants, got {len(variants)}. {example}")
    names = {v.name for v in variants}
    if len(names) > 1:
        raise ParameterError(
            f"--ab variants must be versions of one model, got {', '.join(sorted(names))}. "
            f"{example}"
        )
    refs = [v.ref for v in variants]
    if len(set(refs)) < len(refs):
        raise ParameterError(f"--ab names a variant twice ({', '.join(refs)}). {example}")
    total = sum(v.weight for v in variants)
    if abs(total - 1.0) > 1e-6:
        raise ParameterError(f"--ab weights must sum to 1, got {total:g}. {example}")
    return variants


def bucket(client_id: str) -> float:
    """A fixed point in [0, 1) for a client id: the first 64 bits of its sha256."""
    digest = hashlib.sha256(client_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def route(client_id: str | None, weights: Sequence[float], rng: Any = random) -> int:
    """The index of the variant answering ``client_id`` (sticky), or a random one without it."""
    point = bucket(client_id) if client_id else rng.random()
    edge = 0.0
    for i, weight in enumerate(weights):
        edge += weight
        if point < edge:
            return i
    return len(weights) - 1  # rounding left the top of [0, 1) uncovered
