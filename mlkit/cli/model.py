"""``mlkit model``: register, promote, rollback, guard, policy, bounds, list and show."""

from __future__ import annotations

import argparse
import time

from mlkit.cli import _common as common
from mlkit.cli._common import EXIT_FAILED, EXIT_OK, fmt
from mlkit.cli.retrain import MARGIN
from mlkit.errors import ParameterError

NAME = common.parent("name")
ALIAS = common.parent("--alias", default="production")


def add_parsers(commands: common.Subcommands) -> None:
    """Add ``mlkit model`` and its subcommands."""
    model = common.add_group(
        commands,
        "model",
    )
    _add_lifecycle(model)
    _add_safeguards(model)
    help = "List registered models."
    common.add_command(model, "list", cmd_model_list, help, [common.JSON])
    help = "Show a model's versions, aliases and cards."
    common.add_command(model, "show", cmd_model_show, help, [NAME, common.JSON])


def _add_lifecycle(model: common.Subcommands) -> None:
    help = "Register a completed run's model as a new version."
    parents = [common.storage("the study's storage (with --study)"), common.TRACKING]
    p = common.add_command(model, "register", cmd_model_register, help, parents)
    p.add_argument("run", nargs="?", help=common.RUN_HELP)
    p.add_argument("--name", required=True, help="registered model name, e.g. digits")
    p.add_argument("--study", help="register the run of this study's best trial instead")

    help = "Point an alias (production) at a version."
    p = common.add_command(
        model, "promote", cmd_model_promote, help, [NAME, ALIAS, common.TRACKING, MARGIN]
    )
    p.add_argument("version", help="v3 or 3")
    p.add_argument(
        "--force",
        action="store_true",
        help="promote even if the evaluation breaks the model's bounds (needs --reason)",
    )
    p.add_argument("--reason", help="why, kept in the alias history (required with --force)")
    p.add_argument(
        "--evidence",
        action="store_true",
        help="first compare the version with the alias's current one on the version's held-out "
        "rows; promote only if it is not worse by more than --margin (else exit 1, kept in the "
        "alias history)",
    )

    help = "Move an alias back to its previous version."
    common.add_command(model, "rollback", cmd_model_rollback, help, [NAME, ALIAS, common.TRACKING])


def _add_safeguards(model: common.Subcommands) -> None:
    p = common.add_command(
        model,
        "guard",
        cmd_model_guard,
        "Check an alias's live version against its rollback policy; roll back when a bound is "
        "crossed (exit 1).",
        parents=[
            common.LOG,
            common.TRACKING,
            common.JSON,
        ],
    )
    p.add_argument("target", metavar="NAME[:ALIAS]", help="model and alias (default production)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a policy value for this check, e.g. max_error_rate=0.1",
    )
    p.add_argument("--dry-run", action="store_true", help="report, never move the alias")
    p.add_argument(
        "--monitor",
        action="store_true",
        help="run mlkit monitor over this version's answers first, so drift is current",
    )
    p.add_argument(
        "--every",
        type=float,
        metavar="SECONDS",
        help="check again every SECONDS until interrupted (default: once)",
    )

    help = "Show or set the rollback policy mlkit model guard applies to an alias."
    p = common.add_command(model, "policy", cmd_model_policy, help, [NAME, ALIAS, common.JSON])
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="max_error_rate, min_labels, max_server_error_rate, min_requests, drift "
        "(any, predictions, off), monitor_window; repeat for more",
    )
    p.add_argument("--clear", action="store_true", help="back to the defaults (before any --set)")

    help = "Show or set the evaluation bounds that gate promotion of a model."
    p = common.add_command(model, "bounds", cmd_model_bounds, help, [NAME, common.JSON])
    p.add_argument(
        "--set",
        action="append",
        metavar="METRIC=VALUE",
        help="METRIC=0.1 (at most) or METRIC>=0.9 (at least); repeat for more metrics",
    )
    p.add_argument("--clear", action="store_true", help="drop every bound (before any --set)")


