"""The hash chain of the prediction log: what makes a changed, removed or inserted row visible.

Every row of the ``predictions`` and ``feedback`` tables carries ``prev_hash``, the
``row_hash`` of the row before it (:data:`GENESIS` for the first), and ``row_hash``, the
SHA-256 of ``[prev_hash, id, column values...]`` as compact JSON. Ids follow each other
without gaps. So:

- a row changed in place no longer matches its own hash;
- a row changed and re-hashed no longer matches the ``prev_hash`` its successor recorded;
- a removed row leaves a gap in the ids and a successor that follows nothing;
- a row inserted out of order has no hash, or one that does not follow its predecessor.

Triggers already refuse UPDATE, DELETE and REPLACE; the chain is what tells when someone
dropped them first. Removing the newest rows leaves a shorter chain that still verifies:
``mlkit log verify`` prints the head (last id and hash) so it can be kept elsewhere and
passed back with ``--head`` to prove nothing was cut from the end.

Rows of a log made before the chain (no hashes, all before the first hashed row) are
counted as unchained; they cannot be vouched for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CHAIN_COLUMNS", "GENESIS", "Break", "ChainReport", "link", "row_hash", "verify"]

GENESIS = "0" * 64
# The columns the log adds to each table for the chain (name, SQLAlchemy type, what it holds).
CHAIN_COLUMNS = (
    ("prev_hash", "String", "row_hash of the row before (64 zeros for the first row)"),
    ("row_hash", "String", "SHA-256 of [prev_hash, id, the other columns] as compact JSON"),
)


# json.dumps's output, without its per-call set-up (the server hashes a row per request).
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False, check_circular=False).encode


def row_hash(prev_hash: str, row_id: int, values: Sequence[Any]) -> str:
    """The hash of one row: its predecessor's hash, its id and its values, in column order."""
    return hashlib.sha256(_ENCODE([prev_hash, row_id, *values]).encode()).hexdigest()


def link(
    tail: tuple[int, str | None] | None, rows: Iterable[Sequence[Any]]
) -> list[tuple[Any, ...]]:
    """``rows`` (column values) made into chained rows ``(id, *values, prev_hash, row_hash)``.

    ``tail`` is the (id, row_hash) of the newest row already in the table, or None for an
    empty one; a newest row without a hash (a log from before the chain) starts a new chain.
    """
    last_id, prev = (0, GENESIS) if tail is None else (int(tail[0]), tail[1] or GENESIS)
    out = []
    for values in rows:
        last_id += 1
        digest = row_hash(prev, last_id, values)
        out.append((last_id, *values, prev, digest))
        prev = digest
    return out


@dataclass(frozen=True)
class Break:
    """Where a chain stops verifying: the row it stops at and what is wrong there."""

    row_id: int
    reason: str

    def __str__(self) -> str:
        return f"row {self.row_id}: {self.reason}"


@dataclass
class ChainReport:
    """What walking one table's chain found."""

    table: str
    checked: int = 0  # rows in the table (or the window)
    verified: int = 0  # rows before the first break whose chain holds
    unchained: int = 0  # rows from before the chain, at the start of the table
    head: tuple[int, str] | None = None  # the last verified row's (id, row_hash)
    first_break: Break | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.first_break is None

    def summary(self) -> str:
        """One line a person can read: how many rows hold, and the first break if any."""
        head = f"head {self.head[0]}:{self.head[1]}" if self.head else "empty"
        text = f"{self.table}: {self.verified} of {self.checked} rows verify ({head})"
        if self.unchained:
            text += f"; {self.unchained} rows predate the chain and cannot be verified"
        if self.first_break is not None:
            text += f"; the chain breaks at {self.first_break}"
        return text


def verify(
    table: str,
    rows: Iterable[tuple[int, str | None, str | None, Sequence[Any]]],
    *,
    start: str | None = GENESIS,
) -> ChainReport:
    """Walk ``rows`` (id, prev_hash, row_hash, values), oldest first; stop checking at a break.

    ``start`` is the hash the first hashed row must follow: :data:`GENESIS` for a whole
    table, None for a window from the middle (its first row's ``prev_hash`` is taken as is).
    """
    report = ChainReport(table)
    prev_id: int | None = None
    prev = start
    chained = False
    for row_id, prev_hash, digest, values in rows:
        report.checked += 1
        if report.first_break is not None:
            continue  # counted, so the report says how many rows the break leaves out
        if digest is None and not chained:
            report.unchained += 1
            prev_id = row_id
            continue
        problem = _problem(row_id, prev_hash, digest, values, prev_id, prev, chained)
        if problem is not None:
            report.first_break = Break(row_id, problem)
            continue
        chained = True
        report.verified += 1
        report.head = (row_id, digest)  # type: ignore[assignment]
        prev_id, prev = row_id, digest
    return report


def _problem(
    row_id: int,
    prev_hash: str | None,
    digest: str | None,
    values: Sequence[Any],
    prev_id: int | None,
    prev: str | None,
    chained: bool,
) -> str | None:
    """Why row ``row_id`` does not follow row ``prev_id`` (hash ``prev``), or None."""
    if digest is None or prev_hash is None:
        return "it has no hash: it was written around mlkit's log, or its hash was erased"
    if digest != row_hash(prev_hash, row_id, values):
        return "it was changed after it was written (its content no longer matches its hash)"
    if chained and prev_id is not None and row_id != prev_id + 1:
        gone = prev_id + 1, row_id - 1
        which = f"row {gone[0]}" if gone[0] == gone[1] else f"rows {gone[0]}-{gone[1]}"
        return f"{which}, just before it, {'is' if gone[0] == gone[1] else 'are'} missing"
    if prev is not None and prev_hash != prev:
        if chained:
            return (
                f"it does not follow row {prev_id}: row {prev_id} was changed and re-hashed, "
                "or this row was put in its place"
            )
        return "the chain does not start here: rows before it were removed or re-written"
    return None
