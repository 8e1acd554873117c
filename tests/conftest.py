"""Shared fixtures: every test writes runs into its own temporary experiments folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# CPython 3.11's ast.parse keeps its recursion counter per interpreter, not per thread, so
# two threads parsing at once can fail with "AST constructor recursion depth mismatch"
# (seen when a test first imported wandb, whose pydantic settings parse class sources,
# while another test's background thread was parsing). Import it before any thread starts.
import wandb  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "tests" / "notebooks"
TEMPLATES = ROOT / "templates"


@pytest.fixture
def exp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty experiments folder; W&B disabled unless a test turns it on."""
    root = tmp_path / "experiments"
    monkeypatch.setenv("MLKIT_EXPERIMENTS", str(root))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(ROOT)
    return root


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300):
    """Run the real ``mlkit`` command in a subprocess, as a user would."""
    full_env = dict(os.environ)
    full_env["COLUMNS"] = "200"  # rich tables fold to 80 columns in a pipe
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mlkit", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=timeout,
    )


def all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
