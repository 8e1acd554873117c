"""``mlkit feedback``: labels stored in the prediction log's feedback table, used by abtest."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from mlkit.serve import predlog
from tests.helpers import log_rows, run_cli


def ab_log(path: Path) -> str:
    """A SQLite log with 12 answered A/B rows (r0..r11; even ids variant a v1, odd b v2)."""
    url = f"sqlite:///{path}"
    log = predlog.PredictionLog(url)
    for i in range(12):
        variant, version = ("a", 1) if i % 2 == 0 else ("b", 2)
        cls = i % 3 % 2  # class 0 or 1
        log.write(
            {
                "request_id": f"r{i}",
                "role": "primary",
                "status": 200,
                "model": "m",
                "version": version,
                "variant": variant,
                "n": 1,
                "input": [0.0],
                "output": {"prediction": {"class": str(cls), "index": cls}},
            }
        )
    log.close()
    return url


def feedback_table(path: Path) -> list[dict[str, Any]]:
    return log_rows(path, table="feedback")


# Labels from a CSV file and a single REQUEST_ID LABEL land in the feedback table (JSON label,
# time, source) and read back by request id; the predictions table is untouched.
def test_labels_stored_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    url = ab_log(path)
    before = log_rows(path)
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\nr0,0\nr1,1\n")
    proc = run_cli("feedback", "m", "--labels", str(labels), "--log", url)
    assert proc.returncode == 0, proc.stderr
    assert "stored 2 labels" in proc.stdout
    proc = run_cli("feedback", "m", "r2", "[1]", "--log", url)
    assert proc.returncode == 0, proc.stderr
    rows = feedback_table(path)
    assert [(r["request_id"], r["label"], r["source"]) for r in rows] == [
        ("r0", '"0"', str(labels)),
        ("r1", '"1"', str(labels)),
        ("r2", "[1]", "cli"),
    ]
    assert all(r["time"] for r in rows)
    log = predlog.PredictionLog(url)
    assert log.feedback() == {"r0": "0", "r1": "1", "r2": [1]}
    log.close()
    assert log_rows(path) == before


# A labels file naming a request id the log lacks is refused, exit 2, with the count and an
# example, and no label at all is written; so is a single unknown id.
def test_unknown_request_id_refused_nothing_written(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    url = ab_log(path)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"r0": 0, "nope-1": 1, "nope-2": 0}))
    proc = run_cli("feedback", "m", "--labels", str(labels), "--log", url)
    assert proc.returncode == 2
    assert "2 of 3 request ids" in proc.stderr and "'nope-1'" in proc.stderr
    assert feedback_table(path) == []
    log = predlog.PredictionLog(url)
    try:
        try:
            log.add_feedback({"missing": 1}, "cli")
        except predlog.FeedbackError as exc:
            assert "1 of 1" in str(exc) and "'missing'" in str(exc)
        else:
            raise AssertionError("unknown id accepted")
        assert log.feedback() == {}
    finally:
        log.close()


# A second label for a request id is a new row (append-only: UPDATE and DELETE abort), and the
# newest label wins when read.
def test_newest_label_wins(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    url = ab_log(path)
    log = predlog.PredictionLog(url)
    try:
        log.add_feedback({"r0": 0, "r1": 1}, "first")
        log.add_feedback({"r0": 1}, "second")
        assert [(r["request_id"], r["label"]) for r in log.feedback_rows()] == [
            ("r0", 0),
            ("r1", 1),
            ("r0", 1),
        ]
        assert log.feedback() == {"r0": 1, "r1": 1}
    finally:
        log.close()
    conn = sqlite3.connect(path)
    try:
        for sql in ("UPDATE feedback SET label = '5'", "DELETE FROM feedback"):
            try:
                conn.execute(sql)
            except sqlite3.DatabaseError as exc:
                assert "append-only" in str(exc)
            else:
                raise AssertionError(f"{sql} was allowed")
    finally:
        conn.close()


# abtest report without --labels uses the stored feedback (newest wins) and prints the same
# table as with the equivalent labels file; with no feedback stored it is refused, exit 2.
def test_abtest_report_uses_stored_feedback(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    url = ab_log(path)
    proc = run_cli("abtest", "report", "m", "--log", url)
    assert proc.returncode == 2 and "No feedback stored" in proc.stderr
    truth = {f"r{i}": i % 2 for i in range(12)}
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(dict.fromkeys(truth, 0)))
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\n" + "".join(f"{k},{v}\n" for k, v in truth.items()))
    log = predlog.PredictionLog(url)
    try:
        log.add_feedback(json.loads(stale.read_text()), str(stale))
        log.add_feedback({k: str(v) for k, v in truth.items()}, str(labels))
    finally:
        log.close()
    with_file = run_cli("abtest", "report", "m", "--labels", str(labels), "--log", url)
    stored = run_cli("abtest", "report", "m", "--log", url)
    assert with_file.returncode == 0, with_file.stderr
    assert stored.returncode == 0, stored.stderr
    assert stored.stdout == with_file.stdout
    assert stored.stdout.splitlines()[2].split()[:3] == ["a", "v1", "6"]
