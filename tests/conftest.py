"""Shared fixtures: every test writes runs into its own temporary experiments folder.

Plain helpers (paths, the CLI, ``wait_until``, servers, fake runs) are in ``helpers.py``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

# CPython 3.11's ast.parse keeps its recursion counter per interpreter, not per thread, so
# two threads parsing at once can fail with "AST constructor recursion depth mismatch"
# (seen when a test first imported wandb, whose pydantic settings parse class sources,
# while another test's background thread was parsing). Import it before any thread starts.
import wandb  # noqa: F401

from mlkit._io import redact
from tests.browser import chromium, lab, page, scratch_lab  # noqa: F401  (fixtures)
from tests.helpers import ROOT, needs_service

# Tests signal the commands they start as a terminal would. A suite started in the
# background (`make test &`) or under nohup inherits SIGINT or SIGHUP ignored, and so would
# every command it starts (Python leaves an ignored signal ignored): give them back their
# defaults, as a terminal has them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
for _signum in (signal.SIGHUP, signal.SIGTERM):
    if signal.getsignal(_signum) is signal.SIG_IGN:
        signal.signal(_signum, signal.SIG_DFL)


@pytest.fixture
def exp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty experiments folder; W&B disabled unless a test turns it on."""
    root = tmp_path / "experiments"
    monkeypatch.setenv("MLKIT_EXPERIMENTS", str(root))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(ROOT)
    return root


@pytest.fixture
def pg_url() -> str:
    """The URL of a reachable PostgreSQL (MLKIT_TEST_POSTGRES); skips without one, fails in CI."""
    url = os.environ.get("MLKIT_TEST_POSTGRES")
    reason = ""
    if not url:
        reason = "MLKIT_TEST_POSTGRES is not set"
    else:
        try:
            import sqlalchemy  # only a test that needs PostgreSQL pays for the import

            engine = sqlalchemy.create_engine(url)
            with engine.connect():
                pass
            engine.dispose()
        except Exception as exc:
            reason = f"cannot connect to {redact(url)}: {exc}"
    if reason:
        message = (
            f"needs PostgreSQL ({reason}); run `source .ci/postgres.sh` to install and "
            "start one on 127.0.0.1"
        )
        needs_service(message)
    return url
