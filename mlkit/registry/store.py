"""Model registry: named, numbered versions of run models, with aliases and model cards.

Layout, under ``experiments/registry/<name>/``::

    registry.json        versions, aliases, every alias move, the promotion bounds and the
                         rollback policy (the source of truth)
    guard.jsonl          every check of the rollback guard (mlkit.guard), one line each
    .lock                file lock: one registration or alias move at a time
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
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

from filelock import FileLock

from mlkit import storage as storages
from mlkit._contract import (
    BUILD,
    CARD_FILE,
    PARAMS_FILE,
    REGISTRY_DIR,
    REGISTRY_FILE,
    RESULT_FILE,
    TABLE_FILES,
    WEIGHTS,
)
from mlkit._io import now_iso, read_json, write_json
from mlkit.errors import (
    CheckFailedError,
    ModelNotFoundError,
    ParameterError,
    StateError,
    UnsafeArtifactError,
)
from mlkit.lineage import sha256_file
from mlkit.rebuild import build_model
from mlkit.record_store import RunRecord, experiments_root, find_run, load_run
from mlkit.registry.cards import _card, _card_md, log_wandb_artifact

DEFAULT_ALIAS = "production"
_VERSION_RE = re.compile(r"^v?(\d+)$")


# --- where models live ----------------------------------------------------------


class VersionEntry(TypedDict, total=False):
    """One registered version, as ``registry.json`` lists it (the card has the rest)."""

    version: int
    created: str
    run_id: str
    sha256: str  # of model.safetensors: loading refuses weights that differ
    model: str  # the model's builder name (linear, mlp, cnn, ...)
    metrics: dict[str, Any]  # the run's test/ metrics
    card: str  # card.md's path, added by show()


class AliasEvent(TypedDict, total=False):
    """One move of an alias: every promotion and rollback, with who decided and why."""

    action: str  # promote, rollback, or refused (a promotion the evidence or the gate stopped)
    to: int
    at: str
    reason: str
    by: str  # guard for the automatic policy
    evaluation: str  # the evaluation record the gate checked
    forced: bool
    violations: list[str]


class RegistryFile(TypedDict, total=False):
    """``registry.json``: the source of truth of one model, read once per operation."""

    name: str
    versions: list[VersionEntry]
    aliases: dict[str, int]
    alias_history: dict[str, list[AliasEvent]]  # also holds "from" (a keyword in Python)
    bounds: dict[str, Any]  # metric -> upper bound, or {"min": .., "max": ..}
    policy: dict[str, dict[str, Any]]  # alias -> rollback policy values


def registry_root(root: Path | None = None) -> Path:
    return (root or experiments_root()) / REGISTRY_DIR


def check_model_name(name: str) -> str:
    ok = bool(name) and all(c.isalnum() or c in "-_." for c in name) and not name.startswith(".")
    if not ok:
        raise ParameterError(
            f"Model name {name!r} must be letters, digits, '-', '_' or '.', and not start with "
            "'.'. Pass --name digits-mlp, for example."
        )
    return name


def check_alias(alias: str) -> str:
    ok = bool(alias) and all(c.isalnum() or c in "-_" for c in alias)
    if not ok or _VERSION_RE.match(alias) or alias == "latest":
        raise ParameterError(
            f"Alias {alias!r} must be letters, digits, '-' or '_', and neither 'latest' nor a "
            "version like 'v3' (those are resolved already). Pass --alias production."
        )
    return alias


def model_dir(name: str, root: Path | None = None) -> Path:
    return registry_root(root) / check_model_name(name)


def _read(name: str, root: Path | None = None) -> RegistryFile:
    data = read_json(model_dir(name, root) / REGISTRY_FILE)
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
    with FileLock(folder / ".lock"):
        yield folder


# --- register -----------------------------------------------------------------


def _check_run(run_dir: Path) -> RunRecord:
    info = load_run(run_dir)
    missing = [f for f in (WEIGHTS, BUILD, RESULT_FILE) if not (run_dir / f).exists()]
    if info.get("status") != "completed" or RESULT_FILE in missing:
        raise StateError(
            f"Run {info['id']} is {info.get('status', 'unknown')!r}, not completed; only a "
            "completed run (result.json written) can be registered. Check it with: mlkit show "
            f"{info['id']}"
        )
    if missing:
        raise StateError(
            f"Run {info['id']} has no {' or '.join(missing)}: nothing to register. Save the "
            "model in the notebook with run.save_model(model, name=..., build=...)."
        )
    build = read_json(run_dir / BUILD) or {}
    if not isinstance(build.get("name"), str) or not isinstance(build.get("build"), dict):
        raise UnsafeArtifactError(
            f"{run_dir / BUILD} must hold {{'name': ..., 'build': {{...}}}}; got {build!r}. "
            "Re-save the model with run.save_model."
        )
    _check_rebuilds(run_dir, info, build)
    return info


def _check_rebuilds(run_dir: Path, info: RunRecord, spec: dict[str, Any]) -> None:
    """Rebuild the run's module before anything is copied.

    A class of the user's own that cannot be imported, or weights that do not fit, are found
    at registration, not when a server starts.
    """
    from safetensors.torch import load_file  # torch: only a registration pays for it

    notebook = info.get("notebook") or (read_json(run_dir / PARAMS_FILE, {}) or {}).get("notebook")
    build_model(
        spec,
        load_file(str(run_dir / WEIGHTS)),
        what=f"run {info['id']}",
        fix="Save the model again with run.save_model, then register that run.",
        notebook=notebook,
    )


def _version_entry(card: dict[str, Any]) -> VersionEntry:
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

    check_model_name(name)
    run_dir = find_run(run_ref, root)
    info = _check_run(run_dir)
    sha = sha256_file(run_dir / WEIGHTS)
    card = _card(name, 0, run_dir, info, sha)  # outside the lock: it reloads the data
    with _locked(name, root) as folder:
        reg = read_json(folder / REGISTRY_FILE) or {
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
            for extra in TABLE_FILES:  # a table's preprocessing and description travel along
                if (run_dir / extra).is_file():
                    shutil.copyfile(run_dir / extra, staging / extra)
                    card.setdefault("files", {})[extra] = sha256_file(staging / extra)
            if sha256_file(staging / WEIGHTS) != sha:
                raise CheckFailedError(
                    f"The weights of run {info['id']} changed while they were copied. Register "
                    "again once nothing writes to the run."
                )
            card.update(version=number, created=now_iso())
            write_json(staging / CARD_FILE, card)
            (staging / "card.md").write_text(_card_md(card), encoding="utf-8")
            _fsync_tree(staging)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        entry = _version_entry(card)
        reg["versions"].append(entry)
        write_json(folder / REGISTRY_FILE, reg)
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

    url = storages.find_storage(study, root=root, storage=storage)
    loaded = storages.load_study(url, study)
    try:
        trial = loaded.best_trial
    except ValueError:
        raise StateError(
            f"Study {study!r} has no completed trial yet. Run more trials: mlkit sweep ..."
        ) from None
    except RuntimeError:
        raise StateError(
            f"Study {study!r} has two objectives: pick a run from the Pareto front (mlkit sweep "
            f"report {study}) and pass it: mlkit model register RUN --name {name}"
        ) from None
    run_path = trial.user_attrs.get("run_path") or trial.user_attrs.get("run_id")
    if not run_path:
        raise StateError(
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


# --- aliases ------------------------------------------------------------------


def _version_number(ref: str | int, reg: RegistryFile) -> int:
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


# --- rollback policy -------------------------------------------------------------


# --- read -----------------------------------------------------------------------


def list_models(root: Path | None = None) -> list[dict[str, Any]]:
    """Every registered model: name, number of versions, latest, aliases."""
    base = registry_root(root)
    rows = []
    for path in sorted(base.iterdir()) if base.exists() else []:
        reg = read_json(path / REGISTRY_FILE)
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


def show(name: str, root: Path | None = None) -> RegistryFile:
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


# --- W&B --------------------------------------------------------------------------


def parse_target(text: str) -> tuple[str, str]:
    """``NAME[:alias]`` (or ``NAME:v3``, ``NAME:latest``) into name and reference."""
    name, _, ref = text.partition(":")
    if not name:
        raise ParameterError(
            f"Model {text!r} must be NAME or NAME:ALIAS, like digits:production. List models "
            "with: mlkit model list"
        )
    return name, ref or DEFAULT_ALIAS
