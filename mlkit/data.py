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
from typing import TYPE_CHECKING, Any

import numpy as np

from mlkit import data_sources, table_sources
from mlkit.data_sources import DATASETS, FAIRNESS_GROUP1_SHARE, Raw, names
from mlkit.dataset import Dataset, DataWarning, Split, check_split_settings, split_indices
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
    "findings_text",
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

# What load() passes on to mlkit.table_data.load_table for a table of the user's own.
TABLE_OPTIONS = (*table_sources.TABLE_OPTIONS, "name")

# Names accepted by check(skip=...).
CHECKS = ("constant", "imbalance", "leakage")


def _version(raw: Raw, name: str, settings: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(_FORMAT.encode())
    h.update(json.dumps({"name": name, **settings}, sort_keys=True).encode())
    h.update(repr(raw.X.shape).encode())
    h.update(np.ascontiguousarray(raw.X, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(raw.y, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


# Long on purpose: the one entry point for every dataset, its options documented in place.
def load(
    name: Any,
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
    **table_options: Any,
) -> Dataset:
    """Load a dataset by name, or a table of your own, split it from ``seed`` and scale it.

    ``name`` may be a bundled or synthetic dataset's name, or a table: a ``.csv`` or
    ``.parquet`` file, a folder of Parquet files, a SQLAlchemy URL (with ``table=`` or
    ``query=``) or a DataFrame. A table needs ``target=COLUMN`` and takes the options of
    :func:`mlkit.table_data.load_table` (``features``, ``drop``, ``categorical``,
    ``sensitive``, ``time_column``, ``task``); empty values count as not given, so a
    template can pass them all for every dataset.

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
    split = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction}
    if table_sources.is_table_source(name):
        # Here, not at the top: pyarrow and pandas are for tables, not for every import.
        from mlkit import table_data

        given = {k: v for k, v in table_options.items() if v not in (None, "", [], ())}
        return table_data.load_table(name, **split, scale=scale, check=check, **given)
    _refuse_table_options(name, table_options)
    data_sources.check_name(name)
    check_split_settings(val_fraction, test_fraction, seed)
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
    tr, va, te = split_indices(raw.y, raw.task, seed, val_fraction, test_fraction)
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


def findings_text(dataset: Dataset) -> str:
    """What the checks of a table of your own found, as lines to read (empty for others)."""
    if not dataset.findings:
        return ""
    from mlkit import table_checks  # pandas and pyarrow: only for a table's findings

    return table_checks.format_findings([table_checks.Finding(**f) for f in dataset.findings])


def _refuse_table_options(name: str, options: dict[str, Any]) -> None:
    """The options of a table, given with a bundled dataset's name: a clear error."""
    unknown = set(options) - set(TABLE_OPTIONS)
    if unknown:
        raise TypeError(f"load() got unexpected keyword arguments {sorted(unknown)}")
    given = sorted(k for k, v in options.items() if v not in (None, "", [], ()))
    if given:
        raise ParameterError(
            f"{', '.join(given)} apply to your own tables, and {name!r} is a bundled "
            "dataset. Pass a .csv or .parquet path, a folder of Parquet files or a database "
            "URL as the dataset, or leave them empty."
        )


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
