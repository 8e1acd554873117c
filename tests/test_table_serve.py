"""A model trained on a user's own CSV: registered with its preprocessing, served on records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlkit._io import read_json
from mlkit.errors import UnsafeModelError
from mlkit.registry import loading, store
from tests.helpers import log_rows, run_cli
from tests.test_table_data import credit_frame


@pytest.fixture(scope="module")
def credit_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """classify.ipynb trained on a CSV with strings, gaps, a date and an id; registered."""
    tmp = tmp_path_factory.mktemp("credit")
    root = tmp / "experiments"
    csv = tmp / "credit.csv"
    credit_frame(n=600).to_csv(csv, index=False)
    env = {"MLKIT_EXPERIMENTS": str(root)}
    proc = run_cli(
        "run",
        "templates/classify.ipynb",
        "-q",
        "--tracking",
        "disabled",
        *("-p", "dataset", str(csv), "-p", "target", "default", "-p", "sensitive", "region"),
        *("-p", "epochs", "4"),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = root.glob("classify/runs/*")
    proc = run_cli("model", "register", run_dir.name, "--name", "credit", env=env)
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "csv": csv, "run": run_dir, "folder": root / "registry/credit/v1"}


def _record(**changes: Any) -> dict[str, Any]:
    record = {
        "customer_id": "c99999",
        "age": 41,
        "income": 52.5,
        "purpose": "car",
        "signup": "2022-03-04",
        "region": "north",
    }
    record.update(changes)
    return record


# The version folder holds the preprocessing and the table's description, hashed in the card;
# the Markdown card shows the source, its hash, the columns and what the checks found.
@pytest.mark.slow
def test_registered_table_model_keeps_its_preprocessing(credit_model: dict[str, Any]) -> None:
    folder = credit_model["folder"]
    card = read_json(folder / "card.json")
    assert set(card["files"]) == {"preprocess.json", "data.json", "reference.parquet"}
    assert card["data"]["records"] is True and card["data"]["class_names"] == ["no", "yes"]
    assert card["data"]["source"]["path"] == str(credit_model["csv"].resolve())
    md = (folder / "card.md").read_text()
    assert "table content hash: `blake3:" in md and "| purpose | feature | categorical" in md
    assert "customer_id" in md and "identifier" in md, "the id-like finding is on the card"
    loaded = loading.load_model("credit", "v1", root=credit_model["root"])
    assert loaded.preprocessor is not None and loaded.metadata()["records"] is True


# POST /predict with records in the table's own columns: an unseen category and a missing
# value answer; a missing column, a wrong type or NaN is a 422 naming the record and column;
# the log keeps the raw records.
def _server_answers_records(credit_model: dict[str, Any], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from mlkit.serve import app as serve_app

    log = tmp_path / "log.sqlite"
    app = serve_app.create_app(
        "credit", "v1", log_url=f"sqlite:///{log}", root=credit_model["root"]
    )
    batch = [_record(), _record(purpose="boat"), _record(age=None, purpose=None)]
    with TestClient(app) as client:
        one = client.post("/predict", json={"record": _record()})
        assert one.status_code == 200, one.text
        assert one.json()["prediction"]["class"] in ("no", "yes")
        many = client.post("/predict", json={"records": batch})
        assert many.status_code == 200, many.text
        assert len(many.json()["predictions"]) == 3
        no_income = {k: v for k, v in _record().items() if k != "income"}
        bad = {
            "missing column": ([_record(), no_income], [1, "income"]),
            "wrong type": ([_record(age="forty")], [0, "age"]),
            "a date that is no date": ([_record(signup="soon")], [0, "signup"]),
        }
        for what, (records, where) in bad.items():
            refused = client.post("/predict", json={"records": records})
            assert refused.status_code == 422, (what, refused.text)
            detail = refused.json()["detail"][0]
            assert detail["loc"] == ["body", "records", *where], (what, detail)
        nan = client.post(
            "/predict",
            content=b'{"record": {"age": NaN, "income": 1, "purpose": "car", '
            b'"signup": "2022-01-01", "customer_id": "x", "region": "north"}}',
            headers={"content-type": "application/json"},
        )
        assert nan.status_code == 422
        doc = client.get("/openapi.json").json()
        body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
        assert {"record", "records"} <= set(body["schema"]["properties"])
    rows = log_rows(log)
    assert json.loads(rows[1]["input"])["records"][1]["purpose"] == "boat", "raw records kept"
    assert [r["status"] for r in rows[:2]] == [200, 200]


# A preprocess.json changed after registration is refused like swapped weights.
@pytest.mark.slow
def test_changed_preprocessing_is_refused(credit_model: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "experiments"
    shutil.copytree(credit_model["root"], root)
    path = root / "registry/credit/v1/preprocess.json"
    data = json.loads(path.read_text())
    data["target"] = data["target"] + " "
    path.write_text(json.dumps(data))
    with pytest.raises(UnsafeModelError, match="preprocessing changed after registration"):
        loading.load_model("credit", "v1", root=root)
    assert store.resolve("credit", "v1", root) == 1


# Drifted records make mlkit monitor exit 1 naming the drifted column, against the training
# sample the version keeps (the CSV is gone by then); traffic like training does not.
def _monitor_names_the_drifted_column(credit_model: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    from fastapi.testclient import TestClient

    from mlkit.serve import app as serve_app

    root = tmp_path / "experiments"
    shutil.copytree(credit_model["root"], root)
    frame = credit_frame(n=300, seed=7).drop(columns=["default"])
    frame = frame.assign(signup=frame.signup.dt.strftime("%Y-%m-%d"))
    records = [
        {k: None if pd.isna(v) else v for k, v in r.items()} for r in frame.to_dict("records")
    ]
    env = {"MLKIT_EXPERIMENTS": str(root)}
    for name, batch in (
        ("same", records),
        ("drifted", [{**r, "income": r["income"] + 40} for r in records]),
    ):
        log = tmp_path / f"{name}.sqlite"
        app = serve_app.create_app("credit", "v1", log_url=f"sqlite:///{log}", root=root)
        with TestClient(app) as client:
            for start in range(0, len(batch), 50):
                answer = client.post("/predict", json={"records": batch[start : start + 50]})
                assert answer.status_code == 200, answer.text
        proc = run_cli(
            "monitor",
            "credit:v1",
            "--log",
            f"sqlite:///{log}",
            "--window",
            "300",
            "-q",
            "--tracking",
            "disabled",
            env=env,
        )
        if name == "same":
            assert proc.returncode == 0, proc.stdout + proc.stderr
        else:
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert "drift/features_drifted = income" in proc.stdout, proc.stdout


# mlkit evaluate slices fairness by a column of the CSV: the declared sensitive one, and a
# feature column that was never declared sensitive.
def _evaluate_by_a_column_of_the_table(credit_model: dict[str, Any]) -> None:
    from mlkit.registry import evaluation

    env = {"MLKIT_EXPERIMENTS": str(credit_model["root"])}
    run_id = credit_model["run"].name
    for column, groups in (("region", {"north", "south"}), ("purpose", {"car", "house"})):
        proc = run_cli(
            "evaluate", run_id, "--sensitive", column, "-q", "--tracking", "disabled", env=env
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        found = evaluation.find_evaluation(run_id, credit_model["root"])
        assert found is not None
        report = json.loads((Path(found["path"]) / "evaluation.json").read_text())
        assert report["sensitive"] == column
        assert groups <= set(report["fairness"]["groups"]), report["fairness"]["groups"]


# The whole path on a CSV with strings, missing values, a date and an id column: trained
# and registered (the fixture: mlkit run, mlkit model register), evaluated by a column of
# the CSV, then, with the CSV moved away, served on raw records and monitored.
@pytest.mark.slow
def test_a_csv_through_the_whole_chain(credit_model: dict[str, Any], tmp_path: Path) -> None:
    _evaluate_by_a_column_of_the_table(credit_model)
    csv = credit_model["csv"]
    csv.rename(csv.with_suffix(".away"))
    try:
        _server_answers_records(credit_model, tmp_path)
        _monitor_names_the_drifted_column(credit_model, tmp_path)
    finally:
        csv.with_suffix(".away").rename(csv)
