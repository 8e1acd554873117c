"""Shadow skew: where do the primary model and its shadow disagree?

``mlkit serve NAME --shadow ALIAS`` scores every accepted input twice: the primary's answer is
returned and logged (role ``primary``), the shadow's is only logged (role ``shadow``, the same
request id). ``mlkit skew NAME[:ALIAS]`` (or :func:`skew`) joins the two by request id over
the newest ``window`` examples that the version behind ``ALIAS`` answered, and says:

- **classification**: the share of examples where the two predict different classes, with
  its 95% Wilson interval; the confusion table primary x shadow; the largest disagreements
  (the shadow's probability for the primary's class lowest) with their inputs;
- **regression**: the mean difference (shadow minus primary), the mean and largest absolute
  differences, the largest with their inputs; with ``tolerance``, an example disagrees when
  the two differ by more than it, and the rate and interval are those of classification.

``max_disagreement`` makes it a check, by the guard's rule: it fails (``mlkit skew`` exits 1)
when the lower end of the rate's 95% interval is above the bound, so a few unlucky examples
never fail it. Every call writes a record under ``experiments/skew-<NAME>/runs/<id>/``:
``skew.json`` (the report), ``skew.png`` (the confusion table as a heatmap, or the histogram
of the differences) and ``result.json`` (the headline numbers, ``skew/...``), so ``mlkit runs``
lists it beside the monitor's runs.

Requests the shadow has not scored (it drops batches when it falls behind, and scores after
the response, so the newest may not be there yet) or failed on are counted, not paired.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlkit import record_store
from mlkit._contract import PARAMS_FILE, RESULT_FILE, RUN_FILE
from mlkit._io import hostname, now_iso, write_json
from mlkit.errors import NotFoundError, ParameterError, StateError
from mlkit.figures import render_png
from mlkit.ops.stats import wilson_interval
from mlkit.registry import store
from mlkit.serve import predlog

__all__ = [
    "DEFAULT_TOP",
    "DEFAULT_WINDOW",
    "Pair",
    "body_examples",
    "check_options",
    "check_rate",
    "classification_skew",
    "draw_disagreement",
    "format_report",
    "headline",
    "largest_lines",
    "log_url",
    "pairs_from_rows",
    "predictions",
    "regression_skew",
    "skew",
    "write_record",
]

DEFAULT_WINDOW = 1000
DEFAULT_TOP = 10
# The request body's keys (mlkit.serve.schema.BODY_KEYS): one example, or a list of them.
_BODY_KEYS = ("input", "inputs", "raw_input", "raw_inputs", "record", "records")


@dataclass
class Pair:
    """One example both models answered: the primary's answer, the shadow's, and the input."""

    request_id: str
    example: int  # its position in the request's batch
    input: Any  # as the client sent it (features, raw features or a record); None if unread
    primary: dict[str, Any]  # class, index, probabilities; or value
    shadow: dict[str, Any]
    version: int  # the primary's
    shadow_model: str  # NAME:vN of the shadow


# --- pairing the log's rows ---------------------------------------------------------


def predictions(row: dict[str, Any]) -> list[Any]:
    """The answers of a log row, one per example (empty when it holds none)."""
    out = json.loads(row["output"]) if row.get("output") else {}
    if out.get("prediction") is not None:
        return [out["prediction"]]
    return list(out.get("predictions") or [])


def body_examples(row: dict[str, Any], n: int) -> tuple[str | None, list[Any]]:
    """The body key a request's ``n`` examples came under, and the examples, one per answer.

    ``(None, n Nones)`` when the body cannot be read as ``n`` examples. The key (``input``,
    ``raw_inputs``, ``records``...) says which space they are in.
    """
    try:
        body = json.loads(row["input"]) if row.get("input") else {}
    except json.JSONDecodeError:
        body = {}
    key = next((k for k in _BODY_KEYS if isinstance(body, dict) and body.get(k) is not None), None)
    if key is None:
        return None, [None] * n
    xs = body[key] if key.endswith("s") else [body[key]]
    return (key, xs) if isinstance(xs, list) and len(xs) == n else (None, [None] * n)


def pairs_from_rows(
    rows: list[dict[str, Any]], name: str, *, version: int | None = None, last: int = DEFAULT_WINDOW
) -> tuple[list[Pair], dict[str, int]]:
    """The newest ``last`` examples of model ``name`` (of ``version``, if given) with both answers.

    ``rows`` are prediction log rows, oldest first (:meth:`PredictionLog.rows`). Returns the
    pairs, oldest first, and how many of the requests scanned had no shadow answer
    (``no_shadow_row``) or a failed one (``shadow_failed``).
    """
    shadows = {r["request_id"]: r for r in rows if r["role"] == "shadow"}
    counts = {"requests": 0, "no_shadow_row": 0, "shadow_failed": 0}
    pairs: list[Pair] = []
    for row in reversed(rows):  # newest first, until the window is full
        if row["role"] != "primary" or row["model"] != name or row["status"] != 200:
            continue
        if version is not None and row["version"] != version:
            continue
        other = shadows.get(row["request_id"])
        if other is None:
            counts["no_shadow_row"] += 1
            continue
        if other["status"] != 200:
            counts["shadow_failed"] += 1
            continue
        mine, theirs = predictions(row), predictions(other)
        if not mine or len(mine) != len(theirs):
            continue  # not a pair this report understands; never guess its pairing
        counts["requests"] += 1
        xs = body_examples(row, len(mine))[1]
        shown = f"{other['model']}:v{other['version']}"
        for i in reversed(range(len(mine))):
            pairs.append(
                Pair(row["request_id"], i, xs[i], mine[i], theirs[i], row["version"], shown)
            )
            if len(pairs) == last:
                break
        if len(pairs) == last:
            break
    pairs.reverse()
    return pairs, counts


# --- statistics ------------------------------------------------------------------------


def _rate(bad: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(bad, n)
    return {"disagreements": bad, "n": n, "rate": bad / n if n else None, "ci95": [low, high]}


def _example(pair: Pair) -> dict[str, Any]:
    return {"request_id": pair.request_id, "example": pair.example, "input": pair.input}


def classification_skew(pairs: list[Pair], top: int = DEFAULT_TOP) -> dict[str, Any]:
    """Disagreement rate with its 95% Wilson interval, confusion table, largest disagreements.

    Two answers disagree when their class indexes differ. ``confusion[i][j]`` counts the
    examples the primary put in class ``classes[i]`` and the shadow in ``classes[j]``. The
    ``top`` disagreements listed are those where the shadow gave the primary's class the
    lowest probability.
    """
    primary = [int(p.primary["index"]) for p in pairs]
    shadow = [int(p.shadow["index"]) for p in pairs]
    width = max(len(p.primary.get("probabilities") or ()) for p in pairs)
    k = max(width, max(primary) + 1, max(shadow) + 1)
    names = [str(i) for i in range(k)]
    for pair in reversed(pairs):  # the newest name of each class wins
        for answer in (pair.shadow, pair.primary):
            if answer.get("class") is not None:
                names[int(answer["index"])] = str(answer["class"])
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (primary, shadow), 1)
    differ = [p for p in pairs if p.primary["index"] != p.shadow["index"]]

    def support(pair: Pair) -> float:
        probs = pair.shadow.get("probabilities") or ()
        i = int(pair.primary["index"])
        return float(probs[i]) if i < len(probs) else 0.0

    largest = [
        {
            **_example(p),
            "primary": names[int(p.primary["index"])],
            "shadow": names[int(p.shadow["index"])],
            "shadow_p_of_primary_class": support(p),
        }
        for p in sorted(differ, key=support)[:top]
    ]
    return {
        **_rate(len(differ), len(pairs)),
        "classes": names,
        "confusion": confusion.tolist(),
        "largest": largest,
    }


def regression_skew(
    pairs: list[Pair], top: int = DEFAULT_TOP, tolerance: float | None = None
) -> dict[str, Any]:
    """Differences (shadow minus primary): mean, mean and largest absolute, the ``top`` largest.

    With ``tolerance``, an example disagrees when ``|difference| > tolerance``: the rate and
    its 95% Wilson interval are added, as for classification.
    """
    primary = np.array([float(p.primary["value"]) for p in pairs])
    shadow = np.array([float(p.shadow["value"]) for p in pairs])
    diff = shadow - primary
    order = np.argsort(-np.abs(diff), kind="stable")[:top]
    out: dict[str, Any] = {
        "n": len(pairs),
        "mean_difference": float(diff.mean()),
        "mean_abs_difference": float(np.abs(diff).mean()),
        "max_abs_difference": float(np.abs(diff).max()),
        "differences": diff.tolist(),
        "largest": [
            {
                **_example(pairs[i]),
                "primary": float(primary[i]),
                "shadow": float(shadow[i]),
                "difference": float(diff[i]),
            }
            for i in order
        ],
        "tolerance": tolerance,
    }
    if tolerance is not None:
        out.update(_rate(int((np.abs(diff) > tolerance).sum()), len(pairs)))
    return out


def _task(pairs: list[Pair]) -> str:
    answers = [a for p in pairs for a in (p.primary, p.shadow)]
    if all(isinstance(a, dict) and "index" in a for a in answers):
        return "classification"
    if all(isinstance(a, dict) and "value" in a for a in answers):
        return "regression"
    raise StateError(
        "The primary and the shadow answer differently (a class for one, a value for the "
        "other): they are not models of the same task. Shadow a model of the same task."
    )


# --- the check, the record -------------------------------------------------------------


def check_rate(report: dict[str, Any], bound: float | None) -> None:
    """``crossed`` and a ``note`` in words, by the guard's rule: the lower end above the bound."""
    if report.get("rate") is None:
        report["crossed"] = False
        report["note"] = (
            f"{report['n']} examples, mean |difference| {report['mean_abs_difference']:.4g}"
        )
        return
    low, high = report["ci95"]
    rate = f"{report['disagreements']}/{report['n']} = {report['rate']:.3f}"
    report["crossed"] = bound is not None and low > bound
    if bound is None:
        report["note"] = f"disagreement {rate}, 95% CI [{low:.3f}, {high:.3f}]"
    else:
        side = "above" if report["crossed"] else "not above"
        report["note"] = (
            f"disagreement {rate}, 95% CI [{low:.3f}, {high:.3f}]: lower end {side} {bound:g}"
        )


