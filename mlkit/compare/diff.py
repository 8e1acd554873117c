"""Two runs side by side: every section of what differs, as one plain-data comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlkit.compare import sections
from mlkit.compare.code import code_section
from mlkit.compare.notebooks import notebook_section
from mlkit.compare.runs import Side, load

ORDER = ("params", "metrics", "curves", "data", "environment", "code", "notebook", "figures")


def compare(
    ref_a: str,
    ref_b: str,
    *,
    storage: str | None = None,
    root: Path | None = None,
    show_all: bool = False,
) -> dict[str, Any]:
    """Compare run ``ref_a`` (A) with ``ref_b`` (B).

    Args:
        ref_a: a run id, a unique prefix, a run directory, or ``STUDY#N``.
        ref_b: the same, for B.
        storage: the storage URL of the studies a ``STUDY#N`` names (default: its journal).
        root: the experiments folder (default: :func:`mlkit.record_store.experiments_root`).
        show_all: keep the rows that match too; by default only differences remain.

    Returns:
        ``{"a", "b", "notes", "differs", "sections"}``: A and B named, notes to read first,
        whether anything compared differs, and the sections in reading order.

    Raises:
        RunNotFoundError: a reference matches no run (the message lists the closest ids).
        UsageError: another bad reference (ambiguous prefix, unknown study or trial).
    """
    a, b = load(ref_a, storage, root), load(ref_b, storage, root)
    return compare_sides(a, b, show_all=show_all)


def compare_sides(a: Side, b: Side, *, show_all: bool = False) -> dict[str, Any]:
    """:func:`compare` for two records already read."""
    full = {
        "params": sections.params_section(a, b),
        "metrics": sections.metrics_section(a, b),
        "curves": sections.curves_section(a, b),
        "data": sections.data_section(a, b),
        "environment": sections.environment_section(a, b),
        "code": code_section(a, b),
        "notebook": notebook_section(a.notebook, b.notebook),
        "figures": sections.figures_section(a, b),
    }
    notes = sections.notes(a, b)
    return {
        "a": sections.header(a),
        "b": sections.header(b),
        "notes": notes,
        "differs": bool(notes) or any(sections.differs(s) for s in full.values()),
        "sections": sections.view(full, show_all),
    }
