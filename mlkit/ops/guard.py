"""The rollback guard: move an alias back when the version it serves misbehaves in production.

``mlkit model guard NAME[:ALIAS]`` (or :func:`check`) weighs the evidence gathered since the
alias last moved to its current version, counting only responses that version gave:

- **error rate**: of the labelled predictions (``mlkit feedback``), the share that were wrong
  (classification models; a regression model's labels are not judged here);
- **server error rate**: of the /predict responses, the share with a 5xx status;
- **drift**: the newest ``mlkit monitor`` run of the alias since then whose window that version
  answered alone (``--monitor`` runs one first, over that version's answers only).

A rate crosses its bound only when at least ``min_labels`` (``min_requests``) examples back it
and the lower end of its 95% Wilson interval is above the bound, so a few unlucky answers
never move production. When any bound is crossed, the alias moves back to the version it had
before (:func:`mlkit.registry.rollback`: atomic, and only if the alias still points where it
did when the evidence was read); the alias history keeps the reason, and running servers
follow within seconds (:mod:`mlkit.serve`). Every check is appended to ``guard.jsonl`` in the
model's registry folder.

Policy, per model and alias (``mlkit model policy NAME --alias production --set KEY=VALUE``);
values not set take these defaults:

    max_error_rate          0.2    share of labelled predictions that were wrong
    min_labels              30     labelled examples before the error rate counts
    max_server_error_rate   0.05   share of responses with a 5xx status
    min_requests            30     responses before the server error rate counts
    drift                   any    any: drift/detected of a monitor run rolls back;
                                   predictions: only prediction drift does; off: drift never does
    monitor_window          1000   most answered examples ``--monitor`` compares

``mlkit model guard`` exits 0 when every bound holds (or the evidence is still too thin) and 1
when one is crossed (rolled back; or would have been under ``--dry-run``; or there was no
earlier version to go back to), so a scheduler can alert on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlkit import errors, record_store
from mlkit._io import append_jsonl, now_iso, read_json
from mlkit.errors import ParameterError
from mlkit.ops import monitor
from mlkit.ops.abtest import correct, paired
from mlkit.ops.stats import wilson_interval
from mlkit.registry import aliases, loading, store
from mlkit.serve import predlog

__all__ = [
    "DEFAULTS",
    "GuardError",
    "check",
    "format_report",
    "parse_settings",
    "policy",
    "set_policy",
]

DEFAULTS: dict[str, Any] = {
    "max_error_rate": 0.2,
    "min_labels": 30,
    "max_server_error_rate": 0.05,
    "min_requests": 30,
    "drift": "any",
    "monitor_window": 1000,
}
DRIFT_CHOICES = ("any", "predictions", "off")
_RATES = ("max_error_rate", "max_server_error_rate")
_COUNTS = ("min_labels", "min_requests", "monitor_window")


# Kept importable under its earlier name; raised as ParameterError.
GuardError = ParameterError


def parse_settings(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` strings into checked policy values; unknown keys and bad values refused."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not eq or key not in DEFAULTS:
            raise ParameterError(
                f"Policy setting {item!r} must be KEY=VALUE with KEY one of "
                f"{', '.join(DEFAULTS)}. Pass --set max_error_rate=0.1."
            )
        out[key] = _check_value(key, text)
    return out


def _check_value(key: str, text: Any) -> Any:
    if key == "drift":
        if text not in DRIFT_CHOICES:
            raise ParameterError(
                f"The 'drift' policy setting must be one of {', '.join(DRIFT_CHOICES)}. Got "
                f"{text!r} instead. Pass --set drift=any."
            )
        return text
    try:
        value = float(text) if key in _RATES else int(text)
    except (TypeError, ValueError):
        value = None
    if key in _RATES and (value is None or not 0.0 <= value < 1.0):
        raise ParameterError(
            f"The {key!r} policy setting must be a rate in [0, 1). Got {text!r} instead. Pass "
            f"--set {key}={DEFAULTS[key]}."
        )
    if key in _COUNTS and (value is None or value < 1):
        raise ParameterError(
            f"The {key!r} policy setting must be a whole number >= 1. Got {text!r} instead. "
            f"Pass --set {key}={DEFAULTS[key]}."
        )
    return value


def policy(name: str, alias: str = "production", root: Path | None = None) -> dict[str, Any]:
    """The policy in force for ``name:alias``: the defaults, overlaid with what was set."""

    return {**DEFAULTS, **aliases.get_policy(name, alias, root)}


def set_policy(
    name: str,
    alias: str,
    items: list[str] | tuple[str, ...],
    *,
    clear: bool = False,
    root: Path | None = None,
) -> dict[str, Any]:
    """Store ``KEY=VALUE`` settings for ``name:alias`` and return the policy now in force."""

    aliases.set_policy(name, alias, parse_settings(items), clear=clear, root=root)
    return policy(name, alias, root)


def _rate_check(
    what: str, bad: int, n: int, limit: float, minimum: int, unit: str
) -> dict[str, Any]:

    low, high = wilson_interval(bad, n)
    out: dict[str, Any] = {
        "check": what,
        "bad": bad,
        "n": n,
        "rate": bad / n if n else None,
        "ci95": [low, high],
        "bound": limit,
        "crossed": n >= minimum and low > limit,
    }
    rate = f"{bad}/{n} = {bad / n:.3f}" if n else "0/0"
    if n < minimum:
        out["note"] = f"{rate}; waiting for {minimum} {unit} before judging"
    else:
        side = "above" if out["crossed"] else "not above"
        out["note"] = f"{rate}, 95% CI [{low:.3f}, {high:.3f}]: lower end {side} {limit:g}"
    return out


def _labelled(rows: list[dict[str, Any]], labels: dict[str, Any]) -> tuple[int, int]:
    """(wrong, labelled) examples over answered rows that have a label."""

    wrong = total = 0
    for row in rows:
        if row["status"] != 200 or row["request_id"] not in labels or not row.get("output"):
            continue
        preds, truth = paired(row, labels[row["request_id"]])
        if len(truth) != len(preds):
            continue  # a malformed label for a batch: not evidence either way
        total += len(preds)
        wrong += sum(not correct(p, t) for p, t in zip(preds, truth, strict=True))
    return wrong, total


def _newest_monitor(
    name: str, alias: str, version: int, since: str, root: Path | None
) -> dict[str, Any] | None:
    """The newest completed monitor run of ``name:alias`` since ``since`` over ``version`` only."""

    for run in record_store.list_runs(f"monitor-{name}", root):
        if (run.get("started") or "") < since:
            break  # newest first: everything after is older
        if run.get("status") != "completed" or not run.get("result"):
            continue
        if run["params"].get("alias") != alias:
            continue
        drift = read_json(Path(run["path"]) / "drift.json", {}) or {}
        if drift.get("versions") == [version]:
            return run
    return None


def _drift_check(mode: str, run: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"check": "drift", "mode": mode, "crossed": False, "monitor_run": None}
    if mode == "off":
        out["note"] = "off in this policy"
        return out
    if run is None:
        out["note"] = "no monitor run over this version since it took the alias"
        return out
    result = run["result"]
    key = "drift/detected" if mode == "any" else "drift/prediction_drifted"
    out["monitor_run"] = run["id"]
    out["crossed"] = bool(result.get(key))
    drifted = result.get("drift/features_drifted") or ""
    what = []
    if drifted:
        what.append(f"features {drifted}")
    if result.get("drift/prediction_drifted"):
        what.append("predictions")
    found = f"drift in {' and '.join(what)}" if what else "no drift"
    counted = "" if out["crossed"] or not what else f" (policy drift={mode}: not counted)"
    out["note"] = f"monitor run {run['id']}: {found}{counted}"
    return out


def check(
    name: str,
    alias: str = "production",
    *,
    overrides: dict[str, Any] | None = None,
    dry_run: bool = False,
    run_monitor: bool = False,
    log_url: str | None = None,
    root: Path | None = None,
    tracking: str | None = None,
) -> dict[str, Any]:
    """Check ``name:alias`` against its policy once; roll it back when a bound is crossed.

    Returns the report also appended to ``guard.jsonl``: ``version``, ``since``, ``policy``,
    ``checks`` (one dict per check with ``crossed`` and a ``note`` in words), ``crossed``,
    ``action`` (``none``, ``rolled back``, ``would roll back``, ``cannot roll back``), ``to``
    (the version now answering) and ``reason``.
    """

    if loading.is_pinned(alias) or alias == "latest":
        raise ParameterError(
            f"The guard moves aliases; {name}:{alias} is not one. Pass an alias such as "
            f"{name}:production."
        )
    version = store.resolve(name, alias, root)
    rules = {**policy(name, alias, root), **(overrides or {})}
    since = aliases.alias_since(name, alias, root) or ""
    task = loading.task_of(name, version, root)
    rows, labels = _evidence(name, version, since, task, log_url, root)
    monitor_run = None
    if run_monitor and rules["drift"] != "off":
        answered = sum(r["status"] == 200 for r in rows)
        monitor_run = _run_monitor(name, alias, rules, answered, log_url, root, tracking)
    checks = _rate_checks(task, rows, labels, rules)
    drift = _drift_check(
        rules["drift"], _newest_monitor(name, alias, version, since, root) if since else None
    )
    if monitor_run is not None and drift.get("monitor_run") != monitor_run:
        drift["note"] += f" (the run just made, {monitor_run}, could not be read)"
    checks.append(drift)
    crossed = [c for c in checks if c["crossed"]]
    report: dict[str, Any] = {
        "at": now_iso(),
        "name": name,
        "alias": alias,
        "version": version,
        "since": since or None,
        "policy": rules,
        "checks": checks,
        "crossed": bool(crossed),
        "action": "none",
        "to": version,
        "reason": None,
    }
    if crossed:
        report["reason"] = "; ".join(f"{c['check']} {c['note']}" for c in crossed)
        _roll_back(report, dry_run=dry_run, root=root, tracking=tracking)
    append_jsonl(store.model_dir(name, root) / "guard.jsonl", report)
    return report


def _evidence(
    name: str, version: int, since: str, task: str, log_url: str | None, root: Path | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows ``version`` answered as primary since ``since``, labels) from the prediction log.

    Labels are read for classification models only: a regression model's are not judged.
    """
    log = predlog.open_log(name, log_url, root)
    try:
        rows = log.rows(since=since, role="primary", model=name, version=version)
        labels = log.feedback() if task == "classification" else {}
    finally:
        log.close()
    return rows, labels


