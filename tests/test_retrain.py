"""`mlkit retrain`: a registered table model's notebook again on new data, as a candidate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from mlkit._io import read_json
from mlkit.errors import DataError
from mlkit.registry import retrain
from mlkit.serve import predlog
from tests.helpers import TEMPLATES, run_cli
from tests.test_table_data import credit_frame

pytestmark = pytest.mark.slow  # the module's fixture trains and registers a real model


def train_and_register(tmp: Path, frame: Any, *params: str) -> dict[str, Any]:
    """classify.ipynb (a copy, so a test may change it) on ``frame``, registered as v1 of
    ``credit`` and promoted to production; ``params`` are more ``-p NAME VALUE`` pairs."""
    root = tmp / "experiments"
    notebook = tmp / "classify.ipynb"
    shutil.copyfile(TEMPLATES / "classify.ipynb", notebook)
    old = tmp / "credit.csv"
    frame.to_csv(old, index=False)
    env = {"MLKIT_EXPERIMENTS": str(root), "WANDB_MODE": "disabled"}
    proc = run_cli(
        *("run", str(notebook), "-q", "--tracking", "disabled"),
        *("-p", "dataset", str(old), "-p", "target", "default", *params),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = root.glob("classify/runs/*")
    for args in (("register", run_dir.name, "--name", "credit"), ("promote", "credit", "v1")):
        proc = run_cli("model", *args, "--tracking", "disabled", env=env)
        assert proc.returncode == 0, proc.stderr
    return {"root": root, "env": env, "run": run_dir, "old": old, "notebook": notebook}


@pytest.fixture(scope="module")
def credit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """classify.ipynb on 300 rows; v1 is production; ``new`` is a table of 200 more."""
    tmp = tmp_path_factory.mktemp("retrain")
    registered = train_and_register(tmp, credit_frame(n=300), "-p", "epochs", "2")
    new = tmp / "june.csv"
    credit_frame(n=200, seed=1).to_csv(new, index=False)
    return {**registered, "new": new}


def _retrain(credit: dict[str, Any], *args: str):
    return run_cli("retrain", *args, "-q", "--tracking", "disabled", env=credit["env"])


def _state(root: Path) -> tuple[list[int], list[str]]:
    """The registered versions and the runs: what a refused retrain must leave unchanged."""
    registry = read_json(root / "registry" / "credit" / "registry.json")
    runs = sorted(p.name for p in root.glob("*/runs/*"))
    return [v["version"] for v in registry["versions"]], runs


def _new_run(root: Path, before: list[str]) -> Path:
    (path,) = [p for p in root.glob("*/runs/*") if p.name not in before]
    return path


# Retraining production on a new CSV: the parent's parameters but dataset, a new version
# pointed at by `candidate` (production unmoved), and a lineage and card naming the parent.
def test_retrain_registers_a_candidate_naming_its_parent(credit: dict[str, Any]) -> None:
    root = credit["root"]
    versions, runs = _state(root)
    proc = _retrain(credit, "credit", "--data", str(credit["new"]))
    assert proc.returncode == 0, proc.stderr
    new_run = _new_run(root, runs)
    number = max(versions) + 1
    assert new_run.name in proc.stdout and f"credit v{number}" in proc.stdout
    assert str(new_run) in proc.stdout, "the record's folder is printed"
    registry = read_json(root / "registry" / "credit" / "registry.json")
    assert registry["aliases"] == {"production": 1, "candidate": number}
    parent = {"model": "credit", "version": 1, "run_id": credit["run"].name}
    lineage = read_json(new_run / "lineage.json")
    assert lineage["parent"] == parent
    assert lineage["data"]["source"]["path"] == str(credit["new"].resolve())
    assert sum(lineage["data"]["sizes"].values()) == 200
    card = read_json(root / "registry" / "credit" / f"v{number}" / "card.json")
    assert card["lineage"]["parent"] == parent and card["run"]["id"] == new_run.name
    md = (root / "registry" / "credit" / f"v{number}" / "card.md").read_text()
    assert f"retrained from: credit v1 (run `{credit['run'].name}`)" in md
    old_params = read_json(credit["run"] / "params.json")["parameters"]
    new_params = read_json(new_run / "params.json")["parameters"]
    assert new_params.pop("dataset") == str(credit["new"].resolve())
    old_params.pop("dataset")
    assert new_params == old_params, "same parameters, seeds included, but the dataset"


# --append trains on the parent's rows and the new ones (one Parquet file named by its
# content, under the model's registry folder); -p overrides a parameter of the parent's.
def test_append_trains_on_both_tables_and_p_overrides(credit: dict[str, Any]) -> None:
    root = credit["root"]
    _, runs = _state(root)
    new = str(credit["new"])
    proc = _retrain(credit, "credit:v1", "--data", new, "--append", "-p", "seed", "3")
    assert proc.returncode == 0, proc.stderr
    new_run = _new_run(root, runs)
    params = read_json(new_run / "params.json")["parameters"]
    assert params["seed"] == 3 and params["epochs"] == 2
    union = Path(params["dataset"])
    assert union.parent == root / "registry" / "credit" / "data" and union.suffix == ".parquet"
    lineage = read_json(new_run / "lineage.json")
    assert sum(lineage["data"]["sizes"].values()) == 300 + 200
    assert lineage["parent"]["version"] == 1


# A table without a column the model needs, or with one of another type, is refused before
# any run: exit 2 naming the columns, no new run, no new version.
def test_columns_that_do_not_match_the_schema_are_refused(
    credit: dict[str, Any], tmp_path: Path
) -> None:
    frame = credit_frame(n=50, seed=2).drop(columns=["income"])
    frame["age"] = frame["age"].astype(str) + " years"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    before = _state(credit["root"])
    proc = _retrain(credit, "credit", "--data", str(bad))
    assert proc.returncode == 2, proc.stderr
    assert "missing column(s) income" in proc.stderr
    assert "age is string, was float64" in proc.stderr
    assert _state(credit["root"]) == before
    proc = _retrain(credit, "credit", "--data", str(bad), "--append")
    assert proc.returncode == 2 and "income" in proc.stderr
    assert _state(credit["root"]) == before


# An alias the model does not have, or `production` as the alias to set: exit 2, saying
# what to do, nothing run or registered.
def test_missing_alias_and_production_alias_are_refused(credit: dict[str, Any]) -> None:
    before = _state(credit["root"])
    proc = _retrain(credit, "credit:staging", "--data", str(credit["new"]))
    assert proc.returncode == 2
    assert "no alias 'staging'" in proc.stderr and "mlkit model promote" in proc.stderr
    proc = _retrain(credit, "credit", "--data", str(credit["new"]), "--alias", "production")
    assert proc.returncode == 2 and "candidate" in proc.stderr
    assert _state(credit["root"]) == before


# A version whose run record was deleted cannot be retrained: exit 2 naming the run.
def test_version_whose_run_record_is_gone_is_refused(credit: dict[str, Any]) -> None:
    root = credit["root"]
    copy = credit["run"].with_name(credit["run"].name + "-copy")
    shutil.copytree(credit["run"], copy)
    run_json = read_json(copy / "run.json")
    (copy / "run.json").write_text(json.dumps({**run_json, "id": copy.name}))
    proc = run_cli(
        *("model", "register", str(copy), "--name", "credit", "--tracking", "disabled"),
        env=credit["env"],
    )
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(copy)
    before = _state(root)
    number = max(before[0])
    proc = _retrain(credit, f"credit:v{number}", "--data", str(credit["new"]))
    assert proc.returncode == 2
    assert copy.name in proc.stderr and "record is gone" in proc.stderr
    assert _state(root) == before


# The parent's notebook changed since it ran: refused (exit 2) unless allowed, and then the
# new run's record keeps the warning.
def test_changed_notebook_is_refused_unless_allowed(credit: dict[str, Any]) -> None:
    notebook = credit["notebook"]
    original = notebook.read_text()
    nb = json.loads(original)
    nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": "changed"})
    notebook.write_text(json.dumps(nb))
    try:
        before = _state(credit["root"])
        proc = _retrain(credit, "credit", "--data", str(credit["new"]))
        assert proc.returncode == 2
        assert "changed since run" in proc.stderr and "--allow-changed-notebook" in proc.stderr
        assert _state(credit["root"]) == before
        proc = _retrain(credit, "credit", "--data", str(credit["new"]), "--allow-changed-notebook")
        assert proc.returncode == 0, proc.stderr
        assert "warning:" in proc.stdout and "changed since run" in proc.stdout
        (warning,) = read_json(_new_run(credit["root"], before[1]) / "run.json")["warnings"]
        assert str(notebook) in warning and credit["run"].name in warning
    finally:
        notebook.write_text(original)


# The schema a version holds new data to: every column but the dropped ones.
def test_expected_columns_leave_out_dropped_columns(credit: dict[str, Any]) -> None:
    columns = retrain.expected_columns(credit["root"] / "registry" / "credit" / "v1")
    assert columns == {
        "age": "float64",
        "income": "float64",
        "purpose": "string",
        "signup": "timestamp[us]",
        "region": "string",
        "default": "string",
    }


def _log_row(rid: str, body: dict[str, Any], n: int) -> dict[str, Any]:
    """An answered primary row of credit v1 in the prediction log, ``n`` examples."""
    answers = [{"class": "no", "index": 0, "probabilities": [0.6, 0.4]}] * n
    output = {"prediction": answers[0]} if n == 1 and "record" in body else {"predictions": answers}
    return {
        "request_id": rid,
        "time": "2025-01-01T00:00:00+00:00",
        "role": "primary",
        "model": "credit",
        "version": 1,
        "sha256": "0" * 64,
        "status": 200,
        "latency_ms": 1.0,
        "n": n,
        "input": json.dumps(body),
        "output": json.dumps(output),
    }


def _records(n: int, seed: int) -> list[dict[str, Any]]:
    """Rows of credit_frame as a client sends them: ISO dates, null for a missing value."""
    frame = credit_frame(n=n, seed=seed).drop(columns=["default"])
    frame["signup"] = frame["signup"].dt.strftime("%Y-%m-%d")
    return [
        {k: None if v is None or v != v else v for k, v in r.items()}
        for r in frame.to_dict("records")
    ]


# --labels-from-log: the answered records whose labels came back join the parent's table
# and the new one; a class index reads as its class; unlabelled requests, arrays and a
# batch labelled with a list of another length stay out.
def test_labels_from_log_adds_the_labelled_records(credit: dict[str, Any]) -> None:
    root = credit["root"]
    batch, single, other = _records(10, seed=5), _records(1, seed=6)[0], _records(3, seed=7)
    log = predlog.open_log("credit", root=root)
    try:
        log.write_many(
            [
                _log_row("batch", {"records": batch}, 10),
                _log_row("single", {"record": single}, 1),
                _log_row("unlabelled", {"records": other}, 3),
                _log_row("short", {"records": other}, 3),
                _log_row("arrays", {"inputs": [[0.0] * 4]}, 1),
            ]
        )
        truth = ["yes"] * 4 + ["no"] * 6
        labels = {"batch": truth, "single": 1, "short": ["no", "yes"], "arrays": 0}
        log.add_feedback(labels, "test")
    finally:
        log.close()
    _, runs = _state(root)
    proc = _retrain(credit, "credit", "--data", str(credit["new"]), "--labels-from-log")
    assert proc.returncode == 0, proc.stderr
    assert "labelled: 11 records of the prediction log" in proc.stdout
    dataset = Path(read_json(_new_run(root, runs) / "params.json")["parameters"]["dataset"])
    assert dataset.parent == root / "registry" / "credit" / "data"
    table = pq.read_table(dataset)
    assert table.num_rows == 300 + 200 + 11
    added = table.slice(500).to_pylist()
    assert [r["default"] for r in added] == [*truth, "yes"], "index 1 is the class 'yes'"
    assert [r["customer_id"] for r in added] == [r["customer_id"] for r in [*batch, single]]
    assert str(table.schema.field("signup").type) == "timestamp[us]"
    assert added[0]["signup"].strftime("%Y-%m-%d") == batch[0]["signup"]


# Nothing labelled in the log: exit 2 with the fix, no run. --log alone is refused too.
def test_labels_from_log_without_labels_is_refused(credit: dict[str, Any], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'unlabelled.sqlite'}"
    log = predlog.open_log("credit", url)
    try:
        log.write_many([_log_row("r1", {"records": _records(2, seed=8)}, 2)])
    finally:
        log.close()
    before = _state(credit["root"])
    new = str(credit["new"])
    proc = _retrain(credit, "credit", "--data", new, "--labels-from-log", "--log", url)
    assert proc.returncode == 2, proc.stderr
    assert "no labelled records" in proc.stderr and "mlkit feedback credit" in proc.stderr
    proc = _retrain(credit, "credit", "--data", new, "--log", url)
    assert proc.returncode == 2 and "--labels-from-log" in proc.stderr
    assert _state(credit["root"]) == before


# A labelled record that cannot be a row of the parent's table is refused, naming the column.
def test_labelled_record_of_another_type_is_refused(credit: dict[str, Any]) -> None:
    parent = retrain.find_parent("credit", "v1", credit["root"])
    good, bad = _records(2, seed=9)
    bad["age"] = "forty"
    with pytest.raises(DataError, match="do not fit column 'age'"):
        retrain._append(
            parent,
            str(credit["new"]),
            parent.parameters,
            credit["root"],
            [{"record": good, "label": "no"}, {"record": bad, "label": 1}],
        )