def cmd_model_register(args: argparse.Namespace) -> int:
    """``mlkit model register``: a run, or a study's best trial, as a new version."""
    from mlkit.registry import store

    if bool(args.run) == bool(args.study):
        raise ParameterError(
            "mlkit model register needs exactly one of RUN or --study STUDY. Pass "
            f"mlkit model register RUN --name {args.name}, or --study STUDY for its best trial."
        )
    if args.study:
        entry = store.register_best(
            args.study, args.name, storage=args.storage, tracking=args.tracking
        )
    else:
        entry = store.register(args.run, args.name, tracking=args.tracking)
    print(f"registered {args.name} v{entry['version']} from run {entry['run_id']}")
    print(f"  sha256: {entry['sha256']}")
    for key, value in entry["metrics"].items():
        print(f"  {key} = {fmt(value)}")
    print(f"  card:   {entry['path']}/card.md")
    print(f"promote:  mlkit model promote {args.name} v{entry['version']} --alias production")
    return EXIT_OK


def cmd_model_promote(args: argparse.Namespace) -> int:
    """``mlkit model promote``: through the promotion gate, or past it with a reason."""
    from mlkit.registry import aliases

    if args.evidence or args.margin is not None:
        return _promote_on_evidence(args)
    out = aliases.promote(
        args.name,
        args.version,
        args.alias,
        force=args.force,
        reason=args.reason,
        tracking=args.tracking,
    )
    before = f"v{out['previous']}" if out["previous"] else "nothing"
    print(f"{args.name}:{out['alias']} -> v{out['version']} (was {before})")
    if out.get("forced"):
        print(f"forced past the promotion gate, reason recorded: {args.reason.strip()}")
        for violation in out["violations"]:
            print(f"  - {violation}")
    return EXIT_OK


def _promote_on_evidence(args: argparse.Namespace) -> int:
    """``mlkit model promote --evidence``: exit 1 when the comparison keeps the alias still."""
    from mlkit.registry import comparison

    if not args.evidence or args.force or args.reason:
        raise ParameterError(
            "--evidence decides on a comparison and records its own reason: it takes --margin, "
            "not --force or --reason (and --margin needs --evidence). Pass --evidence [--margin "
            "M], or --force --reason TEXT without them."
        )
    margin = comparison.DEFAULT_MARGIN if args.margin is None else args.margin
    out = comparison.promote_on_evidence(
        args.name, args.version, args.alias, margin=margin, tracking=args.tracking
    )
    print(comparison.format_comparison(out["comparison"]))
    return EXIT_OK if out["promoted"] else EXIT_FAILED


def cmd_model_rollback(args: argparse.Namespace) -> int:
    """``mlkit model rollback``: the alias back to its previous version."""
    from mlkit.registry import aliases

    out = aliases.rollback(args.name, args.alias, tracking=args.tracking)
    print(f"{args.name}:{out['alias']} -> v{out['version']} (rolled back from v{out['previous']})")
    return EXIT_OK


def cmd_model_guard(args: argparse.Namespace) -> int:
    """``mlkit model guard``: exit 1 when a bound was crossed (checking once)."""
    from mlkit.ops import guard
    from mlkit.registry.store import parse_target

    name, alias = parse_target(args.target)
    overrides = guard.parse_settings(args.set or [])
    if args.every is not None and not args.every > 0:
        raise ParameterError(
            f"--every must be a number of seconds > 0, got {args.every}. "
            "Leave it out to check once."
        )
    checked = 0
    while True:
        try:
            report = guard.check(
                name,
                alias,
                overrides=overrides,
                dry_run=args.dry_run,
                run_monitor=args.monitor,
                log_url=args.log,
                tracking=args.tracking,
            )
        except Exception as exc:
            # A watcher outlives a log database that blinks: after one good check, a failed
            # one is reported and retried. Bad input fails the first check and exits.
            if not args.every or not checked:
                raise
            print(f"check failed ({type(exc).__name__}: {exc}); again in {args.every} s")
            time.sleep(args.every)
            continue
        checked += 1
        if args.json:
            common.print_json(report)
        else:
            print(guard.format_report(report), flush=True)
        if not args.every:
            return EXIT_FAILED if report["crossed"] else EXIT_OK
        time.sleep(args.every)


