"""A comparison as one self-contained HTML page: no network, the same bytes for the same runs.

The page holds the sections as tables, both runs' learning curves overlaid (plotly, its
JavaScript inlined) in ``id="curves"``, and each pair of logged figures side by side
(``class="figure-pair"``, PNGs inlined as base64).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from mlkit._io import write_text
from mlkit.compare.render import value
from mlkit.compare.runs import Side
from mlkit.compare.sections import curve_keys

COLORS = {"A": "#1f77b4", "B": "#d62728"}
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
td, th { padding: .2em .8em; text-align: left; border-bottom: 1px solid #eee; }
#runs td { overflow-wrap: anywhere; } /* a run's long path, not the page, breaks */
.changed { color: #a15c00; } .added { color: #137333; } .removed { color: #b3261e; }
.same { color: #888; } .note { background: #fff4e5; padding: .5em 1em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 90%; }
.figure-pair { display: flex; gap: 1em; margin-bottom: 1.5em; }
/* min-width: 0 lets a wide figure shrink to its half, not widen the page past the window */
.figure-pair figure { flex: 1; min-width: 0; margin: 0; } .figure-pair img { max-width: 100%; }
"""


def write_page(comparison: dict[str, Any], a: Side, b: Side, path: str | Path) -> Path:
    """Write the page of ``comparison`` (of runs ``a`` and ``b``) to ``path``, atomically."""
    e = html.escape
    title = f"mlkit diff {comparison['a']['id']} {comparison['b']['id']}"
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>',
        f"<style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        _runs_table(comparison),
        *(f'<p class="note">{e(n)}</p>' for n in comparison["notes"]),
        f"<p><strong>{'The runs differ.' if comparison['differs'] else 'The runs match.'}"
        "</strong></p>",
    ]
    for name, section in comparison["sections"].items():
        parts.append(f'<section id="section-{name}"><h2>{e(section["title"])}</h2>')
        if section.get("note"):
            parts.append(f'<p class="note">{e(section["note"])}</p>')
        parts.append(_section_body(name, section))
        parts.append("</section>")
    parts.append('<section id="section-curves-plot"><h2>Learning curves, overlaid</h2>')
    parts.append(curves_html(a, b))
    parts.append("</section>")
    parts.append('<section id="section-figure-pairs"><h2>Figures, side by side</h2>')
    parts.extend(_figure_pairs(a, b))
    parts.append("</section></body></html>")
    target = Path(path)
    write_text(target, "\n".join(parts) + "\n")
    return target


def _runs_table(comparison: dict[str, Any]) -> str:
    e = html.escape
    keys = ("id", "experiment", "notebook", "status", "started", "path")
    rows = "".join(
        f"<tr><th>{k}</th><td>{e(value(comparison['a'].get(k)))}</td>"
        f"<td>{e(value(comparison['b'].get(k)))}</td></tr>"
        for k in keys
    )
    return f'<table id="runs"><tr><th></th><th>A</th><th>B</th></tr>{rows}</table>'


def _section_body(name: str, section: dict[str, Any]) -> str:
    e = html.escape
    out = []
    if section.get("rows"):
        heads = ("", "A", "B", *(["B - A", "relative"] if name == "metrics" else []))
        if name == "curves":  # a curve is a summary per side: the terminal's columns
            heads = ("", "epochs A / B", "best epoch A / B", "best A", "best B", "part at epoch")
        head = "".join(f"<th>{h}</th>" for h in heads)
        out.append(f"<table><tr>{head}</tr>")
        for r in section["rows"]:
            cells = [r["key"], value(r["a"]), value(r["b"])]
            if name == "metrics":
                rel = r.get("relative")
                cells += [value(r.get("delta")) if "delta" in r else "", _percent(rel)]
            elif name == "curves":
                a, b = r["a"], r["b"]
                cells[1:] = [
                    f"{a['epochs']} / {b['epochs']}",
                    f"{value(a['best_epoch'])} / {value(b['best_epoch'])}",
                    value(a["best"]),
                    value(b["best"]),
                    value(r["parted_at"]),
                ]
            tds = "".join(f"<td>{e(c)}</td>" for c in cells)
            out.append(f'<tr class="{r["change"]}">{tds}</tr>')
        out.append("</table>")
    if section.get("commit_diff"):
        out.append(f"<h3>git diff A..B</h3><pre>{e(section['commit_diff'])}</pre>")
    for side, text in (section.get("uncommitted") or {}).items():
        out.append(f"<h3>Uncommitted change of {side.upper()}</h3><pre>{e(text)}</pre>")
    for cell in section.get("cells", []):
        what = cell["change"] if cell["change"] != "changed" else ", ".join(cell["parts"])
        head = f"Cell A{value(cell['a'])} / B{value(cell['b'])} ({cell['cell_type']}): {what}"
        out.append(f'<h3 class="{cell["change"]}">{e(head)}</h3>')
        for part in ("source", "outputs"):
            if cell[f"{part}_diff"]:
                out.append(f"<pre>{e(chr(10).join(cell[f'{part}_diff']))}</pre>")
    return "\n".join(out)


def _percent(rel: float | None) -> str:
    return f"{rel:+.2%}" if rel is not None else ""


def curves_html(a: Side, b: Side) -> str:
    """Both runs' per-epoch curves, one panel per metric, in ``<div id="curves">``."""
    from plotly.subplots import make_subplots  # 0.3 s: only a page with curves needs it

    keys = curve_keys(a.history, b.history)
    if not keys:
        return '<div id="curves"><p>Neither run logged per-epoch metrics.</p></div>'
    columns = 2 if len(keys) > 1 else 1
    rows = math.ceil(len(keys) / columns)
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=keys)
    for i, key in enumerate(keys):
        for label, side, dash in (("A", a, "solid"), ("B", b, "dash")):
            points = [(h["epoch"], h[key]) for h in side.history if key in h and "epoch" in h]
            fig.add_scatter(
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                name=f"{label} {side.id}",
                legendgroup=label,
                showlegend=i == 0,
                line={"color": COLORS[label], "dash": dash},
                row=i // columns + 1,
                col=i % columns + 1,
            )
    fig.update_layout(height=280 * rows, template="plotly_white", margin={"t": 40})
    epochs = max((h["epoch"] for r in (a, b) for h in r.history if "epoch" in h), default=0)
    if epochs <= 10:  # a tick per epoch, not at epoch 1.2, 1.4...
        fig.update_xaxes(dtick=1)
    # A fixed div id, inlined JS and no config link keep the page the same bytes each time.
    return fig.to_html(
        full_html=False, include_plotlyjs=True, div_id="curves", config={"displaylogo": False}
    )


def _figure_pairs(a: Side, b: Side) -> list[str]:
    e = html.escape
    names = list(a.figures) + [n for n in b.figures if n not in a.figures]
    if not names:
        return ["<p>Neither run logged a figure.</p>"]
    out = []
    for name in names:
        figures = []
        for label, side in (("A", a), ("B", b)):
            path = side.figures.get(name)
            if path is None:
                figures.append(f"<figure><figcaption>{label}: none</figcaption></figure>")
                continue
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            figures.append(
                f'<figure><figcaption>{label}: {e(name)}</figcaption><img alt="{label} '
                f'{e(name)}" src="data:image/png;base64,{data}"></figure>'
            )
        out.append(f'<div class="figure-pair" id="figure-{e(name)}">{"".join(figures)}</div>')
    return out
