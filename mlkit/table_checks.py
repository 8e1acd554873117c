"""Sanity checks of a user's own table before any compute is spent on it.

:func:`check_table` looks at the canonical table (float64, string and timestamp[us] columns,
nulls allowed) before preprocessing, given the train and test rows, and returns findings:
``fatal`` when training would be meaningless (:func:`raise_fatal` turns them into one error
before anything is written), ``warning`` for what deserves a look before trusting results,
``info`` for the run record. Rows are compared by hashing one uint64 key per column and row
(:mod:`mlkit.table_keys`): a 1,000,000 x 20 table is checked in about a second.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlkit.errors import DataError, ParameterError
from mlkit.table_keys import (
    SAMPLE,
    TableCodes,
    column_keys,
    dictionary_codes,
    distinct,
    first_rows,
    mix_into,
    mixed_classes,
    numbers,
    repeats,
    seed_hashes,
)

__all__ = [
    "FATAL_CHECKS",
    "IMBALANCE_RATIO",
    "LEAKAGE_CORRELATION",
    "MISSING_WARN_SHARE",
    "TABLE_CHECKS",
    "Finding",
    "check_table",
    "format_findings",
    "raise_fatal",
    "summary",
]

# Fatal checks about the options given, not the data: raise_fatal raises ParameterError.
_OPTION_CHECKS = ("target_not_found", "feature_not_found", "target_in_features")
# Fatal: training would be meaningless. They cannot be skipped.
FATAL_CHECKS = (
    *_OPTION_CHECKS,
    "no_features",
    "empty",
    "target_all_missing",
    "target_type",
    "single_class",
    "constant_target",
)

# A feature missing on more than this share of rows warns; any missing value is reported.
MISSING_WARN_SHARE = 0.2
# Smallest train class below this fraction of the largest warns (as mlkit.data does).
IMBALANCE_RATIO = 0.2
# A numeric feature this correlated with a regression target is the target in disguise.
LEAKAGE_CORRELATION = 0.999
# A feature with more distinct values than this share of its rows maps each value to one class
# by chance alone (an id, a continuous measure), so that purity says nothing about leakage.
_LEAKAGE_MAX_DISTINCT_SHARE = 0.5
# Below this many rows, uniqueness and perfect mappings happen by chance.
_MIN_ROWS_FOR_PATTERNS = 20
_SHOWN = 5  # names listed in one message before "and N more"
_MAX_CLASS_COUNTS = 100  # class counts kept in a finding's value

Severity = Literal["fatal", "warning", "info"]
_ORDER = {"fatal": 0, "warning": 1, "info": 2}
# Names of identifiers: id, row_id, customer-id, CustomerID, uuid, and "Unnamed: 0" (a pandas
# index written to CSV).
_ID_NAME = re.compile(r"^(id|index|row_?id|unnamed: ?\d+)$|([_\-\s.]id|uuid|guid)$", re.I)
_CAMEL_ID = re.compile(r"[a-z0-9](Id|ID)$")
_LEAK_FIX = "If it is known only with the answer, drop it; otherwise scores will not hold."


@dataclass(frozen=True)
class Finding:
    """One thing the checks noticed about a table.

    Attributes:
        check: The check's name, one of ``TABLE_CHECKS``.
        severity: ``"fatal"``, ``"warning"`` or ``"info"``.
        column: The column it is about, or None for the table as a whole.
        message: One sentence a person can act on.
        value: A JSON-able figure behind the message (a share, a count, a mapping).
    """

    check: str
    severity: Severity
    column: str | None
    message: str
    value: Any = None

    def to_dict(self) -> dict[str, Any]:
        """The finding as plain JSON-able data."""
        return asdict(self)


@dataclass
class _Table:
    """The table and the rows that take part: those of train and test that have a target."""

    table: pa.Table
    target: str
    features: list[str]
    task: str
    train: np.ndarray  # row positions
    test: np.ndarray
    min_rows_per_class: int
    classes: list[str] = field(default_factory=list)  # class labels, by class code
    target_codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # Filled by _sweep: the findings of the column checks, and the row hashes by with_target.
    swept: dict[str, list[Finding]] = field(default_factory=dict)
    hashes: dict[bool, np.ndarray] = field(default_factory=dict)
    codes: TableCodes | None = None  # dictionary codes shared with the preprocessing

    def keys(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A column's uint64 key and null mask per row (see :func:`column_keys`)."""
        return self.codes.keys(name) if self.codes else column_keys(self.table.column(name))

    def class_counts(self) -> np.ndarray:
        """Train rows per class code (classification)."""
        return np.bincount(self.target_codes[self.train], minlength=len(self.classes))


