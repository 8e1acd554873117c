"""A user's own table, from any source, as one canonical ``pyarrow.Table`` with a content hash.

A table may come from a CSV file, a Parquet file, a folder of Parquet files, a database
(a SQLAlchemy URL with ``table=`` or ``query=``), a pandas DataFrame or a pyarrow Table.
:func:`read_table` reads it and :func:`canonical` gives every column one of three types, so
the same rows are the same table whichever source they came from:

- ``float64``: every number and boolean (integers, decimals, bools); missing is null, never NaN;
- ``string``: text and categories; an empty string is missing (a CSV cannot tell them apart);
- ``timestamp[us]``: dates and datetimes, tz-naive in UTC; a text column whose every value is
  an ISO date or datetime is one too (SQLite has no date type, so its dates arrive as text).

A column with no type at all (every value missing in a CSV or a query) is ``float64`` nulls.
:func:`table_hash` fingerprints the canonical table, independent of how it is chunked.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as pa_ds
import pyarrow.parquet as pq

from mlkit._io import redact, redact_text
from mlkit.errors import DataError, NotFoundError, ParameterError
from mlkit.table_sources import (
    describe_source,
    is_table_source,
    source_kind,
)

__all__ = [
    "canonical",
    "canonical_hash",
    "describe_source",
    "is_table_source",
    "read_table",
    "table_hash",
]

_TIMESTAMP = pa.timestamp("us")


# --- sources ----------------------------------------------------------------------------


def read_table(
    source: Any,
    *,
    table: str | None = None,
    query: str | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Read a table from any source, as the canonical table (see the module docstring).

    Args:
        source: A path to a ``.csv`` or ``.parquet`` file or to a folder of Parquet files,
            a SQLAlchemy URL (``sqlite:///PATH``, ``postgresql://USER:PW@HOST/DB``), a
            pandas DataFrame (a named index becomes a column) or a pyarrow Table.
        table: For a URL: the table to read (``schema.table`` works too).
        query: For a URL: the SQL query to read, instead of ``table``.
        columns: Read only these columns, in this order; all of them when None.

    Returns:
        The canonical ``pyarrow.Table``.

    Raises:
        NotFoundError: the file, folder or database table does not exist.
        ParameterError: the source, ``table``/``query`` or ``columns`` cannot be used as
            given, the database cannot be reached, or the query fails.
        DataError: the file cannot be read, or a column has a type that is not a number,
            text or a date.
    """
    kind = source_kind(source)
    if kind != "sql" and (table is not None or query is not None):
        option = "table" if table is not None else "query"
        raise ParameterError(
            f"{option}= applies only to a database URL, but the source is a {kind} source. "
            f"Leave {option}= out, or pass a URL such as sqlite:///PATH."
        )
    wanted = _check_columns_option(columns)
    if kind == "csv":
        raw = _read_csv(Path(source).expanduser(), wanted)
    elif kind == "parquet":
        raw = _read_parquet_files([Path(source).expanduser()], wanted)
    elif kind == "parquet_folder":
        raw = _read_parquet_folder(Path(source).expanduser(), wanted)
    elif kind == "sql":
        raw = _read_sql(source, table, query, wanted)
    elif kind == "dataframe":
        raw = _from_dataframe(source, wanted)
    else:
        _check_columns(wanted, source.column_names, "the table")
        raw = source if wanted is None else source.select(wanted)
    return canonical(raw)


def _check_columns_option(columns: Sequence[str] | None) -> list[str] | None:
    if columns is None:
        return None
    if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
        raise ParameterError(
            f"columns= must be a list of column names; got {columns!r}. "
            f"Pass for example columns=[{columns!r}]."
        )
    repeated = sorted({c for c in columns if list(columns).count(c) > 1})
    if repeated:
        raise ParameterError(
            f"columns= names {', '.join(map(repr, repeated))} more than once. Name each once."
        )
    return list(columns)


