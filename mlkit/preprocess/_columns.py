"""One input column of a canonical table: its canonical type, and the encoder fitted on it.

Each encoder is a dataclass of plain values (what ``to_dict`` saves) with ``fit`` (from the
training rows of one column), ``names`` (its output columns) and ``prepare`` (the column made
ready, as :class:`Rows`, to write the output values of any rows, with the counts of missing
and unseen values among them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlkit.errors import DataError
from mlkit.table_keys import lookup

UNKNOWN = "<unknown>"
OTHER = "<other>"
TYPES = {"float64": pa.float64(), "string": pa.string(), "timestamp[us]": pa.timestamp("us")}
_DAY_US = 86_400_000_000
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_HOUR_US = 3_600_000_000
_FIT_BAND = 1 << 16  # rows of a date column split into calendar parts at a time
_DAY_TABLE = 1 << 20  # dates spanning fewer days (2,870 years) take their parts from a table


def calendar(micros: np.ndarray, parts: list[str]) -> list[np.ndarray]:
    """Calendar ``parts`` of UTC timestamps in microseconds, as pyarrow's kernels give them.

    The same values as ``year``, ``month``, ``day``, ``day_of_week`` (Monday 0), ``hour``:
    integer arithmetic on the day number (H. Hinnant's civil-from-days), all parts in one
    pass: several times cheaper than one Arrow kernel per part.
    """
    days64 = micros // _DAY_US
    days = days64.astype(np.int32)  # timestamp[us] spans +-292,000 years: int32 days
    z = days + 719_468  # days since 0000-03-01
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + np.where(mp < 10, 3, -9).astype(np.int32)
    found = {
        "year": yoe + era * 400 + (month <= 2),
        "month": month,
        "day": doy - (153 * mp + 2) // 5 + 1,
        "weekday": (days + 3) % 7,  # 1970-01-01 was a Thursday
    }
    if "hour" in parts:
        found["hour"] = (micros - days64 * _DAY_US) // _HOUR_US
    return [found[part] for part in parts]


def median(values: np.ndarray, overwrite: bool = False) -> float:
    """``np.median`` of a 1-d array without NaN, to the bit, several times faster.

    numpy partitions around both middle elements of an even count at once, which takes
    several times as long as one partition and the largest value below it. ``overwrite``:
    reorder ``values`` instead of a copy.
    """
    k = values.size // 2
    part = values if overwrite else values.copy()
    part.partition(k)
    if values.size % 2:
        return float(part[k])
    return (float(part[:k].max()) + float(part[k])) / 2


class Rows:
    """One column made ready to write the inputs of any rows of it, a band at a time.

    An encoder's ``prepare`` does what is done once per column (its values as numpy, its
    lookups); :meth:`write` then turns a band of rows into output columns while those rows
    are in the CPU's cache, so no column-long temporary array is ever made.
    """

    def write(self, out: np.ndarray, at: int, rows: Any) -> tuple[int, int]:
        """Write ``rows`` (positions, or a slice) into ``out``'s columns from ``at``.

        ``out`` holds as many rows as ``rows`` names, zeroed. Returns the counts of missing
        and of unseen values among them.
        """
        raise NotImplementedError


def _rows(values: np.ndarray, rows: Any) -> np.ndarray:
    """``values[rows]``: a view for a slice, else a gather (``take``: faster than indexing)."""
    return values[rows] if isinstance(rows, slice) else values.take(rows)


def _day_parts(micros: np.ndarray, parts: list[str]) -> tuple[int, list[np.ndarray]] | None:
    """The first day of ``micros``, and each calendar part of every day from it to the last.

    Only when the dates span fewer days than there are rows (else None): then a table of
    the days' parts is cheaper than the calendar of every row. "hour" is left out.
    """
    if not micros.size:
        return None
    first, last = int(micros.min()) // _DAY_US, int(micros.max()) // _DAY_US
    if last - first >= min(_DAY_TABLE, micros.size):
        return None
    days = np.arange(first, last + 1, dtype=np.int64) * _DAY_US
    return first, calendar(days, [part for part in parts if part != "hour"])


@dataclass
class Numeric:
    """Median imputation, standardisation and an optional missing indicator."""

    kind: ClassVar[str] = "numeric"
    name: str
    median: float
    mean: float
    std: float
    indicator: bool
    min: float | None
    max: float | None

    @classmethod
    def fit(cls, name: str, values: np.ndarray) -> Numeric:
        """From the train rows' float64 values (NaN where missing); may reorder them."""
        finite = np.isfinite(values)
        seen = values if finite.all() else values[finite]
        if not seen.size:
            return cls(name, 0.0, 0.0, 1.0, True, None, None)
        std, mean = float(seen.std()), float(seen.mean())
        low, high = float(seen.min()), float(seen.max())
        # A spread at the level of rounding noise is a constant column, not a scale.
        constant = std <= np.finfo(np.float64).eps * max(abs(low), abs(high))
        return cls(
            name,
            # Last: the median reorders ``seen`` (the caller's to reorder) instead of a copy.
            median=median(seen, overwrite=True),
            mean=mean,
            std=1.0 if constant or std == 0 else std,
            indicator=bool(seen.size < values.size),
            min=low,
            max=high,
        )

    def names(self) -> list[str]:
        return [self.name] + ([f"{self.name}__missing"] if self.indicator else [])

    def prepare(self, column: pa.ChunkedArray, shared: np.ndarray | None = None) -> Rows:
        """The column ready to scale; ``shared`` is the column as numbers, if made."""
        return _NumericRows(self, shared if shared is not None else numbers(column))


