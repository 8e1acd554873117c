"""A user's own table as a Dataset: read, checked, split, preprocessed, versioned.

The source is anything :func:`mlkit.tables.read_table` reads (a CSV or Parquet file, a folder
of Parquet files, a SQLAlchemy URL with a table or query, a DataFrame). Rows without a target
are dropped; the rest are split at random (stratified for classification) from ``seed``, the
rows of :func:`mlkit.dataset.split_indices`, or by ``time_column``: train on the oldest rows,
validate on the next, test on the most recent. Each split keeps its rows in table order.
The checks of :mod:`mlkit.table_checks` run before anything is fitted: fatal findings stop
with one clear error, warnings are issued as :class:`~mlkit.dataset.DataWarning`. The
preprocessing (:mod:`mlkit.preprocess`) is fitted on the train rows only and travels with the
Dataset, so a run can save it beside its model.

The version hashes the table's content (the same rows give the same version whether read
from CSV, Parquet, SQL or a DataFrame) with every setting that shapes the splits and inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mlkit import table_checks, tables
from mlkit.dataset import Dataset, DataWarning, Split, check_split_settings, split_indices
from mlkit.errors import DataError, MlkitError, ParameterError
from mlkit.preprocess import Preprocessor, PreprocessWarning, infer_task
from mlkit.table_keys import TableCodes
from mlkit.table_sources import TABLE_OPTIONS

__all__ = [
    "REFERENCE_ROWS",
    "TABLE_OPTIONS",
    "load_table",
    "names_option",
    "preflight",
    "source_hash",
]


# Bump when the splitting or preprocessing of tables changes, so versions never collide.
_FORMAT = "mlkit-table-3"
# The training rows a run keeps as the monitor's reference, at most.
REFERENCE_ROWS = 5000


def names_option(value: Any, param: str) -> list[str]:
    """A list of column names from ``"a,b"``, a list, or None/"" (none)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ParameterError(
        f"The '{param}' parameter of load must be column names, comma-separated or a list. "
        f"Got {value!r} instead. Pass -p {param} age,income."
    )


