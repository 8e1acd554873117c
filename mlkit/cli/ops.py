"""Operations on served models: ``mlkit abtest report``, ``feedback`` and ``monitor``."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlkit.cli import _common as common
from mlkit.cli._common import EXIT_FAILED, EXIT_OK
from mlkit.errors import ParameterError


def add_parsers(commands: common.Subcommands) -> None:
    """Add ``mlkit abtest``, ``feedback`` and ``monitor``."""
    abtest = common.add_group(commands, "abtest")
    p = common.add_command(
        abtest,
        "report",
        cmd_abtest_report,
        "Compare the variants of mlkit serve --ab on labelled traffic (Wilson CI, z-test).",
        parents=[common.LOG],
    )
    p.add_argument("name", metavar="NAME", help="the registered model that was served with --ab")
    p.add_argument(
        "--labels",
        metavar="FILE",
        help="true labels by request id: CSV with header request_id,label, or JSON "
        '{"<request_id>": label} (a list of labels for a batch request); default: the '
        "labels stored with mlkit feedback",
    )
    p.add_argument("--metric", choices=["accuracy", "error_rate"], default="accuracy")
    p.add_argument(
        "--control",
        metavar="VARIANT",
        help="variant to test the others against (default: lowest version)",
    )
    _add_feedback(commands)
    _add_monitor(commands)


def _add_feedback(commands: common.Subcommands) -> None:
    p = common.add_command(
        commands,
        "feedback",
        cmd_feedback,
        parents=[common.LOG],
    )
    p.add_argument("name", metavar="NAME", help="the registered model whose predictions they label")
    p.add_argument("request_id", nargs="?", metavar="REQUEST_ID", help="one request id to label")
    p.add_argument(
        "label",
        nargs="?",
        metavar="LABEL",
        help="its label: a class name or index, or a JSON list for a batch request",
    )
    p.add_argument(
        "--labels",
        metavar="FILE",
        help="labels by request id: CSV with header request_id,label, or JSON "
        '{"<request_id>": label}',
    )


def _add_monitor(commands: common.Subcommands) -> None:
    p = common.add_command(
        commands,
        "monitor",
        cmd_monitor,
        parents=[
            common.prediction_log(
                "prediction log: sqlite:///PATH, a SQLite file or postgresql://... (default: "
                "the SQLite file beside the model)"
            ),
            common.params("another parameter of templates/monitor.ipynb, e.g. -p shift 1.0 (demo)"),
            common.TRACKING,
            common.QUIET,
        ],
    )
    p.add_argument(
        "model", nargs="?", metavar="NAME[:ALIAS]", help="model and alias (default production)"
    )
    p.add_argument("--window", type=int, default=1000, help="latest answered examples to compare")
    p.add_argument(
        "--alpha", type=float, default=0.01, help="significance level after the Holm correction"
    )
    p.add_argument(
        "--demo", action="store_true", help="the template's built-in digits_flat demo instead"
    )


def cmd_abtest_report(args: argparse.Namespace) -> int:
    """``mlkit abtest report``: a table of the variants with their intervals and tests."""
    from mlkit.ops import abtest

    stats = abtest.report(
        args.name,
        Path(args.labels) if args.labels else None,
        log_url=args.log,
        metric=args.metric,
        control=args.control,
    )
    print(abtest.format_table(stats, args.metric))
    return EXIT_OK


def cmd_feedback(args: argparse.Namespace) -> int:
    """``mlkit feedback``: one label from the command line, or a file of them."""
    import json  # about 1 ms that mlkit --help need not pay

    from mlkit.ops import abtest
    from mlkit.serve import predlog

    single = args.request_id is not None
    if single == bool(args.labels) or (single and args.label is None):
        raise ParameterError(
            "mlkit feedback needs either --labels FILE or REQUEST_ID LABEL (not both). Pass "
            "mlkit feedback digits --labels labels.csv, or mlkit feedback digits REQUEST_ID 3."
        )
    if single:
        try:
            label = json.loads(args.label)
        except json.JSONDecodeError:
            label = args.label  # a class name
        labels, source = {args.request_id: label}, "cli"
    else:
        labels, source = abtest.load_labels(Path(args.labels)), str(args.labels)
    log = predlog.open_log(args.name, args.log)
    try:
        written = log.add_feedback(labels, source)
    finally:
        log.close()
    print(f"stored {written} label{'s' if written != 1 else ''} in {log.shown_url}")
    return EXIT_OK


def cmd_monitor(args: argparse.Namespace) -> int:
    """``mlkit monitor``: exit 1 when the run failed or anything drifted."""
    from mlkit.ops import monitor
    from mlkit.registry.store import parse_target

    if bool(args.model) == bool(args.demo):
        raise ParameterError(
            "mlkit monitor needs exactly one of NAME[:ALIAS] or --demo. Pass mlkit monitor "
            "digits:production, or mlkit monitor --demo -p shift 1.0 for the built-in demo."
        )
    name, alias = parse_target(args.model or "")
    info = monitor.monitor(
        name,
        alias,
        window=args.window,
        alpha=args.alpha,
        log=args.log,
        params=dict(args.param or []),
        from_cli=True,
        tracking=args.tracking,
        progress=not args.quiet,
    )
    common.print_run_summary(info)
    if info.get("html"):
        print(f"  report:   {info['html']}")
    if info["status"] != "completed":
        return EXIT_FAILED
    # 1 when any feature or the predictions drifted: a scheduler can act on it.
    return EXIT_FAILED if (info.get("result") or {}).get("drift/detected") else EXIT_OK
