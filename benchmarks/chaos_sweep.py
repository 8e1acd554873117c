"""Does a sweep survive its driver being killed with SIGKILL, again and again?

One ``mlkit sweep`` of a tiny notebook (written into a temporary folder: a point on a bowl,
``-p sleep S`` seconds per trial) runs on real kernels (the warm engine unless ``--engine
papermill``) with ``--trials N --jobs J`` on a temporary SQLite storage, under a temporary
experiments root (``MLKIT_EXPERIMENTS``). The driver is killed with SIGKILL at a random
moment (seeded by ``--seed``) ``--kills`` times, the same command started again after each
kill, and the last run is left to finish. Then, against these targets:

- trials counted vs asked: trials that count against ``--trials`` (all but reaped ones,
  see ``mlkit.sweep.driver.reap_stale``) equal ``--trials``;
- trials left RUNNING (or WAITING in the queue): 0;
- duplicate parameter sets beyond the documented retries: 0. A reaped trial's parameters
  are run once more (``retry_of``); any other two trials with the same point count;
- orphan processes: 0. After every kill, within 10 s, no process of the dead driver's tree
  is alive: kernels (ipykernel_launcher), worker processes, W&B's service. Every process a
  sweep starts carries the temporary experiments root in its environment, so that marks
  them; a process left after 10 s is listed, then killed so the next round starts clean;
- run records without a reason: 0. Every record of the study whose status is not
  ``completed`` (``failed``, or ``crashed`` when its driver died) says why in ``reason``.

Run: python benchmarks/chaos_sweep.py [--trials 30] [--jobs 2] [--kills 10] [--seed 0]
    [--engine warm|papermill] [--sleep 1.0] [--tracking offline|disabled] [--keep]
(about 2 to 3 minutes on 2 cores with the defaults; exit 1 when a target is missed)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STUDY = "chaos"
ORPHAN_DEADLINE_S = 10.0
FINAL_TIMEOUT_S = 900
SPACE = "x: {type: float, low: -4.0, high: 4.0}\ny: {type: int, low: 0, high: 3}\n"
PARAMETERS = (
    "x: float = 0.0  # position on a bowl\n"
    "y: int = 0  # an integer offset\n"
    "sleep: float = 0.5  # seconds the trial takes"
)
CODE = (
    "import time\n\nimport mlkit\n\n"
    "run = mlkit.start_run(mlkit.parameters(globals()))\n"
    "time.sleep(sleep)\n"
    'run.finish({"loss": (x - 1.0) ** 2 + y})'
)


def write_notebook(path: Path) -> None:
    """The tiny parameterized notebook every trial runs."""
    cells = [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "parameters",
            "metadata": {"tags": ["parameters"]},
            "outputs": [],
            "source": PARAMETERS,
        },
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "bowl",
            "metadata": {},
            "outputs": [],
            "source": CODE,
        },
    ]
    kernelspec = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb = {"cells": cells, "metadata": {"kernelspec": kernelspec}, "nbformat": 4}
    path.write_text(json.dumps({**nb, "nbformat_minor": 5}, indent=1))


# --- processes -------------------------------------------------------------------


def marked(marker: str) -> dict[int, str]:
    """Processes (zombies aside) whose environment holds ``marker``: pid -> what it is."""
    try:
        import psutil
    except ImportError:
        return _marked_from_proc(marker)
    found = {}
    for proc in psutil.process_iter(["pid", "status", "cmdline"]):
        try:
            if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if marker in "\0".join(f"{k}={v}" for k, v in proc.environ().items()) + "\0":
                found[proc.pid] = kind(proc.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _marked_from_proc(marker: str) -> dict[int, str]:
    needle = marker.encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if " Z " in (entry / "stat").read_text().split(")", 1)[1][:3]:
                continue
            if needle in (entry / "environ").read_bytes():
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
                found[int(entry.name)] = kind(argv)
        except (OSError, IndexError):  # gone, or not ours to read
            continue
    return found


def kind(argv: list[str]) -> str:
    """What a sweep's process is, from its command line."""
    text = " ".join(argv)
    if "ipykernel_launcher" in text:
        return "kernel"
    if "wandb" in text:
        return "wandb service"
    if "multiprocessing" in text:
        return "worker process"
    if "mlkit" in text:
        return "driver"
    return Path(argv[0]).name if argv and argv[0] else "?"


def summarize_kinds(procs: dict[int, str]) -> str:
    counts: dict[str, int] = {}
    for name in procs.values():
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "-"


def wait_gone(marker: str, deadline_s: float) -> tuple[float, dict[int, str]]:
    """Seconds until no marked process is left (or the deadline), and those left then."""
    start = time.monotonic()
    while True:
        left = marked(marker)
        waited = time.monotonic() - start
        if not left or waited >= deadline_s:
            return waited, left
        time.sleep(0.1)


