"""What a sweep found: counts by state, the best trial, its parameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mlkit._io import redact
from mlkit.errors import ParameterError
from mlkit.storage import load_study


@dataclass
class Summary:
    study: str
    storage: str
    n_complete: int
    n_pruned: int
    n_failed: int
    best: dict[str, Any] | None
    pareto: list[dict[str, Any]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _counts(study: Any) -> dict[str, int]:
    from optuna.trial import TrialState

    counts = {"complete": 0, "pruned": 0, "fail": 0, "running": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif t.state == TrialState.PRUNED:
            counts["pruned"] += 1
        elif t.state == TrialState.FAIL and not t.user_attrs.get("reaped"):
            counts["fail"] += 1
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
    study = load_study(url, name)
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
        name,
        redact(url),
        counts["complete"],
        counts["pruned"],
        counts["fail"],
        best,
        pareto,
        seconds,
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
    """The best trial's full parameters (fixed ones and its seed included), for ``mlkit run -f``."""
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
    if trial.user_attrs.get("seed") is not None and "seed" not in out:
        out["seed"] = trial.user_attrs["seed"]
    return out
