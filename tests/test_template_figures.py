"""The templates draw what a person expects, titled, and a table's columns that matter.

classify draws a confusion matrix, regress predictions against the truth and the residuals,
both the learning curves; for a table of the user's own, both rank its columns by permutation
importance (:mod:`mlkit.importance`). Tables come from a seeded generator: numbers with gaps,
a category with gaps, a date, a label and a numeric target.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlkit import importance
from mlkit.errors import ParameterError
from mlkit.run import runner
from tests.helpers import TEMPLATES

# --- mlkit.importance ----------------------------------------------------------------------

# Inputs as the preprocessing names them: numbers, a missing flag, one-hot slots, date parts.
NAMES = [
    "age",
    "age__missing",
    "loan.amount",  # a column whose own name holds a dot
    "purpose=car",
    "purpose=house",
    "purpose=<unknown>",
    "signup.year",
    "signup.month",
]


# Each input goes back to the column it was made from, a dotted column name kept whole.
def test_column_groups_gather_each_columns_inputs() -> None:
    columns = ["age", "loan.amount", "purpose", "signup", "default"]
    assert importance.column_groups(NAMES, columns) == {
        "age": [0, 1],
        "loan.amount": [2],
        "purpose": [3, 4, 5],
        "signup": [6, 7],
    }


# Without the column list, a name is cut at its first separator.
def test_column_groups_without_columns_cut_at_the_separator() -> None:
    groups = importance.column_groups(NAMES)
    assert list(groups) == ["age", "loan", "purpose", "signup"]
    assert groups["purpose"] == [3, 4, 5]
    assert importance.column_groups(["pixel_0", "pixel_1"]) == {"pixel_0": [0], "pixel_1": [1]}


def _one_hot_table(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    slots = np.eye(3)[rng.integers(0, 3, n)]
    X = np.column_stack([a, slots, rng.normal(size=n)]).astype(np.float32)
    return X, 2 * a


# The column the score depends on ranks first; shuffled columns it ignores score exactly 0;
# a group's inputs move together, so every shuffled row keeps one one-hot slot set.
def test_permutation_importance_ranks_the_column_the_score_uses() -> None:
    X, y = _one_hot_table(300, seed=0)
    groups = {"a": [0], "kind": [1, 2, 3], "noise": [4]}
    seen = []

    def score(X: np.ndarray, y: np.ndarray) -> float:
        seen.append(X.shape[0])
        assert np.array_equal(X[:, 1:4].sum(axis=1), np.ones(len(X))), "one-hot rows broken"
        return -float(np.mean((2 * X[:, 0] - y) ** 2))

    ranked = importance.permutation_importance(score, X, y, groups, repeats=4, seed=1)
    assert ranked[0]["column"] == "a"
    assert ranked[0]["importance"] > 1 and ranked[0]["std"] > 0
    assert {r["column"]: r["importance"] for r in ranked[1:]} == {"kind": 0.0, "noise": 0.0}
    assert {r["column"]: r["inputs"] for r in ranked} == {"a": 1, "kind": 3, "noise": 1}
    assert len(seen) == 1 + 3 * 4, "one baseline, then repeats per group"
    assert np.array_equal(X, _one_hot_table(300, seed=0)[0]), "the caller's inputs untouched"


# max_rows caps the rows scored on (a seeded sample); the same seed gives the same ranking.
def test_permutation_importance_caps_rows_and_follows_the_seed() -> None:
    X, y = _one_hot_table(500, seed=0)
    groups = {"a": [0], "kind": [1, 2, 3], "noise": [4]}
    sizes = set()

    def score(X: np.ndarray, y: np.ndarray) -> float:
        sizes.add(len(X))
        return -float(np.mean((2 * X[:, 0] - y) ** 2))

    first = importance.permutation_importance(score, X, y, groups, max_rows=50, seed=3)
    assert sizes == {50}
    assert first == importance.permutation_importance(score, X, y, groups, max_rows=50, seed=3)
    assert first != importance.permutation_importance(score, X, y, groups, max_rows=50, seed=4)


# Counts that cannot work are refused by name, with the fix.
@pytest.mark.parametrize(("option", "value"), [("repeats", 0), ("max_rows", 0), ("repeats", 1.5)])
def test_permutation_importance_refuses_bad_counts(option: str, value: Any) -> None:
    X, y = _one_hot_table(20, seed=0)
    with pytest.raises(ParameterError, match=f"'{option}' parameter .* Pass {option}="):
        importance.permutation_importance(lambda X, y: 0.0, X, y, {"a": [0]}, **{option: value})


# --- the templates ---------------------------------------------------------------------------

# Wraps Run.log_figure in the kernel (an IPython startup file) to note each figure's titles.
PROBE = """
import json, os
from mlkit.record import Run

