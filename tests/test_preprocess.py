"""Preprocessing that travels with the model: fitted on train rows, one path, saved as data."""

from __future__ import annotations

import datetime as dt
import json
import math
import warnings

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlkit.errors import DataError, ParameterError, UnsafeArtifactError
from mlkit.preprocess import Preprocessor, PreprocessWarning, RecordError


def _ts(*parts: int) -> dt.datetime:
    return dt.datetime(*parts)


def _table() -> pa.Table:
    """Eight rows of a canonical table: rows 0-5 train, rows 6-7 hold values train never saw."""
    return pa.table(
        {
            "customer_id": pa.array([f"c{i}" for i in range(8)]),
            "age": pa.array([30.0, None, 40.0, 50.0, 20.0, 40.0, 45.0, 1000.0]),
            "income": pa.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, None, 7.0]),
            "purpose": pa.array(["car", "car", None, "tv", "car", "tv", "radio", "boat"]),
            "signup": pa.array(
                [
                    *(_ts(2020, 1, 1), _ts(2021, 6, 3, 12), None, _ts(2022, 2, 2)),
                    *(_ts(2020, 1, 1), _ts(2020, 5, 1), _ts(2020, 7, 1), _ts(2023, 1, 1)),
                ],
                type=pa.timestamp("us"),
            ),
            "sex": pa.array(["m", "f", "f", "m", "m", "f", "m", None]),
            "y": pa.array(["no", "yes", "no", "yes", "no", "yes", "yes", "no"]),
        }
    )


TRAIN = list(range(6))


def _fit(table: pa.Table | None = None, **kwargs) -> Preprocessor:
    kwargs = {"target": "y", "sensitive": ["sex"], "train_rows": TRAIN, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreprocessWarning)
        return Preprocessor.fit(_table() if table is None else table, **kwargs)


def _servable() -> pa.Table:
    """The rows a server may receive: row 6 has a null income, which train never had."""
    return _table().take([0, 1, 2, 3, 4, 5, 7])


def _records(table: pa.Table) -> list[dict]:
    return table.drop_columns(["y"]).to_pylist()


def _column(p: Preprocessor, result, name: str) -> np.ndarray:
    return result.X[:, p.feature_names.index(name)]


def test_statistics_and_vocabulary_come_from_train_rows_only() -> None:
    # A value only in test rows (age 1000, purpose 'radio') moves neither mean nor vocabulary.
    p = _fit()
    columns = p.schema()["columns"]
    assert columns["age"]["mean"] == pytest.approx(np.mean([30, 40, 50, 20, 40]))
    assert columns["age"]["max"] == 50.0
    assert columns["purpose"]["categories"] == ["car", "tv"]
    assert "purpose=radio" not in p.feature_names
    assert p.classes == ["no", "yes"]


def test_numeric_is_imputed_with_train_median_and_standardised() -> None:
    # Missing takes the train median; every value is (x - mean) / std with train statistics.
    p = _fit()
    ages = np.array([30.0, 40.0, 50.0, 20.0, 40.0])
    out = _column(p, p.transform(_table()), "age")
    expected = (np.array([30.0, np.median(ages), 40.0]) - ages.mean()) / ages.std()
    np.testing.assert_allclose(out[:3], expected, rtol=1e-6)


def test_missing_indicator_only_where_train_had_missing_values() -> None:
    # age had a null in train, so age__missing exists; income's only null is in a test row.
    p = _fit()
    result = p.transform(_table())
    assert "age__missing" in p.feature_names
    assert "income__missing" not in p.feature_names
    assert _column(p, result, "age__missing").tolist() == [0, 1, 0, 0, 0, 0, 0, 0]
    assert result.missing["income"] == 1


def test_unseen_category_goes_to_the_unknown_slot_and_is_counted() -> None:
    # 'radio' and 'boat' were never seen in train: counted as unknown, encoded, no crash.
    p = _fit()
    result = p.transform(_table())
    assert result.unknown == {"purpose": 2}
    assert result.missing["purpose"] == 1
    unknown = _column(p, result, "purpose=<unknown>")
    assert unknown.tolist() == [0, 0, 1, 0, 0, 0, 1, 1]  # the null and the two unseen
    block = [i for i, n in enumerate(p.feature_names) if n.startswith("purpose=")]
    assert (result.X[:, block].sum(axis=1) == 1).all()


def test_rare_train_values_go_to_other_not_unknown() -> None:
    # Beyond max_categories, values seen in train share <other> and are not counted unknown.
    p = _fit(max_categories=1)
    assert [n for n in p.feature_names if n.startswith("purpose=")] == [
        "purpose=car",
        "purpose=<other>",
        "purpose=<unknown>",
    ]
    result = p.transform(_table())
    assert _column(p, result, "purpose=<other>").tolist() == [0, 0, 0, 1, 0, 1, 0, 0]
    assert result.unknown == {"purpose": 2}


