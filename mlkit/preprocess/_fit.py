"""Fitting one input column of a table: its encoder, or why it is dropped (an id, say)."""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlkit.preprocess._columns import (
    Categorical,
    Column,
    Date,
    Encoder,
    Numeric,
    canonical,
    dtype_of,
    numbers,
)

_ID_NAME = re.compile(r"(^|[_\-\s.])(id|uuid|guid|key)$|[a-z0-9](Id|ID|Uuid|UUID|Key)$")
_HEAD_ROWS = 4096  # rows looked at first for a repeated value
_ID_REASON = "id-like: every value is unique"


class PreprocessWarning(UserWarning):
    """A column was set aside while fitting (an id, for example); the message says why."""


def _is_id_text(column: pa.ChunkedArray) -> bool:
    """Every present value of a string column different (at least two of them)."""
    present = len(column) - column.null_count
    if present < 2:
        return False
    # A repeat among the first rows settles it before every row is counted.
    head = column.slice(0, _HEAD_ROWS)
    if pc.count_distinct(head).as_py() < len(head) - head.null_count:
        return False
    return pc.count_distinct(column).as_py() == present


def role(
    name: str, target: str, features: Any, drop: Any, sensitive: Any, use: bool
) -> tuple[str, str | None]:
    """What a column is for (feature, sensitive, target, dropped), and why when dropped."""
    if name == target:
        return "target", None
    if name in drop:
        return "dropped", "named in drop"
    if name in sensitive:
        return ("feature" if use else "sensitive"), None
    if features is None or name in features:
        return "feature", None
    return "dropped", "not named in features"


def _is_id_number(values: np.ndarray, name: str) -> bool:
    """All-unique integral numbers under an id-like name (NaN and inf count as missing)."""
    if not _ID_NAME.search(name):
        return False
    seen = values[np.isfinite(values)]
    head = seen[:_HEAD_ROWS]
    if seen.size < 2 or np.unique(head).size < head.size:
        return False
    return bool(np.unique(seen).size == seen.size and np.all(seen == np.round(seen)))


def fit_column(
    table: pa.Table,
    name: str,
    role: str,
    reason: str | None,
    *,
    train: pa.Array | None,
    options: dict[str, Any],
) -> Column:
    """The fitted entry of one input column, from its train rows; an id-like one is dropped."""
    column = table.column(name)
    if role == "dropped":
        return Column(name, str(column.type), role, reason=reason)
    sensitive = name in options["sensitive"]
    categorical = name in options["categorical"]
    # A column the user named is kept even if it looks like an id: they asked for it.
    explicit = categorical or sensitive or name in (options["features"] or ())
    dtype = dtype_of(column, name)
    shared = options["codes"]
    if dtype == "string" and shared is not None and column.type == pa.string():
        # An id keyed without a dictionary: its values all differ, so its train rows' do too.
        rows = len(column) if train is None else len(train)
        if role == "feature" and not explicit and rows >= 2 and shared.text_id(name) is not None:
            return Column(name, dtype, "dropped", reason=_ID_REASON)
        entry = Column(name, dtype, role, sensitive)
        return _fit_codes(entry, *shared.get(name), train, options, explicit)
    if dtype == "float64" and not categorical:
        # The train rows' values straight from numpy: cheaper than taking them in Arrow.
        rows = None if train is None else train.to_numpy()
        made = shared.numbers(name) if shared is not None and column.type == pa.float64() else None
        values = numbers(canonical(column, dtype, name), rows, made)
        if role == "feature" and not explicit and _is_id_number(values, name):
            return Column(name, dtype, "dropped", reason=_ID_REASON)
        share = float((~np.isfinite(values)).mean()) if values.size else 0.0
        encoder = Numeric.fit(name, values)
        return Column(name, dtype, role, sensitive, missing_share=share, encoder=encoder)
    # Left: dates, strings without shared codes, and numbers named in categorical.
    if train is not None:
        column = column.take(train)
    column = canonical(column, dtype, name)
    if dtype == "string" and role == "feature" and not explicit and _is_id_text(column):
        return Column(name, dtype, "dropped", reason=_ID_REASON)
    if dtype == "timestamp[us]":
        encoder: Encoder = Date.fit(name, column)
    else:
        encoder = Categorical.fit(name, column, options["max_categories"])
    absent = column.null_count
    if dtype == "float64":
        absent = int((~np.isfinite(numbers(column))).sum())
    share = absent / len(column) if len(column) else 0.0
    return Column(name, dtype, role, sensitive, missing_share=share, encoder=encoder)


def _fit_codes(
    entry: Column,
    codes: np.ndarray,
    dictionary: pa.Array,
    train: pa.Array | None,
    options: dict[str, Any],
    explicit: bool,
) -> Column:
    """:func:`fit_column` of a string column from its dictionary codes (shared, read only).

    The same fit as from the strings: the train rows' count of each value ranks them, and a
    column whose present values are all different is an id.
    """
    if train is not None:
        codes = codes[train.to_numpy()]
    present = codes[codes >= 0]
    counts = np.bincount(present, minlength=len(dictionary))
    if entry.role == "feature" and not explicit and present.size >= 2 and counts.max() <= 1:
        return Column(entry.name, entry.dtype, "dropped", reason=_ID_REASON)
    entry.encoder = Categorical.fit_counts(
        entry.name, counts, dictionary, options["max_categories"]
    )
    entry.missing_share = (codes.size - present.size) / codes.size if codes.size else 0.0
    return entry


def warn_ids(columns: list[Column]) -> None:
    """Say which columns were dropped as ids, in table order (they were fitted in threads)."""
    for column in columns:
        if column.reason == _ID_REASON:
            warnings.warn(
                f"Column {column.name!r} looks like an id (every value is unique), so it "
                "is not used as a feature. Name it in features=[...] or "
                "categorical=[...] to keep it.",
                PreprocessWarning,
                stacklevel=4,
            )
