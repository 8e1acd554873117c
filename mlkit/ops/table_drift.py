"""Drift of a table model's traffic, column by column, in the table's own columns and units.

A model trained on a user's table answers records (``{"records": [...]}``); its registered
version keeps a bounded sample of its training rows (``reference.parquet``). The monitor
compares the two per input column: numbers and dates with the two-sample Kolmogorov-Smirnov
test, categories with a chi-squared test of their counts (a missing value counts as its own
category), and for every column that has missing values on either side, the missing rate
with a chi-squared test of its own row (``<column> (missing)``). All p-values are corrected
together with Holm's method, as :func:`mlkit.ops.monitor.feature_drift` does, so the rows
read the same in the monitor's table and plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mlkit.errors import ParameterError
from mlkit.ops.log_examples import newest_examples
from mlkit.ops.stats import holm, labels_test, psi

__all__ = ["MISSING", "RecordsWindow", "records_from_log", "table_drift"]

MISSING = "<missing>"


class RecordsWindow:
    """The latest records a table model answered: the records, predictions, versions."""

    def __init__(self, records: list[dict[str, Any]], predictions: list[Any], versions: list[int]):
        self.records = records
        self.predictions = predictions
        self.versions = versions

    def __len__(self) -> int:
        return len(self.records)


def records_from_log(log: Any, name: str, *, last: int = 1000) -> RecordsWindow:
    """The newest ``last`` answered records of model ``name`` in ``log`` (a PredictionLog).

    Only verified rows are read (the log's hash chain); a row whose body holds no records
    (arrays sent as ``input``) is not part of a table's window.
    """

    def records_of(body: dict[str, Any]) -> list[Any]:
        return [body["record"]] if body.get("record") is not None else body.get("records") or []

    rows = log.rows(model=name, status=200, role="primary")
    records, predictions, versions = newest_examples(rows, last, records_of)
    return RecordsWindow(records, predictions, versions)


def _values(rows: Sequence[dict[str, Any]], column: str, kind: str) -> np.ndarray:
    """One column of records as numbers (NaN when missing), or as labels for categories."""
    raw = [row.get(column) for row in rows]
    if kind == "categorical":
        return np.array([MISSING if v is None else str(v) for v in raw], dtype=object)
    if kind == "date":
        import pandas as pd  # dates as records hold them: ISO text, any zone, or datetimes

        stamps = pd.to_datetime(pd.Series(raw, dtype=object), utc=True, errors="coerce")
        days = (stamps - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds() / 86400
        return days.to_numpy(dtype=float, na_value=np.nan)
    return np.array([np.nan if v is None else float(v) for v in raw], dtype=float)


def _numbers_test(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float, float] | None:
    """(KS statistic, p-value, PSI) of the present values, or None with too few of them."""
    from scipy.stats import ks_2samp

    a, b = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    if len(a) < 2 or len(b) < 2:
        return None
    if np.ptp(a) == 0 and np.ptp(b) == 0 and a[0] == b[0]:
        return 0.0, 1.0, 0.0
    res = ks_2samp(a, b, method="asymp")
    return float(res.statistic), float(res.pvalue), psi(a, b)


def table_drift(
    reference: Sequence[dict[str, Any]],
    current: Sequence[dict[str, Any]],
    *,
    columns: dict[str, str],
    alpha: float,
) -> list[dict[str, Any]]:
    """One row per column (and per missing rate that changed), Holm-corrected at ``alpha``.

    Args:
        reference: training rows, as records.
        current: the window's records.
        columns: input column -> kind (``numeric``, ``categorical`` or ``date``).
        alpha: the family-wise error rate of the whole table.

    Returns:
        Rows with ``feature``, ``test``, ``statistic``, ``p_value``, ``p_adjusted``, ``psi``,
        ``reference_mean``/``current_mean`` (numbers and dates; missing rates for those rows)
        and ``drifted``.
    """
    if len(reference) < 2 or len(current) < 2:
        raise ParameterError(
            f"Drift needs at least 2 rows on each side, got {len(reference)} reference and "
            f"{len(current)} current. Send more traffic or pass a larger --window."
        )
    rows: list[dict[str, Any]] = []
    for column, kind in columns.items():
        ref, cur = _values(reference, column, kind), _values(current, column, kind)
        if kind == "categorical":
            stat, p, index = labels_test(ref, cur)
            rows.append(_row(column, "chi2", stat, p, index))
            continue
        tested = _numbers_test(ref, cur)
        if tested is not None:
            stat, p, index = tested
            means = float(np.nanmean(ref)), float(np.nanmean(cur))
            rows.append(_row(column, "ks", stat, p, index, *means))
        ref_missing, cur_missing = np.isnan(ref), np.isnan(cur)
        if ref_missing.any() or cur_missing.any():
            stat, p, index = labels_test(ref_missing, cur_missing)
            means = float(ref_missing.mean()), float(cur_missing.mean())
            rows.append(_row(f"{column} (missing)", "chi2", stat, p, index, *means))
    for row, p_adj in zip(rows, holm([r["p_value"] for r in rows]), strict=True):
        row["p_adjusted"] = float(p_adj)
        row["drifted"] = bool(p_adj < alpha)
    return rows


def _row(
    feature: str,
    test: str,
    stat: float,
    p: float,
    index: float,
    reference_mean: float | None = None,
    current_mean: float | None = None,
) -> dict[str, Any]:
    return {
        "feature": feature,
        "test": test,
        "statistic": stat,
        "p_value": p,
        "psi": index,
        "reference_mean": reference_mean,
        "current_mean": current_mean,
    }
