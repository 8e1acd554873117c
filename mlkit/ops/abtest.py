"""A/B test report: the served variants of a model compared on labelled traffic.

``mlkit serve --ab NAME:a=0.9,NAME:b=0.1`` logs which variant answered each request (the
prediction log's ``variant`` column). ``mlkit abtest report NAME --labels FILE`` joins those rows
with true labels by request id and, per variant, gives the number of labelled examples, the
accuracy (or error rate) with its 95% Wilson interval, and a two-sided two-proportion z-test
of each variant against the first (the control).

Without ``--labels`` the report uses the labels stored with ``mlkit feedback`` in the prediction
log's ``feedback`` table (the newest label of each request id).

Labels file: CSV with a header ``request_id,label``, or JSON, either an object
``{"<request_id>": label}`` or a list of ``{"request_id": ..., "label": ...}``. A label is the
class name or the class index; for a batch request it is a list, one per example. Only
classification models can be scored this way.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlkit.errors import NotFoundError, ParameterError
from mlkit.ops.stats import two_proportion_test, wilson_interval
from mlkit.serve import predlog

__all__ = [
    "ArmStats",
    "compare",
    "correct",
    "count",
    "format_table",
    "load_labels",
    "paired",
    "report",
    "two_proportion_test",
    "wilson_interval",
]


# Kept importable under its earlier name; raised as ParameterError.
AbTestError = ParameterError


@dataclass
class ArmStats:
    """One variant's row of the report."""

    variant: str
    version: int | None
    n: int
    successes: int
    rate: float
    low: float
    high: float
    z: float | None  # against the control; None for the control itself
    p_value: float | None


def compare(
    counts: Sequence[tuple[str, int | None, int, int]], metric: str = "accuracy"
) -> list[ArmStats]:
    """Per variant ``(variant, version, n, correct)``: rate, Wilson CI and test vs. the first.

    ``metric`` is ``accuracy`` (correct / n) or ``error_rate`` (wrong / n).
    """
    if metric not in ("accuracy", "error_rate"):
        raise ParameterError(f"--metric must be accuracy or error_rate, got {metric!r}.")
    out: list[ArmStats] = []
    control: tuple[int, int] | None = None
    for variant, version, n, correct in counts:
        k = correct if metric == "accuracy" else n - correct
        low, high = wilson_interval(k, n)
        if control is None:
            control, z, p = (k, n), None, None
        else:
            z, p = two_proportion_test(control[0], control[1], k, n)
        out.append(ArmStats(variant, version, n, k, k / n if n else math.nan, low, high, z, p))
    return out


def load_labels(path: Path) -> dict[str, Any]:
    """request id -> label from a CSV (``request_id,label``) or JSON file (see the module)."""
    if not path.is_file():
        raise NotFoundError(f"Labels file {str(path)!r} does not exist.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParameterError(f"Labels file {str(path)!r} is not valid JSON: {exc}") from None
        if isinstance(data, dict):
            return {str(k): v for k, v in data.items()}
        if isinstance(data, list) and all(
            isinstance(d, dict) and "request_id" in d and "label" in d for d in data
        ):
            return {str(d["request_id"]): d["label"] for d in data}
        raise ParameterError(
            f"Labels file {str(path)!r} must hold an object {{request_id: label}} or a list of "
            '{"request_id": ..., "label": ...}.'
        )
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not {"request_id", "label"} <= set(reader.fieldnames):
        raise ParameterError(
            f"Labels file {str(path)!r} must be CSV with a header request_id,label (or .json)."
        )
    return {row["request_id"]: row["label"] for row in reader}


def correct(prediction: Any, label: Any) -> bool:
    """Whether a logged classification answer matches the label (class name or index)."""
    if not isinstance(prediction, dict) or "class" not in prediction:
        raise ParameterError(
            "The logged predictions have no class: abtest report scores classification models."
        )
    return str(label) in (str(prediction["class"]), str(prediction.get("index")))


def paired(row: dict[str, Any], label: Any) -> tuple[list[Any], list[Any]]:
    """An answered log row's predictions and its label(s), one list entry per example."""
    output = json.loads(row["output"])
    preds = [output["prediction"]] if "prediction" in output else output["predictions"]
    return preds, label if isinstance(label, list) else [label]


def count(rows: Sequence[dict[str, Any]], labels: dict[str, Any]) -> dict[str, list[int]]:
    """variant -> [version, labelled examples, correct] over answered, labelled primary rows."""
    out: dict[str, list[int]] = {}
    for row in rows:
        rid, variant = row.get("request_id"), row.get("variant")
        if row.get("role") != "primary" or row.get("status") != 200 or variant is None:
            continue
        if rid not in labels or not row.get("output"):
            continue
        preds, truth = paired(row, labels[rid])
        if len(truth) != len(preds):
            raise ParameterError(
                f"Request {rid} has {len(preds)} predictions but {len(truth)} labels; give a "
                "list of one label per example for batch requests."
            )
        entry = out.setdefault(str(variant), [int(row["version"]), 0, 0])
        entry[1] += len(preds)
        entry[2] += sum(correct(p, t) for p, t in zip(preds, truth, strict=True))
    return out


def report(
    name: str,
    labels_path: Path | None = None,
    *,
    log_url: str | None = None,
    metric: str = "accuracy",
    control: str | None = None,
    root: Path | None = None,
) -> list[ArmStats]:
    """Join model ``name``'s prediction log with the labels and compare its variants.

    ``control`` is the variant the others are tested against; default the lowest version.
    Without ``labels_path`` the labels are those stored by ``mlkit feedback``.
    """

    labels = load_labels(labels_path) if labels_path is not None else None
    log = predlog.open_log(name, log_url, root)
    try:
        if labels is None:
            labels = log.feedback()
            if not labels:
                raise ParameterError(
                    f"No feedback stored for {name!r} in {log.shown_url}: store labels with "
                    "mlkit feedback NAME --labels FILE, or pass --labels FILE."
                )
        rows = log.rows(role="primary", status=200)
    finally:
        log.close()
    counts = count(rows, labels)
    if not counts:
        raise ParameterError(
            f"No labelled A/B rows for {name!r} in {log.shown_url}: serve with --ab and give "
            "labels for the request ids it logged."
        )
    order = sorted(counts, key=lambda v: (v != control, counts[v][0], v))
    if control is not None and control not in counts:
        raise ParameterError(
            f"--control {control!r} has no labelled rows; variants: {', '.join(order)}."
        )
    return compare([(v, *counts[v]) for v in order], metric)


def format_table(stats: Sequence[ArmStats], metric: str = "accuracy") -> str:
    """The report as a plain text table."""
    head = f"{'variant':<16} {'version':>7} {'n':>7} {metric:>10} {'95% CI':>17} {'z':>7} {'p':>9}"
    lines = [head, "-" * len(head)]
    for s in stats:
        version = f"v{s.version}" if s.version is not None else "-"
        ci = f"[{s.low:.3f}, {s.high:.3f}]"
        z = "control" if s.z is None else f"{s.z:.2f}"
        p = "" if s.p_value is None else f"{s.p_value:.3g}"
        lines.append(
            f"{s.variant:<16} {version:>7} {s.n:>7} {s.rate:>10.4f} {ci:>17} {z:>7} {p:>9}"
        )
    return "\n".join(lines)
