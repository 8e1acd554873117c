"""A sweep's settings, checked once before anything is written: ``prepare`` makes them.

Samplers, and how no two drivers draw the same points (a second driver on the study, a
resumed one, another job of ``--jobs N``):

- each worker seeds its sampler with ``sampler_seed``: the first worker of a fresh study
  takes ``--seed`` itself, so one driver with one job draws the same points for the same
  seed on any machine; every other worker takes a seat in the study (counted under the ask
  lock) and mixes it, its host, process and index into the seed. Grid and QMC keep
  ``--seed`` everywhere: they map one shared sequence onto trial slots.
- TPE and random redraw a point that is already in the study (a trial in any state, or a
  point waiting in the queue) instead of running it again. Redrawing costs nothing, where
  the other way, telling the repeat FAIL as "duplicate of trial #N", would spend a trial of
  the budget on it. A reaped trial's retry is enqueued, so it never meets the sampler and
  runs as documented in ``driver``. A point is drawn whole on the trial's first
  suggestion, checked, and redrawn before any of it is stored; when ``REDRAWS`` redraws
  by the sampler and as many at random are all taken, the space is about spent and the
  point runs again (a small finite space wants ``--sampler grid``). A point is drawn,
  checked and stored under the study's ask lock, so two workers drawing at the same
  instant never both run it (the journal, SQLite and PostgreSQL have that lock; on other
  databases they still can).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlkit._io import redact
from mlkit.errors import ParameterError
from mlkit.record_store import check_experiment_name, experiments_root
from mlkit.run import params as _params
from mlkit.storage import PRUNERS, _journal_path, ask_lock, default_storage, open_storage
from mlkit.sweep import space as _space

SAMPLERS = ("tpe", "random", "grid", "cmaes", "qmc", "nsga2")
SHARED_SEED = ("grid", "qmc")  # samplers whose workers must all take --seed
SEATS_ATTR = "mlkit:sampler_seats"  # study system attr: workers seeded so far
REDRAWS = 20  # tries at an unused point, with the sampler, then as many at random


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
    """The Optuna sampler called ``name``; TPE and random ones never repeat a study's point.

    Args:
        name: one of ``SAMPLERS``.
        seed: the sampler's seed; a sweep's worker takes it from ``sampler_seed``.
        dims: the search space, which tells when a drawn point is whole.
        n_objectives: how many objectives the study has.
    """
    import warnings

    import optuna

    # multivariate/group TPE is "experimental" in Optuna, and the right choice for
    # conditional spaces; the warning would print once per worker.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # The fallback draws its own stream: TPE's start-up draws come from RandomSampler(seed).
    fallback = optuna.samplers.RandomSampler(seed=seed + 1)
    if name == "tpe":
        tpe = optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, n_startup_trials=6
        )
        return _Unrepeated(tpe, dims, fallback)
    if name == "random":
        return _Unrepeated(optuna.samplers.RandomSampler(seed=seed), dims, fallback)
    if name == "grid":
        return optuna.samplers.GridSampler(_space.grid(dims), seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ParameterError(f"Unknown sampler {name!r}. Valid: {', '.join(SAMPLERS)}.")


def sampler_seed(cfg: SweepConfig, study: Any, index: int = 0) -> int:
    """The seed of one worker's sampler: ``--seed`` for the first, a seed of its own for others.

    Samplers that draw at random draw the same points from the same seed and history, so
    each worker takes a seat in the study under the ask lock. The first seat of a fresh
    study (no trials yet) takes ``cfg.seed`` as it is; any other mixes in its seat, host,
    process id and ``index``, so a resumed driver, a second driver or another job draws a
    sequence of its own. Grid and QMC workers all take ``cfg.seed``.
    """
    if cfg.sampler in SHARED_SEED:
        return cfg.seed
    storage, study_id = study._storage, study._study_id
    with ask_lock(cfg.storage, cfg.study):
        seat = int(storage.get_study_system_attrs(study_id).get(SEATS_ATTR, 0))
        storage.set_study_system_attr(study_id, SEATS_ATTR, seat + 1)
        fresh = seat == 0 and not study.get_trials(deepcopy=False)
    if fresh:
        return cfg.seed
    mix = json.dumps([cfg.seed, seat, socket.gethostname(), os.getpid(), index])
    return int(hashlib.sha256(mix.encode()).hexdigest()[:8], 16) % (2**31 - 1)


class _Unrepeated:
    """An Optuna sampler that draws whole points, and redraws one the study already has.

    On a trial's first suggestion Optuna asks for its relative parameters; this sampler
    answers with the whole point, drawn as the sampler it wraps would draw it (its
    relative draw, then one dimension at a time in the space's order, skipping inactive
    ones), so a taken point can be redrawn whole before any of it is stored.
    """

    def __init__(self, inner: Any, dims: list[_space.Dim], fallback: Any) -> None:
        self._inner = inner
        self._dims = dims
        self._fallback = fallback
        self._space = _distributions(dims)
        self._inner_space: dict[int, dict[str, Any]] = {}  # trial number -> inner's space

    def __getattr__(self, name: str) -> Any:  # reseed_rng and the rest of Optuna's sampler API
        if name.startswith("__") or name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __str__(self) -> str:
        return str(self._inner)

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        self._inner_space[trial.number] = self._inner.infer_relative_search_space(study, trial)
        return self._space

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> Any:
        inner_space = self._inner_space.pop(trial.number, {})
        point = self._draw(self._inner, study, trial, inner_space)
        for sampler in [self._inner] * REDRAWS + [self._fallback] * REDRAWS:
            if self._twin(study, trial, point) is None:
                return point
            point = self._draw(sampler, study, trial, inner_space)
        return point  # every redraw is taken too: this corner of the space is spent

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        return self._inner.sample_independent(study, trial, name, distribution)

    def before_trial(self, study: Any, trial: Any) -> None:
        self._inner.before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self._inner_space.pop(trial.number, None)
        self._inner.after_trial(study, trial, state, values)

    def _draw(
        self, sampler: Any, study: Any, trial: Any, inner_space: dict[str, Any]
    ) -> dict[str, Any]:
        """One whole point, as ``_space.suggest`` would get it from ``sampler``."""
        fixed = trial.system_attrs.get("fixed_params") or {}  # an enqueued point's values
        relative = sampler.sample_relative(study, trial, inner_space)
        point: dict[str, Any] = {}
        for dim in self._dims:
            if not dim.active(point):
                continue
            distribution = self._space[dim.name]
            if dim.name in fixed:
                point[dim.name] = fixed[dim.name]
            elif distribution.single():  # Optuna sets it without asking the sampler
                point[dim.name] = dim.choices[0] if dim.kind == "categorical" else dim.low
            elif dim.name in relative:
                point[dim.name] = relative[dim.name]
            else:
                point[dim.name] = sampler.sample_independent(study, trial, dim.name, distribution)
        return point

    def _twin(self, study: Any, trial: Any, point: dict[str, Any]) -> int | None:
        """The number of another trial, run or queued, with this point; None if none."""
        for other in study.get_trials(deepcopy=False):
            queued = other.system_attrs.get("fixed_params") or {}
            if other.number != trial.number and point in (other.params, queued):
                return other.number
        return None


def _distributions(dims: list[_space.Dim]) -> dict[str, Any]:
    """Each dimension as the Optuna distribution ``_space.suggest`` asks for."""
    from optuna import distributions as d

    out: dict[str, Any] = {}
    for dim in dims:
        if dim.kind == "categorical":
            out[dim.name] = d.CategoricalDistribution(list(dim.choices))
        elif dim.kind == "int":
            step = int(dim.step or 1)
            out[dim.name] = d.IntDistribution(int(dim.low), int(dim.high), log=dim.log, step=step)
        else:
            out[dim.name] = d.FloatDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
    return out


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
