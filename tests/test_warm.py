"""Warm kernels: reused, isolated between runs, and replaced when they die."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mlkit.run import runner, warm
from tests.helpers import ROOT, SCENARIOS, wait_until


def warm_run(name: str, **params):
    return runner.run(SCENARIOS / f"{name}.ipynb", params, progress=False, engine="warm")


def idle_kernel() -> warm.WarmKernel:
    """This thread's kernel in service (the next run takes it), not a standby beside it."""
    return min(warm.pool().idle_for("python3"), key=lambda k: k.number)


# A run that pollutes globals, RNG, dtype, env, cwd, sys.path and a user module leaves
# nothing for the next run in the same kernel; both give the same result for the seed.
def test_second_run_sees_none_of_the_first(exp_root: Path) -> None:
    first = warm_run("pollutes", seed=3)
    kernel = idle_kernel()
    second = warm_run("pollutes", seed=3)
    assert idle_kernel() is kernel and kernel.runs >= 2, "the same kernel was reused"
    assert first["status"] == second["status"] == "completed", second.get("reason")
    clean = {
        "global_marker": False,
        "env": "",
        "cwd_polluted": False,
        "sys_path_polluted": False,
        "dtype": "torch.float32",
        "grad_enabled": True,
        "module_counter": 0,
    }
    for result in (first["result"], second["result"]):
        assert {k: result[k] for k in clean} == clean
    assert second["result"]["value"] == first["result"]["value"]
    assert second["result"]["unseeded_draw"] == first["result"]["unseeded_draw"]
    assert os.environ.get("MLKIT_POLLUTED") is None, "the driver's environment is untouched"


# A kernel killed while idle in the pool is replaced; the next run succeeds.
@pytest.mark.slow
def test_kernel_killed_while_idle(exp_root: Path) -> None:
    assert warm_run("echo")["status"] == "completed"
    kernel = idle_kernel()
    os.kill(kernel.km.provisioner.process.pid, signal.SIGKILL)
    kernel.km.provisioner.process.wait()
    info = warm_run("echo", value=2.0)
    assert info["status"] == "completed", info.get("reason")
    assert idle_kernel() is not kernel
    assert "died while idle" in warm.pool().retired


# Code run in an idle kernel while its clearing is still under way (a look inside it,
# as the tests do) does not lose the clearing's reply: the next run starts at once.
def test_code_between_runs_keeps_the_kernel_usable(exp_root: Path) -> None:
    assert warm_run("echo")["status"] == "completed"
    kernel = idle_kernel()
    runs = kernel.runs
    assert kernel._scrub_msg is not None, "the clearing was sent when the run ended"
    assert kernel.run_code("", one="1")["one"]["data"]["text/plain"] == "1"
    info = warm_run("echo", value=2.0)
    assert info["status"] == "completed", info.get("reason")
    assert kernel.runs == runs + 1 and idle_kernel() is kernel


# A kernel killed mid-run: that run fails with the reason, the pool recovers.
@pytest.mark.slow
def test_kernel_killed_mid_run(exp_root: Path) -> None:
    dead = warm_run("kernel_dies")
    assert dead["status"] == "failed" and "kernel died" in dead["reason"]
    info = warm_run("echo", value=3.0)
    assert info["status"] == "completed", info.get("reason")
    assert info["result"]["value"] == 3.0


# An interrupt the kernel never answers (lost in ipykernel's own code, or ignored) does not
# hang the run: KILL_AFTER_S later its kernel is killed, the run fails, the next succeeds.
@pytest.mark.slow
def test_run_that_outlives_its_interrupt_is_killed(exp_root: Path) -> None:
    import time
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)
    future = pool.submit(warm_run, "ignores_interrupt")
    try:
        wait_until(
            lambda: warm.pool().busy and _in_cell(exp_root),
            120,
            0.1,
            "the run to reach its hanging cell",
        )
        interrupted = time.monotonic()
        assert warm.pool().interrupt() == 1
        info = future.result(timeout=60)
        took = time.monotonic() - interrupted
        assert info["status"] == "failed" and "kernel died" in info["reason"], info["reason"]
        assert warm.KILL_AFTER_S <= took < warm.KILL_AFTER_S + 10
        assert pool.submit(warm_run, "echo").result(timeout=120)["status"] == "completed"
    finally:
        for kernel in list(warm.pool().busy):  # failed: do not leave a 600 s cell behind
            kernel.kill()
        pool.shutdown()


def _in_cell(root: Path) -> bool:
    """The run's executed notebook shows the cell that ignores interrupts running."""
    import json

    for out in root.glob("*/runs/*/output.ipynb"):
        try:
            cells = json.loads(out.read_text())["cells"]
        except ValueError:  # caught mid-write
            continue
        for cell in cells:
            status = cell["metadata"].get("papermill", {}).get("status")
            if "SIG_IGN" in "".join(cell["source"]) and status == "running":
                return True
    return False


# A failed run retires its kernel: the next run gets a fresh one.
def test_failed_run_retires_the_kernel(exp_root: Path) -> None:
    warm_run("echo")
    before = idle_kernel()
    assert warm_run("raises")["status"] == "failed"
    assert idle_kernel() is not before


# A run that leaves a thread running retires its kernel (the thread would go on into the
# next run). The check rides on the epilogue's request: no request of its own.
@pytest.mark.slow
def test_thread_left_running_retires_the_kernel(exp_root: Path, monkeypatch) -> None:
    asked: list[str] = []
    run_code = warm.WarmKernel.run_code

    def spy(self, code: str, timeout: float = 60, **expressions: str):
        asked.extend(expressions.values())
        return run_code(self, code, timeout, **expressions)

    monkeypatch.setattr(warm.WarmKernel, "run_code", spy)
    info = warm_run("leaves_thread")
    assert info["status"] == "completed", info.get("reason")
    assert warm.pool().retired[-1] == "threads still running: left-behind"
    assert not [e for e in asked if "leftovers()" in e], "asked in a request of its own"
    assert warm_run("echo")["status"] == "completed"


