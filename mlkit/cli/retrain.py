"""``mlkit retrain NAME[:ALIAS] --data SOURCE``: the next version of a model, from new data."""

from __future__ import annotations

import argparse
from typing import Any

from mlkit._io import redact
from mlkit.cli import _common as common
from mlkit.cli._common import EXIT_FAILED, EXIT_OK
from mlkit.errors import NotFoundError, ParameterError, StateError

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
    _add_sweep_and_promote(p)


def _add_sweep_and_promote(p: argparse.ArgumentParser) -> None:
    """The flags of the optional steps: a sweep, and a promotion on evidence."""
    p.add_argument(
        "--sweep",
        type=int,
        metavar="TRIALS",
        help="run a short sweep of TRIALS trials around the parent's parameters (its study's "
        "search space, or --space) and register the best trial",
    )
    p.add_argument(
        "--space",
        metavar="SPACE.yaml",
        help="the search space of --sweep (default: the space of the parent's study; "
        "required when the parent run was no sweep trial)",
    )
    p.add_argument(
        "--promote",
        action="store_true",
        help="then compare the new version with production on the same held-out rows and "
        "promote it unless it may be worse by more than --margin (exit 1 when it stays a "
        "candidate); a model with bounds has the new run evaluated first",
    )
    p.add_argument(
        "--evidence",
        choices=["test", "traffic", "both"],
        help="what --promote judges on: the new run's test split, the newest labelled "
        "production records of --log, or both (default: both when the log has labelled "
        "records, else test); the rule must hold on each",
    )
    p.add_argument(
        "--sensitive",
        metavar="COLUMN",
        help="with --promote on a model with bounds: the column the evaluation reports "
        "fairness metrics by",
    )


def cmd_retrain(args: argparse.Namespace) -> int:
    """``mlkit retrain``: exit 0 when the new version is registered, 1 when the run failed.

    With --promote, exit 1 too when the comparison with production kept it a candidate.
    """
    from mlkit.registry import comparison, retrain
    from mlkit.run import runner

    _check_flags(args)
    # Checked before the log is read: a bad margin is the first thing to say.
    margin = comparison.check_margin(
        comparison.DEFAULT_MARGIN if args.margin is None else args.margin
    )
    labelled, traffic, evidence = _labelled_and_traffic(args)
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
            sweep=args.sweep,
            space=args.space,
            promote_on_evidence=args.promote,
            margin=margin,
            evidence=evidence,
            traffic=traffic,
            sensitive=args.sensitive,
            tracking=args.tracking,
            progress=not (args.quiet or args.json),
        )
    version, promotion = out["version"], out["promotion"]
    refused = promotion is not None and not promotion["promoted"]
    if args.json:
        common.print_json(out, default=str)
        return EXIT_FAILED if not version or refused else EXIT_OK
    _print(out, labelled is not None)
    if not version:
        return EXIT_FAILED
    if promotion is not None:
        print(comparison.format_comparison(promotion["comparison"]))
    return EXIT_FAILED if refused else EXIT_OK


def _print(out: dict[str, Any], labelled: bool) -> None:
    """What was retrained and registered, before the comparison."""
    parent = out["parent"]
    print(f"retrain of {parent['model']} v{parent['version']} (run {parent['run_id']})")
    sweep = out["sweep"]
    if sweep:
        print(
            f"sweep {sweep['study']}: {sweep['n_complete']} complete, {sweep['n_pruned']} "
            f"pruned, {sweep['n_failed']} failed; best by {sweep['objective']}"
        )
    for warning in out["warnings"]:
        print(f"warning: {warning}")
    if out["run"]:
        common.print_run_summary(out["run"])
    if not out["version"]:
        what = "no trial of the sweep completed" if sweep else "the run did not complete"
        print(f"nothing registered: {what}")
        return
    version = out["version"]
    print(f"registered {parent['model']} v{version['version']} as {out['alias']!r}")
    print(f"  version:  {version['path']}")
    print(f"  run:      {out['run']['id']}" + (" (the best trial)" if sweep else ""))
    print(f"  data:     {out['data']}")
    if labelled:
        print(f"  labelled: {out['labelled']} records of the prediction log")
    if out["evaluation"]:
        print(f"  evaluation: {out['evaluation']['id']}")


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse a flag whose companion is missing, before anything is read or run."""
    needs = [
        ("--margin", args.margin is not None, "--promote", args.promote),
        ("--evidence", args.evidence is not None, "--promote", args.promote),
        ("--sensitive", args.sensitive is not None, "--promote", args.promote),
        ("--space", args.space is not None, "--sweep", args.sweep is not None),
    ]
    for flag, given, companion, present in needs:
        if given and not present:
            raise ParameterError(
                f"{flag} is an option of {companion}, which was not given. Pass {companion} "
                f"too, or leave out {flag}."
            )
    if args.log and not (args.labels_from_log or args.promote):
        raise ParameterError(
            f"--log {redact(args.log)} is where --labels-from-log and --promote read labelled "
            "records, and neither was given. Pass --labels-from-log --log URL, or leave out "
            "--log."
        )


def _labelled_and_traffic(
    args: argparse.Namespace,
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None, list[str]]:
    """(records to train on, records that grade, the evidence), from the prediction log.

    With --labels-from-log and traffic evidence, the newest labelled records grade and
    stay out of training (retrain_steps.split_traffic).
    """
    from mlkit.registry import retrain_steps

    wanted = {"test": ["test"], "traffic": ["traffic"], "both": ["test", "traffic"]}
    found = None
    if args.labels_from_log or (args.promote and args.evidence != "test"):
        found = _labelled(args.target, args.log, required=args.labels_from_log)
    if not args.promote:
        return found, None, ["test"]
    evidence = (
        wanted[args.evidence] if args.evidence else ["test", "traffic"] if found else ["test"]
    )
    if "traffic" not in evidence:
        return found, None, evidence
    if not found:
        raise StateError(
            f"--evidence {args.evidence} needs labelled records of production's traffic, and "
            "the prediction log has none. Store labels of answered requests first (mlkit "
            "feedback NAME --labels FILE), or pass --evidence test."
        )
    train, traffic = retrain_steps.split_traffic(found, trains_too=args.labels_from_log)
    if args.labels_from_log and not train:
        raise StateError(
            f"--labels-from-log with traffic evidence holds the newest labelled records out of "
            f"training to grade the candidate, and the log has only {len(found)}: none are "
            "left to train on. Pass --evidence test, or store more labels first."
        )
    return (train if args.labels_from_log else None), traffic, evidence


def _labelled(target: str, log: str | None, *, required: bool) -> list[dict[str, Any]]:
    """The model's answered records that have labels; refused when ``required`` and none.

    A missing log reads as no records when they are not ``required`` (the default evidence
    falls back to the test split then).
    """
    from mlkit.ops import labelled
    from mlkit.registry.store import parse_target, resolve

    name, ref = parse_target(target)
    resolve(name, ref)  # an unknown model or alias is the first thing to say
    try:
        found = labelled.labelled_records(name, log=log)
    except NotFoundError:
        if required or log:
            raise
        return []
    if required and not found.records:
        skipped = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in found.skipped.items() if n)
        raise StateError(
            f"--labels-from-log found no labelled records of {name!r} in the prediction log "
            f"{found.log} (labelled requests left out: {skipped or 'none'}). Store labels of "
            f"answered requests first (mlkit feedback {name} --labels FILE), or retrain "
            "without --labels-from-log."
        )
    return found.records