_log_figure = Run.log_figure

def _noting_titles(self, name, figure, **options):
    titles = [ax.get_title() for ax in figure.axes]
    with open(os.environ["FIGURE_TITLES"], "a") as fh:
        fh.write(json.dumps({"name": name, "titles": titles}) + "\\n")
    return _log_figure(self, name, figure, **options)

Run.log_figure = _noting_titles
"""


def shop_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Customers: numbers with gaps, a channel with gaps, a date, a label and a spend."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n).astype(float)
    age[rng.random(n) < 0.1] = np.nan
    income = rng.normal(50, 15, n).round(2)
    channel = rng.choice(["web", "store", "phone"], n).astype(object)
    channel[rng.random(n) < 0.1] = None
    joined = pd.Timestamp("2022-01-01") + pd.to_timedelta(rng.integers(0, 700, n), unit="D")
    spend = 3 * income + np.where(channel == "web", 40.0, 0.0) + rng.normal(0, 5, n)
    churned = np.where(spend + rng.normal(0, 20, n) > 190, "yes", "no")
    return pd.DataFrame(
        {
            "age": age,
            "income": income,
            "channel": channel,
            "joined": joined,
            "spend": spend.round(2),
            "churned": churned,
        }
    )


TINY = {
    "classify": {"epochs": 2, "hidden": "32", "batch_size": 128},
    "regress": {"epochs": 2, "hidden": "16", "batch_size": 64},
}
FIGURES = {
    "classify": {"learning_curves", "confusion_matrix"},
    "regress": {"learning_curves", "predicted_vs_true", "residuals"},
}
# What each template predicts from the generated table, and the other label it leaves out.
TABLE = {
    "classify": {"target": "churned", "drop": "spend"},
    "regress": {"target": "spend", "drop": "churned"},
}


def _shown_pngs(notebook: Path) -> list[bytes]:
    cells = json.loads(notebook.read_text())["cells"]
    outputs = [o for c in cells for o in c.get("outputs", [])]
    pngs = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    return [base64.b64decode(png) for png in pngs]


def _importance_table(run_dir: Path) -> dict[str, Any]:
    (table,) = run_dir.glob("wandb/offline-run-*/files/media/table/feature_importance_*.json")
    return json.loads(table.read_text())


# A run draws its figures into the record, titled, and shows the same PNGs in output.ipynb;
# a table of its own adds its columns ranked by importance, one row per source column.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["classify", "regress"])
@pytest.mark.parametrize("source", ["bundled", "table"])
def test_template_draws_titled_figures(
    exp_root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, source: str
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-figure-titles.py").write_text(PROBE)
    titles_file = tmp_path / "titles.jsonl"
    given = dict(TINY[name])
    expected = set(FIGURES[name])
    if source == "table":
        csv = tmp_path / "shop.csv"
        shop_frame().to_csv(csv, index=False)
        given.update(dataset=str(csv), **TABLE[name])
        expected.add("feature_importance")
    env = {"IPYTHONDIR": str(tmp_path / "ipython"), "FIGURE_TITLES": str(titles_file)}
    info = runner.run(TEMPLATES / f"{name}.ipynb", given, progress=False, env=env)
    assert info["status"] == "completed", info.get("reason")
    run_dir = Path(info["path"])

    assert {p.stem for p in run_dir.glob("*.png")} == expected
    noted = [json.loads(line) for line in titles_file.read_text().splitlines()]
    assert {n["name"] for n in noted} == expected
    for figure in noted:
        assert figure["titles"] and all(figure["titles"]), f"untitled axes in {figure}"
    shown = _shown_pngs(run_dir / "output.ipynb")
    for figure in expected:
        assert (run_dir / f"{figure}.png").read_bytes() in shown, f"{figure} not shown"
    if source == "table":
        table = _importance_table(run_dir)
        assert table["columns"] == ["column", "importance", "std", "inputs"]
        rows = {row[0]: row for row in table["data"]}
        assert set(rows) == {"age", "income", "channel", "joined"}, "one row per source column"
        assert rows["channel"][3] == 4, "web, store, phone and <unknown> shuffled together"
