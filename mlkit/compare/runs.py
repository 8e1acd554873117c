"""The two sides of a comparison: resolve each reference to a record and read it once.

A reference is a run id, a unique id prefix, a run directory, or a sweep trial as
``STUDY#N`` (the record its trial's user attributes point at).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlkit import storage as storages
from mlkit._contract import DATA_FILE, LINEAGE_FILE, METRICS_FILE, OUTPUT_NOTEBOOK
from mlkit._io import read_json
from mlkit.errors import NotFoundError, ParameterError, RunNotFoundError, UnsafeArtifactError
from mlkit.record_store import RunRecord, experiments_root, find_run, load_run, read_history

CLOSEST = 5  # ids named when a reference matches none


@dataclass
class Side:
    """One run as the comparison reads it: its record, lineage, curves and files."""

    ref: str  # as the user gave it
    path: Path
    info: RunRecord
    lineage: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] | None = None  # data.json: a table of the user's own
    figures: dict[str, Path] = field(default_factory=dict)  # logged figure name -> PNG

    @property
    def id(self) -> str:
        return self.info["id"]

    @property
    def notebook(self) -> Path:
        """The executed notebook (it may be missing: a run that never started)."""
        return self.path / OUTPUT_NOTEBOOK


def resolve(ref: str, storage: str | None = None, root: Path | None = None) -> Path:
    """The record folder ``ref`` names.

    Raises:
        RunNotFoundError: no run matches; the message lists the closest ids.
        NotFoundError: ``STUDY#N`` names no study, no trial N, or a trial without a record.
        ParameterError: a prefix matches several runs, or ``#N`` is not a number.
    """
    if "#" in ref and not Path(ref).exists():
        return _trial_record(ref, storage, root)
    try:
        return find_run(ref, root)
    except RunNotFoundError:
        raise RunNotFoundError(_not_found(ref, root or experiments_root())) from None


def load(ref: str, storage: str | None = None, root: Path | None = None) -> Side:
    """Resolve ``ref`` and read what a comparison needs from its record.

    Raises:
        UnsafeArtifactError: a file of the record is not valid JSON.
    """
    path = resolve(ref, storage, root)
    info = load_run(path)
    if info.get("status") == "unreadable":
        raise UnsafeArtifactError(
            f"Run {info['id']} cannot be compared: {info.get('reason')}. Repair or delete that "
            "file, or compare other runs (mlkit runs lists them)."
        )
    try:
        lineage = read_json(path / LINEAGE_FILE, {}) or {}
        data = read_json(path / DATA_FILE)
    except ValueError as exc:
        raise UnsafeArtifactError(
            f"Run {info['id']} has a damaged record ({exc}). Repair or delete that file."
        ) from None
    return Side(
        ref=ref,
        path=path,
        info=info,
        lineage=lineage,
        history=read_history(path / METRICS_FILE),
        data=data,
        figures={p.stem: p for p in sorted(path.glob("*.png"))},
    )


def _not_found(ref: str, root: Path) -> str:
    ids = sorted(p.name for p in root.glob("*/runs/*") if p.is_dir()) if root.exists() else []
    closest = difflib.get_close_matches(ref, ids, n=CLOSEST, cutoff=0.3)
    hint = f" The closest ids: {', '.join(closest)}." if closest else ""
    return (
        f"No run '{ref}' under {root}.{hint} Pass a run id, a unique prefix of one, a run "
        "directory or STUDY#N; list runs with: mlkit runs"
    )


def _trial_record(ref: str, storage: str | None, root: Path | None) -> Path:
    """The record of trial N of a study, from the run path its trial's attributes hold."""
    name, _, number = ref.rpartition("#")
    if not name or not number.isdigit():
        raise ParameterError(
            f"A sweep trial is named STUDY#N with N its number; got {ref!r}. Pass digits-mlp#3, "
            "for example."
        )
    url = storages.find_storage(name, root, storage)
    study = storages.load_study(url, name)  # optuna loads here, only for a STUDY#N
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    trial = trials.get(int(number))
    if trial is None:
        have = f"0 to {max(trials)}" if trials else "none yet"
        raise NotFoundError(
            f"Study {name!r} has no trial {number} (trials: {have}). Pass one of its numbers."
        )
    path = trial.user_attrs.get("run_path")
    if path and Path(path).is_dir():
        return Path(path)
    run_id = trial.user_attrs.get("run_id")
    if run_id:
        return resolve(run_id, root=root)
    raise NotFoundError(
        f"Trial {number} of study {name!r} has no run record (it never started a run). "
        "Compare another trial."
    )
