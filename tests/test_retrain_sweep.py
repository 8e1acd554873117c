"""`mlkit retrain --sweep N`: a short sweep around the parent, its best trial the candidate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlkit._io import read_json
from mlkit.storage import find_storage, load_study
from tests.helpers import run_cli
from tests.test_retrain import train_and_register
from tests.test_table_data import credit_frame

pytestmark = pytest.mark.slow  # real training runs and sweeps

SPACE = "lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n"


@pytest.fixture(scope="module")
def credit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """v1 (production) of classify.ipynb on 300 rows, one epoch, seed 7; 200 new rows."""
    tmp = tmp_path_factory.mktemp("retrain-sweep")
    registered = train_and_register(
        tmp,
        credit_frame(n=300),
        *("-p", "epochs", "1", "-p", "warmup_epochs", "0", "-p", "seed", "7"),
    )
    new, space = tmp / "june.csv", tmp / "space.yaml"
    credit_frame(n=200, seed=1).to_csv(new, index=False)
    space.write_text(SPACE)
    return {**registered, "new": new, "space": space}


def _retrain(credit: dict[str, Any], *args: str):
    return run_cli(
        *("retrain", *args, "--data", str(credit["new"]), "-q", "--tracking", "disabled"),
        env=credit["env"],
        timeout=600,
    )


def _registry(root: Path) -> dict[str, Any]:
    return read_json(root / "registry" / "credit" / "registry.json")


def _study_of(run_id: str, root: Path) -> tuple[Any, dict[str, Any]]:
    """The study a registered run was a trial of, and the run's record."""
    (run_dir,) = root.glob(f"*/runs/{run_id}")
    info = read_json(run_dir / "run.json")
    study = load_study(find_storage(info["study"], root), info["study"])
    return study, info


# --sweep 3 --space FILE: three trials searching lr only, every other parameter the
# parent's (seed and epochs included), dataset the new table; the best trial is registered
# as the candidate, its card naming the parent; production does not move.
def test_sweep_registers_the_best_trial_naming_the_parent(credit: dict[str, Any]) -> None:
    root = credit["root"]
    proc = _retrain(credit, "credit", "--sweep", "3", "--space", str(credit["space"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    registry = _registry(root)
    number = max(v["version"] for v in registry["versions"])
    assert registry["aliases"] == {"production": 1, "candidate": number}
    run_id = registry["versions"][-1]["run_id"]
    study, info = _study_of(run_id, root)
    assert info["trial"] == study.best_trial.number, "the best trial is the one registered"
    assert len(study.trials) == 3 and f"sweep {study.study_name}: 3 complete" in proc.stdout
    parent_params = read_json(credit["run"] / "params.json")["parameters"]
    seen_lr = set()
    for trial in study.trials:
        params = read_json(Path(trial.user_attrs["run_path"]) / "params.json")["parameters"]
        assert params.pop("dataset") == str(credit["new"].resolve())
        seen_lr.add(params.pop("lr"))
        expected = {k: v for k, v in parent_params.items() if k not in ("dataset", "lr")}
        assert params == expected, "everything but the space is the parent's, seed included"
        assert params["seed"] == 7 and params["epochs"] == 1
    assert len(seen_lr) == 3
    card = read_json(root / "registry" / "credit" / f"v{number}" / "card.json")
    parent = {"model": "credit", "version": 1, "run_id": credit["run"].name}
    assert card["lineage"]["parent"] == parent and card["run"]["id"] == run_id


# A parent that was a sweep trial is swept again over its study's own space: no --space.
def test_sweep_of_a_trial_reuses_its_study_space(credit: dict[str, Any]) -> None:
    root = credit["root"]
    registry = _registry(root)
    if "candidate" not in registry["aliases"]:
        pytest.skip("needs the candidate registered by the test above")
    parent_run = registry["versions"][-1]["run_id"]
    parent_study, _ = _study_of(parent_run, root)
    proc = _retrain(credit, "credit:candidate", "--sweep", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = _registry(root)
    study, _ = _study_of(after["versions"][-1]["run_id"], root)
    assert study.study_name != parent_study.study_name and len(study.trials) == 2
    assert study.user_attrs["mlkit"]["space"] == parent_study.user_attrs["mlkit"]["space"]
    assert after["aliases"]["candidate"] == after["versions"][-1]["version"]


# A parent that was a plain run has no study: --sweep without --space is refused before
# any run (exit 2, naming --space); --space without --sweep too.
def test_sweep_without_a_space_is_refused(credit: dict[str, Any]) -> None:
    root = credit["root"]
    before = (_registry(root)["versions"], sorted(p.name for p in root.glob("*/runs/*")))
    proc = _retrain(credit, "credit:v1", "--sweep", "3")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--space FILE" in proc.stderr and "not a trial of a sweep" in proc.stderr
    proc = _retrain(credit, "credit:v1", "--space", str(credit["space"]))
    assert proc.returncode == 2 and "--sweep" in proc.stderr
    proc = _retrain(credit, "credit:v1", "--sweep", "0", "--space", str(credit["space"]))
    assert proc.returncode == 2 and "--sweep must be a number of trials" in proc.stderr
    assert before == (_registry(root)["versions"], sorted(p.name for p in root.glob("*/runs/*")))