def draw_disagreement(fig: Any, ax: Any, report: dict[str, Any], ours: str, theirs: str) -> None:
    """The confusion table ``ours`` x ``theirs`` as a heatmap, or the histogram of the
    differences (``theirs`` minus ``ours``), on ``ax`` of the matplotlib figure ``fig``.

    ``theirs`` names the columns' side in full (``shadow (m:v2)``); its first word heads the
    histogram's axis.
    """
    if report["task"] == "classification":
        table = np.asarray(report["confusion"])
        k = len(table)
        image = ax.imshow(table, cmap="Blues")
        fig.colorbar(image, ax=ax, label="examples")
        for i in range(k):
            for j in range(k):
                if table[i, j]:
                    color = "white" if table[i, j] > table.max() / 2 else "black"
                    ax.text(j, i, str(table[i, j]), ha="center", va="center", color=color)
        ax.set_xticks(range(k), report["classes"], rotation=90 if k > 6 else 0)
        ax.set_yticks(range(k), report["classes"])
        ax.set(xlabel=theirs, ylabel=ours)
    else:
        ax.hist(report["differences"], bins=30, color="tab:blue")
        ax.axvline(0.0, ls="--", color="grey")
        ax.set(xlabel=f"{theirs.split()[0]} - {ours}", ylabel="examples")


