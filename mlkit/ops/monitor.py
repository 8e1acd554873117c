"""Drift monitoring: is the traffic a served model sees still like the data it was trained on?

The statistics are pure functions of arrays, so they are tested without a server:

- numeric features: the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``);
- categorical features: a chi-squared test of the category counts, reference vs current;
- every feature: the population stability index (PSI) over 10 quantile bins of the reference;
- predictions: chi-squared on the predicted classes (classification) or KS on the predicted
  values (regression), current vs the model's predictions on the reference data.

Per-feature p-values are corrected with **Holm's step-down method**, which bounds the
family-wise error rate (the chance that *any* feature of undrifted traffic is flagged) at
``alpha`` under any dependence between the tests. That is the rate a scheduler acting on the
exit code cares about (one false alarm is one needless page or rollback), and features of real
data are correlated, where Benjamini-Hochberg's false-discovery guarantee needs extra
assumptions. The prediction test is a second family at ``alpha``, so a monitor run raises a
false alarm with probability at most ``2 * alpha``.

``window_from_log`` reads the latest accepted (status 200, role primary) examples of a model
from its prediction log; ``monitor`` executes ``templates/monitor.ipynb`` as a recorded run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlkit._contract import OUTPUT_NOTEBOOK, TEMPLATES_DIR
from mlkit._io import write_text
from mlkit.errors import MlkitError, ParameterError
from mlkit.ops.log_examples import newest_examples
from mlkit.ops.stats import holm, labels_test, psi
from mlkit.registry import store
from mlkit.run import runner
from mlkit.serve.predlog import PredictionLog
from mlkit.sweep.report import to_html

__all__ = [
    "DEFAULT_ALPHA",
    "MonitorError",
    "Window",
    "feature_drift",
    "monitor",
    "prediction_drift",
    "window_from_log",
]

DEFAULT_ALPHA = 0.01
TEMPLATE = TEMPLATES_DIR / "monitor.ipynb"


# Kept importable under its earlier name; raised as ParameterError.
MonitorError = ParameterError


# --- statistics ---------------------------------------------------------------------


def _as_2d(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim > 2:
        arr = arr.reshape(len(arr), -1)  # images: one feature per pixel
    if arr.ndim != 2 or len(arr) < 2:
        raise ParameterError(
            f"The {what} data must hold at least 2 rows of features, got shape {np.shape(x)}. "
            "Pass more rows (a larger --window, or more logged traffic)."
        )
    if not np.isfinite(arr).all():
        raise ParameterError(f"The {what} data has NaN or inf values; drop or impute them first.")
    return arr


def feature_drift(
    reference: np.ndarray,
    current: np.ndarray,
    *,
    names: Sequence[str] | None = None,
    categorical: Sequence[str | int] = (),
    alpha: float = DEFAULT_ALPHA,
) -> list[dict[str, Any]]:
    """One row per feature: test, statistic, p-value, Holm-adjusted p-value, PSI, drifted.

    ``reference`` and ``current`` are (n, d) arrays (more dimensions are flattened);
    ``categorical`` names (or indexes) the columns compared by chi-squared, the rest by KS.
    ``drifted`` is ``p_adjusted < alpha``.
    """
    ref = _as_2d(reference, "reference")
    cur = _as_2d(current, "current")
    d = ref.shape[1]
    if cur.shape[1] != d:
        raise ParameterError(
            f"Reference has {d} features but the current window has {cur.shape[1]}: they come "
            "from different models or input shapes. Monitor the model the traffic was sent to."
        )
    names = [f"x{i}" for i in range(d)] if names is None else [str(n) for n in names]
    if len(names) != d:
        raise ParameterError(f"{len(names)} feature names for {d} features; pass one per column.")
    if not 0 < alpha < 1:
        raise ParameterError(f"alpha must be in (0, 1), got {alpha}. Pass --alpha 0.01.")
    cats = {names[c] if isinstance(c, int) else str(c) for c in categorical}
    unknown = cats - set(names)
    if unknown:
        raise ParameterError(f"Unknown categorical feature(s): {', '.join(sorted(unknown))}.")
    from scipy.stats import ks_2samp

    rows: list[dict[str, Any]] = []
    for j, name in enumerate(names):
        a, b = ref[:, j], cur[:, j]
        if name in cats:
            stat, p, index = labels_test(a, b)
            test = "chi2"
        else:
            if np.ptp(a) == 0 and np.ptp(b) == 0 and a[0] == b[0]:
                stat, p = 0.0, 1.0  # the same constant on both sides
            else:
                res = ks_2samp(a, b, method="asymp")
                stat, p = float(res.statistic), float(res.pvalue)
            index = psi(a, b)
            test = "ks"
        rows.append(
            {
                "feature": name,
                "test": test,
                "statistic": stat,
                "p_value": p,
                "psi": index,
                "reference_mean": float(a.mean()),
                "current_mean": float(b.mean()),
            }
        )
    adjusted = holm([r["p_value"] for r in rows])
    for row, p_adj in zip(rows, adjusted, strict=True):
        row["p_adjusted"] = float(p_adj)
        row["drifted"] = bool(p_adj < alpha)
    return rows


def prediction_drift(
    reference: Sequence[Any] | np.ndarray,
    current: Sequence[Any] | np.ndarray,
    *,
    task: str = "classification",
    alpha: float = DEFAULT_ALPHA,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Predicted classes (chi-squared) or values (KS), current vs reference, at ``alpha``.

    ``class_names`` (by class index) names the classes in ``shares``; without them, or for a
    class past their end, the class is named by its index.
    """
    ref = np.asarray(reference)
    cur = np.asarray(current)
    if len(ref) < 2 or len(cur) < 2:
        raise ParameterError("Prediction drift needs at least 2 predictions on each side.")
    if task == "classification":
        stat, p, index = labels_test(ref, cur)
        classes = sorted(set(ref.tolist()) | set(cur.tolist()))
        names = list(class_names or [])
        shares = {
            (names[c] if isinstance(c, int) and 0 <= c < len(names) else str(c)): {
                "reference": float(np.mean(ref == c)),
                "current": float(np.mean(cur == c)),
            }
            for c in classes
        }
        out: dict[str, Any] = {"test": "chi2", "shares": shares}
    elif task == "regression":
        from scipy.stats import ks_2samp

        res = ks_2samp(ref.astype(float), cur.astype(float), method="asymp")
        stat, p, index = float(res.statistic), float(res.pvalue), psi(ref, cur)
        out = {
            "test": "ks",
            "reference_mean": float(ref.mean()),
            "current_mean": float(cur.mean()),
        }
    else:
        raise ParameterError(f"task must be classification or regression, got {task!r}.")
    out.update(statistic=stat, p_value=p, psi=index, drifted=bool(p < alpha))
    return out