def test_numeric_column_forced_categorical() -> None:
    # A numeric column named in categorical is one-hot encoded by its values.
    table = _table().append_column("grade", pa.array([1.0, 2.0, 1.0, 2.0, 3.0, 1.0, 1.0, 9.0]))
    p = _fit(table, categorical=["grade"])
    assert "grade=1" in p.feature_names and "grade" not in p.feature_names
    assert p.transform(table).unknown["grade"] == 1


def test_id_column_is_dropped_with_a_warning() -> None:
    # All-unique strings are an id: a warning names the column, the schema says why.
    with pytest.warns(PreprocessWarning, match="customer_id"):
        p = Preprocessor.fit(_table(), target="y", train_rows=TRAIN)
    entry = p.schema()["columns"]["customer_id"]
    assert entry["role"] == "dropped" and "unique" in entry["reason"]
    assert not any(n.startswith("customer_id") for n in p.feature_names)


def test_integral_numbers_are_an_id_only_under_an_id_name() -> None:
    # All-unique integers named like an id are dropped; under another name they are a feature.
    ids = pa.array([float(i) for i in range(8)])
    table = _table().append_column("order_id", ids).append_column("rank", ids)
    p = _fit(table)
    assert p.schema()["columns"]["order_id"]["role"] == "dropped"
    assert "rank" in p.feature_names


def test_id_named_in_features_is_kept() -> None:
    # Naming a column in features is a request to use it, even if it looks like an id.
    p = _fit(features=["customer_id", "age"])
    assert "customer_id=<unknown>" in p.feature_names
    assert p.schema()["columns"]["purpose"]["reason"] == "not named in features"


def test_dates_expand_to_calendar_parts() -> None:
    # A timestamp becomes year, month, day, weekday, and hour when train has a time of day.
    p = _fit()
    names = [n for n in p.feature_names if n.startswith("signup")]
    assert names == [
        "signup.year",
        "signup.month",
        "signup.day",
        "signup.weekday",
        "signup.hour",
        "signup__missing",
    ]
    days = (
        _table()
        .drop_columns(["signup"])
        .append_column("signup", pa.array([_ts(2021, 1, 1)] * 8, type=pa.timestamp("us")))
    )
    midnight = _fit(days)
    assert "signup.hour" not in midnight.feature_names
    weekday = _column(p, p.transform(_table()), "signup.weekday")
    assert weekday[0] == weekday[4]  # the same date, a Wednesday, in two rows
    assert _column(p, p.transform(_table()), "signup__missing")[2] == 1


# The calendar parts are pyarrow's, to the value, for dates within pyarrow's years (it
# keeps a year in 16 bits: +-28,000 years around 1970; negative days included).
_YEARS_28K_US = 28_000 * 365 * 86_400 * 10**6


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-_YEARS_28K_US, _YEARS_28K_US), min_size=1, max_size=200))
def test_calendar_parts_match_pyarrow(micros: list[int]) -> None:
    import pyarrow.compute as pc

    from mlkit.preprocess._columns import calendar

    values = np.array(micros, dtype=np.int64)
    stamps = pa.array(values, type=pa.timestamp("us"))
    kernels = [pc.year, pc.month, pc.day, pc.day_of_week, pc.hour]
    parts = calendar(values, ["year", "month", "day", "weekday", "hour"])
    for kernel, got in zip(kernels, parts, strict=True):
        assert np.array_equal(got, kernel(stamps).to_numpy()), kernel.__name__


_DATETIME_US = (-62_135_596_800 * 10**6, 253_402_300_799 * 10**6)  # years 1 to 9999


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        st.lists(st.integers(*_DATETIME_US), min_size=1, max_size=300),
        # Fewer days than rows: counted per day first.
        st.lists(st.integers(-(3 * 86_400 * 10**6), 3 * 86_400 * 10**6), min_size=8, max_size=300),
    )
)
def test_date_statistics_are_numpys(micros: list[int]) -> None:
    # The fit counts calendar values instead of keeping arrays of them: the same statistics.
    from mlkit.preprocess._columns import Date, calendar

    stamps = pa.chunked_array([pa.array(micros, type=pa.timestamp("us"))])
    fitted = Date.fit("when", stamps)
    for j, part in enumerate(calendar(np.array(micros, dtype=np.int64), fitted.parts)):
        values = part.astype(np.float64)
        assert fitted.means[j] == values.mean()
        assert math.isclose(fitted.stds[j], values.std() or 1.0, rel_tol=1e-9, abs_tol=1e-12)
    assert fitted.median_us == int(np.median(micros))


