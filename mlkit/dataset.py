"""What a loaded dataset is: splits of float32 inputs and targets, and what describes them.

Shared by the bundled and synthetic datasets (:mod:`mlkit.data`) and users' own tables
(:mod:`mlkit.table_data`), so both split the same way and a run records them alike.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlkit.errors import DataError, ParameterError, UnknownNameError

__all__ = ["DataWarning", "Dataset", "Split", "check_split_settings", "split_indices"]


def _param_error(param: str, rule: str, value: Any, fix: str) -> ParameterError:
    return ParameterError(
        f"The '{param}' parameter of load must be {rule}. Got {value!r} instead. {fix}"
    )


class DataWarning(UserWarning):
    """The data is usable but something about it deserves a look before trusting results."""


@dataclass
class Split:
    """One partition of a dataset: float32 ``X`` of shape (n, *input_shape) and its targets.

    ``y`` is int64 class indices for classification and float32 of shape (n,) for regression.
    ``sensitive`` maps a sensitive attribute (``"group"``) to its raw values, row-aligned with
    ``y`` and never scaled, so fairness metrics can slice by it whether or not the model sees it.
    """

    X: np.ndarray
    y: np.ndarray
    sensitive: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    """A split, scaled dataset plus what a model builder and a run record need to know.

    ``version`` is a content hash of the raw data and of the split and scaling settings: two
    loads agree on it exactly when they produce the same splits, so records can name their data.
    For regression with ``scale=True`` the targets are standardised on train; recover original
    units with ``y * target_std + target_mean``. ``feature_mean`` and ``feature_std`` (per
    flattened feature, from train; None when the features were not scaled) turn raw features
    into the model's inputs: ``(x - feature_mean) / feature_std``.
    """

    name: str
    task: str
    train: Split
    val: Split
    test: Split
    input_shape: tuple[int, ...]
    n_outputs: int
    feature_names: list[str]
    class_names: list[str]
    version: str
    target_mean: float = 0.0
    target_std: float = 1.0
    settings: dict[str, Any] = field(default_factory=dict)
    feature_mean: list[float] | None = field(default=None, repr=False)
    feature_std: list[float] | None = field(default=None, repr=False)
    # A user's own table (mlkit.table_data): where it came from, its content hash, what the
    # checks found, and the fitted preprocessing that turns its rows into inputs.
    source: dict[str, Any] | None = None
    table_hash: str | None = None
    findings: list[dict[str, Any]] = field(default_factory=list, repr=False)
    preprocessor: Any = field(default=None, repr=False)
    # A sample of its training rows as read (a pyarrow Table): the monitor's reference.
    reference: Any = field(default=None, repr=False)
    # The test rows as read, in test order (a pyarrow Table): groups by any of its columns.
    test_rows: Any = field(default=None, repr=False)

    def spec(self) -> dict[str, Any]:
        """A small JSON-able summary for run records, W&B configs and reports."""
        out = {
            "name": self.name,
            "task": self.task,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "input_shape": list(self.input_shape),
            "n_outputs": self.n_outputs,
            "version": self.version,
        }
        if self.sensitive_columns:
            out["sensitive"] = self.sensitive_columns
        if self.source is not None:
            out["source"] = self.source
            out["table_hash"] = self.table_hash
            out["settings"] = self.settings
            out["checks"] = {
                severity: [f["check"] for f in self.findings if f["severity"] == severity]
                for severity in ("warning", "info")
            }
        return out

    @property
    def sensitive_columns(self) -> list[str]:
        """Names of the sensitive attributes each split carries (empty for most datasets)."""
        return list(self.train.sensitive)

    def groups(self, column: str, split: str = "test") -> np.ndarray:
        """The values of sensitive attribute ``column`` for the rows of ``split``.

        A table of the user's own also answers for any of its columns on the test split
        (as text, a missing value as ``<missing>``), so fairness can be sliced by a column
        that was not declared sensitive when the model was trained.
        """
        table = self.test_rows
        own = table is not None and split == "test" and column in table.column_names
        if own and column not in self.sensitive_columns:
            values = table.column(column).to_pylist()
            return np.array(["<missing>" if v is None else str(v) for v in values])
        if column not in self.sensitive_columns:
            have = ", ".join(self.sensitive_columns) or "none"
            fix = (
                f"Pass -p sensitive {self.sensitive_columns[0]}."
                if self.sensitive_columns
                else "Leave sensitive empty, or use dataset synthetic_fairness."
            )
            raise UnknownNameError(
                f"Dataset '{self.name}' has no sensitive attribute {column!r} (it has: {have}). "
                f"{fix}"
            )
        if split not in ("train", "val", "test"):
            raise UnknownNameError(
                f"Unknown split {split!r}. Valid names: train, val, test. Pass split='test'."
            )
        return getattr(self, split).sensitive[column]


def check_split_settings(val_fraction: Any, test_fraction: Any, seed: Any) -> None:
    """Refuse split fractions outside (0, 0.5) and seeds that are not a 32-bit int."""
    for param, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 < value < 0.5:
            raise _param_error(param, "a float in (0, 0.5)", value, f"Pass -p {param} 0.15.")
    # Both below 0.5 also keeps their sum below 1, so train is never empty.
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise _param_error("seed", "an int in [0, 2**32)", seed, "Pass -p seed 0.")


def split_indices(
    y: np.ndarray,
    task: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    *,
    sorted_rows: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test positions of ``y``'s rows, stratified for classification.

    The rows are those of scikit-learn's ``train_test_split``, called twice (test first,
    then validation from the rest) with ``random_state=seed``: :func:`_train_test` makes the
    same draws without its per-row Python objects, so a million rows split in milliseconds.
    ``sorted_rows``: each split's positions ascending instead of in scikit-learn's order
    (the same rows; the shuffles that only order them are skipped).

    Raises:
        DataError: The rows cannot be split so (a class too rare to reach every split...).
    """
    idx = np.arange(len(y))
    classify = task == "classification"
    try:
        # The second split draws from the rest in its order: that shuffle always happens.
        rest, test = _train_test(
            idx, y if classify else None, test_fraction, seed, (True, not sorted_rows)
        )
        train, val = _train_test(
            rest,
            y.take(rest) if classify else None,
            val_fraction / (1 - test_fraction),
            seed,
            (not sorted_rows, not sorted_rows),
        )
    except ValueError as err:  # e.g. a class too rare to appear in every split
        raise DataError(
            f"Cannot split {len(y)} samples into train/val/test with val_fraction="
            f"{val_fraction} and test_fraction={test_fraction}: {err} "
            "Use more samples (n_samples) or smaller fractions."
        ) from None
    if not sorted_rows:
        return train, val, test
    which = np.empty(len(y), dtype=np.int8)
    for k, part in enumerate((train, val, test)):
        which[part] = k
    return np.flatnonzero(which == 0), np.flatnonzero(which == 1), np.flatnonzero(which == 2)


