"""Operations on served models: ``mlkit abtest report``, ``feedback``, ``monitor``, ``skew``,
``replay``, ``log``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mlkit.cli import _common as common
from mlkit.cli._common import EXIT_FAILED, EXIT_OK
from mlkit.errors import CheckFailedError, ParameterError


def add_parsers(commands: common.Subcommands) -> None:
    """Add ``mlkit abtest``, ``feedback``, ``monitor``, ``skew``, ``replay`` and ``log``."""
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
    _add_skew(commands)
    _add_replay(commands)
    _add_log(commands)


def _add_log(commands: common.Subcommands) -> None:
    log = common.add_group(commands, "log")
    p = common.add_command(
        log,
        "verify",
        cmd_log_verify,
        "Walk the hash chain of a prediction log from its first row; exit 1 naming the first "
        "row that was changed, removed or inserted out of order.",
        parents=[common.LOG, common.JSON],
    )
    p.add_argument("name", metavar="NAME", help="the registered model whose log to verify")
    p.add_argument(
        "--head",
        metavar="ID:HASH",
        help="a head printed by an earlier verify: fail if that row is gone or changed (rows "
        "cut from the end leave a shorter chain that verifies on its own)",
    )


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


def _add_log_comparison(
    commands: common.Subcommands, name: str, func: Any, *, model: str, window: str, other: str
) -> argparse.ArgumentParser:
    """What ``skew`` and ``replay`` share: the served model, the log, the window of its
    answers, a regression tolerance and the largest differences to list."""
    p = common.add_command(
        commands,
        name,
        func,
        parents=[
            common.prediction_log(
                "prediction log: sqlite:///PATH, a SQLite file or postgresql://... (default: "
                "the SQLite file beside the model)"
            ),
            common.JSON,
        ],
    )
    p.add_argument("model", metavar="NAME[:ALIAS]", help=model)
    p.add_argument("--window", type=int, default=1000, help=window)
    p.add_argument(
        "--tolerance",
        type=float,
        metavar="T",
        help=f"regression: an example disagrees when |{other}| > T",
    )
    p.add_argument(
        "--top", type=int, default=10, help="largest disagreements to list with their inputs"
    )
    return p


def _add_skew(commands: common.Subcommands) -> None:
    p = _add_log_comparison(
        commands,
        "skew",
        cmd_skew,
        model="the served model and alias (default production): only answers of the version "
        "it points to now are compared",
        window="latest examples both models answered to compare",
        other="shadow - primary",
    )
    p.add_argument(
        "--max-disagreement",
        type=float,
        metavar="RATE",
        help="a check: exit 1 when the lower end of the disagreement rate's 95%% interval is "
        "above RATE",
    )


def _add_replay(commands: common.Subcommands) -> None:
    p = _add_log_comparison(
        commands,
        "replay",
        cmd_replay,
        model="the served model and alias (default production): the logged requests of the "
        "version it points to now are replayed",
        window="latest answered examples to replay",
        other="candidate - production",
    )
    p.add_argument(
        "--candidate",
        required=True,
        metavar="ALIAS|vN",
        help="the version to score offline on production's logged inputs",
    )


def _print_report(report: dict[str, Any], formatter: Any, as_json: bool) -> None:
    """A skew or replay report: its figures as JSON (without the listed differences), or
    the formatted text."""
    if as_json:
        common.print_json({k: v for k, v in report.items() if k != "differences"})
    else:
        print(formatter(report), flush=True)


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


def cmd_skew(args: argparse.Namespace) -> int:
    """``mlkit skew``: exit 1 when --max-disagreement is crossed."""
    from mlkit.ops import skew
    from mlkit.registry.store import parse_target

    name, alias = parse_target(args.model)
    report = skew.skew(
        name,
        alias,
        window=args.window,
        max_disagreement=args.max_disagreement,
        tolerance=args.tolerance,
        top=args.top,
        log=args.log,
    )
    _print_report(report, skew.format_report, args.json)
    return EXIT_FAILED if report["crossed"] else EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    """``mlkit replay``: a report and its record; exit 0 once written."""
    from mlkit.ops import replay
    from mlkit.registry.store import parse_target

    name, alias = parse_target(args.model)
    report = replay.replay(
        name,
        args.candidate,
        alias,
        window=args.window,
        tolerance=args.tolerance,
        top=args.top,
        log=args.log,
    )
    _print_report(report, replay.format_report, args.json)
    return EXIT_OK


def cmd_log_verify(args: argparse.Namespace) -> int:
    """``mlkit log verify``: both tables' chains; exit 1 at the first bad row."""
    from dataclasses import asdict

    from mlkit.serve import predlog

    url = args.log or predlog.default_url(args.name)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        raise ParameterError(
            f"No prediction log at {url[len('sqlite:///') :]}: check NAME ({args.name!r}) or "
            "pass --log URL."
        )
    head = _parse_head(args.head) if args.head else None
    log = predlog.open_log(args.name, args.log)
    try:
        reports = log.verify()
        problems = [f"table {r.table}, {r.first_break}" for r in reports if not r.ok]
        if head is not None and reports[0].ok:
            problems += _head_problems(log, reports[0].head, head)
    finally:
        log.close()
    if args.json:
        tables = [
            {**asdict(r), "first_break": r.first_break and str(r.first_break)} for r in reports
        ]
        common.print_json(
            {"log": log.shown_url, "ok": not problems, "problems": problems, "tables": tables}
        )
    else:
        print(f"prediction log {log.shown_url}")
        for report in reports:
            print(f"  {report.summary()}")
    if problems:
        raise CheckFailedError(
            f"The prediction log {log.shown_url} has been tampered with: {'; '.join(problems)}."
        )
    return EXIT_OK


def _parse_head(text: str) -> tuple[int, str]:
    """``ID:HASH`` as ``mlkit log verify`` prints a head."""
    row_id, _, digest = text.partition(":")
    if not row_id.isdigit() or len(digest) != 64:
        raise ParameterError(
            f"--head must be ID:HASH as mlkit log verify prints it (e.g. 42:3f9c...), got {text!r}."
        )
    return int(row_id), digest


def _head_problems(log: Any, now: tuple[int, str] | None, kept: tuple[int, str]) -> list[str]:
    """Why the verified predictions chain (head ``now``) does not reach the ``kept`` head."""
    if now is None or now[0] < kept[0]:
        return [f"row {kept[0]}, the head you kept, is gone: rows were cut from the end"]
    if log.row_hash(kept[0]) != kept[1]:
        return [f"row {kept[0]}, the head you kept, has another hash: the log was re-written"]
    return []
