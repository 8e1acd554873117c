"""What differs between two runs, as plain data: one section per concern, rows inside.

A row is ``{"key", "change", "a", "b", ...}``; ``change`` is ``changed``, ``added`` (only B
has it), ``removed`` (only A has it) or ``same``. A section is ``{"title", "rows", ...}``
with extras of its own (diff texts, the notebook's cells). The terminal, ``--json`` and the
HTML page all read this one structure, so they cannot disagree.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from mlkit.compare.runs import Side

MISSING = object()  # a key one side lacks, told apart from a value of None
# Per-epoch columns that say when or how, not how well: never compared.
NOT_CURVES = {"step", "epoch", "seconds"}
LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "rmse")
HIGHER_IS_BETTER = ("acc", "f1", "auc", "r2", "precision", "recall")


def row(key: str, a: Any, b: Any) -> dict[str, Any]:
    """One compared value; a side that lacks the key makes it ``added`` or ``removed``."""
    if a is MISSING:
        return {"key": key, "change": "added", "a": None, "b": b}
    if b is MISSING:
        return {"key": key, "change": "removed", "a": a, "b": None}
    return {"key": key, "change": "same" if _equal(a, b) else "changed", "a": a, "b": b}


def _equal(a: Any, b: Any) -> bool:
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return both_nan or (type(a) is type(b) and a == b) or (_number(a) and _number(b) and a == b)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def mapping_rows(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """Rows for every key of either mapping: A's order first, then what only B has."""
    keys = list(a) + [k for k in b if k not in a]
    return [row(f"{prefix}{k}", a.get(k, MISSING), b.get(k, MISSING)) for k in keys]


def differs(section: dict[str, Any]) -> bool:
    """Whether a section holds a difference: a row that is not ``same``, or an extra."""
    if any(r["change"] != "same" for r in section.get("rows", [])):
        return True
    return bool(section.get("cells") or section.get("commit_diff") or section.get("uncommitted"))


def params_section(a: Side, b: Side) -> dict[str, Any]:
    """The notebook parameters each run executed with."""
    return {"title": "Parameters", "rows": mapping_rows(a.info["params"], b.info["params"])}


def metrics_section(a: Side, b: Side) -> dict[str, Any]:
    """The result metrics, with the absolute (B - A) and relative deltas of numbers."""
    rows = [row("status", a.info.get("status"), b.info.get("status"))]
    for r in mapping_rows(a.info.get("result") or {}, b.info.get("result") or {}):
        if r["change"] == "changed" and _number(r["a"]) and _number(r["b"]):
            r["delta"] = r["b"] - r["a"]
            r["relative"] = r["delta"] / abs(r["a"]) if r["a"] else None
        rows.append(r)
    return {"title": "Result metrics", "rows": rows}


def curves_section(a: Side, b: Side) -> dict[str, Any]:
    """Each per-epoch curve summarised: epochs, best epoch of each run, where they part."""
    rows = []
    for key in curve_keys(a.history, b.history):
        ea, eb = _series(a.history, key), _series(b.history, key)
        pairs = enumerate(zip(ea, eb, strict=False), 1)  # the longer run's tail: below
        parted = next((ep for ep, (x, y) in pairs if not _equal(x, y)), None)
        if parted is None and len(ea) != len(eb):
            parted = min(len(ea), len(eb)) + 1
        ba, bb = _best(key, ea), _best(key, eb)
        rows.append(
            {
                "key": key,
                "change": "same" if parted is None else "changed",
                "a": {"epochs": len(ea), "best_epoch": ba[0], "best": ba[1]},
                "b": {"epochs": len(eb), "best_epoch": bb[0], "best": bb[1]},
                "parted_at": parted,
            }
        )
    return {"title": "Learning curves", "rows": rows}


def curve_keys(*histories: list[dict[str, Any]]) -> list[str]:
    """The numeric per-epoch columns of any of ``histories``, in the order first logged."""
    seen: dict[str, None] = {}
    for history in histories:
        for line in history:
            seen.update({k: None for k, v in line.items() if k not in NOT_CURVES and _number(v)})
    return list(seen)


