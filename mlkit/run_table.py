"""Runs as data: every run record as one row of a pandas DataFrame, to filter and sort.

One row per run, in these columns::

    id  experiment  status  started  duration  notebook    what run.json says
    param.lr  param.model  ...                              each parameter, prefixed
    test/accuracy  best_epoch  ...                          each metric of result.json
    data_version  git_commit                                from lineage.json (data.json)

``mlkit runs --where ... --sort ... --csv`` is built on the same table, so the command line
and ``mlkit.runs()`` in a notebook agree on what a condition keeps and how runs sort.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import numbers
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mlkit._contract import DATA_FILE, LINEAGE_FILE
from mlkit._io import read_json
from mlkit.errors import ParameterError, UnknownNameError
from mlkit.record_store import RunRecord, list_runs

PARAM_PREFIX = "param."
RECORD_COLUMNS = ("id", "experiment", "status", "started", "duration", "notebook")
LINEAGE_COLUMNS = ("data_version", "git_commit")

# Longest first: at one position ">=" must win over ">".
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "!=": operator.ne,
    "==": operator.eq,
    "=": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
}
_CONDITION = re.compile(
    r"^(?P<name>[^=!<>]+?)\s*(?P<op>" + "|".join(map(re.escape, _OPERATORS)) + r")(?P<value>.*)$"
)


@dataclass(frozen=True)
class Condition:
    """One ``NAME OP VALUE`` test on a column, such as ``test/accuracy>0.95``."""

    name: str
    op: str
    value: str

    def holds(self, cell: Any) -> bool:
        """Whether ``cell`` passes: as numbers when both are numbers, else as text.

        A run without the value (no such parameter, no result) passes no condition, ``!=``
        included, as a missing value compares in SQL.
        """
        if _missing(cell):
            return False
        compare = _OPERATORS[self.op]
        left, right = _number(cell), _number(self.value)
        if left is not None and right is not None:
            return compare(left, right)
        return compare(_text(cell), self.value)


def parse_condition(text: str) -> Condition:
    """``'test/accuracy>0.95'`` as a :class:`Condition`.

    Raises:
        ParameterError: no operator, or no name before it.
    """
    match = _CONDITION.match(text.strip())
    if not match or not match["name"].strip():
        raise ParameterError(
            f"A condition must be NAME OP VALUE with OP one of = != > >= < <=, got {text!r}. "
            "Pass --where 'test/accuracy>0.95' or --where model=cnn, for example."
        )
    return Condition(match["name"].strip(), match["op"], match["value"].strip())


def runs(
    experiment: str | None = None,
    root: str | Path | None = None,
    *,
    where: Iterable[str] = (),
    sort: str | None = None,
    descending: bool = False,
) -> pd.DataFrame:
    """The run records as a DataFrame, one row per run, newest first.

    Args:
        experiment: only the runs of this experiment; default all.
        root: the experiments folder; default ``$MLKIT_EXPERIMENTS`` or ``experiments/``.
        where: conditions that must all hold, such as ``"test/accuracy>0.95"`` or
            ``"model=cnn"``: see :func:`select`.
        sort: a column to sort by (a parameter's bare name works too); default newest first.
        descending: largest first.

    Returns:
        Columns ``id, experiment, status, started, duration, notebook``, then
        ``param.NAME`` for each parameter, each metric by its name (``test/accuracy``),
        then ``data_version`` and ``git_commit``. A run lacking a value holds NaN there.

    Raises:
        UnknownNameError: a condition or the sort names no column of the table.
        ParameterError: a condition is not NAME OP VALUE.

    Example:
        >>> mlkit.runs("digits", where=["test/accuracy>0.9"], sort="test/accuracy")
    """
    records = list_runs(experiment, Path(root) if root is not None else None)
    return select(table(records), where, sort, descending)


def table(records: list[RunRecord]) -> pd.DataFrame:
    """The records (as :func:`mlkit.record_store.list_runs` gives them) as a DataFrame.

    Row ``i`` is ``records[i]``; the index keeps those positions through :func:`select`.
    """
    rows = [_row(record) for record in records]
    params: dict[str, None] = {}  # insertion-ordered: the order runs first show them
    metrics: dict[str, None] = {}
    for record in records:
        params.update(dict.fromkeys(PARAM_PREFIX + k for k in record.get("params") or {}))
        metrics.update(dict.fromkeys(record.get("result") or {}))
    fixed = {*RECORD_COLUMNS, *LINEAGE_COLUMNS}
    columns = [*RECORD_COLUMNS, *params, *(_metric_column(m, fixed) for m in metrics)]
    frame = pd.DataFrame.from_records(rows, columns=[*columns, *LINEAGE_COLUMNS])
    # A failed run has no end and an unreadable one no start: NaT, not an error.
    frame["started"] = pd.to_datetime(frame["started"], utc=True, errors="coerce", format="ISO8601")
    frame["duration"] = pd.to_numeric(frame["duration"], errors="coerce")
    return frame


def select(
    frame: pd.DataFrame,
    where: Iterable[str | Condition] = (),
    sort: str | None = None,
    descending: bool = False,
) -> pd.DataFrame:
    """The rows of ``frame`` where every condition holds, sorted by ``sort`` when given.

    A name is a column of the table, or a parameter's bare name (``lr`` for ``param.lr``).
    Values compare as numbers when both sides parse as numbers, otherwise as text
    (``true``, ``null`` and lists as JSON); a missing value passes no condition. The sort
    is numeric when every value of the column is a number, else by text; missing values
    go last and ties keep the newest first.

    Raises:
        UnknownNameError: a name is no column of the table; the message lists them.
        ParameterError: a condition is not NAME OP VALUE.
    """
    conditions = [c if isinstance(c, Condition) else parse_condition(c) for c in where]
    if frame.empty:  # no run to know the names from: nothing to keep or order
        return frame
    for condition in conditions:
        column = column_for(frame, condition.name)
        frame = frame[frame[column].map(condition.holds).astype(bool)]
    if sort:
        column = column_for(frame, sort)
        values = frame[column].tolist()
        numeric = all(_number(v) is not None for v in values if not _missing(v))
        key = _number if numeric else _text
        frame = frame.sort_values(
            column,
            key=lambda s: s.map(lambda v: None if _missing(v) else key(v)),
            ascending=not descending,
            na_position="last",
            kind="stable",
        )
    return frame


def column_for(frame: pd.DataFrame, name: str) -> str:
    """The column ``name`` means: itself, or ``param.NAME`` for a parameter's bare name.

    Raises:
        UnknownNameError: neither is a column; the message lists the names there are.
    """
    if name in frame.columns:
        return name
    if PARAM_PREFIX + name in frame.columns:
        return PARAM_PREFIX + name
    raise UnknownNameError(f"No parameter or metric {name!r} in these runs. {known_names(frame)}")


def known_names(frame: pd.DataFrame) -> str:
    """The names a condition or a sort may use, as a sentence for an error message."""
    fixed = {*RECORD_COLUMNS, *LINEAGE_COLUMNS}
    params = [c.removeprefix(PARAM_PREFIX) for c in frame.columns if c.startswith(PARAM_PREFIX)]
    metrics = [c for c in frame.columns if c not in fixed and not c.startswith(PARAM_PREFIX)]
    return (
        f"Parameters: {', '.join(params) or 'none'}. Metrics: {', '.join(metrics) or 'none'}. "
        f"Also: {', '.join(c for c in frame.columns if c in fixed)}. Pass one of these."
    )


def _row(record: RunRecord) -> dict[str, Any]:
    folder = Path(record["path"]) if record.get("path") else None
    lineage = _read_object(folder / LINEAGE_FILE) if folder else {}
    git = lineage.get("git") if isinstance(lineage.get("git"), dict) else {}
    data = lineage.get("data") if isinstance(lineage.get("data"), dict) else {}
    version = data.get("version")
    if version is None and folder:  # a table's run describes its data in data.json too
        version = _read_object(folder / DATA_FILE).get("version")
    fixed = {*RECORD_COLUMNS, *LINEAGE_COLUMNS}
    return {
        **{column: record.get(column) for column in RECORD_COLUMNS},
        **{PARAM_PREFIX + k: v for k, v in (record.get("params") or {}).items()},
        **{_metric_column(k, fixed): v for k, v in (record.get("result") or {}).items()},
        "data_version": version,
        "git_commit": git.get("commit"),
    }


def _read_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; empty when missing or unreadable, so listing goes on."""
    try:
        data = read_json(path, None)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _metric_column(name: str, fixed: set[str]) -> str:
    """A metric's column: its own name, unless that is a column of the record (``status``)."""
    return f"result.{name}" if name in fixed or name.startswith(PARAM_PREFIX) else name


def _missing(value: Any) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _number(value: Any) -> float | None:
    """``value`` as a number when it is one or its text parses as one; True is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):  # numpy's numbers too
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return None if math.isnan(number) else number


def _text(value: Any) -> str:
    """How a value reads in a condition: strings as they are, others as JSON (``true``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)