# Long on purpose: the steps from a source to a Dataset read best in order, in one place.
def load_table(
    source: Any,
    *,
    target: str | None = None,
    features: Any = None,
    drop: Any = None,
    categorical: Any = None,
    sensitive: Any = None,
    time_column: str | None = None,
    task: str | None = None,
    table: str | None = None,
    query: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    scale: bool = True,
    check: bool = True,
    name: str | None = None,
) -> Dataset:
    """Load a user's table as a split, preprocessed :class:`Dataset` (see the module doc)."""
    check_split_settings(val_fraction, test_fraction, seed)
    columns = {
        "features": names_option(features, "features") or None,
        "drop": names_option(drop, "drop"),
        "categorical": names_option(categorical, "categorical"),
        "sensitive": names_option(sensitive, "sensitive"),
    }
    data = tables.read_table(source, table=table or None, query=query or None)
    described = tables.describe_source(source, table=table or None, query=query or None)
    if not target:
        raise ParameterError(
            f"A table needs a target column to predict; it has {data.column_names}. "
            f"Pass -p target {data.column_names[-1]} (or target=... to mlkit.data.load)."
        )
    # The table as read is hashed (what reproduce checks again) on a thread of its own while
    # the rest goes on: hashlib and Arrow release the GIL.
    hashing = ThreadPoolExecutor(max_workers=2)
    hashed = hashing.submit(tables.canonical_hash, data)
    try:
        # Each string column encoded, each numeric one converted, once for checks and fit.
        codes = TableCodes(data)
        # Encoded meanwhile, beside the hash, while this thread checks the target and splits.
        hashing.submit(codes.prefetch)
        inferred = _fatal_first(data, target, columns["features"], task, codes)
        data = _with_target(data, target)
        codes = codes if codes.of(data) else TableCodes(data)
        task = inferred or infer_task(data, target, task)
        order = _time_order(data, time_column) if time_column else None
        if order is None:
            y_raw = _target_values(data, target, task, codes)
            # Each split in table order: every later step then reads rows in order (at
            # shuffled positions it misses the cache; the fit and the transform of a million
            # rows took half as long again). Training shuffles its batches itself.
            tr, va, te = split_indices(
                y_raw, task, seed, val_fraction, test_fraction, sorted_rows=True
            )
        else:
            tr, va, te = _split_by_time(order, val_fraction, test_fraction)
        # The checks read the table while the preprocessing is fitted beside them (their
        # kernels release the GIL); a fatal finding still wins over anything the fit raised.
        with ThreadPoolExecutor(max_workers=1) as pool:
            checking = pool.submit(
                table_checks.check_table,
                data,
                target=target,
                features=columns["features"],
                task=task,
                train_rows=tr,
                test_rows=np.concatenate([va, te]),
                codes=codes,
            )
            try:
                pre, inputs = _fit_and_transform(
                    data, target, columns, task, (tr, va, te), check, codes
                )
            except MlkitError as exc:
                table_checks.raise_fatal(checking.result())
                raise exc from None
            findings = checking.result()
        table_checks.raise_fatal(findings)
        # Arrow's take releases the GIL: these rows are copied while the labels are made.
        reference = hashing.submit(_reference, data, tr, seed)
        test_rows = hashing.submit(data.take, te)
        y = pre.encode_target(data, codes=codes)[np.concatenate([tr, va, te])]
        digest = hashed.result()
    finally:
        hashing.shutdown(wait=True)
    if check:
        dropped = {n for n, c in pre.schema()["columns"].items() if c["role"] == "dropped"}
        for finding in findings:
            # An id-like column the preprocessing dropped has said so already.
            if finding.severity == "warning" and not (
                finding.check == "id_like" and finding.column in dropped
            ):
                warnings.warn(finding.message, DataWarning, stacklevel=3)
    ends = np.cumsum([len(tr), len(va)])
    target_mean, target_std = 0.0, 1.0
    if task == "regression" and scale:
        # Standardised targets keep the MSE near 1, as for the bundled datasets.
        target_mean, target_std = float(y[: ends[0]].mean()), float(y[: ends[0]].std()) or 1.0
        y = ((y - target_mean) / target_std).astype(np.float32)

    def split(part: slice) -> Split:
        sensitive = {k: v[part] for k, v in inputs.sensitive.items()}
        return Split(inputs.X[part], y[part], sensitive)

    settings = {
        "target": target,
        **columns,
        "time_column": time_column or None,
        "task": task,
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "test_fraction": float(test_fraction),
        "scale": bool(scale),
    }
    return Dataset(
        name=name or _name(described),
        task=task,
        train=split(slice(0, ends[0])),
        val=split(slice(ends[0], ends[1])),
        test=split(slice(ends[1], None)),
        input_shape=(int(inputs.X.shape[1]),),
        n_outputs=len(pre.classes) if task == "classification" else 1,
        feature_names=list(pre.feature_names),
        class_names=[str(c) for c in pre.classes or []],
        version=_version(digest, settings),
        target_mean=target_mean,
        target_std=target_std,
        settings=settings,
        source=described,
        table_hash=digest,
        findings=[f.to_dict() for f in findings],
        preprocessor=pre,
        reference=reference.result(),
        test_rows=test_rows.result(),
    )


def _fit_and_transform(
    data: pa.Table,
    target: str,
    columns: dict[str, Any],
    task: str,
    splits: tuple[np.ndarray, np.ndarray, np.ndarray],
    check: bool,
    codes: TableCodes,
) -> tuple[Preprocessor, Any]:
    """The preprocessing fitted on the train rows, and every row's inputs in split order."""
    with warnings.catch_warnings():
        if not check:
            warnings.simplefilter("ignore", PreprocessWarning)
        pre = Preprocessor.fit(
            data,
            target=target,
            features=columns["features"],
            drop=columns["drop"],
            categorical=columns["categorical"],
            sensitive=columns["sensitive"],
            task=task,
            train_rows=splits[0],
            codes=codes,
        )
    # The rows in split order, so that each split is a slice of one array, never a copy.
    return pre, pre.transform(data, rows=np.concatenate(splits), codes=codes)


def source_hash(
    source: Any, *, table: str | None = None, query: str | None = None, like: str | None = None
) -> str:
    """The content hash of a table as it reads now (``Dataset.table_hash`` when it loaded).

    ``like``: a hash recorded earlier, to hash with its algorithm (see
    :func:`mlkit.tables.canonical_hash`), so that a run recorded before still compares.
    """
    data = tables.read_table(source, table=table or None, query=query or None)
    return tables.canonical_hash(data, like=like)


def _reference(data: Any, train_rows: np.ndarray, seed: int) -> Any:
    """A seeded sample of at most REFERENCE_ROWS training rows, in the table's own columns."""
    rows = train_rows
    if len(rows) > REFERENCE_ROWS:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(rows, REFERENCE_ROWS, replace=False))
    return data.take(rows)


