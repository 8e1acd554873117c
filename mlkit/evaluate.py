"""Evaluation people can trust: fairness across groups, attributions, calibration, a gate.

The pure functions here are what ``templates/evaluate.ipynb`` computes, kept outside the
notebook so they are unit-tested. torch, captum and fairlearn are imported inside the functions
that need them, so ``import mlkit.evaluate`` (and ``mlkit --help``) stays cheap.

Metric names in an evaluation's result, the ones :func:`promotion_gate` checks:
``fairness/demographic_parity_difference``, ``fairness/equalized_odds_difference``,
``calibration/ece``, ``attribution/deletion_auc``, ``test/accuracy``, ...
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlkit._contract import BUILD, LINEAGE_FILE, PARAMS_FILE, WEIGHTS
from mlkit._io import read_json
from mlkit.errors import ParameterError, StateError
from mlkit.rebuild import build_model, data_options, load_data
from mlkit.record_store import find_run

if TYPE_CHECKING:
    from torch import nn

    from mlkit.data import Dataset

__all__ = [
    "SUGGESTED_BOUNDS",
    "curve_area",
    "data_options",
    "deletion_curve",
    "expected_calibration_error",
    "flatten",
    "group_metrics",
    "integrated_gradients",
    "load_run_model",
    "promotion_gate",
    "reliability_curve",
    "slice_errors",
]


# A starting point for per-model bounds, not a standard: a 0.1 gap in selection rate is the
# common "four-fifths"-style alarm level at base rates near 0.5, and 0.05 ECE means confidences
# off by five points on average. Each model's owner should set its own.
SUGGESTED_BOUNDS: dict[str, float] = {
    "fairness/demographic_parity_difference": 0.1,
    "fairness/equalized_odds_difference": 0.1,
    "calibration/ece": 0.05,
}


# --- fairness ----------------------------------------------------------------


def group_metrics(y_true: Any, y_pred: Any, groups: Any) -> dict[str, Any]:
    """Per-group metrics and the parity gaps between groups, computed with fairlearn.

    Every group gets ``count``, ``accuracy`` and ``base_rate`` (share of true positives in its
    labels). For binary labels (0/1) each group also gets ``selection_rate``, ``tpr`` and
    ``fpr``, and the result the gaps: ``demographic_parity_difference`` (largest minus smallest
    selection rate), ``equalized_odds_difference`` (the larger of the TPR and FPR gaps) and
    ``label_parity_difference`` (the selection-rate gap already in the labels, to tell data bias
    from model bias). ``accuracy_difference`` is always there.

    Returns:
        ``{"groups": {str(group): {metric: value}}, "<gap name>": value, ...}``.
    """
    from functools import partial

    from fairlearn.metrics import (
        MetricFrame,
        demographic_parity_difference,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )
    from sklearn.metrics import accuracy_score

    y_true, y_pred, groups = _aligned(y_true, y_pred, groups)
    binary = set(np.unique(y_true)) | set(np.unique(y_pred)) <= {0, 1}
    metrics: dict[str, Any] = {
        "count": lambda t, p: float(len(t)),
        "accuracy": accuracy_score,
        "base_rate": lambda t, p: float(np.mean(t == 1)),
    }
    if binary:
        metrics.update(
            selection_rate=selection_rate,
            tpr=partial(true_positive_rate, pos_label=1),
            fpr=partial(false_positive_rate, pos_label=1),
        )
    frame = MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=groups)
    by_group = frame.by_group
    out: dict[str, Any] = {
        "groups": {str(g): {m: float(by_group.loc[g, m]) for m in metrics} for g in by_group.index},
        "accuracy_difference": float(frame.difference()["accuracy"]),
    }
    if binary:
        out["demographic_parity_difference"] = float(
            demographic_parity_difference(y_true, y_pred, sensitive_features=groups)
        )
        out["equalized_odds_difference"] = float(
            equalized_odds_difference(y_true, y_pred, sensitive_features=groups)
        )
        out["label_parity_difference"] = float(
            demographic_parity_difference(y_true, y_true, sensitive_features=groups)
        )
    return out


def _aligned(*arrays: Any) -> list[np.ndarray]:
    out = [np.asarray(a).reshape(-1) for a in arrays]
    if len({len(a) for a in out}) != 1 or not len(out[0]):
        sizes = ", ".join(str(len(a)) for a in out)
        raise ParameterError(
            f"y_true, y_pred and groups must be non-empty and of the same length, got {sizes}. "
            "Pass one value per test row, e.g. data.groups('group', 'test')."
        )
    return out


def flatten(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """``{"groups": {"1": {"tpr": .9}}, "x": .1}`` -> ``{"p/group_1/tpr": .9, "p/x": .1}``.

    Result and W&B keys must be flat scalars; nested per-group tables become namespaced keys.
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key == "groups" and isinstance(value, Mapping):
            for group, row in value.items():
                for name, v in row.items():
                    out[f"{prefix}/group_{group}/{name}"] = float(v)
        elif isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}/{key}"))
        elif isinstance(value, numbers.Real):
            out[f"{prefix}/{key}"] = float(value)
    return out