def _run_monitor(
    name: str,
    alias: str,
    rules: dict[str, Any],
    answered: int,
    log_url: str | None,
    root: Path | None,
    tracking: str | None,
) -> str | None:
    """Run ``mlkit monitor`` over the newest answers; its run id, or None when too few."""
    window = min(int(rules["monitor_window"]), answered)
    if window < 2:
        return None
    info = monitor.monitor(name, alias, window=window, log=log_url, root=root, tracking=tracking)
    return info["id"]


def _rate_checks(
    task: str, rows: list[dict[str, Any]], labels: dict[str, Any], rules: dict[str, Any]
) -> list[dict[str, Any]]:
    """The error-rate check (classification only) and the server-error-rate check."""
    if task == "classification":
        wrong, labelled = _labelled(rows, labels)
        error_rate = _rate_check(
            "error_rate",
            wrong,
            labelled,
            rules["max_error_rate"],
            rules["min_labels"],
            "labelled examples",
        )
    else:
        error_rate = {
            "check": "error_rate",
            "crossed": False,
            "note": "regression model: not judged",
        }
    server_errors = _rate_check(
        "server_error_rate",
        sum(r["status"] >= 500 for r in rows),
        len(rows),
        rules["max_server_error_rate"],
        rules["min_requests"],
        "responses",
    )
    return [error_rate, server_errors]


