"""Model registry: named, numbered versions of run models, with aliases and model cards.

Layout, under ``experiments/registry/<name>/``::

    registry.json        versions, aliases, every alias move, the promotion bounds and the
                         rollback policy (the source of truth)
    guard.jsonl          every check of the rollback guard (mlkit.guard), one line each
    .lock                fcntl lock: one registration or alias move at a time
    v1/, v2/, ...        model.safetensors, model.json, card.json, card.md
    predictions.sqlite   the server's prediction log (mlkit.predlog)

A version is a copy of a completed run's weights, never a link: deleting or re-running the run
leaves the served model unchanged, and the card's sha256 proves the weights are the ones
registered. Weights load without pickle (safetensors); a legacy ``.pt``/``.pth``/``.bin``/
``.pkl`` file loads only with ``torch.load(weights_only=True)``, which refuses pickled code.

Promotion gate: a model may carry bounds on evaluation metrics (:func:`set_bounds`, for
example ``fairness/demographic_parity_difference`` at most 0.1). :func:`promote` then checks the
newest completed evaluation of the version's run (``mlkit evaluate RUN``) against them and
refuses (:class:`PromotionBlockedError`) unless forced with a reason, which the alias history
keeps beside the violations it overrode.

W&B is a projection, as everywhere in mlkit: each registration and promotion is logged as a
``model`` artifact (offline by default), and a W&B failure never undoes a registration.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlkit.errors import MlkitError
from mlkit.record import experiments_root, find_run, load_run, now_iso, read_json, write_json

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "LoadedModel",
    "ModelNotFoundError",
    "PromotionBlockedError",
    "RegistryError",
    "UnsafeModelError",
    "alias_since",
    "check_weights_only_env",
    "format_bound",
    "gate",
    "get_bounds",
    "get_policy",
    "is_pinned",
    "list_models",
    "load_model",
    "parse_bound",
    "promote",
    "register",
    "register_best",
    "resolve",
    "rollback",
    "set_bounds",
    "set_policy",
    "show",
    "task_of",
]

WEIGHTS = "model.safetensors"
BUILD = "model.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl")
DEFAULT_ALIAS = "production"
_VERSION_RE = re.compile(r"^v?(\d+)$")
_FALSE = ("0", "n", "no", "false")
_TRUE = ("1", "y", "yes", "true")


class RegistryError(MlkitError, ValueError):
    """A registry request cannot be done as asked (bad name, unknown alias, ...)."""


class ModelNotFoundError(MlkitError, FileNotFoundError):
    """No registered model, version or weights file matches."""


class UnsafeModelError(MlkitError, ValueError):
    """A checkpoint would need pickle (arbitrary code) to load, or the environment allows it."""


class PromotionBlockedError(RegistryError):
    """The version's evaluation breaks the model's bounds; ``violations`` lists how."""

    def __init__(self, message: str, violations: list[str]) -> None:
        super().__init__(message)
        self.violations = violations


# --- where models live ----------------------------------------------------------


def registry_root(root: Path | None = None) -> Path:
    return (root or experiments_root()) / "registry"


def check_model_name(name: str) -> str:
    ok = bool(name) and all(c.isalnum() or c in "-_." for c in name) and not name.startswith(".")
    if not ok:
        raise RegistryError(
            f"Model name {name!r} must be letters, digits, '-', '_' or '.', and not start with "
            "'.'. Pass --name digits-mlp, for example."
        )
    return name


def check_alias(alias: str) -> str:
    ok = bool(alias) and all(c.isalnum() or c in "-_" for c in alias)
    if not ok or _VERSION_RE.match(alias) or alias == "latest":
        raise RegistryError(
            f"Alias {alias!r} must be letters, digits, '-' or '_', and neither 'latest' nor a "
            "version like 'v3' (those are resolved already). Pass --alias production."
        )
    return alias


def model_dir(name: str, root: Path | None = None) -> Path:
    return registry_root(root) / check_model_name(name)


def _read(name: str, root: Path | None = None) -> dict[str, Any]:
    data = read_json(model_dir(name, root) / "registry.json")
    if data is None:
        raise ModelNotFoundError(
            f"No registered model {name!r} under {registry_root(root)}. List models with: "
            f"mlkit model list, or register one with: mlkit model register RUN --name {name}"
        )
    return data


@contextlib.contextmanager
def _locked(name: str, root: Path | None = None) -> Iterator[Path]:
    """Hold the model's lock: read-modify-write of registry.json is one step for everyone."""
    folder = model_dir(name, root)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- register -----------------------------------------------------------------


