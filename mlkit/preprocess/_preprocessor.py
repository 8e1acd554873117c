"""The preprocessor: fitted on training rows, applied to tables and records, saved as data."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlkit.errors import DataError, ParameterError, UnsafeArtifactError
from mlkit.preprocess._columns import (
    TYPES,
    Categorical,
    Column,
    Date,
    Numeric,
    Rows,
    canonical,
    dtype_of,
    numbers,
)
from mlkit.preprocess._fit import fit_column, role, warn_ids
from mlkit.preprocess._records import records_table
from mlkit.table_keys import TableCodes, lookup

FORMAT_VERSION = 1
_FEW_CLASSES = 20  # a numeric target with at most this many integral values is a label
_THREADS = min(4, os.cpu_count() or 1)
_CODED = (pa.string(), pa.float64())  # target types whose shared codes give its classes
_POOL_BYTES = 64 << 20  # outputs this big come from Arrow's memory pool (see _uninitialised)
# Rows turned into inputs together: their temporaries stay in the CPU's cache, and numpy's
# cost per call is paid once per band instead of once per row.
_BAND_ROWS = 16384


@dataclass
class Transformed:
    """Model inputs for a batch of rows.

    Attributes:
        X: float32 array of shape (rows, len(feature_names)).
        unknown: per categorical feature column, how many values were never seen in train.
        missing: per feature column, how many values were missing.
        sensitive: per sensitive column present in the input, its raw values (kept beside
            the features for fairness checks).
    """

    X: np.ndarray
    unknown: dict[str, int]
    missing: dict[str, int]
    sensitive: dict[str, np.ndarray] = field(default_factory=dict)


def _check_fit(table: Any, target: str, task: Any, max_categories: Any, **names: Any) -> None:
    """Refuse parameters of :meth:`Preprocessor.fit` that cannot be right, naming them."""
    if not isinstance(table, pa.Table):
        raise ParameterError(
            f"fit needs a pyarrow.Table, got {type(table).__name__}. "
            "Read it with mlkit.tables.read_table or pyarrow.Table.from_pandas."
        )
    _check_names(table, "target", (target,))
    for parameter, value in names.items():
        if isinstance(value, str):
            raise ParameterError(
                f"{parameter} must be a list of column names, got the string {value!r}. "
                f"Pass [{value!r}]."
            )
        _check_names(table, parameter, tuple(value or ()))
        if target in (value or ()):
            raise ParameterError(
                f"{parameter} names the target {target!r}. Leave the target out of it."
            )
    if task not in (None, "classification", "regression"):
        raise ParameterError(
            f"task must be 'classification', 'regression' or None, got {task!r}. Pass one of those."
        )
    if not isinstance(max_categories, int) or max_categories < 1:
        raise ParameterError(
            f"max_categories must be an int >= 1, got {max_categories!r}. Pass 50."
        )


def _target_task(
    column: pa.ChunkedArray, target: str, task: str | None, classes: bool = True
) -> tuple[str, list[Any] | None]:
    """The task (inferred when None) and, for classification, the sorted train classes.

    ``classes=False`` leaves them out (None): finding them reads every value.
    """
    dtype = dtype_of(column, target)
    column = canonical(column, dtype, target)
    if dtype == "timestamp[us]" or (dtype == "string" and task == "regression"):
        raise ParameterError(
            f"Target {target!r} is {dtype}, which cannot be a {task or 'model'} target. "
            "Pass a numeric target for regression, a category for classification."
        )
    if task is None:
        values = numbers(column) if dtype == "float64" else np.zeros(0)
        values = values[np.isfinite(values)]
        few = np.unique(values).size <= _FEW_CLASSES and np.all(values == np.round(values))
        task = "classification" if dtype == "string" or few else "regression"
    if task == "regression" or not classes:
        return task, None
    return task, sorted(pc.unique(column.drop_null()).to_pylist())


def _train_task(
    table: pa.Table,
    target: str,
    task: str | None,
    train: pa.Array | None,
    shared: TableCodes | None,
) -> tuple[str, list[Any] | None]:
    """:func:`_target_task` of the train rows; classes from the shared codes when given."""
    column = table.column(target)
    if shared is not None and task == "classification" and column.type in _CODED:
        # No copy of the target's train rows: count their codes.
        codes, dictionary = shared.get(target)
        seen = codes if train is None else codes[train.to_numpy()]
        counts = np.bincount(seen[seen >= 0], minlength=len(dictionary))
        return task, sorted(dictionary.take(np.flatnonzero(counts)).to_pylist())
    return _target_task(column if train is None else column.take(train), target, task)


def infer_task(table: pa.Table, target: str, task: str | None = None) -> str:
    """The task a target column makes: ``task`` checked against it, or inferred when None.

    A string target, or a numeric one with few distinct whole values, is classification;
    any other number is regression.
    """
    return _target_task(table.column(target), target, task, classes=False)[0]


def _check_names(table: pa.Table, parameter: str, names: tuple[str, ...]) -> None:
    missing = [name for name in names if name not in table.column_names]
    if missing:
        raise ParameterError(
            f"{parameter} names columns the table does not have: {missing}. "
            f"The table has {table.column_names}."
        )


def _train_positions(table: pa.Table, train_rows: Any) -> pa.Array | None:
    """``train_rows`` as checked positions for ``take``; None for every row."""
    if train_rows is None:
        return None
    rows = np.asarray(train_rows)
    if rows.ndim != 1 or not (rows.size == 0 or np.issubdtype(rows.dtype, np.integer)):
        raise ParameterError(
            f"train_rows must be a list of row numbers, got {rows.dtype} of shape "
            f"{rows.shape}. Pass the integer indices of the training rows."
        )
    if rows.size == 0 or rows.min() < -len(table) or rows.max() >= len(table):
        raise ParameterError(
            f"train_rows must hold at least one row number in [0, {len(table)}), got "
            f"{rows.size} rows. Pass the indices of the training rows."
        )
    return pa.array(rows % len(table))


def _uninitialised(shape: tuple[int, int]) -> np.ndarray:
    """A float32 array to be filled band by band (:func:`_write_bands` zeroes each first).

    numpy's own big arrays ask the kernel for huge pages, and on a busy machine the first
    write to each then waits while the kernel gathers and clears them: the first transform
    of a million rows ran several times slower than the next. Arrow's allocator (the one
    that read the table) gives steadier first writes.
    """
    if shape[0] * shape[1] * 4 < _POOL_BYTES:
        return np.empty(shape, dtype=np.float32)
    buffer = pa.allocate_buffer(shape[0] * shape[1] * 4)
    return np.frombuffer(buffer, dtype=np.float32).reshape(shape)


def _parts(n: int, parts: int) -> list[range]:
    """Band starts split into ``parts`` runs of consecutive bands, one per thread."""
    starts = range(0, n, _BAND_ROWS)
    size = -(-len(starts) // max(1, parts)) if len(starts) else 1
    return [starts[i : i + size] for i in range(0, len(starts), size)]


def _write_bands(
    out: np.ndarray, prepared: list[Rows], widths: list[int], order: Any, starts: range
) -> np.ndarray:
    """Write every column of the bands of rows starting at ``starts``; zeroed first.

    ``order`` holds the table position of each output row (None: the same row). Returns
    each column's counts of missing and unseen values in these bands.
    """
    counts = np.zeros((len(prepared), 2), dtype=np.int64)
    for start in starts:
        stop = min(start + _BAND_ROWS, len(out))
        rows = slice(start, stop) if order is None else order[start:stop]
        band = out[start:stop]
        band.fill(0.0)  # one-hot slots are written as ones over zeros
        at = 0
        for k, (column, width) in enumerate(zip(prepared, widths, strict=True)):
            counts[k] += column.write(band, at, rows)
            at += width
    return counts


def in_threads(fn: Any, items: list[Any]) -> list[Any]:
    """``[fn(item) for item in items]``, the items side by side on every core.

    Arrow's kernels and numpy's loops release the GIL, so columns of a big table encode in
    parallel; a small table is not worth the threads.
    """
    if len(items) < 2 or _THREADS < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        return list(pool.map(fn, items))


def _order(rows: Any, n: int) -> np.ndarray | None:
    """``rows`` of :meth:`Preprocessor.transform` as checked positions, or None for all."""
    if rows is None:
        return None
    order = np.asarray(rows)
    integers = order.size == 0 or np.issubdtype(order.dtype, np.integer)
    if order.ndim != 1 or not integers or (order.size and (order.min() < 0 or order.max() >= n)):
        raise ParameterError(
            f"rows must be row positions in [0, {n}), got {order.dtype} of shape "
            f"{order.shape}. Pass the integer indices of the rows to transform."
        )
    return order.astype(np.intp, copy=False)


class Preprocessor:
    """Turns rows of a canonical table into float32 model inputs, the same way everywhere.

    Build one with :meth:`fit` (or :meth:`from_dict` for a saved one); the fitted state is
    plain data: ``to_dict()`` is JSON and holds no code.
    """

    def __init__(
        self,
        *,
        target: str,
        task: str,
        classes: list[Any] | None,
        columns: list[Column],
        max_categories: int,
    ) -> None:
        self.target = target
        self.task = task
        self.classes = classes
        self.columns = columns
        self.max_categories = max_categories
        self._features = [c for c in columns if c.role == "feature"]
        self.feature_names = [name for c in self._features for name in c.encoder.names()]

    @classmethod
    def fit(
        cls,
        table: pa.Table,
        *,
        target: str,
        features: list[str] | tuple[str, ...] | None = None,
        drop: tuple[str, ...] | list[str] = (),
        categorical: tuple[str, ...] | list[str] = (),
        sensitive: tuple[str, ...] | list[str] = (),
        use_sensitive: bool = False,
        task: str | None = None,
        train_rows: Any = None,
        max_categories: int = 50,
        codes: TableCodes | None = None,
    ) -> Preprocessor:
        """Learn the preprocessing from the training rows of a canonical table.

        Args:
            table: canonical table (float64, string and timestamp[us] columns).
            target: the column to predict; never a feature.
            features: the input columns; None means every column but target, drop and
                sensitive. A column named here, in categorical or in sensitive is never
                dropped as an id.
            drop: columns to leave out.
            categorical: numeric columns to one-hot encode (string columns always are).
            sensitive: columns kept beside the features for fairness checks.
            use_sensitive: also feed the sensitive columns to the model.
            task: "classification" or "regression"; None infers it from the target.
            train_rows: integer indices of the rows to fit on; None means all rows.
            max_categories: one-hot slots per column before the rest become ``<other>``.
            codes: the table's dictionary codes, shared with the checks (the same fit).

        Returns:
            The fitted preprocessor.

        Raises:
            ParameterError: a named column does not exist, or a parameter is out of range.
            DataError: a column has a type that cannot become model inputs.
        """
        _check_fit(
            table,
            target,
            task,
            max_categories,
            features=features,
            drop=drop,
            categorical=categorical,
            sensitive=sensitive,
        )
        train = _train_positions(table, train_rows)
        options = {
            "features": features,
            "categorical": set(categorical),
            "sensitive": set(sensitive),
            "max_categories": max_categories,
            "codes": codes.of(table) if codes else None,
        }
        columns = in_threads(
            lambda name: fit_column(
                table,
                name,
                *role(name, target, features, drop, sensitive, use_sensitive),
                train=train,
                options=options,
            ),
            table.column_names,
        )
        warn_ids(columns)
        task, classes = _train_task(table, target, task, train, options["codes"])
        return cls(
            target=target,
            task=task,
            classes=classes,
            columns=columns,
            max_categories=max_categories,
        )

    # --- rows in, tensors out ---------------------------------------------------------

    def transform(
        self, data: Any, *, rows: Any = None, codes: TableCodes | None = None
    ) -> Transformed:
        """Turn rows into model inputs.

        Args:
            data: a canonical table, a pandas DataFrame, or a list of records (dicts keyed
                by the data's own column names, as a server receives them). Records are
                checked by :meth:`validate_records`, then turned into a table: both take
                the same path from there, so the same rows give the same array.
            rows: positions of the rows to turn, in the order wanted (for example the
                train rows, then the validation rows, then the test rows); None for every
                row in order. The counts of missing and unseen values are of these rows.
            codes: the table's dictionary codes when already made (the same inputs).

        Returns:
            The float32 inputs, with per-column counts of missing and unseen values.

        Raises:
            RecordError: a record does not fit (see :meth:`validate_records`).
            DataError: a table lacks a feature column or has one of another type.
            ParameterError: ``rows`` are not positions of the rows.
        """
        table = self._as_table(data)
        order = _order(rows, len(table))
        shared = codes.of(table) if codes else None

        def prepare(c: Column) -> Rows:
            column = self._column(table, c)
            if shared is not None and c.encoder.kind == "categorical" and c.dtype == "string":
                return c.encoder.prepare(column, shared.get(c.name))
            numeric = c.encoder.kind == "numeric" and table.column(c.name).type == pa.float64()
            if shared is not None and numeric:
                return c.encoder.prepare(column, shared.numbers(c.name))
            return c.encoder.prepare(column)

        prepared = in_threads(prepare, self._features)
        n = len(table) if order is None else len(order)
        out = _uninitialised((n, len(self.feature_names)))
        widths = [len(c.encoder.names()) for c in self._features]
        # The bands split between threads, which also share the first touch of the pages.
        parts = _parts(n, _THREADS if out.nbytes >= _POOL_BYTES else 1)
        none = np.zeros((len(prepared), 2), dtype=np.int64)  # the counts of no rows
        counts = sum(
            in_threads(lambda p: _write_bands(out, prepared, widths, order, p), parts), none
        )
        missing = {c.name: int(k[0]) for c, k in zip(self._features, counts, strict=True)}
        unknown = {
            c.name: int(k[1])
            for c, k in zip(self._features, counts, strict=True)
            if c.encoder.kind == "categorical"
        }
        sensitive = {
            c.name: self._column(table, c).to_numpy()
            for c in self.columns
            if c.sensitive and c.name in table.column_names
        }
        if order is not None:
            sensitive = {name: values[order] for name, values in sensitive.items()}
        return Transformed(out, unknown, missing, sensitive)

    def encode_target(self, data: Any, *, codes: TableCodes | None = None) -> np.ndarray:
        """The target column as model labels.

        Args:
            data: a table or DataFrame holding the target column.
            codes: the table's dictionary codes when already made (the same labels).

        Returns:
            int64 indices into :attr:`classes` for classification, float32 values for
            regression.

        Raises:
            DataError: the target is missing in a row, or holds a class never seen in train.
        """
        table = self._as_table(data)
        entry = next(c for c in self.columns if c.role == "target")
        column = self._column(table, entry)
        if self.task == "regression":
            values = numbers(column)
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                raise DataError(
                    f"Target {self.target!r} is missing or not finite in {bad.size} rows "
                    f"(first: row {bad[0]}). Drop those rows before training."
                )
            return values.astype(np.float32)
        classes = pa.array(self.classes, type=TYPES[entry.dtype])
        shared = codes.of(table) if codes else None
        if shared is not None and table.column(self.target).type == TYPES[entry.dtype]:
            table_codes, dictionary = shared.get(self.target)
            found = pc.index_in(dictionary, value_set=classes)
            labels = lookup(found, unseen=-1, missing=-1).take(table_codes).astype(np.int64)
        else:
            found = pc.index_in(column, value_set=classes)
            labels = pc.fill_null(found, -1).to_numpy().astype(np.int64)
        unknown = np.flatnonzero(labels < 0)
        if unknown.size:
            first = int(unknown[0])
            raise DataError(
                f"Target {self.target!r} holds {column[first].as_py()!r} in row {first}, "
                f"which is not one of the classes seen in training {self.classes[:20]}. "
                "Drop those rows, or refit with them among the training rows."
            )
        return labels

    def validate_records(self, records: Any) -> None:
        """Check records as a server receives them, before any prediction.

        The rules: each record is a dict; every feature column is present as a key (a
        sensitive column that is not a feature, the target and dropped columns may be left
        out); a key the data never had is refused, so a misspelt column cannot pass
        silently as missing; ``None`` is allowed for categorical columns and for columns
        that had missing values in train, and refused elsewhere; a numeric column takes a
        finite number or a bool; a date column takes a datetime, a date or an ISO 8601
        string; a string column takes a string.

        Raises:
            RecordError: naming the record's index and the column at fault.
        """
        records_table(records, self.columns)

    def _as_table(self, data: Any) -> pa.Table:
        if isinstance(data, pa.Table):
            return data
        if isinstance(data, (list, tuple)):
            return records_table(data, self.columns)
        if type(data).__module__.startswith("pandas") and hasattr(data, "columns"):
            return pa.Table.from_pandas(data, preserve_index=False)
        raise ParameterError(
            f"Rows must be a pyarrow.Table, a pandas DataFrame or a list of dicts, got "
            f"{type(data).__name__}. Pass one of those."
        )

    def _column(self, table: pa.Table, entry: Column) -> pa.ChunkedArray:
        if entry.name not in table.column_names:
            raise DataError(
                f"Column {entry.name!r} is missing from the rows, which have "
                f"{table.column_names[:30]}. Pass rows with every column used in training."
            )
        return canonical(table.column(entry.name), entry.dtype, entry.name)

    # --- saved as data ----------------------------------------------------------------

    def schema(self) -> dict[str, Any]:
        """What the model expects of its inputs, as JSON-able data.

        Returns:
            ``target``, ``task``, ``classes``, ``feature_names`` and ``columns``: per input
            column its role (feature, sensitive, target, dropped), dtype, kind (numeric,
            categorical, date), share of missing values in train, and what train held:
            ``categories`` for a categorical column, ``min``/``max``/``mean`` otherwise.
        """
        columns = {}
        for c in self.columns:
            entry: dict[str, Any] = {"role": c.role, "dtype": c.dtype, "sensitive": c.sensitive}
            entry["kind"] = c.encoder.kind if c.encoder else None
            entry["missing_share"] = c.missing_share
            if c.reason:
                entry["reason"] = c.reason
            if isinstance(c.encoder, Categorical):
                entry["categories"] = c.encoder.vocabulary + c.encoder.other
            elif isinstance(c.encoder, Numeric):
                entry.update(min=c.encoder.min, max=c.encoder.max, mean=c.encoder.mean)
            elif isinstance(c.encoder, Date):
                entry.update(min=c.encoder.min, max=c.encoder.max)
            columns[c.name] = entry
        return {
            "target": self.target,
            "task": self.task,
            "classes": self.classes,
            "feature_names": list(self.feature_names),
            "columns": columns,
        }

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as plain JSON data; :meth:`from_dict` reads it back."""
        return {
            "format": "mlkit.preprocess",
            "format_version": FORMAT_VERSION,
            "target": self.target,
            "task": self.task,
            "classes": self.classes,
            "max_categories": self.max_categories,
            "columns": [c.to_dict() for c in self.columns],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        """A preprocessor from :meth:`to_dict` output (for example read back from JSON).

        Raises:
            UnsafeArtifactError: the data is not a preprocessor of a known format version.
        """
        version = data.get("format_version") if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            raise UnsafeArtifactError(
                f"Preprocessing data must have format_version {FORMAT_VERSION}, got "
                f"{version!r}. Refit it, or load it with the mlkit that saved it."
            )
        try:
            return cls(
                target=data["target"],
                task=data["task"],
                classes=data["classes"],
                columns=[Column.from_dict(c) for c in data["columns"]],
                max_categories=data["max_categories"],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UnsafeArtifactError(
                f"Preprocessing data is corrupt ({type(exc).__name__}: {exc}). "
                "Refit it from the training data."
            ) from None
