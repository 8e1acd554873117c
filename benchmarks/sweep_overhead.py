"""What does a notebook sweep cost over the same trials run in one Python process?

Five ways to run the same N trials of ``templates/classify.ipynb`` (search space
``templates/classify_space.yaml``, ``-p epochs E``), each a subprocess timed whole, so
interpreter start, ``import torch`` and kernel start count wherever they are paid:

- the baseline, an in-process Optuna loop in a generated script: per trial it samples the
  space (``mlkit.sweep.space.suggest``, mlkit's TPE sampler with a fixed seed), opens a W&B
  offline run, and calls the training code the template calls (``data.load``,
  ``seed_everything``, ``models.build``, ``fit`` with the template's arguments and
  ``log=run.log``, ``evaluate`` on test), then tells Optuna the val accuracy;
- the template's own code cells exec'd in one process per trial (record, W&B run, figure,
  model and Optuna reports included: all the notebook's work without kernel or papermill);
- ``mlkit sweep --engine papermill --jobs 1`` (a fresh kernel per trial);
- ``mlkit sweep --engine warm --jobs 1`` and ``--jobs 2`` (reused warm kernels).

Every notebook sweep uses ``--pruner none``, so each trial runs to its end as in the
baseline. So that every way does the same work, each notebook study is created beforehand
with the baseline's trials enqueued (same parameters, hence the same seeds): trial cost
depends a lot on the sampled model, and different draws would swamp the overhead. The
objectives are compared with the baseline's as a check that the work is the same. After
each sweep every trial must be COMPLETE with a full record (executed notebook, result.json,
run.json completed, a W&B offline run); the benchmark exits 1 otherwise.

The machine is noisy (the same baseline has varied by 10% from one run to the next), so
baselines bracket the other ways: baseline, cells in-process, warm 1 job, warm 2 jobs,
baseline, and each ratio uses the mean of the two baselines around it. ``--rounds R`` repeats
that R times, interleaved, and the verdict uses the median round. The ratio of warm 1 job to
the cells in-process (same round) is what running as a notebook costs by itself. The
papermill sweep runs once, last. Targets: warm 1 job <= 1.10x the baseline, warm 2 jobs
<= 0.75x.

Run: python benchmarks/sweep_overhead.py [--trials 20] [--epochs 30] [--rounds 1]
    [--skip-papermill] [--json PATH]
(about 5 minutes on 2 cores with the defaults; over half of it is the papermill sweep, which
``--skip-papermill`` leaves out; each extra round adds about 110 s)
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "templates/classify.ipynb"
SPACE = "templates/classify_space.yaml"
SAMPLER_SEED = 0  # the baseline's TPE seed
SWEEP_SEED = 0  # mlkit sweep's --seed default: trial seeds come from it and the parameters
TARGETS = {"warm, 1 job": 1.10, "warm, 2 jobs": 0.75}
WARM_WAYS = (("warm, 1 job", 1), ("warm, 2 jobs", 2))
CELLS = "cells, in-process"
WAY_TIMEOUT_S = 1800

BASELINE_SCRIPT = '''\
"""In-process Optuna loop over the template's training code (written by sweep_overhead.py)."""

import json
import sys
import tempfile
import time

cfg = json.loads(open(sys.argv[1]).read())

import optuna
import torch
import wandb

from mlkit import data as mdata, models, train
from mlkit.sweep import config, driver, space

torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.WARNING)
dims = space.load(cfg["space"])
study = optuna.create_study(
    direction="maximize",
    sampler=config.make_sampler("tpe", cfg["sampler_seed"], dims, 1),
    pruner=optuna.pruners.NopPruner(),
)
trials = []
with tempfile.TemporaryDirectory() as tmp:
    for _ in range(cfg["trials"]):
        start = time.time()
        trial = study.ask()
        suggested = space.suggest(trial, dims)
        p = {**cfg["defaults"], **cfg["fixed"], **suggested}
        p["seed"] = driver.trial_seed(cfg["sweep_seed"], suggested)
        run = wandb.init(
            project="mlkit-bench",
            dir=tmp,
            group="baseline",
            job_type="trial",
            config=p,
            mode="offline",
            reinit="finish_previous",
            settings=wandb.Settings(
                silent=True, console="off", x_disable_stats=True, save_code=False
            ),
        )
        ds = mdata.load(p["dataset"], seed=p["data_seed"])
        arch = {
            "linear": {},
            "mlp": {"hidden": p["hidden"], "dropout": p["dropout"]},
            "cnn": {"channels": p["channels"], "dropout": p["dropout"]},
        }[p["model"]]
        train.seed_everything(p["seed"])
        net = models.build(
            p["model"], input_shape=ds.input_shape, n_outputs=ds.n_outputs, **arch
        )

        def report(epoch, metrics, trial=trial):
            trial.report(metrics["val/accuracy"], epoch)

        fitted = train.fit(
            net,
            ds,
            epochs=p["epochs"],
            batch_size=p["batch_size"],
            lr=p["lr"],
            optimizer=p["optimizer"],
            weight_decay=p["weight_decay"],
            schedule=p["schedule"],
            warmup_epochs=p["warmup_epochs"],
            grad_clip=p["grad_clip"],
            patience=p["patience"],
            seed=p["seed"],
            device=p["device"],
            log=run.log,
            callbacks=[report],
        )
        test = train.evaluate(fitted.model, ds.test, task=ds.task)
        best = next(h for h in fitted.history if h["epoch"] == fitted.best_epoch)
        result = {
            **{k: v for k, v in best.items() if k.startswith("val/")},
            **{f"test/{k}": v for k, v in test.items()},
            "best_epoch": fitted.best_epoch,
        }
        for key, value in result.items():
            run.summary[key] = value
        run.finish()
        study.tell(trial, result["val/accuracy"])
        trials.append(
            {
                "params": suggested,
                "value": result["val/accuracy"],
                "start": start,
                "complete": time.time(),
                "fit_s": fitted.seconds,
            }
        )
with open(sys.argv[2], "w") as fh:
    json.dump(trials, fh)
'''


CELLS_SCRIPT = '''\
"""The template's own code cells, exec'd in-process per trial (written by sweep_overhead.py).

Everything the notebook does happens here too: record, W&B run, figure, model, Optuna
reports through the journal storage. Only the kernel, papermill and the executed notebook
are missing, so the warm engine's ratio to this way is what running as a notebook costs.
"""

import json
import os
import sys
import time

cfg = json.loads(open(sys.argv[1]).read())
os.environ["MPLBACKEND"] = "agg"

import optuna
import torch

from mlkit import storage as storages
from mlkit.sweep import driver, space

torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.WARNING)
nb = json.loads(open(cfg["notebook"]).read())
cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
is_params = ["parameters" in (c["metadata"].get("tags") or []) for c in cells]
defaults = compile("".join(cells[is_params.index(True)]["source"]), "<parameters>", "exec")
code = [
    compile("".join(c["source"]), f"<cell {i}>", "exec")
    for i, c in enumerate(cells)
    if not is_params[i]
]
dims = space.load(cfg["space"])
study = storages.load_study(cfg["storage"], cfg["study"], pruner=storages.make_pruner("none"))
trials = []
for _ in range(cfg["trials"]):
    start = time.time()
    trial = study.ask()
    suggested = space.suggest(trial, dims)
    values = {**cfg["fixed"], **suggested, "seed": driver.trial_seed(cfg["sweep_seed"], suggested)}
    os.environ["MLKIT_TRIAL"] = json.dumps(
        {
            "storage": cfg["storage"],
            "study": cfg["study"],
            "number": trial.number,
            "metric": "val/accuracy",
            "pruner": "none",
        }
    )
    namespace = {"__name__": "__main__"}
    exec(defaults, namespace)
    namespace.update(values)
    for cell in code:
        exec(cell, namespace)
    result = namespace["run"].result
    study.tell(trial, result["val/accuracy"])
    trials.append(
        {
            "params": suggested,
            "value": result["val/accuracy"],
            "start": start,
            "complete": time.time(),
            "fit_s": namespace["fitted"].seconds,
        }
    )
with open(sys.argv[2], "w") as fh:
    json.dump(trials, fh)
