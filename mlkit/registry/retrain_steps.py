"""The optional steps of a retrain: a short sweep around the parent, evidence, an evaluation.

:func:`plan_sweep` and :func:`run_sweep` make ``mlkit retrain --sweep N``: a few trials of the
parent's notebook on the new data, searching the parent's own space (the space its study
recorded, when the parent run was a sweep trial) or a ``--space`` file, every other parameter
fixed at the parent's value (its ``seed`` and ``data_seed`` among them, so trials differ only
by what is searched). The best trial's run is the one registered.

:func:`split_traffic` picks the labelled production records that grade the candidate, and
keeps them out of its training table. :func:`evaluate_candidate` runs ``mlkit evaluate`` on
the candidate's run, so the promotion gate has the numbers its bounds ask about.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlkit._contract import LINEAGE_FILE, RESULT_FILE, RUN_FILE
from mlkit._io import read_json, write_json
from mlkit.errors import CheckFailedError, NotFoundError, ParameterError, PromotionBlockedError
from mlkit.record_store import RunRecord, load_run
from mlkit.registry import evaluation
from mlkit.registry.aliases import promote
from mlkit.storage import find_storage, load_study
from mlkit.sweep import config, driver
from mlkit.sweep import space as spaces

__all__ = [
    "TRAFFIC_ROWS",
    "check_sensitive",
    "evaluate_candidate",
    "plan_sweep",
    "point_alias",
    "run_sweep",
    "split_traffic",
]

# The newest labelled records that grade a candidate: recent enough to be today's traffic,
# many enough for a narrow interval.
TRAFFIC_ROWS = 1000
# With --labels-from-log the same records also train; this share of them, the newest, is
# held out of training so the candidate is never graded on rows it learned.
HELD_OUT_SHARE = 0.2


def plan_sweep(
    parent: Any,
    given: dict[str, Any],
    trials: int,
    space: str | None,
    *,
    experiment: str | None = None,
    root: Path | None = None,
    tracking: str | None = None,
) -> config.SweepConfig:
    """The sweep around ``parent``, checked whole before any trial runs; nothing is written.

    Args:
        parent: the :class:`mlkit.registry.retrain.Parent` being retrained.
        given: the parent's parameters with the overrides and the new ``dataset``; those not
            searched are fixed for every trial.
        trials: how many trials (at least 1).
        space: a search-space file; default the space of the parent's study.
        experiment: the study's name (its trials' experiment); default a fresh name.
        root: experiments folder.
        tracking: W&B mode of the trials.

    Raises:
        ParameterError: ``trials`` below 1, or no space: the parent was no sweep trial (or
            its study is gone) and ``space`` was not given.
    """
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ParameterError(f"--sweep must be a number of trials >= 1, got {trials!r}. Pass 3.")
    meta = {} if space else _parent_study(parent, root)
    dims = spaces.load(space) if space else spaces.parse(_space_mapping(meta["space"]))
    names = {d.name for d in dims}
    fixed = {k: v for k, v in given.items() if k not in names}
    objective = _objective(parent, meta)
    study = experiment or (
        f"{parent.name}-retrain-v{parent.version}-{time.strftime('%Y%m%d-%H%M%S')}-"
        f"{secrets.token_hex(2)}"
    )
    seed = given.get("seed")
    with tempfile.TemporaryDirectory() as tmp:
        # prepare() reads a file; the study records the space itself once it is created.
        path = Path(tmp) / "space.yaml"
        write_json(path, {d.name: d.to_dict() for d in dims})  # JSON is YAML
        return config.prepare(
            parent.notebook,
            path,
            study=study,
            n_trials=trials,
            sampler=meta.get("sampler") or "tpe",
            pruner=meta.get("pruner") or "median",
            objectives=[objective],
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else 0,
            fixed=fixed,
            from_cli=True,
            tracking=tracking,
            root=root,
        )


def _parent_study(parent: Any, root: Path | None) -> dict[str, Any]:
    """What the parent run's study recorded (space, objectives, sampler), or ParameterError."""
    study = (read_json(parent.run_dir / RUN_FILE, {}) or {}).get("study")
    what = f"{parent.name} v{parent.version} (run {parent.run_id})"
    if not study:
        raise ParameterError(
            f"--sweep needs a search space: {what} was not a trial of a sweep, so there is no "
            "study's space to search again. Pass --space FILE (a search-space YAML file)."
        )
    try:
        loaded = load_study(find_storage(study, root), study)
    except (NotFoundError, KeyError):
        loaded = None
    meta = dict(loaded.user_attrs.get("mlkit") or {}) if loaded is not None else {}
    if not meta.get("space"):
        raise ParameterError(
            f"--sweep needs a search space: {what} was a trial of study {study!r}, which is not "
            "found under the experiments folder (or recorded no space). Pass --space FILE."
        )
    if len(meta.get("objectives") or []) == 1:
        direction = loaded.direction.name.lower()  # type: ignore[union-attr]
        meta["objective"] = f"{meta['objectives'][0]}:{direction[:3]}"
    return meta


