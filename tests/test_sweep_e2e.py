"""Sweeps end to end under stress: drivers side by side, and the trials of dead workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from mlkit import record_store
from mlkit import storage as storages
from mlkit._io import hostname, write_json
from mlkit.sweep import reaper
from tests.helpers import ROOT, SCENARIOS

NOTEBOOK = str(SCENARIOS / "objective.ipynb")
# 24 points, so two drivers drawing at random would soon meet one another's points.
SPACE = {"y": {"type": "int", "low": 0, "high": 11}, "kind": ["a", "b"]}


def repeats(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """Trials that ran a point another trial ran, a reaped trial's documented retry aside."""
    seen: dict[str, optuna.trial.FrozenTrial] = {}
    found = []
    for t in sorted(trials, key=lambda t: t.number):
        point = json.dumps(t.params, sort_keys=True)
        first = seen.setdefault(point, t)
        if first is t:
            continue
        original = next((o for o in trials if o.number == t.user_attrs.get("retry_of")), None)
        if not (original and original.user_attrs.get("reaped") and original.params == t.params):
            found.append(f"#{t.number} repeats #{first.number}: {point}")
    return found


# Two `mlkit sweep` commands started together on one study (default TPE, no --seed) run
# the number of trials asked between them, and never the same point twice.
@pytest.mark.slow
def test_two_drivers_at_once_run_no_point_twice(exp_root: Path, tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    args = ["sweep", NOTEBOOK, "--space", str(space), "--study", "pair", "--trials", "14"]
    args += ["--jobs", "2", "--objective", "loss", "-p", "epochs", "1", "-q"]
    env = dict(os.environ, COLUMNS="200")
    drivers = [
        subprocess.Popen(
            [sys.executable, "-m", "mlkit", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=120) for proc in drivers]
    for proc, (out, err) in zip(drivers, outputs, strict=True):
        assert proc.returncode == 0, out + err
    trials = storages.load_study(str(exp_root / "pair" / "study.journal"), "pair").trials
    assert len([t for t in trials if not t.user_attrs.get("reaped")]) == 14
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert {t.user_attrs["worker"]["pid"] for t in trials} == {p.pid for p in drivers}, (
        "both drivers ran trials"
    )
    assert repeats(trials) == []


def dead_pid() -> int:
    """The pid of a process of this host that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def running_record(root: Path, study: str, number: int, pid: int) -> Path:
    """A trial's run record as a driver killed mid-run leaves it: ``running``, no reason."""
    _, run_dir = record_store.create_run_dir(study, root)
    write_json(
        run_dir / "run.json",
        {"status": "running", "reason": "", "pid": pid, "host": hostname(), "study": study}
        | {"trial": number, "job_type": "trial"},
    )
    return run_dir


def killed_trial(study: optuna.Study, pid: int, run_dir: Path | None) -> None:
    """A RUNNING trial of a worker that was then killed, linked to its record or not yet."""
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    attrs = {"worker": {"host": hostname(), "pid": pid, "index": 0}, "heartbeat": 1e12}
    if run_dir is not None:
        attrs["run_path"] = str(run_dir)
    for key, value in attrs.items():
        study._storage.set_trial_user_attr(trial._trial_id, key, value)


# A reaped trial's record says why it never ended, whether the trial was linked to it
# (run_path) or its worker was killed before that (found by study and trial number).
@pytest.mark.parametrize("linked", [True, False])
def test_reaped_trial_record_says_why(tmp_path: Path, linked: bool) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="chaos")
    pid = dead_pid()
    run_dir = running_record(tmp_path, "chaos", 0, pid)
    other = running_record(tmp_path, "chaos", 7, pid)  # another trial's: left alone
    killed_trial(study, pid, run_dir if linked else None)
    assert reaper.reap_stale(study, root=tmp_path) == [0]
    record = record_store.load_run(run_dir)
    assert record["status"] == "crashed"
    assert "trial #0 reaped" in record["reason"] and f"pid {pid}" in record["reason"]
    assert record_store.load_run(other)["reason"] == ""


# A record whose driver still runs is never marked, even when its trial is reaped.
def test_live_run_record_is_left_alone(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="chaos")
    run_dir = running_record(tmp_path, "chaos", 0, os.getpid())
    killed_trial(study, dead_pid(), run_dir)
    assert reaper.reap_stale(study, root=tmp_path) == [0]
    assert record_store.load_run(run_dir)["status"] == "running"


# A worker killed between asking for a trial and stamping it (both under the ask lock)
# leaves a RUNNING trial with no worker: whoever holds the lock next reaps it at once;
# without a lock it waits for the heartbeat deadline.
def test_unstamped_trial_is_reaped_under_the_ask_lock() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="unstamped")
    study.ask()
    assert reaper.reap_stale(study) == []
    assert reaper.reap_stale(study, locked=True) == [0]
    trial = study.trials[0]
    assert trial.state == TrialState.FAIL and "stamping" in trial.user_attrs["fail_reason"]
    assert [t.state for t in study.trials[1:]] == [TrialState.WAITING]  # the retry


# Which storages have a real ask lock.
def test_holds_lock(tmp_path: Path) -> None:
    assert reaper.holds_lock(str(tmp_path / "study.journal"))
    assert reaper.holds_lock(f"sqlite:///{tmp_path}/s.db")
    assert reaper.holds_lock("postgresql://u@h/db")
    assert not reaper.holds_lock("mysql://u@h/db")
