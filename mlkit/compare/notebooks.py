"""The executed notebooks cell by cell: nbdime aligns and diffs them, we summarise.

Before the diff both notebooks are cut down to what a reader compares (each cell's type,
source and outputs: no execution counts, timings or metadata), and the outputs are
sanitized with the regex rules nbval uses for the committed notebooks
(``notebooks/sanitize.cfg``), so run ids, paths, durations and addresses never count as a
difference. Papermill's injected-parameters cell is left out: the parameters section says
the same thing.
"""

from __future__ import annotations

import configparser
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from mlkit._contract import TEMPLATES_DIR
from mlkit.record_store import project_root

SANITIZE_FILE = Path("notebooks") / "sanitize.cfg"
INJECTED = "injected-parameters"
TEXT_MIMES = ("text/plain", "text/html", "text/markdown", "text/latex")
MAX_LINES = 40  # of one cell's diff shown; the rest is counted


def sanitize_rules(path: Path | None = None) -> list[tuple[re.Pattern[str], str]]:
    """The (regex, replacement) pairs of an nbval sanitize file, in the file's order.

    Args:
        path: the file; default ``notebooks/sanitize.cfg`` of the current project, else the
            one beside mlkit's templates. None found gives no rules.
    """
    if path is None:
        found = [
            base / SANITIZE_FILE
            for base in (project_root(), TEMPLATES_DIR.parent)
            if base and (base / SANITIZE_FILE).is_file()
        ]
        if not found:
            return []
        path = found[0]
    # nbval's own format: one section per rule, "regex:" and "replace:" keys.
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    return [
        (re.compile(parser[name]["regex"]), parser[name].get("replace", ""))
        for name in parser.sections()
        if "regex" in parser[name]
    ]


def reduce(nb: dict[str, Any], rules: list[tuple[re.Pattern[str], str]]) -> dict[str, Any]:
    """The notebook as compared: cell type, source and sanitized outputs of each cell."""
    cells = []
    for cell in nb.get("cells", []):
        if INJECTED in (cell.get("metadata") or {}).get("tags", []):
            continue
        kept: dict[str, Any] = {"cell_type": cell.get("cell_type"), "source": _text(cell)}
        if cell.get("cell_type") == "code":
            kept["outputs"] = [_output(o, rules) for o in cell.get("outputs", [])]
        cells.append(kept)
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _text(cell_or_value: Any, key: str = "source") -> str:
    value = cell_or_value.get(key, "") if isinstance(cell_or_value, dict) else cell_or_value
    return "".join(value) if isinstance(value, list) else str(value)