def _check_columns(columns: list[str] | None, available: Sequence[str], where: str) -> None:
    """``columns`` are all in ``available``, or an error listing them, with the nearest."""
    for name in columns or ():
        if name not in available:
            near = difflib.get_close_matches(name, list(available), n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ParameterError(
                f"Column {name!r} in columns= is not in {where}.{hint} "
                f"Its columns: {', '.join(available)}."
            )


def _reason(exc: BaseException) -> str:
    """The first line of an error's text: readers put the cause there."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    # A parse error may quote the bytes it choked on: keep the line printable and short.
    line = "".join(c if c.isprintable() else "?" for c in lines[0].strip())
    return (line[:200] + "..." if len(line) > 200 else line).rstrip(".")


# --- files ------------------------------------------------------------------------------


# Blocks of 16 MiB instead of 1: the same read time, a tenth of the chunks for every later
# step to walk, and column types guessed from more rows.
_CSV_BLOCKS = pa_csv.ReadOptions(block_size=16 << 20)


def _read_csv(path: Path, columns: list[str] | None) -> pa.Table:
    options = pa_csv.ConvertOptions(strings_can_be_null=True, include_columns=columns)
    try:
        if columns is not None:
            # The header comes with the first block: a wrong name is found before a full read.
            with pa_csv.open_csv(path) as reader:
                _check_columns(columns, reader.schema.names, str(path))
        return pa_csv.read_csv(path, read_options=_CSV_BLOCKS, convert_options=options)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"Cannot read {str(path)!r} as CSV: {_reason(exc)}. Check that it is a UTF-8 "
            "text CSV file with a header row, or pass a .parquet file instead."
        ) from None


def _read_parquet_folder(folder: Path, columns: list[str] | None) -> pa.Table:
    # Spark and Hadoop leave _SUCCESS, .crc and _temporary beside the data: not part of it.
    files = sorted(
        p
        for p in folder.rglob("*.parquet")
        if p.is_file()
        and not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
    )
    if not files:
        raise DataError(
            f"The folder {str(folder)!r} holds no Parquet files (*.parquet). Pass a folder of "
            ".parquet files, or the path of a .csv or .parquet file."
        )
    return _read_parquet_files(files, columns, base=folder)


def _read_parquet_files(
    files: list[Path], columns: list[str] | None, base: Path | None = None
) -> pa.Table:
    """One table from Parquet files, in path order; their schemas are unified first."""
    schemas = []
    for path in files:
        try:
            schemas.append(pq.read_schema(path))
        except (pa.ArrowException, OSError) as exc:
            raise DataError(
                f"Cannot read {str(path)!r} as Parquet: {_reason(exc)}. Check that it is a "
                "Parquet file (pandas.DataFrame.to_parquet or pyarrow.parquet.write_table)."
            ) from None
    where = str(base or files[0])
    options: dict[str, Any] = {"format": "parquet"}
    if base is not None:
        # Folders named key=value (pandas' partition_cols, Spark, Hive) add a column each.
        options |= {"partitioning": "hive", "partition_base_dir": str(base)}
    try:
        found = pa_ds.dataset([str(p) for p in files], **options)
        # Files written apart may disagree (int32 here, int64 there, all-null there).
        schema = pa.unify_schemas([found.schema, *schemas], promote_options="permissive")
        _check_columns(columns, schema.names, where)
        dataset = pa_ds.dataset([str(p) for p in files], schema=schema, **options)
        return dataset.to_table(columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"Cannot read the Parquet data in {where!r}: {_reason(exc)}. Check that its files "
            "hold the same columns with compatible types."
        ) from None


# --- in-memory tables -------------------------------------------------------------------


def _from_dataframe(frame: Any, columns: list[str] | None) -> pa.Table:
    if any(name is not None for name in frame.index.names):
        frame = frame.reset_index()  # a named index is data (an id, a date), not row numbers
    frame = frame.rename(columns=str)
    _check_unique(list(frame.columns))
    _check_columns(columns, list(frame.columns), "the DataFrame")
    if columns is not None:
        frame = frame[columns]
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise DataError(
            f"Cannot convert the DataFrame to a table: {_reason(exc)}. Give each column one "
            "kind of value (numbers, text or dates), for example with df[col].astype(str)."
        ) from None


# --- databases --------------------------------------------------------------------------


def _read_sql(
    url: str, table: str | None, query: str | None, columns: list[str] | None
) -> pa.Table:
    # SQLAlchemy takes 0.1 s to import: only a database source pays for it
    import sqlalchemy as sa

    if (table is None) == (query is None):
        given = "both" if table is not None else "neither"
        raise ParameterError(
            f"A database source needs exactly one of table= and query=; got {given} for "
            f"{redact(url)}. Pass table='NAME' to read a table, or query='SELECT ...'."
        )
    engine = _engine(url)
    try:
        try:
            connection = engine.connect()
        except (sa.exc.DBAPIError, sa.exc.ArgumentError) as exc:
            raise _cannot_connect(url, exc) from None
        with connection:
            if table is not None:
                statement = _table_select(connection, url, table, columns)
            else:
                statement = sa.text(query)
            try:
                result = connection.execute(statement)
                names = list(map(str, result.keys()))
                rows = result.fetchall()
            except sa.exc.DBAPIError as exc:
                raise _query_failed(url, table, query, exc) from None
    finally:
        engine.dispose()
    where = f"the query on {redact(url)}" if query is not None else f"table {table!r}"
    read = _rows_to_table(names, rows, where)
    if query is not None and columns is not None:
        _check_columns(columns, read.column_names, where)
        read = read.select(columns)
    return read


def _engine(url: str) -> Any:
    """A one-connection SQLAlchemy engine; ``postgresql://`` uses the psycopg 3 driver."""
    import sqlalchemy as sa  # loaded by _read_sql already; kept out of the module's import

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise ParameterError(
            f"The database URL {redact(url)!r} is not understood. Use sqlite:///PATH or "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE."
        ) from None
    kwargs: dict[str, Any] = {"poolclass": sa.pool.NullPool}
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 10}  # a host that never answers
    if parsed.drivername.startswith("sqlite"):
        database = parsed.database or ""
        # SQLite makes an empty database for a path that does not exist: say so instead.
        if database not in ("", ":memory:") and not Path(database).is_file():
            raise NotFoundError(
                f"No SQLite database at {database!r} (from {redact(url)}). Check the path: "
                "sqlite:///relative/path.db or sqlite:////absolute/path.db."
            )
    try:
        return sa.create_engine(parsed, **kwargs)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ParameterError(
            f"Cannot use the database URL {redact(url)}: {_reason(exc)}. Use sqlite:///PATH "
            "or postgresql://USER:PASSWORD@HOST:PORT/DATABASE."
        ) from None


