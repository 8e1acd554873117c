"""The ``mlkit`` command: one module per command group, each importing what it needs late.

Each group module (``runs``, ``sweep``, ``evaluate``, ``model``, ``serve``, ``ops``) adds its
subcommands with ``add_parsers`` and holds their functions; the flags several commands share
are parent parsers in ``_common``. Heavy and product modules load inside the command
functions only, so ``mlkit --help`` stays instant.

Exit codes follow the error's meaning (:mod:`mlkit.errors`): 0 success, 1 a run or check
failed, 2 bad input (argparse's usage errors too), 3 an unsafe artifact, 4 a service that
cannot be reached, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from mlkit import __version__
from mlkit.cli import _common as common
from mlkit.errors import MlkitError

__all__ = ["build_parser", "main"]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line: every command listed, the groups' arguments built as needed.

    Args:
        command: the top-level command given. Only its group module is imported and built;
            the other commands are listed with their help alone (:data:`_common.COMMANDS`),
            which is all ``mlkit --help`` shows. ``""`` builds no group; None builds all.
    """
    parser = argparse.ArgumentParser(
        prog="mlkit",
        description="Run training notebooks as tracked, reproducible experiments.",
    )
    parser.add_argument("--version", action="version", version=f"mlkit {__version__}")
    common.show_help(parser)
    commands = parser.add_subparsers(metavar="COMMAND")
    wanted = {group for group, _ in common.COMMANDS.values()}
    if command is not None:
        wanted &= {common.COMMANDS.get(command, ("", ""))[0]}
    built: set[str] = set()
    for name, (group, help) in common.COMMANDS.items():
        if group in wanted:
            if group not in built:
                importlib.import_module(f"mlkit.cli.{group}").add_parsers(commands)
                built.add(group)
        else:
            commands.add_parser(name, help=help, description=help)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The top-level command named in ``argv`` (its first word), None for none or a flag."""
    return argv[0] if argv and argv[0] in common.COMMANDS else None


def redeliver_lost_interrupts() -> None:
    """Ctrl-C, SIGTERM or SIGHUP that lands inside a finalizer is not lost: it comes again.

    Python runs a signal's handler in whatever the main thread is executing, and an
    exception raised in a ``__del__`` method or a weakref callback (the garbage of database
    engines, sockets, kernels' channels) is printed as "Exception ignored" and dropped: the
    command would go on as if never interrupted. Such an interrupt is raised again from a
    moment later, outside the finalizer.
    """
    if getattr(sys.unraisablehook, "_mlkit", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if not isinstance(exc, KeyboardInterrupt):
            previous(unraisable)
            return
        import _thread

        signum = getattr(exc, "signum", signal.SIGINT)  # runner.Terminated keeps its signal
        again = threading.Timer(0.01, _thread.interrupt_main, args=(signum,))
        again.daemon = True
        again.start()

    hook._mlkit = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``mlkit`` command.

    Args:
        argv: the arguments after ``mlkit`` (default: ``sys.argv[1:]``).

    Returns:
        The exit code. An :class:`~mlkit.errors.MlkitError` is printed as one line and
        exits with its family's code; argparse exits 2 itself on a usage error.
    """
    redeliver_lost_interrupts()
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = _command(args_list)
    if command == "sweep":
        from mlkit.cli import sweep

        args_list = sweep.expand_shorthand(args_list)
    args = build_parser(command or "").parse_args(args_list)
    try:
        return args.func(args)
    except MlkitError as exc:
        print(f"{args.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return common.EXIT_INTERRUPTED
