"""Preprocessor.transform(rows=...): chosen rows in a chosen order, as if taken afterwards."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pytest

from mlkit.errors import ParameterError
from mlkit.preprocess import Preprocessor, PreprocessWarning


def _table(n: int = 500) -> pa.Table:
    rng = np.random.default_rng(0)
    words = np.array(["car", "tv", "radio", "boat", "bike", "van"])
    return pa.table(
        {
            "age": pa.array(rng.normal(40, 10, n), mask=rng.random(n) < 0.1),
            "purpose": pa.array(words[rng.integers(0, 6, n)], mask=rng.random(n) < 0.1),
            "day": pa.array(
                np.datetime64("2020-01-01") + rng.integers(0, 900, n).astype("timedelta64[D]"),
                mask=rng.random(n) < 0.1,
            ).cast(pa.timestamp("us")),
            "sex": pa.array(np.array(["f", "m"])[rng.integers(0, 2, n)]),
            "y": pa.array(rng.integers(0, 2, n).astype(float)),
        }
    )


def _fit(table: pa.Table) -> Preprocessor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreprocessWarning)
        # Few categories: the rarer train values share <other>, the rows past 300 bring new ones.
        return Preprocessor.fit(
            table, target="y", sensitive=["sex"], train_rows=np.arange(300), max_categories=3
        )


def test_rows_in_any_order_equal_the_rows_taken_afterwards() -> None:
    table = _table()
    pre = _fit(table)
    order = np.random.default_rng(1).permutation(len(table))[:400]
    picked = pre.transform(table, rows=order)
    taken = pre.transform(table.take(order))
    assert picked.X.dtype == np.float32
    assert np.array_equal(picked.X, pre.transform(table).X[order])
    assert np.array_equal(picked.X, taken.X)
    assert picked.missing == taken.missing and picked.unknown == taken.unknown
    assert list(picked.sensitive["sex"]) == list(taken.sensitive["sex"])


@pytest.mark.parametrize(
    "rows", [[0, 500], [-1], np.array([0.5, 1.0]), np.zeros((2, 2), dtype=int)]
)
def test_rows_must_be_positions_of_the_table(rows) -> None:
    table = _table()
    with pytest.raises(ParameterError, match="rows must be row positions"):
        _fit(table).transform(table, rows=rows)
