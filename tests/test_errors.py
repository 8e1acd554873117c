"""Errors by meaning: one family per kind of failure, one exit code per family."""

from __future__ import annotations

import pytest

from mlkit import errors
from mlkit.ops import monitor
from mlkit.registry import promotion
from mlkit.sweep import config


# Bad parameters from any product area are ParameterErrors, so one except clause sees them.
def test_bad_parameters_raise_parameter_error_everywhere() -> None:
    with pytest.raises(errors.ParameterError, match="direction must be min or max"):
        config.parse_objective("val/loss:sideways")
    with pytest.raises(errors.ParameterError, match="METRIC=NUMBER"):
        promotion.parse_bound("accuracy about 0.9")
    with pytest.raises(errors.ParameterError):
        monitor.feature_drift([[0.0]], [[0.0]], alpha=2.0)


# Each family maps to one exit code; a non-mlkit error is a plain failure.
@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.ParameterError("x"), 2),
        (errors.RunNotFoundError("x"), 2),
        (errors.StateError("x"), 2),
        (errors.CheckFailedError("x"), 1),
        (errors.PromotionBlockedError("x", ["v"]), 1),
        (errors.UnsafeModelError("x"), 3),
        (errors.ServiceUnavailableError("x"), 4),
        (RuntimeError("x"), 1),
    ],
)
def test_exit_code_follows_the_family(error: BaseException, code: int) -> None:
    assert errors.exit_code(error) == code


# Each error is also the builtin it means, for code that knows nothing of mlkit.
def test_errors_inherit_the_builtin_they_mean() -> None:
    assert issubclass(errors.ParameterError, ValueError)
    assert issubclass(errors.NotFoundError, FileNotFoundError)
    assert issubclass(errors.UnknownNameError, KeyError)
    assert issubclass(errors.ServiceUnavailableError, ConnectionError)
    assert issubclass(errors.CheckFailedError, RuntimeError)
    # Names of earlier releases still catch what they caught.
    assert issubclass(errors.ParameterError, errors.SweepError)
    assert issubclass(errors.ParameterError, errors.RegistryError)
