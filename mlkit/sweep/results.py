"""What a sweep found: counts by state, the best trial, its parameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mlkit._io import redact
from mlkit.errors import ParameterError, UsageError
from mlkit.run.params import read_signature
from mlkit.storage import load_study


@dataclass
class Summary:
    """The end of a sweep in numbers.

    ``n_failed`` counts trials whose notebook failed; ``n_reaped`` those failed because their
    worker died or went silent (see ``driver.reap_stale``): the notebook is not to blame, a
    first reap queues the parameters again, and they do not count against the trial budget.
    """

    study: str
    storage: str
    n_complete: int
    n_pruned: int
    n_failed: int
    n_reaped: int
    best: dict[str, Any] | None
    pareto: list[dict[str, Any]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def headline(self) -> str:
        """One line: the study, its trials by outcome, the time taken and the storage."""
        reaped = f", {self.n_reaped} reaped (worker gone)" if self.n_reaped else ""
        return (
            f"study {self.study}: {self.n_complete} complete, {self.n_pruned} pruned, "
            f"{self.n_failed} failed{reaped} in {self.seconds:.0f}s  (storage {self.storage})"
        )


def _counts(study: Any) -> dict[str, int]:
    from optuna.trial import TrialState

    counts = {"complete": 0, "pruned": 0, "fail": 0, "reaped": 0, "running": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif t.state == TrialState.PRUNED:
            counts["pruned"] += 1
        elif t.state == TrialState.FAIL:
            counts["reaped" if t.user_attrs.get("reaped") else "fail"] += 1
        elif t.state == TrialState.RUNNING:
            counts["running"] += 1
    return counts


def _best_text(study: Any) -> str:
    try:
        if len(study.directions) > 1:
            return f"{len(study.best_trials)} on the Pareto front"
        return f"{study.best_value:.4f}"
    except ValueError:
        return "-"


def summarize(name: str, url: str, seconds: float = 0.0) -> Summary:
    """Counts, the best trial (or the Pareto front) and where its record is."""
    return summarize_study(load_study(url, name), url, seconds)


def summarize_study(study: Any, url: str, seconds: float = 0.0) -> Summary:
    """:func:`summarize` for a study already loaded from the storage at ``url``."""
    name = study.study_name
    counts = _counts(study)
    best, pareto = None, []
    try:
        if len(study.directions) == 1:
            best = _trial_dict(study.best_trial)
        else:
            pareto = [_trial_dict(t) for t in study.best_trials]
    except ValueError:
        pass
    return Summary(
        study=name,
        storage=redact(url),
        n_complete=counts["complete"],
        n_pruned=counts["pruned"],
        n_failed=counts["fail"],
        n_reaped=counts["reaped"],
        best=best,
        pareto=pareto,
        seconds=seconds,
    )


def _trial_dict(trial: Any) -> dict[str, Any]:
    return {
        "number": trial.number,
        "values": trial.values,
        "params": trial.params,
        "seed": trial.user_attrs.get("seed"),
        "run_id": trial.user_attrs.get("run_id"),
        "run_path": trial.user_attrs.get("run_path"),
        "result": trial.user_attrs.get("result", {}),
    }


def best_params(name: str, url: str) -> dict[str, Any]:
    """The best trial's full parameters, for ``mlkit run -f``.

    Fixed parameters and the searched ones, and the trial's seed when the notebook
    declares a ``seed`` parameter (the driver passes it only then).
    """
    study = load_study(url, name)
    try:
        trial = study.best_trial
    except ValueError:
        raise ParameterError(f"Study {name!r} has no completed trial yet.") from None
    except RuntimeError:
        raise ParameterError(
            f"Study {name!r} has two objectives: pick a trial from the Pareto front "
            "(mlkit sweep report) instead."
        ) from None
    meta = study.user_attrs.get("mlkit", {})
    out = dict(meta.get("fixed", {}))
    out.update(trial.params)
    seed = trial.user_attrs.get("seed")
    if seed is not None and "seed" not in out and _takes_seed(meta.get("notebook")):
        out["seed"] = seed
    return out


def _takes_seed(notebook: str | None) -> bool:
    """Whether the swept notebook declares ``seed``: ``mlkit run -f`` refuses unknown names.

    A notebook that cannot be read (moved since the sweep) counts as taking one: an
    unknown ``seed`` fails loudly when run, a dropped one would silently run another seed.
    """
    if not notebook:
        return True
    try:
        return "seed" in read_signature(notebook).names
    except UsageError:
        return True