def headline(report: dict[str, Any]) -> str:
    """The disagreement rate with its interval, or the mean difference, in a few words."""
    if report.get("rate") is not None:
        low, high = report["ci95"]
        return f"disagreement {report['rate']:.3f}, 95% CI [{low:.3f}, {high:.3f}]"
    return f"mean difference {report['mean_difference']:+.4g}"


def _figure(report: dict[str, Any]) -> bytes:
    """The confusion table as a heatmap, or the histogram of the differences, as PNG."""
    # matplotlib takes a second to import: only when a report is drawn
    from matplotlib.figure import Figure

    if report["task"] == "classification":
        k = len(report["confusion"])
        fig = Figure(figsize=(max(4.0, 0.5 * k + 2), max(3.5, 0.5 * k + 1.5)))
    else:
        fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    shadows = ", ".join(report["shadows"])
    draw_disagreement(fig, ax, report, "primary", f"shadow ({shadows})")
    target = f"{report['model']}:{report['alias']}" if report["alias"] else report["model"]
    ax.set_title(f"{target} vs {shadows}\n{headline(report)}", fontsize=9)
    return render_png(fig)


def write_record(
    kind: str,
    report: dict[str, Any],
    params: dict[str, Any],
    result: dict[str, Any],
    figure: bytes,
    t0: float,
    root: Path | None,
) -> Path:
    """A completed run record of a report, as ``mlkit runs`` and ``mlkit show`` read it.

    It goes under ``experiments/<kind>-<model>/runs/<id>/``: ``<kind>.json`` (the report),
    ``<kind>.png`` (``figure``) and ``result.json`` (``result``, the headline numbers).
    ``t0`` is when the command began (``time.monotonic``): the run's duration counts from it.
    """
    experiment = f"{kind}-{report['model']}"
    run_id, path = record_store.create_run_dir(experiment, root)
    info: dict[str, Any] = {
        "id": run_id,
        "experiment": experiment,
        "notebook": "",
        "status": "running",
        "started": report["at"],
        "pid": os.getpid(),
        "host": hostname(),
        "driver": "mlkit",
        "job_type": kind,
    }
    write_json(path / RUN_FILE, info)
    write_json(path / PARAMS_FILE, {"notebook": "", "parameters": params})
    write_json(path / f"{kind}.json", report)
    (path / f"{kind}.png").write_bytes(figure)
    write_json(path / RESULT_FILE, result)  # the sentinel: written last but run.json
    info.update(status="completed", ended=now_iso(), duration=round(time.monotonic() - t0, 3))
    write_json(path / RUN_FILE, info)
    return path


