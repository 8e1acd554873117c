"""``mlkit diff A B``: two runs side by side; exit 0 when they match, 1 when they differ."""

from __future__ import annotations

import argparse

from mlkit.cli import _common as common
from mlkit.cli._common import EXIT_FAILED, EXIT_OK

REF_HELP = "run id, unique prefix, run directory, or a sweep trial as STUDY#N"


def add_parsers(commands: common.Subcommands) -> None:
    """Add ``mlkit diff``."""
    p = common.add_command(
        commands,
        "diff",
        cmd_diff,
        parents=[common.JSON, common.storage("storage URL of a STUDY#N (default: its journal)")],
    )
    p.add_argument("a", metavar="A", help=REF_HELP)
    p.add_argument("b", metavar="B", help=REF_HELP)
    p.add_argument("--all", action="store_true", help="show what matches too, not only changes")
    p.add_argument("--html", metavar="PATH", help="also write the comparison as one HTML page")


def cmd_diff(args: argparse.Namespace) -> int:
    """``mlkit diff``: exit 0 when the runs match on everything compared, else 1."""
    from mlkit import compare

    a = compare.load(args.a, args.storage)
    b = compare.load(args.b, args.storage)
    comparison = compare.compare_sides(a, b, show_all=args.all)
    if args.html:
        from mlkit.compare import html  # plotly: only a page needs it

        html.write_page(comparison, a, b, args.html)
    if args.json:
        common.print_json(comparison, default=str)
    else:
        from mlkit.compare import render  # rich: only the terminal view needs it

        render.render(comparison)
        if args.html:
            print(f"page: {args.html}")
    return EXIT_FAILED if comparison["differs"] else EXIT_OK
