"""Runs: ``mlkit run``, ``inspect``, ``runs``, ``show`` and ``reproduce``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mlkit.cli import _common as common
from mlkit.cli._common import EXIT_FAILED, EXIT_OK, fmt
from mlkit.errors import ParameterError, UnsafeArtifactError


def add_parsers(commands: common.Subcommands) -> None:
    """Add the commands that execute and read runs."""
    p = common.add_command(
        commands,
        "run",
        cmd_run,
        parents=[
            common.params("set a parameter (repeatable); converted to its declared type"),
            common.CELL_TIMEOUT,
            common.TRACKING,
            common.QUIET,
        ],
    )
    p.add_argument("notebook", help="the notebook to run, e.g. templates/classify.ipynb")
    p.add_argument(
        "-f",
        "--file",
        action="append",
        metavar="PARAMS.yaml",
        help="YAML file of parameters; -p values override it",
    )
    p.add_argument("--experiment", help="experiment name (default: the notebook's name)")
    p.add_argument(
        "--engine",
        choices=["papermill", "warm"],
        default="papermill",
        help="papermill: a fresh kernel (default); warm: a kernel with the heavy "
        "imports done, reused within this process",
    )

    p = common.add_command(commands, "inspect", cmd_inspect, parents=[common.JSON])
    p.add_argument("notebook")

    p = common.add_command(commands, "runs", cmd_runs, parents=[common.JSON])
    p.add_argument("experiment", nargs="?", help="only this experiment")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="NAME OP VALUE",
        help="keep the runs where this holds (repeatable: all must); OP is = != > >= < <=, "
        "NAME a parameter or a metric: --where 'test/accuracy>0.95' --where model=cnn",
    )
    p.add_argument("--sort", metavar="NAME", help="order by this parameter or metric")
    p.add_argument("--desc", action="store_true", help="with --sort: largest first")
    p.add_argument(
        "--csv",
        action="store_true",
        help="write the runs as CSV to stdout: the columns of mlkit.runs()",
    )
    p.add_argument(
        "--limit", type=int, help="at most this many runs (the table shows 50 unless told)"
    )
    p.add_argument("--max-params", type=int, default=6)
    p.add_argument("--max-metrics", type=int, default=4)

    parents = [common.RUN, common.JSON]
    common.add_command(commands, "show", cmd_show, parents=parents)

    parents = [common.RUN, common.TRACKING, common.QUIET]
    common.add_command(commands, "reproduce", cmd_reproduce, parents=parents)


def load_params_file(path: str) -> dict[str, Any]:
    """The parameters in a YAML file of ``name: value`` lines (``mlkit run -f``).

    Raises:
        NotFoundError: the file does not exist.
        ParameterError: it is not YAML, or not a mapping.
    """
    from mlkit.run.params import read_yaml_file

    data = read_yaml_file(path, "Parameters file", f"-f {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParameterError(
            f"Parameters file '{path}' must hold a mapping of name: value, such as 'lr: 0.001'."
        )
    return data


def cmd_run(args: argparse.Namespace) -> int:
    """``mlkit run``: exit 0 when the run completed, 128 + the signal when killed, else 1."""
    from mlkit.run import runner

    given: dict[str, Any] = {}
    for path in args.file or []:
        given.update(load_params_file(path))
    for name, value in args.param or []:
        given[name] = value
    try:
        with runner.terminate_as_interrupt():
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
    except runner.Terminated as exc:
        print(f"{args.prog}: {exc}", file=sys.stderr)
        return 128 + exc.signum  # what a shell reports for a process the signal killed
    common.print_run_summary(info)
    return EXIT_OK if info["status"] == "completed" else EXIT_FAILED


def cmd_inspect(args: argparse.Namespace) -> int:
    """``mlkit inspect``: the notebook's parameters as a table or JSON."""
    from rich.console import Console
    from rich.table import Table

    from mlkit.run.params import read_signature

    signature = read_signature(args.notebook)
    if args.json:
        common.print_json([p.to_dict() for p in signature.parameters])
        return EXIT_OK
    table = Table(title=f"Parameters of {args.notebook}")
    for column in ("name", "type", "default", "rule", "help"):
        table.add_column(column)
    for p in signature.parameters:
        table.add_row(p.name, p.type, repr(p.default), p.rule.text if p.rule else "", p.help)
    Console().print(table)
    return EXIT_OK


def _duration(info: dict[str, Any]) -> str:
    seconds = info.get("duration")
    return f"{seconds:.1f}s" if isinstance(seconds, int | float) else ""


