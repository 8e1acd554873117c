"""A user's own table from every source: one canonical table, one hash, clear errors."""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from mlkit.errors import DataError, NotFoundError, ParameterError, UsageError
from mlkit.tables import canonical, describe_source, is_table_source, read_table, table_hash

N_ROWS = 60


def mixed_frame(n: int = N_ROWS, seed: int = 0) -> pd.DataFrame:
    """Floats, ints and strings with gaps, a date, a datetime, a bool and an id, seeded."""
    rng = np.random.default_rng(seed)
    missing = lambda share: rng.random(n) < share  # noqa: E731
    floats = rng.normal(size=n).round(6)
    floats[missing(0.15)] = np.nan
    ints = pd.array(rng.integers(-50, 50, n), dtype="Int64")
    ints[missing(0.2)] = pd.NA
    colours = rng.choice(["red", "green", "blue, dark", 'say "hi"'], n).astype(object)
    colours[missing(0.2)] = None
    first = dt.date(2023, 12, 25)
    dates = np.array([first + dt.timedelta(days=int(d)) for d in rng.integers(0, 400, n)])
    dates[missing(0.1)] = None
    stamps = pd.Series(
        pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 10**13, n), unit="us")
    ).astype("datetime64[us]")
    stamps[missing(0.1)] = pd.NaT
    return pd.DataFrame(
        {
            "id": np.arange(1000, 1000 + n),
            "amount": floats,
            "count": ints,
            "colour": colours,
            "day": dates,
            "seen_at": stamps,
            "active": rng.random(n) < 0.5,
        }
    )


EXPECTED_TYPES = {
    "id": pa.float64(),
    "amount": pa.float64(),
    "count": pa.float64(),
    "colour": pa.string(),
    "day": pa.timestamp("us"),
    "seen_at": pa.timestamp("us"),
    "active": pa.float64(),
}


@pytest.fixture
def frame() -> pd.DataFrame:
    return mixed_frame()


@pytest.fixture
def files(tmp_path: Path, frame: pd.DataFrame) -> dict[str, str]:
    """The same rows written as every kind of file source, by name."""
    csv = tmp_path / "mixed.csv"
    frame.to_csv(csv, index=False)
    parquet = tmp_path / "mixed.parquet"
    frame.to_parquet(parquet)
    folder = tmp_path / "mixed_folder"
    folder.mkdir()
    half = len(frame) // 2
    frame.iloc[:half].to_parquet(folder / "part-0.parquet")
    frame.iloc[half:].to_parquet(folder / "part-1.parquet")
    (folder / "_SUCCESS").write_text("")
    database = tmp_path / "mixed.db"
    engine = sa.create_engine(f"sqlite:///{database}")
    frame.to_sql("mixed", engine, index=False)
    engine.dispose()
    return {
        "csv": str(csv),
        "parquet": str(parquet),
        "folder": str(folder),
        "sqlite": f"sqlite:///{database}",
    }


def read(source: str) -> pa.Table:
    return read_table(source, table="mixed") if "://" in source else read_table(source)


def test_every_file_source_gives_the_same_canonical_table(frame, files) -> None:
    # CSV, Parquet file, Parquet folder and SQLite agree with the DataFrame: types, values, hash.
    expected = read_table(frame)
    assert dict(zip(expected.column_names, expected.schema.types, strict=True)) == EXPECTED_TYPES
    assert expected.column("count").null_count > 0 and expected.column("day").null_count > 0
    for kind, source in files.items():
        table = read(source)
        assert table.schema == expected.schema, kind
        assert table.equals(expected), kind
        assert table_hash(table) == table_hash(expected), kind


def test_canonical_values_are_what_the_frame_holds(frame) -> None:
    # NaN and pd.NA become nulls, bools 1.0/0.0, dates midnight timestamps, strings unchanged.
    table = read_table(frame)
    amount = table.column("amount").to_pylist()
    assert [a is None for a in amount] == frame["amount"].isna().tolist()
    assert table.column("active").to_pylist() == frame["active"].astype(float).tolist()
    first_day = frame["day"].dropna().iloc[0]
    assert dt.datetime.combine(first_day, dt.time()) in table.column("day").to_pylist()
    assert table.column("colour").to_pylist() == [
        None if pd.isna(c) else c for c in frame["colour"]
    ]


