"""What does pruning buy? The same 30-trial sweep with and without the pruner.

Runs `mlkit sweep templates/classify.ipynb` twice in this one invocation, on the
shipped search space with the same sampler seed: once with `--pruner median`,
once with `--pruner none`. Prints both wall times, their ratio (target <= 0.6)
and both best values (target: within 1% of each other), plus each best trial's
test accuracy. Each sweep is a whole `mlkit sweep` process, warm engine, 1 job.

    python benchmarks/pruning.py [--trials 30] [--jobs 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sweep(root: Path, study: str, pruner: str, trials: int, jobs: int) -> float:
    env = dict(os.environ, MLKIT_EXPERIMENTS=str(root), WANDB_MODE="offline")
    cmd = [
        sys.executable,
        "-m",
        "mlkit",
        "sweep",
        "templates/classify.ipynb",
        "--space",
        "templates/classify_space.yaml",
        "--study",
        study,
        "--trials",
        str(trials),
        "--jobs",
        str(jobs),
        "--pruner",
        pruner,
        "--seed",
        "0",
        "-q",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return wall


def summary(root: Path, study: str) -> dict:
    from optuna.trial import TrialState

    from mlkit import storage as storages

    st = storages.load_study(str(root / study / "study.journal"), study)
    best = st.best_trial
    states = [t.state for t in st.trials]
    return {
        "best": best.value,
        "test": best.user_attrs.get("result", {}).get("test/accuracy"),
        "pruned": states.count(TrialState.PRUNED),
        "complete": states.count(TrialState.COMPLETE),
        "failed": states.count(TrialState.FAIL),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlkit-pruning-") as tmp:
        root = Path(tmp)
        walls, stats = {}, {}
        for pruner in ("median", "none"):
            walls[pruner] = sweep(root, f"bench-{pruner}", pruner, args.trials, args.jobs)
            stats[pruner] = summary(root, f"bench-{pruner}")
    print(
        f"{args.trials} trials of templates/classify.ipynb, {args.jobs} job(s), warm engine, "
        "objective val/accuracy (max), sampler tpe seed 0"
    )
    print(
        f"{'pruner':<8} {'wall s':>7} {'complete':>9} {'pruned':>7} {'failed':>7} "
        f"{'best val/acc':>13} {'its test/acc':>13}"
    )
    for pruner in ("median", "none"):
        s = stats[pruner]
        print(
            f"{pruner:<8} {walls[pruner]:7.1f} {s['complete']:9d} {s['pruned']:7d} "
            f"{s['failed']:7d} {s['best']:13.4f} {s['test']:13.4f}"
        )
    ratio = walls["median"] / walls["none"]
    gap = abs(stats["median"]["best"] - stats["none"]["best"]) / stats["none"]["best"]
    print(
        f"\nwall time with pruning / without: {ratio:.2f}  (target <= 0.6): "
        + ("OK" if ratio <= 0.6 else "ABOVE TARGET")
    )
    print(
        f"best values differ by {gap * 100:.2f}%  (target within 1%): "
        + ("OK" if gap <= 0.01 else "OUTSIDE TARGET")
    )


if __name__ == "__main__":
    main()
