"""Telling a table of the user's own from a bundled dataset's name, and saying where it is from.

Light on purpose: the command line checks a ``dataset`` parameter with it before any run, so
it imports neither pyarrow nor pandas (:mod:`mlkit.tables` reads the tables).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mlkit._io import redact
from mlkit.errors import NotFoundError, ParameterError

__all__ = [
    "CSV_SUFFIXES",
    "SOURCES",
    "TABLE_OPTIONS",
    "describe_source",
    "is_table_source",
    "source_kind",
]

# The options of a table load, as keyword arguments and as the parameters of a template.
TABLE_OPTIONS = (
    "target",
    "features",
    "drop",
    "categorical",
    "sensitive",
    "time_column",
    "task",
    "table",
    "query",
)

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")
SOURCES = (
    "the path of a .csv or .parquet file, a folder of Parquet files, a database URL "
    "(sqlite:///PATH, postgresql://USER@HOST/DB), a pandas DataFrame or a pyarrow Table"
)


def _is_arrow(source: Any) -> bool:
    pyarrow = sys.modules.get("pyarrow")  # no Table can exist unless pyarrow is imported
    return pyarrow is not None and isinstance(source, pyarrow.Table)


def _is_dataframe(source: Any) -> bool:
    pandas = sys.modules.get("pandas")  # no DataFrame can exist unless pandas is imported
    return pandas is not None and isinstance(source, pandas.DataFrame)


def source_kind(source: Any) -> str:
    """``csv``, ``parquet``, ``parquet_folder``, ``sql``, ``dataframe`` or ``arrow``."""
    if _is_arrow(source):
        return "arrow"
    if _is_dataframe(source):
        return "dataframe"
    if isinstance(source, str) and "://" in source:
        return "sql"
    if not isinstance(source, (str, Path)):
        raise ParameterError(
            f"A table source must be {SOURCES}; got a {type(source).__name__}. Pass one of those."
        )
    path = Path(source).expanduser()
    if path.is_dir():
        return "parquet_folder"
    if not path.exists():
        raise NotFoundError(
            f"No file or folder at {str(path)!r} (the table source). Check the path."
        )
    if path.name.lower().endswith(CSV_SUFFIXES):
        return "csv"
    if path.name.lower().endswith(".parquet"):
        return "parquet"
    raise ParameterError(
        f"Cannot tell what kind of table {str(path)!r} is: its name ends neither in .csv "
        f"nor in .parquet. Pass {SOURCES}."
    )


def is_table_source(source: Any) -> bool:
    """Whether ``source`` names a table rather than a bundled dataset such as ``"digits"``.

    True for a DataFrame or pyarrow Table, a path ending ``.csv`` or ``.parquet`` (whether
    or not it exists, so a mistyped path gets a "not found" error rather than an "unknown
    dataset" one), an existing folder, or a URL with ``://``.
    """
    if _is_arrow(source) or _is_dataframe(source):
        return True
    if isinstance(source, str) and "://" in source:
        return True
    if not isinstance(source, (str, Path)):
        return False
    path = Path(source).expanduser()
    return path.name.lower().endswith((*CSV_SUFFIXES, ".parquet")) or path.is_dir()


def describe_source(
    source: Any, *, table: str | None = None, query: str | None = None
) -> dict[str, Any]:
    """Where a table came from, JSON-able, for lineage; a URL's password is never in it.

    Args:
        source: Anything :func:`read_table` accepts.
        table: The database table, for a URL.
        query: The SQL query, for a URL.

    Returns:
        ``{"kind": ...}`` plus ``"path"`` (absolute) for a file or folder, or ``"url"``
        (redacted) and ``"table"`` or ``"query"`` for a database.

    Raises:
        NotFoundError, ParameterError: as :func:`read_table` for a missing or unknown source.
    """
    kind = source_kind(source)
    described: dict[str, Any] = {"kind": kind}
    if kind in ("csv", "parquet", "parquet_folder"):
        described["path"] = str(Path(source).expanduser().resolve())
    elif kind == "sql":
        described["url"] = redact(source)
        if table is not None:
            described["table"] = table
        if query is not None:
            described["query"] = query
    return described
