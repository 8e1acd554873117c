"""Datasets: sklearn's bundled sets and seeded synthetic data, split and scaled the same way.

Nothing here downloads: every dataset ships with scikit-learn or is generated, so a notebook
runs offline and a sweep never waits on the network. torch is imported only inside the helpers
that return tensors, so ``import mlkit.data`` stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mlkit.errors import DataError, ParameterError, UnknownNameError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHECKS",
    "DATASETS",
    "IMBALANCE_RATIO",
    "DataWarning",
    "Dataset",
    "Split",
    "as_tensors",
    "check",
    "load",
    "loader",
    "names",
]

# Bump when the splitting or scaling code changes, so old versions never collide with new data.
_FORMAT = "mlkit-data-1"

# Smallest train class below this fraction of the largest warns. At 1:5 a majority-class guess
# already scores >= 83% accuracy on two classes, so accuracy stops meaning much; milder ratios
# (breast_cancer is 0.59) are normal and must not warn.
IMBALANCE_RATIO = 0.2

# Names accepted by check(skip=...).
CHECKS = ("constant", "imbalance", "leakage")


class DataWarning(UserWarning):
    """The data is usable but something about it deserves a look before trusting results."""


@dataclass
class Split:
    """One partition of a dataset: float32 ``X`` of shape (n, *input_shape) and its targets.

    ``y`` is int64 class indices for classification and float32 of shape (n,) for regression.
    ``sensitive`` maps a sensitive attribute (``"group"``) to its raw values, row-aligned with
    ``y`` and never scaled, so fairness metrics can slice by it whether or not the model sees it.
    """

    X: np.ndarray
    y: np.ndarray
    sensitive: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    """A split, scaled dataset plus what a model builder and a run record need to know.

    ``version`` is a content hash of the raw data and of the split and scaling settings: two
    loads agree on it exactly when they produce the same splits, so records can name their data.
    For regression with ``scale=True`` the targets are standardised on train; recover original
    units with ``y * target_std + target_mean``. ``feature_mean`` and ``feature_std`` (per
    flattened feature, from train; None when the features were not scaled) turn raw features
    into the model's inputs: ``(x - feature_mean) / feature_std``.
    """

    name: str
    task: str
    train: Split
    val: Split
    test: Split
    input_shape: tuple[int, ...]
    n_outputs: int
    feature_names: list[str]
    class_names: list[str]
    version: str
    target_mean: float = 0.0
    target_std: float = 1.0
    settings: dict[str, Any] = field(default_factory=dict)
    feature_mean: list[float] | None = field(default=None, repr=False)
    feature_std: list[float] | None = field(default=None, repr=False)

    def spec(self) -> dict[str, Any]:
        """A small JSON-able summary for run records, W&B configs and reports."""
        out = {
            "name": self.name,
            "task": self.task,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "input_shape": list(self.input_shape),
            "n_outputs": self.n_outputs,
            "version": self.version,
        }
        if self.sensitive_columns:
            out["sensitive"] = self.sensitive_columns
        return out

    @property
    def sensitive_columns(self) -> list[str]:
        """Names of the sensitive attributes each split carries (empty for most datasets)."""
        return list(self.train.sensitive)

    def groups(self, column: str, split: str = "test") -> np.ndarray:
        """The values of sensitive attribute ``column`` for the rows of ``split``."""
        if column not in self.sensitive_columns:
            have = ", ".join(self.sensitive_columns) or "none"
            fix = (
                f"Pass -p sensitive {self.sensitive_columns[0]}."
                if self.sensitive_columns
                else "Leave sensitive empty, or use dataset synthetic_fairness."
            )
            raise UnknownNameError(
                f"Dataset '{self.name}' has no sensitive attribute {column!r} (it has: {have}). "
                f"{fix}"
            )
        if split not in ("train", "val", "test"):
            raise UnknownNameError(
                f"Unknown split {split!r}. Valid names: train, val, test. Pass split='test'."
            )
        return getattr(self, split).sensitive[column]


@dataclass
class _Raw:
    """Unsplit data as a loader returns it; ``X`` is float64 of shape (n, *input_shape)."""

    X: np.ndarray
    y: np.ndarray
    task: str
    feature_names: list[str]
    class_names: list[str]
    standardize: bool = True  # False for images: per-pixel z-scores would wreck blank borders
    expected: tuple[str, ...] = ()  # checks whose warning is a known property of this data
    sensitive: dict[str, np.ndarray] = field(default_factory=dict)  # raw, one value per row


def _bundled(loader_name: str) -> Callable[[], _Raw]:
    def load_bundled() -> _Raw:
        from sklearn import datasets as skd

        bunch = getattr(skd, loader_name)()
        task = "regression" if loader_name == "load_diabetes" else "classification"
        classes = [] if task == "regression" else [str(c) for c in bunch.target_names]
        return _Raw(
            X=np.asarray(bunch.data, dtype=np.float64),
            y=np.asarray(bunch.target),
            task=task,
            feature_names=[str(f) for f in bunch.feature_names],
            class_names=classes,
        )

    return load_bundled


def _digits(image: bool) -> Callable[[], _Raw]:
    def load_digits() -> _Raw:
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        X = np.asarray(bunch.data, dtype=np.float64) / 16.0  # pixel counts are 0..16
        if image:
            X = X.reshape(-1, 1, 8, 8)
        return _Raw(
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
) -> _Raw:
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
    return _Raw(
        X=X.astype(np.float64),
        y=y,
        task="classification",
        feature_names=[f"x{i}" for i in range(d)],
        class_names=["class_0", "class_1"],
    )


def _synthetic_regression(
    *, n_samples: int | None = None, n_features: int | None = None, noise: float | None = None
) -> _Raw:
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
    return _Raw(
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
) -> _Raw:
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
    return _Raw(
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

DATASETS: dict[str, Callable[..., _Raw]] = {
    "breast_cancer": _bundled("load_breast_cancer"),
    "diabetes": _bundled("load_diabetes"),
    "digits": _digits(image=True),
    "digits_flat": _digits(image=False),
    "synthetic_classification": _synthetic_classification,
    "synthetic_fairness": _synthetic_fairness,
    "synthetic_regression": _synthetic_regression,
    "wine": _bundled("load_wine"),
}
_SYNTHETIC = ("synthetic_classification", "synthetic_regression", "synthetic_fairness")
_LABEL_FLIP = ("synthetic_classification", "synthetic_fairness")


def names() -> list[str]:
    """Dataset names accepted by :func:`load`, sorted."""
    return sorted(DATASETS)


def _bad(param: str, rule: str, value: Any, fix: str) -> ParameterError:
    return ParameterError(
        f"The '{param}' parameter of load must be {rule}. Got {value!r} instead. {fix}"
    )


def _validate(
    val_fraction: Any,
    test_fraction: Any,
    seed: Any,
    n_samples: Any,
    n_features: Any,
    noise: Any,
    name: str,
    bias: Any = None,
) -> None:
    for param, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 < value < 0.5:
            raise _bad(param, "a float in (0, 0.5)", value, f"Pass -p {param} 0.15.")
    # Both below 0.5 also keeps their sum below 1, so train is never empty.
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise _bad("seed", "an int in [0, 2**32)", seed, "Pass -p seed 0.")
    if bias is not None and name != "synthetic_fairness":
        raise ParameterError(
            f"The 'bias' parameter of load only applies to synthetic_fairness; dataset "
            f"'{name}' has no planted bias. Leave bias unset (None)."
        )
    if bias is not None and (
        not isinstance(bias, numbers.Real) or isinstance(bias, bool) or not -0.5 < bias < 0.5
    ):
        raise _bad("bias", "a float in (-0.5, 0.5)", bias, "Pass -p bias 0.2 (0 for none).")
    synthetic_opts = {"n_samples": n_samples, "n_features": n_features, "noise": noise}
    if name not in _SYNTHETIC:
        given = [k for k, v in synthetic_opts.items() if v is not None]
        if given:
            raise ParameterError(
                f"The '{given[0]}' parameter of load only applies to "
                f"{', '.join(_SYNTHETIC[:-1])} and {_SYNTHETIC[-1]}; dataset '{name}' has a "
                f"fixed size and content. Leave {given[0]} unset (None)."
            )
        return
    if n_samples is not None and (
        not isinstance(n_samples, numbers.Integral) or isinstance(n_samples, bool) or n_samples < 20
    ):
        raise _bad("n_samples", "an int >= 20", n_samples, "Pass -p n_samples 1000.")
    if n_features is not None and (
        not isinstance(n_features, numbers.Integral)
        or isinstance(n_features, bool)
        or n_features < 2
    ):
        raise _bad("n_features", "an int >= 2", n_features, "Pass -p n_features 20.")
    if noise is not None:
        if not isinstance(noise, numbers.Real) or isinstance(noise, bool) or noise < 0:
            raise _bad("noise", "a float >= 0", noise, "Pass -p noise 0.1.")
        if name in _LABEL_FLIP and noise > 1:
            raise _bad(
                "noise",
                f"a label-flip fraction in [0, 1] for {name}",
                noise,
                "Pass -p noise 0.01.",
            )


def _version(raw: _Raw, name: str, settings: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(_FORMAT.encode())
    h.update(json.dumps({"name": name, **settings}, sort_keys=True).encode())
    h.update(repr(raw.X.shape).encode())
    h.update(np.ascontiguousarray(raw.X, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(raw.y, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _split_indices(
    y: np.ndarray, task: str, seed: int, val_fraction: float, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    classify = task == "classification"
    try:
        rest, test = train_test_split(
            idx, test_size=test_fraction, random_state=seed, stratify=y if classify else None
        )
        train, val = train_test_split(
            rest,
            test_size=val_fraction / (1 - test_fraction),
            random_state=seed,
            stratify=y[rest] if classify else None,
        )
    except ValueError as err:  # e.g. a class too rare to appear in every split
        raise DataError(
            f"Cannot split {len(y)} samples into train/val/test with val_fraction="
            f"{val_fraction} and test_fraction={test_fraction}: {err} "
            "Use more samples (n_samples) or smaller fractions."
        ) from None
    return train, val, test


def load(
    name: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    scale: bool = True,
    check: bool = True,
    n_samples: int | None = None,
    n_features: int | None = None,
    noise: float | None = None,
    bias: float | None = None,
) -> Dataset:
    """Load a dataset by name, split it deterministically from ``seed`` and scale it.

    Classification splits are stratified so every split keeps the class balance. Scaling is
    fitted on train only, so val and test see exactly what unseen data would. ``digits`` (images,
    1x8x8) is divided by 16 instead of standardised; ``n_samples``, ``n_features`` and ``noise``
    apply to the synthetic datasets only (``noise`` is the label-flip fraction for
    ``synthetic_classification`` and ``synthetic_fairness`` and the target noise std for
    ``synthetic_regression``). ``bias`` applies to ``synthetic_fairness`` only: group 1's
    positive rate is ``0.5 - bias`` against group 0's 0.5; its group column is both a feature
    and ``split.sensitive["group"]``.

    With ``check=True`` the sanity checks of :func:`check` run: errors raise, warnings are issued
    as :class:`DataWarning`, except those that are a documented property of the dataset (blank
    border pixels in digits), which would otherwise fire on every load and teach users to ignore
    the warning.
    """
    if name not in DATASETS:
        raise UnknownNameError(
            f"Unknown dataset {name!r}. Valid names: {', '.join(names())}. "
            f"Pass -p dataset {_closest(name, names())}."
        )
    _validate(val_fraction, test_fraction, seed, n_samples, n_features, noise, name, bias)
    if name == "synthetic_fairness":
        raw = DATASETS[name](n_samples=n_samples, n_features=n_features, noise=noise, bias=bias)
    elif name in _SYNTHETIC:
        raw = DATASETS[name](n_samples=n_samples, n_features=n_features, noise=noise)
    else:
        raw = DATASETS[name]()
    settings = {
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "test_fraction": float(test_fraction),
        "scale": bool(scale),
        "n_samples": n_samples,
        "n_features": n_features,
        "noise": noise,
    }
    if name == "synthetic_fairness":  # only here, so other datasets keep their version hash
        settings["bias"] = bias
    tr, va, te = _split_indices(raw.y, raw.task, seed, val_fraction, test_fraction)
    X = raw.X
    feature_mean = feature_std = None
    if scale and raw.standardize:
        flat = X.reshape(len(X), -1)
        mean = flat[tr].mean(axis=0)
        std = flat[tr].std(axis=0)
        std[std == 0] = 1.0  # constant columns stay constant (0) instead of dividing by zero
        X = ((flat - mean) / std).reshape(X.shape)
        feature_mean, feature_std = mean.tolist(), std.tolist()
    X = X.astype(np.float32)
    target_mean, target_std = 0.0, 1.0
    if raw.task == "classification":
        y = raw.y.astype(np.int64)
        n_outputs = len(raw.class_names)
    else:
        y = raw.y.astype(np.float64)
        if scale:
            # Standardised targets keep the MSE near 1 so default learning rates just work.
            target_mean, target_std = float(y[tr].mean()), float(y[tr].std()) or 1.0
            y = (y - target_mean) / target_std
        y = y.astype(np.float32)
        n_outputs = 1
    ds = Dataset(
        name=name,
        task=raw.task,
        train=Split(X[tr], y[tr], {k: v[tr] for k, v in raw.sensitive.items()}),
        val=Split(X[va], y[va], {k: v[va] for k, v in raw.sensitive.items()}),
        test=Split(X[te], y[te], {k: v[te] for k, v in raw.sensitive.items()}),
        input_shape=tuple(int(s) for s in raw.X.shape[1:]),
        n_outputs=n_outputs,
        feature_names=raw.feature_names,
        class_names=raw.class_names,
        version=_version(raw, name, settings),
        target_mean=target_mean,
        target_std=target_std,
        settings=settings,
        feature_mean=feature_mean,
        feature_std=feature_std,
    )
    if check:
        _run_checks(ds, skip=raw.expected, stacklevel=3)
    return ds


def _closest(name: str, valid: list[str]) -> str:
    import difflib

    match = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.0)
    return match[0] if match else valid[0]


def check(dataset: Dataset, *, skip: Collection[str] = ()) -> list[str]:
    """Sanity-check a dataset before spending compute on it; return the warning messages.

    Raises DataError for data that would make training meaningless: NaN or inf values, shapes
    that disagree, class labels outside ``0..n_outputs-1``. Warns (``DataWarning``) about
    constant feature columns in train, severe class imbalance in train (smallest class below
    ``IMBALANCE_RATIO`` of the largest), and rows of val or test that also appear in train
    (leakage inflates scores). ``skip`` names warnings to leave out, from ``CHECKS``.
    """
    return _run_checks(dataset, skip=skip, stacklevel=3)


def _run_checks(dataset: Dataset, *, skip: Collection[str], stacklevel: int) -> list[str]:
    unknown = set(skip) - set(CHECKS)
    if unknown:
        raise UnknownNameError(
            f"Unknown check {sorted(unknown)[0]!r} in skip. Valid names: {', '.join(CHECKS)}."
        )
    splits = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
    for split_name, split in splits.items():
        _check_split(dataset, split_name, split)

    messages: list[str] = []
    train_flat = dataset.train.X.reshape(len(dataset.train), -1)
    if "constant" not in skip and len(dataset.train) > 1:
        constant = np.flatnonzero((train_flat == train_flat[0]).all(axis=0))
        if constant.size:
            cols = [_feature_name(dataset, int(i)) for i in constant[:5]]
            more = f" and {constant.size - 5} more" if constant.size > 5 else ""
            messages.append(
                f"Dataset '{dataset.name}': {constant.size} feature column(s) are constant in "
                f"train ({', '.join(cols)}{more}); they carry no signal. Drop them if unexpected."
            )
    if "imbalance" not in skip and dataset.task == "classification":
        counts = np.bincount(dataset.train.y, minlength=dataset.n_outputs)
        if counts.max() > 0 and counts.min() < IMBALANCE_RATIO * counts.max():
            small, large = int(counts.argmin()), int(counts.argmax())
            messages.append(
                f"Dataset '{dataset.name}': severe class imbalance in train: class "
                f"{_class_name(dataset, small)} has {counts[small]} samples, class "
                f"{_class_name(dataset, large)} has {counts[large]} (ratio "
                f"{counts[small] / counts[large]:.2f} < {IMBALANCE_RATIO}). Accuracy will "
                "flatter a majority-class guess; monitor val/f1_macro instead."
            )
    if "leakage" not in skip:
        train_rows = {row.tobytes() for row in train_flat}
        for split_name in ("val", "test"):
            split = splits[split_name]
            flat = split.X.reshape(len(split), -1)
            shared = sum(row.tobytes() in train_rows for row in flat)
            if shared:
                messages.append(
                    f"Dataset '{dataset.name}': {shared} row(s) of {split_name} also appear in "
                    f"train (leakage); {split_name} scores will be optimistic. Deduplicate the "
                    "data before splitting."
                )
    for message in messages:
        warnings.warn(message, DataWarning, stacklevel=stacklevel)
    return messages


def _check_split(dataset: Dataset, split_name: str, split: Split) -> None:
    where = f"Dataset '{dataset.name}' {split_name}"
    if len(split.X) != len(split.y):
        raise DataError(f"{where}: X has {len(split.X)} rows but y has {len(split.y)}.")
    for column, values in split.sensitive.items():
        if len(values) != len(split.y):
            raise DataError(
                f"{where}: sensitive attribute {column!r} has {len(values)} values but y has "
                f"{len(split.y)}. Split it with the same indices as X and y."
            )
    if tuple(split.X.shape[1:]) != tuple(dataset.input_shape):
        raise DataError(
            f"{where}: samples have shape {tuple(split.X.shape[1:])}, but input_shape is "
            f"{tuple(dataset.input_shape)}. Rebuild the Dataset with matching input_shape."
        )
    for arr_name, arr in (("X", split.X), ("y", split.y)):
        if np.issubdtype(arr.dtype, np.floating):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            if bad:
                raise DataError(
                    f"{where}: {arr_name} has {bad} NaN or inf value(s). Impute or drop them "
                    "before training."
                )
    if dataset.task == "classification":
        y = split.y
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"{where}: classification labels must be integers, got dtype {y.dtype}. "
                "Encode classes as 0..n_classes-1."
            )
        if len(y) and (y.min() < 0 or y.max() >= dataset.n_outputs):
            raise DataError(
                f"{where}: labels must be in 0..{dataset.n_outputs - 1} (n_outputs="
                f"{dataset.n_outputs}), got values from {int(y.min())} to {int(y.max())}. "
                "Re-encode the labels or fix n_outputs."
            )


def _feature_name(dataset: Dataset, i: int) -> str:
    return dataset.feature_names[i] if i < len(dataset.feature_names) else f"column {i}"


def _class_name(dataset: Dataset, i: int) -> str:
    return repr(dataset.class_names[i]) if i < len(dataset.class_names) else str(i)


def as_tensors(split: Split, *, device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(X, y)`` as torch tensors, sharing memory with the split when on CPU."""
    import torch

    X, y = torch.from_numpy(split.X), torch.from_numpy(split.y)
    if device is not None:
        X, y = X.to(device), y.to(device)
    return X, y


def loader(
    split: Split, batch_size: int = 64, *, shuffle: bool = False, seed: int = 0
) -> torch.utils.data.DataLoader:
    """A torch DataLoader over a split; shuffling follows ``seed`` and nothing else."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    if (
        not isinstance(batch_size, numbers.Integral)
        or isinstance(batch_size, bool)
        or batch_size < 1
    ):
        raise ParameterError(
            f"The 'batch_size' parameter of loader must be an int >= 1. Got {batch_size!r} "
            "instead. Pass batch_size=64."
        )
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        TensorDataset(*as_tensors(split)),
        batch_size=int(batch_size),
        shuffle=shuffle,
        generator=generator,
    )