def _write_record(
    report: dict[str, Any], params: dict[str, Any], t0: float, root: Path | None
) -> Path:
    """The skew record: the report, its figure and the headline numbers (``skew/...``)."""
    result: dict[str, Any] = {"skew/window": report["n"], "skew/crossed": int(report["crossed"])}
    if report.get("rate") is not None:
        low, high = report["ci95"]
        result.update({"skew/rate": report["rate"], "skew/ci_low": low, "skew/ci_high": high})
    if report["task"] == "regression":
        result["skew/mean_abs_difference"] = report["mean_abs_difference"]
        result["skew/max_abs_difference"] = report["max_abs_difference"]
    return write_record("skew", report, params, result, _figure(report), t0, root)


# --- the whole command -----------------------------------------------------------------


def log_url(log: str | Path | None, name: str, root: Path | None, serve: str) -> str:
    """The log's URL: ``log`` as a URL or a SQLite path, else the file beside the model.

    Raises:
        NotFoundError: a SQLite log that does not exist; the message says to ``serve`` it
            first (the command that would have logged what is wanted).
    """
    text = str(log) if log else predlog.default_url(name, root)
    url = text if "://" in text else f"sqlite:///{Path(text).resolve()}"
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        raise NotFoundError(
            f"No prediction log at {url[len('sqlite:///') :]}: serve the model first "
            f"({serve}) or pass --log URL."
        )
    return url