'''


def template_defaults() -> dict[str, Any]:
    from mlkit.run import params

    return {p.name: p.default for p in params.read_signature(ROOT / NOTEBOOK).parameters}


def timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float, int]:
    """Run ``cmd`` from the repo root; return (launch time, wall seconds, exit code)."""
    with open(log, "wb") as out:
        launch = time.time()
        start = time.perf_counter()
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=WAY_TIMEOUT_S
        )
        return launch, time.perf_counter() - start, proc.returncode


def tail(log: Path, lines: int = 25) -> str:
    text = log.read_text(errors="replace").splitlines()
    return "\n".join("    " + line for line in text[-lines:])


def run_baseline(
    tmp: Path, tag: str, trials: int, fixed: dict[str, Any], env: dict[str, str]
) -> dict[str, Any]:
    script = tmp / "baseline.py"
    script.write_text(BASELINE_SCRIPT)
    cfg = {
        "space": SPACE,
        "trials": trials,
        "sampler_seed": SAMPLER_SEED,
        "sweep_seed": SWEEP_SEED,
        "defaults": template_defaults(),
        "fixed": fixed,
    }
    cfg_path, out_path, log = tmp / "baseline.json", tmp / f"{tag}.json", tmp / f"{tag}.log"
    cfg_path.write_text(json.dumps(cfg))
    launch, wall, rc = timed([sys.executable, str(script), str(cfg_path), str(out_path)], env, log)
    if rc != 0:
        print(f"{tag}: the baseline script failed (exit {rc}):\n{tail(log)}")
        sys.exit(1)
    rows = json.loads(out_path.read_text())
    return {"wall": wall, "launch": launch, "trials": rows, "ok": True}


def run_cells(
    tmp: Path, tag: str, epochs: int, reference: list[dict[str, Any]], env: dict[str, str]
) -> dict[str, Any]:
    """The template's code cells in one process, on the baseline's parameters."""
    from mlkit import storage as storages

    root = tmp / tag
    study_name = f"bench-{tag}-{os.getpid()}"
    enqueue(root, study_name, reference)
    script = tmp / "cells.py"
    script.write_text(CELLS_SCRIPT)
    cfg = {
        "notebook": str(ROOT / NOTEBOOK),
        "space": SPACE,
        "storage": storages.default_storage(study_name, root),
        "study": study_name,
        "trials": len(reference),
        "sweep_seed": SWEEP_SEED,
        "fixed": {"epochs": epochs},
    }
    cfg_path, out_path, log = tmp / f"{tag}-cfg.json", tmp / f"{tag}.json", tmp / f"{tag}.log"
    cfg_path.write_text(json.dumps(cfg))
    run_env = {**env, "MLKIT_EXPERIMENTS": str(root)}
    launch, wall, rc = timed(
        [sys.executable, str(script), str(cfg_path), str(out_path)], run_env, log
    )
    if rc != 0:
        print(f"{tag}: the in-process cells script failed (exit {rc}):\n{tail(log)}")
        sys.exit(1)
    rows = json.loads(out_path.read_text())
    return {"wall": wall, "launch": launch, "trials": rows, "ok": True}


def enqueue(root: Path, study_name: str, reference: list[dict[str, Any]]) -> None:
    """Create the study with the baseline's parameters waiting, in the baseline's order."""
    import optuna

    from mlkit import storage as storages

    storage = storages.open_storage(storages.default_storage(study_name, root))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    for row in reference:
        study.enqueue_trial(row["params"])


def run_sweep(
    tmp: Path,
    tag: str,
    engine: str,
    jobs: int,
    epochs: int,
    reference: list[dict[str, Any]],
    env: dict[str, str],
) -> dict[str, Any]:
    root = tmp / tag
    study_name = f"bench-{tag}-{os.getpid()}"
    enqueue(root, study_name, reference)
    exe = Path(sys.executable).with_name("mlkit")
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "mlkit"]
    cmd = [
        *cli,
        "sweep",
        NOTEBOOK,
        "--space",
        SPACE,
        "--engine",
        engine,
        "--jobs",
        str(jobs),
        "--trials",
        str(len(reference)),
        "--pruner",
        "none",
        "--study",
        study_name,
        "-p",
        "epochs",
        str(epochs),
        "-q",
    ]
    log = tmp / f"{tag}.log"
    launch, wall, rc = timed(cmd, {**env, "MLKIT_EXPERIMENTS": str(root)}, log)
    rows, problems = check(root, study_name, reference)
    if rc != 0:
        problems.insert(0, f"mlkit sweep exited {rc}:\n{tail(log)}")
    ok = not problems
    return {"wall": wall, "launch": launch, "trials": rows, "ok": ok, "problems": problems}


def check(
    root: Path, study_name: str, reference: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every trial COMPLETE, with an executed notebook, result, completed run and W&B run."""
    from optuna.trial import TrialState

    from mlkit import storage as storages

    journal = Path(storages.default_storage(study_name, root))
    if not journal.exists():
        return [], [f"no study journal at {journal}"]
    study = storages.load_study(str(journal), study_name)
    trials = study.get_trials(deepcopy=False)
    problems = []
    if len(trials) != len(reference):
        problems.append(f"{len(trials)} trials in the study, expected {len(reference)}")
    rows = []
    for t in trials:
        where = f"trial {t.number}"
        if t.state != TrialState.COMPLETE:
            reason = t.user_attrs.get("fail_reason", "")
            problems.append(f"{where}: {t.state.name} {reason}".rstrip())
            continue
        rows.append(
            {
                "number": t.number,
                "params": t.params,
                "value": t.values[0],
                "start": t.datetime_start.timestamp(),
                "complete": t.datetime_complete.timestamp(),
            }
        )
        run_path = t.user_attrs.get("run_path")
        if not run_path or not Path(run_path).is_dir():
            problems.append(f"{where}: no record directory ({run_path!r})")
            continue
        problems += [f"{where}: {p}" for p in check_record(Path(run_path), rows[-1])]
    return rows, problems


def check_record(run_dir: Path, row: dict[str, Any]) -> list[str]:
    """Problems with one trial's record; adds its cell timings to ``row``."""
    problems = []
    output = run_dir / "output.ipynb"
    if not output.exists():
        problems.append("no output.ipynb")
    else:
        cells = [c for c in json.loads(output.read_text())["cells"] if c["cell_type"] == "code"]
        unrun = [i for i, c in enumerate(cells) if c.get("execution_count") is None]
        if unrun:
            problems.append(f"output.ipynb: code cells {unrun} have no execution_count")
        row.update(cell_seconds(cells))
    if not (run_dir / "result.json").exists():
        problems.append("no result.json")
    run_json = run_dir / "run.json"
    status = (json.loads(run_json.read_text()) or {}).get("status") if run_json.exists() else None
    if status != "completed":
        problems.append(f"run.json status {status!r}")
    if not glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb")):
        problems.append("no W&B offline run (wandb/offline-run-*/run-*.wandb)")
    return problems


def cell_seconds(cells: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds in all code cells, in the training cell and in the figure cells (papermill's
    per-cell durations, measured by the driver from cell start to cell end)."""
    out = {"cells": 0.0, "fit_s": 0.0, "figures": 0.0}
    for cell in cells:
        seconds = (cell.get("metadata", {}).get("papermill") or {}).get("duration") or 0.0
        source = "".join(cell.get("source", ""))
        out["cells"] += seconds
        if "train.fit(" in source:
            out["fit_s"] += seconds
        elif "log_figure(" in source:
            out["figures"] += seconds
    return out


def same_work(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> str:
    """How many trials ran the baseline's parameters and reached its exact objective."""
    by_params = {json.dumps(r["params"], sort_keys=True): r["value"] for r in reference}
    same = sum(
        1 for r in rows if by_params.get(json.dumps(r["params"], sort_keys=True)) == r["value"]
    )
    return f"{same}/{len(reference)}"


def phases(way: dict[str, Any], n: int) -> tuple[float, float, float, float]:
    """Where the wall time went: (startup, first trial, later trials each, exit), seconds."""
    rows = way["trials"]
    if not rows:
        return math.nan, math.nan, math.nan, math.nan
    first_start = min(r["start"] for r in rows)
    first_end = min(r["complete"] for r in rows)
    last = max(r["complete"] for r in rows)
    later = (last - first_end) / (n - 1) if n > 1 else math.nan
    exit_s = way["launch"] + way["wall"] - last
    return first_start - way["launch"], first_end - first_start, later, exit_s


def print_breakdown(ways: dict[str, dict[str, Any]]) -> None:
    """Mean seconds per trial, over the trials that started after the first one ended."""
    print(
        f"\nper trial, trials started after the first trial ended (no warm-up), mean seconds:\n"
        f"{'way':<22} {'trials':>6} {'trial':>6} {'fit':>6} {'figures':>8} {'other cells':>11} "
        f"{'outside cells':>13}"
    )
    for name, way in ways.items():
        rows = way["trials"]
        if not rows:
            continue
        first_end = min(r["complete"] for r in rows)
        steady = [r for r in rows if r["start"] >= first_end] or rows

        def mean(key: str, rows: list[dict[str, Any]] = steady) -> float:
            return sum(r.get(key, math.nan) for r in rows) / len(rows)

        trial = sum(r["complete"] - r["start"] for r in steady) / len(steady)
        fit = mean("fit_s")
        if steady and "cells" in steady[0]:
            cells, drawn = mean("cells"), mean("figures")
            figures, other = f"{drawn:8.2f}", f"{cells - fit - drawn:11.2f}"
            outside = f"{trial - cells:13.2f}"
        else:
            figures, other, outside = f"{'-':>8}", f"{'-':>11}", f"{'-':>13}"
        print(f"{name:<22} {len(steady):6d} {trial:6.2f} {fit:6.2f} {figures} {other} {outside}")
    print(
        "fit: fit() in the baseline and the cells in-process, the training cell in notebooks; "
        "figures: the cells that draw, save and log a figure (the baseline draws none; the "
        "in-process cells are not timed one by one); outside cells: record "
        "keeping, kernel reset, papermill and kernel messaging, the W&B epilogue, Optuna. "
        "With 2 jobs, trial times are latencies of overlapping trials."
    )


def suffix(r: int, rounds: int) -> str:
    """A warm way's name carries its round when there are several."""
    return f" #{r + 1}" if rounds > 1 else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per way (default 20)")
    parser.add_argument("--epochs", type=int, default=30, help="-p epochs for every trial")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat baseline, warm 1 job, warm 2 jobs this many times, interleaved; the "
        "verdict uses the median round (default 1)",
    )
    parser.add_argument(
        "--skip-papermill",
        action="store_true",
        help="leave out the papermill sweep (a fresh kernel per trial; over half the time)",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="also write every way's wall time and trials to PATH"
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.trials < 1:
        parser.error("--rounds and --trials must be at least 1")
    n, rounds = args.trials, args.rounds
    fixed = {"epochs": args.epochs}
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("MLKIT_TRIAL", None)

    # (name, engine, jobs, round); a warm way of round r sits between baselines r and r+1.
    steps: list[tuple[str, str | None, int, int]] = []
    for r in range(rounds):
        steps.append((f"baseline {r + 1}", None, 0, r))
        steps.append((f"{CELLS}{suffix(r, rounds)}", "cells", 1, r))
        steps += [(f"{way}{suffix(r, rounds)}", "warm", jobs, r) for way, jobs in WARM_WAYS]
    steps.append((f"baseline {rounds + 1}", None, 0, rounds))
    if not args.skip_papermill:
        steps.append(("papermill, 1 job", "papermill", 1, rounds))
    ways: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="mlkit-sweep-bench-") as tmp_name:
        tmp = Path(tmp_name)
        env["MLKIT_EXPERIMENTS"] = str(tmp / "experiments")
        order = "; ".join(name for name, _, _, _ in steps)
        print(
            f"{n} trials of {NOTEBOOK} over {SPACE}, -p epochs {args.epochs}; notebook sweeps "
            "use --pruner none (every trial runs to its end, as in the baseline) and the "
            f"baseline's parameters; {os.cpu_count()} CPUs; order: {order}",
            flush=True,
        )
        reference: list[dict[str, Any]] = []
        for index, (name, engine, jobs, r) in enumerate(steps):
            tag = f"way{index}"
            if engine is None:
                way = run_baseline(tmp, tag, n, fixed, env)
                if not reference:
                    reference = way["trials"]
            elif engine == "cells":
                way = run_cells(tmp, tag, args.epochs, reference, env)
            else:
                way = run_sweep(tmp, tag, engine, jobs, args.epochs, reference, env)
                verdict = "PASS" if way["ok"] else "FAIL"
                print(
                    f"check {name}: {verdict}: {len(way['trials'])}/{n} trials COMPLETE with "
                    "output.ipynb (all code cells executed), result.json, run.json completed "
                    "and a W&B offline run",
                    flush=True,
                )
                for problem in way["problems"][:10]:
                    print(f"  - {problem}")
            way["same"] = same_work(way["trials"], reference)
            way["round"] = r
            ways[name] = way
            print(f"  {name}: {way['wall']:.1f} s", flush=True)

    baselines = [ways[f"baseline {r + 1}"]["wall"] for r in range(rounds + 1)]
    base = sum(baselines) / len(baselines)
    for name, way in ways.items():
        r = way["round"]
        # Each way of a round against the two baselines that bracket it; papermill against all.
        bracketed = not name.startswith(("baseline", "papermill"))
        around = baselines[r : r + 2] if bracketed else baselines
        way["base"] = sum(around) / len(around)
    fit_s = sum(r["fit_s"] for r in reference)
    print(
        f"\nbaselines: {', '.join(f'{b:.1f}' for b in baselines)} s, mean {base:.1f} s "
        f"({base / n:.2f} s/trial, of which fit() {fit_s / n:.2f} s in the first)"
    )
    print(
        f"\n{'way':<22} {'wall s':>7} {'s/trial':>8} {'ratio':>7} {'target':>8} "
        f"{'startup':>8} {'1st trial':>9} {'later/trial':>11} {'exit':>6} {'same work':>9}"
    )
    rows = [("baseline (mean)", {"wall": base, "base": base, "trials": []}), *ways.items()]
    for name, way in rows:
        ratio = way["wall"] / way["base"]
        target = TARGETS.get(name.split(" #")[0]) if name.startswith("warm") else None
        goal = f"<= {target:.2f}" if target else ""
        startup, first, later, exit_s = phases(way, n)
        split = (
            f"{startup:8.1f} {first:9.1f} {later:11.2f} {exit_s:6.1f} {way['same']:>9}"
            if way["trials"]
            else ""
        )
        print(
            f"{name:<22} {way['wall']:7.1f} {way['wall'] / n:8.2f} {ratio:7.3f} {goal:>8} {split}"
        )
    print(
        "\nIn seconds. ratio: wall time over the mean of the baselines run just before and "
        "just after (papermill: over all baselines). startup: launch to the first trial's "
        "start; 1st trial: its duration (for the warm engine it includes warming a kernel); "
        "later/trial: from the first trial's end to the last trial's end, per remaining "
        "trial (jobs overlap); exit: after the last trial. same work: trials that ran the "
        "baseline's parameters and reached exactly its objective."
    )
    print_breakdown(ways)
    if args.json:
        Path(args.json).write_text(json.dumps(ways, indent=1))
    failed = [name for name, way in ways.items() if not way["ok"]]
    own = sorted(
        ways["warm, 1 job" + suffix(r, rounds)]["wall"] / ways[CELLS + suffix(r, rounds)]["wall"]
        for r in range(rounds)
    )
    print(
        f"warm, 1 job over the template's cells run in-process (what running as a notebook "
        f"costs): {statistics.median(own):.3f}x"
        + (f" (rounds: {', '.join(f'{x:.3f}' for x in own)})" if rounds > 1 else "")
    )
    for way_name, target in TARGETS.items():
        ratios = sorted(
            ways[f"{way_name}{suffix(r, rounds)}"]["wall"]
            / ways[f"{way_name}{suffix(r, rounds)}"]["base"]
            for r in range(rounds)
        )
        median = statistics.median(ratios)
        verdict = "OK" if median <= target else "ABOVE TARGET"
        each = f" (rounds: {', '.join(f'{x:.3f}' for x in ratios)})" if rounds > 1 else ""
        print(
            f"{way_name}: {median:.3f}x the in-process baseline{each} "
            f"(target <= {target:.2f}x): {verdict}"
        )
    if failed:
        print(f"record checks FAILED for: {', '.join(failed)}")
        return 1
    print("record checks passed for every notebook sweep")
    return 0


if __name__ == "__main__":
    sys.exit(main())