def kill_leftovers(procs: dict[int, str]) -> None:
    """SIGKILL the processes an orphan check found, so the next round starts clean."""
    for pid in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- the study and its records ---------------------------------------------------


def study_counts(storage: str) -> dict[str, int]:
    """Trials by state, for the per-kill table; zeros before the study exists."""
    from optuna.trial import TrialState

    from mlkit import storage as storages

    try:
        study = storages.load_study(storage, STUDY)
    except Exception:  # not created yet (killed before it was), or busy
        return {"complete": 0, "reaped": 0}
    trials = study.get_trials(deepcopy=False)
    return {
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "reaped": sum(bool(t.user_attrs.get("reaped")) for t in trials),
    }


def duplicates(trials: list[Any]) -> list[str]:
    """Trials that ran a point another trial has, a reaped trial's documented retry aside."""
    from optuna.trial import TrialState

    by_point: dict[str, list[Any]] = {}
    for t in trials:
        if t.params and t.state != TrialState.WAITING:
            by_point.setdefault(json.dumps(t.params, sort_keys=True), []).append(t)
    found = []
    for point, group in by_point.items():
        numbers = {t.number: t for t in group}
        for t in sorted(group, key=lambda t: t.number)[1:]:
            original = numbers.get(t.user_attrs.get("retry_of", -1))
            if original is not None and original.user_attrs.get("reaped"):
                continue
            others = sorted(n for n in numbers if n != t.number)
            found.append(f"trial #{t.number} repeats {point} of trial(s) {others}")
    return found


def analyse(storage: str, root: Path, asked: int) -> list[tuple[str, str, str, bool, list[str]]]:
    """(check, value, target, passed, details) for each target."""
    from optuna.trial import TrialState

    from mlkit import record_store
    from mlkit import storage as storages

    trials = storages.load_study(storage, STUDY).get_trials()
    counted = [t for t in trials if not t.user_attrs.get("reaped")]
    stuck = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    dups = duplicates(trials)
    records = record_store.list_runs(STUDY, root)
    silent = [r for r in records if r.get("status") != "completed" and not r.get("reason")]
    reaped = len(trials) - len(counted)
    retries = sum(1 for t in trials if "retry_of" in t.user_attrs)
    return [
        (
            f"trials counted vs asked ({reaped} reaped, {retries} retries)",
            f"{len(counted)}/{asked}",
            "equal",
            len(counted) == asked,
            [],
        ),
        (
            "trials left RUNNING or WAITING",
            str(len(stuck)),
            "0",
            not stuck,
            [f"trial #{t.number} {t.state.name} {t.user_attrs.get('worker')}" for t in stuck],
        ),
        ("duplicate parameter sets beyond retries", str(len(dups)), "0", not dups, dups),
        (
            f"run records without a reason (of {len(records)})",
            str(len(silent)),
            "0",
            not silent,
            [f"{r['path']}: status {r.get('status')!r}" for r in silent],
        ),
    ]


# --- the chaos -------------------------------------------------------------------