def check_options(
    window: int, max_disagreement: float | None, tolerance: float | None, top: int
) -> None:
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ParameterError(f"The window must be an int >= 1, got {window!r}. Pass --window 1000.")
    if max_disagreement is not None and not 0.0 <= max_disagreement < 1.0:
        raise ParameterError(
            f"--max-disagreement must be a rate in [0, 1), got {max_disagreement!r}. Pass "
            "--max-disagreement 0.05."
        )
    if tolerance is not None and not tolerance >= 0.0:
        raise ParameterError(f"--tolerance must be >= 0, got {tolerance!r}. Pass --tolerance 0.5.")
    if not isinstance(top, int) or top < 0:
        raise ParameterError(f"--top must be an int >= 0, got {top!r}. Pass --top 10.")


def _read_window(
    name: str,
    alias: str | None,
    version: int | None,
    last: int,
    log: str | Path | None,
    root: Path | None,
) -> tuple[list[Pair], dict[str, int], str]:
    """(pairs, counts, the log's URL as shown) of the window; StateError when it is empty."""
    serve = f"with a shadow: mlkit serve {name} --shadow {name}:ALIAS"
    plog = predlog.PredictionLog(log_url(log, name, root, serve))
    try:
        rows = plog.rows()
    finally:
        plog.close()
    pairs, counts = pairs_from_rows(rows, name, version=version, last=last)
    if pairs:
        return pairs, counts, plog.shown_url
    answered = {r["version"] for r in rows if r["role"] == "primary" and r["model"] == name}
    seen = {
        "log": plog.shown_url,
        "shadow_rows": any(r["role"] == "shadow" for r in rows),
        "versions": sorted(answered),
    }
    raise _empty_window(name, alias, version, **seen, **counts)


def _empty_window(name: str, alias: str | None, version: int | None, **seen: Any) -> StateError:
    """Why no pair was found, and what to do about it."""
    target = f"{name}:{alias}" if alias else name
    if not seen["shadow_rows"]:
        return StateError(
            f"The prediction log {seen['log']} holds no shadow answers, so there is nothing to "
            f"compare model {name!r} with. Serve it with a shadow, mlkit serve {target} "
            f"--shadow {name}:ALIAS (e.g. {name}:candidate), send traffic, then run mlkit skew "
            "again."
        )
    which = f" (v{version}, what {target} points to now)" if version is not None else ""
    return StateError(
        f"The window is empty: the prediction log {seen['log']} holds no request of model "
        f"{name!r}{which} that the shadow answered too; {seen['no_shadow_row']} were not "
        f"scored by the shadow and {seen['shadow_failed']} failed in it. Versions it answered "
        f"as primary: {seen['versions'] or 'none'}. Pass the alias or vN that served them "
        f"(mlkit skew {name}:vN), or send traffic to mlkit serve {target} --shadow ALIAS."
    )


