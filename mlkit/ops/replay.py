"""Replay: a candidate version scored offline on the traffic production answered.

``mlkit replay NAME[:ALIAS] --candidate ALIAS|vN`` (or :func:`replay`) reads the newest
``window`` examples that the version behind ``ALIAS`` (default ``production``) answered, as the
prediction log holds them (primary answers with status 200 and their request bodies), scores
their inputs with the candidate in this process, loaded as a server loads it (records through
its own preprocessing, raw features through its own scaling), and never touches a live server.
It says:

- **disagreement** with production's logged answers, by the statistics of ``mlkit skew``
  (:mod:`mlkit.ops.skew`): the rate with its 95% Wilson interval, the confusion table
  production x candidate and the largest disagreements with their inputs; or, for regression,
  the differences (candidate minus production);
- **accuracy** on the examples that have labels (``mlkit feedback``), of production's logged
  answers and of the candidate's, each with its 95% Wilson interval; or their MAE;
- **latency** of the candidate per example: the median and p99 over the logged requests of
  the time to turn one request's examples into inputs and score them, divided by its examples.
  Requests are scored one by one, as the server scored them.

Every call writes a record under ``experiments/replay-<NAME>/runs/<id>/``: ``replay.json``,
``replay.png`` (the confusion table or the differences, beside the accuracies) and
``result.json`` (``replay/...``), so ``mlkit runs`` lists it.

Refused with exit 2 and the fix: a window without answered requests, a candidate alias or
version that does not exist, and a candidate whose input schema (input shape, whether it reads
records and the records' feature columns, task, classes) differs from production's.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlkit._io import now_iso
from mlkit.errors import ParameterError, StateError, UsageError
from mlkit.figures import render_png
from mlkit.ops import skew
from mlkit.ops.abtest import correct
from mlkit.ops.stats import wilson_interval
from mlkit.registry import loading, store
from mlkit.registry.loading import LoadedModel
from mlkit.serve import predlog

__all__ = ["DEFAULT_TOP", "DEFAULT_WINDOW", "Logged", "format_report", "replay"]

DEFAULT_WINDOW = skew.DEFAULT_WINDOW
DEFAULT_TOP = skew.DEFAULT_TOP


@dataclass
class Logged:
    """One example production answered, as the log holds it."""

    request_id: str
    example: int  # its position in the request's batch
    size: int  # the request's examples
    key: str  # the body key it came under: input, raw_inputs, records...
    input: Any
    answer: dict[str, Any]  # production's: class, index, probabilities; or value
    version: int


# --- the window ------------------------------------------------------------------------


def _window(
    rows: list[dict[str, Any]], name: str, version: int, last: int
) -> tuple[list[Logged], dict[str, int]]:
    """The newest ``last`` examples version ``version`` of ``name`` answered, oldest first.

    Returns them and the counts of requests taken and of answered requests skipped because
    their body could not be read back as their examples (``unreadable``).
    """
    counts = {"requests": 0, "unreadable": 0}
    out: list[Logged] = []
    for row in reversed(rows):  # newest first, until the window is full
        if row["role"] != "primary" or row["status"] != 200 or row["model"] != name:
            continue
        if row["version"] != version:
            continue
        answers = skew.predictions(row)
        key, xs = skew.body_examples(row, len(answers))
        if not answers or key is None:
            counts["unreadable"] += 1
            continue
        counts["requests"] += 1
        for i in reversed(range(len(answers))):
            out.append(Logged(row["request_id"], i, len(answers), key, xs[i], answers[i], version))
            if len(out) == last:
                break
        if len(out) == last:
            break
    out.reverse()
    return out, counts


def _empty_window(
    name: str, alias: str, version: int, rows: list[dict[str, Any]], shown: str
) -> StateError:
    answered = sorted({r["version"] for r in rows if r["model"] == name and r["status"] == 200})
    return StateError(
        f"The window is empty: the prediction log {shown} holds no answered request of model "
        f"{name!r} v{version} (what {name}:{alias} points to now) with a readable body. "
        f"Versions it answered: {answered or 'none'}. Pass the alias or vN that served them "
        f"(mlkit replay {name}:vN --candidate ...), or serve traffic first (mlkit serve "
        f"{name}:{alias})."
    )


# --- the candidate ---------------------------------------------------------------------


def _schema(model: LoadedModel) -> dict[str, Any]:
    """What a client must send this version and what it answers: compared, never scored."""
    columns = None
    if model.preprocessor is not None:
        described = model.preprocessor.schema()["columns"]
        columns = {n: c["dtype"] for n, c in described.items() if c["role"] == "feature"}
    return {
        "input shape": list(model.input_shape),
        "record columns": columns,
        "task": model.task,
        "classes": model.classes,
    }


def _check_schema(production: LoadedModel, candidate: LoadedModel) -> None:
    ours, theirs = _schema(production), _schema(candidate)
    for what in ours:
        if ours[what] != theirs[what]:
            raise ParameterError(
                f"The candidate {candidate.name} v{candidate.version} has {what} "
                f"{theirs[what]}, production v{production.version} has {ours[what]}: it cannot "
                "answer production's traffic as production did. Pass a candidate trained on "
                "the same inputs for the same task (--candidate vN)."
            )


def _scaling(model: LoadedModel) -> Any:
    """How the version scales raw features; ``...`` when its card does not say."""
    return (model.card.get("data") or {}).get("feature_scaling", ...)


def _converter(production: LoadedModel, candidate: LoadedModel) -> Any:
    """A function of (body key, examples) to the candidate's float32 inputs, as it serves them.

    Features sent already scaled (``input``/``inputs``) are in production's input space: they
    are unscaled by production's scaling and scaled by the candidate's when those differ.
    """
    same_space = _scaling(production) == _scaling(candidate) and (
        production.preprocessor is None
        or production.preprocessor.to_dict() == candidate.preprocessor.to_dict()  # type: ignore[union-attr]
    )

    def convert(key: str, xs: list[Any]) -> np.ndarray:
        if key.startswith("record"):
            return candidate.records_to_inputs(xs)
        X = np.asarray(xs, dtype=np.float32)
        if key.startswith("raw"):
            return candidate.raw_to_inputs(X)
        if same_space:
            return X
        scaling = _scaling(production)
        if not isinstance(scaling, dict) or production.preprocessor is not None:
            raise StateError(
                f'Requests sent scaled features ("{key}") in production v{production.version}\'s '
                f"input space, and the candidate v{candidate.version} scales its inputs "
                "otherwise; production's card does not say how to undo its scaling. Replay "
                "traffic sent as raw features or records, or a candidate with production's "
                "preprocessing."
            )
        mean = np.asarray(scaling["mean"], dtype=np.float32)
        std = np.asarray(scaling["std"], dtype=np.float32)
        raw = (X.reshape(len(X), -1) * std + mean).reshape(X.shape)
        return candidate.raw_to_inputs(raw.astype(np.float32))

    return convert


def _score(
    production: LoadedModel, candidate: LoadedModel, logged: list[Logged]
) -> tuple[list[dict[str, Any] | None], dict[str, Any]]:
    """The candidate's answer to each logged example (None where it refused the request) and
    its latency per example (ms) over the requests, scored one request at a time."""
    convert = _converter(production, candidate)
    groups: list[list[int]] = []
    for i, item in enumerate(logged):
        if groups and logged[groups[-1][0]].request_id == item.request_id:
            groups[-1].append(i)
        else:
            groups.append([i])
    answers: list[dict[str, Any] | None] = [None] * len(logged)
    per_example: list[float] = []
    refused: list[str] = []
    first = logged[groups[0][0]]
    # the first call pays for torch's lazy set-up (ms), which no served request pays again
    with contextlib.suppress(UsageError):  # a refused record is counted below, not here
        loading.score(candidate, convert(first.key, [first.input]))
    for group in groups:
        key, xs = logged[group[0]].key, [logged[i].input for i in group]
        t0 = time.perf_counter()
        try:
            out = loading.score(candidate, convert(key, xs))
        except UsageError as exc:  # a record the candidate's preprocessing refuses
            refused.append(f"{logged[group[0]].request_id}: {exc}")
            continue
        per_example.append((time.perf_counter() - t0) * 1000.0 / len(group))
        for i, answer in zip(group, out, strict=True):
            answers[i] = answer
    ms = np.asarray(per_example)
    latency = {
        "requests": len(per_example),
        "median_ms": float(np.median(ms)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
        "refused_requests": len(refused),
        "refused_first": refused[0] if refused else None,
    }
    return answers, latency


# --- labels ----------------------------------------------------------------------------


def _label(item: Logged, labels: dict[str, Any]) -> tuple[bool, Any]:
    """(whether the example has a usable label, the label); a batch's label is a list."""
    if item.request_id not in labels:
        return False, None
    label = labels[item.request_id]
    if isinstance(label, list):
        return (True, label[item.example]) if len(label) == item.size else (False, None)
    return (True, label) if item.size == 1 else (False, None)


