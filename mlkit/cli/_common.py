"""What the command groups share: parent parsers of the shared flags, exit codes, printing.

A flag that means the same in several commands is declared here once, as a parent parser
(``parents=[TRACKING, QUIET]``), so its spelling, choices and help cannot drift apart.
Where only the help differs (``-p`` sets notebook parameters in one command and fixes them
for every trial in another), a small function builds the parent with that help.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from mlkit.errors import EXIT_FAILED, EXIT_USAGE

__all__ = [
    "CELL_TIMEOUT",
    "COMMANDS",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "JSON",
    "LOG",
    "QUIET",
    "RUN",
    "RUN_HELP",
    "TRACKING",
    "add_command",
    "add_group",
    "fmt",
    "params",
    "parent",
    "prediction_log",
    "print_json",
    "print_run_summary",
    "show_help",
    "storage",
]

EXIT_OK = 0
EXIT_INTERRUPTED = 130  # what a shell reports for Ctrl-C: 128 + SIGINT

Command = Callable[[argparse.Namespace], int]
# argparse's object behind add_subparsers(); its class is private, so it is named here only.
Subcommands = Any

RUN_HELP = "run id (or a unique prefix) or run directory"

# The top-level commands in `mlkit --help` order: the group module that builds and runs each,
# and its one line of help. `mlkit --help` reads this table alone; a command line imports
# and builds only its command's group, so starting costs no more than one group.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("runs", "Execute a notebook with parameters as a recorded run."),
    "sweep": (
        "sweep",
        "Optuna sweep: every trial an executed notebook with its record. "
        "Also: mlkit sweep best STUDY, mlkit sweep report STUDY.",
    ),
    "inspect": ("runs", "Show a notebook's parameters: type, default, rule, help."),
    "runs": ("runs", "List runs: id, status, key parameters, metrics, duration."),
    "show": ("runs", "Show one run's record."),
    "reproduce": (
        "runs",
        "Re-execute a run from its record and check that the metrics match exactly.",
    ),
    "diff": ("diff", "Put two runs side by side: what differs in parameters, metrics, code, data."),
    "evaluate": (
        "evaluate",
        "Evaluate a run's model: fairness by group, attributions, calibration, errors by slice.",
    ),
    "model": (
        "model",
        "Model registry: register, promote, rollback, guard, policy, bounds, list, show.",
    ),
    "retrain": ("retrain", "Retrain a registered model on new data; register it as a candidate."),
    "serve": (
        "serve",
        "Serve a registered model over HTTP (FastAPI, uvicorn); every response is logged.",
    ),
    "abtest": ("ops", "A/B tests of served variants: report."),
    "feedback": (
        "ops",
        "Store true labels of logged predictions (append-only; the newest label wins).",
    ),
    "monitor": (
        "ops",
        "Drift of a served model's logged traffic against its training data; exit 1 on drift.",
    ),
    "skew": (
        "ops",
        "Where a served model and its shadow disagree; exit 1 over --max-disagreement.",
    ),
    "replay": ("ops", "Score a candidate offline on production's logged traffic; compare."),
    "log": ("ops", "Prediction log: verify its hash chain (exit 1 naming the first bad row)."),
}


def parent(*names: str, **spec: Any) -> argparse.ArgumentParser:
    """A parent parser holding one argument, for ``parents=[...]``.

    Args:
        *names: the argument's name or flags, as for ``add_argument``.
        **spec: the rest of ``add_argument``'s keywords.

    Returns:
        A parser without ``-h`` that only lends its argument to others.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(*names, **spec)
    return parser


# Flags that read the same in every command that takes them.
TRACKING = parent(
    "--tracking",
    choices=["offline", "online", "disabled"],
    help="W&B mode (default: $WANDB_MODE, else offline)",
)
QUIET = parent("-q", "--quiet", action="store_true", help="no progress bar")
JSON = parent("--json", action="store_true", help="print JSON")
RUN = parent("run", help=RUN_HELP)
CELL_TIMEOUT = parent(
    "--timeout",
    type=float,
    metavar="SECONDS",
    help="fail the run when any one cell runs longer than this",
)
LOG = parent(
    "--log",
    metavar="URL",
    help="prediction log: sqlite:///PATH or postgresql://... (default: SQLite beside the model)",
)


# Flags spelled the same everywhere whose help says what they mean in one command.
def params(help: str) -> argparse.ArgumentParser:
    """``-p NAME VALUE``, repeatable; ``help`` says what the values set in this command."""
    return parent("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"), help=help)


def storage(help: str) -> argparse.ArgumentParser:
    """``--storage URL``: where a study lives; ``help`` says the default for this command."""
    return parent("--storage", metavar="URL", help=help)


def prediction_log(help: str) -> argparse.ArgumentParser:
    """``--log URL`` for a command that reads more kinds of log than :data:`LOG` says."""
    return parent("--log", metavar="URL", help=help)


def show_help(parser: argparse.ArgumentParser) -> None:
    """Make ``parser``, when given no subcommand, print its help and exit 2."""

    def print_help(_args: argparse.Namespace) -> int:
        parser.print_help()
        return EXIT_USAGE

    parser.set_defaults(func=print_help, prog=parser.prog)


def add_command(
    commands: Subcommands,
    name: str,
    func: Command,
    help: str | None = None,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """Add the subcommand ``name``, run by ``func``; its help is also its description.

    Args:
        commands: what ``add_subparsers()`` returned.
        name: the subcommand's word.
        func: takes the parsed arguments, returns the exit code.
        help: one line for the command list and the command's own ``--help``; a top-level
            command's comes from :data:`COMMANDS`.
        parents: parent parsers of the shared flags it takes.

    Returns:
        The subcommand's parser, for the arguments of its own.
    """
    help = help or COMMANDS[name][1]
    parser = commands.add_parser(name, help=help, description=help, parents=list(parents))
    # prog ("mlkit model promote") prefixes the command's error messages, as argparse's own.
    parser.set_defaults(func=func, prog=parser.prog)
    return parser


def add_group(
    commands: Subcommands, name: str, help: str | None = None, epilog: str | None = None
) -> Subcommands:
    """Add a command made of subcommands (``mlkit model ...``); alone it prints its help.

    Returns:
        What ``add_subparsers()`` returned for the group, to add its subcommands to.
    """
    help = help or COMMANDS[name][1]
    parser = commands.add_parser(name, help=help, description=help, epilog=epilog)
    show_help(parser)
    return parser.add_subparsers(metavar="COMMAND")


def fmt(value: Any) -> str:
    """A metric or parameter for a table: floats to 4 significant digits, None as blank."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def print_json(value: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Print ``value`` as indented JSON (the ``--json`` of every command), flushed at once.

    Args:
        value: what to print.
        default: how to write a value JSON has no type for, as for ``json.dumps``.
    """
    import json  # about 1 ms, and mlkit --help never prints JSON

    print(json.dumps(value, indent=2, default=default), flush=True)


def print_run_summary(info: dict[str, Any]) -> None:
    """Print an executed run: status, record, notebook, W&B run and result."""
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
