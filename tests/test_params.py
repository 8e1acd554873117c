"""The parameters cell: reading, coercion and validation, without a kernel."""

from __future__ import annotations

import pytest

from mlkit.errors import NotebookError, NotebookNotFoundError, ParameterError
from mlkit.run.params import (
    Signature,
    coerce,
    parse_parameters_cell,
    parse_rule,
    read_signature,
    validate,
)
from tests.helpers import SCENARIOS, TEMPLATES

CELL = """
%matplotlib inline
lr: float = 3e-4  # peak learning rate; above 0 and at most 1
epochs: int = 10  # passes over the data; at least 1
optimizer: str = "adamw"  # update rule; one of adam, adamw, sgd
hidden = [64, 32]  # layer sizes
use_bn: bool = False  # batch norm
extra: dict = {"a": 1}
computed = 2 * epochs
"""


def signature() -> Signature:
    return Signature("nb.ipynb", parse_parameters_cell(CELL, "nb.ipynb"))


# Reading: names, types, defaults, help and rules come from the cell text.
def test_parse_reads_types_defaults_help_and_rules() -> None:
    params = {p.name: p for p in signature().parameters}
    assert list(params) == ["lr", "epochs", "optimizer", "hidden", "use_bn", "extra", "computed"]
    assert params["lr"].type == "float" and params["lr"].default == 3e-4
    assert params["lr"].help == "peak learning rate"
    assert params["lr"].rule.low == 0 and not params["lr"].rule.low_inclusive
    assert params["lr"].rule.high == 1 and params["lr"].rule.high_inclusive
    assert params["epochs"].type == "int"
    assert params["optimizer"].rule.choices == ("adam", "adamw", "sgd")
    assert params["hidden"].type == "list" and params["hidden"].default == [64, 32]
    assert params["use_bn"].type == "bool"
    assert params["extra"].type == "dict"
    assert params["computed"].default is None  # not a literal: no default to offer


# Rules are words, so papermill's own parser (which skips lines with two '=') reads them too.
def test_rules_in_words_and_symbols() -> None:
    assert parse_rule("at least 0 and below 1").check(0.0)
    assert not parse_rule("at least 0 and below 1").check(1.0)
    assert not parse_rule("above 0").check(0)
    assert parse_rule(">= 1").check(1)
    assert parse_rule("a comment, not a rule") is None


# CLI strings are converted to the declared type; wrong types name the parameter and fix.
def test_coerce_converts_and_explains() -> None:
    sig = signature()
    assert coerce(sig["epochs"], "12") == 12
    assert coerce(sig["use_bn"], "true") is True
    assert coerce(sig["hidden"], "[8, 4]") == [8, 4]
    with pytest.raises(ParameterError, match=r"'epochs' .* must be an int, got 'ten'.*-p epochs"):
        coerce(sig["epochs"], "ten", "nb.ipynb")


# Unknown names list the valid ones and suggest the closest.
def test_unknown_parameter_lists_valid_ones() -> None:
    with pytest.raises(ParameterError) as info:
        validate({"epoch": "3"}, signature(), from_cli=True)
    text = str(info.value)
    assert "Unknown parameter 'epoch'" in text and "Did you mean 'epochs'" in text
    assert "lr, epochs, optimizer" in text


# A value that breaks the stated rule is refused with the rule and an example.
def test_rule_violation_is_refused() -> None:
    with pytest.raises(ParameterError, match=r"'lr' .* must be a float above 0.*got '-1'"):
        validate({"lr": "-1"}, signature(), from_cli=True)
    with pytest.raises(ParameterError, match="one of adam, adamw, sgd"):
        validate({"optimizer": "rmsprop"}, signature(), from_cli=True)


# Names that are not identifiers cannot be parameters.
@pytest.mark.parametrize("name", ["1lr", "learning-rate", "class", "a b"])
def test_non_identifier_names_are_refused(name: str) -> None:
    with pytest.raises(ParameterError, match="not a Python identifier"):
        validate({name: 1}, signature())


# Python values are type-checked too; ints are accepted for floats, bools are not ints.
def test_python_values_are_type_checked() -> None:
    assert validate({"lr": 1}, signature()) == {"lr": 1.0}
    with pytest.raises(ParameterError, match="must be an int"):
        validate({"epochs": True}, signature())
    with pytest.raises(ParameterError, match="JSON values"):
        validate({"extra": {"a": object()}}, signature())


# Reading a notebook: missing file, no parameters cell, invalid JSON.
def test_read_signature_errors(tmp_path) -> None:
    with pytest.raises(NotebookNotFoundError, match="does not exist"):
        read_signature(tmp_path / "missing.ipynb")
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    with pytest.raises(NotebookError, match="not valid JSON"):
        read_signature(bad)
    with pytest.raises(NotebookError, match="no cell tagged 'parameters'"):
        read_signature(SCENARIOS / "no_parameters.ipynb")


# The templates' signatures are what the docs promise.
def test_template_signatures() -> None:
    classify = read_signature(TEMPLATES / "classify.ipynb")
    for name in (
        "dataset",
        "model",
        "optimizer",
        "lr",
        "epochs",
        "batch_size",
        "hidden",
        "dropout",
        "weight_decay",
        "seed",
    ):
        assert name in classify.names
    assert all(p.help for p in classify.parameters)
    assert "diabetes" in read_signature(TEMPLATES / "regress.ipynb")["dataset"].rule.choices
