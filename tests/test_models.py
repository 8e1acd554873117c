"""Tests for mlkit.models: registry, builders, parameter errors."""

from __future__ import annotations

import pytest
import torch

from mlkit import models
from mlkit.errors import ParameterError, UnknownNameError


@pytest.mark.parametrize(
    ("name", "shape", "params"),
    [
        ("linear", (64,), {}),
        ("mlp", (64,), {"hidden": "32,16", "dropout": 0.1, "activation": "gelu"}),
        ("mlp", (1, 8, 8), {"hidden": ""}),
        ("cnn", (1, 8, 8), {"channels": "8,16,4", "dropout": 0.2}),
    ],
)
def test_models_output_one_logit_per_class(name: str, shape: tuple, params: dict) -> None:
    # Rule: every builder maps (batch, *input_shape) to (batch, n_outputs).
    model = models.build(name, input_shape=shape, n_outputs=10, **params)
    assert model(torch.zeros(5, *shape)).shape == (5, 10)


def test_regression_output_is_a_column() -> None:
    # Rule: n_outputs=1 gives (batch, 1), which fit squeezes.
    model = models.build("mlp", input_shape=(10,), n_outputs=1)
    assert model(torch.zeros(3, 10)).shape == (3, 1)


def test_unknown_model_lists_names() -> None:
    # Rule: an unknown model name raises UnknownNameError listing the registry.
    with pytest.raises(UnknownNameError, match=r"Unknown model 'resnet'.*cnn, linear, mlp"):
        models.build("resnet", input_shape=(4,), n_outputs=2)


def test_unknown_parameter_is_named() -> None:
    # Rule: a misspelt hyperparameter raises ParameterError naming it and the valid ones.
    with pytest.raises(
        ParameterError, match=r"'hiden' for model 'mlp'.*activation, dropout, hidden"
    ):
        models.build("mlp", input_shape=(4,), n_outputs=2, hiden="8")


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"dropout": 1.0}, "'dropout'.*\\[0, 1\\)"),
        ({"activation": "tanh"}, "'activation'.*gelu, relu"),
        ({"hidden": "128,x"}, "'hidden'.*'128,x'"),
    ],
)
def test_invalid_values_raise_parameter_error(params: dict, match: str) -> None:
    # Rule: out-of-range hyperparameter values name the parameter, rule and value.
    with pytest.raises(ParameterError, match=match):
        models.build("mlp", input_shape=(4,), n_outputs=2, **params)


def test_cnn_on_flat_data_suggests_alternatives() -> None:
    # Rule: cnn needs (C, H, W) and says to use mlp/linear or the digits dataset.
    with pytest.raises(ParameterError, match=r"mlp.*linear.*digits"):
        models.build("cnn", input_shape=(64,), n_outputs=10)
    with pytest.raises(ParameterError, match=r"at most 3"):
        models.build("cnn", input_shape=(1, 8, 8), n_outputs=10, channels="4,4,4,4")


def test_parse_sizes_accepts_notebook_forms() -> None:
    # Rule: sizes come as strings, ints or sequences; bad items raise ParameterError.
    assert models.parse_sizes("128, 64") == (128, 64)
    assert models.parse_sizes("") == ()
    assert models.parse_sizes(32) == (32,)
    assert models.parse_sizes([8, 4]) == (8, 4) == models.parse_sizes((8, 4))
    for bad in ("0", "-3", "1.5", [True], None):
        with pytest.raises(ParameterError):
            models.parse_sizes(bad)


def test_register_adds_a_model_and_defaults_lists_params() -> None:
    # Rule: a registered builder is buildable by name, with its hyperparameters discoverable.
    @models.register("tiny_test_model")
    def tiny(input_shape, n_outputs, *, width: int = 3):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(input_shape[0], n_outputs))

    try:
        assert "tiny_test_model" in models.names()
        assert models.defaults("tiny_test_model") == {"width": 3}
        assert models.build("tiny_test_model", input_shape=(4,), n_outputs=2, width=5)
    finally:
        models._REGISTRY.pop("tiny_test_model")
    assert models.defaults("mlp") == {"hidden": "128,64", "dropout": 0.0, "activation": "relu"}