@settings(max_examples=80, deadline=None)
@given(
    st.one_of(
        st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=60),
        st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=60),
        st.lists(st.sampled_from([-0.0, 0.0, 1.5, 1e300]), min_size=1, max_size=60),
    )
)
def test_median_is_numpys_to_the_bit(values: list) -> None:
    from mlkit.preprocess._columns import median

    array = np.array(values)
    expected = np.median(array)
    assert median(array) == expected and array.tolist() == values  # a copy was reordered
    assert median(array.copy(), overwrite=True) == expected


def test_sensitive_columns_stay_beside_the_features() -> None:
    # A sensitive column is not fed to the model unless asked, but travels with the rows.
    p = _fit()
    assert not any(n.startswith("sex") for n in p.feature_names)
    result = p.transform(_table())
    assert result.sensitive["sex"].tolist() == ["m", "f", "f", "m", "m", "f", "m", None]
    used = _fit(use_sensitive=True)
    assert "sex=m" in used.feature_names
    assert used.schema()["columns"]["sex"]["sensitive"] is True


def test_table_and_records_give_the_same_array() -> None:
    # The rows a server receives as dicts become exactly the float32 the table gives.
    p = _fit()
    table = _servable()
    records = _records(table)
    for record in records:
        record.pop("customer_id")  # a dropped column may be left out
    assert np.array_equal(p.transform(table).X, p.transform(records).X)


def test_records_take_iso_dates_and_time_zones_as_utc() -> None:
    # '2021-06-03T14:00:00+02:00' is the same instant as the naive UTC the table holds.
    p = _fit()
    records = _records(_servable())
    records[1]["signup"] = "2021-06-03T14:00:00+02:00"
    records[3]["signup"] = "2022-02-02"
    assert np.array_equal(p.transform(_servable()).X, p.transform(records).X)


def test_json_round_trip_transforms_identically() -> None:
    # A preprocessor read back from JSON gives the same array, and holds only JSON types.
    p = _fit(max_categories=1)
    data = p.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert data["format_version"] == 1

    def json_only(value) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and json_only(v) for k, v in value.items())
        if isinstance(value, list):
            return all(json_only(v) for v in value)
        return value is None or type(value) in (str, int, float, bool)

    assert json_only(data)
    again = Preprocessor.from_dict(json.loads(text))
    assert again.feature_names == p.feature_names
    assert np.array_equal(again.transform(_table()).X, p.transform(_table()).X)
    assert again.schema() == p.schema()


def test_from_dict_refuses_another_format_version() -> None:
    # Data of an unknown version or shape is refused, never half-loaded.
    data = _fit().to_dict()
    with pytest.raises(UnsafeArtifactError, match="format_version"):
        Preprocessor.from_dict({**data, "format_version": 99})
    with pytest.raises(UnsafeArtifactError, match="corrupt"):
        Preprocessor.from_dict({**data, "columns": [{"name": "age"}]})


def _bad(**changes) -> list[dict]:
    records = _records(_servable())
    records[3].update(changes)
    return records


@pytest.mark.parametrize(
    ("records", "column", "message"),
    [
        (_bad(age="forty"), "age", "expected a number"),
        (_bad(age=float("nan")), "age", "finite"),
        (_bad(age=math.inf), "age", "finite"),
        (_bad(signup=5), "signup", "expected a date"),
        (_bad(signup="not a date"), "signup", "expected a date"),
        (_bad(purpose=3), "purpose", "expected a string"),
        (_bad(income=None), "income", "no missing values in training"),
        (_bad(agee=40.0), "agee", "did not have"),
        ([*_records(_servable())[:3], {"purpose": "car"}], "age", "lacks feature column"),
    ],
)
def test_validate_records_names_the_record_and_the_column(records, column, message) -> None:
    # Every refusal says which record (index 3 here) and which column is at fault.
    with pytest.raises(RecordError, match=message) as caught:
        _fit().validate_records(records)
    assert (caught.value.index, caught.value.column) == (3, column)
    assert isinstance(caught.value, ParameterError)
    assert "Record 3" in str(caught.value)


def test_validate_records_allows_what_training_knew_as_missing() -> None:
    # Null is fine in a categorical column and where train had nulls; sensitive may be absent.
    records = _bad(age=None, purpose=None, signup=None, sex=None)
    del records[0]["sex"]
    records[1]["age"] = True  # a bool is a number, as the canonical table has it
    _fit().validate_records(records)
    assert _fit().transform(records).missing["age"] == 1


