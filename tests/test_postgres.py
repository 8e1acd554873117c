"""Sweeps on many machines: several independent drivers share one PostgreSQL study.

Needs a PostgreSQL server: `source .ci/postgres.sh` installs and starts one on
127.0.0.1 and exports MLKIT_TEST_POSTGRES. Without it these tests skip here and
fail in CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from mlkit import storage as storages
from tests.helpers import ROOT, SCENARIOS, all_files

# Real sweeps on a real PostgreSQL server: the slow tier (the fixture pg_url is in conftest).
pytestmark = pytest.mark.slow
NOTEBOOK = str(SCENARIOS / "objective.ipynb")


def start_machine(url: str, study: str, space: str, trials: int, jobs: int, sampler: str):
    """One 'machine': an independent `mlkit sweep` process on the shared storage."""
    env = dict(os.environ)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlkit",
            "sweep",
            NOTEBOOK,
            "--space",
            space,
            "--storage",
            url,
            "--study",
            study,
            "--trials",
            str(trials),
            "--jobs",
            str(jobs),
            "--sampler",
            sampler,
            "--objective",
            "loss",
            "--pruner",
            "none",
            "-q",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# Three drivers on one grid study: exactly the requested trials, no grid point twice.
def test_many_machines_grid_exact_and_unique(exp_root: Path, tmp_path: Path, pg_url: str) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"y": {"type": "int", "low": 0, "high": 5}}))
    study = f"pg-grid-{uuid.uuid4().hex[:8]}"
    procs = [start_machine(pg_url, study, str(space), 6, jobs, "grid") for jobs in (1, 2, 1)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err
        assert "Error" not in err and "lock" not in err.lower(), err
    trials = storages.load_study(pg_url, study).trials
    assert len(trials) == 6
    assert sorted(t.params["y"] for t in trials) == [0, 1, 2, 3, 4, 5]
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) >= 2


# Random sampling across drivers also stops at exactly the requested number.
def test_many_machines_exact_count(exp_root: Path, tmp_path: Path, pg_url: str) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"x": {"type": "float", "low": -4, "high": 4}}))
    study = f"pg-count-{uuid.uuid4().hex[:8]}"
    procs = [start_machine(pg_url, study, str(space), 5, 2, "random") for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err
    trials = storages.load_study(pg_url, study).trials
    assert len(trials) == 5
    assert all(t.state.name == "COMPLETE" for t in trials)
    # The database password never reaches a record, a notebook or a W&B file.
    password = pg_url.split(":")[2].split("@")[0]
    for path in all_files(exp_root):
        assert password.encode() not in path.read_bytes(), path