def skew(
    name: str,
    alias: str | None = store.DEFAULT_ALIAS,
    *,
    window: int = DEFAULT_WINDOW,
    max_disagreement: float | None = None,
    tolerance: float | None = None,
    top: int = DEFAULT_TOP,
    log: str | Path | None = None,
    root: Path | None = None,
) -> dict[str, Any]:
    """Compare the primary's and the shadow's logged answers for model ``name``; write a record.

    Args:
        name: the served (primary) model.
        alias: its alias or ``vN``: only answers of the version it points to now count;
            None counts every version's.
        window: the newest examples both answered to compare.
        max_disagreement: the check's bound: ``crossed`` when the lower end of the
            disagreement rate's 95% Wilson interval is above it.
        tolerance: regression only: an example disagrees when the two answers differ by more.
        top: how many of the largest disagreements to list with their inputs.
        log: the prediction log, a ``sqlite:///PATH`` or ``postgresql://`` URL or a SQLite
            file (default: the file beside the model).
        root: the experiments folder (default ``$MLKIT_EXPERIMENTS`` or ``experiments/``).

    Returns:
        The report written to ``skew.json`` (``task``, ``n``, ``disagreements``, ``rate``,
        ``ci95``, ``confusion`` or the differences, ``largest``, ``crossed``, ``note``...),
        plus ``path``, the record's folder.

    Raises:
        StateError: the log has no shadow answers, or none in the window (exit 2).
        ParameterError: an option is out of range, or ``max_disagreement`` is given for a
            regression model without ``tolerance``.
    """
    started, t0 = now_iso(), time.monotonic()
    check_options(window, max_disagreement, tolerance, top)
    version = store.resolve(name, alias, root) if alias else None
    pairs, counts, shown_url = _read_window(name, alias, version, window, log, root)
    task = _task(pairs)
    if task == "regression" and max_disagreement is not None and tolerance is None:
        raise ParameterError(
            f"{name} is a regression model: a disagreement needs a tolerance. Pass "
            "--tolerance T (an example disagrees when |shadow - primary| > T) with "
            "--max-disagreement."
        )
    if task == "classification":
        stats = classification_skew(pairs, top)
    else:
        stats = regression_skew(pairs, top, tolerance)
    report: dict[str, Any] = {
        "at": started,
        "model": name,
        "alias": alias,
        "version": version,
        "task": task,
        "log": shown_url,
        "versions": sorted({p.version for p in pairs}),
        "shadows": sorted({p.shadow_model for p in pairs}),
        "unpaired": {k: counts[k] for k in ("no_shadow_row", "shadow_failed")},
        "requests": counts["requests"],
        "max_disagreement": max_disagreement,
        **stats,
    }
    check_rate(report, max_disagreement)
    params = {
        "model": name,
        "alias": alias or "",
        "window": window,
        "max_disagreement": max_disagreement,
        "tolerance": tolerance,
        "top": top,
        "log": shown_url,
    }
    report["path"] = str(_write_record(report, params, t0, root))
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report in a few lines for a terminal or a scheduler's mail."""
    target = f"{report['model']}:{report['alias']}" if report["alias"] else report["model"]
    versions = ",".join(f"v{v}" for v in report["versions"])
    lines = [
        f"{target} ({versions}) vs shadow {', '.join(report['shadows'])}: {report['n']} "
        f"examples of {report['requests']} requests",
    ]
    unpaired = report["unpaired"]
    if unpaired["no_shadow_row"] or unpaired["shadow_failed"]:
        lines.append(
            f"  not compared: {unpaired['no_shadow_row']} requests the shadow did not score, "
            f"{unpaired['shadow_failed']} it failed on"
        )
    mark = "CROSSED" if report["crossed"] else "ok"
    lines.append(f"  {mark:<8} {report['note']}")
    lines += largest_lines(report, "primary", "shadow")
    lines.append(f"record: {report['path']}")
    return "\n".join(lines)


def largest_lines(report: dict[str, Any], ours: str, theirs: str) -> list[str]:
    """The regression's differences, then one line per largest disagreement with its input.

    ``ours`` and ``theirs`` name the two sides (``primary`` and ``shadow``) in the words the
    report's own keys use for them (the rows of ``largest`` hold the shadow's answer under
    ``shadow`` whatever ``theirs`` says).
    """
    lines = []
    if report["task"] == "regression":
        lines.append(
            f"  difference ({theirs} - {ours}): mean {report['mean_difference']:+.4g}, "
            f"mean |d| {report['mean_abs_difference']:.4g}, max |d| "
            f"{report['max_abs_difference']:.4g}"
        )
    for row in report["largest"]:
        if report["task"] == "classification":
            what = (
                f"{row['primary']} -> {row['shadow']} ({theirs} p of {row['primary']} "
                f"{row['shadow_p_of_primary_class']:.3f})"
            )
        else:
            what = f"{row['primary']:.4g} -> {row['shadow']:.4g} ({row['difference']:+.4g})"
        shown = json.dumps(row["input"])
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        lines.append(f"  {row['request_id']}[{row['example']}] {what} input {shown}")
    return lines
