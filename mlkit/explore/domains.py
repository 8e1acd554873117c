"""What each parameter's control can take, and the search space made of it when none is given.

Kept apart from the widgets: which values a slider or dropdown offers is a question of the
parameters cell and the search space, and the same answer makes the derived space, so a
value picked by hand always fits the study.
"""

from __future__ import annotations

import math
from typing import Any

from mlkit.errors import ParameterError
from mlkit.run import params as _params


def clamp(value: Any, low: float, high: float) -> float:
    """``value`` as a float inside [low, high]; ``low`` when it is no number."""
    try:
        return min(max(float(value), low), high)
    except (TypeError, ValueError):
        return low


def rule_range(param: _params.Parameter) -> tuple[float, float, float] | None:
    """(low, high, step) for a slider from a two-sided rule, else None.

    The step is a round number (0.01 on [0, 1)); an exclusive end moves one step
    inside. A default outside the range (lr 0.003 on "above 0 and at most 10") gets
    a text field instead: a linear slider cannot reach it.
    """
    rule = param.rule
    if param.type not in ("int", "float") or rule is None or rule.choices:
        return None
    if rule.low is None or rule.high is None:
        return None
    if not (math.isfinite(rule.low) and math.isfinite(rule.high)) or rule.low >= rule.high:
        return None
    step = 1 if param.type == "int" else 10 ** math.floor(math.log10((rule.high - rule.low) / 100))
    low = rule.low if rule.low_inclusive else rule.low + step
    high = rule.high if rule.high_inclusive else rule.high - step
    default = param.default
    if isinstance(default, bool) or not isinstance(default, int | float):
        return None
    return (low, high, step) if low < high and low <= default <= high else None


def choices(param: _params.Parameter, rule: _params.Rule) -> list[Any]:
    """A ``one of`` rule's choices in the parameter's type (``one of 1, 2`` on an int)."""
    return [c if param.type in ("str", "any") else _params.coerce(param, c) for c in rule.choices]


def derived_space(signature: _params.Signature) -> dict[str, Any]:
    """A space for a notebook given none: what the controls can take, no more.

    Each parameter whose control has a finite domain becomes a dimension with exactly
    that domain (a ``one of`` rule, a bool, a two-sided numeric rule), so a hand-picked
    value always fits the study. Other parameters travel as fixed values per run.
    Sampling such a space would search datasets and devices, so sweeping needs a real one.

    Raises:
        ParameterError: no parameter has a finite domain.
    """
    out: dict[str, Any] = {}
    for param in signature.parameters:
        if param.name == "seed":
            continue
        if param.type == "bool":
            out[param.name] = [False, True]
        elif param.rule and param.rule.choices:
            out[param.name] = choices(param, param.rule)
        elif bounds := rule_range(param):
            low, high, _ = bounds
            kind = param.type
            out[param.name] = {
                "type": kind,
                "low": int(low) if kind == "int" else low,
                "high": int(high) if kind == "int" else high,
            }
    if not out:
        raise ParameterError(
            f"Notebook {signature.notebook} has no parameter with a 'one of' rule, a bool or a "
            "two-sided range, so no search space can be made from it. Pass "
            "space='space.yaml' (see mlkit.space for the format)."
        )
    return out