# The executed notebook is written on a clock, not at every cell: a cell still running
# after a second is on disk as running, and the finished run has every cell.
@pytest.mark.slow
def test_long_cell_is_on_disk_while_it_runs(exp_root: Path) -> None:
    import json
    import threading

    done: list[dict] = []
    runner_thread = threading.Thread(
        target=lambda: done.append(warm_run("objective", sleep=0.5, epochs=8)), daemon=True
    )
    runner_thread.start()

    def sleeping_cell_on_disk() -> bool:
        assert runner_thread.is_alive(), "the run ended before its sleeping cell was seen"
        for output in exp_root.glob("*/runs/*/output.ipynb"):
            try:
                cells = json.loads(output.read_text())["cells"]
            except ValueError:  # papermill writes in place: caught mid-write
                continue
            return any(
                c["metadata"].get("papermill", {}).get("status") == "running"
                and "time.sleep" in "".join(c["source"])
                for c in cells
            )
        return False

    seen_running = wait_until(sleeping_cell_on_disk, 120, 0.1, "the sleeping cell on disk")
    runner_thread.join(timeout=120)
    assert seen_running, "the sleeping cell was on disk as running before it ended"
    (info,) = done
    assert info["status"] == "completed", info.get("reason")
    cells = json.loads((Path(info["path"]) / "output.ipynb").read_text())["cells"]
    assert all(
        c["metadata"]["papermill"]["status"] == "completed"
        for c in cells
        if c["cell_type"] == "code"
    )


# The engine is a papermill engine: plain papermill uses it by name.
@pytest.mark.slow
def test_papermill_cli_uses_the_warm_engine(tmp_path: Path) -> None:
    out = tmp_path / "out.ipynb"
    env = dict(os.environ, MLKIT_EXPERIMENTS=str(tmp_path / "exp"), WANDB_MODE="disabled")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            "--engine",
            "mlkit-warm",
            str(SCENARIOS / "echo.ipynb"),
            str(out),
            "-p",
            "value",
            "5",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"value": 5' in out.read_text()


# With W&B offline by default (no WANDB_MODE set), warm runs of the template keep reusing
# one kernel, and W&B starts no telemetry exporters in it: offline sends nothing. A kernel
# that ran W&B in another mode is not reused: after a "disabled" run, W&B starts its
# exporters at the next run's first log, whatever the mode.
@pytest.mark.slow
def test_offline_default_reuses_the_kernel(exp_root: Path, monkeypatch) -> None:
    assert warm_run("echo")["status"] == "completed"  # WANDB_MODE=disabled (exp_root)
    disabled = idle_kernel()
    monkeypatch.delenv("WANDB_MODE", raising=False)
    tiny = {"epochs": 2, "hidden": "32", "batch_size": 256}
    template = ROOT / "templates" / "classify.ipynb"
    kernels = []
    for _ in range(3):
        info = runner.run(template, tiny, progress=False, engine="warm")
        assert info["status"] == "completed", info.get("reason")
        assert (info.get("wandb") or {}).get("mode") == "offline"
        kernels.append(idle_kernel())
    assert kernels[0] is kernels[1] is kernels[2], warm.pool().retired
    assert kernels[0] is not disabled and not disabled.alive()
    assert "W&B mode disabled, the run's offline" in warm.pool().retired
    names = kernels[0].run_code("", names="[t.name for t in __import__('threading').enumerate()]")[
        "names"
    ]["data"]["text/plain"]
    assert "Otel" not in names, names


# W&B reads its WANDB_* environment once per process and ignores later changes: a run
# whose WANDB_* variables differ from the last run's gets W&B set up again, in the same
# kernel, and sees its own.
@pytest.mark.slow
def test_wandb_sees_each_runs_environment(exp_root: Path, monkeypatch) -> None:
    notes = []
    for value in ("first", "second"):
        monkeypatch.setenv("WANDB_NOTES", value)
        info = warm_run("wandb_env")
        assert info["status"] == "completed", info.get("reason")
        notes.append(info["result"]["notes"])
        if value == "first":
            kernel = idle_kernel()
            runs = kernel.runs
    assert kernel.runs == runs + 1, "both runs used the same kernel"
    assert notes == ["first", "second"]


# W&B's service starts while a kernel warms, beside the imports, with the W&B mode runs
# get by default: the first run uses it as it is, not set up a second time.
@pytest.mark.slow
def test_wandb_service_starts_while_warming(exp_root: Path, monkeypatch) -> None:
    import psutil

    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline by default
    # A W&B service this process started (registry tests log offline) is named by
    # WANDB_SERVICE, and a kernel inheriting it would share it instead of starting one.
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    the_pool = warm.pool()
    the_pool.close()  # a kernel started under this environment, not an earlier test's
    the_pool.prewarm("python3")
    kernel = idle_kernel()
    kernel.ensure_warm()

    def services() -> list[int]:
        process = psutil.Process(kernel.km.provisioner.process.pid)
        return [c.pid for c in process.children(recursive=True) if "wandb-core" in c.name()]

    started = services()
    assert len(started) == 1, "the warm-up started W&B's service"
    tiny = {"epochs": 2, "hidden": "32", "batch_size": 256}
    info = runner.run(ROOT / "templates" / "classify.ipynb", tiny, progress=False, engine="warm")
    assert info["status"] == "completed", info.get("reason")
    assert (info.get("wandb") or {}).get("mode") == "offline"
    assert idle_kernel() is kernel
    assert services() == started, "the run used the service the warm-up started"
