"""A comparison as terminal text (rich): A and B named, then each section that is shown."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

STYLE = {"changed": "yellow", "added": "green", "removed": "red", "same": "dim"}
DIFF_STYLE = {"+": "green", "-": "red", "@": "cyan"}


def value(v: Any) -> str:
    """A compared value in one short line: floats to 6 significant digits, None as -."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def render(comparison: dict[str, Any], console: Console | None = None) -> None:
    """Print ``comparison`` (from :func:`mlkit.compare.compare`) to ``console``."""
    # In a notebook too, one block of text rather than one HTML output per line.
    console = console or Console(highlight=False, soft_wrap=True, force_jupyter=False)
    for side in ("a", "b"):
        h = comparison[side]
        console.print(
            Text.assemble(
                (f"{side.upper()}  ", "bold"),
                f"{h['id']}  {h.get('experiment')}  {h.get('notebook')}  {h.get('status')}",
            )
        )
    for note in comparison["notes"]:
        console.print(Text(f"note: {note}", style="yellow"))
    for name, section in comparison["sections"].items():
        console.print()
        console.print(Text(section["title"], style="bold underline"))
        if section.get("note"):
            console.print(Text(f"  note: {section['note']}", style="yellow"))
        _SECTION.get(name, _rows)(console, section)
    console.print()
    if comparison["differs"]:
        names = ", ".join(s["title"].lower() for s in comparison["sections"].values()) or "notes"
        console.print(Text(f"the runs differ: {names}", style="bold yellow"))
    else:
        console.print(Text("the runs match on everything compared", style="bold green"))


def _rows(console: Console, section: dict[str, Any]) -> None:
    if not section["rows"]:
        return
    table = Table(box=None, padding=(0, 1), show_header=True, pad_edge=True)
    for column in ("", "A", "B"):
        table.add_column(column)
    for r in section["rows"]:
        mark = {"added": "+ ", "removed": "- "}.get(r["change"], "")
        table.add_row(Text(mark + r["key"], style=STYLE[r["change"]]), value(r["a"]), value(r["b"]))
    console.print(table)


def _metrics(console: Console, section: dict[str, Any]) -> None:
    table = Table(box=None, padding=(0, 1))
    for column in ("", "A", "B", "B - A", "relative"):
        table.add_column(column, justify="left" if not column else "right")
    for r in section["rows"]:
        delta = value(r["delta"]) if "delta" in r else ""
        rel = r.get("relative")
        table.add_row(
            Text(r["key"], style=STYLE[r["change"]]),
            value(r["a"]),
            value(r["b"]),
            delta,
            f"{rel:+.2%}" if rel is not None else "",
        )
    console.print(table)


def _curves(console: Console, section: dict[str, Any]) -> None:
    table = Table(box=None, padding=(0, 1))
    for column in ("", "epochs A / B", "best epoch A / B", "best A", "best B", "part at epoch"):
        table.add_column(column)
    for r in section["rows"]:
        a, b = r["a"], r["b"]
        table.add_row(
            Text(r["key"], style=STYLE[r["change"]]),
            f"{a['epochs']} / {b['epochs']}",
            f"{value(a['best_epoch'])} / {value(b['best_epoch'])}",
            value(a["best"]),
            value(b["best"]),
            value(r["parted_at"]),
        )
    console.print(table)


def _code(console: Console, section: dict[str, Any]) -> None:
    _rows(console, section)
    if section.get("commit_diff"):
        console.print(Text("  git diff A..B:", style="bold"))
        _diff_lines(console, section["commit_diff"].splitlines())
    for side, text in (section.get("uncommitted") or {}).items():
        console.print(Text(f"  uncommitted change of {side.upper()}:", style="bold"))
        _diff_lines(console, text.splitlines())


def _notebook(console: Console, section: dict[str, Any]) -> None:
    for cell in section.get("cells", []):
        where = f"cell A{value(cell['a'])} / B{value(cell['b'])} ({cell['cell_type']})"
        what = cell["change"] if cell["change"] != "changed" else ", ".join(cell["parts"])
        console.print(Text(f"  {where}: {what}", style=STYLE[cell["change"]]))
        for part in ("source", "outputs"):
            if cell[f"{part}_diff"]:
                console.print(Text(f"    {part}:", style="dim"))
                _diff_lines(console, cell[f"{part}_diff"], indent="      ")


def _diff_lines(console: Console, lines: list[str], indent: str = "    ") -> None:
    for line in lines:
        console.print(Text(indent + line, style=DIFF_STYLE.get(line[:1], "")))


_SECTION = {"metrics": _metrics, "curves": _curves, "code": _code, "notebook": _notebook}
