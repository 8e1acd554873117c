"""The promotion gate: bounds on evaluation metrics, and the check of a version against them."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from mlkit._contract import REGISTRY_FILE
from mlkit._io import write_json
from mlkit.errors import ParameterError, RunNotFoundError
from mlkit.evaluate import promotion_gate
from mlkit.registry import evaluation
from mlkit.registry.store import RegistryFile, _locked, _read, _version_number

_BOUND_RE = re.compile(r"^\s*([^<>=\s]+)\s*(>=|<=|=)\s*(\S+)\s*$")


def parse_bound(text: str) -> tuple[str, str, float]:
    """``METRIC=0.1`` or ``METRIC<=0.1`` (at most) and ``METRIC>=0.9`` (at least).

    Returns:
        ``(metric, "max" or "min", value)``.
    """
    match = _BOUND_RE.match(text)
    value = None
    if match:
        try:
            value = float(match.group(3))
        except ValueError:
            value = None
    if not match or value is None or not math.isfinite(value):
        raise ParameterError(
            f"Bound {text!r} must be METRIC=NUMBER (at most) or METRIC>=NUMBER (at least). Pass "
            "--set fairness/demographic_parity_difference=0.1 or --set test/accuracy>=0.9."
        )
    return match.group(1), ("min" if match.group(2) == ">=" else "max"), value


def _bound_value(bound: dict[str, float]) -> float | dict[str, float]:
    """The stored form promotion_gate reads: a plain number for an upper bound alone."""
    return bound["max"] if set(bound) == {"max"} else dict(bound)


def format_bound(bound: Any) -> str:
    """``0.1`` -> ``"<= 0.1"``; ``{"min": 0.9}`` -> ``">= 0.9"``; a range shows both."""
    if isinstance(bound, dict):
        parts = [f"{op} {bound[k]:g}" for k, op in (("min", ">="), ("max", "<=")) if k in bound]
        return " and ".join(parts)
    return f"<= {bound:g}"


def get_bounds(name: str, root: Path | None = None) -> dict[str, Any]:
    """The model's promotion bounds: ``{metric: max}`` or ``{metric: {"min": .., "max": ..}}``."""
    return dict(_read(name, root).get("bounds") or {})


def set_bounds(
    name: str,
    bounds: list[str] | tuple[str, ...] = (),
    *,
    clear: bool = False,
    root: Path | None = None,
) -> dict[str, Any]:
    """Set (``METRIC=VALUE``, ``METRIC>=VALUE``) or clear the model's promotion bounds.

    A metric named again replaces its earlier bound; ``METRIC>=a`` and ``METRIC<=b`` in one call
    make a range. ``clear`` drops every bound first. Written under the model's lock, atomically,
    like every other change to registry.json.

    Returns:
        The bounds now in force.
    """
    parsed: dict[str, dict[str, float]] = {}
    for text in bounds:
        metric, side, value = parse_bound(text)
        parsed.setdefault(metric, {})[side] = value
    for metric, bound in parsed.items():
        if bound.get("min", -math.inf) > bound.get("max", math.inf):
            raise ParameterError(
                f"The bound for {metric!r} is empty: at least {bound['min']:g} and at most "
                f"{bound['max']:g}. Pass a minimum below the maximum."
            )
    _read(name, root)  # fail before the lock creates anything
    with _locked(name, root) as folder:
        reg = _read(name, root)
        current = {} if clear else dict(reg.get("bounds") or {})
        for metric, bound in parsed.items():
            current[metric] = _bound_value(bound)
        reg["bounds"] = current
        write_json(folder / REGISTRY_FILE, reg)
    return current


def gate(
    name: str,
    version: str | int,
    *,
    root: Path | None = None,
    reg: RegistryFile | None = None,
) -> dict[str, Any]:
    """Check a version against its model's bounds, using its run's newest evaluation.

    Returns:
        ``{"bounds", "run_id", "evaluation" (record id or None), "violations"}``; no bounds
        means no check and no violations.
    """

    reg = reg if reg is not None else _read(name, root)
    number = _version_number(version, reg)
    bounds = dict(reg.get("bounds") or {})
    entry = next(v for v in reg["versions"] if v["version"] == number)
    run_id = entry["run_id"]
    out: dict[str, Any] = {"bounds": bounds, "run_id": run_id, "evaluation": None}
    if not bounds:
        return {**out, "violations": []}
    try:
        record = evaluation.find_evaluation(run_id, root)
    except RunNotFoundError:
        record = None
    violations: list[str] = []
    if record is None:
        violations.append(
            f"no evaluation yet: run mlkit evaluate {run_id} (with --sensitive COLUMN for the "
            "fairness metrics)"
        )
    else:
        out["evaluation"] = record["id"]
    violations += promotion_gate((record or {}).get("result") or {}, bounds)
    return {**out, "violations": violations}