def check_table(
    table: pa.Table,
    *,
    target: str,
    features: Sequence[str] | None,
    task: str,
    train_rows: Any,
    test_rows: Any,
    min_rows_per_class: int = 5,
    skip: Collection[str] = (),
    codes: TableCodes | None = None,
) -> list[Finding]:
    """Check a canonical table before training on it; return what was found.

    Args:
        table: The canonical table (float64, string and timestamp[us] columns).
        target: The column to predict.
        features: The input columns; None for every column but the target.
        task: ``"classification"`` or ``"regression"``.
        train_rows: Positions of the train rows in ``table`` (integers or a boolean mask);
            None for every row. Rows without a target take no part in the checks on train.
        test_rows: Positions of the test rows, likewise; None for no test rows.
        min_rows_per_class: A class with fewer train rows than this warns.
        skip: Names of warning or info checks to leave out, from ``TABLE_CHECKS``.
        codes: The table's dictionary codes, shared with the preprocessing; None: made here.

    Returns:
        The findings, fatal first, then warnings, then info. After a fatal finding the checks
        that depend on it do not run; :func:`raise_fatal` turns the list into one error.

    Raises:
        ParameterError: An argument is malformed (task, skip, row positions, ...).
    """
    skipped = _check_arguments(task, min_rows_per_class, skip)
    train = _positions("train_rows", train_rows, table.num_rows, default_all=True)
    test = _positions("test_rows", test_rows, table.num_rows, default_all=False)
    findings, chosen = _check_columns(table, target, features)
    if findings:
        return findings
    t = _Table(table, target, chosen, task, train, test, min_rows_per_class)
    t.codes = codes.of(table) if codes else None
    findings = _check_target(t)
    if findings:
        return findings
    chosen_checks = [
        name
        for name in _RUNNERS
        if name not in skipped and (task == "classification" or name not in _CLASSES_ONLY)
    ]
    _sweep(t, chosen_checks)
    for name in chosen_checks:
        findings.extend(t.swept[name] if name in _COLUMN_CHECKS else _RUNNERS[name](t))
    return _by_severity(findings)


def _sweep(t: _Table, checks: list[str]) -> None:
    """Run the column checks, and hash the rows, in one pass over the feature columns.

    Each column's keys are made once, serve every check that needs them, are mixed into the
    row hashes, and are let go before the next column: the keys of a wide table never sit
    in memory all at once.
    """
    column_checks = [name for name in checks if name in _COLUMN_CHECKS]
    t.swept = {name: [] for name in column_checks}
    hashing = "duplicates" in checks or "overlap" in checks
    if not (column_checks or hashing):
        return
    h = seed_hashes(t.table.num_rows)
    scratch = np.empty_like(h)
    for name in t.features:
        key, null = t.keys(name)
        for check in column_checks:
            finding = _COLUMN_CHECKS[check](t, name, key, null)
            if finding is not None:
                t.swept[check].append(finding)
        if hashing:
            mix_into(h, key, scratch)
    if hashing:
        t.hashes[False] = h
        with_target = h.copy()
        mix_into(with_target, t.keys(t.target)[0], scratch)
        t.hashes[True] = with_target


def raise_fatal(findings: Sequence[Finding]) -> None:
    """Raise one error carrying every fatal finding's message; do nothing when none is fatal.

    Raises:
        ParameterError: A fatal finding is about an option (a target or feature column that is
            not in the table, the target among the features): the fix is another option.
        DataError: Every fatal finding is about the data itself (no rows, one class, ...).
    """
    fatal = [f for f in findings if f.severity == "fatal"]
    if not fatal:
        return
    message = " ".join(f.message for f in fatal)
    if any(f.check in _OPTION_CHECKS for f in fatal):
        raise ParameterError(message)
    raise DataError(message)


