"""Statistics for operations: intervals, tests, corrections and drift (PSI).

The interval, the test and the correction are statsmodels' own; PSI is computed here, since
no library has it in this form (quantile bins of the reference, a floor for empty bins).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    # statsmodels takes 1 s to import: only when an interval is computed
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(successes, n, alpha=alpha, method="wilson")
    return max(0.0, float(low)), min(1.0, float(high))


def two_proportion_test(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Two-sided pooled two-proportion z-test of ``k2/n2`` against ``k1/n1``: (z, p-value).

    (0, 1) when it is undefined: an empty group, or every outcome the same (no variance).
    """
    if n1 <= 0 or n2 <= 0 or k1 + k2 in (0, n1 + n2):
        return 0.0, 1.0
    # statsmodels takes 1 s to import: only when a test is computed
    from statsmodels.stats.proportion import proportions_ztest

    z, p = proportions_ztest([k2, k1], [n2, n1], alternative="two-sided", prop_var=False)
    return float(z), float(p)


PSI_BINS = 10


_EPS = 1e-4  # floor for empty PSI bins: log(0) would make one empty bin infinite drift


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values: reject ``adjusted < alpha`` keeps the FWER at ``alpha``."""
    p = np.asarray(pvalues, dtype=float)
    if not len(p):
        return p
    # statsmodels takes 1 s to import: only when a correction is computed
    from statsmodels.stats.multitest import multipletests

    return np.asarray(multipletests(p, method="holm")[1], dtype=float)


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


def labels_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float, float]:
    """(chi-squared statistic, p-value, PSI over the categories) of two samples of labels.

    Used for categorical features, predicted classes and missing-value flags alike.
    """
    from scipy.stats import chi2_contingency

    cats, codes = np.unique(np.concatenate([reference, current]), return_inverse=True)
    ref_counts = np.bincount(codes[: len(reference)], minlength=len(cats))
    cur_counts = np.bincount(codes[len(reference) :], minlength=len(cats))
    index = _psi_shares(ref_counts / len(reference), cur_counts / len(current))
    if len(cats) < 2:
        return 0.0, 1.0, index
    table = np.vstack([ref_counts, cur_counts])
    stat, p, _, _ = chi2_contingency(table, correction=False)
    return float(stat), float(p), index