def _check_run(run_dir: Path) -> dict[str, Any]:
    info = load_run(run_dir)
    missing = [f for f in (WEIGHTS, BUILD, "result.json") if not (run_dir / f).exists()]
    if info.get("status") != "completed" or "result.json" in missing:
        raise RegistryError(
            f"Run {info['id']} is {info.get('status', 'unknown')!r}, not completed; only a "
            "completed run (result.json written) can be registered. Check it with: mlkit show "
            f"{info['id']}"
        )
    if missing:
        raise RegistryError(
            f"Run {info['id']} has no {' or '.join(missing)}: nothing to register. Save the "
            "model in the notebook with run.save_model(model, name=..., build=...)."
        )
    build = read_json(run_dir / BUILD) or {}
    if not isinstance(build.get("name"), str) or not isinstance(build.get("build"), dict):
        raise RegistryError(
            f"{run_dir / BUILD} must hold {{'name': ..., 'build': {{...}}}}; got {build!r}. "
            "Re-save the model with run.save_model."
        )
    return info


def _data_details(lineage: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Class and feature names (and regression target units) from the run's own data.

    The record keeps only the data's name and version; reloading it with the run's split seed
    and checking the version gives the names the server shows, and no guess when they differ.
    """
    spec = dict(lineage.get("data") or {})
    if not spec.get("name"):
        return spec
    from mlkit import data as mdata

    kwargs = {k: params[k] for k in ("n_samples", "n_features", "noise") if k in params}
    seed = params.get("data_seed", params.get("seed", 0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = mdata.load(spec["name"], seed=seed, check=False, **kwargs)
    except Exception as exc:  # a dataset this mlkit no longer has: the card says so
        spec["details"] = f"not reloaded: {exc}"
        return spec
    if ds.version != spec.get("version"):
        spec["details"] = f"not verified: reloading gave version {ds.version}"
        return spec
    spec.update(
        class_names=list(ds.class_names),
        feature_names=list(ds.feature_names),
        target_mean=ds.target_mean,
        target_std=ds.target_std,
        # How raw features become the model's inputs; None: they are used as they are.
        feature_scaling=None
        if ds.feature_mean is None
        else {"mean": ds.feature_mean, "std": ds.feature_std},
        settings=ds.settings,
        verified=True,
    )
    return spec


def _card(name: str, number: int, run_dir: Path, info: dict[str, Any], sha: str) -> dict[str, Any]:
    lineage = read_json(run_dir / "lineage.json", {}) or {}
    params = info.get("params") or {}
    git = lineage.get("git") or {}
    notebook = run_dir / "output.ipynb"
    return {
        "name": name,
        "version": number,
        "created": now_iso(),
        "model": read_json(run_dir / BUILD),
        "parameters": params,
        "metrics": info.get("result") or {},
        "data": _data_details(lineage, params),
        "lineage": {
            "notebook": info.get("notebook") or lineage.get("notebook"),
            "notebook_sha256": lineage.get("notebook_sha256"),
            "git_commit": git.get("commit"),
            "git_dirty": git.get("dirty"),
            "packages_sha256": lineage.get("packages_sha256"),
            "python": lineage.get("python"),
            "torch": lineage.get("torch"),
            "mlkit": lineage.get("mlkit"),
            "seed": lineage.get("seed"),
            "device": lineage.get("device"),
            "host": lineage.get("host"),
        },
        "run": {
            "id": info["id"],
            "experiment": info.get("experiment"),
            "path": str(run_dir),
            "executed_notebook": str(notebook) if notebook.exists() else None,
            "study": info.get("study"),
            "trial": info.get("trial"),
        },
        "weights": {"file": WEIGHTS, "sha256": sha, "bytes": (run_dir / WEIGHTS).stat().st_size},
    }


def _card_md(card: dict[str, Any]) -> str:
    """The card for people: what the model is, how good, from what, how to reproduce."""
    data = card["data"]
    run = card["run"]
    lin = card["lineage"]
    lines = [
        f"# {card['name']} v{card['version']}",
        "",
        f"Registered {card['created']} from run `{run['id']}` (experiment `{run['experiment']}`"
        + (f", study `{run['study']}` trial {run['trial']}" if run.get("study") else "")
        + ").",
        "",
        "## Model",
        "",
        f"- architecture: `{card['model']['name']}` {card['model']['build']}",
        f"- weights: `{WEIGHTS}`, sha256 `{card['weights']['sha256']}`",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "| --- | --- |",
        *[
            f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in card["metrics"].items()
        ],
        "",
        "## Data",
        "",
        f"- dataset: `{data.get('name')}` ({data.get('task')}), version `{data.get('version')}`",
        f"- sizes: {data.get('sizes')}",
        f"- inputs: shape {data.get('input_shape')}, scaled as `mlkit.data.load` scales them"
        + (
            "; the server also takes raw features (`raw_input`) and scales them the same way"
            if "feature_scaling" in data
            else ""
        ),
        "",
        "## Parameters",
        "",
        *[f"- `{k}` = `{v!r}`" for k, v in card["parameters"].items()],
        "",
        "## Lineage",
        "",
        f"- notebook: `{lin.get('notebook')}` (sha256 `{lin.get('notebook_sha256')}`)",
        f"- executed notebook: `{run.get('executed_notebook')}`",
        f"- git: `{lin.get('git_commit')}`" + (" (dirty)" if lin.get("git_dirty") else ""),
        f"- python {lin.get('python')}, torch {lin.get('torch')}, mlkit {lin.get('mlkit')}, "
        f"seed {lin.get('seed')}, device {lin.get('device')}",
        f"- reproduce: `mlkit reproduce {run['id']}`",
        "",
    ]
    return "\n".join(lines)


def _version_entry(card: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": card["version"],
        "created": card["created"],
        "run_id": card["run"]["id"],
        "sha256": card["weights"]["sha256"],
        "model": card["model"]["name"],
        "metrics": {k: v for k, v in card["metrics"].items() if k.startswith("test/")},
    }


def register(
    run_ref: str | Path, name: str, *, root: Path | None = None, tracking: str | None = None
) -> dict[str, Any]:
    """Copy a completed run's model into the registry as the next version of ``name``.

    The version directory is built under a temporary name and renamed into place, then
    registry.json is rewritten atomically, both under the model's lock: two registrations at
    once get distinct versions, and a crash leaves either no version or a whole one.

    Returns:
        The version entry of registry.json (version, run id, sha256, test metrics) plus
        ``path``, the version directory.
    """
    from mlkit.lineage import sha256_file

    check_model_name(name)
    run_dir = find_run(run_ref, root)
    info = _check_run(run_dir)
    sha = sha256_file(run_dir / WEIGHTS)
    card = _card(name, 0, run_dir, info, sha)  # outside the lock: it reloads the data
    with _locked(name, root) as folder:
        reg = read_json(folder / "registry.json") or {
            "name": name,
            "versions": [],
            "aliases": {},
            "alias_history": {},
        }
        number = max((v["version"] for v in reg["versions"]), default=0) + 1
        target = folder / f"v{number}"
        if target.exists():  # a crash after the rename, before registry.json: never listed
            shutil.rmtree(target)
        for stale in folder.glob(".v*.tmp-*"):  # a crash while staging; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        staging = folder / f".v{number}.tmp-{secrets.token_hex(3)}"
        staging.mkdir()
        try:
            shutil.copyfile(run_dir / WEIGHTS, staging / WEIGHTS)
            shutil.copyfile(run_dir / BUILD, staging / BUILD)
            if sha256_file(staging / WEIGHTS) != sha:
                raise RegistryError(
                    f"The weights of run {info['id']} changed while they were copied. Register "
                    "again once nothing writes to the run."
                )
            card.update(version=number, created=now_iso())
            write_json(staging / "card.json", card)
            (staging / "card.md").write_text(_card_md(card), encoding="utf-8")
            _fsync_tree(staging)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        entry = _version_entry(card)
        reg["versions"].append(entry)
        write_json(folder / "registry.json", reg)
    log_wandb_artifact(name, number, target, aliases=(), job_type="register", tracking=tracking)
    return {**entry, "path": str(target)}


def register_best(
    study: str,
    name: str,
    *,
    storage: str | None = None,
    root: Path | None = None,
    tracking: str | None = None,
) -> dict[str, Any]:
    """Register the run of a study's best trial (single objective)."""
    from mlkit import sweep

    url = sweep.find_storage(study, root=root, storage=storage)
    loaded = sweep.load_study(url, study)
    try:
        trial = loaded.best_trial
    except ValueError:
        raise RegistryError(
            f"Study {study!r} has no completed trial yet. Run more trials: mlkit sweep ..."
        ) from None
    except RuntimeError:
        raise RegistryError(
            f"Study {study!r} has two objectives: pick a run from the Pareto front (mlkit sweep "
            f"report {study}) and pass it: mlkit model register RUN --name {name}"
        ) from None
    run_path = trial.user_attrs.get("run_path") or trial.user_attrs.get("run_id")
    if not run_path:
        raise RegistryError(
            f"The best trial #{trial.number} of study {study!r} names no run record "
            "(user attribute run_path). Register its run by id: mlkit model register RUN ..."
        )
    return register(run_path, name, root=root, tracking=tracking)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- promotion bounds -----------------------------------------------------------

_BOUND_RE = re.compile(r"^\s*([^<>=\s]+)\s*(>=|<=|=)\s*(\S+)\s*$")


def parse_bound(text: str) -> tuple[str, str, float]:
    """``METRIC=0.1`` or ``METRIC<=0.1`` (at most) and ``METRIC>=0.9`` (at least).

    Returns:
        ``(metric, "max" or "min", value)``.
    """
    match = _BOUND_RE.match(text)
    value = None
    if match:
        try:
            value = float(match.group(3))
        except ValueError:
            value = None
    if not match or value is None or not math.isfinite(value):
        raise RegistryError(
            f"Bound {text!r} must be METRIC=NUMBER (at most) or METRIC>=NUMBER (at least). Pass "
            "--set fairness/demographic_parity_difference=0.1 or --set test/accuracy>=0.9."
        )
    return match.group(1), ("min" if match.group(2) == ">=" else "max"), value


def _bound_value(bound: dict[str, float]) -> float | dict[str, float]:
    """The stored form promotion_gate reads: a plain number for an upper bound alone."""
    return bound["max"] if set(bound) == {"max"} else dict(bound)


def format_bound(bound: Any) -> str:
    """``0.1`` -> ``"<= 0.1"``; ``{"min": 0.9}`` -> ``">= 0.9"``; a range shows both."""
    if isinstance(bound, dict):
        parts = [f"{op} {bound[k]:g}" for k, op in (("min", ">="), ("max", "<=")) if k in bound]
        return " and ".join(parts)
    return f"<= {bound:g}"


def get_bounds(name: str, root: Path | None = None) -> dict[str, Any]:
    """The model's promotion bounds: ``{metric: max}`` or ``{metric: {"min": .., "max": ..}}``."""
    return dict(_read(name, root).get("bounds") or {})


def set_bounds(
    name: str,
    bounds: list[str] | tuple[str, ...] = (),
    *,
    clear: bool = False,
    root: Path | None = None,
) -> dict[str, Any]:
    """Set (``METRIC=VALUE``, ``METRIC>=VALUE``) or clear the model's promotion bounds.

    A metric named again replaces its earlier bound; ``METRIC>=a`` and ``METRIC<=b`` in one call
    make a range. ``clear`` drops every bound first. Written under the model's lock, atomically,
    like every other change to registry.json.

    Returns:
        The bounds now in force.
    """
    parsed: dict[str, dict[str, float]] = {}
    for text in bounds:
        metric, side, value = parse_bound(text)
        parsed.setdefault(metric, {})[side] = value
    for metric, bound in parsed.items():
        if bound.get("min", -math.inf) > bound.get("max", math.inf):
            raise RegistryError(
                f"The bound for {metric!r} is empty: at least {bound['min']:g} and at most "
                f"{bound['max']:g}. Pass a minimum below the maximum."
            )
    _read(name, root)  # fail before the lock creates anything
    with _locked(name, root) as folder:
        reg = _read(name, root)
        current = {} if clear else dict(reg.get("bounds") or {})
        for metric, bound in parsed.items():
            current[metric] = _bound_value(bound)
        reg["bounds"] = current
        write_json(folder / "registry.json", reg)
    return current


def gate(
    name: str,
    version: str | int,
    *,
    root: Path | None = None,
    reg: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Check a version against its model's bounds, using its run's newest evaluation.

    Returns:
        ``{"bounds", "run_id", "evaluation" (record id or None), "violations"}``; no bounds
        means no check and no violations.
    """
    from mlkit import evaluate
    from mlkit.errors import RunNotFoundError

    reg = reg if reg is not None else _read(name, root)
    number = _version_number(version, reg)
    bounds = dict(reg.get("bounds") or {})
    entry = next(v for v in reg["versions"] if v["version"] == number)
    run_id = entry["run_id"]
    out: dict[str, Any] = {"bounds": bounds, "run_id": run_id, "evaluation": None}
    if not bounds:
        return {**out, "violations": []}
    try:
        record = evaluate.find_evaluation(run_id, root)
    except RunNotFoundError:
        record = None
    violations: list[str] = []
    if record is None:
        violations.append(
            f"no evaluation yet: run mlkit evaluate {run_id} (with --sensitive COLUMN for the "
            "fairness metrics)"
        )
    else:
        out["evaluation"] = record["id"]
    violations += evaluate.promotion_gate((record or {}).get("result") or {}, bounds)
    return {**out, "violations": violations}


# --- aliases ------------------------------------------------------------------


def _version_number(ref: str | int, reg: dict[str, Any]) -> int:
    known = sorted(v["version"] for v in reg["versions"])
    match = _VERSION_RE.match(str(ref))
    if not match or int(match.group(1)) not in known:
        raise ModelNotFoundError(
            f"Model {reg['name']!r} has no version {ref!r}. Versions: "
            f"{', '.join(f'v{n}' for n in known) or '(none)'}. Pass one of them, like v{known[-1]}."
            if known
            else f"Model {reg['name']!r} has no versions yet."
        )
    return int(match.group(1))


def _alias_stack(events: list[dict[str, Any]]) -> list[int]:
    """Replay an alias's moves: promote pushes a version, rollback pops back to the previous."""
    stack: list[int] = []
    for event in events:
        if event["action"] == "promote":
            stack.append(event["to"])
        elif event["action"] == "rollback" and stack:
            stack.pop()
    return stack


def promote(
    name: str,
    version: str | int,
    alias: str = DEFAULT_ALIAS,
    *,
    force: bool = False,
    reason: str | None = None,
    root: Path | None = None,
    tracking: str | None = None,
) -> dict[str, Any]:
    """Point ``alias`` at ``version``; the move is kept in the alias history for rollback.

    When the model has bounds (:func:`set_bounds`), the version's run's newest completed
    evaluation must meet them (:func:`gate`), or the promotion is refused with
    :class:`PromotionBlockedError` and nothing is written. ``force=True`` with a non-empty
    ``reason`` promotes anyway; the history event then keeps ``forced``, ``reason``, the
    ``violations`` and the ``evaluation`` id. Promoting the version the alias already points
    at changes nothing.

    Returns:
        ``{"name", "alias", "version", "previous"}``, plus ``forced`` and ``violations`` when
        the gate was overridden.
    """
    check_alias(alias)
    reason = (reason or "").strip() or None
    if force and not reason:
        raise RegistryError(
            "A forced promotion needs a reason, kept in the alias history. Pass --force "
            '--reason "why this model ships despite its bounds".'
        )
    _version_number(version, _read(name, root))  # fail before the lock creates anything
    event: dict[str, Any] = {}
    with _locked(name, root) as folder:
        reg = _read(name, root)
        number = _version_number(version, reg)
        previous = reg["aliases"].get(alias)
        if previous != number:
            checked = gate(name, number, root=root, reg=reg)
            violations = checked["violations"]
            if violations and not force:
                source = (
                    f"its evaluation {checked['evaluation']} of run {checked['run_id']}"
                    if checked["evaluation"]
                    else f"its run {checked['run_id']}"
                )
                raise PromotionBlockedError(
                    f"Refused to promote {name} v{number} to {alias!r}: {source} does not meet "
                    f"the model's bounds:\n"
                    + "".join(f"  - {v}\n" for v in violations)
                    + "Pass --force --reason TEXT to promote anyway.",
                    violations,
                )
            event = {"action": "promote", "from": previous, "to": number, "at": now_iso()}
            if checked["bounds"]:
                event["evaluation"] = checked["evaluation"]
            if violations:
                event.update(forced=True, reason=reason, violations=violations)
            elif reason:
                event["reason"] = reason
            reg["aliases"][alias] = number
            reg["alias_history"].setdefault(alias, []).append(event)
            write_json(folder / "registry.json", reg)
    if previous != number:
        log_wandb_artifact(
            name,
            number,
            folder / f"v{number}",
            aliases=(alias,),
            job_type="promote",
            tracking=tracking,
            metadata={k: v for k, v in event.items() if k != "action"} if event else None,
        )
    out = {"name": name, "alias": alias, "version": number, "previous": previous}
    if event.get("forced"):
        out.update(forced=True, violations=event["violations"])
    return out


def rollback(
    name: str,
    alias: str = DEFAULT_ALIAS,
    *,
    expect: int | None = None,
    reason: str | None = None,
    by: str | None = None,
    root: Path | None = None,
    tracking: str | None = None,
) -> dict[str, Any]:
    """Move ``alias`` back to the version it pointed at before its last promotion.

    Repeated rollbacks walk further back. Atomic: registry.json is replaced in one rename, so
    a server or reader sees the old alias or the new one. ``expect`` makes the move
    conditional: when the alias no longer points at that version (someone promoted or rolled
    back meanwhile), nothing moves and :class:`RegistryError` says so. ``reason`` and ``by``
    (who decided: ``guard`` for the automatic policy) are kept in the alias history.
    """
    check_alias(alias)
    _read(name, root)  # fail before the lock creates anything
    with _locked(name, root) as folder:
        reg = _read(name, root)
        if alias not in reg["aliases"]:
            raise RegistryError(
                f"Model {name!r} has no alias {alias!r}. Aliases: "
                f"{', '.join(reg['aliases']) or '(none)'}. Promote a version first: mlkit model "
                f"promote {name} VERSION --alias {alias}"
            )
        events = reg["alias_history"].setdefault(alias, [])
        stack = _alias_stack(events)
        if len(stack) < 2:
            raise RegistryError(
                f"Alias {alias!r} of model {name!r} has no earlier version to roll back to (it "
                f"points at v{reg['aliases'][alias]}). Promote the version you want instead."
            )
        current, target = stack[-1], stack[-2]
        if expect is not None and reg["aliases"][alias] != expect:
            raise RegistryError(
                f"{name}:{alias} points at v{reg['aliases'][alias]} now, not v{expect}: it moved "
                "since the decision to roll back, so nothing was changed. Check again."
            )
        event = {"action": "rollback", "from": current, "to": target, "at": now_iso()}
        event.update({k: v for k, v in (("reason", reason), ("by", by)) if v})
        reg["aliases"][alias] = target
        events.append(event)
        write_json(folder / "registry.json", reg)
    log_wandb_artifact(
        name,
        target,
        folder / f"v{target}",
        aliases=(alias,),
        job_type="rollback",
        tracking=tracking,
        metadata={k: v for k, v in event.items() if k != "action"},
    )
    return {"name": name, "alias": alias, "version": target, "previous": current}


# --- rollback policy -------------------------------------------------------------


def get_policy(name: str, alias: str = DEFAULT_ALIAS, root: Path | None = None) -> dict[str, Any]:
    """The rollback policy values set for ``alias`` (:mod:`mlkit.guard` fills in defaults)."""
    return dict((_read(name, root).get("policy") or {}).get(alias) or {})


def set_policy(
    name: str,
    alias: str,
    values: dict[str, Any],
    *,
    clear: bool = False,
    root: Path | None = None,
) -> dict[str, Any]:
    """Store rollback policy values for ``alias`` (validated by :mod:`mlkit.guard`)."""
    check_alias(alias)
    _read(name, root)
    with _locked(name, root) as folder:
        reg = _read(name, root)
        policies = reg.setdefault("policy", {})
        current = {} if clear else dict(policies.get(alias) or {})
        current.update(values)
        policies[alias] = current
        write_json(folder / "registry.json", reg)
    return current


def alias_since(name: str, alias: str = DEFAULT_ALIAS, root: Path | None = None) -> str | None:
    """When ``alias`` last moved to the version it points at now (ISO time), None if never."""
    reg = _read(name, root)
    current = reg["aliases"].get(alias)
    for event in reversed(reg["alias_history"].get(alias) or []):
        if event.get("to") == current:
            return event.get("at")
    return None


# --- read -----------------------------------------------------------------------


def list_models(root: Path | None = None) -> list[dict[str, Any]]:
    """Every registered model: name, number of versions, latest, aliases."""
    base = registry_root(root)
    rows = []
    for path in sorted(base.iterdir()) if base.exists() else []:
        reg = read_json(path / "registry.json")
        if not reg:
            continue
        versions = [v["version"] for v in reg["versions"]]
        rows.append(
            {
                "name": reg["name"],
                "versions": len(versions),
                "latest": max(versions, default=None),
                "aliases": reg["aliases"],
            }
        )
    return rows


def show(name: str, root: Path | None = None) -> dict[str, Any]:
    """registry.json of ``name``, with each version's card path added."""
    reg = _read(name, root)
    folder = model_dir(name, root)
    for entry in reg["versions"]:
        entry["card"] = str(folder / f"v{entry['version']}" / "card.md")
    return reg


def resolve(name: str, ref: str | int | None = None, root: Path | None = None) -> int:
    """The version number ``ref`` means: ``v3`` or ``3``, an alias, or ``latest``/None."""
    reg = _read(name, root)
    if ref in (None, "", "latest"):
        if not reg["versions"]:
            raise ModelNotFoundError(f"Model {name!r} has no versions yet.")
        return max(v["version"] for v in reg["versions"])
    if _VERSION_RE.match(str(ref)):
        return _version_number(ref, reg)
    if ref in reg["aliases"]:
        return int(reg["aliases"][ref])
    raise ModelNotFoundError(
        f"Model {name!r} has no alias {ref!r}. Aliases: {', '.join(reg['aliases']) or '(none)'}; "
        f"promote a version with: mlkit model promote {name} VERSION --alias {ref}, or pass "
        f"{name}:latest or {name}:v1."
    )


# --- load -----------------------------------------------------------------------


def check_weights_only_env(environ: dict[str, str] | None = None) -> None:
    """Refuse to go on when the environment tells torch to unpickle arbitrary objects.

    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` turns ``weights_only`` off for every ``torch.load``
    that does not pass it; in a server process that is any library's load, so it is refused
    rather than trusted to be harmless. ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=0`` states the same
    intent and is refused too.
    """
    env = os.environ if environ is None else environ
    bad = []
    if env.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "").strip().lower() in _TRUE:
        bad.append(f"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD={env['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD']}")
    forced = env.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    if forced is not None and forced.strip().lower() in _FALSE:
        bad.append(f"TORCH_FORCE_WEIGHTS_ONLY_LOAD={forced}")
    if bad:
        raise UnsafeModelError(
            f"The environment sets {' and '.join(bad)}, which lets torch.load run pickled code "
            "from a checkpoint. Unset it (unset TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD "
            "TORCH_FORCE_WEIGHTS_ONLY_LOAD) and start again."
        )


@dataclass
class LoadedModel:
    """A registered version, ready to predict: the module in eval mode and its card."""

    name: str
    version: int
    sha256: str
    module: nn.Module
    card: dict[str, Any]
    input_shape: tuple[int, ...]
    task: str
    classes: list[str] = field(default_factory=list)

    def raw_to_inputs(self, X: Any) -> Any:
        """Raw features (float32, batch first) as the model's inputs, scaled as in training.

        Raises:
            RegistryError: the card does not say how the features were scaled (a card made
                before it kept the scaling, or data that could not be reloaded).
        """
        data = self.card.get("data") or {}
        if "feature_scaling" not in data:
            raise RegistryError(
                f"{self.name} v{self.version}'s card does not record how its features were "
                "scaled, so raw features cannot be converted. Send inputs already scaled "
                '("input"/"inputs"), or register the run again to record the scaling.'
            )
        scaling = data["feature_scaling"]
        if scaling is None:
            return X
        import numpy as np

        mean = np.asarray(scaling["mean"], dtype=np.float32)
        std = np.asarray(scaling["std"], dtype=np.float32)
        flat = X.reshape(len(X), -1)
        return ((flat - mean) / std).astype(np.float32).reshape(X.shape)

    def metadata(self) -> dict[str, Any]:
        data = self.card.get("data") or {}
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "model": (self.card.get("model") or {}).get("name"),
            "input_shape": list(self.input_shape),
            "dtype": "float32",
            "task": self.task,
            "classes": self.classes,
            "data_version": data.get("version"),
            "raw_inputs": "feature_scaling" in data,
            "run_id": (self.card.get("run") or {}).get("id"),
            "registered": self.card.get("created"),
        }