def summary(findings: Sequence[Finding]) -> dict[str, Any]:
    """The findings as JSON-able data for the run record: counts, then findings by severity."""
    grouped = {s: [f.to_dict() for f in findings if f.severity == s] for s in _ORDER}
    return {"counts": {k: len(v) for k, v in grouped.items()}, **grouped}


def format_findings(findings: Sequence[Finding]) -> str:
    """A short list for people: one line per finding, fatal first, then warnings, then info."""
    if not findings:
        return "Table checks: nothing to report."
    counts = summary(findings)["counts"]
    head = ", ".join(f"{n} {k}{'s' * (k == 'warning' and n > 1)}" for k, n in counts.items() if n)
    rows = [f"  {f.severity.upper():<8} {f.check:<19} {f.message}" for f in _by_severity(findings)]
    return "\n".join([f"Table checks: {head}.", *rows])


# --- arguments and columns ------------------------------------------------------------------


def _check_arguments(task: str, min_rows_per_class: int, skip: Collection[str]) -> set[str]:
    """Raise on a malformed argument; return the names of the checks to skip."""
    if task not in ("classification", "regression"):
        raise ParameterError(f"task must be 'classification' or 'regression', got {task!r}.")
    if type(min_rows_per_class) is not int or min_rows_per_class < 1:
        raise ParameterError(f"min_rows_per_class must be an int >= 1, got {min_rows_per_class!r}.")
    skipped = {skip} if isinstance(skip, str) else set(skip)
    unknown = sorted(skipped - set(_RUNNERS))
    if unknown:
        what = "cannot be skipped" if unknown[0] in FATAL_CHECKS else "is not a check"
        raise ParameterError(f"Check {unknown[0]!r} in skip {what}; use {', '.join(_RUNNERS)}.")
    return skipped


def _positions(name: str, rows: Any, n: int, *, default_all: bool) -> np.ndarray:
    if rows is None:
        return np.arange(n if default_all else 0)
    arr = np.asarray(rows)
    if arr.dtype == bool and arr.shape == (n,):
        return np.flatnonzero(arr)
    arr = arr.astype(np.int64) if arr.size == 0 else arr
    integers = arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer)
    if not integers or (arr.size and (arr.min() < 0 or arr.max() >= n)):
        raise ParameterError(
            f"{name} must be row positions in 0..{n - 1} or a boolean mask of {n} rows, got "
            f"{arr.dtype} values shaped {arr.shape}. Split the table these rows come from."
        )
    return arr.astype(np.int64, copy=False)


def _check_columns(table: pa.Table, target: str, features: Any) -> tuple[list[Finding], list[str]]:
    """Fatal findings about the column names given, and the feature columns to check."""
    columns = table.column_names
    where = f"is not in the table (columns: {_names(columns)})."
    findings: list[Finding] = []
    if target not in columns:
        guess = _closest(target, columns)
        fix = f"Did you mean {guess!r}? Pass -p target {guess}." if guess else ""
        fix = fix or "Pass -p target COLUMN with one of them."
        msg = f"Target column {target!r} {where} {fix}"
        findings.append(Finding("target_not_found", "fatal", target, msg, guess))
    if isinstance(features, str):
        raise ParameterError(f"features must be a list of column names, got {features!r}.")
    for name in [f for f in features or () if f not in columns]:
        guess = _closest(name, columns)
        hint = f"Did you mean {guess!r}? " if guess else ""
        msg = f"Feature column {name!r} {where} {hint}Fix the features or leave them out."
        findings.append(Finding("feature_not_found", "fatal", name, msg, guess))
    if features is not None and target in features:
        msg = f"Column {target!r} is both the target and a feature. Remove it from the features."
        findings.append(Finding("target_in_features", "fatal", target, msg))
    chosen = list(features) if features is not None else [c for c in columns if c != target]
    if not chosen:
        msg = (
            f"No feature columns are left to learn from (columns: {_names(columns)}; target "
            f"{target!r}). Pass feature columns, or drop fewer."
        )
        findings.append(Finding("no_features", "fatal", None, msg, 0))
    return findings, chosen


def _closest(name: str, options: list[str]) -> str | None:
    lowered = {o.lower(): o for o in options}
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return lowered.get(name.strip().lower()) or (match[0] if match else None)


