"""A sweep's settings, checked once before anything is written: ``prepare`` makes them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlkit._io import redact
from mlkit.errors import ParameterError
from mlkit.record_store import check_experiment_name, experiments_root
from mlkit.run import params as _params
from mlkit.storage import PRUNERS, _journal_path, default_storage, open_storage
from mlkit.sweep import space as _space

SAMPLERS = ("tpe", "random", "grid", "cmaes", "qmc", "nsga2")


MINIMIZE_HINTS = ("loss", "error", "rmse", "mae", "mse", "time")


@dataclass
class SweepConfig:
    """Everything a worker needs; JSON-able so spawned workers get it whole."""

    notebook: str
    study: str
    storage: str
    space: list[dict[str, Any]]
    objectives: list[str]
    directions: list[str]
    n_trials: int = 20
    timeout: float | None = None
    jobs: int = 1
    sampler: str = "tpe"
    pruner: str = "median"
    trial_timeout: float | None = None
    seed: int = 0
    fixed: dict[str, Any] = field(default_factory=dict)
    tracking: str | None = None
    root: str | None = None
    engine: str = "warm"
    started: float = 0.0

    def dims(self) -> list[_space.Dim]:
        return _space.parse({d["name"]: _dim_spec(d) for d in self.space}, "the study's space")


def _dim_spec(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "name"}


def parse_objective(text: str) -> tuple[str, str]:
    """``val/accuracy``, ``val/loss:min`` or ``val/accuracy:maximize`` -> (metric, direction)."""
    metric, _, direction = text.partition(":")
    metric = metric.strip()
    if not metric:
        raise ParameterError(
            f"--objective {text!r} names no metric. Pass --objective val/accuracy."
        )
    direction = direction.strip().lower()
    if not direction:
        lowered = metric.lower()
        direction = "minimize" if any(h in lowered for h in MINIMIZE_HINTS) else "maximize"
    aliases = {"min": "minimize", "max": "maximize", "minimize": "minimize", "maximize": "maximize"}
    if direction not in aliases:
        raise ParameterError(
            f"--objective {text!r}: direction must be min or max, got {direction!r}. "
            "Pass --objective val/loss:min."
        )
    return metric, aliases[direction]


def make_sampler(name: str, seed: int, dims: list[_space.Dim], n_objectives: int) -> Any:
    import warnings

    import optuna

    # multivariate/group TPE is "experimental" in Optuna, and the right choice for
    # conditional spaces; the warning would print once per worker.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, n_startup_trials=6
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(_space.grid(dims), seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ParameterError(f"Unknown sampler {name!r}. Valid: {', '.join(SAMPLERS)}.")


def prepare(
    notebook: str | Path,
    space_path: str | Path,
    *,
    study: str | None = None,
    n_trials: int = 20,
    timeout: float | None = None,
    jobs: int = 1,
    storage: str | None = None,
    sampler: str = "tpe",
    pruner: str = "median",
    objectives: list[str] | None = None,
    trial_timeout: float | None = None,
    seed: int = 0,
    fixed: dict[str, Any] | None = None,
    from_cli: bool = False,
    tracking: str | None = None,
    root: Path | None = None,
    engine: str = "warm",
) -> SweepConfig:
    """Check everything that can be checked before a trial runs; nothing is written."""

    signature = _params.read_signature(notebook)
    dims = _space.load(space_path)
    _space.check_against(dims, signature, str(space_path))
    fixed = _params.validate(fixed or {}, signature, from_cli=from_cli)
    overlap = sorted(set(fixed) & {d.name for d in dims})
    if overlap:
        raise ParameterError(
            f"Parameter '{overlap[0]}' is both fixed with -p and searched in {space_path}. "
            "Drop one of them."
        )
    for name, value, low in (("--trials", n_trials, 1), ("--jobs", jobs, 1)):
        if not isinstance(value, int) or value < low:
            raise ParameterError(f"{name} must be an int >= {low}, got {value!r}.")
    for name, value in (("--timeout", timeout), ("--trial-timeout", trial_timeout)):
        if value is not None and not value > 0:
            raise ParameterError(f"{name} must be a number of seconds > 0, got {value!r}.")
    if engine not in ("warm", "papermill"):
        raise ParameterError(f"Unknown engine {engine!r}. Valid: warm, papermill.")
    if sampler not in SAMPLERS:
        raise ParameterError(f"Unknown sampler {sampler!r}. Valid: {', '.join(SAMPLERS)}.")
    if pruner not in PRUNERS:
        raise ParameterError(f"Unknown pruner {pruner!r}. Valid: {', '.join(PRUNERS)}.")
    parsed = [parse_objective(o) for o in (objectives or ["val/accuracy"])]
    if len(parsed) > 2:
        raise ParameterError("At most two objectives (a Pareto front of two metrics).")
    if len(parsed) == 2 and pruner != "none":
        pruner = "none"  # Optuna cannot prune multi-objective studies
    if sampler == "grid":
        _space.grid(dims)
    name = study or f"{Path(notebook).stem}-sweep"
    check_experiment_name(name)
    root = root or experiments_root()
    url = storage or default_storage(name, root)
    if _journal_path(url) is None and "://" not in url:
        raise ParameterError(f"Storage {redact(url)!r} is not understood.")
    return SweepConfig(
        notebook=str(notebook),
        study=name,
        storage=url,
        space=[{"name": d.name, **d.to_dict()} for d in dims],
        objectives=[m for m, _ in parsed],
        directions=[d for _, d in parsed],
        n_trials=n_trials,
        timeout=timeout,
        jobs=jobs,
        sampler=sampler,
        pruner=pruner,
        trial_timeout=trial_timeout,
        seed=seed,
        fixed=fixed,
        tracking=tracking,
        root=str(root),
        engine=engine,
    )


def _create_or_resume(cfg: SweepConfig) -> Any:
    """Create the study, or resume it when the same notebook, space and objectives match."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(cfg.storage)
    study = optuna.create_study(
        study_name=cfg.study,
        storage=storage,
        directions=cfg.directions,
        load_if_exists=True,
    )
    attrs = study.user_attrs
    identity = {
        "notebook": cfg.notebook,
        "space": cfg.space,
        "objectives": cfg.objectives,
        "fixed": cfg.fixed,
    }
    if "mlkit" not in attrs:
        study.set_user_attr(
            "mlkit", {**identity, "sampler": cfg.sampler, "pruner": cfg.pruner, "seed": cfg.seed}
        )
    else:
        old = attrs["mlkit"]
        for key, value in identity.items():
            if old.get(key) != json.loads(json.dumps(value)):
                raise ParameterError(
                    f"Study {cfg.study!r} already exists with a different {key} "
                    f"({old.get(key)!r}). Resume it with the same settings, or pass "
                    f"--study NEW_NAME."
                )
    if list(study.directions) != [
        optuna.study.StudyDirection.MINIMIZE
        if d == "minimize"
        else optuna.study.StudyDirection.MAXIMIZE
        for d in cfg.directions
    ]:
        raise ParameterError(
            f"Study {cfg.study!r} exists with other directions; use a new --study."
        )
    return study