def _train_test(
    rows: np.ndarray,
    y: np.ndarray | None,
    fraction: float,
    seed: int,
    shuffled: tuple[bool, bool] = (True, True),
) -> tuple[np.ndarray, np.ndarray]:
    """``train_test_split(rows, test_size=fraction, random_state=seed, stratify=y)``.

    The same draws from the same generator as scikit-learn's ShuffleSplit and
    StratifiedShuffleSplit, so the same rows. What scikit-learn would refuse (a class of one
    row, a split left empty) goes to scikit-learn itself, for its own error. ``shuffled``:
    whether the train and the test part of a stratified split get their final shuffle
    (each is the last draw, so leaving one out changes no row).
    """
    n = len(rows)
    n_test = math.ceil(fraction * n)
    if 0 < n_test < n:
        rng = np.random.RandomState(seed)
        if y is None:
            drawn = rng.permutation(n)
            return rows[drawn[n_test:]], rows[drawn[:n_test]]
        # Whole-number classes only: scikit-learn checks other kinds of labels its own way.
        if y.dtype.kind in "iub":
            classes, inverse, counts = _classes(y)
            if counts.min() >= 2 and min(n - n_test, n_test) >= len(classes):
                train, test = _stratified(inverse, counts, n - n_test, n_test, rng, shuffled)
                return rows.take(train), rows.take(test)
    # Only for the cases it refuses: scikit-learn takes a second to import.
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(rows, test_size=fraction, random_state=seed, stratify=y)
    return train, test


def _classes(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(y, return_inverse=True, return_counts=True)``; by counting for codes.

    Class codes (small non-negative integers, as a table's target gives) are counted in one
    pass instead of sorted: a million labels in milliseconds, the same three arrays.
    """
    if y.size and y.dtype.kind in "iu" and y.min() >= 0 and y.max() < 1 << 16:
        counts = np.bincount(y)
        present = counts > 0
        position = np.cumsum(present) - 1  # a code's place among the classes present
        return np.flatnonzero(present).astype(y.dtype), position.take(y), counts[present]
    return np.unique(y, return_inverse=True, return_counts=True)


def _stratified(
    inverse: np.ndarray,
    counts: np.ndarray,
    n_train: int,
    n_test: int,
    rng: Any,
    shuffled: tuple[bool, bool],
) -> tuple[np.ndarray, np.ndarray]:
    """StratifiedShuffleSplit's first split: per class, a shuffle cut into train and test."""
    # A stable sort of 16-bit keys is a radix sort: the same order, in linear time.
    keys = inverse.astype(np.uint16) if counts.size <= 1 << 16 else inverse
    by_class = np.split(np.argsort(keys, kind="stable"), np.cumsum(counts)[:-1])
    train_counts = _approximate_mode(counts, n_train, rng)
    test_counts = _approximate_mode(counts - train_counts, n_test, rng)
    train, test = [], []
    for rows, size, n_tr, n_te in zip(by_class, counts, train_counts, test_counts, strict=True):
        drawn = rows.take(rng.permutation(size), mode="clip")
        train.append(drawn[:n_tr])
        test.append(drawn[n_tr : n_tr + n_te])
    train, test = np.concatenate(train), np.concatenate(test)
    train = rng.permutation(train) if shuffled[0] else train
    return train, rng.permutation(test) if shuffled[1] else test


def _approximate_mode(counts: np.ndarray, draws: int, rng: Any) -> np.ndarray:
    """Rows per class out of ``draws``, in proportion; ties for the rest broken at random."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            now = min(len(tied), need)
            floored[rng.choice(tied, size=now, replace=False)] += 1
            need -= now
            if need == 0:
                break
    return floored.astype(int)
