"""Retrain a registered model on new data: its run's notebook again, registered as a candidate.

``retrain("credit:production", "data/june.csv")`` finds the version the alias points at, the
run it was registered from, that run's notebook and parameters, and runs the notebook again
with the same parameters (the seeds among them) and ``dataset`` replaced by the new table.
The new run's ``lineage.json`` names its parent (model, version, run id); the run is
registered as the model's next version, whose card names the parent too, and the alias
``candidate`` points at it. Production never moves here: promoting is a decision taken on
evidence (``mlkit model promote``).

Everything that can be checked is checked before a kernel starts, so bad input leaves no run
and no version: a version whose run record is gone, a notebook changed since (unless
allowed, with the warning kept in the new run's record), and a table whose columns are not
the parent's schema (missing, or of another canonical type).

``append=True`` trains on the parent's table and the new one together. Their union is
written once, as Parquet named by its content hash, under the model's registry folder
(``registry/<name>/data/<hash>.parquet``): the same union is the same file, and it stays
readable as long as the model's versions that were trained on it.

``labelled=`` adds rows the prediction log taught: records production answered whose labels
came back (``mlkit feedback``), joined by :func:`mlkit.ops.labelled.labelled_records` (the
registry never reads the log itself). Each becomes a row of the parent's table, its label in
the target column (a class index read as the class it names), and the rows join the parent's
table and the new one as with ``append=True``.

``sweep=N`` runs a short sweep around the parent's parameters instead of one run, and
registers its best trial; ``promote_on_evidence=True`` then judges the new version against
production on its test split and on labelled traffic, after an evaluation when the model's
bounds ask for one (:mod:`mlkit.registry.retrain_steps` holds these steps).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlkit import lineage
from mlkit._contract import (
    CARD_FILE,
    LINEAGE_FILE,
    PARAMS_FILE,
    PREPROCESS_FILE,
    RUN_FILE,
)
from mlkit._io import read_json, redact, write_json
from mlkit.errors import (
    DataError,
    NotFoundError,
    ParameterError,
    StateError,
)
from mlkit.record_store import find_run, resolve_notebook
from mlkit.registry import comparison
from mlkit.registry import retrain_steps as steps
from mlkit.registry.promotion import get_bounds
from mlkit.registry.store import (
    DEFAULT_ALIAS,
    check_alias,
    model_dir,
    parse_target,
    register,
    register_best,
    resolve,
)
from mlkit.run import runner
from mlkit.table_sources import is_table_source

__all__ = ["CANDIDATE", "Parent", "expected_columns", "find_parent", "retrain"]

CANDIDATE = "candidate"
# pyarrow's names of the canonical types, as the schema spells them (mlkit.tables).
_DTYPE_NAMES = {"double": "float64", "string": "string", "timestamp[us]": "timestamp[us]"}


@dataclass
class Parent:
    """The registered version being retrained, and what its run recorded."""

    name: str
    version: int
    ref: str  # as the user named it: production, v3, latest
    run_id: str
    run_dir: Path
    experiment: str
    notebook: Path
    parameters: dict[str, Any]
    cwd: Path  # where the parent's kernel ran: relative paths in it mean the same again
    columns: dict[str, str]  # column -> canonical dtype the model needs
    warnings: list[str] = field(default_factory=list)

    def entry(self) -> dict[str, Any]:
        """The ``parent`` entry of the new run's lineage."""
        return {"model": self.name, "version": self.version, "run_id": self.run_id}


