"""Evaluating a run or a registered model: the evaluate template, run as a recorded run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlkit._contract import REGISTRY_FILE, RUN_FILE, TEMPLATES_DIR
from mlkit._io import read_json
from mlkit.errors import RunNotFoundError
from mlkit.evaluate import _run_dataset
from mlkit.record_store import RunRecord, find_run, list_runs
from mlkit.registry import store
from mlkit.run import runner

EXPERIMENT = "evaluate"


TEMPLATE = "evaluate.ipynb"


def template_path() -> Path:
    """``templates/evaluate.ipynb`` beside the package."""
    return TEMPLATES_DIR / TEMPLATE


def resolve_run(ref: str | Path, root: Path | None = None) -> Path:
    """A run id, prefix or folder, or a registered model: ``NAME``, ``NAME:alias``, ``NAME:v3``.

    A model resolves to the run its version was registered from, so an evaluation of a
    model is found again by the promotion gate.
    """

    try:
        return find_run(ref, root)
    except RunNotFoundError:
        name, _, version_ref = str(ref).partition(":")
        if not (store.model_dir(name, root) / REGISTRY_FILE).exists():
            raise RunNotFoundError(
                f"No run and no registered model {str(ref)!r}. Pass a run id (mlkit runs) or "
                "a model as NAME:alias (mlkit model list)."
            ) from None
    number = store.resolve(name, version_ref or "latest", root)
    entry = next(v for v in store.show(name, root)["versions"] if v["version"] == number)
    run_dir = find_run(entry["run_id"], root)
    if not read_json(run_dir / RUN_FILE):
        raise RunNotFoundError(f"The run of {name} v{number} ({entry['run_id']}) has no record.")
    return run_dir


def evaluate_run(
    run_ref: str | Path,
    *,
    sensitive: str | None = None,
    params: Mapping[str, Any] | None = None,
    root: Path | None = None,
    tracking: str | None = None,
    progress: bool = False,
    engine: str = "papermill",
    cell_timeout: float | None = None,
) -> RunRecord:
    """Execute ``templates/evaluate.ipynb`` on a recorded run; return the evaluation's record.

    The evaluation is a run of its own under experiment ``evaluate`` whose run.json names the
    evaluated run (``evaluates``), so :func:`find_evaluation` and the registry's gate find it.
    ``params`` sets more template parameters (``ig_steps``, ``bins``, ...).
    """

    run_dir = resolve_run(run_ref, root)
    given: dict[str, Any] = {**(params or {}), "run": str(run_dir)}
    if sensitive:
        # Fail before a record or a kernel exists, naming the columns there are.
        _run_dataset(run_dir, check=False).groups(sensitive)
        given["sensitive"] = sensitive
    return runner.run(
        template_path(),
        given,
        experiment=EXPERIMENT,
        job_type="evaluate",
        extra={"evaluates": run_dir.name},
        root=root,
        tracking=tracking,
        progress=progress,
        engine=engine,
        cell_timeout=cell_timeout,
    )


def find_evaluation(run_ref: str | Path, root: Path | None = None) -> RunRecord | None:
    """The newest completed evaluation of a run (its record), or None when there is none."""

    run_id = find_run(run_ref, root).name
    for record in list_runs(EXPERIMENT, root):  # newest first
        if record.get("evaluates") == run_id and record.get("status") == "completed":
            return record
    return None
