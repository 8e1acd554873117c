"""Where a dataset's rows come from: scikit-learn's bundled sets and seeded synthetic problems.

Nothing here downloads: every dataset ships with scikit-learn or is generated, so a notebook
runs offline and a sweep never waits on the network. A source gives unsplit, unscaled
:class:`Raw` data; :func:`mlkit.data.load` splits and scales it. The options that shape a
synthetic problem (``n_samples``, ``n_features``, ``noise``, ``bias``) are checked here, where
the sources that take them are.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlkit.errors import ParameterError, UnknownNameError

__all__ = [
    "DATASETS",
    "FAIRNESS_GROUP1_SHARE",
    "SYNTHETIC",
    "Raw",
    "check_name",
    "check_options",
    "names",
    "param_error",
    "read",
]


@dataclass
class Raw:
    """Unsplit data as a source gives it; ``X`` is float64 of shape (n, *input_shape)."""

    X: np.ndarray
    y: np.ndarray
    task: str
    feature_names: list[str]
    class_names: list[str]
    standardize: bool = True  # False for images: per-pixel z-scores would wreck blank borders
    expected: tuple[str, ...] = ()  # checks whose warning is a known property of this data
    sensitive: dict[str, np.ndarray] = field(default_factory=dict)  # raw, one value per row


def _bundled(loader_name: str) -> Callable[[], Raw]:
    def load_bundled() -> Raw:
        from sklearn import datasets as skd

        bunch = getattr(skd, loader_name)()
        task = "regression" if loader_name == "load_diabetes" else "classification"
        classes = [] if task == "regression" else [str(c) for c in bunch.target_names]
        return Raw(
            X=np.asarray(bunch.data, dtype=np.float64),
            y=np.asarray(bunch.target),
            task=task,
            feature_names=[str(f) for f in bunch.feature_names],
            class_names=classes,
        )

    return load_bundled


def _digits(image: bool) -> Callable[[], Raw]:
    def load_digits() -> Raw:
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        X = np.asarray(bunch.data, dtype=np.float64) / 16.0  # pixel counts are 0..16
        if image:
            X = X.reshape(-1, 1, 8, 8)
        return Raw(
            X=X,
            y=np.asarray(bunch.target),
            task="classification",
            feature_names=[str(f) for f in bunch.feature_names],
            class_names=[str(c) for c in bunch.target_names],
            standardize=not image,
            # Border pixels that are always blank are the nature of handwritten digits.
            expected=("constant",),
        )

    return load_digits


def _synthetic_classification(
    *, n_samples: int | None = None, n_features: int | None = None, noise: float | None = None
) -> Raw:
    from sklearn.datasets import make_classification

    n = 1000 if n_samples is None else n_samples
    d = 20 if n_features is None else n_features
    informative = max(2, d // 2)
    X, y = make_classification(
        n_samples=n,
        n_features=d,
        n_informative=informative,
        n_redundant=min(2, d - informative),
        n_classes=2,
        flip_y=0.01 if noise is None else noise,
        random_state=_SYNTHETIC_SEED,
    )
    return Raw(
        X=X.astype(np.float64),
        y=y,
        task="classification",
        feature_names=[f"x{i}" for i in range(d)],
        class_names=["class_0", "class_1"],
    )


def _synthetic_regression(
    *, n_samples: int | None = None, n_features: int | None = None, noise: float | None = None
) -> Raw:
    from sklearn.datasets import make_regression

    n = 1000 if n_samples is None else n_samples
    d = 20 if n_features is None else n_features
    X, y = make_regression(
        n_samples=n,
        n_features=d,
        n_informative=max(1, d // 2),
        noise=10.0 if noise is None else noise,
        random_state=_SYNTHETIC_SEED,
    )
    return Raw(
        X=X.astype(np.float64),
        y=y,
        task="regression",
        feature_names=[f"x{i}" for i in range(d)],
        class_names=[],
    )


# Share of rows in group 1 of synthetic_fairness: a minority, as protected groups often are.
FAIRNESS_GROUP1_SHARE = 0.3


def _synthetic_fairness(
    *,
    n_samples: int | None = None,
    n_features: int | None = None,
    noise: float | None = None,
    bias: float | None = None,
) -> Raw:
    """Binary task with a group column whose positive rate is planted ``bias`` below group 0's.

    A score ``s = w.x`` (standard normal) decides the clean label: ``s > 0`` in group 0 (rate
    0.5) and ``s > t`` in group 1 with ``t`` chosen so the rate is ``0.5 - bias``. So the
    Bayes-optimal classifier, which sees the group column, has a demographic parity difference
    of exactly ``abs(bias)``; ``noise`` then flips that fraction of labels at random, which blurs
    the labels but not the optimal decision. Only the first half of the features carry signal.
    """
    from statistics import NormalDist

    n = 2000 if n_samples is None else n_samples
    d = 8 if n_features is None else n_features
    b = 0.0 if bias is None else float(bias)
    rng = np.random.default_rng(_SYNTHETIC_SEED)
    X = rng.standard_normal((n, d))
    group = (rng.random(n) < FAIRNESS_GROUP1_SHARE).astype(np.int64)
    w = rng.standard_normal(d)
    w[max(1, d // 2) :] = 0.0
    score = X @ (w / np.linalg.norm(w))
    threshold = np.where(group == 1, NormalDist().inv_cdf(0.5 + b), 0.0)
    y = (score > threshold).astype(np.int64)
    flip = rng.random(n) < (0.05 if noise is None else noise)
    y = np.where(flip, 1 - y, y)
    return Raw(
        X=np.column_stack([X, group.astype(np.float64)]),
        y=y,
        task="classification",
        feature_names=[*(f"x{i}" for i in range(d)), "group"],
        class_names=["negative", "positive"],
        sensitive={"group": group},
    )


# The synthetic problem is fixed like a bundled dataset: `seed` moves the split (and training),
# never the data itself, so trials with different seeds are compared on the same problem.
_SYNTHETIC_SEED = 0

DATASETS: dict[str, Callable[..., Raw]] = {
    "breast_cancer": _bundled("load_breast_cancer"),
    "diabetes": _bundled("load_diabetes"),
    "digits": _digits(image=True),
    "digits_flat": _digits(image=False),
    "synthetic_classification": _synthetic_classification,
    "synthetic_fairness": _synthetic_fairness,
    "synthetic_regression": _synthetic_regression,
    "wine": _bundled("load_wine"),
}
SYNTHETIC = ("synthetic_classification", "synthetic_regression", "synthetic_fairness")
LABEL_FLIP = ("synthetic_classification", "synthetic_fairness")


def names() -> list[str]:
    """Dataset names accepted by :func:`mlkit.data.load`, sorted."""
    return sorted(DATASETS)


def check_name(name: str) -> None:
    """Refuse an unknown dataset name, suggesting the closest known one."""
    if name not in DATASETS:
        valid = names()
        match = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.0)
        raise UnknownNameError(
            f"Unknown dataset {name!r}. Valid names: {', '.join(valid)}. "
            f"Pass -p dataset {match[0] if match else valid[0]}."
        )


def param_error(param: str, rule: str, value: Any, fix: str) -> ParameterError:
    """The error for a bad parameter of :func:`mlkit.data.load`: rule, value given, fix."""
    return ParameterError(
        f"The '{param}' parameter of load must be {rule}. Got {value!r} instead. {fix}"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_options(
    name: str,
    *,
    n_samples: Any = None,
    n_features: Any = None,
    noise: Any = None,
    bias: Any = None,
) -> None:
    """Refuse options dataset ``name`` does not take, and values out of range."""
    if bias is not None and name != "synthetic_fairness":
        raise ParameterError(
            f"The 'bias' parameter of load only applies to synthetic_fairness; dataset "
            f"'{name}' has no planted bias. Leave bias unset (None)."
        )
    if bias is not None and (not _is_real(bias) or not -0.5 < bias < 0.5):
        raise param_error("bias", "a float in (-0.5, 0.5)", bias, "Pass -p bias 0.2 (0 for none).")
    synthetic_opts = {"n_samples": n_samples, "n_features": n_features, "noise": noise}
    if name not in SYNTHETIC:
        given = [k for k, v in synthetic_opts.items() if v is not None]
        if given:
            raise ParameterError(
                f"The '{given[0]}' parameter of load only applies to "
                f"{', '.join(SYNTHETIC[:-1])} and {SYNTHETIC[-1]}; dataset '{name}' has a "
                f"fixed size and content. Leave {given[0]} unset (None)."
            )
        return
    if n_samples is not None and (not _is_int(n_samples) or n_samples < 20):
        raise param_error("n_samples", "an int >= 20", n_samples, "Pass -p n_samples 1000.")
    if n_features is not None and (not _is_int(n_features) or n_features < 2):
        raise param_error("n_features", "an int >= 2", n_features, "Pass -p n_features 20.")
    if noise is not None:
        if not _is_real(noise) or noise < 0:
            raise param_error("noise", "a float >= 0", noise, "Pass -p noise 0.1.")
        if name in LABEL_FLIP and noise > 1:
            raise param_error(
                "noise",
                f"a label-flip fraction in [0, 1] for {name}",
                noise,
                "Pass -p noise 0.01.",
            )


def read(
    name: str,
    *,
    n_samples: int | None = None,
    n_features: int | None = None,
    noise: float | None = None,
    bias: float | None = None,
) -> Raw:
    """The raw data of dataset ``name``, with the options :func:`check_options` accepted."""
    if name == "synthetic_fairness":
        return DATASETS[name](n_samples=n_samples, n_features=n_features, noise=noise, bias=bias)
    if name in SYNTHETIC:
        return DATASETS[name](n_samples=n_samples, n_features=n_features, noise=noise)
    return DATASETS[name]()