def _roll_back(
    report: dict[str, Any], *, dry_run: bool, root: Path | None, tracking: str | None
) -> None:
    """Move the alias back (or say it would, or why it cannot), recording it in ``report``."""
    if dry_run:
        report["action"] = "would roll back"
        return
    try:
        moved = aliases.rollback(
            report["name"],
            report["alias"],
            expect=report["version"],
            reason=report["reason"],
            by="guard",
            root=root,
            tracking=tracking,
        )
        report.update(action="rolled back", to=moved["version"])
    except errors.MlkitError as exc:
        report.update(action="cannot roll back", note=str(exc))


def format_report(report: dict[str, Any]) -> str:
    """The report in a few lines for a terminal or a scheduler's mail."""
    head = f"{report['name']}:{report['alias']} v{report['version']}"
    if report["since"]:
        head += f" (since {report['since']})"
    lines = [head]
    for c in report["checks"]:
        mark = "CROSSED" if c["crossed"] else "ok"
        lines.append(f"  {c['check']:<18} {mark:<8} {c['note']}")
    action = report["action"]
    if action == "rolled back":
        lines.append(f"rolled back: {report['name']}:{report['alias']} -> v{report['to']}")
    elif action == "would roll back":
        lines.append("a bound is crossed: would roll back (--dry-run, nothing moved)")
    elif action == "cannot roll back":
        lines.append(f"a bound is crossed but {report.get('note', 'the alias cannot move')}")
    else:
        lines.append("every bound holds: nothing to do")
    return "\n".join(lines)
