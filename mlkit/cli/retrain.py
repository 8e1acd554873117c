"""``mlkit retrain NAME[:ALIAS] --data SOURCE``: the next version of a model, from new data."""

from __future__ import annotations

import argparse

from mlkit.cli import _common as common
from mlkit.cli._common import EXIT_FAILED, EXIT_OK


def add_parsers(commands: common.Subcommands) -> None:
    """Add ``mlkit retrain``."""
    p = common.add_command(
        commands,
        "retrain",
        cmd_retrain,
        parents=[
            common.params("override a parameter of the parent's run (repeatable)"),
            common.TRACKING,
            common.QUIET,
            common.JSON,
        ],
    )
    p.add_argument(
        "target",
        metavar="NAME[:ALIAS]",
        help="the version to retrain: an alias (default production), vN or latest",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="SOURCE",
        help="the new table: a .csv or .parquet file, a Parquet folder or a database URL",
    )
    p.add_argument("--experiment", help="the new run's experiment (default: the parent run's)")
    p.add_argument(
        "--append",
        action="store_true",
        help="train on the parent's table and the new one together (written as one Parquet "
        "file under the model's registry folder)",
    )
    p.add_argument(
        "--alias",
        default="candidate",
        help="the alias pointed at the new version (default candidate; never production)",
    )
    p.add_argument(
        "--allow-changed-notebook",
        action="store_true",
        help="run the notebook even if it changed since the parent ran; the new run's record "
        "keeps the warning",
    )


def cmd_retrain(args: argparse.Namespace) -> int:
    """``mlkit retrain``: exit 0 when the new version is registered, 1 when the run failed."""
    from mlkit.registry import retrain
    from mlkit.run import runner

    with runner.terminate_as_interrupt():
        out = retrain.retrain(
            args.target,
            args.data,
            params=dict(args.param or []),
            experiment=args.experiment,
            append=args.append,
            alias=args.alias,
            allow_changed_notebook=args.allow_changed_notebook,
            tracking=args.tracking,
            progress=not (args.quiet or args.json),
        )
    version = out["version"]
    if args.json:
        common.print_json(out, default=str)
        return EXIT_OK if version else EXIT_FAILED
    parent = out["parent"]
    print(f"retrain of {parent['model']} v{parent['version']} (run {parent['run_id']})")
    for warning in out["warnings"]:
        print(f"warning: {warning}")
    common.print_run_summary(out["run"])
    if not version:
        print("nothing registered: the run did not complete")
        return EXIT_FAILED
    print(f"registered {parent['model']} v{version['version']} as {out['alias']!r}")
    print(f"  version:  {version['path']}")
    print(f"  run:      {out['run']['id']}")
    print(f"  data:     {out['data']}")
    return EXIT_OK
