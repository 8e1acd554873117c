"""The widget explorer: tune a notebook by hand in JupyterLab, every run a trial.

``Explorer(notebook, space)`` builds one control per parameter of the notebook's
parameters cell (ranges and log scale from the search space, else from the
parameter's rule), runs the notebook with the chosen values on a warm kernel in
the background, draws its learning curves live, and records every run as a
trial, tagged ``manual``, of one Optuna study. "Sweep N more" asks the study's
sampler for more trials, so hand tuning and search share one table and one best.

Each trial is asked and run by the sweep driver (``mlkit.sweep.driver``), as a sweep's
are; its hooks name the run record as it starts and carry a Cancel. The parts:
``panel`` (the widgets: the only module that imports ipywidgets), ``jobs`` (the one
worker thread that runs trials, and what Cancel reaches), ``live`` (the running trial's
curves), ``table`` (trials as rows and the runs table), ``plots`` (PNG pictures) and
``domains`` (what each control can take).
"""

from mlkit.explore.jobs import CANCEL_REASON, shutdown
from mlkit.explore.panel import CSS, ExploreError, Explorer
from mlkit.explore.plots import curves_png

__all__ = ["CANCEL_REASON", "CSS", "ExploreError", "Explorer", "curves_png", "shutdown"]