def preflight(source: Any, **options: Any) -> None:
    """Check a table before a run writes anything: readable, its columns there, a target.

    ``options`` are those of :func:`load_table` (empty values count as not given). Raises
    what :func:`load_table` would raise for the same mistakes (a missing or unreadable
    file, a database that cannot be reached, a failing query, an unknown column, a target
    with one class), so ``mlkit run`` can exit 2 before it makes a record.
    """
    given = {k: v for k, v in options.items() if v not in (None, "", [], ())}
    table, query = given.get("table"), given.get("query")
    data = tables.read_table(source, table=table, query=query)
    target = given.get("target")
    if not target:
        raise ParameterError(
            f"A table needs a target column to predict; it has {data.column_names}. "
            f"Pass -p target {data.column_names[-1]}."
        )
    features = names_option(given.get("features"), "features") or None
    for param in ("drop", "categorical", "sensitive", "time_column"):
        for column in names_option(given.get(param), param):
            if column not in data.column_names:
                raise ParameterError(
                    f"{param} names {column!r}, which is not a column of the table "
                    f"(columns: {data.column_names}). Pass -p {param} with columns it has."
                )
    _fatal_first(data, target, features, given.get("task"))


def _fatal_first(
    data: Any,
    target: str,
    features: list[str] | None,
    task: str | None,
    codes: TableCodes | None = None,
) -> str | None:
    """Stop on what makes the table unusable (no target column, no rows...) before splitting.

    Returns the task the target makes when ``task`` is None and it could be inferred.
    """
    inferred = None
    fatal_only = [c for c in table_checks.TABLE_CHECKS if c not in table_checks.FATAL_CHECKS]
    guess = task or "classification"
    if target in data.column_names and task is None:
        # A target that makes no task: the checks below say what is wrong with it. (Missing
        # values take no part: numbers read NaN for them, and text is classes whatever.)
        with contextlib.suppress(ParameterError, DataError):
            guess = inferred = infer_task(data, target)
    findings = table_checks.check_table(
        data,
        target=target,
        features=features,
        task=guess,
        train_rows=None,
        test_rows=None,
        skip=fatal_only,
        codes=codes,
    )
    table_checks.raise_fatal(findings)
    return inferred


def _with_target(data: pa.Table, target: str) -> pa.Table:
    """The rows that have a target; the table itself when all do (a filter copies it all)."""
    column = data.column(target)
    return data.filter(column.is_valid()) if column.null_count else data


def _target_values(data: Any, target: str, task: str, codes: TableCodes) -> np.ndarray:
    """The target as numbers for stratifying: class codes, or the values themselves."""
    if task == "classification":
        return codes.get(target)[0]
    return data.column(target).to_numpy()


def _time_order(data: Any, time_column: str) -> np.ndarray:
    """Row indices sorted by ``time_column``, oldest first; it must be a complete date column."""
    import pyarrow.compute as pc

    if time_column not in data.column_names:
        raise ParameterError(
            f"time_column {time_column!r} is not in the table (columns: {data.column_names}). "
            "Pass -p time_column with a date column, or leave it empty to split at random."
        )
    column = data.column(time_column)
    if column.null_count:
        raise DataError(
            f"time_column {time_column!r} is missing in {column.null_count} rows; a time split "
            "needs a date on every row. Fill or drop those rows, or split at random."
        )
    return pc.sort_indices(data, sort_keys=[(time_column, "ascending")]).to_numpy()


def _split_by_time(
    order: np.ndarray, val_fraction: float, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train on the oldest rows, validate on the next, test on the most recent."""
    n = len(order)
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    if n - n_test - n_val < 1:
        raise DataError(
            f"Cannot split {n} rows by time into train/val/test with val_fraction="
            f"{val_fraction} and test_fraction={test_fraction}. Use more rows."
        )
    return (
        np.sort(order[: n - n_test - n_val]),
        np.sort(order[n - n_test - n_val : n - n_test]),
        np.sort(order[n - n_test :]),
    )


def _version(table_hash: str, settings: dict[str, Any]) -> str:
    h = hashlib.sha256(_FORMAT.encode())
    h.update(table_hash.encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _name(described: dict[str, Any]) -> str:
    """A short name for the table: the file's stem, the SQL table, or what it is."""
    if described.get("path"):
        path = Path(described["path"])
        return path.name.split(".")[0] or path.name
    return described.get("table") or described.get("kind", "table")
