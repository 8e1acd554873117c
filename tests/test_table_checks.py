"""Sanity checks of a user's own table: fatal problems stop, warnings name the column."""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from mlkit import table_checks as tc
from mlkit.errors import DataError, ParameterError

N = 400


def _clean(n: int = N, seed: int = 0) -> dict[str, Any]:
    """Columns of an honest table: two numbers, a category, a date, a balanced target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return {
        "age": np.round(rng.uniform(18, 90, n), 1),
        "income": x * 1000 + 50_000,
        "city": pa.array(rng.choice(["Lyon", "Oslo", "Kyiv", "Lima"], n).tolist(), pa.string()),
        "signup": pa.array(rng.integers(15 * 10**14, 17 * 10**14, n), pa.timestamp("us")),
        "default": pa.array(np.where(x + rng.normal(size=n) > 0, "yes", "no").tolist()),
    }


def _run(columns: dict[str, Any], *, task: str = "classification", **kwargs: Any) -> list:
    table = pa.table(columns)
    n = table.num_rows
    order = np.random.default_rng(1).permutation(n)
    options = {
        "target": "default",
        "features": None,
        "train_rows": order[: int(0.8 * n)],
        "test_rows": order[int(0.8 * n) :],
    }
    return tc.check_table(table, task=task, **(options | kwargs))


def _found(findings: list, severity: str = "warning") -> set[tuple[str, str | None]]:
    return {(f.check, f.column) for f in findings if f.severity == severity}


def _one(findings: list, check: str) -> tc.Finding:
    (finding,) = [f for f in findings if f.check == check]
    return finding


# An honest table gives no warning, and its info says its shape and its classes.
def test_a_clean_table_gives_no_warnings() -> None:
    findings = _run(_clean())
    assert _found(findings, "warning") == set()
    assert _found(findings, "fatal") == set()
    assert _one(findings, "shape").value == {
        "rows": N,
        "columns": 5,
        "features": 4,
        "train_rows": 320,
        "test_rows": 80,
    }
    counts = _one(findings, "class_counts").value
    assert set(counts) == {"yes", "no"} and sum(counts.values()) == 320
    assert json.loads(json.dumps(tc.summary(findings)))["counts"]["warning"] == 0


# Every column with missing values is reported; above the threshold it is a warning.
def test_missing_values_are_reported_per_column() -> None:
    cols = _clean()
    income = np.asarray(cols["income"])
    cols["income"] = pa.array(income, mask=np.arange(N) % 10 == 0)  # 10%
    cols["age"] = pa.array(cols["age"], mask=np.arange(N) % 2 == 0)  # 50%
    findings = _run(cols)
    assert ("missing", "age") in _found(findings, "warning")
    assert ("missing", "income") in _found(findings, "info")
    by_column = {f.column: f.value for f in findings if f.check == "missing"}
    assert by_column == {"income": 0.1, "age": 0.5}


# A column with one value in train carries no signal; so does one with none.
def test_constant_columns_warn() -> None:
    cols = _clean()
    cols["country"] = pa.array(["FR"] * N)
    cols["blank"] = pa.array([None] * N, pa.float64())
    findings = _run(cols)
    assert {("constant", "country"), ("constant", "blank")} <= _found(findings)
    assert ("constant", "age") not in _found(findings)


# Repeated rows are counted once each, with their share.
def test_duplicate_rows_are_counted() -> None:
    table = pa.table(_clean())
    doubled = pa.concat_tables([table, table.slice(0, 30)])  # two chunks, one dictionary
    n = doubled.num_rows
    findings = tc.check_table(
        doubled,
        target="default",
        features=None,
        task="classification",
        train_rows=np.arange(n),
        test_rows=None,
    )
    assert _one(findings, "duplicates").value == {"count": 30, "share": 30 / n}


# Test rows equal in every feature to a train row are counted, whatever their target.
def test_train_test_overlap_is_counted() -> None:
    table = pa.table(_clean())
    copies = table.take(np.arange(10))
    flipped = ["no" if v == "yes" else "yes" for v in copies.column("default").to_pylist()]
    copies = copies.set_column(4, "default", pa.array(flipped))
    findings = tc.check_table(
        pa.concat_tables([table, copies]),
        target="default",
        features=None,
        task="classification",
        train_rows=np.arange(300),
        test_rows=np.arange(300, N + 10),
    )
    assert _one(findings, "overlap").value == 10
    # The targets differ, so these are not duplicate rows.
    assert "duplicates" not in {f.check for f in findings}


# A feature that gives the class exactly on train and test is leakage.
def test_a_feature_that_gives_the_class_is_leakage() -> None:
    cols = _clean()
    target = np.asarray(cols["default"].to_pylist())
    cols["status"] = pa.array(np.where(target == "yes", "closed", "open").tolist())
    cols["score"] = np.where(target == "yes", 2.0, 7.0)
    findings = _run(cols)
    assert {("leakage", "status"), ("leakage", "score")} <= _found(findings)
    assert _one([f for f in findings if f.column == "status"], "leakage").value == 2


# A strong but honest predictor is not leakage, nor is a mapping that fails on test.
def test_honest_strong_features_are_not_leakage() -> None:
    rng = np.random.default_rng(3)
    cols = _clean()
    target = np.asarray(cols["default"].to_pylist())
    cols["noisy"] = np.where(target == "yes", 1.0, 0.0) + rng.normal(0, 0.3, N)
    # Right on 95% of rows: strong, not perfect.
    flip = rng.random(N) < 0.05
    cols["hint"] = pa.array(np.where((target == "yes") ^ flip, "high", "low").tolist())
    assert "leakage" not in {f.check for f in _run(cols)}
    # Without test rows too: unique values map to one class each by chance alone.
    assert "leakage" not in {f.check for f in _run(cols, test_rows=None)}


# A mapping that holds on train but not on test is not leakage.
def test_a_mapping_that_breaks_on_test_is_not_leakage() -> None:
    cols = _clean()
    target = np.asarray(cols["default"].to_pylist())
    code = np.where(target == "yes", 1.0, 0.0)
    code[300:] = 1.0 - code[300:]  # test rows get the other class's code
    table = pa.table(cols | {"code": code})
    train, test = np.arange(300), np.arange(300, N)
    findings = tc.check_table(
        table,
        target="default",
        features=None,
        task="classification",
        train_rows=train,
        test_rows=test,
    )
    assert "leakage" not in {f.check for f in findings}
    on_train = tc.check_table(
        table,
        target="default",
        features=None,
        task="classification",
        train_rows=train,
        test_rows=None,
    )
    assert ("leakage", "code") in _found(on_train)


# Regression: a feature equal to the target, or a near-perfect linear copy, is leakage;
# a correlated but noisy one is not.
def test_regression_leakage_is_near_perfect_correlation() -> None:
    rng = np.random.default_rng(4)
    cols = _clean()
    y = rng.normal(100, 20, N)
    cols["default"] = y
    cols["copy"] = y.copy()
    cols["in_cents"] = y * 100 + 3
    cols["estimate"] = y + rng.normal(0, 3, N)  # correlation about 0.99
    findings = _run(cols, task="regression")
    leaks = {f.column: f.value for f in findings if f.check == "leakage"}
    assert set(leaks) == {"copy", "in_cents"}
    assert leaks["copy"] == 1.0 and leaks["in_cents"] > 0.999


# All-unique strings or whole numbers warn as identifiers; a name like one is noted.
def test_id_like_columns() -> None:
    cols = _clean()
    cols["ref"] = pa.array([f"R-{i:05d}" for i in range(N)])
    cols["row"] = np.arange(N, dtype=np.float64) * 7
    cols["store_id"] = np.random.default_rng(5).integers(0, 5, N).astype(float)
    findings = _run(cols)
    assert {("id_like", "ref"), ("id_like", "row")} <= _found(findings)
    assert ("id_like", "store_id") in _found(findings, "info")
    # Continuous measurements are all different too, but are not identifiers.
    assert ("id_like", "income") not in _found(findings) | _found(findings, "info")


# Text is an id only when no value repeats: one repeat in the last row rules it out;
# missing values are not repeats.
def test_text_ids_are_judged_on_every_row() -> None:
    cols = _clean()
    ids = [f"R-{i:05d}" for i in range(N)]
    cols["ref"] = pa.array([*ids[:-1], ids[-2]])
    cols["ref2"] = pa.array([None if i % 17 == 0 else v for i, v in enumerate(ids)])
    findings = _run(cols)
    assert ("id_like", "ref") not in _found(findings)
    assert ("id_like", "ref2") in _found(findings)


# The distinct count that rules columns in and out of the id and leakage checks never
# overstates, and counts dense keys (dictionary codes) exactly.
def test_distinct_counts_dense_and_spread_keys_exactly() -> None:
    from mlkit.table_keys import distinct

    rng = np.random.default_rng(8)
    dense = rng.integers(0, 30_000, 20_000).astype(np.uint64)
    spread = rng.integers(0, 2**63, 20_000, dtype=np.uint64)
    spread[::7] = spread[0]
    for keys in (dense, spread, dense[:1], dense[:0]):
        assert distinct(keys) == np.unique(keys).size


# mlkit.data.load hands the checks the codes and numbers it shares with the preprocessing;
# the findings must be those the checks reach on their own: duplicates, overlap, -0.0 as
# 0.0, ids, leaks, missing values and the target's classes alike.
def test_shared_codes_and_numbers_find_the_same() -> None:
    from mlkit.table_keys import TableCodes

    cols = _clean()
    cols["ref"] = pa.array([f"R-{i:05d}" for i in range(N)])
    cols["zero"] = pa.array([-0.0 if i % 2 else 0.0 for i in range(N)])
    cols["gap"] = pa.array([None if i % 9 == 0 else float(i % 7) for i in range(N)])
    cols["leak"] = pa.array([f"L{v}" for v in cols["default"].to_pylist()])
    table = pa.table(cols)
    table = pa.concat_tables([table, table.slice(0, 30)])  # 30 rows again: duplicates
    order = np.random.default_rng(1).permutation(table.num_rows)
    options = {
        "target": "default",
        "features": None,
        "task": "classification",
        "train_rows": order[: int(0.8 * table.num_rows)],
        "test_rows": order[int(0.8 * table.num_rows) :],
    }
    alone = tc.check_table(table, **options)
    shared = tc.check_table(table, codes=TableCodes(table), **options)
    assert [f.to_dict() for f in shared] == [f.to_dict() for f in alone]
    assert {"duplicates", "overlap", "leakage", "missing", "constant"} <= {f.check for f in alone}


# Names like identifiers are recognised in the usual spellings, and only those.
@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("id", True),
        ("ID", True),
        ("user_id", True),
        ("customerId", True),
        ("CustomerID", True),
        ("order-uuid", True),
        ("Unnamed: 0", True),
        ("paid", False),
        ("valid", False),
        ("idle_time", False),
        ("width", False),
    ],
)
def test_names_like_identifiers(name: str, named: bool) -> None:
    cols = _clean()
    cols[name] = np.random.default_rng(6).integers(0, 3, N).astype(float)
    findings = _run(cols)
    assert (("id_like", name) in _found(findings, "info")) == named


# A rare train class warns as imbalance, and as too few rows once below the minimum.
def test_imbalance_and_rare_classes() -> None:
    cols = _clean()
    labels = np.array(["no"] * (N - 40) + ["yes"] * 37 + ["maybe"] * 3)
    cols["default"] = pa.array(labels.tolist())
    table = pa.table(cols)
    findings = tc.check_table(
        table,
        target="default",
        features=None,
        task="classification",
        train_rows=np.arange(N),
        test_rows=None,
    )
    assert _one(findings, "imbalance").value == pytest.approx(3 / 360)
    assert _one(findings, "few_rows_per_class").value == {"maybe": 3}
    assert "'maybe'" in _one(findings, "few_rows_per_class").message
    relaxed = tc.check_table(
        table,
        target="default",
        features=None,
        task="classification",
        train_rows=np.arange(N),
        test_rows=None,
        min_rows_per_class=2,
    )
    assert "few_rows_per_class" not in {f.check for f in relaxed}


# Rows without a target are counted, then left out of every other check.
def test_rows_with_a_missing_target_are_counted_and_left_out() -> None:
    cols = _clean()
    labels = cols["default"].to_pylist()
    labels[:25] = [None] * 25
    cols["default"] = pa.array(labels, pa.string())
    findings = _run(cols)
    assert _one(findings, "missing_target").value == 25
    shape = _one(findings, "shape").value
    assert shape["train_rows"] + shape["test_rows"] == N - 25


# Float-coded classes read as whole numbers, so the record says '1', not '1.0'.
def test_numeric_classes_are_labelled_as_whole_numbers() -> None:
    cols = _clean()
    cols["default"] = np.asarray(cols["income"]) > 50_000
    cols["default"] = cols["default"].astype(np.float64)
    assert set(_one(_run(cols), "class_counts").value) == {"0", "1"}


# --- fatal findings -------------------------------------------------------------------------


def _raises(error: type[Exception], findings: list, *fragments: str) -> str:
    with pytest.raises(error) as info:
        tc.raise_fatal(findings)
    for fragment in fragments:
        assert fragment in str(info.value)
    return str(info.value)


# A misspelt target names the columns, the closest match and the option to pass.
def test_a_misspelt_target_suggests_the_closest_column() -> None:
    findings = _run(_clean(), target="defualt")
    assert _found(findings, "fatal") == {("target_not_found", "defualt")}
    _raises(ParameterError, findings, "'defualt'", "Did you mean 'default'?", "-p target default")
    assert "columns: age, income, city, signup, default" in findings[0].message


# A feature that is not in the table, or the target used as a feature, is an option error.
def test_bad_feature_lists_are_parameter_errors() -> None:
    findings = _run(_clean(), features=["age", "incme"])
    _raises(ParameterError, findings, "'incme'", "Did you mean 'income'?")
    findings = _run(_clean(), features=["age", "default"])
    _raises(ParameterError, findings, "'default'", "both the target and a feature")
    findings = _run({"default": _clean()["default"]})
    _raises(DataError, findings, "No feature columns")


# Data that makes training meaningless raises DataError naming the target column.
@pytest.mark.parametrize(
    ("change", "task", "check"),
    [
        ({"default": pa.array([None] * N, pa.string())}, "classification", "target_all_missing"),
        ({"default": pa.array(["yes"] * N)}, "classification", "single_class"),
        ({"default": np.full(N, 3.0)}, "regression", "constant_target"),
        ({}, "regression", "target_type"),
    ],
)
def test_a_useless_target_is_fatal(change: dict, task: str, check: str) -> None:
    findings = _run(_clean() | change, task=task)
    assert _found(findings, "fatal") == {(check, "default")}
    _raises(DataError, findings, "'default'")


# No rows at all, or no train row with a target, is fatal.
def test_empty_tables_are_fatal() -> None:
    empty = pa.table(_clean()).slice(0, 0)
    findings = tc.check_table(
        empty,
        target="default",
        features=None,
        task="classification",
        train_rows=None,
        test_rows=None,
    )
    assert _found(findings, "fatal") == {("empty", None)}
    _raises(DataError, findings, "no rows")
    cols = _clean()
    labels = cols["default"].to_pylist()
    labels[:300] = [None] * 300
    cols["default"] = pa.array(labels, pa.string())
    findings = _run(cols, train_rows=np.arange(300), test_rows=np.arange(300, N))
    _raises(DataError, findings, "No train row", "'default'")


# Nothing fatal: raise_fatal is silent.
def test_raise_fatal_is_silent_without_fatal_findings() -> None:
    tc.raise_fatal(_run(_clean()))


# --- options and output ---------------------------------------------------------------------


# Named checks are skipped; fatal ones cannot be, and unknown names are refused.
def test_skip() -> None:
    cols = _clean() | {"country": pa.array(["FR"] * N)}
    assert "constant" not in {f.check for f in _run(cols, skip=["constant"])}
    with pytest.raises(ParameterError, match="cannot be skipped"):
        _run(cols, skip=["single_class"])
    with pytest.raises(ParameterError, match="is not a check"):
        _run(cols, skip=["constnat"])


# Malformed arguments are refused before any check runs.
def test_malformed_arguments() -> None:
    with pytest.raises(ParameterError, match="task"):
        _run(_clean(), task="clustering")
    with pytest.raises(ParameterError, match="train_rows"):
        _run(_clean(), train_rows=np.array([0, N]))
    with pytest.raises(ParameterError, match="min_rows_per_class"):
        _run(_clean(), min_rows_per_class=0)
    mask = np.zeros(N, dtype=bool)
    mask[:200] = True
    assert _one(_run(_clean(), train_rows=mask), "shape").value["train_rows"] == 200


# The summary is JSON for the run record; the text lists fatal, then warnings, then info.
def test_summary_and_format() -> None:
    cols = _clean() | {"country": pa.array(["FR"] * N)}
    findings = _run(cols)
    record = json.loads(json.dumps(tc.summary(findings)))
    assert record["counts"] == {"fatal": 0, "warning": 1, "info": 2}
    assert record["warning"][0]["column"] == "country"
    text = tc.format_findings(findings)
    assert text.splitlines()[0] == "Table checks: 1 warning, 2 info."
    assert text.index("WARNING") < text.index("INFO")
    assert "country" in text
    assert tc.format_findings([]) == "Table checks: nothing to report."
    assert all(f.check in tc.TABLE_CHECKS for f in findings)


# A large table is checked in one vectorised pass: 200,000 rows with planted problems.
def test_a_large_table_is_checked_whole() -> None:
    n = 200_000
    rng = np.random.default_rng(7)
    cols = {f"x{i}": rng.normal(size=n) for i in range(12)}
    cols |= {f"c{i}": pa.array(rng.choice(list("abcdef"), n).tolist()) for i in range(4)}
    cols["default"] = pa.array(rng.choice(["yes", "no"], n).tolist())
    table = pa.table(cols)
    order = rng.permutation(n)
    train, test = order[:160_000], order[160_000:]
    # Plant 50 test rows that copy train rows.
    rows = table.take(np.r_[np.arange(n), train[:50]])
    test = np.r_[test, np.arange(n, n + 50)]
    findings = tc.check_table(
        rows,
        target="default",
        features=None,
        task="classification",
        train_rows=train,
        test_rows=test,
    )
    assert _one(findings, "overlap").value == 50
    assert _one(findings, "duplicates").value["count"] == 50
    assert _found(findings) == {("overlap", None), ("duplicates", None)}


# A text id of one length is keyed by hashing its bytes, not by a dictionary; anything else
# (a repeat past the first rows, lengths of their own, a missing value) takes the dictionary.
# Either way the checks and the fit find what they find without shared keys.
def test_text_ids_keyed_without_a_dictionary_find_the_same() -> None:
    from mlkit.preprocess import Preprocessor, PreprocessWarning
    from mlkit.table_keys import SAMPLE, TableCodes

    n = SAMPLE + 1000
    rng = np.random.default_rng(5)
    late = [f"L{i:07d}" for i in range(n)]
    late[-1] = late[10]  # a repeat after the first rows
    table = pa.table(
        {
            "ref": pa.array([f"R-{i:09d}" for i in rng.permutation(n)]),
            "late": pa.array(late),
            "varied": pa.array([f"v{i}" for i in range(n)]),
            "gappy": pa.array([None if i == n - 1 else f"G{i:06d}" for i in range(n)]),
            "x": pa.array(rng.normal(size=n)),
            "y": pa.array(rng.choice(["p", "q"], n)),
        }
    )
    codes = TableCodes(table)
    keys = codes.text_id("ref")
    assert keys is not None and np.unique(keys).size == n and not keys.flags.writeable
    assert [codes.text_id(c) for c in ("late", "varied", "gappy", "y")] == [None] * 4
    order = rng.permutation(n)
    options = {
        "target": "y",
        "features": None,
        "task": "classification",
        "train_rows": order[: n // 2],
        "test_rows": order[n // 2 :],
    }
    alone = tc.check_table(table, **options)
    shared = tc.check_table(table, codes=codes, **options)
    assert [f.to_dict() for f in shared] == [f.to_dict() for f in alone]
    ids = {f.column for f in alone if f.check == "id_like" and f.value["all_unique"]}
    assert ids == {"ref", "varied", "gappy"}  # present values all different
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreprocessWarning)
        fits = [
            Preprocessor.fit(table, target="y", train_rows=order[: n // 2], codes=c)
            for c in (None, codes)
        ]
    assert fits[0].to_dict() == fits[1].to_dict()
    assert fits[1].schema()["columns"]["ref"]["role"] == "dropped"