def cmd_runs(args: argparse.Namespace) -> int:
    """``mlkit runs``: a table of the runs, newest first, or as --where and --sort say."""
    from mlkit.record_store import list_runs

    rows = list_runs(args.experiment)
    named: list[str] = []  # what --where and --sort test: the table shows those columns
    if args.where or args.sort or args.csv:
        from mlkit import run_table

        conditions = [run_table.parse_condition(text) for text in args.where]
        frame = run_table.select(run_table.table(rows), conditions, args.sort, args.desc)
        if args.csv:
            frame.iloc[: args.limit].to_csv(sys.stdout, index=False)
            return EXIT_OK
        rows = [rows[i] for i in frame.index]  # the frame's index is each row's position
        named = [c.name for c in conditions] + ([args.sort] if args.sort else [])
    if args.json:
        common.print_json(rows[: args.limit], default=str)
        return EXIT_OK
    if not rows:
        if args.where:
            print(f"No run where {' and '.join(args.where)}.")
        else:
            print("No runs yet. Start one with: mlkit run templates/classify.ipynb")
        return EXIT_OK
    _print_runs(rows, args, named)
    return EXIT_OK


def _print_runs(rows: list[dict[str, Any]], args: argparse.Namespace, named: list[str]) -> None:
    """The rich table of the first --limit ``rows``: key parameters, the first metrics, and
    those --where and --sort named."""
    from rich.console import Console
    from rich.table import Table

    # Key parameters: those that vary across the listed runs, else the first few.
    names: list[str] = []
    for row in rows:
        names.extend(k for k in row["params"] if k not in names)
    varying = [n for n in names if len({repr(r["params"].get(n)) for r in rows}) > 1]
    keys = _named_first((varying or names), named, names)[: args.max_params]
    metrics: list[str] = []
    for row in rows:
        metrics.extend(k for k in (row.get("result") or {}) if k not in metrics)
    metrics = _named_first(metrics, named, metrics)[: args.max_metrics]
    table = Table()
    table.add_column("id", no_wrap=True)
    for column in ("experiment", "status", *keys, *metrics, "duration"):
        table.add_column(column, overflow="fold")
    colors = {"completed": "green", "failed": "red", "crashed": "red", "running": "yellow"}
    colors["unreadable"] = "red"
    shown = rows[: 50 if args.limit is None else args.limit]
    for row in shown:
        color = colors.get(row.get("status", ""), "white")
        table.add_row(
            row["id"],
            row.get("experiment", ""),
            f"[{color}]{row.get('status', '?')}[/{color}]",
            *[fmt(row["params"].get(k)) for k in keys],
            *[fmt((row.get("result") or {}).get(m)) for m in metrics],
            _duration(row),
        )
    console = Console()
    console.print(table)
    for row in shown:
        if row.get("status") == "unreadable":
            console.print(f"[red]unreadable[/red] {row['id']}: {row.get('reason')}", soft_wrap=True)


def _named_first(shown: list[str], named: list[str], known: list[str]) -> list[str]:
    """``shown``, led by the names --where and --sort used: a filter shows what it tested."""
    first = [n.removeprefix("param.") for n in named]
    first = [n for n in dict.fromkeys(first) if n in known]
    return [*first, *(n for n in shown if n not in first)]


def cmd_show(args: argparse.Namespace) -> int:
    """``mlkit show``: one run's record."""
    from rich.console import Console

    from mlkit.record_store import find_run, load_run

    info = load_run(find_run(args.run))
    if info.get("status") == "unreadable":
        raise UnsafeArtifactError(
            f"Run {info['id']} cannot be shown: {info.get('reason')}. Repair or delete that "
            "file; the other runs are listed by: mlkit runs"
        )
    if args.json:
        common.print_json(info, default=str)
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
            console.print(f"    {key} = {fmt(value)}")
    return EXIT_OK


def cmd_reproduce(args: argparse.Namespace) -> int:
    """``mlkit reproduce``: exit 0 only when every metric came out equal."""
    from rich.console import Console
    from rich.table import Table

    from mlkit.run import runner

    try:
        with runner.terminate_as_interrupt():  # SIGTERM, SIGHUP: as Ctrl-C, and named
            out = runner.reproduce(args.run, progress=not args.quiet, tracking=args.tracking)
    except runner.Terminated as exc:
        print(f"{args.prog}: {exc}", file=sys.stderr)
        return 128 + exc.signum
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
