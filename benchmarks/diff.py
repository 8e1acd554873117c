"""How long `mlkit diff A B` takes on two runs of templates/classify.ipynb, and what it imports.

Without run ids, two runs are made first (epochs 1 and 2, W&B disabled) under a temporary
experiments root. `mlkit diff` and a bare `python -c pass` are then timed interleaved, so
machine noise hits both alike: the median wall times (Python's start included), their
ratio, and whether torch, optuna, wandb or papermill were imported (`-X importtime`).
Target: under 2 s, and none of them imported. Exit 1 when a target is missed.

    python benchmarks/diff.py [A B] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "optuna", "wandb", "papermill")
TARGET_S = 2.0


def wall(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def make_runs(env: dict[str, str]) -> list[str]:
    """Two tiny runs of templates/classify.ipynb; their ids."""
    ids = []
    for epochs in ("1", "2"):
        cmd = [sys.executable, "-m", "mlkit", "run", "templates/classify.ipynb", "-q"]
        cmd += ["--tracking", "disabled", "-p", "epochs", epochs, "-p", "warmup_epochs", "0"]
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        ids.append(next(ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("run ")))
    return ids


def imported(cmd: list[str], env: dict[str, str]) -> list[str]:
    """The heavy top-level modules a command imports, read from ``-X importtime``."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", *cmd[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    names = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    return [m for m in HEAVY if m in names]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", metavar="RUN", help="two run ids (default: make two)")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.runs:
            env["MLKIT_EXPERIMENTS"] = str(Path(tmp) / "experiments")
            print("making two runs of templates/classify.ipynb ...", flush=True)
        runs = args.runs or make_runs(env)
        if len(runs) != 2:
            parser.error("give two run ids, or none")
        baseline_cmd = [sys.executable, "-c", "pass"]
        diff_cmd = [sys.executable, "-m", "mlkit", "diff", *runs]
        wall(baseline_cmd, env), wall(diff_cmd, env)  # warm the file cache
        base, diff = [], []
        for _ in range(args.repeat):
            base.append(wall(baseline_cmd, env))
            diff.append(wall(diff_cmd, env))
        heavy = imported(diff_cmd, env)
    b, d = statistics.median(base), statistics.median(diff)
    print(f"python -c pass      median {b:6.3f} s")
    print(f"mlkit diff A B      median {d:6.3f} s  (target < {TARGET_S:g} s)")
    print(f"ratio mlkit diff / python -c pass: {d / b:.1f}x")
    print(
        f"heavy modules imported: {', '.join(heavy) or 'none'} (torch imported: {'torch' in heavy})"
    )
    return 0 if d < TARGET_S and not heavy else 1


if __name__ == "__main__":
    sys.exit(main())
