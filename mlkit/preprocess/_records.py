"""Records as a server receives them (a list of dicts), checked and made a canonical table.

Records come from outside, so they meet stricter rules than a table: see
:meth:`mlkit.preprocess.Preprocessor.validate_records`. Once a table, they take the same path
as any table, so the same rows give the same model inputs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa

from mlkit.errors import ParameterError
from mlkit.preprocess._columns import TYPES, Column, Date, Numeric, bools


class RecordError(ParameterError):
    """A record sent for prediction does not fit the model's input columns.

    Attributes:
        index: position of the offending record in the list.
        column: the column at fault, or None when the record itself is not a mapping.
    """

    def __init__(self, message: str, index: int, column: str | None) -> None:
        super().__init__(message)
        self.index = index
        self.column = column


def records_table(records: Any, columns: list[Column]) -> pa.Table:
    """Records as a canonical table, refusing the first one that breaks a rule."""
    if not isinstance(records, (list, tuple)):
        raise ParameterError(
            f"records must be a list of dicts, got {type(records).__name__}. "
            "Pass [{column: value, ...}, ...]."
        )
    known = {c.name for c in columns}
    required = {c.name for c in columns if c.role == "feature"}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise RecordError(
                f"Record {index} must be a dict of column to value, got "
                f"{type(record).__name__}. Send {{column: value, ...}}.",
                index,
                None,
            )
        if lacking := sorted(required - record.keys()):
            raise RecordError(
                f"Record {index} lacks feature column {lacking[0]!r}. Send every column of "
                f"{sorted(required)}, with null for a missing value.",
                index,
                lacking[0],
            )
        # A misspelt column would otherwise pass silently as a missing one.
        if extra := sorted(record.keys() - known):
            raise RecordError(
                f"Record {index} has column {extra[0]!r}, which the training data did not "
                f"have. Send only the columns {sorted(known)}.",
                index,
                extra[0],
            )
    kept = [c for c in columns if c.role in ("feature", "sensitive")]
    return pa.table(
        {c.name: _record_values(records, c) for c in kept},
        schema=pa.schema([(c.name, TYPES[c.dtype]) for c in kept]),
    )


def _record_values(records: Any, column: Column) -> pa.Array:
    """One column of the records, typed as in training; a bad value raises RecordError."""
    name, dtype = column.name, column.dtype
    values = [record.get(name) for record in records]
    if dtype == "timestamp[us]":
        values = [_timestamp(value, index, name) for index, value in enumerate(values)]
    try:
        array = pa.array(values, type=TYPES[dtype])
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        index, value = next((i, v) for i, v in enumerate(values) if not _fits(v, dtype))
        expected = "a number" if dtype == "float64" else "a string"
        raise RecordError(
            f"Record {index}, column {name!r}: expected {expected}, got {value!r} "
            f"({type(value).__name__}). Send {expected} or null.",
            index,
            name,
        ) from None
    if dtype == "float64":
        numbers = array.to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(~np.isfinite(numbers) & ~bools(array.is_null()))
        if bad.size:
            raise RecordError(
                f"Record {bad[0]}, column {name!r}: expected a finite number, got "
                f"{values[bad[0]]!r}. Send a finite number, or null if it is missing.",
                int(bad[0]),
                name,
            )
    encoder = column.encoder
    nullable = column.role != "feature" or not isinstance(encoder, (Numeric, Date))
    if array.null_count and not (nullable or encoder.indicator):
        index = int(np.flatnonzero(bools(array.is_null()))[0])
        raise RecordError(
            f"Record {index}, column {name!r}: got null, but the column had no missing "
            "values in training, so the model never learned what missing means there. "
            "Send a value.",
            index,
            name,
        )
    return array


def _fits(value: Any, dtype: str) -> bool:
    try:
        pa.array([value], type=TYPES[dtype])
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return False
    return True


def _timestamp(value: Any, index: int, name: str) -> dt.datetime | None:
    """A record's date as a naive UTC datetime, like the canonical table holds."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value
    if value is None:
        return None
    raise RecordError(
        f"Record {index}, column {name!r}: expected a date, got {value!r} "
        f"({type(value).__name__}). Send an ISO 8601 date such as '2024-05-31' or "
        "'2024-05-31T12:00:00', or null.",
        index,
        name,
    )