def _accuracy(
    task: str, logged: list[Logged], answers: list[Any], labels: dict[str, Any]
) -> dict[str, Any]:
    """Production's and the candidate's accuracy (Wilson 95%) or MAE on the labelled examples.

    Only examples both answered count, so the two are measured on the same examples.
    ``unmatched`` counts labels of a batch whose length is not the batch's.
    """
    both: list[tuple[Any, Any, Any]] = []
    unmatched = 0
    for item, answer in zip(logged, answers, strict=True):
        usable, label = _label(item, labels)
        unmatched += item.request_id in labels and not usable
        if usable and answer is not None and label is not None:
            both.append((item.answer, answer, label))
    out: dict[str, Any] = {"n": len(both), "unmatched": unmatched}
    if task == "regression":
        truth = np.asarray([float(t) for _, _, t in both])
        for side, k in (("production", 0), ("candidate", 1)):
            got = np.asarray([float(b[k]["value"]) for b in both])
            out[side] = {"mae": float(np.abs(got - truth).mean()) if both else None}
        return out
    hits = [(correct(p, t), correct(c, t)) for p, c, t in both]
    for side, k in (("production", 0), ("candidate", 1)):
        right = sum(h[k] for h in hits)
        low, high = wilson_interval(right, len(hits))
        accuracy = right / len(hits) if hits else None
        out[side] = {"correct": right, "accuracy": accuracy, "ci95": [low, high]}
    # the discordant examples: what a paired test of the two (McNemar) would read
    out["only_production_right"] = sum(p and not c for p, c in hits)
    out["only_candidate_right"] = sum(c and not p for p, c in hits)
    return out


