"""The warm pool's plan: successors warm before they are needed, failures get replacements,
spares stay bounded; each decision in the pool's event log."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mlkit.run import runner, warm
from mlkit.sweep import config, driver
from tests.helpers import SCENARIOS

LIGHT_IMPORTS = "mlkit,mlkit.record,mlkit.trial"  # no torch: these notebooks need none


def events_since(mark: int) -> list[warm.Event]:
    return list(warm.pool().events)[mark:]


def warm_run(name: str, **params):
    return runner.run(SCENARIOS / f"{name}.ipynb", params, progress=False, engine="warm")


@pytest.fixture(scope="module")
def short_lived_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[warm.Event]]:
    """The pool's events over a 1-job sweep of 8 trials of about 2 s, kernels retired
    after 3 runs: three kernels in turn."""
    tmp = tmp_path_factory.mktemp("short_lived")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLKIT_EXPERIMENTS", str(tmp / "experiments"))
        mp.setenv("WANDB_MODE", "disabled")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("MLKIT_WARM_MAX_RUNS", "3")
        mp.setenv("MLKIT_WARM_IMPORTS", LIGHT_IMPORTS)
        warm.pool().close()  # a first kernel warmed under this environment
        space = tmp / "space.yaml"
        space.write_text(yaml.safe_dump({"x": {"type": "float", "low": -4.0, "high": 4.0}}))
        cfg = config.prepare(
            SCENARIOS / "objective.ipynb",
            space,
            study="short_lived",
            n_trials=8,
            objectives=["loss"],
            pruner="none",
            fixed={"epochs": 2, "sleep": 1.0},
        )
        mark = len(warm.pool().events)
        summary = driver.run(cfg, progress=False)
        assert summary.n_complete == 8, summary
        yield events_since(mark)
        warm.pool().close()


# With kernels retired every 3 runs, no run after the first waits for a warm-up: each
# successor was warm by the time its predecessor retired.
@pytest.mark.slow
def test_no_acquire_waits_after_the_first(short_lived_sweep: list[warm.Event]) -> None:
    acquires = [e for e in short_lived_sweep if e.kind in ("acquired", "reused")]
    assert len(acquires) == 8
    assert [e for e in acquires[1:] if e.waited] == [], short_lived_sweep
    retired = [e for e in short_lived_sweep if e.kind == "retired"]
    assert [e.reason for e in retired] == ["reached 3 runs", "reached 3 runs"]


# A planned retirement is foreseen: the successor starts while the old kernel still has
# runs to do, and takes the run after its predecessor's last.
@pytest.mark.slow
def test_successor_starts_before_its_predecessor_retires(
    short_lived_sweep: list[warm.Event],
) -> None:
    index = {(e.kind, e.kernel, e.reason): i for i, e in enumerate(short_lived_sweep)}
    first = next(e.kernel for e in short_lived_sweep if e.kind == "acquired")
    starts = [e for e in short_lived_sweep if e.kind == "started"]
    successors = [e for e in starts if e.reason.startswith("successor of ")]
    assert successors, starts
    for succ in successors[:2]:
        old = int(succ.reason.removeprefix("successor of "))
        started = index[("started", succ.kernel, succ.reason)]
        retired = index[("retired", old, "reached 3 runs")]
        assert started < retired, f"kernel {succ.kernel} started after kernel {old} retired"
        last_run = index[("reused", old, "run 3")]
        assert started < last_run, "it had at least the old kernel's last run to warm up"
        took = index[("acquired", succ.kernel, "run 1")]
        assert retired < took
    assert successors[0].reason == f"successor of {first}"


# Runs shorter than a warm-up: the kernel in service is kept past its count while its
# successor warms (said once in the log), so no run waits; it retires once that one is warm.
@pytest.mark.slow
def test_kernel_is_kept_while_its_successor_warms(
    exp_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "slow_warmup.py").write_text("import time\n\ntime.sleep(0.5)\n")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setenv("MLKIT_WARM_IMPORTS", f"{LIGHT_IMPORTS},slow_warmup")
    monkeypatch.setenv("MLKIT_WARM_MAX_RUNS", "5")  # 5 runs of echo: a quarter of a warm-up
    warm.pool().close()
    mark = len(warm.pool().events)
    for _ in range(40):
        assert warm_run("echo")["status"] == "completed"
    events = events_since(mark)
    acquires = [e for e in events if e.kind in ("acquired", "reused")]
    assert len(acquires) == 40
    assert [e for e in acquires[1:] if e.waited] == [], events
    kept = [e for e in events if e.kind == "kept"]
    assert kept and kept[0].reason == "5 runs, its successor warming", events
    assert len({e.kernel for e in kept}) == len(kept)  # once per kernel
    # The kept kernel served past its count, then retired. (An earlier kernel may have
    # retired at its count already, when its successor happened to be warm in time.)
    retired = next(e for e in events if e.kind == "retired" and e.kernel == kept[0].kernel)
    assert int(retired.reason.split()[1]) > 5, retired
    warm.pool().close()


# A failed run retires its kernel; with no standby warming, the replacement starts at once
# and the log says whose replacement it is and why the old one went.
@pytest.mark.slow
def test_failed_run_replacement_is_logged(
    exp_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLKIT_WARM_IMPORTS", LIGHT_IMPORTS)
    monkeypatch.setenv("MLKIT_WARM_MAX_RUNS", "1000")  # no successor foreseen
    warm.pool().close()
    mark = len(warm.pool().events)
    with caplog.at_level(logging.INFO, logger="mlkit.warm"):
        assert warm_run("echo")["status"] == "completed"
        assert warm_run("raises")["status"] == "failed"
    events = events_since(mark)
    (failed,) = [e for e in events if e.kind == "retired"]
    assert failed.reason == "the run failed"
    started = [e for e in events if e.kind == "started"]
    assert [e.reason for e in started] == ["first", f"replacement of {failed.kernel}"]
    assert events.index(failed) < events.index(started[1])
    lines = [r.getMessage() for r in caplog.records if r.name == "mlkit.warm"]
    assert any(f"kernel {failed.kernel} retired: the run failed" in line for line in lines)
    assert any(f"started: replacement of {failed.kernel}" in line for line in lines), lines
    warm.pool().close()


# Runs that keep failing keep one spare warming beside the next kernel, never more: each
# failure starts at most one kernel besides the one standing spare, and the thread's lane
# holds at most the next kernel and a spare. With no core to spare, there is no spare.
@pytest.mark.slow
@pytest.mark.parametrize("cores", [8, 1])
def test_spares_are_bounded(exp_root: Path, monkeypatch: pytest.MonkeyPatch, cores: int) -> None:
    monkeypatch.setenv("MLKIT_WARM_IMPORTS", LIGHT_IMPORTS)
    monkeypatch.setenv("MLKIT_WARM_MAX_RUNS", "1000")
    monkeypatch.setattr(warm, "_cores", lambda: cores)
    warm.pool().close()
    mark = len(warm.pool().events)
    for _ in range(5):
        assert warm_run("raises")["status"] == "failed"
        assert len(warm.pool().idle_for("python3")) <= (2 if cores > 1 else 1)
    events = events_since(mark)
    started = [e.reason for e in events if e.kind == "started"]
    spares = started.count("spare")
    assert len(started) <= 1 + 5 + 1, started  # the first, one per failure, one spare
    if cores > 1:
        assert spares >= 1, started  # from the second failure on
    else:
        assert spares == 0, started
    warm.pool().close()