def _db_reason(url: str, exc: BaseException) -> str:
    """The driver's own one-line reason, with the URL's secrets hidden."""
    driver_error = getattr(exc, "orig", None) or exc
    return " ".join(redact_text(_reason(driver_error), url).split())


def _cannot_connect(url: str, exc: BaseException) -> ParameterError:
    return ParameterError(
        f"Cannot connect to the database {redact(url)}: {_db_reason(url, exc)}. Check the "
        "user, password, host and database name in the URL, and that the server is up."
    )


def _query_failed(
    url: str, table: str | None, query: str | None, exc: BaseException
) -> ParameterError:
    if query is None:
        return ParameterError(
            f"Reading table {table!r} from {redact(url)} failed: {_db_reason(url, exc)}. "
            "Check that this user may read it, or pass query='SELECT ...' instead."
        )
    first = next((line.strip() for line in query.splitlines() if line.strip()), "")
    return ParameterError(
        f"The query {first!r} failed on {redact(url)}: {_db_reason(url, exc)}. Fix the SQL "
        "in query=, or pass table='NAME' to read a whole table."
    )


def _table_select(connection: Any, url: str, table: str, columns: list[str] | None) -> Any:
    """``SELECT columns FROM table``, once the table and columns are known to exist."""
    import sqlalchemy as sa  # loaded by _read_sql already; kept out of the module's import

    schema, _, name = table.rpartition(".")
    inspector = sa.inspect(connection)
    known = inspector.get_table_names(schema=schema or None)
    known += inspector.get_view_names(schema=schema or None)
    if name not in known:
        near = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise NotFoundError(
            f"No table {table!r} in {redact(url)}.{hint} Its tables: "
            f"{', '.join(sorted(known)) or 'none'}. Pass table= one of them, or query='SELECT ...'."
        )
    available = [c["name"] for c in inspector.get_columns(name, schema=schema or None)]
    _check_columns(columns, available, f"table {table!r}")
    # Untyped columns: SQLAlchemy hands back what the driver gives, with no conversion of its own.
    return sa.select(*(sa.column(c) for c in columns or available)).select_from(
        sa.table(name, schema=schema or None)
    )


