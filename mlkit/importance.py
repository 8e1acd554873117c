"""Which of a table's columns a trained model leans on: permutation importance, per column.

A table's column becomes several model inputs (a one-hot slot per category, a missing-value
flag, the parts of a date). :func:`column_groups` gathers them back under the column's name,
and :func:`permutation_importance` shuffles each group's inputs together, so a result speaks
of the columns a person knows and never scores half a one-hot column. numpy only: the score is
a callable, so this module knows nothing of torch or of the model.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from mlkit.errors import ParameterError

__all__ = ["column_groups", "permutation_importance"]

# What the preprocessing appends to a column's name for the inputs it makes of it:
# "purpose=car", "age__missing", "signup.year".
_SEPARATORS = ("=", "__missing", ".")


def column_groups(
    feature_names: Sequence[str], columns: Iterable[str] | None = None
) -> dict[str, list[int]]:
    """The indices of the model inputs made from each source column, in input order.

    Args:
        feature_names: the name of each model input, as ``Dataset.feature_names``.
        columns: the source columns the inputs were made from, when known (a table's
            preprocessing knows them). An input belongs to the longest column its name equals
            or starts with followed by ``=``, ``__missing`` or ``.``, so a column whose own
            name holds a dot or an ``=`` keeps its inputs. Without them, a name is cut at the
            first of those separators.

    Returns:
        ``{column: [input index, ...]}``; an input that matches no column is its own group.
    """
    known = sorted(set(columns or ()), key=len, reverse=True)
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(feature_names):
        groups.setdefault(_column_of(name, known), []).append(i)
    return groups


def _column_of(name: str, known: list[str]) -> str:
    for column in known:  # longest first
        if name == column or any(name.startswith(column + sep) for sep in _SEPARATORS):
            return column
    if known:
        return name
    cuts = [at for at in (name.find(sep) for sep in _SEPARATORS) if at > 0]
    return name[: min(cuts)] if cuts else name


def permutation_importance(
    score: Callable[[np.ndarray, np.ndarray], float],
    X: np.ndarray,
    y: np.ndarray,
    groups: dict[str, list[int]],
    *,
    repeats: int = 3,
    max_rows: int | None = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """How much ``score`` drops when each group of inputs is shuffled across rows, best first.

    One permutation of the rows moves a group's inputs together, so a shuffled row still has
    exactly one one-hot slot set. The cost is ``len(groups) * repeats + 1`` calls of
    ``score`` on at most ``max_rows`` rows (a seeded sample when there are more).

    Args:
        score: higher is better, e.g. accuracy of the model's predictions for ``X`` on ``y``.
        X: inputs of shape (rows, features); ``y``: their targets.
        groups: input indices per column, from :func:`column_groups`.
        repeats: shuffles per group; the result is their mean and standard deviation.
        max_rows: rows to score on at most; None scores all of them.
        seed: seeds the row sample and the shuffles.

    Returns:
        One row per group, ``{"column", "importance", "std", "inputs"}``, largest
        ``importance`` (mean drop in score) first; ``inputs`` counts the group's inputs.
    """
    _check_count("repeats", repeats, 1, "Pass repeats=3.")
    if max_rows is not None:
        _check_count("max_rows", max_rows, 1, "Pass max_rows=2000, or None for every row.")
    rng = np.random.default_rng(seed)
    X, y = np.asarray(X), np.asarray(y)
    if max_rows is not None and len(X) > max_rows:
        rows = np.sort(rng.choice(len(X), max_rows, replace=False))
        X, y = X[rows], y[rows]
    baseline = float(score(X, y))
    shuffled = X.copy()  # one working copy: each group's inputs are put back after scoring
    out = []
    for column, inputs in groups.items():
        original = X[:, inputs]
        drops = []
        for _ in range(repeats):
            shuffled[:, inputs] = original[rng.permutation(len(X))]
            drops.append(baseline - float(score(shuffled, y)))
        shuffled[:, inputs] = original
        out.append(
            {
                "column": column,
                "importance": float(np.mean(drops)),
                "std": float(np.std(drops)),
                "inputs": len(inputs),
            }
        )
    return sorted(out, key=lambda row: -row["importance"])


def _check_count(param: str, value: Any, low: int, fix: str) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ParameterError(
            f"The '{param}' parameter of permutation_importance must be an int >= {low}. "
            f"Got {value!r} instead. {fix}"
        )