class _NumericRows(Rows):
    def __init__(self, encoder: Numeric, values: np.ndarray) -> None:
        self.encoder, self.values = encoder, values

    def write(self, out: np.ndarray, at: int, rows: Any) -> tuple[int, int]:
        e = self.encoder
        values = np.subtract(_rows(self.values, rows), e.mean)  # fresh: shared ones stay
        absent = ~np.isfinite(values)
        missing = int(np.count_nonzero(absent))
        if missing:
            values[absent] = e.median - e.mean
        values /= e.std
        # A value far outside the train scale stays finite, so it cannot turn a loss into NaN.
        out[:, at] = np.clip(values, -_FLOAT32_MAX, _FLOAT32_MAX, out=values)
        if e.indicator and missing:  # (the band is zeros already)
            out[:, at + 1] = absent
        return missing, 0


@dataclass
class Categorical:
    """One-hot over the frequent train values, with ``<other>`` and ``<unknown>`` slots."""

    kind: ClassVar[str] = "categorical"
    name: str
    vocabulary: list[str]
    other: list[str]

    def __post_init__(self) -> None:
        # Frequent values first, then the rarer ones: one lookup finds a row's slot.
        self._known = pa.array(self.vocabulary + self.other, type=pa.string())

    @classmethod
    def fit(cls, name: str, column: pa.ChunkedArray, max_categories: int) -> Categorical:
        counts = pc.value_counts(_category_strings(column).drop_null())
        return cls.ranked(name, counts.field("values"), counts.field("counts"), max_categories)

    @classmethod
    def fit_counts(
        cls, name: str, counts: np.ndarray, dictionary: pa.Array, max_categories: int
    ) -> Categorical:
        """From the train rows' count of each value of a string column's ``dictionary``."""
        seen = np.flatnonzero(counts)
        return cls.ranked(name, dictionary.take(seen), counts[seen], max_categories)

    @classmethod
    def ranked(cls, name: str, values: pa.Array, counts: Any, max_categories: int) -> Categorical:
        """The most frequent values first (ties by value); past ``max_categories``: other."""
        table = pa.table({"v": values, "n": counts})
        ranked = table.sort_by([("n", "descending"), ("v", "ascending")]).column("v")
        ranked = ranked.to_pylist()
        return cls(name, ranked[:max_categories], sorted(ranked[max_categories:]))

    def names(self) -> list[str]:
        slots = self.vocabulary + ([OTHER] if self.other else []) + [UNKNOWN]
        return [f"{self.name}={value}" for value in slots]

    def prepare(
        self, column: pa.ChunkedArray, shared: tuple[np.ndarray, pa.Array] | None = None
    ) -> Rows:
        """The column ready to one-hot; ``shared`` is its dictionary codes, if made."""
        v, known = len(self.vocabulary), len(self._known)
        # A code per row: its place among the train values; then one past them for a value
        # never seen in train, two past them for a missing value. The rarer train values
        # share the <other> slot; unseen and missing share <unknown>.
        slots = np.arange(known + 2, dtype=np.int32)
        slots[v:known] = v
        slots[known:] = len(self.names()) - 1
        if shared is not None:
            # Each distinct value looked up once, then a row takes its value's code (a
            # missing value's code -1 picks the last entry).
            table_codes, dictionary = shared
            found = pc.index_in(dictionary, value_set=self._known)
            return _CategoryRows(table_codes, lookup(found, unseen=known, missing=known + 1), slots)
        strings = _category_strings(column)
        codes = pc.fill_null(pc.index_in(strings, value_set=self._known), known)
        codes = codes.to_numpy().astype(np.int32)
        if strings.null_count:
            codes[bools(strings.is_null())] = known + 1
        return _CategoryRows(codes, None, slots)


