"""The explorer's pictures as PNG bytes: learning curves of runs, and Optuna's study plots.

PNG bytes rather than figures, because they are drawn on the worker thread and shown by an
image widget: nothing here may touch the notebook's display or pyplot's current figure.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

# optuna's matplotlib plots go through pyplot, whose figure registry is global.
_PYPLOT_LOCK = threading.Lock()

# The study plots: title -> (optuna.visualization.matplotlib function, completed trials needed).
STUDY_PLOTS = {
    "history": ("plot_optimization_history", 1),
    "importances": ("plot_param_importances", 2),
    "parallel coordinates": ("plot_parallel_coordinate", 2),
}


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return buffer.getvalue()


def curves_png(histories: dict[str, list[dict[str, Any]]], title: str = "") -> bytes:
    """Loss curves (left) and other validation metrics (right) of several runs, as PNG.

    Uses a bare ``Figure`` rather than pyplot: it is drawn on the worker thread, and
    pyplot's figure registry would leak it into whichever cell finishes next.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    # Constrained layout keeps the suptitle clear of the axes' own titles; the padding
    # (inches) leaves a visible gap between them, not two lines of text touching.
    figure = Figure(figsize=(9, 3.3), layout="constrained")
    figure.get_layout_engine().set(h_pad=0.12)
    FigureCanvasAgg(figure)
    ax_loss, ax_metric = figure.subplots(1, 2)
    drawn = False
    for index, (label, rows) in enumerate(histories.items()):
        color = f"C{index % 10}"
        x = [r.get("epoch", r.get("step")) for r in rows]
        # Only losses and validation metrics: lr and seconds would flatten the axes.
        keys = sorted({k for r in rows for k in r if k.endswith("loss") or k.startswith("val/")})
        for key in keys:
            y = [r.get(key) for r in rows]
            if not any(isinstance(v, int | float) for v in y):
                continue
            ax = ax_loss if key.endswith("loss") else ax_metric
            style = "-" if key.startswith("train/") else "--"
            ax.plot(x, y, style, color=color, label=f"{label} {key}", marker=".")
            drawn = True
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss (train solid, val dashed)")
    ax_metric.set(xlabel="epoch", title="Validation metrics")
    for ax in (ax_loss, ax_metric):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
        if ax.lines:
            ax.legend(fontsize=7)
    if not drawn:
        ax_loss.text(0.5, 0.5, "no epochs logged yet", ha="center", transform=ax_loss.transAxes)
    if title:
        figure.suptitle(title, fontweight="bold")
    return _png(figure)


def optuna_png(plot: Callable[..., Any], study: Any, **kwargs: Any) -> bytes:
    """One of ``optuna.visualization.matplotlib``'s plots of ``study``, as PNG."""
    import warnings

    import matplotlib.pyplot as plt

    with _PYPLOT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = plot(study, **kwargs)
        figure = (result.flat[0] if hasattr(result, "flat") else result).figure
        try:
            return _png(figure)
        finally:
            plt.close(figure)


def study_plots(study: Any, complete: int) -> dict[str, bytes | str]:
    """Each study plot by title: its PNG, or a sentence saying why it is not drawn yet.

    Args:
        study: the Optuna study.
        complete: how many of its trials are COMPLETE.
    """
    from optuna.visualization import matplotlib as ovm

    out: dict[str, bytes | str] = {}
    for title, (name, needed) in STUDY_PLOTS.items():
        if len(study.directions) > 1:
            out[title] = "plots need a single objective"
        elif complete < needed:
            out[title] = f"{title} needs {needed} completed trials, have {complete}"
        else:
            try:
                out[title] = optuna_png(getattr(ovm, name), study)
            except Exception as exc:  # too few distinct values, a constant parameter...
                out[title] = f"{title}: {exc}"
    return out