# --- the record ------------------------------------------------------------------------


def _result(report: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers (``replay/...``) that ``mlkit runs`` shows."""
    out: dict[str, Any] = {"replay/window": report["n"]}
    if report.get("rate") is not None:
        low, high = report["ci95"]
        out.update({"replay/rate": report["rate"], "replay/ci_low": low, "replay/ci_high": high})
    if report["task"] == "regression":
        out["replay/mean_abs_difference"] = report["mean_abs_difference"]
    for side in ("production", "candidate"):
        metric = "mae" if report["task"] == "regression" else "accuracy"
        value = report["accuracy"][side][metric]
        if value is not None:
            out[f"replay/{side}_{metric}"] = value
    latency = report["latency"]
    if latency["median_ms"] is not None:
        out["replay/latency_ms_median"] = latency["median_ms"]
        out["replay/latency_ms_p99"] = latency["p99_ms"]
    return out


def _figure(report: dict[str, Any]) -> bytes:
    """Disagreement (confusion table or differences) beside the two sides' accuracy or MAE."""
    # matplotlib takes a second to import: only when a report is drawn
    from matplotlib.figure import Figure

    k = len(report.get("confusion") or ())
    fig = Figure(figsize=(max(8.0, 0.5 * k + 6), max(3.5, 0.5 * k + 1.5)), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    skew.draw_disagreement(fig, left, report, "production", f"candidate ({report['candidate']})")
    accuracy = report["accuracy"]
    sides = ["production", "candidate"]
    if report["task"] == "classification" and accuracy["n"]:
        values = [accuracy[s]["accuracy"] for s in sides]
        errors = [[v - accuracy[s]["ci95"][0] for s, v in zip(sides, values, strict=True)]]
        errors.append([accuracy[s]["ci95"][1] - v for s, v in zip(sides, values, strict=True)])
        right.errorbar(sides, values, yerr=errors, fmt="o", capsize=6, color="tab:blue")
        right.set(ylabel="accuracy (95% CI)", xlim=(-0.5, 1.5))
    elif report["task"] == "regression" and accuracy["n"]:
        right.bar(sides, [accuracy[s]["mae"] for s in sides], color=["tab:grey", "tab:blue"])
        right.set(ylabel="MAE")
    else:
        right.text(0.5, 0.5, "no labels (mlkit feedback)", ha="center", va="center")
        right.set_axis_off()
    right.set_title(f"on {accuracy['n']} labelled examples", fontsize=9)
    title = f"{report['candidate']} replayed on {report['n']} examples of {report['production']}"
    left.set_title(f"{title}\n{skew.headline(report)}", fontsize=9)
    return render_png(fig)


def _disagreement(
    task: str,
    logged: list[Logged],
    answers: list[dict[str, Any] | None],
    shown: str,
    top: int,
    tolerance: float | None,
    latency: dict[str, Any],
) -> dict[str, Any]:
    """Skew's statistics of production's logged answers (primary) against the candidate's."""
    pairs = [
        skew.Pair(item.request_id, item.example, item.input, item.answer, a, item.version, shown)
        for item, a in zip(logged, answers, strict=True)
        if a is not None
    ]
    if not pairs:
        raise StateError(
            f"The candidate {shown} refused every request of the window "
            f"({latency['refused_first']}). Pass a candidate that reads production's inputs."
        )
    if task == "classification":
        return skew.classification_skew(pairs, top)
    return skew.regression_skew(pairs, top, tolerance)


# --- the whole command -----------------------------------------------------------------


def _read_log(
    name: str, log: str | Path | None, root: Path | None
) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """(answered primary rows, labels by request id, the log's URL as shown)."""
    serve = f"mlkit serve {name}"
    plog = predlog.PredictionLog(skew.log_url(log, name, root, serve))
    try:
        return plog.rows(role="primary"), plog.feedback(), plog.shown_url
    finally:
        plog.close()


def _versions(name: str, alias: str, candidate: str, root: Path | None) -> tuple[int, int]:
    """The version numbers of production and the candidate (ModelNotFoundError names both
    the aliases there are and how to make one)."""
    if not candidate:
        raise ParameterError(f"--candidate is required. Pass --candidate v2 or an alias of {name}.")
    return store.resolve(name, alias, root), store.resolve(name, candidate, root)


def replay(
    name: str,
    candidate: str,
    alias: str = store.DEFAULT_ALIAS,
    *,
    window: int = DEFAULT_WINDOW,
    tolerance: float | None = None,
    top: int = DEFAULT_TOP,
    log: str | Path | None = None,
    root: Path | None = None,
) -> dict[str, Any]:
    """Score ``candidate`` offline on the inputs production answered; compare; write a record.

    Args:
        name: the served model.
        candidate: the version to try: an alias or ``vN``.
        alias: production's alias or ``vN``: only answers of the version it points to now
            are replayed.
        window: the newest answered examples to replay.
        tolerance: regression only: an example disagrees when the two answers differ by more.
        top: how many of the largest disagreements to list with their inputs.
        log: the prediction log, a ``sqlite:///PATH`` or ``postgresql://`` URL or a SQLite
            file (default: the file beside the model).
        root: the experiments folder (default ``$MLKIT_EXPERIMENTS`` or ``experiments/``).

    Returns:
        The report written to ``replay.json``: skew's disagreement statistics (``rate``,
        ``ci95``, ``confusion`` or the differences, ``largest``...), ``accuracy`` (``n`` and
        per side ``accuracy`` with ``ci95``, or ``mae``), ``latency`` (``median_ms``,
        ``p99_ms``), plus ``path``, the record's folder.

    Raises:
        ModelNotFoundError: the candidate or production alias or version does not exist.
        ParameterError: an option is out of range, or the candidate's input schema differs.
        StateError: the window holds no answered request with a readable body.
        NotFoundError: there is no prediction log.
    """
    started, t0 = now_iso(), time.monotonic()
    skew.check_options(window, None, tolerance, top)
    version, wanted = _versions(name, alias, candidate, root)
    rows, labels, shown_url = _read_log(name, log, root)
    logged, counts = _window(rows, name, version, window)
    if not logged:
        raise _empty_window(name, alias, version, rows, shown_url)
    production = loading.load_model(name, version, root=root)
    challenger = loading.load_model(name, wanted, root=root)
    _check_schema(production, challenger)
    answers, latency = _score(production, challenger, logged)
    shown = f"{name}:v{wanted}"
    task = production.task
    stats = _disagreement(task, logged, answers, shown, top, tolerance, latency)
    report: dict[str, Any] = {
        "at": started,
        "model": name,
        "alias": alias,
        "version": version,
        "production": f"{name}:{alias} (v{version})",
        "candidate": shown,
        "candidate_ref": candidate,
        "task": task,
        "log": shown_url,
        "requests": counts["requests"],
        "unreadable_requests": counts["unreadable"],
        "latency": latency,
        "accuracy": _accuracy(task, logged, answers, labels),
        **stats,
    }
    skew.check_rate(report, None)
    params = {
        "model": name,
        "alias": alias,
        "candidate": candidate,
        "window": window,
        "tolerance": tolerance,
        "top": top,
        "log": shown_url,
    }
    path = skew.write_record("replay", report, params, _result(report), _figure(report), t0, root)
    report["path"] = str(path)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report in a few lines for a terminal."""
    latency, accuracy = report["latency"], report["accuracy"]
    lines = [
        f"{report['candidate']} replayed on {report['n']} examples of {report['requests']} "
        f"requests answered by {report['production']}",
        f"  {report['note']}",
    ]
    if latency["refused_requests"]:
        lines.append(
            f"  refused by the candidate: {latency['refused_requests']} requests (e.g. "
            f"{latency['refused_first']})"
        )
    if not accuracy["n"]:
        lines.append("  no labelled examples (store labels with mlkit feedback)")
    elif report["task"] == "classification":
        shown = [
            f"{side} {accuracy[side]['accuracy']:.3f} [{accuracy[side]['ci95'][0]:.3f}, "
            f"{accuracy[side]['ci95'][1]:.3f}]"
            for side in ("production", "candidate")
        ]
        lines.append(f"  accuracy on {accuracy['n']} labelled examples: {', '.join(shown)}")
    else:
        shown = [f"{side} {accuracy[side]['mae']:.4g}" for side in ("production", "candidate")]
        lines.append(f"  MAE on {accuracy['n']} labelled examples: {', '.join(shown)}")
    if latency["median_ms"] is not None:
        lines.append(
            f"  candidate latency per example: median {latency['median_ms']:.4g} ms, p99 "
            f"{latency['p99_ms']:.4g} ms over {latency['requests']} requests"
        )
    lines += skew.largest_lines(report, "production", "candidate")
    lines.append(f"record: {report['path']}")
    return "\n".join(lines)