class _CategoryRows(Rows):
    def __init__(self, codes: np.ndarray, lookup: np.ndarray | None, slots: np.ndarray) -> None:
        self.codes, self.lookup, self.slots = codes, lookup, slots

    def write(self, out: np.ndarray, at: int, rows: Any) -> tuple[int, int]:
        codes = _rows(self.codes, rows)
        if self.lookup is not None:
            codes = self.lookup.take(codes)
        unseen, missing = len(self.slots) - 2, len(self.slots) - 1
        flat = out.reshape(-1)  # a view: the band's rows lie one after another
        width = out.shape[1]
        flat[np.arange(at, at + len(out) * width, width) + self.slots.take(codes)] = 1.0
        absent = int(np.count_nonzero(codes == missing))
        return absent, int(np.count_nonzero(codes == unseen))


@dataclass
class Date:
    """Calendar parts of a timestamp, each standardised, with median imputation."""

    kind: ClassVar[str] = "date"
    name: str
    parts: list[str]
    median_us: int
    means: list[float]
    stds: list[float]
    indicator: bool
    min: str | None
    max: str | None

    @classmethod
    def fit(cls, name: str, column: pa.ChunkedArray) -> Date:
        seen = column.drop_null()
        if not len(seen):
            parts = ["year", "month", "day", "weekday"]
            return cls(name, parts, 0, [0.0] * 4, [1.0] * 4, True, None, None)
        micros = seen.cast(pa.int64()).to_numpy()
        bands = range(0, micros.size, _FIT_BAND)
        timed = any(np.any(micros[i : i + _FIT_BAND] % _DAY_US) for i in bands)
        parts = ["year", "month", "day", "weekday"] + (["hour"] if timed else [])
        means, stds = _calendar_moments(micros, parts)
        return cls(
            name,
            parts,
            median_us=int(median(micros)),
            means=means,
            stds=[std if std > 0 else 1.0 for std in stds],
            indicator=bool(len(seen) < len(column)),
            min=_iso(pc.min(seen)),
            max=_iso(pc.max(seen)),
        )

    def names(self) -> list[str]:
        extra = [f"{self.name}__missing"] if self.indicator else []
        return [f"{self.name}.{part}" for part in self.parts] + extra

    def prepare(self, column: pa.ChunkedArray) -> Rows:
        """The column ready to split into calendar parts, missing dates as the median."""
        absent = bools(column.is_null()) if column.null_count else None
        if absent is not None:
            column = pc.fill_null(column, pa.scalar(self.median_us, type=pa.timestamp("us")))
        return _DateRows(self, column.cast(pa.int64()).to_numpy(), absent)


class _DateRows(Rows):
    """Calendar parts of a band of dates: looked up per day when the dates span few days.

    The parts of a day (year, month, day, weekday), scaled, are the same for every row on
    that day: a table of them over the column's days turns a band into one division and a
    lookup per part, instead of the whole calendar arithmetic per row.
    """

    def __init__(self, encoder: Date, micros: np.ndarray, absent: np.ndarray | None) -> None:
        self.encoder, self.micros, self.absent = encoder, micros, absent
        self.first_day, self.days = 0, None
        found = _day_parts(micros, encoder.parts)
        if found is not None:
            self.first_day = found[0]
            self.days = [self._scaled(j, part) for j, part in enumerate(found[1])]

    def _scaled(self, j: int, part: np.ndarray) -> np.ndarray:
        values = part.astype(np.float64)
        values -= self.encoder.means[j]
        values /= self.encoder.stds[j]
        return values

    def write(self, out: np.ndarray, at: int, rows: Any) -> tuple[int, int]:
        e = self.encoder
        micros = _rows(self.micros, rows)
        if self.days is None:
            for j, part in enumerate(calendar(micros, e.parts)):
                out[:, at + j] = self._scaled(j, part)
        else:
            days = micros // _DAY_US
            for j, table in enumerate(self.days):
                out[:, at + j] = table.take(days - self.first_day)
            if "hour" in e.parts:
                hours = (micros - days * _DAY_US) // _HOUR_US
                out[:, at + len(self.days)] = self._scaled(len(self.days), hours)
        absent = _rows(self.absent, rows) if self.absent is not None else None
        if e.indicator and absent is not None:
            out[:, at + len(e.parts)] = absent
        return (int(np.count_nonzero(absent)) if absent is not None else 0), 0


def _iso(stamp: pa.TimestampScalar) -> str:
    """A timestamp as ISO 8601 text; past Python's years (1 to 9999) as Arrow writes it."""
    try:
        return stamp.as_py().isoformat()
    except (OverflowError, ValueError):
        return pc.strftime(stamp, format="%Y-%m-%dT%H:%M:%S").as_py()


