"""Columns of a canonical table as one uint64 key per row, for the checks to compare rows fast.

Equal values have equal keys: a float's bits (``-0.0`` as ``0.0``), a timestamp's ticks, a
dictionary code for a string. Rows are compared by mixing their columns' keys into one hash
per row. The helpers here also give cheap, exact early answers on a sample of rows (a
repeated value, two different ones) so the checks touch every row only when they must.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "SAMPLE",
    "TableCodes",
    "column_keys",
    "dictionary_codes",
    "distinct",
    "first_rows",
    "lookup",
    "mix_into",
    "mixed_classes",
    "numbers",
    "repeats",
    "seed_hashes",
]

SAMPLE = 4096  # rows looked at first, for the answers a few rows can settle
_ID_BAND = 1 << 16  # rows of a text id hashed at a time
_SEED = np.uint64(0x9E37_79B9_7F4A_7C15)
_MULTIPLIER = np.uint64(0xBF58_476D_1CE4_E5B9)  # splitmix64's first, odd: a bijection


class TableCodes:
    """Columns of one table as dictionary codes or numbers, made once, shared between threads.

    The checks, the preprocessing's fit and its transform all read a string column as codes
    and a numeric one as a float64 array; encoding a million strings costs tens of
    milliseconds, converting a million numbers a few, so a column is made the first time
    any of them asks (the others wait for it, or make another column) and kept.
    """

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self._made: dict[tuple[str, str], Any] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def _once(self, kind: str, name: str, make: Any) -> Any:
        with self._lock:
            lock = self._locks.setdefault((kind, name), threading.Lock())
        with lock:
            if (kind, name) not in self._made:
                self._made[kind, name] = make(self.table.column(name))
            return self._made[kind, name]

    def get(self, name: str) -> tuple[np.ndarray, pa.Array]:
        """``(codes, dictionary)`` of column ``name``, as :func:`dictionary_codes` gives them.

        The codes are shared: read them, never write to them.
        """
        return self._once("codes", name, dictionary_codes)

    def numbers(self, name: str) -> np.ndarray:
        """The float64 column ``name`` as numpy, NaN where null (read only: it is shared)."""
        return self._once("numbers", name, _shared_numbers)

    def text_id(self, name: str) -> np.ndarray | None:
        """:func:`text_id_keys` of string column ``name`` (read only): an id's keys, or None."""
        return self._once("id", name, text_id_keys)

    def keys(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """:func:`column_keys` of column ``name``, from the shared codes or numbers."""
        col = self.table.column(name)
        if pa.types.is_string(col.type) and (ids := self.text_id(name)) is not None:
            return ids, np.zeros(len(col), dtype=bool)
        if pa.types.is_string(col.type):
            return column_keys(col, codes=self.get(name))
        if pa.types.is_float64(col.type):
            return column_keys(col, values=self.numbers(name))
        return column_keys(col)

    def prefetch(self) -> None:
        """Key every string column now (on a spare thread, before anyone asks): an id by
        :meth:`text_id`, any other by its dictionary codes."""
        for name, column in zip(self.table.column_names, self.table.columns, strict=True):
            if pa.types.is_string(column.type) and self.text_id(name) is None:
                self.get(name)

    def of(self, table: pa.Table) -> TableCodes | None:
        """These codes when ``table`` is the table they are of, else None."""
        return self if table is self.table else None


def lookup(found: pa.Array, *, unseen: int, missing: int) -> np.ndarray:
    """A table from dictionary codes to entries, to index with a column's codes.

    ``found`` holds an int32 per dictionary value (null where a lookup found nothing): each
    distinct value is looked up once, in the dictionary, and a row then takes its value's
    entry. ``unseen`` replaces the nulls; ``missing`` is appended for code -1 (no value).
    """
    table = pc.fill_null(found, unseen).to_numpy().astype(np.int32)
    return np.append(table, np.int32(missing))


def column_keys(
    col: pa.ChunkedArray,
    codes: tuple[np.ndarray, pa.Array] | None = None,
    values: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(key, is_null)`` per row of a canonical column; equal values have equal uint64 keys.

    Missing values share one key no value has: a string's code -1 as 2**64 - 1, a number's
    NaN (a canonical column holds NaN only where a value is missing). ``codes`` are a string
    column's dictionary codes, ``values`` a float64 column's numbers, when already made
    (:class:`TableCodes`).
    """
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        found = (codes or dictionary_codes(col))[0]
        null = found < 0 if col.null_count else np.zeros(len(col), dtype=bool)
        return found.astype(np.uint64), null
    if values is None:
        key = numbers(col)
        key += 0.0  # makes -0.0 into 0.0: the same bits
    else:
        key = np.add(values, 0.0)  # a fresh array; -0.0 becomes 0.0
    null = np.isnan(key) if col.null_count else np.zeros(len(col), dtype=bool)
    return key.view(np.uint64), null


def numbers(col: pa.ChunkedArray) -> np.ndarray:
    """float64 values of a numeric or timestamp column (microseconds), NaN where null.

    Always a fresh array: the caller may write to it.
    """
    if pa.types.is_timestamp(col.type):
        col = pc.cast(col, pa.int64())
    values = col.to_numpy(zero_copy_only=False)
    if values.dtype != np.float64 or not values.flags.writeable:
        values = np.array(values, dtype=np.float64)
    return values


def _shared_numbers(col: pa.ChunkedArray) -> np.ndarray:
    if not pa.types.is_float64(col.type):
        raise TypeError(f"shared numbers are of float64 columns, not {col.type}")
    values = col.to_numpy()
    values.flags.writeable = False
    return values


def dictionary_codes(col: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """A dense int32 code per row (-1 where null), and the values they stand for, as Arrow.

    The codes may be Arrow's own memory, read only.
    """
    # One array, so that every chunk shares one dictionary.
    array = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    encoded = pc.dictionary_encode(array)
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    return np.asarray(codes, dtype=np.int32), encoded.dictionary


def text_id_keys(col: pa.ChunkedArray) -> np.ndarray | None:
    """A key per row of a text column whose values all differ, all of one length (an id).

    Dictionary-encoding a million distinct strings costs tens of milliseconds; ids of one
    length (zero-padded numbers, UUIDs, hex digests) are keyed instead by hashing each
    value's bytes, a band of rows at a time, and their keys sorted to prove them all
    different: different keys mean different values. None for any other column (a missing
    value, a repeat, a length of its own, a short table): it takes :func:`dictionary_codes`.
    """
    n = len(col)
    if n < SAMPLE or col.null_count or repeats(col.slice(0, SAMPLE).to_numpy()):
        return None
    array = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    _, offsets_buffer, data = array.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int32, n + 1, array.offset * 4)
    width = int(offsets[1] - offsets[0])
    if not 0 < width <= 64 or not np.all(np.diff(offsets) == width):
        return None
    raw = np.frombuffer(data, np.uint8, n * width, int(offsets[0])).reshape(n, width)
    words = -(-width // 8)
    keys = np.empty(n, dtype=np.uint64)
    for start in range(0, n, _ID_BAND):
        part = raw[start : start + _ID_BAND]
        padded = np.zeros((len(part), words * 8), dtype=np.uint8)
        padded[:, :width] = part
        h = seed_hashes(len(part))
        scratch = np.empty_like(h)
        for word in padded.view(np.uint64).T:
            mix_into(h, word, scratch)
        keys[start : start + _ID_BAND] = h
    if distinct(keys) < n:
        return None
    keys.flags.writeable = False
    return keys


def mix_into(h: np.ndarray, key: np.ndarray, scratch: np.ndarray) -> None:
    """``h = f(h ^ key)`` in place, ``f`` a multiply and an xor-shift (wraps on purpose).

    ``f`` is a bijection, so rows that differ in a column differ after it; one round per
    column spreads a small difference (codes 3 and 4) over the whole word, which is all an
    equality test of row hashes needs. ``scratch`` is room of ``h``'s size.
    """
    h ^= key
    h *= _MULTIPLIER
    np.right_shift(h, np.uint64(32), out=scratch)
    h ^= scratch


def seed_hashes(rows: int) -> np.ndarray:
    """Row hashes before any column is mixed in (see :func:`mix_into`)."""
    return np.full(rows, _SEED)


def distinct(keys: np.ndarray) -> int:
    """How many different values ``keys`` holds, exactly.

    By sorting: numpy sorts integers with vector instructions, a million keys in a few
    milliseconds, several times faster than counting them in a hash table.
    """
    if keys.size < 2:
        return int(keys.size)
    ordered = np.sort(keys)
    return int(np.count_nonzero(ordered[1:] != ordered[:-1])) + 1


def repeats(values: np.ndarray) -> bool:
    """Whether some value occurs twice among ``values`` (a sample of a column, say)."""
    return bool(pd.unique(values).size < values.size)


def mixed_classes(keys: np.ndarray, classes: np.ndarray) -> bool:
    """Whether one key goes with two different classes among these rows."""
    codes, _ = pd.factorize(keys)
    mapping = np.full(codes.max() + 1 if codes.size else 0, -1)
    mapping[codes] = classes
    return not np.array_equal(mapping[codes], classes)


def first_rows(positions: np.ndarray, null: np.ndarray) -> np.ndarray:
    """The first :data:`SAMPLE` of ``positions`` where the column has a value."""
    head = positions[:SAMPLE]
    return head[~null[head]]
