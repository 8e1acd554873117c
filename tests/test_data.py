"""Tests for mlkit.data: splits, versions, scaling, sanity checks, lazy torch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings

import numpy as np
import pytest

from mlkit import data
from mlkit.errors import DataError, ParameterError, UnknownNameError


def _quiet_load(name: str, **kwargs) -> data.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error", data.DataWarning)
        return data.load(name, **kwargs)


def _rows(split: data.Split) -> set[bytes]:
    return {r.tobytes() for r in split.X.reshape(len(split), -1)}


@pytest.mark.parametrize("name", data.names())
def test_every_dataset_loads_quietly_with_declared_types(name: str) -> None:
    # Rule: every registered dataset loads offline without spurious warnings and with the
    # documented dtypes and shapes.
    ds = _quiet_load(name)
    for split in (ds.train, ds.val, ds.test):
        assert split.X.dtype == np.float32
        assert split.X.shape[1:] == ds.input_shape
        if ds.task == "classification":
            assert split.y.dtype == np.int64
        else:
            assert split.y.dtype == np.float32 and split.y.ndim == 1
    assert len(ds.train) + len(ds.val) + len(ds.test) > 0
    assert ds.n_outputs == (len(ds.class_names) if ds.task == "classification" else 1)
    spec = ds.spec()
    assert spec["version"] == ds.version and len(ds.version) == 16
    assert spec["sizes"] == {"train": len(ds.train), "val": len(ds.val), "test": len(ds.test)}


def test_digits_is_an_image_dataset_scaled_by_16() -> None:
    # Rule: digits samples are 1x8x8 pixel values in [0, 1], not standardised.
    ds = data.load("digits")
    assert ds.input_shape == (1, 8, 8)
    assert ds.train.X.min() == 0.0 and ds.train.X.max() == 1.0
    assert data.load("digits_flat").input_shape == (64,)


def test_split_and_version_are_deterministic_and_seed_dependent() -> None:
    # Rule: the same seed gives the same splits and version; another seed gives others.
    a, b = data.load("wine", seed=3), data.load("wine", seed=3)
    c = data.load("wine", seed=4)
    assert a.version == b.version
    np.testing.assert_array_equal(a.train.X, b.train.X)
    np.testing.assert_array_equal(a.test.y, b.test.y)
    assert c.version != a.version
    assert _rows(c.test) != _rows(a.test)
    assert data.load("wine", seed=3, scale=False).version != a.version


def test_splits_are_disjoint_stratified_and_sized() -> None:
    # Rule: train/val/test partition the data, follow the fractions, and keep class balance.
    ds = data.load("digits_flat", val_fraction=0.2, test_fraction=0.1)
    n = len(ds.train) + len(ds.val) + len(ds.test)
    assert n == 1797
    assert abs(len(ds.val) - 0.2 * n) <= 1 and abs(len(ds.test) - 0.1 * n) <= 1
    assert not (_rows(ds.train) & _rows(ds.test)) and not (_rows(ds.val) & _rows(ds.test))
    train_share = np.bincount(ds.train.y) / len(ds.train)
    test_share = np.bincount(ds.test.y) / len(ds.test)
    assert np.abs(train_share - test_share).max() < 0.02


def test_scaling_is_fitted_on_train_only() -> None:
    # Rule: standard scaling uses train statistics, so only train is exactly centred.
    ds = data.load("breast_cancer")
    np.testing.assert_allclose(ds.train.X.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.train.X.std(axis=0), 1, atol=1e-4)
    assert np.abs(ds.test.X.mean(axis=0)).max() > 0.05
    raw = data.load("breast_cancer", scale=False)
    assert raw.train.X.mean() > 10


def test_regression_targets_are_standardised_on_train_and_invertible() -> None:
    # Rule: scaled regression targets record mean/std so predictions map back to units.
    ds = data.load("diabetes")
    raw = data.load("diabetes", scale=False)
    assert abs(float(ds.train.y.mean())) < 1e-5
    np.testing.assert_allclose(ds.test.y * ds.target_std + ds.target_mean, raw.test.y, rtol=1e-5)


def test_synthetic_options_change_size_and_version() -> None:
    # Rule: n_samples/n_features shape synthetic data; the data is fixed across seeds.
    ds = data.load("synthetic_classification", n_samples=200, n_features=6, noise=0.0)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 200 and ds.input_shape == (6,)
    assert ds.version != data.load("synthetic_classification").version
    s0 = data.load("synthetic_regression", seed=0, scale=False)
    s1 = data.load("synthetic_regression", seed=1, scale=False)
    all0 = _rows(s0.train) | _rows(s0.val) | _rows(s0.test)
    all1 = _rows(s1.train) | _rows(s1.val) | _rows(s1.test)
    assert all0 == all1


def test_unknown_dataset_lists_valid_names() -> None:
    # Rule: an unknown name raises UnknownNameError naming every valid dataset and a fix.
    with pytest.raises(UnknownNameError) as info:
        data.load("digts")
    message = str(info.value)
    assert all(name in message for name in data.names())
    assert "Pass -p dataset digits" in message
    assert isinstance(info.value, KeyError)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"val_fraction": 0.5}, "val_fraction"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"val_fraction": "0.1"}, "val_fraction"),
        ({"seed": -1}, "seed"),
        ({"n_samples": 5}, "n_samples"),
    ],
)
def test_bad_parameters_name_the_parameter(kwargs: dict, param: str) -> None:
    # Rule: invalid load parameters raise ParameterError naming the parameter and the value.
    name = "synthetic_classification" if "n_samples" in kwargs else "wine"
    with pytest.raises(ParameterError, match=f"'{param}'") as info:
        data.load(name, **kwargs)
    assert repr(next(iter(kwargs.values()))) in str(info.value)


def test_synthetic_options_rejected_for_bundled_datasets() -> None:
    # Rule: n_samples on a fixed dataset is an error, not silently ignored.
    with pytest.raises(ParameterError, match=r"'n_samples'.*synthetic"):
        data.load("wine", n_samples=100)


def _bad(ds: data.Dataset, **changes) -> data.Dataset:
    return dataclasses.replace(ds, **changes)


def test_check_rejects_nan_and_inf() -> None:
    # Rule: NaN or inf anywhere in X or y raises DataError naming the split.
    ds = data.load("wine")
    X = ds.val.X.copy()
    X[0, 0] = np.nan
    with pytest.raises(DataError, match=r"val: X has 1 NaN"):
        data.check(_bad(ds, val=data.Split(X, ds.val.y)))
    reg = data.load("diabetes")
    y = reg.train.y.copy()
    y[3] = np.inf
    with pytest.raises(DataError, match=r"train: y has 1 NaN or inf"):
        data.check(_bad(reg, train=data.Split(reg.train.X, y)))


def test_check_rejects_labels_out_of_range() -> None:
    # Rule: classification labels outside 0..n_outputs-1 raise DataError.
    ds = data.load("wine")
    y = ds.test.y.copy()
    y[0] = 3
    with pytest.raises(DataError, match=r"labels must be in 0\.\.2"):
        data.check(_bad(ds, test=data.Split(ds.test.X, y)))


def test_check_warns_on_constant_columns() -> None:
    # Rule: a constant train column warns with its name; load keeps digits' blank pixels quiet.
    ds = data.load("wine")
    X = ds.train.X.copy()
    X[:, 2] = 1.0
    with pytest.warns(data.DataWarning, match=r"1 feature column.*constant.*ash"):
        messages = data.check(_bad(ds, train=data.Split(X, ds.train.y)))
    assert len(messages) == 1
    with pytest.warns(data.DataWarning, match=r"constant"):
        data.check(data.load("digits_flat"))


def test_check_warns_on_severe_imbalance() -> None:
    # Rule: a train class under IMBALANCE_RATIO of the largest warns.
    ds = data.load("breast_cancer")
    keep = np.flatnonzero(ds.train.y == 1)
    keep = np.concatenate([keep, np.flatnonzero(ds.train.y == 0)[:10]])
    train = data.Split(ds.train.X[keep], ds.train.y[keep])
    with pytest.warns(data.DataWarning, match=r"severe class imbalance"):
        data.check(_bad(ds, train=train))


def test_check_warns_on_train_test_duplicates() -> None:
    # Rule: rows shared by train and test are reported as leakage with their count.
    ds = data.load("wine")
    X = ds.test.X.copy()
    X[:4] = ds.train.X[:4]
    with pytest.warns(data.DataWarning, match=r"4 row\(s\) of test also appear in train"):
        data.check(_bad(ds, test=data.Split(X, ds.test.y)))


def test_check_skip_and_clean_data() -> None:
    # Rule: clean data gives no messages; skip silences a named check.
    ds = data.load("wine")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.check(ds) == []
        assert data.check(data.load("digits_flat"), skip=("constant",)) == []


def test_loader_and_tensors_follow_seed() -> None:
    # Rule: the DataLoader's shuffle order depends only on seed.
    ds = data.load("wine")
    first = [
        next(iter(data.loader(ds.train, 8, shuffle=True, seed=s)))[1].tolist() for s in (1, 1, 2)
    ]
    assert first[0] == first[1] != first[2]
    X, y = data.as_tensors(ds.val)
    assert tuple(X.shape) == ds.val.X.shape and y.dtype.is_floating_point is False


def test_import_does_not_load_torch() -> None:
    # Rule: importing data, models and metrics stays cheap (no torch in sys.modules).
    code = (
        "import sys, mlkit.data, mlkit.models, mlkit.metrics; "
        "mlkit.data.load('wine'); mlkit.models.names(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