def sweep_command(args: argparse.Namespace, notebook: Path, space: Path, storage: str) -> list:
    exe = Path(sys.executable).with_name("mlkit")
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "mlkit"]
    return [
        *cli,
        "sweep",
        str(notebook),
        "--space",
        str(space),
        "--study",
        STUDY,
        "--trials",
        str(args.trials),
        "--jobs",
        str(args.jobs),
        "--engine",
        args.engine,
        "--objective",
        "loss",
        "--storage",
        storage,
        "--tracking",
        args.tracking,
        "-p",
        "sleep",
        str(args.sleep),
        "-q",
    ]


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        # A session of its own: the driver's process group is its own, as from a shell.
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def chaos(
    args: argparse.Namespace, cmd: list[str], env: dict[str, str], tmp: Path, marker: str
) -> list[dict[str, Any]]:
    """Start, wait a random moment, SIGKILL, check for orphans; ``--kills`` times."""
    rng = random.Random(args.seed)
    rounds = []
    for index in range(args.kills):
        delay = rng.uniform(args.min_delay, args.max_delay)
        proc = start(cmd, env, tmp / f"driver-{index}.log")
        try:
            proc.wait(timeout=delay)
            ended = True  # the study was already done: nothing to kill
        except subprocess.TimeoutExpired:
            ended = False
        tree = marked(marker)
        if not ended:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        waited, left = wait_gone(marker, ORPHAN_DEADLINE_S)
        kill_leftovers(left)
        counts = study_counts(args.storage_url)
        rounds.append(
            {
                "kill": index + 1,
                "after": delay,
                "ended": ended,
                "rc": proc.returncode,
                "tree": {p: k for p, k in tree.items() if p != proc.pid},
                "gone_after": waited,
                "left": left,
                **counts,
            }
        )
        row = rounds[-1]
        what = f"exited {proc.returncode} first" if ended else "SIGKILL"
        print(
            f"  kill {row['kill']:2d} at {delay:4.1f} s: {what}; "
            f"tree {summarize_kinds(row['tree'])}; "
            f"gone in {waited:.1f} s; left {summarize_kinds(left)}; "
            f"study: {counts['complete']} complete, {counts['reaped']} reaped",
            flush=True,
        )
    return rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30, help="--trials of the sweep (30)")
    parser.add_argument("--jobs", type=int, default=2, help="--jobs of the sweep (2)")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of the driver (10)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments (0)")
    parser.add_argument("--engine", choices=["warm", "papermill"], default="warm")
    parser.add_argument("--sleep", type=float, default=1.0, help="seconds per trial (1.0)")
    parser.add_argument(
        "--tracking",
        choices=["offline", "disabled"],
        default="offline",
        help="W&B mode of the trials; offline starts W&B's service too (default)",
    )
    parser.add_argument("--min-delay", type=float, default=0.5, help="earliest kill, s (0.5)")
    parser.add_argument("--max-delay", type=float, default=10.0, help="latest kill, s (10.0)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    if args.trials < 1 or args.jobs < 1 or args.kills < 0:
        parser.error("--trials and --jobs must be at least 1, --kills at least 0")
    if not 0 <= args.min_delay <= args.max_delay:
        parser.error("--min-delay must be between 0 and --max-delay")
    tmp = Path(tempfile.mkdtemp(prefix="mlkit-chaos-"))
    root = tmp / "experiments"
    root.mkdir()
    notebook, space = tmp / "bowl.ipynb", tmp / "space.yaml"
    write_notebook(notebook)
    space.write_text(SPACE)
    args.storage_url = f"sqlite:///{tmp / 'study.db'}"
    marker = f"MLKIT_EXPERIMENTS={root}\0"
    env = {**os.environ, "MLKIT_EXPERIMENTS": str(root), "WANDB_SILENT": "true", "COLUMNS": "200"}
    env.pop("MLKIT_TRIAL", None)
    cmd = sweep_command(args, notebook, space, args.storage_url)
    print(
        f"mlkit sweep --trials {args.trials} --jobs {args.jobs} --engine {args.engine} "
        f"--tracking {args.tracking} on {args.storage_url}; {args.kills} SIGKILLs of the driver "
        f"between {args.min_delay} and {args.max_delay} s after its start (--seed {args.seed}), "
        f"then one run to the end; {os.cpu_count()} CPUs",
        flush=True,
    )
    began = time.monotonic()
    rounds = chaos(args, cmd, env, tmp, marker)
    final = start(cmd, env, tmp / "driver-final.log")
    try:
        rc = final.wait(timeout=FINAL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        final.kill()
        rc = final.wait()
    _, left_final = wait_gone(marker, ORPHAN_DEADLINE_S)
    kill_leftovers(left_final)
    seconds = time.monotonic() - began
    print(f"  last run: exit {rc}; left after it: {summarize_kinds(left_final)}")

    checks = analyse(args.storage_url, root, args.trials) if rc == 0 else []
    orphans = [f"kill {r['kill']}: {summarize_kinds(r['left'])}" for r in rounds if r["left"]]
    if left_final:
        orphans.append(f"after the last run: {summarize_kinds(left_final)}")
    n_orphans = sum(len(r["left"]) for r in rounds) + len(left_final)
    slowest = max((r["gone_after"] for r in rounds if not r["ended"]), default=0.0)
    checks.append(
        (
            f"orphan processes {ORPHAN_DEADLINE_S:.0f} s after a kill (slowest {slowest:.1f} s)",
            str(n_orphans),
            "0",
            not n_orphans,
            orphans,
        )
    )
    if rc != 0:
        log = (tmp / "driver-final.log").read_text(errors="replace").splitlines()[-15:]
        checks.insert(0, ("last run exits 0", str(rc), "0", False, log))
    killed = sum(1 for r in rounds if not r["ended"])
    print(f"\n{killed} of {args.kills} runs killed, {seconds:.0f} s in all\n")
    print(f"{'check':<58} {'value':>8} {'target':>7}  verdict")
    for name, value, target, passed, details in checks:
        print(f"{name:<58} {value:>8} {target:>7}  {'PASS' if passed else 'FAIL'}")
        for line in details[:10]:
            print(f"    {line}")
    if args.keep:
        print(f"\nkept: {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    failed = [c[0] for c in checks if not c[3]]
    print("\nall targets met" if not failed else f"\nFAILED: {'; '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
