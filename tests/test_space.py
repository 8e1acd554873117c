"""Search spaces: parsed, checked against the notebook, sampled define-by-run."""

from __future__ import annotations

import pytest

from mlkit.run.params import read_signature
from mlkit.sweep import space
from tests.helpers import SCENARIOS, TEMPLATES

SIG = read_signature(SCENARIOS / "objective.ipynb")


def check(raw: dict) -> None:
    space.check_against(space.parse(raw, "s.yaml"), SIG, "s.yaml")


# A valid space with every kind of dimension and a condition passes.
def test_valid_space_passes() -> None:
    check(
        {
            "x": {"type": "float", "low": -1, "high": 1},
            "y": {"type": "int", "low": 0, "high": 4, "step": 2},
            "kind": ["a", "b"],
            "epochs": {"type": "int", "low": 1, "high": 3, "when": {"kind": "b"}},
        }
    )


# Each kind of mistake gets an error naming the dimension and the fix.
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"z": [1, 2]}, "Dimension 'z' in s.yaml is not a parameter"),
        ({"kind": {"type": "float", "low": 0, "high": 1}}, "is a float range, but parameter"),
        ({"x": {"type": "float", "low": 1, "high": 1}}, "empty range: low=1 must be below"),
        ({"x": {"type": "float", "low": 0, "high": 1, "log": True}}, "log-scaled, so low"),
        ({"x": {"type": "real", "low": 0, "high": 1}}, "needs 'type' set to one of"),
        ({"x": {"type": "float", "lo": 0, "high": 1}}, "unknown key(s) ['lo']"),
        ({"kind": ["a", "c"]}, "one of a, b"),
        (
            {"kind": ["a"], "x": {"type": "float", "low": 0, "high": 1, "when": {"kind": "z"}}},
            "depends on kind='z'",
        ),
        (
            {"x": {"type": "float", "low": 0, "high": 1, "when": {"kind": "a"}}},
            "must be a dimension listed before it",
        ),
        ({}, "must be a mapping"),
    ],
)
def test_space_errors(raw: dict, message: str) -> None:
    with pytest.raises(space.SpaceError) as info:
        check(raw)
    assert message in str(info.value)


# Conditional dimensions are only sampled when their condition holds.
def test_suggest_skips_inactive_dimensions() -> None:
    import optuna

    dims = space.parse(
        {"kind": ["a", "b"], "x": {"type": "float", "low": 0, "high": 1, "when": {"kind": "b"}}}
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(20):
        params = space.suggest(study.ask(), dims)
        seen.add(("x" in params, params["kind"]))
    assert seen == {(False, "a"), (True, "b")}


# The grid sampler needs finite dimensions and no conditions.
def test_grid_rules() -> None:
    assert space.grid(space.parse({"y": {"type": "int", "low": 0, "high": 4, "step": 2}})) == {
        "y": [0, 2, 4]
    }
    with pytest.raises(space.SpaceError, match="give float dimension 'x' a 'step'"):
        space.grid(space.parse({"x": {"type": "float", "low": 0, "high": 1}}))


# The shipped classify space fits the classify template.
def test_classify_space_fits_template() -> None:
    dims = space.load(TEMPLATES / "classify_space.yaml")
    space.check_against(dims, read_signature(TEMPLATES / "classify.ipynb"))