# --- the current window from the prediction log --------------------------------------


class Window:
    """The examples of a window of the prediction log: flat inputs, predictions, versions."""

    def __init__(self, X: np.ndarray, predictions: list[Any], versions: list[int]) -> None:
        self.X = X
        self.predictions = predictions
        self.versions = versions

    def __len__(self) -> int:
        return len(self.X)

    def __repr__(self) -> str:
        return f"Window({len(self)} examples, versions {sorted(set(self.versions))})"


def _log_url(log: str | Path) -> str:
    text = str(log)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).resolve()}"


def window_from_log(
    log: str | Path,
    name: str,
    *,
    last: int = 1000,
    raw_to_inputs: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Window:
    """The ``last`` examples the model ``name`` answered (status 200, role primary).

    ``log`` is a ``sqlite:///PATH`` or ``postgresql://`` URL or a path of a SQLite file.
    A request with a batch contributes one example per input; predictions are class indexes
    (classification) or values (regression). Requests that sent raw features
    (``raw_input(s)``) are scaled with ``raw_to_inputs`` (``LoadedModel.raw_to_inputs``), so
    the window is in the model's input space like its reference; without it they are skipped.
    """

    if not isinstance(last, int) or isinstance(last, bool) or last < 2:
        raise ParameterError(f"The window must be an int >= 2, got {last!r}. Pass --window 1000.")
    url = _log_url(log)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        raise ParameterError(
            f"No prediction log at {url[len('sqlite:///') :]}: serve the model first "
            f"(mlkit serve {name}) or pass --log URL."
        )
    plog = PredictionLog(url)
    try:
        rows = plog.rows(model=name, status=200, role="primary")
    finally:
        plog.close()

    def inputs_of(body: dict[str, Any]) -> list[Any]:
        if body.get("input") is not None or body.get("inputs") is not None:
            return [body["input"]] if body.get("input") is not None else body["inputs"]
        if raw_to_inputs is not None and (body.get("raw_input") or body.get("raw_inputs")):
            raw = [body["raw_input"]] if body.get("raw_input") is not None else body["raw_inputs"]
            try:
                return raw_to_inputs(np.asarray(raw, dtype=np.float32)).tolist()
            except MlkitError:
                return []  # no recorded scaling: never guess it
        return []

    inputs, preds, versions = newest_examples(rows, last, inputs_of)
    if len(inputs) < 2:
        raise ParameterError(
            f"The prediction log {plog.shown_url} holds {len(inputs)} answered example(s) of "
            f"model {name!r}; the monitor needs at least 2. Send traffic first."
        )
    X = np.asarray(inputs, dtype=float).reshape(len(inputs), -1)
    return Window(X, preds, versions)


# --- the recorded run ------------------------------------------------------------


def monitor(
    name: str,
    ref: str = "production",
    *,
    window: int = 1000,
    alpha: float = DEFAULT_ALPHA,
    log: str | None = None,
    params: dict[str, Any] | None = None,
    from_cli: bool = False,
    tracking: str | None = None,
    progress: bool = False,
    root: Path | None = None,
) -> dict[str, Any]:
    """Execute ``templates/monitor.ipynb`` for model ``name`` and return the run's record.

    ``name`` empty runs the notebook's built-in demo (digits_flat: train as reference, test as
    the window, ``params={"shift": 1.0}`` shifts one feature). The record's result holds
    ``drift/detected`` (1 when any feature or the predictions drifted); ``drift.json`` in the
    record holds the table and ``report.html`` the executed notebook as a page (``html``).
    """

    if name:
        store.resolve(name, ref, root)  # unknown model or alias: refused before a kernel
    given: dict[str, Any] = {
        "model": name,
        "alias": ref,
        "window": window,
        "alpha": alpha,
        "log": log or "",
    }
    clash = sorted(set(params or {}) & set(given))
    if clash:
        raise ParameterError(
            f"Pass {', '.join(clash)} as NAME[:ALIAS], --window, --alpha or --log, not as -p."
        )
    given.update(params or {})
    experiment = f"monitor-{name}" if name else "monitor-demo"
    info = runner.run(
        TEMPLATE,
        given,
        experiment=experiment,
        from_cli=from_cli,
        tracking=tracking,
        progress=progress,
        job_type="monitor",
        root=root,
    )
    output = Path(info["path"]) / OUTPUT_NOTEBOOK
    if output.exists():  # the page to send to whoever acts on the alarm
        page = Path(info["path"]) / "report.html"
        write_text(page, to_html(output))
        info["html"] = str(page)
    return info