def cmd_model_policy(args: argparse.Namespace) -> int:
    """``mlkit model policy``: show the rollback policy, or set it and show it."""
    from mlkit.ops import guard
    from mlkit.registry import aliases

    if args.set or args.clear:
        rules = guard.set_policy(args.name, args.alias, args.set or [], clear=args.clear)
    else:
        rules = guard.policy(args.name, args.alias)
    if args.json:
        common.print_json(rules)
        return EXIT_OK
    print(f"{args.name}:{args.alias} rollback policy (mlkit model guard; * = set, else default):")
    stored = aliases.get_policy(args.name, args.alias)
    for key, value in rules.items():
        print(f"  {'*' if key in stored else ' '} {key} = {value}")
    return EXIT_OK


def cmd_model_bounds(args: argparse.Namespace) -> int:
    """``mlkit model bounds``: show the promotion bounds, or set them and show them."""
    from mlkit.registry import promotion

    if args.set or args.clear:
        bounds = promotion.set_bounds(args.name, args.set or [], clear=args.clear)
    else:
        bounds = promotion.get_bounds(args.name)
    if args.json:
        common.print_json(bounds)
        return EXIT_OK
    if not bounds:
        print(
            f"{args.name} has no promotion bounds; promote is not gated. Set some with: mlkit "
            f"model bounds {args.name} --set fairness/demographic_parity_difference=0.1"
        )
        return EXIT_OK
    print(f"{args.name} promotion bounds (checked against mlkit evaluate's newest result):")
    for metric, bound in bounds.items():
        print(f"  {metric} {promotion.format_bound(bound)}")
    return EXIT_OK


def cmd_model_list(args: argparse.Namespace) -> int:
    """``mlkit model list``: every registered model with its aliases."""
    from rich.console import Console
    from rich.table import Table

    from mlkit.registry import store

    rows = store.list_models()
    if args.json:
        common.print_json(rows)
        return EXIT_OK
    if not rows:
        print("No registered models. Register one with: mlkit model register RUN --name NAME")
        return EXIT_OK
    table = Table()
    for column in ("name", "versions", "latest", "aliases"):
        table.add_column(column)
    for row in rows:
        aliases = ", ".join(f"{a}=v{v}" for a, v in row["aliases"].items())
        table.add_row(row["name"], str(row["versions"]), f"v{row['latest']}", aliases)
    Console().print(table)
    return EXIT_OK


def cmd_model_show(args: argparse.Namespace) -> int:
    """``mlkit model show``: a model's aliases (and how they last moved), bounds, versions."""
    from rich.console import Console

    from mlkit.registry import promotion, store

    reg = store.show(args.name)
    if args.json:
        common.print_json(reg)
        return EXIT_OK
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"[bold]{reg['name']}[/bold]")
    for alias, version in reg["aliases"].items():
        last = (reg["alias_history"].get(alias) or [{}])[-1]
        how = ""
        if last.get("action") == "rollback":
            who = f" by {last['by']}" if last.get("by") else ""
            why = f": {last['reason']}" if last.get("reason") else ""
            how = f"  (rolled back from v{last['from']}{who} at {last['at']}{why})"
        console.print(f"  {alias} -> v{version}{how}", markup=False)
    for metric, bound in (reg.get("bounds") or {}).items():
        console.print(f"  bound: {metric} {promotion.format_bound(bound)}")
    for entry in reg["versions"]:
        metrics = "  ".join(f"{k}={fmt(v)}" for k, v in entry["metrics"].items())
        console.print(
            f"  v{entry['version']}  {entry['created']}  run {entry['run_id']}  "
            f"sha256 {entry['sha256'][:12]}  {metrics}"
        )
        console.print(f"      card: {entry['card']}")
    return EXIT_OK