def _calendar_moments(micros: np.ndarray, parts: list[str]) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each calendar part of ``micros``, from value counts.

    A part takes few whole values (a month 1 to 12; years from the first to the last), so
    counting them a band of rows at a time makes no column-long arrays, and the mean is
    exact: the mean numpy gives, to the bit.
    """
    ends = calendar(np.array([micros.min(), micros.max()]), ["year"])[0]
    first = int(ends[0])
    offsets = [first if part == "year" else 0 for part in parts]
    # Month, day, weekday and hour all lie in 0..31.
    counts = [np.zeros(int(ends[1]) - first + 1 if o else 32, np.int64) for o in offsets]
    found = _day_parts(micros, parts)
    if found is not None:
        # Fewer days than rows: count the rows per day, then each day's parts once.
        first_day, day_parts = found
        per_day = np.zeros(len(day_parts[0]), np.int64)
        for i in range(0, micros.size, _FIT_BAND):
            band = micros[i : i + _FIT_BAND]
            days = band // _DAY_US
            per_day += np.bincount(days - first_day, minlength=per_day.size)
            if "hour" in parts:
                counts[-1] += np.bincount((band - days * _DAY_US) // _HOUR_US, minlength=32)
        for total, values, offset in zip(counts, day_parts, offsets, strict=False):
            total += np.bincount(values - offset, per_day, total.size).astype(np.int64)
    else:
        for i in range(0, micros.size, _FIT_BAND):
            band = calendar(micros[i : i + _FIT_BAND], parts)
            for total, values, offset in zip(counts, band, offsets, strict=True):
                total += np.bincount(values - offset, minlength=total.size)
    means, stds = [], []
    for total, offset in zip(counts, offsets, strict=True):
        values = np.arange(total.size, dtype=np.float64) + offset
        mean = float(total @ values) / micros.size
        means.append(mean)
        stds.append(float(np.sqrt(float(total @ (values - mean) ** 2) / micros.size)))
    return means, stds


ENCODERS = {cls.kind: cls for cls in (Numeric, Categorical, Date)}
Encoder = Numeric | Categorical | Date


def numbers(
    column: pa.ChunkedArray, rows: np.ndarray | None = None, made: np.ndarray | None = None
) -> np.ndarray:
    """A float64 column (or those ``rows`` of it) as a fresh numpy array, nulls as NaN.

    ``made``: the column's numbers already made (shared, read only), instead of converting.
    """
    values = made if made is not None else np.asarray(column.to_numpy(), dtype=np.float64)
    return np.array(values, copy=True) if rows is None else values[rows]


def bools(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=bool)


def _category_strings(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Category values as text; numbers as their shortest form, so ``-0.0`` reads ``0``.

    NaN and inf count as missing, as they do in a numeric column.
    """
    if pa.types.is_string(column.type):
        return column
    finite = pc.if_else(pc.is_finite(column), pc.add(column, 0.0), None)
    return pc.cast(finite, pa.string())


# --- columns of a canonical table -----------------------------------------------------


@dataclass
class Column:
    """One input column: what it is, what it is for, and (unless dropped) how it encodes."""

    name: str
    dtype: str
    role: str  # feature, sensitive, target or dropped
    sensitive: bool = False
    missing_share: float = 0.0
    reason: str | None = None
    encoder: Encoder | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "encoder"}
        if self.encoder is not None:
            data["encoding"] = {"kind": self.encoder.kind, **asdict(self.encoder)}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Column:
        data = dict(data)
        encoding = data.pop("encoding", None)
        encoder = None
        if encoding is not None:
            encoding = dict(encoding)
            encoder = ENCODERS[encoding.pop("kind")](**encoding)
        return cls(**data, encoder=encoder)


def dtype_of(column: pa.ChunkedArray, name: str) -> str:
    """The canonical type a column has or can take without guessing."""
    t = column.type
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t):
        return "float64"
    if pa.types.is_decimal(t):
        return "float64"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_dictionary(t) and pa.types.is_string(t.value_type):
        return "string"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "timestamp[us]"
    raise DataError(
        f"Column {name!r} has type {t}, which mlkit cannot turn into model inputs. "
        "Pass drop=[...] naming it, or read the table with mlkit.tables.read_table."
    )


def canonical(column: pa.ChunkedArray, dtype: str, name: str) -> pa.ChunkedArray:
    """The column cast to ``dtype`` (time zones to UTC), refusing a change of kind."""
    if column.type == TYPES[dtype]:
        return column
    given = dtype_of(column, name)
    if given != dtype:
        raise DataError(
            f"Column {name!r} was {dtype} when the preprocessing was fitted, got "
            f"{column.type}. Pass the column with the type it had in training."
        )
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column.cast(TYPES[dtype])