@pytest.mark.slow
def test_postgresql_gives_the_same_table_as_the_frame(frame, pg_url) -> None:
    # A PostgreSQL table (psycopg 3 under a plain postgresql:// URL) reads as the DataFrame does.
    name = f"mlkit_tables_{uuid.uuid4().hex[:10]}"
    url = sa.engine.make_url(pg_url).set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url)
    frame.to_sql(name, engine, index=False)
    try:
        table = read_table(pg_url, table=name)
        query = read_table(pg_url, query=f"SELECT * FROM {name} ORDER BY id")
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {name}"))
        engine.dispose()
    expected = read_table(frame)
    assert table.equals(expected) and query.equals(expected)
    assert table_hash(table) == table_hash(expected)


def test_a_query_reads_what_it_selects(files) -> None:
    # query= runs SQL; its column order and rows come back as selected.
    table = read_table(files["sqlite"], query="SELECT colour, id FROM mixed\nWHERE id < 1010")
    assert table.column_names == ["colour", "id"]
    assert table.column("id").to_pylist() == [float(i) for i in range(1000, 1010)]


def test_columns_reads_only_those_in_that_order(frame, files) -> None:
    # columns= limits every source to the same columns in the same order, with the same hash.
    wanted = ["seen_at", "colour", "id"]
    expected = read_table(frame, columns=wanted)
    assert expected.column_names == wanted
    for source in [*files.values(), pa.Table.from_pandas(frame)]:
        kw = {"table": "mixed"} if isinstance(source, str) and "://" in source else {}
        table = read_table(source, columns=wanted, **kw)
        assert table.equals(expected)
    sql = read_table(files["sqlite"], query="SELECT * FROM mixed", columns=wanted)
    assert table_hash(sql) == table_hash(expected)


def test_a_parquet_folder_unifies_types_and_reads_partitions(tmp_path) -> None:
    # Files written apart may differ (int32/int64, all-null); key=value folders add a column.
    folder = tmp_path / "data"
    for part in ("a", "b"):
        (folder / f"region={part}").mkdir(parents=True)
    pq.write_table(
        pa.table({"id": pa.array([1, 2], pa.int32()), "note": pa.array([None, None], pa.null())}),
        folder / "region=a" / "0.parquet",
    )
    pq.write_table(
        pa.table({"id": pa.array([3], pa.int64()), "note": ["x"]}),
        folder / "region=b" / "0.parquet",
    )
    table = read_table(folder)
    assert table.to_pydict() == {
        "id": [1.0, 2.0, 3.0],
        "note": [None, None, "x"],
        "region": ["a", "a", "b"],
    }


# --- canonical types --------------------------------------------------------------------


def test_canonical_maps_every_supported_type() -> None:
    # Numbers, bools, decimals -> float64; text, dictionaries -> string; dates -> timestamp[us].
    table = pa.table(
        {
            "i8": pa.array([1, None], pa.int8()),
            "u64": pa.array([2, 3], pa.uint64()),
            "f32": pa.array([1.5, float("nan")], pa.float32()),
            "dec": pa.array([decimal.Decimal("1.25"), None]),
            "flag": [True, None],
            "big": pa.array(["a", ""], pa.large_string()),
            "cat": pa.array(["x", None]).dictionary_encode(),
            "d32": pa.array([dt.date(2024, 1, 2), None], pa.date32()),
            "ns_tz": pa.array([1_000_001_500, None], pa.timestamp("ns", "Europe/Paris")),
            "none": pa.nulls(2),
        }
    )
    out = canonical(table)
    assert out.to_pydict() == {
        "i8": [1.0, None],
        "u64": [2.0, 3.0],
        "f32": [1.5, None],
        "dec": [1.25, None],
        "flag": [1.0, None],
        "big": ["a", None],
        "cat": ["x", None],
        "d32": [dt.datetime(2024, 1, 2), None],
        "ns_tz": [dt.datetime(1970, 1, 1, 0, 0, 1, 1), None],  # UTC, truncated to us
        "none": [None, None],
    }
    assert set(out.schema.types) == {pa.float64(), pa.string(), pa.timestamp("us")}


