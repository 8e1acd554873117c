"""Model cards: what a registered version is, in JSON and Markdown, and its W&B artifact."""

from __future__ import annotations

import secrets
import warnings
from pathlib import Path
from typing import Any

from mlkit import track
from mlkit._contract import (
    BUILD,
    CARD_FILE,
    DATA_FILE,
    LINEAGE_FILE,
    OUTPUT_NOTEBOOK,
    PREPROCESS_FILE,
    WEIGHTS,
)
from mlkit._io import now_iso, read_json
from mlkit.rebuild import load_data


def _data_details(lineage: dict[str, Any], params: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Class and feature names (and regression target units) from the run's own data.

    The record keeps only the data's name and version; reloading it with the run's split seed
    and checking the version gives the names the server shows, and no guess when they differ.
    """
    spec = dict(lineage.get("data") or {})
    if not spec.get("name"):
        return spec
    if spec.get("source") is not None:  # a table of the user's own: the run recorded it all
        return _table_details(spec, run_dir)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = load_data(spec["name"], params, check=False)
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


def _table_details(spec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A table run's data, from its data.json: no source to reread, its hash already taken.

    Records sent to a server go through the version's preprocess.json, so the card says
    raw features take no scaling of their own (``feature_scaling`` None is for raw arrays).
    """
    described = read_json(run_dir / DATA_FILE, None)
    if not isinstance(described, dict) or not (run_dir / PREPROCESS_FILE).is_file():
        spec["details"] = f"not verified: the run has no readable {DATA_FILE}/{PREPROCESS_FILE}"
        return spec
    findings = described.get("findings") or []
    spec.update(
        class_names=described.get("class_names") or [],
        feature_names=described.get("feature_names") or [],
        target_mean=described.get("target_mean", 0.0),
        target_std=described.get("target_std", 1.0),
        schema=described.get("schema"),
        findings=[f for f in findings if f.get("severity") != "info"],
        records=True,
        verified=described.get("version") == spec.get("version"),
    )
    return spec


def _card(name: str, number: int, run_dir: Path, info: dict[str, Any], sha: str) -> dict[str, Any]:
    lineage = read_json(run_dir / LINEAGE_FILE, {}) or {}
    params = info.get("params") or {}
    git = lineage.get("git") or {}
    notebook = run_dir / OUTPUT_NOTEBOOK
    return {
        "name": name,
        "version": number,
        "created": now_iso(),
        "model": read_json(run_dir / BUILD),
        "parameters": params,
        "metrics": info.get("result") or {},
        "data": _data_details(lineage, params, run_dir),
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
            "parent": lineage.get("parent"),  # the version a retrain started from
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
        *_table_md(data),
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
        *([f"- retrained from: {_parent_md(lin['parent'])}"] if lin.get("parent") else []),
        "",
    ]
    return "\n".join(lines)


def _parent_md(parent: dict[str, Any]) -> str:
    return f"{parent.get('model')} v{parent.get('version')} (run `{parent.get('run_id')}`)"


def _table_md(data: dict[str, Any]) -> list[str]:
    """A table's source, hash, columns and what its checks found (nothing for other data)."""
    if not data.get("records"):
        return []
    source = data.get("source") or {}
    where = source.get("path") or source.get("url") or source.get("kind")
    lines = [
        f"- source: {source.get('kind')} `{where}`"
        + (f", table `{source['table']}`" if source.get("table") else "")
        + (f", query `{source['query']}`" if source.get("query") else ""),
        f"- table content hash: `{data.get('table_hash')}`",
        "- the server takes records in the table's own columns (`records`), preprocessed by "
        f"`{PREPROCESS_FILE}` as in training",
        "",
        "| column | role | kind | type | missing in train |",
        "| --- | --- | --- | --- | --- |",
    ]
    for column, info in ((data.get("schema") or {}).get("columns") or {}).items():
        lines.append(
            f"| {column} | {info.get('role')} | {info.get('kind') or ''} | {info.get('dtype')} "
            f"| {float(info.get('missing_share') or 0):.1%} |"
        )
    findings = data.get("findings") or []
    if findings:
        lines += ["", "Checks before training:", ""]
        lines += [f"- {f.get('severity')}: {f.get('message')}" for f in findings]
    return lines


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

    mode = track.resolve_mode(tracking)
    if mode == "disabled":
        return
    files = [folder / WEIGHTS, folder / BUILD, folder / CARD_FILE, folder / "card.md"]
    config = read_json(folder / CARD_FILE) or {}
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
