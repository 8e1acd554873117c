"""The splits of mlkit.dataset.split_indices are scikit-learn's train_test_split, row for row."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.model_selection import train_test_split

from mlkit import data_sources
from mlkit.dataset import split_indices
from mlkit.errors import DataError


def _sklearn(y: np.ndarray, task: str, seed: int, val: float, test: float) -> list[np.ndarray]:
    """What split_indices returned when it called scikit-learn itself."""
    idx = np.arange(len(y))
    classify = task == "classification"
    rest, te = train_test_split(
        idx, test_size=test, random_state=seed, stratify=y if classify else None
    )
    tr, va = train_test_split(
        rest,
        test_size=val / (1 - test),
        random_state=seed,
        stratify=y[rest] if classify else None,
    )
    return [tr, va, te]


def _labels(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "balanced":
        return np.arange(n) % 2
    if kind == "skewed":
        return (rng.random(n) < 0.07).astype(np.int64)
    if kind == "many":
        return rng.integers(0, 9, n)
    return np.repeat(np.arange(5), n // 5)[rng.permutation(n // 5 * 5)]  # ties in every class


@pytest.mark.parametrize("kind", ["balanced", "skewed", "many", "tied"])
@pytest.mark.parametrize("n", [40, 333, 5_000])
def test_classification_splits_are_sklearns(kind: str, n: int) -> None:
    rng = np.random.default_rng(n)
    y = _labels(kind, n, rng)
    for seed, val, test in [
        (0, 0.15, 0.15),
        (7, 0.1, 0.3),
        (123, 0.2, 0.25),
        (2**32 - 1, 0.3, 0.1),
    ]:
        try:
            theirs = _sklearn(y, "classification", seed, val, test)
        except ValueError as err:  # too few rows for these classes: refused alike
            with pytest.raises(DataError, match=str(err)[:40]):
                split_indices(y, "classification", seed, val, test)
            continue
        ours = split_indices(y, "classification", seed, val, test)
        for a, b in zip(ours, theirs, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b), (kind, n, seed)
        # Sorted: the same rows, though the shuffles that only order them are left out.
        in_order = split_indices(y, "classification", seed, val, test, sorted_rows=True)
        for a, b in zip(in_order, theirs, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, np.sort(b)), (kind, n, seed)


@pytest.mark.parametrize("n", [10, 333, 5_000])
def test_regression_splits_are_sklearns(n: int) -> None:
    y = np.random.default_rng(n).normal(size=n)
    for seed in (0, 5, 99):
        ours = split_indices(y, "regression", seed, 0.15, 0.2)
        in_order = split_indices(y, "regression", seed, 0.15, 0.2, sorted_rows=True)
        theirs = _sklearn(y, "regression", seed, 0.15, 0.2)
        for a, b, c in zip(ours, theirs, in_order, strict=True):
            assert np.array_equal(a, b) and np.array_equal(c, np.sort(b))


@pytest.mark.parametrize("name", sorted(data_sources.DATASETS))
def test_bundled_datasets_split_as_before(name: str) -> None:
    raw = data_sources.read(name)
    ours = split_indices(raw.y, raw.task, 3, 0.15, 0.15)
    for a, b in zip(ours, _sklearn(raw.y, raw.task, 3, 0.15, 0.15), strict=True):
        assert np.array_equal(a, b), name


def test_a_class_of_one_row_is_still_refused() -> None:
    y = np.array([0] * 30 + [1] * 30 + [2])
    with pytest.raises(DataError, match="too few"):
        split_indices(y, "classification", 0, 0.15, 0.15)


@given(st.lists(st.integers(0, 300), min_size=1, max_size=200), st.sampled_from(["int64", "uint8"]))
def test_class_codes_are_counted_as_np_unique_would_sort_them(labels, dtype) -> None:
    # The counting shortcut for class codes must give np.unique's three arrays exactly.
    from mlkit.dataset import _classes

    y = np.array(labels).astype(dtype)
    expected = np.unique(y, return_inverse=True, return_counts=True)
    for got, want in zip(_classes(y), expected, strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want)