def test_iso_text_becomes_timestamps_in_utc_and_other_text_stays() -> None:
    # Text of ISO dates/datetimes (zoned ones to UTC) is a timestamp; any other value keeps it text.
    table = canonical(
        pa.table(
            {
                "dates": ["2024-01-02", None, "2024-01-03 04:05:06.000000"],
                "zoned": ["2024-01-02T03:00:00+02:00", "2024-01-02T03:00:00Z", None],
                "mixed": ["2024-01-02", "soon", None],
                "numbers": ["1", "2", "3"],
                "empty": pa.array([None, None, None], pa.string()),
            }
        )
    )
    assert table.column("dates").to_pylist() == [
        dt.datetime(2024, 1, 2),
        None,
        dt.datetime(2024, 1, 3, 4, 5, 6),
    ]
    assert table.column("zoned").to_pylist() == [
        dt.datetime(2024, 1, 2, 1),
        dt.datetime(2024, 1, 2, 3),
        None,
    ]
    for name in ("mixed", "numbers", "empty"):
        assert table.column(name).type == pa.string(), name


@pytest.mark.parametrize(
    ("column", "type_name"),
    [
        (pa.array([b"\x00", b"\x01"]), "binary"),
        (pa.array([[1], [2, 3]]), "list<item: int64>"),
        (pa.array([1, 2], pa.duration("s")), "duration[s]"),
    ],
)
def test_an_unsupported_type_names_the_column_and_its_type(column, type_name) -> None:
    # Anything but numbers, bools, text and dates is refused, naming the column and type.
    with pytest.raises(DataError) as info:
        canonical(pa.table({"ok": [1, 2], "blob": column}))
    assert f"Column 'blob' has type {type_name}" in str(info.value)
    assert "columns=" in str(info.value) and info.value.exit_code == 2


def test_two_columns_with_one_name_are_refused() -> None:
    # Columns are found by name later, so a repeated name is an error, not a silent pick.
    with pytest.raises(DataError, match="more than one column named 'a'"):
        canonical(pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"]))
    with pytest.raises(DataError, match="more than one column named 'a'"):
        read_table(pd.DataFrame([[1, 2]], columns=["a", "a"]))


# --- the hash ---------------------------------------------------------------------------


def rechunk(table: pa.Table, cuts: list[int]) -> pa.Table:
    """The same rows cut into slices at ``cuts``: other chunks, offsets and buffers."""
    edges = sorted({0, table.num_rows, *(c % (table.num_rows + 1) for c in cuts)})
    return pa.concat_tables([table.slice(a, b - a) for a, b in itertools.pairwise(edges)])


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, N_ROWS), max_size=6), combine=st.booleans())
def test_hash_does_not_depend_on_chunks_or_slices(cuts, combine) -> None:
    # Chunk boundaries, slice offsets and recombined buffers never change the hash.
    table = read_table(mixed_frame())
    cut = rechunk(table, cuts)
    if combine:
        cut = cut.combine_chunks()
    assert table_hash(cut) == table_hash(table)


def test_null_slots_do_not_leak_into_the_hash() -> None:
    # Whatever bytes sit under a null (here 123.0, a timestamp, "XYZ"), the hash is that of null.
    validity = pa.py_buffer(np.packbits([1, 0, 1], bitorder="little").tobytes())
    floats = pa.Array.from_buffers(
        pa.float64(), 3, [validity, pa.py_buffer(np.array([1.0, 123.0, 3.0]).tobytes())]
    )
    stamps = pa.Array.from_buffers(
        pa.timestamp("us"), 3, [validity, pa.py_buffer(np.array([1, 99, 3], np.int64).tobytes())]
    )
    text = pa.Array.from_buffers(
        pa.string(),
        3,
        [
            validity,
            pa.py_buffer(np.array([0, 1, 4, 5], np.int32).tobytes()),
            pa.py_buffer(b"aXYZb"),
        ],
    )
    dirty = pa.table({"f": floats, "t": stamps, "s": text})
    clean = pa.table(
        {
            "f": [1.0, None, 3.0],
            "t": pa.array([1, None, 3], pa.timestamp("us")),
            "s": ["a", None, "b"],
        }
    )
    assert table_hash(dirty) == table_hash(clean)


def test_hash_sees_every_change() -> None:
    # A value, a null, a name, a type or the row order changed: another hash.
    base = pa.table({"x": [1.0, 2.0, None], "s": ["a", "bc", None]})
    variants = [
        pa.table({"x": [1.0, 2.5, None], "s": ["a", "bc", None]}),
        pa.table({"x": [1.0, 2.0, 0.0], "s": ["a", "bc", None]}),
        pa.table({"x": [1.0, 2.0, None], "s": ["ab", "c", None]}),
        pa.table({"y": [1.0, 2.0, None], "s": ["a", "bc", None]}),
        pa.table({"x": [2.0, 1.0, None], "s": ["bc", "a", None]}),
        pa.table({"x": ["1", "2", None], "s": ["a", "bc", None]}),
        pa.table({"x": [1.0, 2.0, None]}),
    ]
    hashes = {table_hash(base)} | {table_hash(v) for v in variants}
    assert len(hashes) == 1 + len(variants)
    assert table_hash(base).startswith("blake3:") and len(table_hash(base)) == 71


