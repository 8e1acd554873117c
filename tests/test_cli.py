"""The command line: instant start, readable tables, records a person can inspect."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlkit import cli
from mlkit.cli import _common, build_parser, runs, sweep
from mlkit.errors import ServiceUnavailableError, UnsafeModelError
from mlkit.run import runner
from tests.helpers import ROOT, SCENARIOS, fake_run, run_cli

HEAVY = ("torch", "wandb", "papermill", "ipywidgets", "optuna", "nbclient", "IPython")


# `import mlkit` and `mlkit --help` (of the groups too) stay instant: nothing heavy is imported.
def test_import_and_help_import_nothing_heavy() -> None:
    code = (
        "import sys, mlkit, mlkit.cli, mlkit.run.params, mlkit.record\n"
        "for argv in (['--help'], ['sweep', '--help'], ['sweep', 'report', '--help']):\n"
        "    try:\n        mlkit.cli.main(argv)\n    except SystemExit:\n        pass\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('HEAVY=' + ','.join(heavy))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "usage: mlkit" in proc.stdout and "usage: mlkit sweep report" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY="


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(sweep.expand_shorthand(list(argv)))


# `mlkit sweep NOTEBOOK ...` (flags before or after the notebook) is `mlkit sweep run NOTEBOOK`.
def test_sweep_shorthand_is_sweep_run() -> None:
    spelled = ("--space", "s.yaml", "--study", "demo", "--trials", "30", "--jobs", "2")
    longhand = parse("sweep", "run", "templates/classify.ipynb", *spelled)
    assert longhand.func is sweep.cmd_sweep and longhand.notebook == "templates/classify.ipynb"
    assert (longhand.space, longhand.study) == ("s.yaml", "demo")
    assert (longhand.trials, longhand.jobs) == (30, 2)
    for argv in (
        ("sweep", "templates/classify.ipynb", *spelled),
        ("sweep", *spelled, "templates/classify.ipynb"),
    ):
        assert vars(parse(*argv)) == vars(longhand), argv


# `sweep best` and `sweep report` are subcommands, listed by `mlkit sweep --help`.
def test_sweep_subcommands() -> None:
    best = parse("sweep", "best", "demo", "--storage", "sqlite:///x.db")
    assert best.func is sweep.cmd_sweep_best
    assert (best.study, best.storage) == ("demo", "sqlite:///x.db")
    report = parse("sweep", "report", "demo", "-q")
    assert report.func is sweep.cmd_sweep_report and report.quiet and report.storage is None
    proc = run_cli("sweep", "--help")
    assert proc.returncode == 0, proc.stderr
    assert all(f"    {name} " in proc.stdout for name in ("run", "best", "report"))


# A group or the command alone prints its help and exits 2, as argparse's usage errors do.
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2 and "usage: mlkit [-h]" in capsys.readouterr().out
    assert cli.main(["sweep"]) == 2 and "usage: mlkit sweep [-h]" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["sweep", "templates/classify.ipynb"])
    assert exc.value.code == 2
    assert "mlkit sweep run: error: the following arguments are required: --space" in (
        capsys.readouterr().err
    )


# An error exits with its family's code, in one line that names the command; Ctrl-C is 130.
@pytest.mark.parametrize(
    ("raised", "code", "message"),
    [
        (UnsafeModelError("bad checksum"), 3, "mlkit show: error: bad checksum"),
        (ServiceUnavailableError("log unreachable"), 4, "mlkit show: error: log unreachable"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_errors_exit_by_meaning(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    raised: BaseException,
    code: int,
    message: str,
) -> None:
    def fails(_args: argparse.Namespace) -> int:
        raise raised

    monkeypatch.setattr(runs, "cmd_show", fails)
    assert cli.main(["show", "some-run"]) == code
    assert capsys.readouterr().err == message + "\n"


# A subcommand's error names the whole command, as argparse's own usage errors do.
def test_sweep_best_error_names_the_subcommand(exp_root: Path) -> None:
    proc = run_cli("sweep", "best", "nosuch")
    assert proc.returncode == 2
    assert proc.stderr.startswith("mlkit sweep best: error: No study 'nosuch'")


# A flag shared by several commands reads the same in each: it is declared once.
def test_shared_flags_are_declared_once() -> None:
    helps: dict[str, set[str | None]] = {}

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action.choices, dict):  # the parsers of a command's subcommands
                for child in set(action.choices.values()):
                    walk(child)
            for flag in set(action.option_strings) & {"--tracking", "--quiet", "--json", "--log"}:
                helps.setdefault(flag, set()).add(action.help)

    walk(cli.build_parser())
    assert {flag: len(texts) for flag, texts in helps.items()} == {
        "--tracking": 1,
        "--quiet": 1,
        "--json": 1,
        "--log": 2,  # mlkit monitor also reads a plain SQLite file
    }


# `mlkit inspect` shows every parameter with its help, from the cell alone.
def test_inspect_lists_parameters() -> None:
    proc = run_cli("inspect", "templates/classify.ipynb", "--json")
    assert proc.returncode == 0, proc.stderr
    params = {p["name"]: p for p in json.loads(proc.stdout)}
    assert params["epochs"]["type"] == "int" and params["epochs"]["rule"] == "at least 1"
    assert params["lr"]["help"] == "peak learning rate"


# runs, show: a table of the runs and one run's record, failed ones included.
def test_runs_and_show(exp_root: Path) -> None:
    ok = runner.run(SCENARIOS / "echo.ipynb", {"value": 3.0}, progress=False)
    bad = runner.run(SCENARIOS / "raises.ipynb", {}, progress=False, experiment="echo")
    proc = run_cli("runs", "echo")
    assert proc.returncode == 0, proc.stderr
    assert ok["id"] in proc.stdout and bad["id"] in proc.stdout
    assert "completed" in proc.stdout and "failed" in proc.stdout
    listed = json.loads(run_cli("runs", "--json").stdout)
    assert {r["id"] for r in listed} == {ok["id"], bad["id"]}
    shown = run_cli("show", bad["id"][:-2])  # a unique prefix is enough
    assert shown.returncode == 0, shown.stderr
    assert "ValueError" in shown.stdout and "value = 1.0" in shown.stdout


# A corrupt or empty run.json is listed as unreadable, naming the file, and hides no other run;
# showing it is a one-line error naming the file, not a traceback.
def test_runs_lists_a_corrupt_record_and_show_names_it(exp_root: Path) -> None:
    good = [fake_run(exp_root, weights=False).name for _ in range(3)]
    corrupt, empty = fake_run(exp_root, weights=False), fake_run(exp_root, weights=False)
    (corrupt / "run.json").write_text('{"id": "x", "status": "runn')
    (empty / "run.json").write_text("")
    proc = run_cli("runs")
    assert proc.returncode == 0, proc.stderr
    for run_id in good:
        assert run_id in proc.stdout
    assert proc.stdout.count("completed") == 3
    assert f"{corrupt.name}: {corrupt / 'run.json'} is not valid JSON" in proc.stdout
    assert f"{empty.name}: {empty / 'run.json'} is empty" in proc.stdout
    listed = {r["id"]: r["status"] for r in json.loads(run_cli("runs", "--json").stdout)}
    assert listed == {
        **dict.fromkeys(good, "completed"),
        corrupt.name: "unreadable",
        empty.name: "unreadable",
    }
    shown = run_cli("show", corrupt.name)
    assert shown.returncode == 3, shown.stdout  # a corrupt artifact
    assert "Traceback" not in shown.stderr and len(shown.stderr.strip().splitlines()) == 1
    assert f"{corrupt / 'run.json'} is not valid JSON" in shown.stderr


# An unknown run id is a clear error with exit 2.
def test_show_unknown_run(exp_root: Path) -> None:
    proc = run_cli("show", "20990101-000000-ffffff")
    assert proc.returncode == 2
    assert "No run '20990101-000000-ffffff'" in proc.stderr and "mlkit runs" in proc.stderr


# A crashed driver leaves "running" in run.json; readers report it as crashed.
def test_crashed_driver_is_reported(exp_root: Path) -> None:
    from mlkit._io import write_json
    from mlkit.record_store import create_run_dir, load_run

    run_id, path = create_run_dir("x", exp_root)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    import socket

    write_json(
        path / "run.json",
        {"id": run_id, "status": "running", "pid": int(dead), "host": socket.gethostname()},
    )
    assert load_run(path)["status"] == "crashed"


# Parameters from a YAML file, overridden by -p.
def test_params_file_and_override(exp_root: Path, tmp_path: Path) -> None:
    file = tmp_path / "p.yaml"
    file.write_text("value: 1e-3\ntext: from file\n")
    proc = run_cli("run", str(SCENARIOS / "echo.ipynb"), "-f", str(file), "-p", "text", "cli", "-q")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(next(exp_root.glob("*/runs/*/result.json")).read_text())
    assert result == {"value": 0.001, "text": "cli"}


# `mlkit --help` lists every command from the table without importing any group module, and
# each group builds exactly the commands the table gives it.
def test_help_builds_no_group_and_the_table_matches_the_groups() -> None:
    code = (
        "import sys, mlkit.cli\n"
        "try:\n    mlkit.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('GROUPS=' + ','.join(sorted(m for m in sys.modules if m.startswith('mlkit.cli.')"
        " and m != 'mlkit.cli._common')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "GROUPS="
    for name in _common.COMMANDS:
        assert f"    {name}" in proc.stdout, name
    for name, (group, help) in _common.COMMANDS.items():
        parser = build_parser(name)
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        assert set(commands.choices) == set(_common.COMMANDS), (name, group)
        # the group's own commands are built (they run something); the rest are bare entries
        runnable = {n for n, p in commands.choices.items() if p.get_default("func") is not None}
        assert runnable == {n for n, (g, _) in _common.COMMANDS.items() if g == group}, name
        assert commands.choices[name].description == help


_FINALIZER_INTERRUPT = """
import signal, sys, time
from mlkit.cli import redeliver_lost_interrupts
from mlkit.run.runner import terminate_as_interrupt
if sys.argv[1] == "on":
    redeliver_lost_interrupts()
signum = getattr(signal, sys.argv[2])

class Garbage:
    def __del__(self):
        signal.raise_signal(signum)  # its handler runs here, inside the finalizer

try:
    with terminate_as_interrupt():
        Garbage()
        time.sleep(2)
except KeyboardInterrupt as exc:
    print(f"interrupted: {exc}")
    sys.exit(130)
"""


# A signal whose handler runs inside a finalizer (Python drops what is raised there) comes
# again outside it: the command ends as interrupted instead of going on. Without the hook
# the same script runs to its end, which shows the test reaches the case it means to.
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupt_inside_a_finalizer_is_not_lost(signame: str) -> None:
    def run(hook: str) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-c", _FINALIZER_INTERRUPT, hook, signame]
        return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)

    caught = run("on")
    assert caught.returncode == 130, caught.stderr
    if signame == "SIGTERM":
        assert "interrupted: terminated by SIGTERM" in caught.stdout
    lost = run("off")
    assert lost.returncode == 0 and "Exception ignored" in lost.stderr, lost.stderr