def _check_target(t: _Table) -> list[Finding]:
    """Fatal findings about the target; keeps only the train and test rows that have one."""
    col, n, name = t.table.column(t.target), t.table.num_rows, t.target
    if n == 0:
        return [Finding("empty", "fatal", None, "The table has no rows. Check the source.", 0)]
    if col.null_count == n:
        msg = f"Target column {name!r} is missing on all {n} rows. Check the source or the target."
        return [Finding("target_all_missing", "fatal", name, msg, n)]
    if t.task == "regression" and not pa.types.is_floating(col.type):
        msg = (
            f"Target column {name!r} is {col.type}, but regression needs numbers. "
            "Pass -p task classification or pick a numeric target."
        )
        return [Finding("target_type", "fatal", name, msg, str(col.type))]
    if col.null_count:
        present = pc.is_valid(col).to_numpy(zero_copy_only=False)
        t.train, t.test = t.train[present[t.train]], t.test[present[t.test]]
    if t.train.size == 0:
        msg = f"No train row has a value in target column {name!r}. Check the split."
        return [Finding("empty", "fatal", name, msg, 0)]
    if t.task == "regression":
        y = col.to_numpy(zero_copy_only=False)[t.train]
        if np.any(y != y[0]):
            return []
        msg = f"Target column {name!r} is {y[0]:g} on every train row: nothing to predict."
        return [Finding("constant_target", "fatal", name, msg, float(y[0]))]
    codes, dictionary = t.codes.get(name) if t.codes else dictionary_codes(col)
    labels = dictionary.to_pylist()
    # Classes 0.0 and 1.0 read as "0" and "1"; labels are strings so they can be JSON keys.
    t.classes = [str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in labels]
    t.target_codes = codes  # class code per row, -1 where missing
    # Train rows all have a class here: counting codes finds the classes without a sort.
    in_train = np.flatnonzero(np.bincount(codes[t.train], minlength=len(labels)))
    if in_train.size >= 2:
        return []
    overall = f" ({len(labels)} in the whole table)" if len(labels) > 1 else ""
    msg = (
        f"Target column {name!r} has one class ({t.classes[in_train[0]]!r}) in the "
        f"{t.train.size} train rows{overall}: a classifier needs two. Check the target."
    )
    return [Finding("single_class", "fatal", name, msg, 1)]


# --- warnings and information ---------------------------------------------------------------


def _missing_target(t: _Table) -> list[Finding]:
    missing = t.table.column(t.target).null_count
    if not missing:
        return []
    msg = f"{missing} of {t.table.num_rows} rows have no {t.target!r}: they will be dropped."
    return [Finding("missing_target", "warning", t.target, msg, missing)]


def _missing(t: _Table) -> list[Finding]:
    n, findings = t.table.num_rows, []
    for name in t.features:
        missing = t.table.column(name).null_count
        if not missing:
            continue
        share = missing / n
        high = share > MISSING_WARN_SHARE
        advice = "check the source or drop it" if high else "they will be filled in from train"
        msg = f"Column {name!r} is missing on {missing} of {n} rows ({share:.1%}): {advice}."
        findings.append(Finding("missing", "warning" if high else "info", name, msg, share))
    return findings


def _constant(t: _Table, name: str, key: np.ndarray, null: np.ndarray) -> Finding | None:
    if t.train.size <= 1:
        return None
    head = first_rows(t.train, null)
    if head.size and np.any(key[head] != key[head[0]]):
        return None  # two values among the first train rows already
    k = key[t.train][~null[t.train]]
    if k.size and np.any(k != k[0]):
        return None
    what = "one value" if k.size else "no value"
    msg = f"Column {name!r} has {what} in the {t.train.size} train rows: no signal, drop it."
    return Finding("constant", "warning", name, msg, int(k.size > 0))


def _id_like(t: _Table, name: str, key: np.ndarray, null: np.ndarray) -> Finding | None:
    col = t.table.column(name)
    present = len(col) - col.null_count
    unique = present >= _MIN_ROWS_FOR_PATTERNS and _all_unique(col, key, null)
    named = bool(_ID_NAME.search(name.strip()) or _CAMEL_ID.search(name))
    if not (unique or named):
        return None
    why = [f"has a different value on each of its {present} rows"] if unique else []
    why += ["is named like one"] if named else []
    msg = (
        f"Column {name!r} looks like an identifier: it {' and '.join(why)}. A model would "
        "memorise it rather than learn; drop it from the features unless it means something."
    )
    value = {"all_unique": unique, "named_like_id": named}
    return Finding("id_like", "warning" if unique else "info", name, msg, value)