def slice_errors(y_true: Any, y_pred: Any, slices: Any) -> dict[str, dict[str, float]]:
    """Error rate and row count per slice value (a class, a group): where the model fails."""
    y_true, y_pred, slices = _aligned(y_true, y_pred, slices)
    out: dict[str, dict[str, float]] = {}
    for value in np.unique(slices):
        mask = slices == value
        out[str(value)] = {
            "error": float(np.mean(y_true[mask] != y_pred[mask])),
            "count": float(mask.sum()),
        }
    return out


# --- calibration -------------------------------------------------------------


def _top_label(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Confidence of the predicted class and whether it was right, per row."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:  # probability of class 1 of a binary task
        p = np.column_stack([1 - p, p])
    y = np.asarray(y_true).reshape(-1)
    if p.ndim != 2 or len(p) != len(y) or not len(y):
        raise ParameterError(
            f"probs must be (n,) or (n, n_classes) with n the number of labels ({len(y)}), got "
            f"shape {p.shape}. Pass train.predict(model, split.X)."
        )
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def _check_bins(bins: Any) -> int:
    if not isinstance(bins, numbers.Integral) or isinstance(bins, bool) or bins < 1:
        raise ParameterError(
            f"The 'bins' parameter must be an int >= 1. Got {bins!r} instead. Pass bins=10."
        )
    return int(bins)


def reliability_curve(y_true: Any, probs: Any, bins: int = 10) -> dict[str, list[float]]:
    """Per equal-width confidence bin: mean confidence, accuracy and row count.

    Empty bins are kept with NaN confidence and accuracy, so the lists always have ``bins``
    entries and line up with ``edges``.
    """
    n_bins = _check_bins(bins)
    conf, correct = _top_label(y_true, probs)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Right-closed bins (a confidence of exactly 1.0 falls in the last one).
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
    return {
        "edges": edges.tolist(),
        "confidence": mean_conf.tolist(),
        "accuracy": accuracy.tolist(),
        "count": count.tolist(),
    }


def expected_calibration_error(y_true: Any, probs: Any, bins: int = 10) -> float:
    """ECE of the top-label confidence: the count-weighted mean |accuracy - confidence|.

    A model that says 90% should be right 90% of the time; ECE is how far off it is on average,
    in probability points (0 is perfect). Binary tasks may pass the positive-class column.
    """
    curve = reliability_curve(y_true, probs, bins)
    count = np.asarray(curve["count"])
    gap = np.abs(np.asarray(curve["accuracy"]) - np.asarray(curve["confidence"]))
    filled = count > 0
    return float(np.sum(count[filled] * gap[filled]) / count.sum())


# --- attributions ------------------------------------------------------------


def _forward_setup(model: nn.Module, X: Any) -> tuple[Any, Any]:
    import torch

    x = torch.as_tensor(np.asarray(X, dtype=np.float32))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if not len(x):
        raise ParameterError("X must hold at least one example. Pass split.X[:n] with n >= 1.")
    return x.to(device), device


def _check_steps(steps: Any, name: str = "steps") -> int:
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1:
        raise ParameterError(
            f"The '{name}' parameter must be an int >= 1. Got {steps!r} instead. Pass {name}=32."
        )
    return int(steps)


def integrated_gradients(
    model: nn.Module,
    X: Any,
    target: Any = None,
    baseline: Any = None,
    steps: int = 32,
) -> np.ndarray:
    """Integrated Gradients (captum) of each example's ``target`` log-probability, like ``X``.

    ``target=None`` explains the predicted class; an int or one index per row picks others.
    ``baseline=None`` is all zeros: the training mean for standardised tabular data and a
    blank image for digits, both "no information" points. The model is put in eval mode (so
    dropout does not make attributions random) and restored afterwards.
    """
    import torch
    from captum.attr import IntegratedGradients

    n_steps = _check_steps(steps)
    x, device = _forward_setup(model, X)
    was_training = model.training
    model.eval()
    try:
        if target is None:
            with torch.no_grad():
                target = model(x).argmax(dim=1)
        elif not isinstance(target, numbers.Integral):
            target = torch.as_tensor(np.asarray(target), dtype=torch.long, device=device)
        base = (
            torch.zeros_like(x)
            if baseline is None
            else torch.as_tensor(np.asarray(baseline, dtype=np.float32), device=device).expand_as(x)
        )

        # Explain the log-probability, not the raw logit: softmax ignores a shift shared by
        # all logits, so a single logit's weights can be large and cancel out, and its
        # attributions would then credit features the prediction does not depend on.
        def log_prob(inputs: torch.Tensor) -> torch.Tensor:
            return torch.log_softmax(model(inputs), dim=1)

        attr = IntegratedGradients(log_prob).attribute(
            x, baselines=base, target=target, n_steps=n_steps, internal_batch_size=4096
        )
    finally:
        model.train(was_training)
    return attr.detach().cpu().numpy()


def deletion_curve(
    model: nn.Module,
    X: Any,
    y: Any,
    attributions: Any,
    steps: int = 10,
    baseline: Any = None,
) -> list[float]:
    """Accuracy as each example's most-attributed features are deleted, step by step.

    Features are ranked per example by signed attribution (most evidence for the explained
    class first) and set to ``baseline`` (zeros by default, as in :func:`integrated_gradients`).
    Entry ``k`` of the ``steps + 1`` values is the accuracy with ``round(k / steps * d)`` of
    the ``d`` features deleted. Attributions that find what the model uses make it fall fast;
    compare with random attributions via :func:`curve_area`.
    """
    import torch

    n_steps = _check_steps(steps)
    x, _ = _forward_setup(model, X)
    n = len(x)
    flat = x.reshape(n, -1)
    d = flat.shape[1]
    attr = np.asarray(attributions, dtype=np.float64)
    if attr.shape != tuple(x.shape):
        raise ParameterError(
            f"attributions must have the shape of X {tuple(x.shape)}, got {attr.shape}. Pass "
            "the output of integrated_gradients(model, X)."
        )
    labels = torch.as_tensor(np.asarray(y).reshape(-1), device=x.device)
    if len(labels) != n:
        raise ParameterError(f"y must have one label per row of X ({n}), got {len(labels)}.")
    order = torch.as_tensor(np.argsort(-attr.reshape(n, -1), axis=1, kind="stable")).to(x.device)
    base = (
        torch.zeros_like(flat)
        if baseline is None
        else torch.as_tensor(np.asarray(baseline, dtype=np.float32), device=x.device)
        .expand_as(x)
        .reshape(n, -1)
    )
    was_training = model.training
    model.eval()
    curve: list[float] = []
    try:
        with torch.no_grad():
            for k in range(n_steps + 1):
                m = round(k * d / n_steps)
                masked = flat.clone()
                if m:
                    idx = order[:, :m]
                    masked.scatter_(1, idx, base.gather(1, idx))
                pred = model(masked.reshape(x.shape)).argmax(dim=1)
                curve.append(float((pred == labels).float().mean()))
    finally:
        model.train(was_training)
    return curve


def curve_area(curve: Sequence[float]) -> float:
    """Area under a curve sampled at evenly spaced points of [0, 1] (trapezoids)."""
    c = np.asarray(curve, dtype=np.float64)
    if len(c) < 2:
        return float(c[0]) if len(c) else math.nan
    return float(np.mean((c[1:] + c[:-1]) / 2))


# --- the promotion gate ------------------------------------------------------


# --- runs --------------------------------------------------------------------


def load_run_model(run_ref: str | Path, root: Path | None = None) -> tuple[nn.Module, Dataset]:
    """Rebuild a recorded run's model from its weights and reload the exact data it used.

    The data comes from the run's parameters (``dataset``, ``data_seed`` and any synthetic
    options), so the test split is the one the run never trained on.
    """
    from safetensors.torch import load_file

    run_dir = find_run(run_ref, root)
    spec = read_json(run_dir / BUILD)
    weights = run_dir / WEIGHTS
    if not spec or not weights.exists():
        raise StateError(
            f"Run {run_dir.name} saved no model ({BUILD} and {WEIGHTS}), so there "
            "is nothing to evaluate. Evaluate a run of templates/classify.ipynb, or pass no "
            "run to train a small model in the evaluation itself."
        )
    dataset = _run_dataset(run_dir)
    net = build_model(
        spec,
        load_file(str(weights)),
        what=f"run {run_dir.name}",
        fix="Run it again to save weights and model.json together.",
        notebook=(read_json(run_dir / PARAMS_FILE, {}) or {}).get("notebook"),
    )
    return net, dataset


def _run_dataset(run_dir: Path, *, check: bool = True) -> Dataset:
    """The dataset a run trained on, rebuilt from its recorded parameters."""

    params = (read_json(run_dir / PARAMS_FILE, {}) or {}).get("parameters", {})
    name = params.get("dataset")
    if not name:
        raise StateError(
            f"Run {run_dir.name} records no 'dataset' parameter, so its test split cannot be "
            "rebuilt. Evaluate a run of a template that takes -p dataset."
        )
    dataset = load_data(name, params, check=check)
    recorded = ((read_json(run_dir / LINEAGE_FILE, {}) or {}).get("data") or {}).get("version")
    if recorded and dataset.version != recorded:
        # Other rows would grade the model on data it may have trained on, or never saw.
        raise StateError(
            f"The data of run {run_dir.name} has changed: it trained on version {recorded}, "
            f"and {name} now loads as version {dataset.version}. Restore the data the run "
            "used, or evaluate a new run on the data as it is."
        )
    if dataset.task != "classification":
        raise StateError(
            f"Run {run_dir.name} is {dataset.task} on '{name}'; evaluation covers classifiers "
            "(group rates, calibration). Evaluate a run of templates/classify.ipynb."
        )
    return dataset


def tables(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The report's tables as rows, for W&B: every mapping of name to a dict of values.

    ``{"fairness": {"groups": {"0": {...}, "1": {...}}}}`` becomes
    ``{"fairness/groups": [{"name": "0", ...}, {"name": "1", ...}]}``; lists of dicts
    are kept as they are.
    """
    out: dict[str, list[dict[str, Any]]] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out[prefix] = list(value)
        elif isinstance(value, dict) and value:
            if all(isinstance(v, dict) for v in value.values()) and all(
                not isinstance(x, dict | list) for v in value.values() for x in v.values()
            ):
                out[prefix] = [{"name": str(k), **v} for k, v in value.items()]
            else:
                for key, sub in value.items():
                    visit(f"{prefix}/{key}" if prefix else str(key), sub)

    visit("", report)
    return out


def promotion_gate(result: Mapping[str, Any], bounds: Mapping[str, Any]) -> list[str]:
    """Check an evaluation's result against a model's bounds; return the violations.

    ``bounds`` maps a result key to a number (an upper bound, as for gaps and calibration
    error) or to ``{"max": x}``, ``{"min": y}`` or both (``{"min": 0.9}`` for accuracy). A
    metric missing from the result, or not a finite number, is a violation too: a gate that
    passes what it cannot see is no gate. An empty list means the model may be promoted.
    """
    violations: list[str] = []
    for metric, bound in bounds.items():
        low, high = _bound(metric, bound)
        shown = _bound_text(low, high)
        if metric not in result:
            violations.append(
                f"{metric} is missing from the evaluation result, so it cannot be checked "
                f"against {shown}. Evaluate the model first: mlkit evaluate RUN."
            )
            continue
        value = result[metric]
        if (
            not isinstance(value, numbers.Real)
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            violations.append(f"{metric} = {value!r} is not a finite number ({shown}).")
        elif high is not None and value > high:
            violations.append(f"{metric} = {value:.4g} exceeds its bound: at most {high:.4g}.")
        elif low is not None and value < low:
            violations.append(f"{metric} = {value:.4g} is below its bound: at least {low:.4g}.")
    return violations


def _bound(metric: str, bound: Any) -> tuple[float | None, float | None]:
    def number(value: Any) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)

    if number(bound):
        return None, float(bound)
    if (
        isinstance(bound, Mapping)
        and bound
        and set(bound) <= {"min", "max"}
        and all(number(v) for v in bound.values())
    ):
        low, high = bound.get("min"), bound.get("max")
        return (None if low is None else float(low)), (None if high is None else float(high))
    raise ParameterError(
        f"The bound for {metric!r} must be a number (an upper bound) or a mapping with 'min' "
        f"and/or 'max' numbers. Got {bound!r} instead. Pass {{{metric!r}: 0.1}}."
    )


def _bound_text(low: float | None, high: float | None) -> str:
    parts = []
    if low is not None:
        parts.append(f"at least {low:.4g}")
    if high is not None:
        parts.append(f"at most {high:.4g}")
    return "bound: " + " and ".join(parts)