# Long on purpose: the one entry point of a retrain, its options documented in place (the
# docstring is most of it); the steps it runs are the helpers below and in retrain_steps.
def retrain(
    target: str,
    data: str,
    *,
    params: dict[str, Any] | None = None,
    experiment: str | None = None,
    append: bool = False,
    alias: str = CANDIDATE,
    labelled: Sequence[dict[str, Any]] | None = None,
    allow_changed_notebook: bool = False,
    sweep: int | None = None,
    space: str | None = None,
    promote_on_evidence: bool = False,
    margin: float = comparison.DEFAULT_MARGIN,
    evidence: Sequence[str] = ("test",),
    traffic: Sequence[dict[str, Any]] | None = None,
    sensitive: str | None = None,
    root: Path | None = None,
    tracking: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run a registered version's notebook on new data and register the run as a new version.

    Args:
        target: ``NAME[:ALIAS]`` (default alias ``production``), or ``NAME:v3``.
        data: the new table: a ``.csv``/``.parquet`` path, a Parquet folder or a database URL.
        params: parameter overrides, values as typed on a command line (converted to the
            notebook's declared types); ``dataset`` comes from ``data``.
        experiment: the new run's experiment (with ``sweep``, the study's name); default the
            parent run's (a fresh study).
        append: train on the parent's table and ``data`` together.
        alias: the alias pointed at the new version; never ``production``.
        labelled: records with their true labels (``{"record", "label"}``, as
            :func:`mlkit.ops.labelled.labelled_records` returns them), added as rows of the
            training table; implies ``append``.
        allow_changed_notebook: run the notebook even if it changed since the parent ran;
            the new run's record keeps the warning.
        sweep: run a sweep of this many trials around the parent's parameters instead of
            one run, and register its best trial (:func:`retrain_steps.plan_sweep`).
        space: the sweep's search-space file; default the space of the parent's study
            (required when the parent run was no sweep trial).
        promote_on_evidence: once registered, compare the new version with production on the
            same rows and promote it when it is not worse by more than ``margin`` on every
            source of ``evidence`` (:func:`mlkit.registry.comparison.promote_on_evidence`);
            the alias history names ``retrain`` and the parent version. When the model has
            bounds, the new version's run is evaluated first, so the gate can check them.
        margin: how much worse than production the new version may be, in the metric's
            units, judged on the interval of the difference.
        evidence: what the comparison scores on: ``test`` (the new run's test split) and/or
            ``traffic`` (the ``traffic`` records).
        traffic: labelled records of production's traffic, the ``traffic`` evidence.
        sensitive: the column the evaluation reports fairness metrics by.
        root: experiments folder; default ``experiments/`` at the project root.
        tracking: W&B mode for the run and the registration.
        progress: show a progress bar while cells run.

    Returns:
        ``{"parent", "run", "version", "alias", "warnings", "data", "labelled", "sweep",
        "evaluation", "promotion"}`` (``labelled``: how many rows came from ``labelled``).
        ``run`` is the record of the run registered (with ``sweep``, the best trial's; None
        when no trial completed); ``version`` is the registry entry (with ``path``), None
        when nothing completed; ``sweep`` the sweep's summary; ``evaluation`` the
        evaluation the gate read; ``promotion`` the decision on evidence (``promoted``,
        ``reason``, ``comparison``), None when not asked for or nothing was registered.

    Raises:
        UsageError: before any run, for a missing model, alias, run record or notebook, a
            changed notebook, a table whose columns do not match the parent's schema, or a
            sweep without a search space.
        PromotionBlockedError: the new version is registered, but the model's bounds kept
            the alias from moving (it has no evaluation yet).
        CheckFailedError: the evaluation of the new version's run failed.
    """
    alias = _check_target_alias(alias)
    if promote_on_evidence:
        margin = comparison.check_margin(margin)
        evidence = comparison.check_evidence(evidence)
    name, ref = parse_target(target)
    parent = find_parent(name, ref, root, allow_changed_notebook=allow_changed_notebook)
    steps.check_sensitive(parent, sensitive)
    given = {**parent.parameters, **(params or {})}
    source = _absolute(data, Path.cwd())
    _check_source(source, parent, given)
    if append or labelled:
        source = _append(parent, source, given, root, labelled or ())
    given["dataset"] = source
    out: dict[str, Any] = {
        "parent": parent.entry(),
        "run": None,
        "version": None,
        "alias": alias,
        "warnings": parent.warnings,
        "data": str(source),
        "labelled": len(labelled or ()),
        "sweep": None,
        "evaluation": None,
        "promotion": None,
    }
    if sweep is not None:
        cfg = steps.plan_sweep(
            parent, given, sweep, space, experiment=experiment, root=root, tracking=tracking
        )
        out["sweep"], out["run"] = steps.run_sweep(cfg, parent.entry(), progress=progress)
    else:
        out["run"] = _run(
            parent, given, experiment, root=root, tracking=tracking, progress=progress
        )
    if (out["run"] or {}).get("status") != "completed":
        return out
    reason = f"retrained from {name} v{parent.version} on {redact(data)}"
    if labelled:
        reason += f" and {len(labelled)} labelled records of the prediction log"
    if out["sweep"]:
        reason += f", the best of {sweep} trials of study {out['sweep']['study']}"
    if out["sweep"]:
        study, storage = out["sweep"]["study"], out["sweep"]["storage"]
        out["version"] = register_best(study, name, storage=storage, root=root, tracking=tracking)
    else:
        out["version"] = register(out["run"]["path"], name, root=root, tracking=tracking)
    number = out["version"]["version"]
    if promote_on_evidence and get_bounds(name, root):
        out["evaluation"] = steps.evaluate_candidate(
            out["run"], sensitive=sensitive, root=root, tracking=tracking, progress=progress
        )
    moved = steps.point_alias(
        out["run"],
        name,
        number,
        alias,
        reason,
        keep_going=promote_on_evidence,
        root=root,
        tracking=tracking,
    )
    if moved is not None:
        out["warnings"] = [*out["warnings"], moved]
    if promote_on_evidence:
        out["promotion"] = comparison.promote_on_evidence(
            name,
            number,
            DEFAULT_ALIAS,
            margin=margin,
            by="retrain",
            evidence=evidence,
            traffic=traffic,
            root=root,
            tracking=tracking,
        )
    return out


def _run(
    parent: Parent,
    given: dict[str, Any],
    experiment: str | None,
    *,
    root: Path | None,
    tracking: str | None,
    progress: bool,
) -> dict[str, Any]:
    """The parent's notebook once more, with ``given``; the new run names its parent."""

    def name_parent(info: dict[str, Any]) -> None:
        # Before the kernel starts: its own lineage updates read the file and keep the entry.
        path = Path(info["path"]) / LINEAGE_FILE
        write_json(path, {**(read_json(path, {}) or {}), "parent": parent.entry()})

    return runner.run(
        parent.notebook,
        given,
        experiment=experiment or parent.experiment,
        from_cli=True,
        tracking=tracking,
        progress=progress,
        inject="all",
        extra={"warnings": parent.warnings} if parent.warnings else None,
        root=root,
        on_start=name_parent,
        cwd=parent.cwd,
    )


def _check_target_alias(alias: str) -> str:
    check_alias(alias)
    if alias == DEFAULT_ALIAS:
        raise ParameterError(
            f"A retrained model never goes straight to {DEFAULT_ALIAS!r}: got --alias "
            f"{alias}. Register it as a candidate (the default), evaluate it, then promote it "
            f"with: mlkit model promote NAME VERSION --alias {DEFAULT_ALIAS}"
        )
    return alias


def find_parent(
    name: str, ref: str, root: Path | None = None, *, allow_changed_notebook: bool = False
) -> Parent:
    """The version ``ref`` of ``name`` and its run's notebook, parameters and schema.

    Raises:
        ModelNotFoundError: no such model, version or alias.
        NotFoundError: the version's run record or notebook is gone.
        StateError: the notebook changed since (unless ``allow_changed_notebook``), or the
            version was not trained on a table.
    """
    number = resolve(name, ref, root)
    folder = model_dir(name, root) / f"v{number}"
    card = read_json(folder / CARD_FILE, {}) or {}
    run_id = (card.get("run") or {}).get("id") or "?"
    run_dir = _parent_run(card, f"{name} v{number}", root)
    record = read_json(run_dir / PARAMS_FILE, {}) or {}
    info = read_json(run_dir / RUN_FILE, {}) or {}
    parameters = dict(record.get("parameters") or {})
    if not is_table_source(parameters.get("dataset")):
        raise StateError(
            f"{name} v{number} was trained on {parameters.get('dataset')!r}, not on a table of "
            f"your own (run {run_id}), so there is no schema to hold new data to. Retrain a "
            "version trained with -p dataset PATH.csv, or run the notebook with mlkit run."
        )
    notebook = _parent_notebook(run_dir, record)
    warnings = _notebook_changes(notebook, run_dir, f"{name} v{number}", allow_changed_notebook)
    recorded_cwd = record.get("cwd")
    cwd = Path(recorded_cwd) if recorded_cwd and Path(recorded_cwd).is_dir() else None
    return Parent(
        name=name,
        version=number,
        ref=ref,
        run_id=run_id,
        run_dir=run_dir,
        experiment=info.get("experiment") or notebook.stem,
        notebook=notebook,
        parameters=parameters,
        cwd=cwd or notebook.resolve().parent,
        columns=expected_columns(folder),
        warnings=warnings,
    )


def _parent_run(card: dict[str, Any], what: str, root: Path | None) -> Path:
    """The run a version was registered from: where the card says, else by id under root."""
    run = card.get("run") or {}
    recorded = Path(run.get("path") or "")
    if run.get("path") and (recorded / PARAMS_FILE).is_file():
        return recorded
    if run.get("id"):
        with contextlib.suppress(NotFoundError):  # moved under another experiments folder
            found = find_run(run["id"], root)
            if (found / PARAMS_FILE).is_file():
                return found
    raise NotFoundError(
        f"{what} was registered from run {run.get('id')!r}, whose record is gone (looked at "
        f"{run.get('path')!r} and under the experiments folder). Retraining needs its notebook "
        "and parameters: restore the run's folder, or train with mlkit run and register that "
        "run."
    )


def _parent_notebook(run_dir: Path, record: dict[str, Any]) -> Path:
    recorded, absolute = record.get("notebook") or "", record.get("notebook_abs")
    found = resolve_notebook(recorded or absolute, absolute) if recorded or absolute else None
    if found is None:
        raise NotFoundError(
            f"Run {run_dir.name} ran the notebook {recorded or absolute or '(none recorded)'}, "
            "which does not exist now. Restore it there, or run retrain from the folder the "
            "run was made in."
        )
    return found


def _notebook_changes(notebook: Path, run_dir: Path, what: str, allowed: bool) -> list[str]:
    """The warning to keep when the notebook's code changed since the parent ran."""
    recorded = (read_json(run_dir / LINEAGE_FILE, {}) or {}).get("notebook_sha256")
    now = lineage.notebook_hash(notebook)
    if not recorded or now == recorded:
        return []
    message = (
        f"{notebook} changed since run {run_dir.name} ({what}) ran it: notebook sha256 was "
        f"{recorded[:16]}..., now {now[:16]}..."
    )
    if not allowed:
        raise StateError(
            f"{message}. A retrain runs the parent's code on new data; restore the notebook, "
            "or pass --allow-changed-notebook to train with it as it is now (the new run's "
            "record keeps this warning)."
        )
    return [message]


def expected_columns(folder: Path) -> dict[str, str]:
    """The columns a version's model needs, with their canonical types.

    From the card's schema (every column but the dropped ones), else from the version's
    preprocess.json.
    """
    card = read_json(folder / CARD_FILE, {}) or {}
    schema = ((card.get("data") or {}).get("schema") or {}).get("columns")
    if isinstance(schema, dict):
        return {
            column: entry["dtype"]
            for column, entry in schema.items()
            if entry.get("role") != "dropped"
        }
    fitted = read_json(folder / PREPROCESS_FILE, {}) or {}
    return {
        entry["name"]: entry["dtype"]
        for entry in fitted.get("columns") or []
        if entry.get("role") != "dropped"
    }


def _absolute(source: str, base: Path) -> str:
    """A local path made absolute against ``base``; a URL as given."""
    if "://" in source:
        return source
    path = Path(source).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _read(source: str, given: dict[str, Any]) -> Any:
    # Here, not at the top: pyarrow costs a quarter second that `mlkit --help` need not pay.
    from mlkit import tables

    return tables.read_table(
        source, table=given.get("table") or None, query=given.get("query") or None
    )


def _dtypes(table: Any) -> dict[str, str]:
    return {f.name: _DTYPE_NAMES.get(str(f.type), str(f.type)) for f in table.schema}


def _check_source(source: str, parent: Parent, given: dict[str, Any]) -> None:
    """Refuse a table that lacks a column the model needs, or holds one of another type."""
    if not is_table_source(source):
        raise ParameterError(
            f"--data must be a table: a .csv or .parquet file, a folder of Parquet files or a "
            f"database URL; got {redact(source)!r}. Pass --data PATH.csv."
        )
    found = _dtypes(_read(source, given))
    problems = _column_problems(parent.columns, found)
    if problems:
        raise DataError(
            f"The table {redact(source)} does not match the schema of {parent.name} "
            f"v{parent.version}: {'; '.join(problems)}. Pass a table with the columns the "
            "model was trained on, with the same types."
        )


def _column_problems(
    expected: dict[str, str], found: dict[str, str], *, extra: bool = False
) -> list[str]:
    """What keeps ``found`` from matching ``expected``: missing, retyped (and extra) columns."""
    problems = []
    missing = [c for c in expected if c not in found]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    retyped = [
        f"{c} is {found[c]}, was {dtype}"
        for c, dtype in expected.items()
        if c in found and found[c] != dtype
    ]
    if retyped:
        problems.append(f"column(s) of another type: {', '.join(retyped)}")
    unknown = [c for c in found if c not in expected] if extra else []
    if unknown:
        problems.append(f"column(s) the old table lacks: {', '.join(unknown)}")
    return problems


def _append(
    parent: Parent,
    source: str,
    given: dict[str, Any],
    root: Path | None,
    labelled: Sequence[dict[str, Any]] = (),
) -> str:
    """The parent's table, the new one and the labelled records as one Parquet file; its path.

    Both tables are read as canonical tables and must have the same columns of the same
    types; the union keeps the parent table's column order.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Here, not at the top: pyarrow costs a quarter second that `mlkit --help` need not pay.
    from mlkit import tables

    old_source = _absolute(str(parent.parameters["dataset"]), parent.cwd)
    old = _read(old_source, parent.parameters)
    new = _read(source, given)
    problems = _column_problems(_dtypes(old), _dtypes(new), extra=True)
    if problems:
        raise DataError(
            f"--append needs the new table {redact(source)} to have the columns of "
            f"{parent.name} v{parent.version}'s table {redact(old_source)}: "
            f"{'; '.join(problems)}. Pass a table with the same columns, or retrain without "
            "--append."
        )
    parts = [old, new.select(old.column_names)]
    if labelled:
        parts.append(_labelled_rows(parent, labelled, old.schema, root))
    union = pa.concat_tables(parts)
    path = (
        model_dir(parent.name, root)
        / "data"
        / f"{tables.table_hash(union).removeprefix(tables.HASH_PREFIX)[:16]}.parquet"
    )
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(union, staging)
        os.replace(staging, path)
    return str(path)


def _labelled_rows(
    parent: Parent, labelled: Sequence[dict[str, Any]], schema: Any, root: Path | None
) -> Any:
    """Labelled records as rows of a table of ``schema``: the label in the target column.

    A column a record lacks is null; values are made canonical (ISO dates become dates) and
    then of the column's type, so a record that cannot be a row of the table is refused.
    """
    import pyarrow as pa

    # Here, not at the top: pyarrow costs a quarter second that `mlkit --help` need not pay.
    from mlkit import tables

    fitted = read_json(model_dir(parent.name, root) / f"v{parent.version}" / PREPROCESS_FILE, {})
    target, classes = (fitted or {}).get("target"), (fitted or {}).get("classes") or []
    if target not in schema.names:
        raise StateError(
            f"{parent.name} v{parent.version} names no target column of its table "
            f"(preprocess.json says {target!r}), so labels have no column to go to. Retrain "
            "without --labels-from-log."
        )

    def as_class(label: Any) -> Any:
        # mlkit feedback takes a class by name or by index, as abtest and replay read it
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(classes):
            return classes[label]
        return label

    rows = [{**item["record"], target: as_class(item["label"])} for item in labelled]
    columns = []
    for column in schema:
        values = [r.get(column.name) for r in rows]
        if all(v is None for v in values):  # a column no record holds: null of its type
            columns.append(pa.nulls(len(rows), column.type))
            continue
        try:
            typed = tables.canonical(pa.table({column.name: values})).column(0)
            columns.append(typed.cast(column.type).combine_chunks())
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, DataError) as exc:
            raise DataError(
                f"The labelled records of the prediction log do not fit column {column.name!r} "
                f"({column.type}) of {parent.name} v{parent.version}'s table: {exc}. Retrain "
                "without --labels-from-log, or correct the labels (mlkit feedback stores a "
                "newer one per request id)."
            ) from None
    return pa.Table.from_arrays(columns, schema=schema)