def _all_unique(col: pa.ChunkedArray, key: np.ndarray, null: np.ndarray) -> bool:
    """Strings or whole numbers, at most 10% missing, every present value different."""
    if pa.types.is_timestamp(col.type) or col.null_count > 0.1 * len(col):
        return False
    # A repeat or a fraction among the first rows settles it without a look at the rest.
    head = ~null[:SAMPLE]
    if repeats(key[:SAMPLE][head]):
        return False
    if pa.types.is_floating(col.type):
        values = col.slice(0, SAMPLE).to_numpy(zero_copy_only=False)[head]
        if not np.all(values == np.round(values)):
            return False
        values = col.to_numpy(zero_copy_only=False)[~null]
        if not np.all(values == np.round(values)):
            return False
    k = key[~null]
    return distinct(k) == k.size


def _duplicates(t: _Table) -> list[Finding]:
    present = pc.is_valid(t.table.column(t.target)).to_numpy(zero_copy_only=False)
    h = t.hashes[True][present]  # every row with a target, split or not
    count = h.size - distinct(h)
    if not count:
        return []
    share = count / h.size
    msg = (
        f"{count} of {h.size} rows ({share:.1%}) repeat an earlier row, features and target: "
        "deduplicate the source unless they are real repeats."
    )
    return [Finding("duplicates", "warning", None, msg, {"count": count, "share": share})]


def _overlap(t: _Table) -> list[Finding]:
    h = t.hashes[False]
    shared = int(pd.Index(h[t.test]).isin(h[t.train]).sum()) if t.test.size else 0
    if not shared:
        return []
    msg = f"{shared} of {t.test.size} test rows equal a train row: test scores will flatter."
    return [Finding("overlap", "warning", None, msg, shared)]


def _leakage(t: _Table, name: str, key: np.ndarray, null: np.ndarray) -> Finding | None:
    if t.task == "classification":
        return _leak_class(t, name, key, null)
    return _leak_reg(t, name, null)


def _leak_class(t: _Table, name: str, key: np.ndarray, null: np.ndarray) -> Finding | None:
    """A feature whose every value goes with one class, on train and on test alike."""
    head = first_rows(t.train, null)
    if mixed_classes(key[head], t.target_codes[head]):
        return None  # a value with two classes among the first train rows: not a leak
    train, test = t.train[~null[t.train]], t.test[~null[t.test]]
    limit = _LEAKAGE_MAX_DISTINCT_SHARE * train.size
    if train.size < _MIN_ROWS_FOR_PATTERNS or distinct(key[train]) > limit:
        return None
    codes, _ = pd.factorize(key[np.concatenate([train, test])])
    c_train, c_test = codes[: train.size], codes[train.size :]
    y_train, y_test = t.target_codes[train], t.target_codes[test]
    mapping = np.full(codes.max() + 1, -1)
    mapping[c_train] = y_train  # the last class seen per value: all agree only if it is pure
    values = int((mapping >= 0).sum())
    if values < 2 or values > limit or not np.array_equal(mapping[c_train], y_train):
        return None
    seen = mapping[c_test] >= 0
    if test.size and (not seen.any() or not np.array_equal(mapping[c_test[seen]], y_test[seen])):
        return None
    on_test = f" and {int(seen.sum())} test rows" if test.size else ""
    msg = (
        f"Column {name!r} gives the class exactly: each of its {values} values goes with one "
        f"class on {train.size} train rows{on_test}. {_LEAK_FIX}"
    )
    return Finding("leakage", "warning", name, msg, values)


def _leak_reg(t: _Table, name: str, null: np.ndarray) -> Finding | None:
    """A numeric feature equal to, or almost perfectly correlated with, the target."""
    col = t.table.column(name)
    rows = t.train[~null[t.train]]
    if pa.types.is_string(col.type) or rows.size < _MIN_ROWS_FOR_PATTERNS:
        return None
    x = numbers(col)[rows]
    y = t.table.column(t.target).to_numpy(zero_copy_only=False)[rows]
    equal = bool(np.array_equal(x, y))
    constant = x.std() == 0 or y.std() == 0
    corr = 1.0 if equal else 0.0 if constant else float(np.corrcoef(x, y)[0, 1])
    if abs(corr) < LEAKAGE_CORRELATION:
        return None
    how = "equals" if equal else f"has correlation {corr:.4f} with"
    msg = f"Column {name!r} {how} target {t.target!r} on {rows.size} train rows. {_LEAK_FIX}"
    return Finding("leakage", "warning", name, msg, corr)


