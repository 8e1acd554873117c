"""The ``mlkit`` command: a table of subcommands, each importing what it needs late.

Exit codes: 0 success, 1 the run (or reproduction) failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mlkit.errors import NotFoundError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _load_params_file(path: str) -> dict[str, Any]:
    from pathlib import Path

    import yaml

    from mlkit.errors import ParameterError

    file = Path(path)
    if not file.exists():
        raise NotFoundError(f"Parameters file '{path}' does not exist (-f {path}).")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParameterError(f"Parameters file '{path}' is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParameterError(
            f"Parameters file '{path}' must hold a mapping of name: value, such as 'lr: 0.001'."
        )
    return data


def cmd_run(args: argparse.Namespace) -> int:
    from mlkit.run import runner

    given: dict[str, Any] = {}
    for path in args.file or []:
        given.update(_load_params_file(path))
    for name, value in args.param or []:
        given[name] = value
    info = runner.run(
        args.notebook,
        given,
        experiment=args.experiment,
        from_cli=True,
        cell_timeout=args.timeout,
        tracking=args.tracking,
        progress=not args.quiet,
        engine=args.engine,
    )
    _print_run_summary(info)
    return EXIT_OK if info["status"] == "completed" else EXIT_FAILED


def _print_run_summary(info: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)  # paths stay whole for copy-paste
    ok = info["status"] == "completed"
    style = "green" if ok else "red"
    console.print(
        f"[{style}]run {info['id']} {info['status']}[/{style}]"
        + (f": {info['reason']}" if info.get("reason") else "")
    )
    console.print(f"  record:   {info['path']}")
    console.print(f"  notebook: {info['path']}/output.ipynb")
    wandb = info.get("wandb") or {}
    if wandb.get("dir"):
        console.print(f"  W&B run:  {wandb['dir']} ({wandb.get('mode')})")
    if wandb.get("url"):
        console.print(f"  W&B url:  {wandb['url']}")
    for key, value in (info.get("result") or {}).items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        console.print(f"  {key} = {shown}")


def cmd_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from mlkit.run.params import read_signature

    signature = read_signature(args.notebook)
    if args.json:
        import json

        print(json.dumps([p.to_dict() for p in signature.parameters], indent=2))
        return EXIT_OK
    table = Table(title=f"Parameters of {args.notebook}")
    for column in ("name", "type", "default", "rule", "help"):
        table.add_column(column)
    for p in signature.parameters:
        table.add_row(p.name, p.type, repr(p.default), p.rule.text if p.rule else "", p.help)
    Console().print(table)
    return EXIT_OK


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _duration(info: dict[str, Any]) -> str:
    seconds = info.get("duration")
    return f"{seconds:.1f}s" if isinstance(seconds, int | float) else ""


def cmd_runs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from mlkit.record_store import list_runs

    rows = list_runs(args.experiment)
    if args.json:
        import json

        print(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    if not rows:
        print("No runs yet. Start one with: mlkit run templates/classify.ipynb")
        return EXIT_OK
    # Key parameters: those that vary across the listed runs, else the first few.
    names: list[str] = []
    for row in rows:
        names.extend(k for k in row["params"] if k not in names)
    varying = [n for n in names if len({repr(r["params"].get(n)) for r in rows}) > 1]
    keys = (varying or names)[: args.max_params]
    metrics: list[str] = []
    for row in rows:
        metrics.extend(k for k in (row.get("result") or {}) if k not in metrics)
    metrics = metrics[: args.max_metrics]
    table = Table()
    table.add_column("id", no_wrap=True)
    for column in ("experiment", "status", *keys, *metrics, "duration"):
        table.add_column(column, overflow="fold")
    colors = {"completed": "green", "failed": "red", "crashed": "red", "running": "yellow"}
    for row in rows[: args.limit]:
        color = colors.get(row.get("status", ""), "white")
        table.add_row(
            row["id"],
            row.get("experiment", ""),
            f"[{color}]{row.get('status', '?')}[/{color}]",
            *[_fmt(row["params"].get(k)) for k in keys],
            *[_fmt((row.get("result") or {}).get(m)) for m in metrics],
            _duration(row),
        )
    Console().print(table)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from mlkit.record_store import find_run, load_run

    info = load_run(find_run(args.run))
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return EXIT_OK
    console = Console(highlight=False)
    console.print(f"[bold]{info['id']}[/bold]  {info.get('status')}  {info.get('reason') or ''}")
    for key in ("experiment", "notebook", "started", "ended", "path", "reproduce_of"):
        if info.get(key):
            console.print(f"  {key}: {info[key]}")
    if info.get("duration") is not None:
        console.print(f"  duration: {_duration(info)}")
    if info.get("error"):
        err = info["error"]
        console.print(
            f"  error: cell {err.get('cell_index')}: {err.get('ename')}: {err.get('evalue')}"
        )
    if (info.get("wandb") or {}).get("dir"):
        console.print(f"  W&B run: {info['wandb']['dir']}")
    console.print("  parameters:")
    for key, value in info["params"].items():
        console.print(f"    {key} = {value!r}")
    if info.get("result"):
        console.print("  result:")
        for key, value in info["result"].items():
            console.print(f"    {key} = {_fmt(value)}")
    return EXIT_OK


def cmd_reproduce(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from mlkit.run import runner

    out = runner.reproduce(args.run, progress=not args.quiet, tracking=args.tracking)
    console = Console(highlight=False)
    for warning in out["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    table = Table(title=f"{out['old']['id']} reproduced as {out['new']['id']}")
    for column in ("metric", "original", "reproduced", "equal"):
        table.add_column(column)
    for row in out["comparison"]:
        mark = "[green]yes[/green]" if row["equal"] else "[red]no[/red]"
        table.add_row(row["metric"], repr(row["old"]), repr(row["new"]), mark)
    console.print(table)
    if out["new"]["status"] != "completed":
        console.print(f"[red]the reproduction failed: {out['new'].get('reason')}[/red]")
        return EXIT_FAILED
    if out["match"]:
        console.print("[green]metrics reproduced exactly[/green]")
        return EXIT_OK
    console.print("[red]metrics differ[/red]")
    return EXIT_FAILED


def cmd_evaluate(args: argparse.Namespace) -> int:
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
    # The headline numbers only; per-group and per-slice values are in result.json.
    headline = (
        "test/",
        "fairness/demographic",
        "fairness/equalized",
        "calibration/",
        "attribution/d",
    )
    for key, value in (info.get("result") or {}).items():
        if key.startswith(headline):
            console.print(f"  {key} = {_fmt(value)}")
    return EXIT_OK if ok else EXIT_FAILED


def cmd_sweep(args: argparse.Namespace) -> int:
    from rich.console import Console

    from mlkit.sweep import config, driver

    fixed = {name: value for name, value in args.param or []}
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
        fixed=fixed,
        from_cli=True,
        tracking=args.tracking,
        engine=args.engine,
    )
    summary = driver.run(cfg, progress=not args.quiet)
    console = Console(highlight=False, soft_wrap=True)
    console.print(
        f"study {summary.study}: {summary.n_complete} complete, {summary.n_pruned} pruned, "
        f"{summary.n_failed} failed in {summary.seconds:.0f}s  (storage {summary.storage})"
    )
    objective = ", ".join(f"{m} ({d})" for m, d in zip(cfg.objectives, cfg.directions, strict=True))
    if summary.best:
        best = summary.best
        console.print(f"best trial #{best['number']}: {objective} = {best['values'][0]:.4f}")
        for key, value in (best.get("result") or {}).items():
            if key.startswith("test/"):
                console.print(f"  {key} = {_fmt(value)}")
        console.print(f"  params: {best['params']}")
        console.print(f"  record: {best['run_path']}")
    for trial in summary.pareto:
        console.print(f"Pareto trial #{trial['number']}: {trial['values']}  {trial['params']}")
    console.print(f"report:   mlkit sweep report {summary.study}")
    console.print(f"best as parameters: mlkit sweep best {summary.study} > best.yaml")
    return EXIT_OK if summary.n_complete else EXIT_FAILED


def cmd_sweep_best(args: argparse.Namespace) -> int:
    import yaml

    from mlkit import storage as storages
    from mlkit.sweep import results

    url = storages.find_storage(args.study, storage=args.storage)
    print(yaml.safe_dump(results.best_params(args.study, url), sort_keys=False), end="")
    return EXIT_OK


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from mlkit.sweep import report

    out = report.sweep_report(args.study, storage=args.storage, progress=not args.quiet)
    print(f"report notebook: {out['notebook']}")
    print(f"report page:     {out['html']}")
    return EXIT_OK if out["status"] == "completed" else EXIT_FAILED


def cmd_model_register(args: argparse.Namespace) -> int:
    from mlkit.registry import store

    if bool(args.run) == bool(args.study):
        from mlkit.errors import ParameterError

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
        print(f"  {key} = {_fmt(value)}")
    print(f"  card:   {entry['path']}/card.md")
    print(f"promote:  mlkit model promote {args.name} v{entry['version']} --alias production")
    return EXIT_OK


def cmd_model_promote(args: argparse.Namespace) -> int:
    from mlkit.registry import aliases

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


def cmd_model_bounds(args: argparse.Namespace) -> int:
    from mlkit.registry import promotion

    if args.set or args.clear:
        bounds = promotion.set_bounds(args.name, args.set or [], clear=args.clear)
    else:
        bounds = promotion.get_bounds(args.name)
    if args.json:
        import json

        print(json.dumps(bounds, indent=2))
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


def cmd_model_rollback(args: argparse.Namespace) -> int:
    from mlkit.registry import aliases

    out = aliases.rollback(args.name, args.alias, tracking=args.tracking)
    print(f"{args.name}:{out['alias']} -> v{out['version']} (rolled back from v{out['previous']})")
    return EXIT_OK


def cmd_model_policy(args: argparse.Namespace) -> int:
    from mlkit.ops import guard

    if args.set or args.clear:
        rules = guard.set_policy(args.name, args.alias, args.set or [], clear=args.clear)
    else:
        rules = guard.policy(args.name, args.alias)
    if args.json:
        import json

        print(json.dumps(rules, indent=2))
        return EXIT_OK
    print(f"{args.name}:{args.alias} rollback policy (mlkit model guard; * = set, else default):")
    from mlkit.registry import aliases

    stored = aliases.get_policy(args.name, args.alias)
    for key, value in rules.items():
        print(f"  {'*' if key in stored else ' '} {key} = {value}")
    return EXIT_OK


def cmd_model_guard(args: argparse.Namespace) -> int:
    import time

    from mlkit.errors import ParameterError
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
            import json

            print(json.dumps(report, indent=2), flush=True)
        else:
            print(guard.format_report(report), flush=True)
        if not args.every:
            return EXIT_FAILED if report["crossed"] else EXIT_OK
        time.sleep(args.every)


def cmd_model_list(args: argparse.Namespace) -> int:
    from mlkit.registry import store

    rows = store.list_models()
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("No registered models. Register one with: mlkit model register RUN --name NAME")
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("name", "versions", "latest", "aliases"):
        table.add_column(column)
    for row in rows:
        aliases = ", ".join(f"{a}=v{v}" for a, v in row["aliases"].items())
        table.add_row(row["name"], str(row["versions"]), f"v{row['latest']}", aliases)
    Console().print(table)
    return EXIT_OK


def cmd_model_show(args: argparse.Namespace) -> int:
    from mlkit.registry import promotion, store

    reg = store.show(args.name)
    if args.json:
        import json

        print(json.dumps(reg, indent=2))
        return EXIT_OK
    from rich.console import Console

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
        metrics = "  ".join(f"{k}={_fmt(v)}" for k, v in entry["metrics"].items())
        console.print(
            f"  v{entry['version']}  {entry['created']}  run {entry['run_id']}  "
            f"sha256 {entry['sha256'][:12]}  {metrics}"
        )
        console.print(f"      card: {entry['card']}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from mlkit.serve import app

    app.serve(
        args.model,
        host=args.host,
        port=args.port,
        log_url=args.log,
        log_sync=args.log_sync,
        max_body_bytes=args.max_body_bytes,
        threads=args.threads,
        shadow=args.shadow,
        ab=args.ab,
        follow_s=args.follow_every,
    )
    return EXIT_OK


def cmd_abtest_report(args: argparse.Namespace) -> int:
    from pathlib import Path

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
    import json
    from pathlib import Path

    from mlkit.errors import ParameterError
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
    from mlkit.ops import monitor
    from mlkit.registry.store import parse_target

    if bool(args.model) == bool(args.demo):
        from mlkit.errors import ParameterError

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
        params={key: value for key, value in args.param or []},
        from_cli=True,
        tracking=args.tracking,
        progress=not args.quiet,
    )
    _print_run_summary(info)
    if info.get("html"):
        print(f"  report:   {info['html']}")
    if info["status"] != "completed":
        return EXIT_FAILED
    # 1 when any feature or the predictions drifted: a scheduler can act on it.
    return EXIT_FAILED if (info.get("result") or {}).get("drift/detected") else EXIT_OK


def build_model_parser(sub: Any) -> argparse.ArgumentParser:
    help = "Model registry: register, promote, rollback, guard, policy, bounds, list, show."
    model = sub.add_parser("model", help=help, description=help)
    model.set_defaults(func=lambda _args: (model.print_help(), EXIT_USAGE)[1])
    msub = model.add_subparsers(dest="model_command", metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str, tracking: bool):
        p = msub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if tracking:
            p.add_argument("--tracking", choices=["offline", "online", "disabled"])
        return p

    p = add(
        "register", cmd_model_register, "Register a completed run's model as a new version.", True
    )
    p.add_argument("run", nargs="?", help="run id (or a unique prefix) or run directory")
    p.add_argument("--name", required=True, help="registered model name, e.g. digits")
    p.add_argument("--study", help="register the run of this study's best trial instead")
    p.add_argument("--storage", metavar="URL", help="the study's storage (with --study)")
    p = add("promote", cmd_model_promote, "Point an alias (production) at a version.", True)
    p.add_argument("name")
    p.add_argument("version", help="v3 or 3")
    p.add_argument("--alias", default="production")
    p.add_argument(
        "--force",
        action="store_true",
        help="promote even if the evaluation breaks the model's bounds (needs --reason)",
    )
    p.add_argument("--reason", help="why, kept in the alias history (required with --force)")
    p = add("rollback", cmd_model_rollback, "Move an alias back to its previous version.", True)
    p.add_argument("name")
    p.add_argument("--alias", default="production")
    p = add(
        "guard",
        cmd_model_guard,
        "Check an alias's live version against its rollback policy; roll back when a bound is "
        "crossed (exit 1).",
        True,
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
    p.add_argument("--log", metavar="URL", help="prediction log (default: SQLite beside the model)")
    p.add_argument(
        "--every",
        type=float,
        metavar="SECONDS",
        help="check again every SECONDS until interrupted (default: once)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p = add(
        "policy",
        cmd_model_policy,
        "Show or set the rollback policy mlkit model guard applies to an alias.",
        False,
    )
    p.add_argument("name")
    p.add_argument("--alias", default="production")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="max_error_rate, min_labels, max_server_error_rate, min_requests, drift "
        "(any, predictions, off), monitor_window; repeat for more",
    )
    p.add_argument("--clear", action="store_true", help="back to the defaults (before any --set)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add(
        "bounds",
        cmd_model_bounds,
        "Show or set the evaluation bounds that gate promotion of a model.",
        False,
    )
    p.add_argument("name")
    p.add_argument(
        "--set",
        action="append",
        metavar="METRIC=VALUE",
        help="METRIC=0.1 (at most) or METRIC>=0.9 (at least); repeat for more metrics",
    )
    p.add_argument("--clear", action="store_true", help="drop every bound (before any --set)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add("list", cmd_model_list, "List registered models.", False)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add("show", cmd_model_show, "Show a model's versions, aliases and cards.", False)
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print JSON")
    return model


def build_sweep_tools_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlkit sweep", description="Read a finished study.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, func, help in (
        ("best", cmd_sweep_best, "Print the best trial's parameters as YAML for mlkit run -f."),
        (
            "report",
            cmd_sweep_report,
            "Execute templates/sweep_report.ipynb into a notebook and an HTML page.",
        ),
    ):
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument("study", help="study name")
        p.add_argument("--storage", help="storage URL (default: experiments/STUDY/study.journal)")
        if name == "report":
            p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlkit",
        description="Run training notebooks as tracked, reproducible experiments.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str):
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add("run", cmd_run, "Execute a notebook with parameters as a recorded run.")
    p.add_argument("notebook", help="the notebook to run, e.g. templates/classify.ipynb")
    p.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="set a parameter (repeatable); converted to its declared type",
    )
    p.add_argument(
        "-f",
        "--file",
        action="append",
        metavar="PARAMS.yaml",
        help="YAML file of parameters; -p values override it",
    )
    p.add_argument("--experiment", help="experiment name (default: the notebook's name)")
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="fail the run when any one cell runs longer than this",
    )
    p.add_argument(
        "--tracking",
        choices=["offline", "online", "disabled"],
        help="W&B mode (default: $WANDB_MODE, else offline)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--engine",
        choices=["papermill", "warm"],
        default="papermill",
        help="papermill: a fresh kernel (default); warm: a kernel with the heavy "
        "imports done, reused within this process",
    )

    p = add(
        "sweep",
        cmd_sweep,
        "Optuna sweep: every trial an executed notebook with its record. "
        "Also: mlkit sweep best STUDY, mlkit sweep report STUDY.",
    )
    p.add_argument("notebook", help="the notebook to sweep, e.g. templates/classify.ipynb")
    p.add_argument("--space", required=True, metavar="SPACE.yaml", help="search-space file")
    p.add_argument("--study", help="study name (default: NOTEBOOK-sweep); the same resumes")
    p.add_argument("--trials", type=int, default=20, help="trials in total, across workers")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop asking after this")
    p.add_argument("--jobs", type=int, default=1, help="kernels running at once on this machine")
    p.add_argument(
        "--storage",
        metavar="URL",
        help="journal file path (default), sqlite:///x.db or postgresql://...",
    )
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
    p.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="fix a parameter for every trial",
    )
    p.add_argument("--tracking", choices=["offline", "online", "disabled"])
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")

    p = add("inspect", cmd_inspect, "Show a notebook's parameters: type, default, rule, help.")
    p.add_argument("notebook")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("runs", cmd_runs, "List runs: id, status, key parameters, metrics, duration.")
    p.add_argument("experiment", nargs="?", help="only this experiment")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--max-params", type=int, default=6)
    p.add_argument("--max-metrics", type=int, default=4)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("show", cmd_show, "Show one run's record.")
    p.add_argument("run", help="run id (or a unique prefix) or run directory")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add(
        "reproduce",
        cmd_reproduce,
        "Re-execute a run from its record and check that the metrics match exactly.",
    )
    p.add_argument("run", help="run id (or a unique prefix) or run directory")
    p.add_argument("--tracking", choices=["offline", "online", "disabled"])
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = add(
        "evaluate",
        cmd_evaluate,
        "Evaluate a run's model: fairness by group, attributions, calibration, errors by slice.",
    )
    p.add_argument(
        "run",
        metavar="RUN_OR_MODEL",
        help="run id (or a unique prefix), run directory, or a registered model NAME[:alias]",
    )
    p.add_argument("--sensitive", metavar="COLUMN", help="sensitive attribute to compare groups by")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="limit for any one cell")
    p.add_argument("--tracking", choices=["offline", "online", "disabled"])
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    build_model_parser(sub)

    p = add(
        "serve",
        cmd_serve,
        "Serve a registered model over HTTP (FastAPI, uvicorn); every response is logged.",
    )
    p.add_argument(
        "model",
        nargs="?",
        metavar="NAME[:ALIAS]",
        help="model and alias (default production); leave out with --ab",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--log",
        metavar="URL",
        help="prediction log: sqlite:///PATH or postgresql://... (default: SQLite beside "
        "the model)",
    )
    p.add_argument(
        "--log-sync",
        choices=["normal", "full"],
        default="normal",
        help="SQLite log durability: normal (a killed server loses no row) or full (also fsync "
        "each commit, so a power cut loses none; slower)",
    )
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="larger bodies get 413")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--shadow",
        metavar="NAME[:ALIAS]",
        help="also score every input with this model after the response; logged, never returned",
    )
    p.add_argument(
        "--ab",
        metavar="NAME:A=W,NAME:B=W",
        help="split traffic between aliases or versions (weights sum to 1), sticky per "
        "X-Client-ID header, e.g. digits:production=0.9,digits:v3=0.1",
    )
    p.add_argument(
        "--follow-every",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how often to check whether a served alias moved (promote, rollback) and swap in "
        "its new version without a restart; 0 never checks (default 2; NAME:v3 pins a version)",
    )

    help = "A/B tests of served variants: report."
    abtest = sub.add_parser("abtest", help=help, description=help)
    abtest.set_defaults(func=lambda _args: (abtest.print_help(), EXIT_USAGE)[1])
    absub = abtest.add_subparsers(dest="abtest_command", metavar="COMMAND")
    help = "Compare the variants of mlkit serve --ab on labelled traffic (Wilson CI, z-test)."
    p = absub.add_parser("report", help=help, description=help)
    p.set_defaults(func=cmd_abtest_report)
    p.add_argument("name", metavar="NAME", help="the registered model that was served with --ab")
    p.add_argument(
        "--labels",
        metavar="FILE",
        help="true labels by request id: CSV with header request_id,label, or JSON "
        '{"<request_id>": label} (a list of labels for a batch request); default: the '
        "labels stored with mlkit feedback",
    )
    p.add_argument(
        "--log",
        metavar="URL",
        help="prediction log: sqlite:///PATH or postgresql://... (default: SQLite beside "
        "the model)",
    )
    p.add_argument("--metric", choices=["accuracy", "error_rate"], default="accuracy")
    p.add_argument(
        "--control",
        metavar="VARIANT",
        help="variant to test the others against (default: lowest version)",
    )

    p = add(
        "feedback",
        cmd_feedback,
        "Store true labels of logged predictions (append-only; the newest label wins).",
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
    p.add_argument(
        "--log",
        metavar="URL",
        help="prediction log: sqlite:///PATH or postgresql://... (default: SQLite beside "
        "the model)",
    )

    p = add(
        "monitor",
        cmd_monitor,
        "Drift of a served model's logged traffic against its training data; exit 1 on drift.",
    )
    p.add_argument(
        "model", nargs="?", metavar="NAME[:ALIAS]", help="model and alias (default production)"
    )
    p.add_argument("--window", type=int, default=1000, help="latest answered examples to compare")
    p.add_argument(
        "--alpha", type=float, default=0.01, help="significance level after the Holm correction"
    )
    p.add_argument(
        "--log",
        metavar="URL",
        help="prediction log: sqlite:///PATH, a SQLite file or postgresql://... (default: the "
        "SQLite file beside the model)",
    )
    p.add_argument(
        "--demo", action="store_true", help="the template's built-in digits_flat demo instead"
    )
    p.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="another parameter of templates/monitor.ipynb, e.g. -p shift 1.0 (demo)",
    )
    p.add_argument("--tracking", choices=["offline", "online", "disabled"])
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def _version() -> str:
    from mlkit import __version__

    return f"mlkit {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"] and argv[1:2] and argv[1] in ("best", "report"):
        parser = build_sweep_tools_parser()
        argv = argv[1:]
    else:
        parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from mlkit.errors import MlkitError

    try:
        return args.func(args)
    except MlkitError as exc:
        print(f"mlkit {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
