"""Runs through the real papermill, kernel and record: success is proven, never assumed."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlkit import cli
from mlkit._io import read_json
from mlkit.errors import RecordWriteError
from mlkit.run import notebook as nbexec
from mlkit.run import runner
from tests.helpers import ROOT, SCENARIOS, all_files, run_cli, wait_until


def scenario(name: str) -> str:
    return str(SCENARIOS / f"{name}.ipynb")


def only_run_dir(root: Path) -> Path:
    runs = [p for p in root.glob("*/runs/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


# The happy path writes every file of the record and judges the run completed.
def test_echo_run_writes_the_record(exp_root: Path) -> None:
    info = runner.run(scenario("echo"), {"value": 2.5}, progress=False)
    assert info["status"] == "completed", info.get("reason")
    run_dir = Path(info["path"])
    for name in ("run.json", "params.json", "lineage.json", "result.json", "output.ipynb"):
        assert (run_dir / name).exists(), name
    assert read_json(run_dir / "result.json") == {"value": 2.5, "text": "plain"}
    params = read_json(run_dir / "params.json")
    assert params["parameters"] == {"value": 2.5, "text": "plain"}
    lineage = read_json(run_dir / "lineage.json")
    assert lineage["notebook_sha256"] and lineage["packages_sha256"] and "git" in lineage
    assert not list(run_dir.glob(".*.tmp")), "atomic writes leave no temp files"


# A cell that raises: failed, naming the cell and the error, with the executed notebook kept.
def test_raising_cell_is_failed_and_kept(exp_root: Path) -> None:
    info = runner.run(scenario("raises"), {"value": 7}, progress=False)
    assert info["status"] == "failed"
    assert "cell 3 (In [4]) `raise ValueError" in info["reason"]
    assert "raised ValueError: bad value 7.0" in info["reason"]
    assert info["error"]["ename"] == "ValueError"
    nb = json.loads((Path(info["path"]) / "output.ipynb").read_text())
    assert any(o.get("ename") == "ValueError" for c in nb["cells"] for o in c.get("outputs", []))
    assert info["result"] is None


# Cases papermill alone calls complete, or cannot judge: each gets its own reason.
@pytest.mark.parametrize(
    ("name", "timeout", "reason"),
    [
        ("exits_early", None, "exited early with sys.exit(0) in cell 2 (In [3]) `import sys`"),
        ("no_result", None, "finished without recording a result"),
        ("nan_result", None, "non-finite result: value"),
        ("kernel_dies", None, "kernel died while running cell 2 `import os`"),
        pytest.param(
            "hangs", 3, "cell 2 `import time` timed out after 3 s", marks=pytest.mark.slow
        ),
    ],
)
def test_failure_reasons(exp_root: Path, name: str, timeout: float | None, reason: str) -> None:
    info = runner.run(scenario(name), {}, progress=False, cell_timeout=timeout)
    assert info["status"] == "failed"
    assert reason in info["reason"]
    assert (Path(info["path"]) / "output.ipynb").exists()


# A papermill notebook that never imports mlkit records its result with scrapbook.
@pytest.mark.slow
def test_scrapbook_results_are_read(exp_root: Path) -> None:
    info = runner.run(scenario("scrapbook_glue"), {"value": 4}, progress=False)
    assert info["status"] == "completed", info.get("reason")
    assert info["result"] == {"value": 8.0, "text": "plain"}


# Strings with quotes, backslashes and newlines arrive in the kernel unchanged (via the CLI).
def test_awkward_strings_arrive_unchanged(exp_root: Path) -> None:
    text = 'it\'s "quoted" \\back\\slash\nnew line\t{braces} $HOME'
    proc = run_cli("run", scenario("echo"), "-p", "text", text, "-q")
    assert proc.returncode == 0, proc.stderr
    result = read_json(only_run_dir(exp_root) / "result.json")
    assert result["text"] == text


# Bad input: a clear message naming the problem and the fix, exit 2, nothing written.
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "epochs", "ten"], "Parameter 'epochs' of templates/classify.ipynb must be an int"),
        (["-p", "lr", "-1"], "'lr' of templates/classify.ipynb must be a float above 0"),
        (["-p", "epoch", "3"], "Unknown parameter 'epoch'"),
        (["-p", "dataset", "mnist"], "one of digits, digits_flat"),
        (["-p", "model", "resnet"], "one of linear, mlp, cnn"),
        (["-p", "learning-rate", "3"], "not a Python identifier"),
    ],
)
def test_bad_parameters_exit_2_and_write_nothing(
    exp_root: Path, args: list[str], message: str
) -> None:
    proc = run_cli("run", "templates/classify.ipynb", *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert (
        "Pass -p" in proc.stderr
        or "Valid parameters" in proc.stderr
        or "Use letters" in (proc.stderr)
    )
    assert all_files(exp_root) == []


# Notebook-level bad input: missing file, no parameters cell.
@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("templates/nope.ipynb", "does not exist"),
        (scenario("no_parameters"), "no cell tagged 'parameters'"),
    ],
)
def test_bad_notebooks_exit_2_and_write_nothing(exp_root: Path, path: str, message: str) -> None:
    proc = run_cli("run", path, "-p", "value", "1")
    assert proc.returncode == 2
    assert message in proc.stderr
    assert all_files(exp_root) == []


# A failed run exits 1 and says why; the record stays.
def test_failed_run_exits_1(exp_root: Path) -> None:
    proc = run_cli("run", scenario("raises"), "-q")
    assert proc.returncode == 1
    assert "failed" in proc.stdout and "ValueError" in proc.stdout
    assert (only_run_dir(exp_root) / "output.ipynb").exists()


# A W&B key in the environment never reaches a file under experiments/.
def test_wandb_key_never_written(exp_root: Path) -> None:
    canary = "canary-0123456789abcdef0123456789abcdef01234567"
    proc = run_cli(
        "run", scenario("echo"), "-q", env={"WANDB_API_KEY": canary, "WANDB_MODE": "offline"}
    )
    assert proc.returncode == 0, proc.stderr
    files = all_files(exp_root)
    assert any(p.suffix == ".wandb" for p in files), "the W&B offline run was written"
    for path in files:
        assert canary.encode() not in path.read_bytes(), path


# W&B takes the git commit from the run's lineage instead of running git itself, and a
# password in the remote's URL is never recorded.
def test_wandb_git_comes_from_lineage(tmp_path: Path) -> None:
    from mlkit import lineage, record
    from mlkit._io import write_json

    commit = "0123456789abcdef0123456789abcdef01234567"  # no real repository has it
    git = {"commit": commit, "root": str(tmp_path), "remote_url": None}
    write_json(tmp_path / "lineage.json", {"git": git})
    run = record.Run(tmp_path, "git-check", "checks", {"x": 1}, tracking="offline")
    run.finish({"x": 1})
    wandb_file = next(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(wandb_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert next(r["run"] for r in records if r["type"] == "run")["git"]["commit"] == commit
    url = "https://someone:s3cret@git.example.com/team/repo.git"
    assert lineage._without_password(url) == "https://someone@git.example.com/team/repo.git"
    assert lineage.wandb_git_settings({"commit": None, "note": "not a git checkout"}) == {}


# The lineage names the repository root next to the commit.
def test_lineage_names_the_repository(exp_root: Path) -> None:
    info = runner.run(scenario("echo"), {}, progress=False)
    git = read_json(Path(info["path"]) / "lineage.json")["git"]
    if not git["commit"]:
        pytest.skip("not a git checkout")
    assert Path(git["root"], ".git").exists()


# An offline run started by hand (no WANDB_MODE anywhere, as in JupyterLab) starts none of
# W&B's telemetry exporters: offline sends nothing.
def test_offline_run_starts_no_telemetry(tmp_path: Path) -> None:
    import os

    code = (
        "import threading, time\n"
        "from mlkit import record\n"
        "run = record.start_run({'x': 1}, experiment='quiet', tracking='offline')\n"
        "run.log({'epoch': 1, 'val/loss': 0.5}, step=1)\n"
        "time.sleep(0.3)\n"  # room for an exporter thread to start, were one started
        "print([t.name for t in threading.enumerate()])\n"
        "run.finish({'x': 1})\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["MLKIT_EXPERIMENTS"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "MainThread" in proc.stdout and "Otel" not in proc.stdout, proc.stdout


def no_space(path: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


# A write of the executed notebook that fails half-way (here the file-size limit, as a full
# disk would) leaves the previous notebook whole, and says which file it could not write.
def test_failed_notebook_write_keeps_the_previous_one(tmp_path: Path) -> None:
    out = tmp_path / "output.ipynb"
    code = f"""
