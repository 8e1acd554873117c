"""The newest examples a model answered, read from the rows of its prediction log.

A logged request may carry one input or a batch; its answer one prediction or as many. The
monitor's window (arrays) and a table model's window (records) both walk the rows newest
first, pair each input with its prediction, and stop once the window is full.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

# The inputs of one logged request body, or an empty list when it holds none of the kind.
InputsOf = Callable[[dict[str, Any]], list[Any]]


def newest_examples(
    rows: Sequence[dict[str, Any]], last: int, inputs_of: InputsOf
) -> tuple[list[Any], list[Any], list[int]]:
    """(inputs, predictions, versions) of the newest ``last`` examples, oldest first.

    A prediction is its class index (classification) or value (regression). A row whose
    inputs and predictions do not pair one to one is skipped: its pairing is never guessed.
    """
    inputs: list[Any] = []
    predictions: list[Any] = []
    versions: list[int] = []
    for row in reversed(rows):
        body = json.loads(row["input"]) if row["input"] else {}
        out = json.loads(row["output"]) if row["output"] else {}
        xs = inputs_of(body)
        ps = [out["prediction"]] if out.get("prediction") is not None else out.get("predictions")
        if not xs or len(xs) != len(ps or []):
            continue
        for x, p in zip(reversed(xs), reversed(ps), strict=True):
            inputs.append(x)
            predictions.append(p.get("index", p.get("value")) if isinstance(p, dict) else p)
            versions.append(int(row["version"]))
            if len(inputs) == last:
                break
        if len(inputs) == last:
            break
    inputs.reverse()
    predictions.reverse()
    versions.reverse()
    return inputs, predictions, versions
