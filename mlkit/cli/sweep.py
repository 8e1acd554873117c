"""Sweeps: ``mlkit sweep run`` (also spelled ``mlkit sweep NOTEBOOK``), ``best`` and ``report``."""

from __future__ import annotations

import argparse
import sys

from mlkit.cli import _common as common
from mlkit.cli._common import EXIT_FAILED, EXIT_OK, fmt

SUBCOMMANDS = ("run", "best", "report")
HELP_FLAGS = ("-h", "--help")


def expand_shorthand(argv: list[str]) -> list[str]:
    """Spell ``mlkit sweep NOTEBOOK ...`` out as ``mlkit sweep run NOTEBOOK ...``.

    This is the one rewrite of the command line before parsing. argparse chooses a
    subcommand by its exact word, and a notebook path can be any word, so no parser
    declaration can say "any other word is the first argument of ``run``" (short of
    subclassing argparse's private subparsers action and faking its ``choices``). After
    ``sweep``, anything but a subcommand or a help flag gets ``run`` in front, which also
    keeps flags before the notebook working (``mlkit sweep --space s.yaml NOTEBOOK``).

    Args:
        argv: the arguments after ``mlkit``.

    Returns:
        ``argv``, with ``run`` inserted after ``sweep`` where the shorthand was used.
    """
    if argv[:1] == ["sweep"] and argv[1:2] and argv[1] not in (*SUBCOMMANDS, *HELP_FLAGS):
        return ["sweep", "run", *argv[1:]]
    return argv


def add_parsers(commands: common.Subcommands) -> None:
    """Add ``mlkit sweep`` and its subcommands."""
    sweep = common.add_group(
        commands,
        "sweep",
        epilog="mlkit sweep NOTEBOOK ... is short for mlkit sweep run NOTEBOOK ...",
    )
    _add_run(sweep)
    # best and report read a finished study by name.
    study = common.parent("study", help="study name")
    parents = [study, common.storage("storage URL (default: experiments/STUDY/study.journal)")]
    help = "Print the best trial's parameters as YAML for mlkit run -f."
    common.add_command(sweep, "best", cmd_sweep_best, help, parents)
    help = "Execute templates/sweep_report.ipynb into a notebook and an HTML page."
    common.add_command(sweep, "report", cmd_sweep_report, help, [*parents, common.QUIET])


def _add_run(sweep: common.Subcommands) -> None:
    p = common.add_command(
        sweep,
        "run",
        cmd_sweep,
        "Sweep a notebook: every trial an executed notebook with its record.",
        parents=[
            common.params("fix a parameter for every trial"),
            common.storage("journal file path (default), sqlite:///x.db or postgresql://..."),
            common.TRACKING,
            common.QUIET,
        ],
    )
    p.add_argument("notebook", help="the notebook to sweep, e.g. templates/classify.ipynb")
    p.add_argument("--space", required=True, metavar="SPACE.yaml", help="search-space file")
    p.add_argument("--study", help="study name (default: NOTEBOOK-sweep); the same resumes")
    p.add_argument("--trials", type=int, default=20, help="trials in total, across workers")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop asking after this")
    p.add_argument("--jobs", type=int, default=1, help="kernels running at once on this machine")
    p.add_argument("--sampler", default="tpe", help="tpe, random, grid, cmaes, qmc, nsga2")
    p.add_argument("--pruner", default="median", help="median, hyperband, halving, none")
    p.add_argument(
        "--objective",
        action="append",
        metavar="METRIC[:min|max]",
        help="result metric to optimise (repeat for two: a Pareto front); default val/accuracy",
    )
    p.add_argument(
        "--trial-timeout",
        type=float,
        metavar="SECONDS",
        help="fail a trial when any one cell runs longer",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the sampler and trial seeds")
    p.add_argument(
        "--engine",
        choices=["warm", "papermill"],
        default="warm",
        help="warm: reuse kernels with torch imported (default); papermill: a "
        "fresh kernel per trial",
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    """``mlkit sweep run``: exit 0 when a trial completed, 128 + the signal when terminated."""
    from rich.console import Console

    from mlkit.run import runner
    from mlkit.sweep import config, driver

    cfg = config.prepare(
        args.notebook,
        args.space,
        study=args.study,
        n_trials=args.trials,
        timeout=args.timeout,
        jobs=args.jobs,
        storage=args.storage,
        sampler=args.sampler,
        pruner=args.pruner,
        objectives=args.objective,
        trial_timeout=args.trial_timeout,
        seed=args.seed,
        fixed=dict(args.param or []),
        from_cli=True,
        tracking=args.tracking,
        engine=args.engine,
    )
    try:
        summary = driver.run(cfg, progress=not args.quiet)
    except runner.Terminated as exc:
        print(f"{args.prog}: {exc}", file=sys.stderr)
        return 128 + exc.signum  # what a shell reports for a process the signal killed
    console = Console(highlight=False, soft_wrap=True)
    console.print(summary.headline())
    objective = ", ".join(f"{m} ({d})" for m, d in zip(cfg.objectives, cfg.directions, strict=True))
    if summary.best:
        best = summary.best
        console.print(f"best trial #{best['number']}: {objective} = {best['values'][0]:.4f}")
        for key, value in (best.get("result") or {}).items():
            if key.startswith("test/"):
                console.print(f"  {key} = {fmt(value)}")
        console.print(f"  params: {best['params']}")
        console.print(f"  record: {best['run_path']}")
    for trial in summary.pareto:
        console.print(f"Pareto trial #{trial['number']}: {trial['values']}  {trial['params']}")
    console.print(f"report:   mlkit sweep report {summary.study}")
    console.print(f"best as parameters: mlkit sweep best {summary.study} > best.yaml")
    return EXIT_OK if summary.n_complete else EXIT_FAILED


def cmd_sweep_best(args: argparse.Namespace) -> int:
    """``mlkit sweep best``: the best trial's parameters as YAML on stdout."""
    import yaml

    from mlkit import storage as storages
    from mlkit.sweep import results

    url = storages.find_storage(args.study, storage=args.storage)
    print(yaml.safe_dump(results.best_params(args.study, url), sort_keys=False), end="")
    return EXIT_OK


def cmd_sweep_report(args: argparse.Namespace) -> int:
    """``mlkit sweep report``: exit 0 when the report notebook completed."""
    from mlkit.sweep import report

    out = report.sweep_report(args.study, storage=args.storage, progress=not args.quiet)
    print(f"report notebook: {out['notebook']}")
    print(f"report page:     {out['html']}")
    return EXIT_OK if out["status"] == "completed" else EXIT_FAILED