def test_a_hash_like_a_recorded_sha256_is_the_sha256_of_before() -> None:
    # Runs recorded before tables were hashed with BLAKE3 hold a plain SHA-256; hashing
    # like one of them gives that SHA-256 (pinned here), so their tables still compare.
    from mlkit.tables import canonical_hash

    table = canonical(
        pa.table(
            {
                "a": [1.0, None, -0.0],
                "s": ["x", None, "yy"],
                "d": pa.array([1, None, 3], type=pa.timestamp("us")),
            }
        )
    )
    pinned = "19ae3f96d31caa225d6ef736967c627844bdf0c9d171fc459cc4c6517adb0f50"
    assert canonical_hash(table, like="0" * 64) == pinned
    assert canonical_hash(table, like=table_hash(table)) == table_hash(table)


def test_nan_and_null_and_negative_zero_hash_alike() -> None:
    # NaN is missing (null), and -0.0 equals 0.0: the hash agrees with equality.
    assert table_hash(pa.table({"x": [float("nan"), -0.0]})) == table_hash(
        pa.table({"x": [None, 0.0]})
    )


# --- what a source is -------------------------------------------------------------------


def test_is_table_source_tells_tables_from_bundled_names(tmp_path, frame) -> None:
    # Paths, folders, URLs, frames and tables are sources; a bare name like "digits" is not.
    for source in (
        frame,
        pa.table({"a": [1]}),
        "x.csv",
        Path("y.parquet"),
        tmp_path,
        "sqlite:///a.db",
    ):
        assert is_table_source(source), source
    for name in ("digits", "iris", "no_such_folder", 3):
        assert not is_table_source(name), name


def test_describe_source_names_kind_and_place_without_password(tmp_path, frame, files) -> None:
    # Lineage gets the kind, an absolute path or a redacted URL, and the table or query.
    assert describe_source(files["csv"]) == {"kind": "csv", "path": files["csv"]}
    assert describe_source(files["folder"])["kind"] == "parquet_folder"
    assert describe_source(Path(files["parquet"]))["kind"] == "parquet"
    assert describe_source(frame) == {"kind": "dataframe"}
    assert describe_source(pa.table({"a": [1]})) == {"kind": "arrow"}
    url = "postgresql://me:s3cret@db.example:5432/shop"
    described = describe_source(url, query="SELECT 1")
    assert described == {
        "kind": "sql",
        "url": "postgresql://me:***@db.example:5432/shop",
        "query": "SELECT 1",
    }
    assert "s3cret" not in str(described)


# --- bad input: exit 2, the option and the fix ------------------------------------------


def test_a_missing_file_names_the_path(tmp_path) -> None:
    # A CSV, Parquet or SQLite path that does not exist is "not found", naming the path.
    for path in (tmp_path / "nope.csv", tmp_path / "nope.parquet"):
        with pytest.raises(NotFoundError, match="nope") as info:
            read_table(path)
        assert info.value.exit_code == 2
    with pytest.raises(NotFoundError, match=r"No SQLite database at .*nope\.db"):
        read_table(f"sqlite:///{tmp_path}/nope.db", table="t")
    assert not (tmp_path / "nope.db").exists()


def test_an_unreadable_file_names_it_and_the_reason(tmp_path) -> None:
    # Garbage in a .csv or .parquet: the file, the reader's one-line reason, printable.
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(
        DataError, match=r"Cannot read '.*garbage\.csv' as CSV: CSV parse error"
    ) as info:
        read_table(garbage)
    assert str(info.value).isprintable() and "\n" not in str(info.value)
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(
        DataError, match=r"Cannot read '.*corrupt\.parquet' as Parquet: .*(magic|Parquet)"
    ):
        read_table(corrupt)


def test_a_folder_without_parquet_files_says_so(tmp_path) -> None:
    # A folder holding no *.parquet (only notes, hidden or _-files) is refused by name.
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "_SUCCESS").write_text("")
    with pytest.raises(DataError, match=r"holds no Parquet files \(\*\.parquet\)"):
        read_table(tmp_path)