def _clean(text: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


def _output(output: dict[str, Any], rules: list[tuple[re.Pattern[str], str]]) -> dict[str, Any]:
    kind = output.get("output_type")
    out: dict[str, Any] = {"output_type": kind}
    if kind == "stream":
        out.update(name=output.get("name"), text=_clean(_text(output, "text"), rules))
    elif kind == "error":
        out.update(
            ename=output.get("ename"),
            evalue=_clean(str(output.get("evalue", "")), rules),
            traceback=[_clean(line, rules) for line in output.get("traceback", [])],
        )
    else:
        data = {}
        for mime, value in (output.get("data") or {}).items():
            text = value if isinstance(value, str | list) else json.dumps(value, sort_keys=True)
            text = _text(text)
            data[mime] = _clean(text, rules) if mime in TEXT_MIMES else text
        out.update(data=data)
    return out


def _shown(outputs: list[dict[str, Any]]) -> list[str]:
    """Outputs as lines to read: texts whole, images and other data by their hash."""
    lines: list[str] = []
    for out in outputs:
        if out["output_type"] == "stream":
            lines += out["text"].splitlines()
        elif out["output_type"] == "error":
            lines.append(f"{out['ename']}: {out['evalue']}")
        else:
            data = out["data"]
            images = [m for m in data if not (m.startswith("text/") or m.endswith("json"))]
            for mime in images:
                digest = hashlib.sha256(data[mime].encode()).hexdigest()[:12]
                lines.append(f"[{mime} sha256:{digest}]")
            # The plain text is what a reader sees; beside an image it is only its repr.
            texts = [m for m in ("text/plain", *data) if m in data and m not in images]
            if texts and not images:
                lines += data[texts[0]].splitlines()
    return lines


def _unified(a: list[str], b: list[str]) -> list[str]:
    lines = list(difflib.unified_diff(a, b, "A", "B", lineterm="", n=1))[2:]
    if len(lines) > MAX_LINES:
        lines = [*lines[:MAX_LINES], f"... {len(lines) - MAX_LINES} more lines"]
    return lines


def _diff_notebooks(a: dict[str, Any], b: dict[str, Any]) -> list[Any]:
    # Imported here: only a comparison of notebooks needs nbdime (most of a second to load).
    # nbdime reads attributes, so the dicts become nbformat's nodes.
    from nbdime import diff_notebooks
    from nbformat import from_dict

    return diff_notebooks(from_dict(a), from_dict(b))


def notebook_section(path_a: Path, path_b: Path) -> dict[str, Any]:
    """The cells that differ, from nbdime's diff of the two sanitized notebooks.

    Each cell is ``{"a": index, "b": index, "change", "cell_type", "parts", "source_diff",
    "outputs_diff"}``: indices count the cells compared (None on the side that lacks it),
    ``parts`` names what changed (source, outputs), the diffs are unified-diff lines.
    """
    section: dict[str, Any] = {"title": "Notebook", "rows": [], "cells": []}
    missing = [str(p) for p in (path_a, path_b) if not p.is_file()]
    if missing:
        section["note"] = f"no executed notebook at {', '.join(missing)}: cells not compared"
        return section
    rules = sanitize_rules()
    a = reduce(json.loads(path_a.read_text(encoding="utf-8")), rules)
    b = reduce(json.loads(path_b.read_text(encoding="utf-8")), rules)
    section["cells"] = summarize(_diff_notebooks(a, b), a["cells"], b["cells"])
    section["sanitized_with"] = len(rules)
    return section


def summarize(diff: list[Any], cells_a: list[Any], cells_b: list[Any]) -> list[dict[str, Any]]:
    """nbdime's diff of ``cells`` as one entry per added, removed or changed cell."""
    entries = next((d["diff"] for d in diff if d["key"] == "cells"), [])
    out: list[dict[str, Any]] = []
    offset = 0  # B's index minus A's, after the ranges added and removed so far
    for entry in entries:
        key = entry["key"]
        if entry["op"] == "addrange":
            for i, cell in enumerate(entry["valuelist"]):
                out.append(_cell(None, key + offset + i, "added", cell, None, cell))
            offset += len(entry["valuelist"])
        elif entry["op"] == "removerange":
            for i in range(entry["length"]):
                cell = cells_a[key + i]
                out.append(_cell(key + i, None, "removed", cell, cell, None))
            offset -= entry["length"]
        elif entry["op"] == "patch":
            ca, cb = cells_a[key], cells_b[key + offset]
            parts = sorted(d["key"] for d in entry["diff"])
            out.append(_cell(key, key + offset, "changed", cb, ca, cb, parts))
    return out


def _cell(
    ia: int | None,
    ib: int | None,
    change: str,
    cell: dict[str, Any],
    ca: dict[str, Any] | None,
    cb: dict[str, Any] | None,
    parts: list[str] | None = None,
) -> dict[str, Any]:
    parts = parts or ["source", "outputs"]
    source_a, source_b = (c["source"].splitlines() if c else [] for c in (ca, cb))
    outputs_a, outputs_b = (_shown(c.get("outputs", [])) if c else [] for c in (ca, cb))
    return {
        "a": ia,
        "b": ib,
        "change": change,
        "cell_type": cell.get("cell_type"),
        "parts": parts,
        "source_diff": _unified(source_a, source_b) if "source" in parts else [],
        "outputs_diff": _unified(outputs_a, outputs_b) if "outputs" in parts else [],
    }
