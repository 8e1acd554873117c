"""A candidate and the version it would replace, scored on the same held-out rows.

``compare("credit", 4)`` loads version 4 (the candidate) and the version ``production``
points at (the current one), and scores both on the candidate's test split: the rows its run
never trained on, rebuilt from the run's recorded parameters (the same table, seed and split
settings give the same rows). Each model turns the rows into inputs with its own fitted
preprocessing, as it would when served. The metric is accuracy for a classifier and the mean
absolute error (in the target's units) for a regressor.

The statistics:

- each model's accuracy has a Wilson score interval (95%); an MAE has a percentile
  bootstrap interval;
- the difference (candidate - current) has a paired percentile bootstrap interval: rows are
  drawn with replacement (2000 draws, seed 0) and both models are scored on the same draw,
  so what the rows share (easy rows, hard rows) cancels out of the difference.

With ``traffic=`` (labelled records of production's traffic, as
:func:`mlkit.ops.labelled.labelled_records` returns them; the caller reads the log, the
registry never does) both models are also scored on those records, and ``comparison.json``
holds each source side by side under ``sources`` (``test``, ``traffic``); its top-level
``rows``, ``candidate``, ``current`` and ``difference`` are those of the first source used.
A label given as a class index reads as the class production names by it.

The comparison is written beside the candidate, as ``comparison.json`` in its registry
folder. :func:`promote_on_evidence` moves the alias only when the candidate is not worse by
more than a margin, judged on the interval: the difference's lower end above ``-margin`` for
accuracy, its upper end below ``margin`` for MAE, on every source used. A refusal stays in
the alias history.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlkit._contract import CARD_FILE, LINEAGE_FILE, PARAMS_FILE
from mlkit._io import now_iso, read_json, write_json
from mlkit.errors import ParameterError, PromotionBlockedError, StateError, UsageError
from mlkit.rebuild import load_data
from mlkit.registry import loading
from mlkit.registry.aliases import promote, record_refusal
from mlkit.registry.evaluation import resolve_run
from mlkit.registry.store import DEFAULT_ALIAS, _read, _version_number, model_dir
from mlkit.table_sources import is_table_source

__all__ = [
    "COMPARISON_FILE",
    "DEFAULT_MARGIN",
    "EVIDENCE",
    "compare",
    "format_comparison",
    "promote_on_evidence",
]

COMPARISON_FILE = "comparison.json"
# The sources a candidate can be judged on, and how comparison.json and the output name them.
EVIDENCE = {"test": "test split", "traffic": "labelled traffic"}
DEFAULT_MARGIN = 0.01
DRAWS = 2000  # bootstrap draws; with SEED fixed, the same rows always give the same interval
SEED = 0
_Z95 = 1.959963984540054
# Each draw of rows as one block of indices, up to this many at a time: memory stays bounded
# for a large test split.
_BLOCK = 4_000_000


def compare(
    name: str,
    version: str | int,
    against: str = DEFAULT_ALIAS,
    *,
    evidence: Sequence[str] = ("test",),
    traffic: Sequence[dict[str, Any]] | None = None,
    root: Path | None = None,
) -> dict[str, Any]:
    """Score version ``version`` and the version ``against`` points at on the same rows.

    Args:
        name: the registered model.
        version: the candidate (``4``, ``v4``).
        against: the alias of the version it would replace.
        evidence: the sources to score on: ``test`` (the candidate's test split) and/or
            ``traffic`` (the ``traffic`` records).
        traffic: labelled records of production's traffic (``{"record", "label"}``).
        root: experiments folder; default ``experiments/`` at the project root.

    Returns:
        The comparison, as written to ``comparison.json`` in the candidate's folder:
        ``{"name", "metric", "higher_is_better", "evidence", "sources", "rows",
        "candidate", "current", "difference", "method", "created"}``; each source holds
        its ``rows`` and each model's ``value`` with its interval (``low``, ``high``), the
        difference's likewise; the top-level entries are the first source's.

    Raises:
        StateError: ``against`` points nowhere, at the candidate itself, or the two models
            cannot be scored on the same rows (another task, not trained on a table, the
            candidate's table changed since it trained, or no usable traffic record).
    """
    evidence = check_evidence(evidence)
    reg = _read(name, root)
    number = _version_number(version, reg)
    current = reg["aliases"].get(against)
    if current is None:
        raise StateError(
            f"Model {name!r} has no alias {against!r}, so there is nothing to compare v{number} "
            f"with. Promote it without evidence: mlkit model promote {name} v{number} --alias "
            f"{against}"
        )
    if current == number:
        raise StateError(
            f"{name}:{against} already points at v{number}: there is nothing to compare it "
            "with. Pass the version that would replace it."
        )
    models = [loading.load_model(name, n, root=root) for n in (number, current)]
    task = models[0].task
    sources: dict[str, dict[str, Any]] = {}
    if "test" in evidence:
        sources["test"], task = _test_source(models, f"{name}:v{number}", root)
    if "traffic" in evidence:
        for loaded in models:
            _check_scorable(loaded, task)
        sources["traffic"] = _traffic_source(models, traffic or (), task)
    for source in sources.values():
        method = source.pop("method")  # the same for every source: said once, at the top
        source["candidate"] = {"version": number, **source["candidate"]}
        source["current"] = {"version": current, "alias": against, **source["current"]}
    first = sources[evidence[0]]
    out: dict[str, Any] = {
        "name": name,
        "metric": "accuracy" if task == "classification" else "mae",
        "higher_is_better": task == "classification",
        "evidence": list(evidence),
        "sources": sources,
        **{k: first[k] for k in ("rows", "candidate", "current", "difference")},
        "method": method,
        "created": now_iso(),
    }
    write_json(model_dir(name, root) / f"v{number}" / COMPARISON_FILE, out)
    return out


def _test_source(
    models: list[loading.LoadedModel], ref: str, root: Path | None
) -> tuple[dict[str, Any], str]:
    """Both models scored on the candidate's test split; and the task its rows are for."""
    run_dir = resolve_run(ref, root)
    rows, truth, task, data_version = _test_rows(run_dir, ref.replace(":", " "))
    for loaded in models:
        _check_scorable(loaded, task)
    per_row = [_per_row(loaded, rows, truth) for loaded in models]
    source = {
        "rows": {
            "source": EVIDENCE["test"],
            "run_id": run_dir.name,
            "data_version": data_version,
            "n": len(truth),
        },
        **_statistics(per_row[0], per_row[1], task),
    }
    return source, task


def check_evidence(evidence: Sequence[str]) -> list[str]:
    """The sources, in the order given, each once; ParameterError for an unknown one."""
    chosen = list(dict.fromkeys(evidence))
    unknown = [e for e in chosen if e not in EVIDENCE]
    if unknown or not chosen:
        raise ParameterError(
            f"Evidence must be test, traffic or both, got "
            f"{', '.join(map(str, evidence)) or '(none)'}. Pass --evidence both."
        )
    return chosen


def _traffic_source(
    models: list[loading.LoadedModel], traffic: Sequence[dict[str, Any]], task: str
) -> dict[str, Any]:
    """Both models scored on the labelled records that both can read."""
    candidate, current = models
    usable, left_out = [], 0
    for item in traffic:
        truth = _truth(item.get("label"), task, current.classes)
        if truth is None or not all(_reads(m, item.get("record")) for m in models):
            left_out += 1
            continue
        usable.append((item["record"], truth))
    if not usable:
        raise StateError(
            f"None of the {len(traffic)} labelled records of the prediction log can be scored "
            f"by both v{candidate.version} and v{current.version} (a record neither reads, or "
            "a label that is not a class or a number). Pass --evidence test, or store labels "
            "of answered requests (mlkit feedback)."
        )
    records = [r for r, _ in usable]
    dtype = object if task == "classification" else np.float64
    truth = np.asarray([t for _, t in usable], dtype=dtype)
    per_row = [_per_row(loaded, records, truth) for loaded in models]
    return {
        "rows": {"source": EVIDENCE["traffic"], "n": len(usable), "left_out": left_out},
        **_statistics(per_row[0], per_row[1], task),
    }


def _truth(label: Any, task: str, classes: list[str]) -> Any:
    """A label as a class name (an index reads as production's class) or a value; None if
    it is neither."""
    if task != "classification":
        if isinstance(label, bool):
            return None
        try:
            value = float(label)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(classes):
        return classes[label]
    return None if label is None or isinstance(label, (dict, list)) else str(label)


def _reads(loaded: loading.LoadedModel, record: Any) -> bool:
    """Whether the model's preprocessing takes the record (columns, types, no NaN)."""
    if not isinstance(record, dict) or loaded.preprocessor is None:
        return False
    try:
        loaded.preprocessor.validate_records([record])
    except (UsageError, ValueError, TypeError):
        return False
    return True


def promote_on_evidence(
    name: str,
    version: str | int,
    alias: str = DEFAULT_ALIAS,
    *,
    margin: float = DEFAULT_MARGIN,
    by: str | None = None,
    evidence: Sequence[str] = ("test",),
    traffic: Sequence[dict[str, Any]] | None = None,
    root: Path | None = None,
    tracking: str | None = None,
) -> dict[str, Any]:
    """Promote ``version`` to ``alias`` if the gate passes and it is not worse than the current.

    Not worse means, on the interval of the difference (candidate - current): its lower end
    above ``-margin`` for accuracy, its upper end below ``margin`` for MAE, on every source
    of ``evidence`` (see :func:`compare`; ``traffic`` holds the labelled records). The decision and
    its reason are added to ``comparison.json``; a refusal (by the evidence or by the
    model's bounds) is kept in the alias history, which names ``by`` and the candidate's
    ``parent`` version when its card names one.

    Returns:
        ``{"promoted", "reason", "comparison", "margin"}`` plus ``violations`` when the
        model's bounds refused it.
    """
    margin = check_margin(margin)
    out = compare(name, version, alias, evidence=evidence, traffic=traffic, root=root)
    number = out["candidate"]["version"]
    passed, reason = _judge_all(out, margin)
    details = {"comparison": _summary(out), **_parent(name, number, root)}
    decision: dict[str, Any] = {"promoted": False, "reason": reason, "margin": margin}
    try:
        if passed:
            promote(
                name,
                number,
                alias,
                reason=reason,
                by=by,
                details=details,
                root=root,
                tracking=tracking,
            )
            decision["promoted"] = True
    except PromotionBlockedError as exc:
        decision.update(reason=str(exc), violations=exc.violations)
    if not decision["promoted"]:
        record_refusal(name, number, alias, reason=decision["reason"], by=by, details=details)
    out["decision"] = decision
    write_json(model_dir(name, root) / f"v{number}" / COMPARISON_FILE, out)
    return {**decision, "comparison": out}


def check_margin(margin: Any) -> float:
    """``margin`` as a float >= 0, or a ParameterError saying what to pass."""
    try:
        value = float(margin)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ParameterError(
            f"--margin must be a number >= 0 (in the metric's units: accuracy points, or the "
            f"target's units for MAE), got {margin!r}. Pass --margin 0.01."
        )
    return value


def format_comparison(out: dict[str, Any]) -> str:
    """The comparison as lines to read: both models, the difference, the rows they saw.

    One source reads as it always did; several stand side by side, a row each.
    """
    metric, rows = out["metric"], out["rows"]
    cand, cur, diff = out["candidate"], out["current"], out["difference"]
    sources = out.get("sources") or {}
    if len(sources) > 1:
        lines = [
            f"{out['name']}: v{cand['version']} (candidate) against v{cur['version']} "
            f"({cur['alias']}), {metric} with 95% intervals, on each source",
            f"  {'source':<17} {'rows':>5}  {'candidate':<31} {'current':<31} difference",
        ]
        for source in sources.values():
            lines.append(
                f"  {source['rows']['source']:<17} {source['rows']['n']:>5}  "
                f"{_interval(source['candidate']):<31} {_interval(source['current']):<31} "
                f"{_interval(source['difference'], signed=True)}"
            )
    else:
        of_run = f" of run {rows['run_id']}" if rows.get("run_id") else ""
        lines = [
            f"{out['name']}: v{cand['version']} (candidate) against v{cur['version']} "
            f"({cur['alias']}) on {rows['n']} rows, the {rows['source']}{of_run}",
            f"  {'candidate':<10} v{cand['version']:<4} {metric} {_interval(cand)}",
            f"  {'current':<10} v{cur['version']:<4} {metric} {_interval(cur)}",
            f"  difference (candidate - current) {_interval(diff, signed=True)}",
        ]
    decision = out.get("decision")
    if decision:
        verdict = "promoted" if decision["promoted"] else "not promoted"
        lines.append(f"{verdict}: {decision['reason']}")
    return "\n".join(lines)


def _interval(entry: dict[str, Any], *, signed: bool = False) -> str:
    spec = "+.4f" if signed else ".4f"
    return f"{entry['value']:{spec}}  95% CI [{entry['low']:{spec}}, {entry['high']:{spec}}]"


def _judge(out: dict[str, Any], margin: float) -> tuple[bool, str]:
    """Whether the candidate passes on one source, and why: the metric, both values, the rows
    and the margin."""
    metric, diff = out["metric"], out["difference"]
    cand, cur = out["candidate"], out["current"]
    source = out["rows"].get("source")
    values = (
        f"{metric} of v{cand['version']} (candidate) {cand['value']:.4f} against "
        f"{cur['value']:.4f} of v{cur['version']} ({cur['alias']}) on {out['rows']['n']} rows"
        + (f" of the {source}" if source else "")
    )
    if out["higher_is_better"]:
        passed = diff["low"] > -margin
        side = "above" if passed else "not above"
        rule = f"the difference's lower end {diff['low']:+.4f} is {side} -{margin:g}"
    else:
        passed = diff["high"] < margin
        side = "below" if passed else "not below"
        rule = f"the difference's upper end {diff['high']:+.4f} is {side} {margin:g}"
    verdict = "not worse by more than" if passed else "may be worse by more than"
    return passed, f"{values}: {verdict} the margin {margin:g} ({rule})"


def _judge_all(out: dict[str, Any], margin: float) -> tuple[bool, str]:
    """The rule on every source used: passed only when it holds on each; the reason says so."""
    sources = out.get("sources") or {"test": out}
    judged = {key: _judge({**out, **source}, margin) for key, source in sources.items()}
    passed = all(ok for ok, _ in judged.values())
    reason = "; ".join(why for _, why in judged.values())
    if len(judged) > 1:
        failed = [EVIDENCE[key] for key, (ok, _) in judged.items() if not ok]
        used = " and ".join(EVIDENCE[key] for key in judged)
        reason += (
            f". The rule holds on every source used ({used})"
            if passed
            else f". The rule must hold on every source used ({used}); it fails on "
            f"{' and '.join(failed)}"
        )
    return passed, reason


def _summary(out: dict[str, Any]) -> dict[str, Any]:
    """What the alias history keeps of a comparison: the metric and the numbers."""

    def numbers(source: dict[str, Any]) -> dict[str, Any]:
        return {
            "rows": source["rows"]["n"],
            "candidate": source["candidate"]["value"],
            "current": source["current"]["value"],
            "difference": [source["difference"]["low"], source["difference"]["high"]],
        }

    sources = out.get("sources") or {}
    summary = {"metric": out["metric"], **numbers(out)}
    if len(sources) > 1:
        summary["sources"] = {key: numbers(source) for key, source in sources.items()}
    return summary


def _parent(name: str, number: int, root: Path | None) -> dict[str, Any]:
    card = read_json(model_dir(name, root) / f"v{number}" / CARD_FILE, {}) or {}
    parent = (card.get("lineage") or {}).get("parent") or {}
    return {"parent": parent["version"]} if parent.get("version") is not None else {}


def _test_rows(run_dir: Path, what: str) -> tuple[Any, np.ndarray, str, str]:
    """(raw test rows, true labels or values, task, data version) of the run's test split."""
    record = read_json(run_dir / PARAMS_FILE, {}) or {}
    params = dict(record.get("parameters") or {})
    source = params.get("dataset")
    if not is_table_source(source):
        raise StateError(
            f"{what} was trained on {source!r}, not on a table of your own, so there are no "
            "raw rows both models can read. Compare versions trained with -p dataset PATH.csv."
        )
    if "://" not in str(source) and not Path(source).is_absolute() and record.get("cwd"):
        params["dataset"] = str(Path(record["cwd"]) / source)
    dataset = load_data(params["dataset"], params, check=False)
    lineage = read_json(run_dir / LINEAGE_FILE, {}) or {}
    recorded = (lineage.get("data") or {}).get("version")
    if recorded and dataset.version != recorded:
        # Other rows would grade the candidate on rows it may have trained on.
        raise StateError(
            f"The table of {what} (run {run_dir.name}) has changed: it trained on version "
            f"{recorded}, and {source} now loads as version {dataset.version}. Restore the "
            "table the run used."
        )
    y = dataset.test.y
    if dataset.task == "classification":
        truth = np.asarray([dataset.class_names[int(i)] for i in y], dtype=object)
    else:
        truth = np.asarray(y, dtype=np.float64) * dataset.target_std + dataset.target_mean
    return dataset.test_rows, truth, dataset.task, dataset.version


def _check_scorable(loaded: loading.LoadedModel, task: str) -> None:
    what = f"{loaded.name} v{loaded.version}"
    if loaded.task != task:
        raise StateError(
            f"{what} is a {loaded.task} model and the candidate's rows are for {task}: they "
            "cannot be compared on one metric. Compare versions of the same task."
        )
    if loaded.preprocessor is None:
        raise StateError(
            f"{what} was not trained on a table, so it cannot read the candidate's rows. "
            "Compare versions trained on tables with the same columns."
        )


def _per_row(loaded: loading.LoadedModel, rows: Any, truth: np.ndarray) -> np.ndarray:
    """Per row: 1.0 when the class is right (classification), else the absolute error."""
    X = loaded.preprocessor.transform(rows).X
    answers = loading.score(loaded, X)
    if loaded.task == "classification":
        return np.asarray([a["class"] == t for a, t in zip(answers, truth, strict=True)], float)
    values = np.asarray([a["value"] for a in answers], dtype=np.float64)
    return np.abs(values - truth)


def _statistics(cand: np.ndarray, cur: np.ndarray, task: str) -> dict[str, Any]:
    """Each model's value and interval, and the paired bootstrap interval of the difference."""
    n = len(cand)
    if n == 0:
        raise StateError(
            "The candidate's test split holds no rows, so there is nothing to compare on. "
            "Retrain with a test split (-p test_fraction 0.15)."
        )
    draws = _bootstrap_means(np.stack([cand, cur]))  # (2, DRAWS)
    low, high = np.quantile(draws[0] - draws[1], [0.025, 0.975])

    def entry(values: np.ndarray, boot: np.ndarray) -> dict[str, float]:
        if task == "classification":
            lo, hi = _wilson(int(values.sum()), n)
        else:
            lo, hi = np.quantile(boot, [0.025, 0.975])
        return {"value": float(values.mean()), "low": float(lo), "high": float(hi)}

    method = "Wilson score" if task == "classification" else "percentile bootstrap"
    return {
        "candidate": entry(cand, draws[0]),
        "current": entry(cur, draws[1]),
        "difference": {
            "value": float(cand.mean() - cur.mean()),
            "low": float(low),
            "high": float(high),
        },
        "method": {
            "models": f"{method}, 95%",
            "difference": f"paired percentile bootstrap over rows, 95%, {DRAWS} draws, seed {SEED}",
        },
    }


def _bootstrap_means(values: np.ndarray) -> np.ndarray:
    """Means of each row of ``values`` (models x rows) over the same bootstrap draws of rows."""
    rng = np.random.default_rng(SEED)
    n = values.shape[1]
    block = max(1, _BLOCK // n)
    out = []
    for start in range(0, DRAWS, block):
        idx = rng.integers(0, n, size=(min(block, DRAWS - start), n))
        out.append(values[:, idx].mean(axis=2))
    return np.concatenate(out, axis=1)


def _wilson(k: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of ``k`` successes in ``n``."""
    p = k / n
    denom = 1 + _Z95**2 / n
    centre = (p + _Z95**2 / (2 * n)) / denom
    half = _Z95 * math.sqrt(p * (1 - p) / n + _Z95**2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