def test_task_is_inferred_and_the_target_encoded() -> None:
    # Strings and few integral values are classes; other numbers are a regression target.
    table = _table()
    p = _fit()
    assert p.task == "classification"
    assert p.encode_target(table).tolist() == [0, 1, 0, 1, 0, 1, 1, 0]
    labels = table.drop_columns(["y"]).append_column("y", pa.array([2.0, 0.0] * 4))
    few = _fit(labels)
    assert (few.task, few.classes) == ("classification", [0.0, 2.0])
    assert few.encode_target(labels).dtype == np.int64
    values = table.drop_columns(["y"]).append_column("y", pa.array([0.5 * i for i in range(8)]))
    regression = _fit(values)
    assert regression.task == "regression" and regression.classes is None
    assert regression.encode_target(values).dtype == np.float32


def test_a_class_unseen_in_train_is_a_clear_error() -> None:
    # A label only in a test row cannot be encoded: the error names it and the row.
    table = _table().drop_columns(["y"]).append_column("y", pa.array(["a"] * 6 + ["b", "z"]))
    p = _fit(table)
    with pytest.raises(DataError, match=r"'b' in row 6"):
        p.encode_target(table)


def test_fit_names_the_parameter_and_column_at_fault() -> None:
    # A column that does not exist, or the target among the features, is refused by name.
    with pytest.raises(ParameterError, match=r"features names columns .*'nope'"):
        _fit(features=["nope"])
    with pytest.raises(ParameterError, match="drop names the target"):
        _fit(drop=["y"])
    with pytest.raises(ParameterError, match=r"Pass \['age'\]"):
        _fit(features="age")
    with pytest.raises(ParameterError, match="train_rows"):
        _fit(train_rows=[0, 99])


def test_a_table_must_have_every_feature_column() -> None:
    # Rows without a feature column cannot be turned into inputs: the error names it.
    with pytest.raises(DataError, match="'age' is missing"):
        _fit().transform(_table().drop_columns(["age"]))


rows = st.lists(
    st.tuples(
        st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)),
        st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"])),
    ),
    min_size=2,
    max_size=30,
)


