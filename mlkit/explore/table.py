"""The explorer's view of a study: one row per trial, joined with its run record.

A trial knows its record (the driver stores ``run_path`` on it as the run starts), so a
row reads the record it names and never searches the experiments folder. The runs table,
the compare list and ``Explorer.rows()`` all show these rows.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from mlkit import record_store
from mlkit.run import params as _params
from mlkit.sweep import space as _space


def trial_row(trial: Any) -> dict[str, Any]:
    """A trial as the runs table shows it: state, source, parameters, result, its record."""
    run_path = trial.user_attrs.get("run_path")
    record = Path(run_path) if run_path else None
    info: dict[str, Any] = {}
    if record is not None and record.exists():
        info = dict(record_store.load_run(record))
    result = info.get("result") or trial.user_attrs.get("result") or {}
    duration = trial.duration.total_seconds() if trial.duration else info.get("duration")
    return {
        "number": trial.number,
        "state": trial.state.name,
        "source": "manual" if trial.user_attrs.get("manual") else "sampled",
        "params": {**(info.get("params") or {}), **trial.params},
        "searched": dict(trial.params),
        "objective": trial.values[0] if trial.values else None,
        "result": result,
        "test": {k: v for k, v in result.items() if k.startswith("test/")},
        "duration": duration,
        "fail_reason": trial.user_attrs.get("fail_reason", ""),
        "run_id": info.get("id"),
        "run_path": str(record) if record is not None else None,
    }


def outcome_text(row: dict[str, Any], metric: str) -> str:
    """The status line's sentence for a trial that ended."""
    number, state = row["number"], row["state"]
    if state == "COMPLETE":
        return f"completed trial #{number}: {metric} = {fmt(row['objective'])}"
    if state == "PRUNED":
        return f"trial #{number} pruned"
    return f"failed trial #{number}: {row.get('fail_reason') or 'no reason recorded'}"


def compare_options(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(label, trial number) of every trial with a record, for the compare list."""
    return [
        (f"#{r['number']} {r['state'].lower()} {r['source']} {fmt(r['objective'])}", r["number"])
        for r in rows
        if r["run_path"]
    ]


def key_params(
    rows: list[dict[str, Any]], dims: list[_space.Dim], signature: _params.Signature
) -> list[str]:
    """The dimensions, then parameters some run changed from the notebook's default."""
    names = [d.name for d in dims]
    defaults = signature.defaults()
    for param in signature.parameters:
        if param.name in names or param.name == "seed":
            continue
        default = defaults[param.name]
        if any(r["params"].get(param.name, default) != default for r in rows):
            names.append(param.name)
    return names


def table_html(
    rows: list[dict[str, Any]],
    keys: list[str],
    dims: set[str],
    *,
    metric: str,
    sort_by: str,
    minimize: bool,
) -> str:
    """The runs table as HTML; each row's tooltip is its fail reason.

    Args:
        rows: the trials' rows (see ``trial_row``).
        keys: the parameter columns (see ``key_params``).
        dims: names of the search space's dimensions.
        metric: the objective's name, the objective column's header.
        sort_by: "#", "objective", "duration" or a parameter's name.
        minimize: whether the objective is minimised (its best comes first).
    """
    if not rows:
        return "<i>no trials yet: click Run</i>"
    rows = sorted_rows(rows, sort_by, minimize)
    tests = sorted({k for r in rows for k in r["test"]})
    head = ["#", "state", "source", *keys, metric, *tests, "duration"]
    body = []
    for r in rows:
        cells = [
            r["number"],
            r["state"].lower(),
            r["source"],
            # An inactive dimension (channels of an mlp) did not shape the run.
            *[(r["searched"] if k in dims else r["params"]).get(k, "") for k in keys],
            r["objective"],
            *[r["test"].get(k) for k in tests],
            f"{r['duration']:.1f} s" if r["duration"] is not None else "",
        ]
        title = html.escape(r["fail_reason"], quote=True)
        body.append(
            f'<tr title="{title}">'
            + "".join(f"<td{CELL}>{html.escape(fmt(c))}</td>" for c in cells)
            + "</tr>"
        )
    header = "".join(f"<th{CELL}>{html.escape(h)}</th>" for h in head)
    # A table wider than the panel scrolls in its own box instead of being cut at its edge.
    return (
        '<div style="overflow-x:auto;max-width:100%">'
        '<table class="mlkit-runs" style="border-collapse:collapse">'
        f"<thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


# Inline: the widget's HTML takes no stylesheet. Without padding the headers run together.
CELL = ' style="padding:2px 10px;text-align:left;white-space:nowrap"'


def fmt(value: Any) -> str:
    """A cell's text: floats to four significant digits, None empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def sorted_rows(rows: list[dict[str, Any]], key: str, minimize: bool) -> list[dict[str, Any]]:
    """Rows sorted by a column, empty cells last; the objective best first."""

    def value(row: dict[str, Any]) -> Any:
        if key == "#":
            return row["number"]
        if key == "objective":
            v = row["objective"]
            return v if v is None or minimize else -v
        if key == "duration":
            return row["duration"]
        return row["params"].get(key)

    present = [r for r in rows if value(r) is not None]
    missing = [r for r in rows if value(r) is None]
    try:
        present.sort(key=value)
    except TypeError:  # mixed types in one column
        present.sort(key=lambda r: str(value(r)))
    return present + missing
