"""Labelled traffic: the records a table model answered that have a true label by now.

The prediction log keeps each answered request's body; ``mlkit feedback`` stores labels by
request id in the same log. :func:`labelled_records` joins the two: one entry per record of
an answered request (role primary, status 200) of the model, whatever version answered it,
that has a label. A batch's label is a list with one label per record (a single record may
take a bare label); a list of another length labels none of them (counted, never guessed).
``mlkit retrain --labels-from-log`` adds these records to the training table
(:func:`mlkit.registry.retrain.retrain`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlkit.ops import skew
from mlkit.serve import predlog

__all__ = ["Labelled", "labelled_records"]


@dataclass
class Labelled:
    """The labelled records of a log and what was left out, by reason."""

    records: list[dict[str, Any]]  # {"request_id", "record", "label"}, oldest first
    log: str  # the log's URL as shown (no password)
    skipped: dict[str, int] = field(default_factory=dict)


def labelled_records(
    name: str, *, log: str | Path | None = None, root: Path | None = None
) -> Labelled:
    """Every answered record of model ``name`` whose request has a stored label.

    Args:
        name: the served model.
        log: the prediction log, a ``sqlite:///PATH`` or ``postgresql://`` URL or a SQLite
            file (default: the file beside the model).
        root: the experiments folder (default ``$MLKIT_EXPERIMENTS`` or ``experiments/``).

    Returns:
        The records with their labels (a class name or index as stored, or a value), and
        the labelled requests left out: ``not_records`` (features sent as arrays, which are
        no rows of a table) and ``batch_mismatch`` (a list of labels of another length).

    Raises:
        NotFoundError: there is no prediction log.
    """
    plog = predlog.PredictionLog(skew.log_url(log, name, root, f"mlkit serve {name}"))
    try:
        rows, labels, shown = plog.rows(role="primary"), plog.feedback(), plog.shown_url
    finally:
        plog.close()
    out = Labelled([], shown, {"not_records": 0, "batch_mismatch": 0})
    for row in rows:
        rid = row["request_id"]
        if row["model"] != name or row["status"] != 200 or rid not in labels:
            continue
        answers = skew.predictions(row)
        key, records = skew.body_examples(row, len(answers))
        if key not in ("record", "records"):
            out.skipped["not_records"] += 1
            continue
        label = labels[rid]
        per_record = label if isinstance(label, list) else [label]
        if len(per_record) != len(records):
            out.skipped["batch_mismatch"] += 1
            continue
        for record, one in zip(records, per_record, strict=True):
            out.records.append({"request_id": rid, "record": record, "label": one})
    return out
