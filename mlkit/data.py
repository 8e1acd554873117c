"""Datasets: sklearn's bundled sets and seeded synthetic data, split and scaled the same way.

Nothing here downloads: every dataset ships with scikit-learn or is generated
(:mod:`mlkit.data_sources`), so a notebook runs offline and a sweep never waits on the network.
This module splits and scales what a source gives, and checks the result. torch is imported
only inside the helpers that return tensors, so ``import mlkit.data`` stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mlkit import data_sources
from mlkit.data_sources import DATASETS, FAIRNESS_GROUP1_SHARE, Raw, names, param_error
from mlkit.errors import DataError, ParameterError, UnknownNameError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHECKS",
    "DATASETS",
    "FAIRNESS_GROUP1_SHARE",
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


def _check_split_settings(val_fraction: Any, test_fraction: Any, seed: Any) -> None:
    for param, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 < value < 0.5:
            raise param_error(param, "a float in (0, 0.5)", value, f"Pass -p {param} 0.15.")
    # Both below 0.5 also keeps their sum below 1, so train is never empty.
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise param_error("seed", "an int in [0, 2**32)", seed, "Pass -p seed 0.")


def _version(raw: Raw, name: str, settings: dict[str, Any]) -> str:
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
    data_sources.check_name(name)
    _check_split_settings(val_fraction, test_fraction, seed)
    options = {"n_samples": n_samples, "n_features": n_features, "noise": noise}
    data_sources.check_options(name, bias=bias, **options)
    raw = data_sources.read(name, bias=bias, **options)
    settings = {
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "test_fraction": float(test_fraction),
        "scale": bool(scale),
        **options,
    }
    if name == "synthetic_fairness":  # only here, so other datasets keep their version hash
        settings["bias"] = bias
    tr, va, te = _split_indices(raw.y, raw.task, seed, val_fraction, test_fraction)
    X, feature_mean, feature_std = _scaled_features(raw, tr, scale)
    y, target_mean, target_std = _targets(raw, tr, scale)

    def split(rows: np.ndarray) -> Split:
        return Split(X[rows], y[rows], {k: v[rows] for k, v in raw.sensitive.items()})

    ds = Dataset(
        name=name,
        task=raw.task,
        train=split(tr),
        val=split(va),
        test=split(te),
        input_shape=tuple(int(s) for s in raw.X.shape[1:]),
        n_outputs=len(raw.class_names) if raw.task == "classification" else 1,
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


def _scaled_features(
    raw: Raw, train: np.ndarray, scale: bool
) -> tuple[np.ndarray, list[float] | None, list[float] | None]:
    """float32 features, standardised with the train rows' mean and std when asked for."""
    X = raw.X
    feature_mean = feature_std = None
    if scale and raw.standardize:
        flat = X.reshape(len(X), -1)
        mean = flat[train].mean(axis=0)
        std = flat[train].std(axis=0)
        std[std == 0] = 1.0  # constant columns stay constant (0) instead of dividing by zero
        X = ((flat - mean) / std).reshape(X.shape)
        feature_mean, feature_std = mean.tolist(), std.tolist()
    return X.astype(np.float32), feature_mean, feature_std


def _targets(raw: Raw, train: np.ndarray, scale: bool) -> tuple[np.ndarray, float, float]:
    """int64 class indices, or float32 values standardised on train: (y, mean, std)."""
    if raw.task == "classification":
        return raw.y.astype(np.int64), 0.0, 1.0
    y = raw.y.astype(np.float64)
    target_mean, target_std = 0.0, 1.0
    if scale:
        # Standardised targets keep the MSE near 1 so default learning rates just work.
        target_mean, target_std = float(y[train].mean()), float(y[train].std()) or 1.0
        y = (y - target_mean) / target_std
    return y.astype(np.float32), target_mean, target_std


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
