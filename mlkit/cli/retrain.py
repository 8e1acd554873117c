"""``mlkit retrain NAME[:ALIAS] --data SOURCE``: the next version of a model, from new data."""

from __future__ import annotations

import argparse
from typing import Any

from mlkit._io import redact
from mlkit.cli import _common as common
from mlkit.cli._common import EXIT_FAILED, EXIT_OK
from mlkit.errors import ParameterError, StateError

# Shared with ``mlkit model promote --evidence``: the same rule, the same flag.
MARGIN = common.parent(
    "--margin",
    type=float,
    metavar="M",
    help="how much worse than the current version the candidate may be, in the metric's "
    "units (accuracy, or MAE in the target's), judged on the 95%% interval of the "
    "difference (default 0.01)",
)


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
            MARGIN,
            # the help of mlkit monitor, skew and replay: the same log, read the same way
            common.prediction_log(
                "prediction log: sqlite:///PATH, a SQLite file or postgresql://... (default: "
                "the SQLite file beside the model)"
            ),
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
        "--labels-from-log",
        action="store_true",
        help="also train on the records production answered whose labels were stored with "
        "mlkit feedback, read from --log (with --append's union: the parent's table, the new "
        "one and these)",
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
    p.add_argument(
        "--promote",
        action="store_true",
        help="then compare the new version with production on the same held-out rows and "
        "promote it unless it may be worse by more than --margin (exit 1 when it stays a "
        "candidate)",
    )


def cmd_retrain(args: argparse.Namespace) -> int:
    """``mlkit retrain``: exit 0 when the new version is registered, 1 when the run failed.

    With --promote, exit 1 too when the comparison with production kept it a candidate.
    """
    from mlkit.registry import comparison, retrain
    from mlkit.run import runner

    if args.margin is not None and not args.promote:
        raise ParameterError(
            f"--margin {args.margin:g} is the rule of --promote, which was not given. Pass "
            "--promote --margin M, or leave out --margin."
        )
    if args.log and not args.labels_from_log:
        raise ParameterError(
            f"--log {redact(args.log)} is where --labels-from-log reads, which was not given. "
            "Pass --labels-from-log --log URL, or leave out --log."
        )
    margin = comparison.DEFAULT_MARGIN if args.margin is None else args.margin
    labelled = _labelled(args.target, args.log) if args.labels_from_log else None
    with runner.terminate_as_interrupt():
        out = retrain.retrain(
            args.target,
            args.data,
            params=dict(args.param or []),
            experiment=args.experiment,
            append=args.append,
            alias=args.alias,
            labelled=labelled,
            allow_changed_notebook=args.allow_changed_notebook,
            promote_on_evidence=args.promote,
            margin=margin,
            tracking=args.tracking,
            progress=not (args.quiet or args.json),
        )
    version, promotion = out["version"], out["promotion"]
    refused = promotion is not None and not promotion["promoted"]
    if args.json:
        common.print_json(out, default=str)
        return EXIT_FAILED if not version or refused else EXIT_OK
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
    if labelled is not None:
        print(f"  labelled: {out['labelled']} records of the prediction log")
    if promotion is not None:
        print(comparison.format_comparison(promotion["comparison"]))
    return EXIT_FAILED if refused else EXIT_OK


def _labelled(target: str, log: str | None) -> list[dict[str, Any]]:
    """The model's answered records that have labels; refused when there are none."""
    from mlkit.ops import labelled
    from mlkit.registry.store import parse_target, resolve

    name, ref = parse_target(target)
    resolve(name, ref)  # an unknown model or alias is the first thing to say
    found = labelled.labelled_records(name, log=log)
    if not found.records:
        skipped = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in found.skipped.items() if n)
        raise StateError(
            f"--labels-from-log found no labelled records of {name!r} in the prediction log "
            f"{found.log} (labelled requests left out: {skipped or 'none'}). Store labels of "
            f"answered requests first (mlkit feedback {name} --labels FILE), or retrain "
            "without --labels-from-log."
        )
    return found.records
