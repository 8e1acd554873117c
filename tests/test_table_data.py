"""A table of the user's own through mlkit.data.load and the templates.

The tables are written by a seeded generator: strings, missing values, dates, an id column.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlkit import data as mdata
from mlkit._io import read_json
from mlkit.dataset import split_indices
from mlkit.errors import DataError, NotFoundError, ParameterError
from mlkit.preprocess import Preprocessor
from tests.helpers import run_cli


def credit_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Loan applications: an id, numbers with gaps, a category with gaps, a date, a label."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n).astype(float)
    age[rng.random(n) < 0.05] = np.nan
    income = rng.normal(50, 15, n).round(2)
    purpose = rng.choice(["car", "house", "education", "travel"], n).astype(object)
    purpose[rng.random(n) < 0.05] = None
    signup = pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 900, n), unit="D")
    region = rng.choice(["north", "south"], n)
    score = 0.06 * (np.nan_to_num(age, nan=45) - 45) + 0.05 * (income - 50)
    score = score + np.where(purpose == "car", 1.0, 0.0)
    default = np.where(rng.random(n) < 1 / (1 + np.exp(-score)), "yes", "no")
    return pd.DataFrame(
        {
            "customer_id": [f"c{i:05d}" for i in range(n)],
            "age": age,
            "income": income,
            "purpose": purpose,
            "signup": signup,
            "region": region,
            "default": default,
        }
    )


@pytest.fixture
def credit(tmp_path: Path) -> dict[str, Any]:
    """The same rows as CSV, Parquet, a Parquet folder, SQLite and a DataFrame."""
    frame = credit_frame()
    csv = tmp_path / "credit.csv"
    frame.to_csv(csv, index=False)
    parquet = tmp_path / "credit.parquet"
    frame.to_parquet(parquet, index=False)
    folder = tmp_path / "parts"
    folder.mkdir()
    frame.iloc[:150].to_parquet(folder / "part-0.parquet", index=False)
    frame.iloc[150:].to_parquet(folder / "part-1.parquet", index=False)
    db = tmp_path / "credit.db"
    with sqlite3.connect(db) as conn:
        # ISO text, as a database export would hold the dates
        frame.assign(signup=frame.signup.dt.strftime("%Y-%m-%d")).to_sql("loans", conn)
    return {"frame": frame, "csv": csv, "parquet": parquet, "folder": folder, "db": db}


def _load(source: Any, **options: Any) -> mdata.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mdata.load(source, target="default", sensitive="region", **options)


def _same(a: mdata.Dataset, b: mdata.Dataset) -> None:
    assert a.version == b.version
    for split in ("train", "val", "test"):
        assert np.array_equal(getattr(a, split).X, getattr(b, split).X), split
        assert np.array_equal(getattr(a, split).y, getattr(b, split).y), split
    assert a.feature_names == b.feature_names and a.class_names == b.class_names


# CSV, a Parquet file, a Parquet folder, SQLite and a DataFrame: one Dataset, one version.
def test_every_source_kind_gives_the_same_dataset(credit: dict[str, Any]) -> None:
    csv = _load(str(credit["csv"]))
    assert csv.task == "classification" and csv.class_names == ["no", "yes"]
    assert csv.source == {"kind": "csv", "path": str(credit["csv"].resolve())}
    # the sqlite table has pandas' index column too: dropped, it is the same table
    others = {
        "parquet": _load(str(credit["parquet"])),
        "folder": _load(str(credit["folder"])),
        "sqlite": _load(f"sqlite:///{credit['db']}", table="loans", drop="index"),
        "frame": _load(credit["frame"]),
    }
    assert others["sqlite"].version != csv.version, "drop is part of the version"
    for kind, ds in others.items():
        if kind != "sqlite":
            _same(csv, ds)
    query = _load(
        f"sqlite:///{credit['db']}",
        query='SELECT customer_id, age, income, purpose, signup, region, "default" FROM loans',
    )
    _same(csv, query)


# The split, the preprocessing and the version: train rows only, sensitive kept aside.
def test_table_dataset_is_split_and_preprocessed_on_train(credit: dict[str, Any]) -> None:
    with pytest.warns(Warning, match="customer_id"):
        ds = mdata.load(str(credit["csv"]), target="default", sensitive="region", seed=1)
    assert ds.input_shape == (len(ds.feature_names),)
    assert "customer_id" not in " ".join(ds.feature_names), "an id is no feature"
    assert "region" not in " ".join(ds.feature_names), "sensitive columns are kept aside"
    assert set(ds.groups("region")) == {"north", "south"}
    assert {"age__missing", "purpose=<unknown>", "signup.year"} <= set(ds.feature_names)
    assert ds.train.X.dtype == np.float32 and not np.isnan(ds.train.X).any()
    assert abs(float(ds.train.X[:, ds.feature_names.index("income")].mean())) < 1e-5
    assert ds.version != _load(str(credit["csv"])).version, "the seed is part of the version"
    spec = ds.spec()
    assert spec["source"]["kind"] == "csv" and spec["table_hash"].startswith("blake3:")
    assert "id_like" in spec["checks"]["warning"]
    # The rows of split_indices (scikit-learn's), each split kept in table order.
    frame = credit["frame"]
    codes = pd.factorize(frame["default"])[0]  # in order of appearance, as the load's
    test = split_indices(codes, "classification", 1, 0.15, 0.15)[2]
    ids = ds.test_rows.column("customer_id").to_pylist()
    assert ids == frame["customer_id"].iloc[np.sort(test)].tolist()


# time_column: train on the oldest rows, test on the most recent.
def test_time_column_tests_on_the_most_recent_rows(credit: dict[str, Any]) -> None:
    frame = credit["frame"]
    ds = _load(credit["frame"], time_column="signup")
    pre: Preprocessor = ds.preprocessor
    assert isinstance(pre, Preprocessor)
    n = len(frame)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (n - 120, 60, 60)
    year = ds.feature_names.index("signup.year")
    assert ds.test.X[:, year].min() >= ds.train.X[:, year].max()
    with pytest.raises(ParameterError, match="time_column 'signed'"):
        _load(credit["frame"], time_column="signed")


# A run recorded when tables were hashed with SHA-256 (a hash without a prefix) is still
# checked against its table with that algorithm: the same rows pass, changed rows do not.
def test_a_hash_recorded_with_sha256_still_compares(credit: dict[str, Any], tmp_path: Path) -> None:
    from mlkit import tables
    from mlkit.errors import StateError
    from mlkit.run.runner import _check_table_unchanged

    legacy = tables.canonical_hash(tables.read_table(str(credit["csv"])), like="0" * 64)
    assert len(legacy) == 64 and ":" not in legacy
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "lineage.json").write_text(json.dumps({"data": {"table_hash": legacy}}))
    _check_table_unchanged(run_dir, {"dataset": str(credit["csv"])})
    frame = credit["frame"].copy()
    frame.loc[3, "income"] += 1
    frame.to_csv(credit["csv"], index=False)
    with pytest.raises(StateError, match="has changed since run"):
        _check_table_unchanged(run_dir, {"dataset": str(credit["csv"])})


# Bad input in Python: each a clear error naming the column or option and the fix.
def test_bad_table_input_in_python(credit: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"nope\.csv"):
        _load(str(tmp_path / "nope.csv"))
    with pytest.raises(ParameterError, match="Did you mean 'default'"):
        mdata.load(str(credit["csv"]), target="defualt")
    with pytest.raises(ParameterError, match="A table needs a target column"):
        mdata.load(str(credit["csv"]))
    with pytest.raises(ParameterError, match="salary"):
        _load(str(credit["csv"]), features="age,salary")
    with pytest.raises(ParameterError, match="apply to your own tables"):
        mdata.load("digits", target="default")
    one_class = credit["frame"].assign(default="no")
    with pytest.raises(DataError, match="one class"):
        _load(one_class)


def _cli(*args: str, root: Path) -> Any:
    return run_cli(
        "run",
        "templates/classify.ipynb",
        "-q",
        "--tracking",
        "disabled",
        *args,
        env={"MLKIT_EXPERIMENTS": str(root)},
    )


# From the command line, bad input exits 2 naming the column or option, and writes nothing.
def test_bad_table_input_exits_2_and_writes_nothing(credit: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "experiments"
    garbage = tmp_path / "broken.parquet"
    garbage.write_bytes(b"not parquet at all" * 10)
    one_class = tmp_path / "one.csv"
    credit["frame"].assign(default="no").to_csv(one_class, index=False)
    secret = f"pw-{uuid.uuid4().hex[:8]}"
    csv = str(credit["csv"])
    cases = [
        (["-p", "dataset", str(tmp_path / "nope.csv"), "-p", "target", "default"], "nope.csv"),
        (["-p", "dataset", str(garbage), "-p", "target", "default"], "broken.parquet"),
        (["-p", "dataset", csv, "-p", "target", "defualt"], "Pass -p target default"),
        (["-p", "dataset", str(one_class), "-p", "target", "default"], "one class"),
        (["-p", "dataset", csv, "-p", "target", "default", "-p", "features", "age,x"], "'x'"),
        (
            ["-p", "dataset", f"postgresql://u:{secret}@127.0.0.1:1/db", "-p", "table", "t"],
            "127.0.0.1",
        ),
        (
            ["-p", "dataset", f"sqlite:///{credit['db']}", "-p", "query", "SELECT nope FROM x"],
            "SELECT nope FROM x",
        ),
    ]
    for args, named in cases:
        proc = _cli(*args, *([] if "target" in args else ["-p", "target", "default"]), root=root)
        assert proc.returncode == 2, (args, proc.stderr)
        assert named in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and secret not in proc.stderr
        assert not root.exists(), f"{args} wrote {list(root.rglob('*'))}"


# The template end to end on a CSV: a completed run whose record holds the preprocessing
# (JSON, which turns served records into the same inputs), the schema and the findings.
@pytest.mark.slow
def test_template_trains_on_a_csv_and_records_its_data(
    credit: dict[str, Any], tmp_path: Path
) -> None:
    root = tmp_path / "experiments"
    args = ["-p", "dataset", str(credit["csv"]), "-p", "target", "default"]
    proc = _cli(*args, "-p", "sensitive", "region", "-p", "epochs", "3", root=root)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = root.glob("classify/runs/*")
    assert read_json(run_dir / "run.json")["status"] == "completed"
    described = read_json(run_dir / "data.json")
    assert described["source"]["kind"] == "csv"
    assert described["schema"]["columns"]["customer_id"]["role"] == "dropped"
    assert described["schema"]["columns"]["purpose"]["kind"] == "categorical"
    assert "id_like" in {f["check"] for f in described["findings"]}
    lineage = read_json(run_dir / "lineage.json")
    assert lineage["data"]["table_hash"] == described["table_hash"]
    pre = Preprocessor.from_dict(json.loads((run_dir / "preprocess.json").read_text()))
    records = credit["frame"].head(3).drop(columns=["default"])
    records = records.assign(signup=records.signup.dt.strftime("%Y-%m-%d"))
    rows = records.to_dict(orient="records")
    rows = [{k: None if pd.isna(v) else v for k, v in r.items()} for r in rows]
    rows[0]["purpose"] = "boat"  # never seen in training: counted, not refused
    out = pre.transform(rows)
    assert out.X.shape == (3, len(pre.feature_names)) and out.unknown["purpose"] == 1
    notebook = (run_dir / "output.ipynb").read_text()
    assert "Table checks:" in notebook, "the notebook shows what the checks found"
    import pyarrow.parquet as pq

    reference = pq.read_table(run_dir / "reference.parquet")
    train_rows = lineage["data"]["sizes"]["train"]
    assert reference.num_rows == train_rows and "default" in reference.column_names

    # The same rows reproduce exactly; changed rows are refused before anything runs.
    env = {"MLKIT_EXPERIMENTS": str(root)}
    again = run_cli("reproduce", run_dir.name, "-q", "--tracking", "disabled", env=env)
    assert again.returncode == 0 and "metrics reproduced exactly" in again.stdout, again.stderr
    frame = credit["frame"].copy()
    frame.loc[3, "income"] += 1
    frame.to_csv(credit["csv"], index=False)
    changed = run_cli("reproduce", run_dir.name, "-q", "--tracking", "disabled", env=env)
    assert changed.returncode == 2, changed.stderr
    assert "has changed since run" in changed.stderr and "Traceback" not in changed.stderr
    graded = run_cli("evaluate", run_dir.name, "-q", "--tracking", "disabled", env=env)
    assert graded.returncode != 0 and "has changed" in graded.stdout + graded.stderr
    assert len(list(root.glob("classify/runs/*"))) == 2, "the refused reproduction made no run"


# PostgreSQL: the same rows give the same version as the CSV.
@pytest.mark.slow
def test_postgres_table_gives_the_same_dataset(credit: dict[str, Any], pg_url: str) -> None:
    import sqlalchemy as sa

    name = f"credit_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        credit["frame"].to_sql(name, engine, index=False)
        from_pg = _load(pg_url, table=name)
        _same(_load(str(credit["csv"])), from_pg)
        assert "mlkit-test-only" not in json.dumps(from_pg.spec()), "no password in lineage"
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        engine.dispose()