import json, resource, signal, nbformat
from papermill.iorw import write_ipynb
from mlkit.run import notebook
notebook.atomic_local_writes()
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
write_ipynb(nb, {str(out)!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
nb.cells.append(nbformat.v4.new_code_cell("y = 2  # " + "x" * 100_000))
try:
    write_ipynb(nb, {str(out)!r})
except Exception as exc:
    print(type(exc).__name__, exc)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert ["".join(c["source"]) for c in json.loads(out.read_text())["cells"]] == ["x = 1"]
    assert proc.stdout.startswith(f"RecordWriteError File too large while writing {out}.")
    assert [p.name for p in tmp_path.iterdir()] == ["output.ipynb"], "no temp file is left"


# A full disk while the notebook runs: a one-line error naming the file, the run marked failed
# with that reason, and the executed notebook on disk still the last one written whole.
def test_full_disk_mid_run_fails_the_run_clearly(
    exp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = nbexec.write_text
    writes: list[str] = []

    def fills_up(path: str, text: str) -> None:
        writes.append(path)
        if len(writes) > 1:
            raise no_space(path)
        real(path, text)

    monkeypatch.setattr(nbexec, "write_text", fills_up)
    with pytest.raises(RecordWriteError) as caught:
        runner.run(scenario("echo"), {"value": 2.5}, progress=False)
    run_dir = only_run_dir(exp_root)
    said = f"No space left on device while writing {run_dir / 'output.ipynb'}."
    assert str(caught.value).startswith(said) and "\n" not in str(caught.value)
    info = read_json(run_dir / "run.json")
    assert info["status"] == "failed" and info["reason"].startswith(said)
    assert json.loads((run_dir / "output.ipynb").read_text())["cells"]


# A record that cannot be started exits 1 with one line naming the file, and leaves a run.json
# marked failed, or, when even that cannot be written, no run folder at all.
@pytest.mark.parametrize("failing", ["params.json", "every file"])
def test_unwritable_record_exits_1_in_one_line(
    exp_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    failing: str,
) -> None:
    real = runner.write_json

    def full(path: Path, data: object) -> None:
        if failing == "every file" or path.name == failing:
            raise no_space(path)
        real(path, data)

    monkeypatch.setattr(runner, "write_json", full)
    assert cli.main(["run", scenario("echo"), "-q"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "No space left on device while writing " in err and "Traceback" not in err
    runs = [p for p in exp_root.glob("*/runs/*")]
    if failing == "every file":
        assert runs == []
        assert "run.json" in err
    else:
        assert f"{runs[0] / 'params.json'}." in err
        info = read_json(runs[0] / "run.json")
        assert info["status"] == "failed" and "params.json" in info["reason"]


# A read-only experiments folder: one line, exit 1, nothing made.
def test_read_only_experiments_folder(
    exp_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def read_only(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert cli.main(["run", scenario("echo"), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"mlkit run: error: Read-only file system while writing {exp_root / 'echo' / 'runs'}. "
        "Free space there or make it writable, or keep runs elsewhere with "
        "MLKIT_EXPERIMENTS=<folder>."
    )
    assert not exp_root.exists()


# `kill` (SIGTERM) or a closed terminal (SIGHUP) ends `mlkit run` as Ctrl-C does: the cell
# is stopped and the record says failed, naming the signal; the exit is 128 + the signal.
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_terminated_run_says_so(exp_root: Path, signum: signal.Signals) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlkit", "run", scenario("hangs"), "-q"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def sleeping() -> bool:
        assert proc.poll() is None, proc.communicate()
        runs = list(exp_root.glob("*/runs/*/output.ipynb"))
        if not runs:
            return False
        try:
            cell = json.loads(runs[0].read_text())["cells"][2]
        except ValueError:
            return False
        return cell["metadata"].get("papermill", {}).get("status") == "running"

    try:
        wait_until(sleeping, 120, 0.1, "the kernel to be inside time.sleep")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    assert f"terminated by {signum.name}" in err and "Traceback" not in err
    info = read_json(only_run_dir(exp_root) / "run.json")
    assert info["status"] == "failed"
    assert info["reason"] == f"terminated by {signum.name}"


# `mlkit reproduce` stopped with SIGTERM ends as `mlkit run` does: the reproduction's record
# says failed, naming the signal, the original is untouched, and the exit is 128 + 15.
@pytest.mark.slow
def test_terminated_reproduce_says_so(exp_root: Path) -> None:
    first = run_cli("run", scenario("sleeps_if_asked"), "-q")
    assert first.returncode == 0, first.stderr
    original = only_run_dir(exp_root)
    before = (original / "run.json").read_text()
    env = {**os.environ, "COLUMNS": "200", "MLKIT_TEST_SLEEP": "600"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlkit", "reproduce", original.name, "-q"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def reproduction() -> Path | None:
        assert proc.poll() is None, proc.communicate()
        runs = [p for p in exp_root.glob("*/runs/*") if p != original]
        return runs[0] if runs and (runs[0] / "output.ipynb").exists() else None

    try:
        again = wait_until(reproduction, 120, 0.1, "the reproduction to start")
        time.sleep(1)  # inside the sleeping cell
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "terminated by SIGTERM" in err and "Traceback" not in err
    info = read_json(again / "run.json")
    assert info["status"] == "failed" and info["reason"] == "terminated by SIGTERM"
    assert (original / "run.json").read_text() == before
