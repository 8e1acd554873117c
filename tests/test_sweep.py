"""Sweeps through the real Optuna storage, papermill and kernels, on a cheap notebook."""

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

from mlkit import storage as storages
from mlkit import trial as mlkit_trial
from mlkit._io import read_json, redact
from mlkit.sweep import config, driver, space
from tests.helpers import SCENARIOS, all_files, run_cli, wait_until

NOTEBOOK = str(SCENARIOS / "objective.ipynb")


def write_space(tmp_path: Path, raw: dict) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def study_of(root: Path, name: str) -> optuna.Study:
    return storages.load_study(str(root / name / "study.journal"), name)


BOWL = {
    "x": {"type": "float", "low": -4.0, "high": 4.0},
    "y": {"type": "int", "low": 0, "high": 3},
    "kind": ["a", "b"],
}


# Two jobs, exactly N trials, each a record linked both ways; seeds come from the trial.
@pytest.mark.slow
def test_parallel_sweep_links_trials_and_records(exp_root: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "sweep",
        NOTEBOOK,
        "--space",
        write_space(tmp_path, BOWL),
        "--trials",
        "6",
        "--jobs",
        "2",
        "--objective",
        "loss",
        "--study",
        "bowl",
        "-q",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "best trial #" in proc.stdout and "mlkit sweep report bowl" in proc.stdout
    study = study_of(exp_root, "bowl")
    trials = study.get_trials()
    assert len(trials) == 6
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    workers = {t.user_attrs["worker"]["index"] for t in trials}
    assert workers == {0, 1}, "both workers took trials"
    spans = [
        (t.user_attrs["worker"]["index"], t.datetime_start, t.datetime_complete) for t in trials
    ]
    assert any(a[0] != b[0] and a[1] < b[2] and b[1] < a[2] for a in spans for b in spans), (
        "trials of the two workers ran at the same time"
    )
    for t in trials:
        record = read_json(Path(t.user_attrs["run_path"]) / "run.json")
        assert record["study"] == "bowl" and record["trial"] == t.number
        assert record["job_type"] == "trial"
        params = read_json(Path(t.user_attrs["run_path"]) / "params.json")["parameters"]
        assert params["seed"] == t.user_attrs["seed"] == driver.trial_seed(0, t.params)
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(
                read_json(Path(t.user_attrs["run_path"]) / "result.json")["loss"]
            )


# Resume: the same command again continues the study up to the new total.
@pytest.mark.slow
def test_resume_continues_the_study(exp_root: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path, BOWL)
    args = ["sweep", NOTEBOOK, "--space", space, "--objective", "loss", "--study", "r", "-q"]
    assert run_cli(*args, "--trials", "2").returncode == 0
    assert run_cli(*args, "--trials", "4").returncode == 0
    assert len(study_of(exp_root, "r").trials) == 4
    proc = run_cli("sweep", NOTEBOOK, "--space", space, "--objective", "x", "--study", "r")
    assert proc.returncode == 2 and "different objectives" in proc.stderr


# Every kind of failure is FAIL with its reason and notebook, and the sweep goes on.
@pytest.mark.slow
def test_failures_are_recorded_and_the_sweep_goes_on(exp_root: Path, tmp_path: Path) -> None:
    space = write_space(
        tmp_path,
        {
            "fail": {
                "type": "categorical",
                "choices": ["none", "raise", "exit", "nan", "die", "no_result"],
            }
        },
    )
    proc = run_cli(
        "sweep",
        NOTEBOOK,
        "--space",
        space,
        "--sampler",
        "grid",
        "--trials",
        "6",
        "--objective",
        "loss",
        "--study",
        "f",
        "--pruner",
        "none",
        "-q",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr  # one trial succeeded
    trials = {t.params["fail"]: t for t in study_of(exp_root, "f").trials}
    assert set(trials) == {"none", "raise", "exit", "nan", "die", "no_result"}
    assert trials["none"].state == TrialState.COMPLETE
    reasons = {
        "raise": "raised RuntimeError: asked to fail",
        "exit": "exited early with sys.exit(0)",
        "nan": "non-finite",
        "die": "kernel died",
        "no_result": "without recording a result",
    }
    for mode, reason in reasons.items():
        trial = trials[mode]
        assert trial.state == TrialState.FAIL
        assert reason in trial.user_attrs["fail_reason"], (mode, trial.user_attrs)
        assert (Path(trial.user_attrs["run_path"]) / "output.ipynb").exists()


# A sweep where no trial succeeds exits non-zero.
@pytest.mark.slow
def test_all_failed_exits_1(exp_root: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path, {"x": {"type": "float", "low": 0, "high": 1}})
    proc = run_cli(
        "sweep",
        NOTEBOOK,
        "--space",
        space,
        "-p",
        "fail",
        "raise",
        "--trials",
        "2",
        "--objective",
        "loss",
        "--study",
        "allfail",
        "-q",
    )
    assert proc.returncode == 1
    assert "0 complete" in proc.stdout


# Pruning crosses the process boundary: a PRUNED trial keeps its notebook and record.
def test_pruned_trials_keep_their_record(exp_root: Path, tmp_path: Path) -> None:
    # The first trials are good, the rest are worse at every step: the median pruner stops them.
    space = write_space(tmp_path, {"y": {"type": "int", "low": 0, "high": 9}})
    storage = str(exp_root / "p" / "study.journal")
    cfg = config.prepare(
        NOTEBOOK, space, study="p", n_trials=7, objectives=["loss"], fixed={"epochs": 6}
    )
    study = config._create_or_resume(cfg)
    for y in (0, 0, 0, 0, 9, 9, 9):
        study.enqueue_trial({"y": y})
    summary = driver.run(cfg, progress=False)
    assert summary.n_pruned >= 1
    pruned = [t for t in storages.load_study(storage, "p").trials if t.state == TrialState.PRUNED]
    for t in pruned:
        run_dir = Path(t.user_attrs["run_path"])
        assert read_json(run_dir / "pruned.json")["step"] == max(t.intermediate_values)
        assert (run_dir / "output.ipynb").exists() and (run_dir / "result.json").exists()
        assert max(t.intermediate_values) < 6  # stopped before the last epoch


# A killed worker's RUNNING trial is failed within bounded time and tried again once.
def test_killed_worker_trial_is_reaped_and_retried(exp_root: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path, BOWL)
    cfg = config.prepare(NOTEBOOK, space, study="k", n_trials=2, objectives=["loss"])
    study = config._create_or_resume(cfg)
    orphan = study.ask(
        {
            "x": optuna.distributions.FloatDistribution(-4, 4),
            "y": optuna.distributions.IntDistribution(0, 3),
            "kind": optuna.distributions.CategoricalDistribution(["a", "b"]),
        }
    )
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    import socket

    study.set_user_attr("unused", 1)
    study._storage.set_trial_user_attr(
        orphan._trial_id, "worker", {"host": socket.gethostname(), "pid": int(dead)}
    )
    driver.run(cfg, progress=False)
    trials = storages.load_study(cfg.storage, "k").trials
    reaped = trials[orphan.number]
    assert reaped.state == TrialState.FAIL and reaped.user_attrs["reaped"]
    assert "worker pid" in reaped.user_attrs["fail_reason"]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == orphan.number]
    assert len(retries) == 1 and retries[0].params == reaped.params
    assert retries[0].state == TrialState.COMPLETE
    assert sum(1 for t in trials if not t.user_attrs.get("reaped")) == 2


# A torn last line (a write killed midway) never makes the study unreadable.
@pytest.mark.slow
def test_torn_journal_tail_is_repaired(exp_root: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path, BOWL)
    args = ["sweep", NOTEBOOK, "--space", space, "--objective", "loss", "--study", "t", "-q"]
    assert run_cli(*args, "--trials", "1").returncode == 0
    journal = exp_root / "t" / "study.journal"
    with open(journal, "ab") as fh:
        fh.write(b'{"op_code": 5, "worker_id": "x", "trial_id": 0, "us')
    proc = run_cli(*args, "--trials", "2")
    assert proc.returncode == 0, proc.stderr
    assert len(study_of(exp_root, "t").trials) == 2
    assert list(journal.parent.glob("study.journal.torn-*"))


# A notebook reports through one storage per sweep: not fsynced, read by every process, and
# never reused for another sweep (whose journal may be a new file at the same path).
def test_trial_storage_is_kept_per_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "study.journal")

    def new_sweep(values: list[float]) -> int:
        study = optuna.create_study(storage=storages.open_storage(url), study_name="s")
        for value in values:
            study.enqueue_trial({"x": value})
        trial = study.ask({"x": optuna.distributions.FloatDistribution(-9, 9)})
        return trial.number

    number = new_sweep([1.0])
    first = mlkit_trial.attach_trial(url, "s", number, "none", session=1.0)
    assert mlkit_trial.attach_trial(url, "s", number, "none", session=1.0).storage is first.storage
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("a report was fsynced"))
    for step in range(3):
        first.report(0.5 - step / 10, step)
    monkeypatch.undo()
    stock = optuna.load_study(study_name="s", storage=storages.open_storage(url))
    assert stock.trials[number].intermediate_values == {0: 0.5, 1: 0.4, 2: 0.3}

    # The same path, a new sweep: a new storage reading the new file from its start.
    Path(url).unlink()
    number = new_sweep([-2.0, 3.0])
    second = mlkit_trial.attach_trial(url, "s", number, "none", session=2.0)
    assert second.storage is not first.storage
    assert second.params == {"x": -2.0} and second.number == 0


