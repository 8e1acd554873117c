"""``mlkit serve``: a registered model over HTTP, every answer logged."""

from __future__ import annotations

import argparse

from mlkit.cli import _common as common
from mlkit.cli._common import EXIT_OK


def add_parsers(commands: common.Subcommands) -> None:
    """Add ``mlkit serve``."""
    p = common.add_command(
        commands,
        "serve",
        cmd_serve,
        parents=[common.LOG],
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
        "--allow-unauthenticated",
        action="store_true",
        help="serve a non-loopback --host without a token (by default that needs "
        "MLKIT_SERVE_TOKEN)",
    )
    p.add_argument(
        "--log-sync",
        choices=["normal", "full"],
        default="normal",
        help="SQLite log durability: normal (a killed server loses no row) or full (also fsync "
        "each commit, so a power cut loses none; slower)",
    )
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="larger bodies get 413")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (per worker)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="server processes on the one port, e.g. one per core (default 1); each loads the "
        "model and follows its aliases, all append to the same log",
    )
    p.add_argument(
        "--batch-max",
        type=int,
        default=1,
        metavar="K",
        help="adaptive batching: score up to K examples of concurrent requests in one forward "
        "pass, each still answered and logged on its own (default 1: no batching)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=2.0,
        metavar="M",
        help="with --batch-max: how long the first request of a batch waits for others to join "
        "(default 2)",
    )
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


def cmd_serve(args: argparse.Namespace) -> int:
    """``mlkit serve``: runs until interrupted."""
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
        allow_unauthenticated=args.allow_unauthenticated,
        workers=args.workers,
        batch_max=args.batch_max,
        batch_wait_ms=args.batch_wait_ms,
    )
    return EXIT_OK