def _load_state(folder: Path, expected_sha: str | None) -> dict[str, Any]:
    from mlkit.lineage import sha256_file

    weights = folder / WEIGHTS
    if weights.exists():
        actual = sha256_file(weights)
        if expected_sha and actual != expected_sha:
            raise UnsafeModelError(
                f"{weights} has sha256 {actual}, but its card says {expected_sha}: the file "
                "changed after registration. Register the run again instead of editing a version."
            )
        from safetensors.torch import load_file

        return load_file(str(weights), device="cpu")
    legacy = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not legacy:
        raise ModelNotFoundError(
            f"{folder} holds no {WEIGHTS}. Register the run again: mlkit model register RUN "
            f"--name {folder.parent.name}"
        )
    return _torch_load_weights_only(legacy[0])


def _torch_load_weights_only(path: Path) -> dict[str, Any]:
    """``torch.load`` that only ever unpickles tensors and containers, never code."""
    import pickle

    import torch

    check_weights_only_env()
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError) as exc:
        raise UnsafeModelError(
            f"Refused to load {path}: it is not plain weights (torch.load with weights_only=True "
            f"said: {_torch_reason(exc)}). A checkpoint that needs pickled code can run "
            "anything; re-save the state_dict with safetensors.torch.save_file from a trusted "
            "environment."
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsafeModelError(
            f"{path} holds a {type(state).__name__}, not a state_dict of tensors. Save "
            "model.state_dict() with safetensors.torch.save_file."
        )
    return state


def _torch_reason(exc: BaseException) -> str:
    """The line of torch's long weights-only error that says what was refused."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    for line in lines:
        if "Unsupported global" in line or "WeightsUnpickler error" in line:
            return line.split(". Please", 1)[0]  # not its advice to allowlist the code
    return next((line for line in lines if line), type(exc).__name__)


def _task(card: dict[str, Any], n_outputs: int) -> str:
    return (card.get("data") or {}).get("task") or (
        "regression" if n_outputs == 1 else "classification"
    )


def task_of(name: str, ref: str | int | None = None, root: Path | None = None) -> str:
    """``classification`` or ``regression`` for a version, read from its files without torch."""
    folder = model_dir(name, root) / f"v{resolve(name, ref, root)}"
    build = (read_json(folder / BUILD) or {}).get("build") or {}
    return _task(read_json(folder / "card.json") or {}, int(build.get("n_outputs", 0)))


def is_pinned(ref: str | int) -> bool:
    """Whether ``ref`` names a version (``v3`` or ``3``) rather than an alias or latest."""
    return bool(_VERSION_RE.match(str(ref)))


def load_model(name: str, ref: str | int | None = None, *, root: Path | None = None) -> LoadedModel:
    """Build version ``ref`` (``v3``, an alias, or latest) and load its weights without pickle."""
    from mlkit import models

    number = resolve(name, ref, root)
    folder = model_dir(name, root) / f"v{number}"
    card = read_json(folder / "card.json") or {}
    spec = read_json(folder / BUILD)
    if not spec:
        raise ModelNotFoundError(
            f"{folder / BUILD} is missing: version v{number} of {name!r} cannot be rebuilt. "
            f"Register the run again: mlkit model register RUN --name {name}"
        )
    build = dict(spec["build"])
    input_shape = tuple(int(s) for s in build.pop("input_shape"))
    n_outputs = int(build.pop("n_outputs"))
    expected = (card.get("weights") or {}).get("sha256")
    state = _load_state(folder, expected)
    module = models.build(spec["name"], input_shape=input_shape, n_outputs=n_outputs, **build)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise RegistryError(
            f"The weights of {name} v{number} do not fit the module model.json describes: "
            f"{str(exc).splitlines()[0]} Register the run again."
        ) from None
    module.eval()
    data = card.get("data") or {}
    task = _task(card, n_outputs)
    classes = data.get("class_names") or (
        [str(i) for i in range(n_outputs)] if task == "classification" else []
    )
    return LoadedModel(
        name=name,
        version=number,
        sha256=expected or "",
        module=module,
        card=card,
        input_shape=input_shape,
        task=task,
        classes=list(classes),
    )


# --- W&B --------------------------------------------------------------------------


def log_wandb_artifact(
    name: str,
    number: int,
    folder: Path,
    *,
    aliases: tuple[str, ...],
    job_type: str,
    tracking: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Log version ``number`` as a W&B ``model`` artifact named ``name``, with its aliases.

    W&B keeps ``v0, v1, ...`` as its own version aliases (and files an identical upload under
    the existing W&B version), so the registry's number travels as ``mlkit-v<N>``. A W&B error
    warns and never undoes the registration: the registry on disk is the source of truth.
    ``metadata`` (a promotion's history event: forced, reason, violations, evaluation) goes
    into the artifact's metadata and the logging run's config.
    """
    from mlkit import track

    mode = track.resolve_mode(tracking)
    if mode == "disabled":
        return
    files = [folder / WEIGHTS, folder / BUILD, folder / "card.json", folder / "card.md"]
    config = read_json(folder / "card.json") or {}
    if metadata:
        config["promotion"] = metadata
    try:
        tracker = track.Tracker(
            run_dir=folder.parent,
            run_id=f"{name}-v{number}-{job_type}-{secrets.token_hex(3)}",
            experiment="registry",
            config=config,
            job_type=job_type,
            mode=mode,
        )
        try:
            paths = [p for p in files if p.exists()]
            all_aliases = (f"mlkit-v{number}", *aliases)
            if metadata and tracker.mode != "disabled":
                import wandb

                artifact = wandb.Artifact(name, type="model", metadata=metadata)
                for path in paths:
                    artifact.add_file(str(path))
                tracker.run.log_artifact(artifact, aliases=list(all_aliases))
            else:
                tracker.log_artifact(paths, name=name, type="model", aliases=all_aliases)
        finally:
            tracker.finish()
    except Exception as exc:
        warnings.warn(
            f"W&B logging of {name} v{number} failed ({exc}); the registry is unchanged by it. "
            "Pass --tracking disabled to skip W&B.",
            stacklevel=2,
        )
