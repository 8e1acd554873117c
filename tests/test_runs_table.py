"""Runs as data: ``mlkit.runs()`` and ``mlkit runs --where/--sort/--csv`` on recorded runs.

The records are written by hand (no training), so every test here is fast.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import mlkit
from mlkit import cli, run_table
from mlkit._io import write_json
from mlkit.errors import ParameterError, UnknownNameError
from tests.helpers import fake_run

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def recorded(
    root: Path,
    started: str,
    params: dict[str, Any],
    result: dict[str, Any] | None,
    *,
    status: str = "completed",
    data_version: str | None = "v-digits",
) -> str:
    """A run record with these parameters and metrics (no result: a failed run)."""
    path = fake_run(root, status=status, weights=False)
    info = {"id": path.name, "status": status, "started": started, "duration": 2.5}
    write_json(path / "run.json", {**info, "notebook": "templates/classify.ipynb"})
    write_json(path / "params.json", {"notebook": "x.ipynb", "parameters": params})
    (path / "result.json").unlink(missing_ok=True)
    if result is not None:
        write_json(path / "result.json", result)
    data = {"name": "digits", "version": data_version} if data_version else {}
    write_json(path / "lineage.json", {"git": {"commit": COMMIT, "dirty": False}, "data": data})
    return path.name


@pytest.fixture
def four_runs(exp_root: Path) -> dict[str, str]:
    """Four runs, oldest first: three completed with a model and hidden size, one failed."""
    return {
        "cnn_good": recorded(
            exp_root,
            "2030-01-01T10:00:00.000+00:00",
            {"model": "cnn", "hidden": 9, "lr": 0.01},
            {"test/accuracy": 0.97, "best_epoch": 4},
        ),
        "mlp": recorded(
            exp_root,
            "2030-01-01T11:00:00.000+00:00",
            {"model": "mlp", "hidden": 10, "lr": 0.1},
            {"test/accuracy": 0.91, "best_epoch": 7},
        ),
        "cnn_bad": recorded(
            exp_root,
            "2030-01-01T12:00:00.000+00:00",
            {"model": "cnn", "hidden": 100, "lr": 0.3},
            {"test/accuracy": 0.955, "best_epoch": 2},
        ),
        "failed": recorded(
            exp_root,
            "2030-01-01T13:00:00.000+00:00",
            {"model": "cnn", "hidden": 8, "lr": 1.0},
            None,
            status="failed",
        ),
    }


def mlkit_runs(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``mlkit runs ARGS`` in this process: (exit code, stdout, stderr)."""
    code = cli.main(["runs", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


# One row per run, newest first, in the documented columns: record, params, metrics, lineage.
def test_runs_is_a_dataframe_of_the_records(four_runs: dict[str, str]) -> None:
    frame = mlkit.runs()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == [
        "id",
        "experiment",
        "status",
        "started",
        "duration",
        "notebook",
        "param.model",
        "param.hidden",
        "param.lr",
        "test/accuracy",
        "best_epoch",
        "data_version",
        "git_commit",
    ]
    ids = four_runs
    assert frame["id"].tolist() == [ids["failed"], ids["cnn_bad"], ids["mlp"], ids["cnn_good"]]
    first = frame.iloc[-1]
    assert first["experiment"] == "fake" and first["status"] == "completed"
    assert first["started"] == pd.Timestamp("2030-01-01T10:00:00", tz="UTC")
    assert first["duration"] == 2.5 and first["notebook"] == "templates/classify.ipynb"
    assert (first["param.model"], first["param.hidden"], first["test/accuracy"]) == ("cnn", 9, 0.97)
    assert first["data_version"] == "v-digits" and first["git_commit"] == COMMIT
    # The failed run has no metrics: missing, not zero.
    assert math.isnan(frame.iloc[0]["test/accuracy"]) and frame.iloc[0]["status"] == "failed"


# Conditions all hold; numbers compare as numbers (10 > 9, though "10" < "9" as text).
def test_where_compares_numbers_as_numbers_and_words_as_text(four_runs: dict[str, str]) -> None:
    ids = four_runs

    def kept(*where: str) -> set[str]:
        return set(mlkit.runs(where=where)["id"])

    assert kept("test/accuracy>0.95") == {ids["cnn_good"], ids["cnn_bad"]}
    assert kept("test/accuracy>=0.955", "model=cnn") == {ids["cnn_good"], ids["cnn_bad"]}
    assert kept("test/accuracy > 0.95", "hidden<10") == {ids["cnn_good"]}
    assert kept("hidden>9") == {ids["mlp"], ids["cnn_bad"]}
    assert kept("param.model!=cnn") == {ids["mlp"]}
    assert kept("model>=d") == {ids["mlp"]}  # text order: "mlp" >= "d" > "cnn"
    assert kept("status=failed") == {ids["failed"]}
    # A run without the metric passes no condition on it, "!=" included.
    assert ids["failed"] not in kept("test/accuracy!=0.5")


# A name that is neither a parameter nor a metric is an error naming it and the known names.
def test_an_unknown_name_lists_the_known_ones(four_runs: dict[str, str]) -> None:
    with pytest.raises(UnknownNameError) as caught:
        mlkit.runs(where=["accuracy>0.9"])
    message = str(caught.value)
    assert "'accuracy'" in message
    assert "Parameters: model, hidden, lr." in message
    assert "Metrics: test/accuracy, best_epoch." in message
    with pytest.raises(UnknownNameError, match="'depth'"):
        mlkit.runs(sort="depth")
    with pytest.raises(ParameterError, match="NAME OP VALUE"):
        mlkit.runs(where=["model"])


# Sorting by a metric: numeric, either way, runs without the value last.
def test_sort_by_a_metric_puts_missing_values_last(four_runs: dict[str, str]) -> None:
    ids = four_runs
    ascending = mlkit.runs(sort="test/accuracy")["id"].tolist()
    assert ascending == [ids["mlp"], ids["cnn_bad"], ids["cnn_good"], ids["failed"]]
    descending = mlkit.runs(sort="test/accuracy", descending=True)["id"].tolist()
    assert descending == [ids["cnn_good"], ids["cnn_bad"], ids["mlp"], ids["failed"]]
    by_hidden = mlkit.runs(sort="hidden")["id"].tolist()  # 8 9 10 100, not "10" < "100" < "8"
    assert by_hidden == [ids["failed"], ids["cnn_good"], ids["mlp"], ids["cnn_bad"]]


# The command line keeps and orders what the Python API does, and --csv has its columns.
def test_cli_csv_matches_the_dataframe(
    four_runs: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--where", "test/accuracy>0.9", "--where", "model=cnn", "--sort", "test/accuracy")
    code, out, err = mlkit_runs(capsys, *args, "--desc", "--csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    where = ["test/accuracy>0.9", "model=cnn"]
    frame = mlkit.runs(where=where, sort="test/accuracy", descending=True)
    assert list(rows[0]) == list(frame.columns)
    assert [r["id"] for r in rows] == [four_runs["cnn_good"], four_runs["cnn_bad"]]
    assert [float(r["test/accuracy"]) for r in rows] == [0.97, 0.955]
    assert rows[0]["param.hidden"] == "9" and rows[0]["git_commit"] == COMMIT


# The table and --json show only the runs that match, in the asked order.
def test_cli_table_and_json_are_filtered(
    four_runs: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    ids = four_runs
    code, out, err = mlkit_runs(capsys, "--where", "hidden>=10", "--sort", "hidden")
    assert code == 0, err
    assert out.index(ids["mlp"]) < out.index(ids["cnn_bad"])
    assert ids["cnn_good"] not in out and ids["failed"] not in out
    code, out, err = mlkit_runs(capsys, "--where", "model=mlp", "--json")
    assert code == 0, err
    assert [r["id"] for r in json.loads(out)] == [ids["mlp"]]
    code, out, err = mlkit_runs(capsys, "--where", "test/accuracy>0.99")
    assert code == 0 and "No run where test/accuracy>0.99." in out


# On the command line an unknown name is exit 2, naming it; so is a condition without an operator.
def test_cli_unknown_name_exits_2(
    four_runs: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = mlkit_runs(capsys, "--where", "modle=cnn", "--csv")
    assert code == 2 and out == ""
    assert "'modle'" in err and "Parameters: model, hidden, lr." in err
    code, _, err = mlkit_runs(capsys, "--sort", "nothing")
    assert code == 2 and "'nothing'" in err
    code, _, err = mlkit_runs(capsys, "--where", "model")
    assert code == 2 and "NAME OP VALUE" in err


# A table's run without the version in its lineage takes it from data.json; a metric named as
# a record column keeps both.
def test_data_version_from_data_json_and_colliding_metric(exp_root: Path) -> None:
    run_id = recorded(exp_root, "2030-01-01T10:00:00+00:00", {}, {"status": 1}, data_version=None)
    write_json(exp_root / "fake" / "runs" / run_id / "data.json", {"version": "v-table"})
    frame = run_table.runs()
    assert frame.loc[0, "data_version"] == "v-table"
    assert frame.loc[0, "status"] == "completed" and frame.loc[0, "result.status"] == 1


# No run yet: an empty table with the record columns, and conditions have nothing to reject.
def test_no_runs_is_an_empty_table(exp_root: Path) -> None:
    frame = mlkit.runs(where=["test/accuracy>0.9"], sort="test/accuracy")
    assert frame.empty
    assert list(frame.columns) == [*run_table.RECORD_COLUMNS, *run_table.LINEAGE_COLUMNS]
