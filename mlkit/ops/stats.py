"""Statistics for operations: intervals, tests, corrections and drift (PSI)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_test(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Two-sided pooled two-proportion z-test: (z, p-value). (0, 1) when it is undefined."""
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (k2 / n2 - k1 / n1) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


PSI_BINS = 10


_EPS = 1e-4  # floor for empty PSI bins: log(0) would make one empty bin infinite drift


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values: reject ``adjusted < alpha`` keeps the FWER at ``alpha``."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def psi(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index over ``bins`` quantile bins of ``reference``.

    Equal quantiles collapse (a feature with few values gets fewer bins). Rules of thumb:
    below 0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a major one.
    """
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    inner = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(inner, ref, side="right"), minlength=len(inner) + 1)
    cur_share = np.bincount(np.searchsorted(inner, cur, side="right"), minlength=len(inner) + 1)
    return _psi_shares(ref_share / len(ref), cur_share / len(cur))


def _psi_shares(ref: np.ndarray, cur: np.ndarray) -> float:
    ref = np.maximum(ref, _EPS)
    cur = np.maximum(cur, _EPS)
    return float(np.sum((cur - ref) * np.log(cur / ref)))
