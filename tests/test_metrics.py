"""Tests for mlkit.metrics: agreement with sklearn, plain floats, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from mlkit import metrics
from mlkit.errors import DataError


def test_classification_matches_sklearn() -> None:
    # Rule: accuracy, macro F1 and log loss agree with sklearn on logits.
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 4)) * 3
    y = rng.integers(0, 4, size=200)
    got = metrics.classification(y, logits)
    probs = metrics.softmax(logits)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, probs.argmax(1)))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, probs.argmax(1), average="macro"))
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=range(4)))
    assert all(type(v) is float for v in got.values())


def test_classification_from_probabilities_and_absent_classes() -> None:
    # Rule: probabilities are accepted; macro F1 ignores classes absent from truth and preds.
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    got = metrics.classification(y, probs, from_logits=False)
    pred = probs.argmax(1)
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=range(3)))


def test_binary_scores_as_one_column() -> None:
    # Rule: 1-D scores are treated as the positive-class logit (or probability).
    y = np.array([0, 1, 1, 0])
    p1 = np.array([0.2, 0.9, 0.6, 0.4])
    got = metrics.classification(y, p1, from_logits=False)
    assert got["accuracy"] == 1.0
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, p1))
    logit = np.log(p1 / (1 - p1))
    assert metrics.classification(y, logit)["log_loss"] == pytest.approx(got["log_loss"])


def test_regression_matches_sklearn() -> None:
    # Rule: RMSE, MAE and R² agree with sklearn; an (n, 1) column is accepted.
    rng = np.random.default_rng(1)
    y = rng.normal(size=50)
    pred = (y + rng.normal(scale=0.3, size=50))[:, None]
    got = metrics.regression(y, pred)
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred[:, 0])))
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, pred[:, 0]))
    assert got["r2"] == pytest.approx(skm.r2_score(y, pred[:, 0]))
    assert metrics.regression([1.0, 1.0], [1.0, 1.0])["r2"] == 1.0


def test_metric_errors_are_data_errors() -> None:
    # Rule: mismatched lengths and out-of-range labels raise DataError, not IndexError.
    with pytest.raises(DataError, match="3 labels but scores has 2 rows"):
        metrics.classification([0, 1, 1], np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"labels in 0\.\.1"):
        metrics.classification([0, 2], np.zeros((2, 2)))
    with pytest.raises(DataError, match="shape"):
        metrics.regression([1.0, 2.0], [1.0])