def _space_mapping(recorded: list[dict[str, Any]]) -> dict[str, Any]:
    """A study's recorded space (a list of dimensions) as a space file's mapping."""
    return {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in recorded}


def _objective(parent: Any, meta: dict[str, Any]) -> str:
    """The parent study's objective, else the validation metric the parent's run reported."""
    if meta.get("objective"):
        return meta["objective"]
    result = read_json(parent.run_dir / RESULT_FILE, {}) or {}
    for metric in ("val/accuracy:max", "val/loss:min"):
        if metric.split(":")[0] in result:
            return metric
    raise ParameterError(
        f"--sweep needs a metric to choose the best trial by, and run {parent.run_id} reported "
        f"neither val/accuracy nor val/loss (it has: {', '.join(result) or 'nothing'}). Retrain "
        "without --sweep."
    )


def run_sweep(
    cfg: config.SweepConfig, parent_entry: dict[str, Any], *, progress: bool = True
) -> tuple[dict[str, Any], RunRecord | None]:
    """Run the sweep; name the parent in each trial's lineage.

    Returns:
        ``(summary, best run's record)``: the summary as :class:`mlkit.sweep.Summary` gives
        it, with ``space``, ``fixed`` and ``objective``; the record is None when no trial
        completed.
    """
    summary = driver.run(cfg, progress=progress)
    study = load_study(cfg.storage, cfg.study)
    for trial in study.trials:
        path = trial.user_attrs.get("run_path")
        lineage = Path(path) / LINEAGE_FILE if path else None
        if lineage is not None and lineage.is_file():
            # Read back by the card at registration, as a plain retrain's run writes it.
            write_json(lineage, {**(read_json(lineage, {}) or {}), "parent": parent_entry})
    out = {
        **summary.to_dict(),
        "space": cfg.space,
        "objective": f"{cfg.objectives[0]} ({cfg.directions[0]})",
    }
    best = summary.best
    record = load_run(Path(best["run_path"])) if best and best.get("run_path") else None
    return out, record


def split_traffic(
    records: Sequence[dict[str, Any]], *, trains_too: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(records to train on, records that grade)``, from labelled records oldest first.

    The newest :data:`TRAFFIC_ROWS` grade. When the records also train (``trains_too``),
    the newest :data:`HELD_OUT_SHARE` of them (at least one, at most ``TRAFFIC_ROWS``) grade
    and only the older ones train.
    """
    records = list(records)
    if not trains_too:
        return [], records[-TRAFFIC_ROWS:]
    held = min(TRAFFIC_ROWS, max(1, round(len(records) * HELD_OUT_SHARE)))
    return records[:-held], records[-held:]


def point_alias(
    run: dict[str, Any],
    name: str,
    number: int,
    alias: str,
    reason: str,
    *,
    keep_going: bool,
    root: Path | None,
    tracking: Any,
) -> str | None:
    """Point ``alias`` at the new version; None, or (``keep_going``) why it did not move.

    Raises:
        PromotionBlockedError: the model's bounds kept the alias from moving, and not
            ``keep_going`` (the comparison that follows says the same to production).
    """
    try:
        promote(name, number, alias, reason=reason, root=root, tracking=tracking)
    except PromotionBlockedError as exc:
        if keep_going:
            return f"{alias!r} did not move to {name} v{number}: {exc}"
        raise PromotionBlockedError(
            f"Run {run['id']} is registered as {name} v{number}; {alias!r} did not move. {exc} "
            f"Or evaluate it first (mlkit evaluate {run['id']}), then: mlkit model promote "
            f"{name} v{number} --alias {alias}",
            exc.violations,
        ) from None
    return None


def check_sensitive(parent: Any, sensitive: str | None) -> None:
    """Refuse, before any run, a ``--sensitive`` column the parent's table does not have."""
    if sensitive and sensitive not in parent.columns:
        raise ParameterError(
            f"--sensitive {sensitive} is not a column of {parent.name} v{parent.version}'s "
            f"table (columns: {', '.join(parent.columns)}). Pass one of them."
        )


def evaluate_candidate(
    run: RunRecord,
    *,
    sensitive: str | None = None,
    root: Path | None = None,
    tracking: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """``mlkit evaluate`` on the candidate's run: the record the promotion gate reads.

    Raises:
        CheckFailedError: the evaluation did not complete (its record says why).
    """
    record = evaluation.evaluate_run(
        run["path"], sensitive=sensitive, root=root, tracking=tracking, progress=progress
    )
    if record.get("status") != "completed":
        raise CheckFailedError(
            f"The evaluation of the candidate's run {run['id']} ({record.get('id')}) is "
            f"{record.get('status')!r}: {record.get('reason') or 'see its record'}. Look at it "
            f"with: mlkit show {record.get('id')}"
        )
    return {"id": record["id"], "path": record["path"], "result": record.get("result") or {}}