@settings(max_examples=40, deadline=None)
@given(rows)
def test_any_rows_give_one_array_by_every_path(data) -> None:
    # Whatever the values, table, records and the JSON round trip give the same float32.
    table = pa.table(
        {
            "x": pa.array([r[0] for r in data], type=pa.float64()),
            "k": pa.array([r[1] for r in data], type=pa.string()),
            "y": pa.array([float(i % 2) for i in range(len(data))]),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreprocessWarning)
        p = Preprocessor.fit(table, target="y", train_rows=list(range(len(data) // 2 + 1)))
    X = p.transform(table).X
    again = Preprocessor.from_dict(json.loads(json.dumps(p.to_dict())))
    assert X.dtype == np.float32 and X.shape == (len(data), len(p.feature_names))
    assert np.isfinite(X).all()
    assert np.array_equal(again.transform(table).X, X)
    records = table.drop_columns(["y"]).to_pylist()
    if "x__missing" in p.feature_names or table.column("x").null_count == 0:
        assert np.array_equal(p.transform(records).X, X)
    else:  # a null where train had none is refused from records, imputed in a table
        with pytest.raises(RecordError, match="'x'"):
            p.transform(records)


def _mixed(rows: int, seed: int) -> pa.Table:
    """A seeded table with repeats, ties, nulls, an id and id-named numbers."""
    rng = np.random.default_rng(seed)
    words = np.array(["a", "b", "c", "d", "e", "f", "", "é"])
    return pa.table(
        {
            "ref": pa.array([f"r{i}" for i in rng.permutation(rows)]),
            "order_id": pa.array(rng.permutation(rows).astype(float)),
            "word": pa.array(words[rng.integers(0, len(words), rows)], mask=rng.random(rows) < 0.1),
            "grade": pa.array(rng.integers(0, 4, rows).astype(float)),
            "x": pa.array(rng.normal(size=rows), mask=rng.random(rows) < 0.2),
            "y": pa.array(rng.choice(["p", "q"], rows)),
        }
    )


def test_shared_dictionary_codes_fit_and_transform_the_same() -> None:
    # mlkit.data.load hands fit and transform the codes the checks made; the result must be
    # the one fit and transform reach on their own, to the bit: vocabulary order, ties,
    # the rare values in <other>, ids dropped, missing shares, unseen values, every input.
    from mlkit.table_keys import TableCodes

    table, other = _mixed(400, 0), _mixed(50, 1)
    other = other.set_column(2, "word", pa.array(["z", None] + ["a"] * 48))  # z: unseen
    train = np.random.default_rng(2).choice(400, 300, replace=False)
    kwargs = {"target": "y", "train_rows": train, "categorical": ["grade"], "max_categories": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreprocessWarning)
        alone = Preprocessor.fit(table, **kwargs)
        shared = Preprocessor.fit(table, codes=TableCodes(table), **kwargs)
    assert shared.to_dict() == alone.to_dict()
    assert alone.schema()["columns"]["ref"]["role"] == "dropped"
    assert alone.schema()["columns"]["order_id"]["role"] == "dropped"
    assert alone.schema()["columns"]["word"]["categories"][3:]  # some went to <other>
    for rows_of, rows in ((table, train[::-1]), (other, None)):
        plain = alone.transform(rows_of, rows=rows)
        coded = alone.transform(rows_of, rows=rows, codes=TableCodes(rows_of))
        assert np.array_equal(coded.X, plain.X)
        assert (coded.missing, coded.unknown) == (plain.missing, plain.unknown)
    assert plain.unknown["word"] == 1 and plain.missing["word"] == 1
    # Codes of another table are not used for this one.
    assert TableCodes(other).of(table) is None


def test_bands_and_threads_give_what_small_batches_give(monkeypatch) -> None:
    # A big table is written a band of rows at a time, the bands split between threads;
    # every row and every count must be what small batches of the same rows give.
    from mlkit.preprocess import _preprocessor

    table = _mixed(40_000, 3)
    rng = np.random.default_rng(4)
    days = rng.integers(0, 3000, len(table)).astype("timedelta64[D]")
    stamps = pa.array(np.datetime64("2015-01-01", "us") + days, mask=rng.random(len(table)) < 0.1)
    table = table.append_column("day", stamps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreprocessWarning)
        p = Preprocessor.fit(table, target="y", train_rows=np.arange(30_000))
    monkeypatch.setattr(_preprocessor, "_POOL_BYTES", 0)  # threads even for this size
    rows = rng.permutation(len(table))
    whole = p.transform(table, rows=rows)
    pieces = [p.transform(table.take(rows[i : i + 999])) for i in range(0, len(rows), 999)]
    assert len(rows) > 2 * _preprocessor._BAND_ROWS
    assert np.array_equal(whole.X, np.concatenate([piece.X for piece in pieces]))
    for counts in ("missing", "unknown"):
        keys = getattr(whole, counts)
        assert keys == {k: sum(getattr(piece, counts)[k] for piece in pieces) for k in keys}
    assert whole.missing["day"] > 0 and whole.missing["word"] > 0


def test_dates_from_the_day_table_are_the_calendars(monkeypatch) -> None:
    # Dates spanning few days take their parts from a table per day; the same values as
    # the calendar arithmetic per row, hours and missing dates included.
    from mlkit.preprocess import _columns

    rng = np.random.default_rng(6)
    day = 86_400 * 10**6
    micros = rng.integers(-900 * day, 900 * day, 3000)  # 1967 to 1972 (fewer days than rows)
    table = pa.table(
        {
            "when": pa.array(micros, type=pa.timestamp("us"), mask=rng.random(3000) < 0.1),
            "y": pa.array(rng.choice(["p", "q"], 3000)),
        }
    )
    p = Preprocessor.fit(table, target="y", train_rows=np.arange(2000))
    assert "when.hour" in p.feature_names and "when__missing" in p.feature_names
    rows = rng.permutation(3000)
    by_table = p.transform(table, rows=rows)
    assert _columns.Date.prepare(p.columns[0].encoder, table.column("when")).days is not None
    monkeypatch.setattr(_columns, "_DAY_TABLE", 0)  # every span too long: per-row calendar
    by_row = p.transform(table, rows=rows)
    assert np.array_equal(by_table.X, by_row.X) and by_table.missing == by_row.missing


def test_dates_past_the_year_9999_fit_and_transform() -> None:
    # Parquet holds timestamps Python's datetime cannot: they fit, encode and show in the
    # schema all the same.
    far = 20_000 * 365 * 86_400 * 10**6  # the year 21956
    table = pa.table(
        {
            "when": pa.array([0, far, 10**12, far // 2] * 10, type=pa.timestamp("us")),
            "y": pa.array(["a", "b"] * 20),
        }
    )
    p = Preprocessor.fit(table, target="y")
    column = p.schema()["columns"]["when"]
    assert column["min"] == "1970-01-01T00:00:00" and column["max"].startswith("21956-09-21")
    X = p.transform(table).X
    assert np.isfinite(X).all() and X[1, p.feature_names.index("when.year")] > 1
