"""Evaluation: planted bias is found, attributions find what the model uses, ECE, the gate."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from mlkit import data, evaluate
from mlkit.errors import ParameterError, UnknownNameError
from mlkit.registry import evaluation
from tests.helpers import TEMPLATES

PLANTED = 0.2
# 8000 rows give a 1200-row test split, about 840 in group 0 and 360 in group 1.
N_SAMPLES = 8000


@cache
def _fairness_run(bias: float) -> tuple[dict, data.Dataset]:
    """Train a logistic model on synthetic_fairness; its group metrics on the test split."""
    import torch

    from mlkit import models, train

    torch.set_num_threads(1)
    ds = data.load("synthetic_fairness", bias=bias, n_samples=N_SAMPLES)
    train.seed_everything(0)
    net = models.build("linear", input_shape=ds.input_shape, n_outputs=ds.n_outputs)
    train.fit(net, ds, epochs=10, lr=0.05, batch_size=128, seed=0, device="cpu")
    pred = train.predict(net, ds.test.X).argmax(1)
    return evaluate.group_metrics(ds.test.y, pred, ds.groups("group")), ds


def _parity_noise(fair: dict) -> float:
    """Standard error of a selection-rate difference between the two groups at rate 0.5."""
    n0, n1 = (fair["groups"][g]["count"] for g in ("0", "1"))
    return math.sqrt(0.25 * (1 / n0 + 1 / n1))


def test_planted_gap_is_measured_within_tolerance() -> None:
    # Rule: on biased synthetic data the measured demographic parity gap is the planted one.
    fair, _ = _fairness_run(PLANTED)
    se = _parity_noise(fair)  # about 0.032 here
    # 3 standard errors of sampling noise plus 0.02 for a model that is not Bayes-optimal.
    assert fair["demographic_parity_difference"] == pytest.approx(PLANTED, abs=3 * se + 0.02)
    rates = {g: row["selection_rate"] for g, row in fair["groups"].items()}
    assert rates["0"] > rates["1"]  # the gap points the planted way: group 1 is selected less


def test_unbiased_data_shows_no_gap_beyond_noise() -> None:
    # Rule: with bias 0 the measured gaps stay within sampling noise of zero.
    fair, _ = _fairness_run(0.0)
    se = _parity_noise(fair)
    # Under no bias the difference is ~N(0, se); 3 se is exceeded by chance 0.3% of the time.
    assert fair["demographic_parity_difference"] < 3 * se
    assert fair["label_parity_difference"] < 3 * se
    assert fair["equalized_odds_difference"] < 0.1


def test_group_metrics_reports_every_group_and_rate() -> None:
    # Rule: each group gets count, accuracy, selection rate, TPR and FPR; sizes must agree.
    fair = evaluate.group_metrics([1, 0, 1, 0], [1, 0, 0, 0], ["a", "a", "b", "b"])
    assert fair["groups"]["a"] == pytest.approx(
        {"count": 2, "accuracy": 1, "base_rate": 0.5, "selection_rate": 0.5, "tpr": 1, "fpr": 0}
    )
    assert fair["groups"]["b"]["tpr"] == 0 and fair["demographic_parity_difference"] == 0.5
    assert fair["equalized_odds_difference"] == 1
    with pytest.raises(ParameterError, match="same length"):
        evaluate.group_metrics([1, 0], [1], [0, 0])


def test_cnn_attributions_beat_random_deletion_on_digits() -> None:
    # Rule: IG of a digits CNN ranks pixels so deleting them breaks it faster than random.
    import torch

    from mlkit import models, train

    torch.set_num_threads(1)
    ds = data.load("digits")
    train.seed_everything(0)
    net = models.build("cnn", input_shape=ds.input_shape, n_outputs=ds.n_outputs)
    train.fit(net, ds, epochs=8, lr=0.01, batch_size=64, seed=0, device="cpu")
    X, y = ds.test.X[:200], ds.test.y[:200]
    attr = evaluate.integrated_gradients(net, X, steps=32)
    assert attr.shape == X.shape
    by_attr = evaluate.deletion_curve(net, X, y, attr, steps=16)
    random = np.random.default_rng(0).random(attr.shape)
    by_random = evaluate.deletion_curve(net, X, y, random, steps=16)
    assert by_attr[0] == by_random[0] > 0.9  # nothing deleted: the trained model's accuracy
    # Measured: 0.06 against 0.56. A margin of 0.2 is far outside seed-to-seed variation.
    assert evaluate.curve_area(by_attr) < evaluate.curve_area(by_random) - 0.2
    # Importance follows the pixels whose class means differ (blank borders get none).
    importance = np.abs(attr).reshape(len(X), -1).mean(0)
    flat = ds.train.X.reshape(len(ds.train), -1)
    between = np.stack([flat[ds.train.y == c].mean(0) for c in range(10)]).var(0)
    ranks = [np.argsort(np.argsort(v)) for v in (importance, between)]
    assert np.corrcoef(*ranks)[0, 1] > 0.5  # Spearman; measured 0.86


def test_ece_separates_calibrated_from_overconfident() -> None:
    # Rule: ECE is near 0 when confidence matches accuracy and large when it overstates it.
    rng = np.random.default_rng(0)
    n = 20_000
    conf = rng.uniform(0.5, 1.0, n)
    y = (rng.random(n) < conf).astype(int)  # class 1 is right with probability conf
    calibrated = np.column_stack([1 - conf, conf])
    overconfident = np.column_stack([1 - conf, conf]) ** 0.2  # pushed towards 1
    overconfident /= overconfident.sum(1, keepdims=True)
    # Sampling noise of a bin's accuracy is about sqrt(0.25 / 2000) = 0.011.
    assert evaluate.expected_calibration_error(y, calibrated) < 0.02
    assert evaluate.expected_calibration_error(y, overconfident) > 0.15
    assert evaluate.expected_calibration_error(y, conf) == pytest.approx(
        evaluate.expected_calibration_error(y, calibrated)
    )
    with pytest.raises(ParameterError, match="'bins'"):
        evaluate.expected_calibration_error(y, conf, bins=0)


def test_gate_blocks_biased_model_and_passes_unbiased() -> None:
    # Rule: the gate names the metric, its value and the bound; an unbiased model passes.
    bounds = {
        "fairness/demographic_parity_difference": 0.1,
        "fairness/equalized_odds_difference": 0.1,
    }
    biased = evaluate.flatten(_fairness_run(PLANTED)[0], "fairness")
    fair = evaluate.flatten(_fairness_run(0.0)[0], "fairness")
    violations = evaluate.promotion_gate(biased, bounds)
    assert len(violations) == 1
    value = biased["fairness/demographic_parity_difference"]
    assert violations[0] == (
        f"fairness/demographic_parity_difference = {value:.4g} exceeds its bound: at most 0.1."
    )
    assert evaluate.promotion_gate(fair, bounds) == []


def test_gate_refuses_what_it_cannot_check() -> None:
    # Rule: a missing or non-finite metric is a violation; a malformed bound is a usage error.
    result = {"calibration/ece": float("nan"), "test/accuracy": 0.8}
    violations = evaluate.promotion_gate(
        result,
        {
            "calibration/ece": 0.05,
            "fairness/equalized_odds_difference": 0.1,
            "test/accuracy": {"min": 0.9},
        },
    )
    assert "calibration/ece = nan is not a finite number" in violations[0]
    assert "fairness/equalized_odds_difference is missing" in violations[1]
    assert "mlkit evaluate RUN" in violations[1]
    assert violations[2] == "test/accuracy = 0.8 is below its bound: at least 0.9."
    with pytest.raises(ParameterError, match="'calibration/ece'"):
        evaluate.promotion_gate(result, {"calibration/ece": "low"})


def test_biased_dataset_keeps_existing_datasets_unchanged() -> None:
    # Rule: synthetic_fairness carries its group as a feature and as a sensitive attribute.
    ds = data.load("synthetic_fairness", bias=0.1, n_samples=400)
    assert ds.feature_names[-1] == "group" and ds.sensitive_columns == ["group"]
    assert set(np.unique(ds.groups("group", "train"))) == {0, 1}
    assert ds.spec()["sensitive"] == ["group"]
    assert ds.version != data.load("synthetic_fairness", bias=0.0, n_samples=400).version
    wine = data.load("wine")
    assert wine.sensitive_columns == [] and "sensitive" not in wine.spec()
    with pytest.raises(ParameterError, match=r"'bias'.*synthetic_fairness"):
        data.load("wine", bias=0.1)
    with pytest.raises(ParameterError, match="'bias'"):
        data.load("synthetic_fairness", bias=0.7)
    with pytest.raises(KeyError, match="no sensitive attribute 'sex'"):
        ds.groups("sex")


def test_import_stays_light() -> None:
    # Rule: importing mlkit.evaluate and building the CLI imports no torch, captum or fairlearn.
    code = (
        "import sys, mlkit.evaluate, mlkit.cli; mlkit.cli.build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'captum', 'fairlearn', 'pandas', 'wandb'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_template_end_to_end_on_biased_data(exp_root: Path) -> None:
    # Rule: the template runs untouched through the runner and records fairness and figures.
    from mlkit.run import runner

    info = runner.run(TEMPLATES / "evaluate.ipynb", {}, progress=False)
    assert info["status"] == "completed", info.get("reason")
    result, run_dir = info["result"], Path(info["path"])
    assert info["experiment"] == "evaluate"
    for key in (
        "fairness/demographic_parity_difference",
        "fairness/equalized_odds_difference",
        "calibration/ece",
        "attribution/deletion_auc",
    ):
        assert math.isfinite(result[key]), key
    # 300 test rows: wide noise, but the planted 0.2 gap is far from none.
    assert result["fairness/demographic_parity_difference"] > 0.1
    assert result["attribution/deletion_auc"] < result["attribution/random_deletion_auc"]
    for figure in ("fairness_by_group", "attributions", "deletion_curve", "calibration"):
        assert (run_dir / f"{figure}.png").stat().st_size > 1000, figure
    report = json.loads((run_dir / "evaluation.json").read_text())
    assert set(report["fairness"]["groups"]) == {"0", "1"}


@pytest.mark.slow
def test_evaluate_run_on_a_recorded_cnn(exp_root: Path) -> None:
    # Rule: mlkit evaluate RUN rebuilds a saved image model, and the record names that run.
    from mlkit.run import runner

    trained = runner.run(
        TEMPLATES / "classify.ipynb",
        {"model": "cnn", "epochs": 2, "batch_size": 128},
        progress=False,
    )
    assert trained["status"] == "completed", trained.get("reason")
    with pytest.raises(UnknownNameError, match="no sensitive attribute 'group'"):
        evaluation.evaluate_run(trained["id"], sensitive="group")  # digits has none
    assert not (exp_root / "evaluate").exists()  # refused before any record was made
    info = evaluation.evaluate_run(trained["id"], params={"ig_steps": 8})
    assert info["status"] == "completed", info.get("reason")
    assert info["evaluates"] == trained["id"]
    assert "fairness/demographic_parity_difference" not in info["result"]  # digits has no group
    assert 0 <= info["result"]["calibration/ece"] <= 1
    assert (Path(info["path"]) / "attributions.png").exists()
    assert evaluation.find_evaluation(trained["id"])["id"] == info["id"]


# Report tables become W&B table rows: one row per group or slice, nested tables found.
def test_report_tables_for_wandb() -> None:
    from mlkit import evaluate

    report = {
        "fairness": {
            "groups": {"0": {"accuracy": 0.9, "tpr": 0.8}, "1": {"accuracy": 0.7}},
            "demographic_parity_difference": 0.2,
        },
        "errors": {"class": [{"class": "a", "error": 0.1}]},
    }
    tables = evaluate.tables(report)
    assert tables["fairness/groups"] == [
        {"name": "0", "accuracy": 0.9, "tpr": 0.8},
        {"name": "1", "accuracy": 0.7},
    ]
    assert tables["errors/class"] == [{"class": "a", "error": 0.1}]