def test_a_file_of_unknown_kind_is_refused(tmp_path) -> None:
    # An existing file that is neither .csv nor .parquet: say which kinds are read.
    path = tmp_path / "table.xlsx"
    path.write_text("x")
    with pytest.raises(ParameterError, match=r"ends neither in \.csv nor in \.parquet"):
        read_table(path)
    with pytest.raises(ParameterError, match="got a int"):
        read_table(3)


def test_table_and_query_exactly_one_for_a_url_and_only_for_a_url(files) -> None:
    # A URL needs one of table=/query=; a file source takes neither.
    for kwargs, count in (({}, "neither"), ({"table": "mixed", "query": "SELECT 1"}, "both")):
        with pytest.raises(ParameterError, match=f"exactly one of table= and query=; got {count}"):
            read_table(files["sqlite"], **kwargs)
    with pytest.raises(ParameterError, match="table= applies only to a database URL"):
        read_table(files["csv"], table="mixed")


def test_an_unknown_table_lists_the_tables_and_suggests_one(files) -> None:
    # A mistyped table name gets the nearest real one and the list.
    with pytest.raises(
        NotFoundError, match=r"No table 'mixd' .*Did you mean 'mixed'\? Its tables: mixed"
    ):
        read_table(files["sqlite"], table="mixd")


def test_a_failing_query_names_its_first_line_and_the_reason(files) -> None:
    # The database's one-line reason, and the query's first line, not the whole SQL.
    query = "SELECT nonsense\nFROM mixed\nWHERE 1 = 1"
    with pytest.raises(ParameterError) as info:
        read_table(files["sqlite"], query=query)
    message = str(info.value)
    assert "'SELECT nonsense'" in message and "no such column: nonsense" in message
    assert "WHERE" not in message and info.value.exit_code == 2


@pytest.mark.parametrize("kind", ["csv", "parquet", "folder", "sqlite", "query", "frame"])
def test_an_unknown_column_lists_the_columns_and_suggests_one(kind, frame, files) -> None:
    # columns= naming a column the source lacks: every column it has, and the closest.
    if kind == "frame":
        source, kwargs = frame, {}
    elif kind == "query":
        source, kwargs = files["sqlite"], {"query": "SELECT * FROM mixed"}
    elif kind == "sqlite":
        source, kwargs = files["sqlite"], {"table": "mixed"}
    else:
        source, kwargs = files[kind], {}
    with pytest.raises(ParameterError) as info:
        read_table(source, columns=["id", "colour_"], **kwargs)
    message = str(info.value)
    assert "Column 'colour_' in columns=" in message and "Did you mean 'colour'?" in message
    assert "id, amount, count, colour, day, seen_at, active" in message


def test_columns_must_be_a_list_of_distinct_names(frame) -> None:
    # A bare string or a repeated name is a usage mistake, caught before reading.
    with pytest.raises(ParameterError, match=r"Pass for example columns=\['id'\]"):
        read_table(frame, columns="id")
    with pytest.raises(ParameterError, match="'id' more than once"):
        read_table(frame, columns=["id", "id"])


def test_a_frame_column_of_mixed_values_is_a_data_error() -> None:
    # A DataFrame column mixing numbers and text cannot be one column: say how to fix it.
    with pytest.raises(DataError, match=r"astype\(str\)"):
        read_table(pd.DataFrame({"x": [1, "a", 2.5]}))


def test_a_database_column_of_mixed_values_names_the_column(tmp_path) -> None:
    # SQLite lets one column hold numbers and text; that column is named, with a CAST to fix it.
    engine = sa.create_engine(f"sqlite:///{tmp_path}/loose.db")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE loose (code)"))
        conn.execute(sa.text("INSERT INTO loose VALUES (1), ('A7')"))
    engine.dispose()
    with pytest.raises(DataError, match=r"Column 'code' of table 'loose' .*CAST\(code AS TEXT\)"):
        read_table(f"sqlite:///{tmp_path}/loose.db", table="loose")


@pytest.mark.slow
def test_a_wrong_password_is_one_line_without_the_password(pg_url) -> None:
    # PostgreSQL refusing the password: host and database named, the password never shown.
    secret = "wrong-pw-7f3a9"
    url = sa.engine.make_url(pg_url).set(password=secret).render_as_string(hide_password=False)
    with pytest.raises(UsageError) as info:
        read_table(url, table="anything")
    message = str(info.value)
    parsed = sa.engine.make_url(pg_url)
    assert secret not in message and "\n" not in message
    assert parsed.host in message and parsed.database in message
    assert "password authentication failed" in message and info.value.exit_code == 2
