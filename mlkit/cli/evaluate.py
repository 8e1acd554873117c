"""``mlkit evaluate``: fairness, attributions, calibration and errors by slice of a run's model."""

from __future__ import annotations

import argparse

from mlkit.cli import _common as common
from mlkit.cli._common import EXIT_FAILED, EXIT_OK, fmt

# The headline numbers printed; per-group and per-slice values are in result.json.
HEADLINE = (
    "test/",
    "fairness/demographic",
    "fairness/equalized",
    "calibration/",
    "attribution/d",
)


def add_parsers(commands: common.Subcommands) -> None:
    """Add ``mlkit evaluate``."""
    p = common.add_command(
        commands,
        "evaluate",
        cmd_evaluate,
        parents=[
            common.CELL_TIMEOUT,
            common.TRACKING,
            common.QUIET,
        ],
    )
    p.add_argument(
        "run",
        metavar="RUN_OR_MODEL",
        help="run id (or a unique prefix), run directory, or a registered model NAME[:alias]",
    )
    p.add_argument("--sensitive", metavar="COLUMN", help="sensitive attribute to compare groups by")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``mlkit evaluate``: exit 0 when the evaluation run completed."""
    from rich.console import Console

    from mlkit.registry import evaluation

    info = evaluation.evaluate_run(
        args.run,
        sensitive=args.sensitive,
        tracking=args.tracking,
        progress=not args.quiet,
        cell_timeout=args.timeout,
    )
    console = Console(highlight=False, soft_wrap=True)
    ok = info["status"] == "completed"
    style = "green" if ok else "red"
    console.print(
        f"[{style}]evaluation {info['id']} of run {info.get('evaluates')} {info['status']}"
        f"[/{style}]" + (f": {info['reason']}" if info.get("reason") else "")
    )
    console.print(f"  record:   {info['path']}")
    console.print(f"  notebook: {info['path']}/output.ipynb")
    for key, value in (info.get("result") or {}).items():
        if key.startswith(HEADLINE):
            console.print(f"  {key} = {fmt(value)}")
    return EXIT_OK if ok else EXIT_FAILED