# The grid sampler with two jobs runs every grid point exactly once.
@pytest.mark.slow
def test_grid_with_two_jobs_has_no_duplicates(exp_root: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path, {"y": {"type": "int", "low": 0, "high": 3}})
    proc = run_cli(
        "sweep",
        NOTEBOOK,
        "--space",
        space,
        "--sampler",
        "grid",
        "--jobs",
        "2",
        "--trials",
        "4",
        "--objective",
        "loss",
        "--study",
        "g",
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(t.params["y"] for t in study_of(exp_root, "g").trials) == [0, 1, 2, 3]


# Two objectives give a Pareto front; best parameters come out as YAML `mlkit run -f` takes.
@pytest.mark.slow
def test_pareto_and_best_yaml(exp_root: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path, BOWL)
    proc = run_cli(
        "sweep",
        NOTEBOOK,
        "--space",
        space,
        "--trials",
        "3",
        "--objective",
        "loss:min",
        "--objective",
        "seed:max",
        "--study",
        "m",
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Pareto trial #" in proc.stdout
    run_cli(
        "sweep",
        NOTEBOOK,
        "--space",
        space,
        "--trials",
        "2",
        "--objective",
        "loss",
        "--study",
        "b",
        "-q",
    )
    best = run_cli("sweep", "best", "b")
    assert best.returncode == 0, best.stderr
    params = yaml.safe_load(best.stdout)
    assert set(params) >= {"x", "y", "kind", "seed"}
    file = tmp_path / "best.yaml"
    file.write_text(best.stdout)
    rerun = run_cli("run", NOTEBOOK, "-f", str(file), "-q")
    assert rerun.returncode == 0, rerun.stderr
    trial = study_of(exp_root, "b").best_trial
    assert json.loads(Path(rerun.stdout.split("record:")[1].split()[0], "result.json").read_text())[
        "loss"
    ] == pytest.approx(trial.value)


# Bad sweep input: clear message, exit 2, no study written.
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trials", "0"], "--trials must be an int >= 1"),
        (["--sampler", "bayes"], "Unknown sampler 'bayes'"),
        (["--pruner", "early"], "Unknown pruner 'early'"),
        (["--objective", "loss:up"], "direction must be min or max"),
        (["-p", "x", "1"], "both fixed with -p and searched"),
        (["--storage", "redis://localhost"], "is not understood"),
    ],
)
def test_bad_sweep_input(exp_root: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    proc = run_cli("sweep", NOTEBOOK, "--space", write_space(tmp_path, BOWL), *extra)
    assert proc.returncode == 2, proc.stdout
    assert message in proc.stderr
    assert all_files(exp_root) == []


# A storage password never reaches a record or a notebook (the URL is redacted).
def test_redact() -> None:
    assert redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    assert redact("study.journal") == "study.journal"


# The trial handle is a no-op outside a sweep, so the same notebook runs by hand.
def test_null_trial_outside_a_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlkit import trial as mlkit_trial

    monkeypatch.delenv("MLKIT_TRIAL", raising=False)
    handle = mlkit_trial.current()
    assert not handle.active and handle.should_prune() is False
    assert handle.callback()(1, {"val/loss": 1.0}) is None
    assert "MLKIT_TRIAL" not in os.environ


# Any papermill notebook sweeps: a notebook that records with scrapbook's glue.
@pytest.mark.slow
def test_sweep_scrapbook_notebook(exp_root: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path, {"value": {"type": "float", "low": 0, "high": 1}})
    proc = run_cli(
        "sweep",
        str(SCENARIOS / "scrapbook_glue.ipynb"),
        "--space",
        space,
        "--trials",
        "2",
        "--objective",
        "value:max",
        "--study",
        "sb",
        "-q",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = study_of(exp_root, "sb").trials
    assert all(t.value == pytest.approx(2 * t.params["value"]) for t in trials)


# --timeout stops asking for new trials; the running ones finish.
@pytest.mark.slow
def test_overall_timeout_stops_the_sweep(exp_root: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "sweep",
        NOTEBOOK,
        "--space",
        write_space(tmp_path, BOWL),
        "--trials",
        "500",
        # The clock starts when the sweep does: on a loaded machine start-up alone took 1 s.
        "--timeout",
        "3",
        "--objective",
        "loss",
        "--study",
        "to",
        "-q",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 1 <= len(study_of(exp_root, "to").trials) < 500


# A worker killed with SIGKILL mid-trial, then the sweep resumed: exactly N trials, none
# RUNNING, and the killed trial's parameters tried again.
@pytest.mark.slow
def test_sigkilled_worker_then_resume(exp_root: Path, tmp_path: Path) -> None:
    import signal

    space = write_space(tmp_path, {"x": {"type": "float", "low": -4, "high": 4}})
    args = [
        "sweep",
        NOTEBOOK,
        "--space",
        space,
        "--trials",
        "3",
        "--objective",
        "loss",
        "--study",
        "kill",
        "-q",
    ]
    env = dict(os.environ, COLUMNS="200")
    slow = ("-p", "sleep", "0.25", "-p", "epochs", "12")  # 3 s a trial: the kill lands in one
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlkit", *args, *slow],
        cwd=Path(NOTEBOOK).parents[2],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = exp_root / "kill" / "study.journal"

    def running_in_a_notebook() -> list[optuna.trial.FrozenTrial]:
        if not journal.exists():
            return []
        return [
            t
            for t in storages.load_study(str(journal), "kill").trials
            if t.state == TrialState.RUNNING
            and "run_path" in t.user_attrs
            and (Path(t.user_attrs["run_path"]) / "output.ipynb").exists()
        ]

    running = wait_until(running_in_a_notebook, 120, 0.5, "a trial started")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = running[0]
    resumed = run_cli(*args, *slow)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = study_of(exp_root, "kill").trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    counted = [t for t in trials if not t.user_attrs.get("reaped")]
    assert len(counted) == 3
    assert trials[killed.number].state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params


# A warm kernel killed from outside mid-trial: that trial is FAIL naming the dead kernel,
# the pool replaces the kernel and the next trial is COMPLETE.
@pytest.mark.slow
def test_warm_kernel_killed_mid_trial(exp_root: Path, tmp_path: Path) -> None:
    import signal
    import threading

    from mlkit.run import warm

    space = write_space(tmp_path, {"sleep": [0.0, 1.0]})
    cfg = config.prepare(
        NOTEBOOK,
        space,
        study="kk",
        n_trials=2,
        objectives=["loss"],
        pruner="none",
        fixed={"epochs": 60},
        engine="warm",
    )
    study = config._create_or_resume(cfg)
    study.enqueue_trial({"sleep": 1.0})  # killed in its loop, a minute before its end
    study.enqueue_trial({"sleep": 0.0})
    killed: list[int] = []

    def first_reporting() -> bool:
        first = storages.load_study(cfg.storage, "kk").trials[:1]
        return bool(first and first[0].state == TrialState.RUNNING and first[0].intermediate_values)

    def kill_when_reporting() -> None:
        wait_until(first_reporting, 120, 0.2, "the first trial to report")
        busy = list(warm.pool().busy)
        if busy:
            pid = busy[0].km.provisioner.process.pid
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_when_reporting, daemon=True)
    killer.start()
    summary = driver.run(cfg, progress=False)
    killer.join(timeout=5)
    assert killed, "the first trial's kernel was found running and killed"
    dead, after = storages.load_study(cfg.storage, "kk").trials
    assert dead.state == TrialState.FAIL
    assert "kernel died" in dead.user_attrs["fail_reason"], dead.user_attrs
    assert (Path(dead.user_attrs["run_path"]) / "output.ipynb").exists()
    assert after.state == TrialState.COMPLETE, after.user_attrs.get("fail_reason")
    assert (summary.n_complete, summary.n_failed) == (1, 1)


# A trial whose cell runs past --trial-timeout is FAIL with that reason; the sweep goes on.
@pytest.mark.slow
def test_trial_timeout(exp_root: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path, {"sleep": [0.0, 30.0]})
    proc = run_cli(
        "sweep",
        NOTEBOOK,
        "--space",
        space,
        "--sampler",
        "grid",
        "--trials",
        "2",
        "--trial-timeout",
        "3",
        "--objective",
        "loss",
        "--study",
        "tt",
        "--pruner",
        "none",
        "-q",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = {t.params["sleep"]: t for t in study_of(exp_root, "tt").trials}
    assert trials[0.0].state == TrialState.COMPLETE
    assert trials[30.0].state == TrialState.FAIL
    assert "timed out after 3 s" in trials[30.0].user_attrs["fail_reason"]


# The study opens unchanged in optuna-dashboard (its WSGI app over the same journal file).
@pytest.mark.slow
def test_study_opens_in_optuna_dashboard(exp_root: Path, tmp_path: Path) -> None:
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    proc = run_cli(
        "sweep",
        NOTEBOOK,
        "--space",
        write_space(tmp_path, BOWL),
        "--trials",
        "2",
        "--objective",
        "loss",
        "--study",
        "dash",
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    app = wsgi(storages.open_storage(str(exp_root / "dash" / "study.journal")))
    environ: dict = {}
    setup_testing_defaults(environ)
    environ.update(PATH_INFO="/api/studies/0", QUERY_STRING="after=0")
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status == ["200 OK"]
    assert len(json.loads(body)["trials"]) == 2


def start_two_job_sweep(tmp_path: Path, study: str, *extra: str) -> subprocess.Popen:
    """``mlkit sweep`` of 6 trials on 2 jobs, one second an epoch, in the background."""
    space = write_space(tmp_path, {"x": {"type": "float", "low": -4, "high": 4}})
    args = ["sweep", NOTEBOOK, "--space", space, "--trials", "6", "--jobs", "2"]
    args += ["--objective", "loss", "--study", study, "-q", "-p", "sleep", "1", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "mlkit", *args],
        cwd=Path(NOTEBOOK).parents[2],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


# Ctrl-C (or SIGTERM) ends a two-job sweep at once: the trial running on the other worker's
# thread is interrupted and recorded FAIL naming why, the command exits 128 + the signal,
# and no kernel outlives it.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("signame", "why"),
    [("SIGINT", "interrupted by the user"), ("SIGTERM", "terminated by SIGTERM")],
)
def test_ctrl_c_stops_every_worker(exp_root: Path, tmp_path: Path, signame: str, why: str) -> None:
    import signal
    import time

    import psutil

    signum = getattr(signal, signame)

    proc = start_two_job_sweep(tmp_path, "cc", "-p", "epochs", "30")
    journal = exp_root / "cc" / "study.journal"

    def reporting_on_both() -> bool:
        assert proc.poll() is None, "the sweep ended before both workers started"
        if not journal.exists():
            return False
        trials = storages.load_study(str(journal), "cc").trials
        inside = {t.user_attrs["worker"]["index"] for t in trials if t.intermediate_values}
        return inside == {0, 1}

    # A reported epoch shows the trial inside its cell (its kernel warm, its loop running).
    wait_until(reporting_on_both, 120, 0.2, "both workers to report an epoch")
    kernels = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    stopped = time.monotonic()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert time.monotonic() - stopped < 20, "the sweep stopped without waiting for trials"
    trials = storages.load_study(str(journal), "cc").trials
    reasons = {}
    for index in (0, 1):  # the driver thread's trial and the other worker's: both said why
        last = [t for t in trials if t.user_attrs["worker"]["index"] == index][-1]
        record = read_json(Path(last.user_attrs["run_path"]) / "run.json")
        assert last.state == TrialState.FAIL and record["status"] == "failed"
        reasons[index] = (last.user_attrs["fail_reason"], record["reason"])
    # The signal stopped this thread's trial itself; the other thread's cell was interrupted
    # in its kernel (a KeyboardInterrupt there), and a terminating signal is named on it too.
    assert reasons[0] == (f"KeyboardInterrupt: {why}", why)
    other_trial, other_record = reasons[1]
    assert "raised KeyboardInterrupt" in other_trial and other_record == other_trial
    assert other_record.startswith("terminated by SIGTERM: ") == (signame == "SIGTERM")
    assert len(trials) < 6, "no trial started after Ctrl-C"
    # The interrupted cells were answered before their kernels shut down: no task was
    # left to find a dead kernel and print about it.
    said = err.decode(errors="replace")
    assert "Kernel died" not in said and "never retrieved" not in said, said
    wait_until(
        lambda: not any(psutil.pid_exists(pid) for pid in kernels),
        30,
        0.2,
        "every kernel to end with the sweep (a kernel outlived it)",
    )


# Ctrl-C before the kernels have warmed up: the trials waiting for them are cancelled and
# told FAIL at once; none is left RUNNING for a resume to reap.
def test_ctrl_c_while_kernels_warm(exp_root: Path, tmp_path: Path) -> None:
    import signal

    proc = start_two_job_sweep(tmp_path, "cw")
    journal = exp_root / "cw" / "study.journal"

    def asked_on_both() -> bool:
        assert proc.poll() is None, "the sweep ended before both workers asked"
        if not journal.exists():
            return False
        trials = storages.load_study(str(journal), "cw").trials
        return {t.user_attrs.get("worker", {}).get("index") for t in trials} == {0, 1}

    wait_until(asked_on_both, 60, 0.05, "both workers asked")
    proc.send_signal(signal.SIGINT)  # warming a kernel takes seconds: both still wait
    _, err = proc.communicate(timeout=60)
    said = err.decode(errors="replace")
    assert proc.returncode == 130, said
    trials = storages.load_study(str(journal), "cw").trials
    assert len(trials) == 2, "no trial started after Ctrl-C"
    for trial in trials:
        assert trial.state == TrialState.FAIL, (trial.number, trial.state)
        assert "KeyboardInterrupt" in trial.user_attrs["fail_reason"]
    assert "Traceback" not in said, said


# The trial runner's hooks: on_start gets the trial's real record folder the moment it
# exists, and a trial cancelled in its hanging cell is told FAIL with the cancel's reason.
@pytest.mark.slow
def test_trial_hooks_see_the_record_and_cancel(
    exp_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from mlkit.run import warm

    monkeypatch.setenv("MLKIT_WARM_IMPORTS", "mlkit,mlkit.record,mlkit.trial")  # no torch
    space = write_space(tmp_path, {"value": {"type": "float", "low": 0.0, "high": 2.0}})
    cfg = config.prepare(
        SCENARIOS / "hangs.ipynb", space, study="hooks", objectives=["value"], engine="warm"
    )
    study = config._create_or_resume(cfg)
    trial = driver.ask_trial(cfg, study)
    seen: list[tuple[int, Path, dict]] = []

    def on_start(number: int, run_dir: Path) -> None:
        seen.append((number, run_dir, read_json(run_dir / "run.json", {})))

    def cancelled() -> str | None:  # once the notebook's kernel is running it
        return "stopped by the test" if seen and warm.pool().busy else None

    started = time.monotonic()
    try:
        state = driver.run_trial(
            cfg, study, trial, cfg.dims(), on_start=on_start, cancelled=cancelled
        )
    finally:
        warm.pool().close()
    assert time.monotonic() - started < 120, "the 600 s cell was interrupted"
    assert state == "FAIL"
    (done,) = study.get_trials()
    run_dir = Path(done.user_attrs["run_path"])
    assert [(n, d) for n, d, _ in seen] == [(done.number, run_dir)]
    assert seen[0][2]["status"] == "running" and seen[0][2]["trial"] == done.number
    assert done.state == TrialState.FAIL
    assert done.user_attrs["fail_reason"] == "stopped by the test"
    assert done.user_attrs["cancelled"] is True
    record = read_json(run_dir / "run.json")
    assert record["status"] == "failed" and record["reason"] == "stopped by the test"


@pytest.mark.parametrize(
    "change",
    [{"password": "not-the-password-42"}, {"database": "mlkit_no_such_database"}],
    ids=["wrong password", "missing database"],
)
def test_storage_that_refuses_us_is_one_line_without_the_password(
    pg_url: str, change: dict[str, str]
) -> None:
    # A database URL that cannot connect is bad input (exit 2): one line naming host and
    # database, never the password, instead of SQLAlchemy's traceback.
    from sqlalchemy.engine import make_url

    parsed = make_url(pg_url).set(**change)
    url = parsed.render_as_string(hide_password=False)
    proc = run_cli("sweep", "best", "some-study", "--storage", url)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{parsed.host}:{parsed.port}/{parsed.database}" in lines[0]
    assert parsed.password not in proc.stdout + proc.stderr
    assert redact(url) in lines[0]


# `sweep best` gives only what the notebook declares: echo.ipynb has no `seed`, so the
# YAML runs as it is under `mlkit run -f`.
@pytest.mark.slow
def test_best_yaml_runs_a_notebook_without_seed(exp_root: Path, tmp_path: Path) -> None:
    notebook = str(SCENARIOS / "echo.ipynb")
    space = write_space(tmp_path, {"value": {"type": "float", "low": 0.0, "high": 2.0}})
    env = {"MLKIT_WARM_IMPORTS": "mlkit,mlkit.record"}  # no torch: the notebook needs none
    args = ("--space", space, "--trials", "2", "--objective", "value", "--study", "e", "-q")
    proc = run_cli("sweep", notebook, *args, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    best = run_cli("sweep", "best", "e")
    assert best.returncode == 0, best.stderr
    assert set(yaml.safe_load(best.stdout)) == {"value"}
    file = tmp_path / "best.yaml"
    file.write_text(best.stdout)
    rerun = run_cli("run", notebook, "-f", str(file), "-q")
    assert rerun.returncode == 0, rerun.stderr


# The end-of-sweep summary counts trials the reaper failed apart from failed notebooks.
def test_summary_counts_reaped_trials_apart() -> None:
    import time

    from mlkit.sweep import results

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="reaped")
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    study.tell(study.ask(), state=TrialState.FAIL)
    study.ask()  # a trial whose worker then goes silent
    assert driver.reap_stale(study, now=time.time() + driver.STALE_AFTER_S + 60) == [2]
    summary = results.summarize_study(study, "memory")
    assert (summary.n_complete, summary.n_failed, summary.n_reaped) == (1, 1, 1)
    assert "1 failed, 1 reaped" in summary.headline()
    assert summary.to_dict()["n_reaped"] == 1


# --- no driver draws a point the study already has --------------------------------

SMALL_SPACE = [
    {"name": "y", "type": "int", "low": 0, "high": 5},
    {"name": "kind", "type": "categorical", "choices": ["a", "b", "c"]},
]  # 18 points: random draws meet one another soon


def small_sweep(tmp_path: Path, sampler: str = "tpe") -> config.SweepConfig:
    return config.SweepConfig(
        notebook=NOTEBOOK,
        study="small",
        storage=str(tmp_path / "study.journal"),
        space=SMALL_SPACE,
        objectives=["loss"],
        directions=["minimize"],
        sampler=sampler,
        seed=3,
    )


def draw(cfg: config.SweepConfig, study: optuna.Study) -> str:
    """One trial asked as a worker asks it and told at once; its point, as text."""
    trial = driver.ask_trial(cfg, study)
    params = space.suggest(trial, cfg.dims())
    study.tell(trial, (params["y"] - 2) ** 2 + "abc".index(params["kind"]))
    return json.dumps(params, sort_keys=True)


# A driver resumed with the same --seed (a new process) draws no point the study has,
# not even the start-up points its killed predecessor drew.
@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_resumed_driver_draws_no_point_twice(tmp_path: Path, sampler: str) -> None:
    cfg = small_sweep(tmp_path, sampler)
    killed = driver.worker_study(cfg)
    points = [draw(cfg, killed) for _ in range(3)]  # within TPE's six start-up draws
    resumed = driver.worker_study(cfg)
    points += [draw(cfg, resumed) for _ in range(9)]
    assert len(set(points)) == len(points) == 12, points


# Two drivers on one journal with the default sampler, taking turns, draw ten points
# that are all different.
def test_two_drivers_on_one_study_draw_different_points(tmp_path: Path) -> None:
    cfg = small_sweep(tmp_path)
    drivers = [driver.worker_study(cfg), driver.worker_study(cfg)]
    points = [draw(cfg, study) for _ in range(5) for study in drivers]
    assert len(set(points)) == len(points) == 10, points


# One fresh driver with one job stays reproducible: the same --seed draws the same points,
# another --seed others.
def test_fresh_driver_draws_the_same_points_for_the_same_seed(tmp_path: Path) -> None:
    runs = []
    for name, seed in (("one", 3), ("two", 3), ("three", 4)):
        cfg = small_sweep(tmp_path / name)
        cfg.seed = seed
        study = driver.worker_study(cfg)
        runs.append([draw(cfg, study) for _ in range(8)])
    assert runs[0] == runs[1] != runs[2]


def sweep_pids(marker: str) -> list[int]:
    """Processes (zombies aside) whose environment holds ``marker``, this one excepted."""
    needle = marker.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def start_slow_sweep(tmp_path: Path, study: str, engine: str = "papermill") -> subprocess.Popen:
    """``mlkit sweep`` of many slow trials on 2 workers, in the background."""
    space = write_space(tmp_path, {"x": {"type": "float", "low": -4, "high": 4}})
    args = ["sweep", NOTEBOOK, "--space", space, "--trials", "40", "--jobs", "2"]
    args += ["--engine", engine, "--objective", "loss", "--study", study, "-q"]
    args += ["-p", "sleep", "0.5", "-p", "epochs", "60"]
    return subprocess.Popen(
        [sys.executable, "-m", "mlkit", *args],
        cwd=Path(NOTEBOOK).parents[2],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for_both_workers(proc: subprocess.Popen, journal: Path, study: str) -> None:
    """Until a trial of worker 0 (the driver) and one of worker 1 report an epoch."""

    def reporting_on_both() -> bool:
        assert proc.poll() is None, "the sweep ended before both workers started"
        if not journal.exists():
            return False
        trials = storages.load_study(str(journal), study).trials
        inside = {t.user_attrs["worker"]["index"] for t in trials if t.intermediate_values}
        return inside == {0, 1}

    wait_until(reporting_on_both, 120, 0.2, "both workers to report an epoch")


# kill -9 of a sweep's driver ends the whole sweep within seconds: a worker process stops
# asking for trials, and no kernel of any worker (process or thread) is left running.
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("engine", ["papermill", "warm"])
def test_sigkilled_driver_leaves_no_process(exp_root: Path, tmp_path: Path, engine: str) -> None:
    proc = start_slow_sweep(tmp_path, "orphans", engine)
    journal = exp_root / "orphans" / "study.journal"
    marker = f"MLKIT_EXPERIMENTS={exp_root}\0"  # in the environment of all the sweep's
    wait_for_both_workers(proc, journal, "orphans")
    assert len(sweep_pids(marker)) >= 3, "the driver and a kernel per worker"
    proc.kill()
    proc.wait()  # not communicate(): a worker left behind would hold its stderr open
    proc.stderr.close()
    wait_until(
        lambda: not sweep_pids(marker),
        10,
        0.2,
        lambda: f"the sweep's processes to end with its driver; left: {sweep_pids(marker)}",
    )


# SIGTERM ends a papermill sweep as Ctrl-C does: the trials running in the driver and in
# its worker process are told FAIL naming the signal, and the command exits 128 + 15.
@pytest.mark.slow
def test_sigterm_fails_the_running_trials_and_names_it(exp_root: Path, tmp_path: Path) -> None:
    import signal

    proc = start_slow_sweep(tmp_path, "term")
    journal = exp_root / "term" / "study.journal"
    wait_for_both_workers(proc, journal, "term")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    said = err.decode(errors="replace")
    assert proc.returncode == 128 + signal.SIGTERM, said
    assert "terminated by SIGTERM" in said
    trials = storages.load_study(str(journal), "term").trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    for index in (0, 1):
        last = [t for t in trials if t.user_attrs["worker"]["index"] == index][-1]
        assert last.state == TrialState.FAIL, (index, last.state)
        assert "SIGTERM" in last.user_attrs["fail_reason"], last.user_attrs
    assert "Traceback" not in said, said


LIFETIME_CHILD = """
import os, sys, time
from mlkit.run import lifetime
if sys.argv[2] == "poll":  # as where prctl is not there
    lifetime._set_parent_death_signal = lambda signum: False
lifetime.die_with_parent(int(sys.argv[1]))
print(os.getpid(), flush=True)
time.sleep(60)
"""

LIFETIME_PARENT = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2]])
time.sleep(60)
"""


# A process that called die_with_parent ends when its parent is killed with SIGKILL, with
# Linux's parent-death signal and with the polling fallback alike.
@pytest.mark.parametrize("how", ["prctl", "poll"])
def test_die_with_parent(how: str) -> None:
    import psutil

    parent = subprocess.Popen(
        [sys.executable, "-c", LIFETIME_PARENT, LIFETIME_CHILD, how],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        child = int(parent.stdout.readline())
        assert psutil.pid_exists(child)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()

    def gone() -> bool:
        try:
            return psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(gone, 5, 0.05, "the child to end with its parent")