def _imbalance(t: _Table) -> list[Finding]:
    counts = t.class_counts()
    small, large = int(counts.argmin()), int(counts.argmax())
    ratio = float(counts[small] / counts[large])
    if ratio >= IMBALANCE_RATIO:
        return []
    msg = (
        f"Class {t.classes[small]!r} has {counts[small]} train rows, class "
        f"{t.classes[large]!r} {counts[large]} (ratio {ratio:.2f} < {IMBALANCE_RATIO}): "
        "accuracy will flatter a majority-class guess; watch f1_macro."
    )
    return [Finding("imbalance", "warning", t.target, msg, ratio)]


def _few_rows_per_class(t: _Table) -> list[Finding]:
    counts = t.class_counts()
    rare = np.flatnonzero(counts < t.min_rows_per_class)
    if not rare.size:
        return []
    rare = rare[np.argsort(counts[rare], kind="stable")]
    many = len(t.classes) > 50  # more like a measurement than classes
    fix = "pass -p task regression" if many else "collect more, or merge or drop them"
    msg = (
        f"{rare.size} of {len(t.classes)} classes have fewer than {t.min_rows_per_class} "
        f"train rows ({_class_list(t, counts, rare)}): {fix}."
    )
    value = {t.classes[i]: int(counts[i]) for i in rare[:_MAX_CLASS_COUNTS]}
    return [Finding("few_rows_per_class", "warning", t.target, msg, value)]


def _shape(t: _Table) -> list[Finding]:
    n, m, k = t.table.num_rows, t.table.num_columns, len(t.features)
    tr, te = int(t.train.size), int(t.test.size)
    msg = f"{n} rows, {m} columns, {k} features; {tr} train and {te} held-out rows have a target."
    value = {"rows": n, "columns": m, "features": k, "train_rows": tr, "test_rows": te}
    return [Finding("shape", "info", None, msg, value)]


def _class_counts(t: _Table) -> list[Finding]:
    counts = t.class_counts()
    order = np.argsort(-counts, kind="stable")
    msg = f"{len(t.classes)} classes in train: {_class_list(t, counts, order)}."
    value = {t.classes[i]: int(counts[i]) for i in order[:_MAX_CLASS_COUNTS]}
    return [Finding("class_counts", "info", t.target, msg, value)]


def _class_list(t: _Table, counts: np.ndarray, order: np.ndarray) -> str:
    shown = ", ".join(f"{t.classes[i]!r}: {counts[i]}" for i in order[:_SHOWN])
    return shown + (f", and {order.size - _SHOWN} more" if order.size > _SHOWN else "")


# The warning and info checks, in the order they run; those in _COLUMN_CHECKS run in _sweep.
_RUNNERS: dict[str, Any] = {
    "missing_target": _missing_target,
    "missing": _missing,
    "constant": _constant,
    "id_like": _id_like,
    "duplicates": _duplicates,
    "overlap": _overlap,
    "leakage": _leakage,
    "imbalance": _imbalance,
    "few_rows_per_class": _few_rows_per_class,
    "shape": _shape,
    "class_counts": _class_counts,
}
# The checks of one feature column at a time, given its keys: _sweep runs them.
_COLUMN_CHECKS = {"constant": _constant, "id_like": _id_like, "leakage": _leakage}
_CLASSES_ONLY = frozenset({"imbalance", "few_rows_per_class", "class_counts"})
# Every check's name; the warning and info ones may be named in check_table(skip=...).
TABLE_CHECKS = FATAL_CHECKS + tuple(_RUNNERS)


def _by_severity(findings: Sequence[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: _ORDER[f.severity])


def _names(columns: Sequence[str]) -> str:
    shown = ", ".join(columns[:20])
    return shown + (f", and {len(columns) - 20} more" if len(columns) > 20 else "")