def _series(history: list[dict[str, Any]], key: str) -> list[Any]:
    return [line.get(key) for line in history if key in line]


def _best(key: str, values: list[Any]) -> tuple[int | None, Any]:
    """(epoch counted from 1, value) of the best value; (None, None) when "best" means nothing."""
    name = key.lower()
    if any(w in name for w in LOWER_IS_BETTER):
        pick = min
    elif any(w in name for w in HIGHER_IS_BETTER):
        pick = max
    else:
        return None, None
    numbers = [(v, i) for i, v in enumerate(values, 1) if _number(v) and not math.isnan(v)]
    if not numbers:
        return None, None
    # The first epoch reaching the best value, as early stopping counts it.
    value = pick(v for v, _ in numbers)
    epoch = next(i for v, i in numbers if v == value)
    return epoch, value


def data_section(a: Side, b: Side) -> dict[str, Any]:
    """The data each run trained on: name, version, source, row counts per split, schema."""
    da, db = a.lineage.get("data") or {}, b.lineage.get("data") or {}
    rows = []
    for key in ("name", "version", "source", "table_hash", "task", "input_shape", "n_outputs"):
        if key in da or key in db:
            rows.append(row(key, da.get(key, MISSING), db.get(key, MISSING)))
    rows += mapping_rows(da.get("sizes") or {}, db.get("sizes") or {}, prefix="rows ")
    sa = ((a.data or {}).get("schema") or {}).get("columns") or {}
    sb = ((b.data or {}).get("schema") or {}).get("columns") or {}
    rows += mapping_rows(_shapes(sa), _shapes(sb), prefix="column ")
    return {"title": "Data", "rows": rows}


def _shapes(columns: dict[str, Any]) -> dict[str, str]:
    """A column's structure (role, dtype, kind); its statistics change with the version."""
    return {
        name: " ".join(str(c.get(k)) for k in ("role", "dtype", "kind") if c.get(k) is not None)
        for name, c in columns.items()
    }


def environment_section(a: Side, b: Side) -> dict[str, Any]:
    """Versions, device and host, and the installed packages added, removed or changed."""
    la, lb = a.lineage, b.lineage
    rows = [
        row(key, la.get(key, MISSING), lb.get(key, MISSING))
        for key in ("python", "torch", "mlkit", "device", "cuda", "host", "platform")
        if key in la or key in lb
    ]
    rows += mapping_rows(_packages(la), _packages(lb), prefix="package ")
    return {"title": "Environment", "rows": rows}


def _packages(lineage: dict[str, Any]) -> dict[str, str]:
    pairs = (p.partition("==") for p in lineage.get("packages") or [])
    return {name.lower(): version for name, _, version in pairs}


def figures_section(a: Side, b: Side) -> dict[str, Any]:
    """The logged figures (PNG files of the record), compared by content."""
    ha = {name: _digest(path) for name, path in a.figures.items()}
    hb = {name: _digest(path) for name, path in b.figures.items()}
    return {"title": "Figures", "rows": mapping_rows(ha, hb)}


def _digest(path: Any) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def notes(a: Side, b: Side) -> list[str]:
    """What a reader must know before the sections: runs of different notebooks."""
    na, nb = a.info.get("notebook"), b.info.get("notebook")
    if na != nb:
        return [f"The runs executed different notebooks (A: {na}, B: {nb}); compared anyway."]
    return []


def header(side: Side) -> dict[str, Any]:
    """Who is who: A and B named at the top of every view."""
    info = side.info
    keys = ("id", "experiment", "notebook", "status", "started", "duration", "path")
    return {k: info.get(k) for k in keys}


def view(sections: dict[str, dict[str, Any]], show_all: bool) -> dict[str, dict[str, Any]]:
    """The sections as shown: every row with ``show_all``, else only what differs."""
    if show_all:
        return sections
    out = {}
    for name, section in sections.items():
        if not differs(section):
            continue
        kept = dict(section)
        kept["rows"] = [r for r in section.get("rows", []) if r["change"] != "same"]
        out[name] = kept
    return out
