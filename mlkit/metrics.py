"""Evaluation metrics in plain numpy, returned as plain floats.

numpy only: computed once per epoch on the val split, where sklearn.metrics' input validation
costs about a millisecond per call, which is a visible share of a small model's epoch. The
definitions match sklearn's (the tests compare them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlkit.errors import DataError

__all__ = ["classification", "regression", "softmax"]


def softmax(logits: Any) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _log_probs(scores: Any, from_logits: bool) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:  # binary given as one score per sample: P(class 1) or its logit
        if from_logits:
            s = np.stack([np.zeros_like(s), s], axis=1)
        else:
            s = np.stack([1.0 - s, s], axis=1)
    if s.ndim != 2 or s.shape[1] < 2:
        raise DataError(
            f"Classification scores must have shape (n, n_classes) with n_classes >= 2, or "
            f"(n,) for binary, got shape {np.shape(scores)}. Pass the model's raw outputs."
        )
    if from_logits:
        z = s - s.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    eps = np.finfo(np.float64).eps  # same clipping as sklearn's log_loss
    return np.log(np.clip(s, eps, 1.0))


def classification(y_true: Any, scores: Any, *, from_logits: bool = True) -> dict[str, float]:
    """Accuracy, macro F1 and log loss of class scores against integer labels.

    ``scores`` are logits (default) or probabilities (``from_logits=False``), shape
    (n, n_classes). Macro F1 averages over the classes present in ``y_true`` or the
    predictions, like sklearn's ``f1_score(average="macro")``.
    """
    y = np.asarray(y_true).reshape(-1)
    log_p = _log_probs(scores, from_logits)
    n, k = log_p.shape
    if n != len(y) or n == 0:
        raise DataError(
            f"y_true has {len(y)} labels but scores has {n} rows; they must match and be "
            "non-empty. Pass scores for the same samples as y_true."
        )
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k:
        raise DataError(
            f"y_true must hold integer labels in 0..{k - 1} for {k} score columns, got dtype "
            f"{y.dtype} with values {y.min()}..{y.max()}. Encode classes as 0..n_classes-1."
        )
    pred = log_p.argmax(axis=1)
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # 2tp + fp + fn
    present = denom > 0
    f1 = (2 * tp[present] / denom[present]).mean()
    eps = np.finfo(np.float64).eps
    log_loss = -np.maximum(log_p[np.arange(n), y], np.log(eps)).mean()
    return {
        "accuracy": float(tp.sum() / n),
        "f1_macro": float(f1),
        "log_loss": float(log_loss),
    }


def regression(y_true: Any, y_pred: Any) -> dict[str, float]:
    """RMSE, MAE and R² of predictions; a (n, 1) prediction column is accepted as (n,)."""
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.shape != y.shape or y.size == 0:
        raise DataError(
            f"y_true has shape {np.shape(y_true)} but y_pred has shape {np.shape(y_pred)}; "
            "they must hold one value per sample and be non-empty."
        )
    err = y - p
    ss_res = float(err @ err)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    # A constant target follows sklearn's convention: 1 if predicted exactly, else 0.
    r2 = (1.0 if ss_res == 0 else 0.0) if ss_tot == 0 else 1.0 - ss_res / ss_tot
    return {
        "rmse": float(np.sqrt(ss_res / y.size)),
        "mae": float(np.abs(err).mean()),
        "r2": float(r2),
    }