def _rows_to_table(names: list[str], rows: Sequence[Any], where: str) -> pa.Table:
    values = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    arrays = []
    for name, column in zip(names, values, strict=True):
        try:
            arrays.append(pa.array(column, from_pandas=True))
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise DataError(
                f"Column {name!r} of {where} holds values that are not one of numbers, text "
                f"or dates: {_reason(exc)}. Convert it in SQL, for example "
                f"CAST({name} AS TEXT), with query='SELECT ...'."
            ) from None
    return pa.Table.from_arrays(arrays, names=names)


# --- the canonical table ----------------------------------------------------------------


def canonical(table: pa.Table) -> pa.Table:
    """The table with every column float64, string or timestamp[us] (see the module docstring).

    Args:
        table: Any pyarrow Table.

    Returns:
        A new table with the same column names (as strings) in the same order.

    Raises:
        DataError: two columns share a name, or a column's type is none of a number, a
            boolean, text, a date or a datetime (binary, lists, structs, durations...).
    """
    names = [str(name) for name in table.column_names]
    _check_unique(names)
    columns = [_canonical_column(n, c) for n, c in zip(names, table.columns, strict=True)]
    return pa.Table.from_arrays(columns, names=names)


def _check_unique(names: list[str]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(
            f"The table has more than one column named {', '.join(map(repr, repeated))}. "
            "Rename them so that each name is used once."
        )


def _canonical_column(name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_null(kind):
        return column.cast(pa.float64())
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_decimal(kind):
        # safe=False: an integer past 2**53 rounds, as float64 must
        return column.cast(pa.float64(), safe=False)
    if pa.types.is_floating(kind):
        column = column.cast(pa.float64())
        nan = pc.is_nan(column)
        return pc.if_else(nan, None, column) if pc.any(nan).as_py() else column
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        column = column.cast(pa.string())
        empty = pc.equal(column, "")
        if pc.any(empty).as_py():
            column = pc.if_else(empty, None, column)
        return _as_timestamps(column)
    if pa.types.is_date(kind) or pa.types.is_timestamp(kind):
        # A zoned timestamp is stored as UTC: the cast drops the zone and keeps UTC.
        return pc.cast(column, options=pc.CastOptions(_TIMESTAMP, allow_time_truncate=True))
    raise DataError(
        f"Column {name!r} has type {kind}, which is none of a number, a boolean, text, a "
        "date or a datetime. Convert it (to text, for example) or leave it out with columns=."
    )


def _as_timestamps(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Text whose every value is an ISO date or datetime, as timestamps; other text as is."""
    if column.null_count == len(column):
        return column
    head = column.slice(0, 1000).drop_null()
    if len(head) and not str(head[0])[:1].isdigit():
        return column  # an ISO date starts with its year's digits; most text does not
    # Without a zone first; then all with one (Z, +02:00), converted to UTC.
    for kind in (_TIMESTAMP, pa.timestamp("us", "UTC")):
        try:
            head.cast(kind)  # most text is not dates: its first values say so, cheaply
            return column.cast(kind).cast(_TIMESTAMP)
        except pa.ArrowInvalid:
            continue
    return column


# --- the hash ---------------------------------------------------------------------------


HASH_PREFIX = "blake3:"  # a table hash names its algorithm; one without a prefix is SHA-256


def table_hash(table: pa.Table) -> str:
    """BLAKE3 of the canonical table's column names, types and values, as ``blake3:<hex>``.

    The same rows give the same hash whatever their source, chunking or buffer layout:
    each column, as one array, is hashed as its validity bits, then its values (a null's
    slot as NaN, NaT or empty text; text as its lengths, then its bytes), after a header of
    the names, types and number of rows.

    Args:
        table: Any pyarrow Table; it is made canonical first.

    Returns:
        ``blake3:`` and 64 hex characters.
    """
    return canonical_hash(canonical(table))


def canonical_hash(table: pa.Table, like: str | None = None) -> str:
    """:func:`table_hash` of a table that is canonical already, as :func:`read_table` gives.

    Making a table canonical again reads every value once more (for NaN, for empty text);
    a loaded table skips that. ``like``: a hash recorded earlier, to hash with its
    algorithm: one without a prefix is the SHA-256 (plain hex) of runs recorded before
    tables were hashed with BLAKE3, hashed the same way.
    """
    legacy = like is not None and not like.startswith(HASH_PREFIX)
    new = hashlib.sha256 if legacy else blake3.blake3
    header = {
        "columns": [
            [name, str(column.type)]
            for name, column in zip(table.column_names, table.columns, strict=True)
        ],
        "rows": table.num_rows,
    }
    digest = new(json.dumps(header).encode())
    # hashlib, blake3 and arrow's kernels release the GIL: columns hash side by side.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for column_digest in pool.map(lambda c: _column_digest(c, new), table.columns):
            digest.update(column_digest)
    return digest.hexdigest() if legacy else HASH_PREFIX + digest.hexdigest()


def _column_digest(column: pa.ChunkedArray, new: Any) -> bytes:
    """The digest of a column's validity bits, then its values (text: lengths, then bytes).

    The values stream in chunk by chunk: the digest is that of the column as one array,
    without the copy that joining its chunks would make.
    """
    digest = new()
    # A flag byte first, so that "no nulls" (no bits at all) cannot read as some bits.
    digest.update(b"\x01" if column.null_count else b"\x00")
    if column.null_count:
        digest.update(_bytes(np.packbits(column.is_valid().to_numpy(zero_copy_only=False))))
    chunks = [chunk for chunk in column.chunks if len(chunk)]
    if pa.types.is_floating(column.type) or pa.types.is_timestamp(column.type):
        for chunk in chunks:
            # A null slot may hold anything: to_numpy writes NaN (NaT) there instead.
            numbers = chunk.to_numpy(zero_copy_only=False)
            if pa.types.is_floating(column.type):
                numbers = numbers + 0.0  # -0.0 == 0.0, so they must hash alike
            digest.update(_bytes(numbers))
        return digest.digest()
    texts = [_offsets_and_data(_empty_nulls(chunk)) for chunk in chunks]
    for offsets, _ in texts:
        digest.update(_bytes(np.diff(offsets).astype(np.int32, copy=False)))
    for offsets, data in texts:
        if data is not None:
            digest.update(memoryview(data)[offsets[0] : offsets[-1]].cast("B"))
    return digest.digest()


def _bytes(values: np.ndarray) -> memoryview:
    """A contiguous array's bytes (BLAKE3 takes bytes only; its memory is not copied)."""
    return memoryview(np.ascontiguousarray(values).reshape(-1).view(np.uint8))


def _empty_nulls(text: pa.Array) -> pa.Array:
    """Text whose null slots hold no bytes: as it is when they hold none already (readers
    leave them empty), else with fresh text where they are."""
    if not text.null_count:
        return text
    lengths = np.diff(_offsets_and_data(text)[0])
    if not lengths[~text.is_valid().to_numpy(zero_copy_only=False)].any():
        return text
    return text.fill_null("")


def _offsets_and_data(array: pa.Array) -> tuple[np.ndarray, pa.Buffer | None]:
    """A text array's offsets (one more than its rows) and the buffer they point into."""
    width = np.int64 if pa.types.is_large_string(array.type) else np.int32
    _, offsets_buffer, data = array.buffers()
    offsets = np.frombuffer(offsets_buffer, width, len(array) + 1, array.offset * width().itemsize)
    return offsets, data
