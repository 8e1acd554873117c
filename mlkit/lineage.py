"""Lineage: what a run needs to be reproduced (code, environment, host).

Collected with the standard library only; git is asked through its CLI and its
absence is recorded, not fatal.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from mlkit import __version__
from mlkit.record_store import notebook_paths

MAX_DIFF_CHARS = 200_000


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def notebook_hash(path: str | Path) -> str:
    """Hash of a notebook's code and markdown, ignoring outputs and metadata.

    Outputs change every run; the code is what must match for a reproduction.
    """
    import json

    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    digest = hashlib.sha256()
    for cell in nb.get("cells", []):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        digest.update(cell.get("cell_type", "").encode())
        digest.update(b"\0")
        digest.update(source.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def git_output(args: list[str], cwd: str | Path) -> str | None:
    """What ``git ARGS`` printed in ``cwd``; None outside a checkout, without git, or on error."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


@functools.cache
def _git_place(cwd: Path) -> tuple[str | None, str | None]:
    """(repository root, origin's URL), asked once per folder: neither changes mid-sweep."""
    root = git_output(["rev-parse", "--show-toplevel"], cwd)
    if root is None:
        return None, None
    remote = git_output(["config", "--get", "remote.origin.url"], cwd)
    return root.strip(), _without_password(remote.strip()) if remote else None


def _without_password(url: str) -> str:
    """``https://user:secret@host/x`` -> ``https://user@host/x``: lineage is never a secret."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}@{host}"))


def git_state(cwd: str | Path) -> dict[str, Any]:
    """Commit, dirty flag and diff of tracked files (untracked files are not code state)."""
    cwd = Path(cwd)
    commit = git_output(["rev-parse", "HEAD"], cwd)
    if commit is None:
        return {"commit": None, "dirty": None, "diff": "", "note": "not a git checkout"}
    diff = git_output(["diff", "HEAD", "--no-color", "--", ".", ":(exclude)experiments"], cwd) or ""
    root, remote = _git_place(cwd)
    state = {
        "commit": commit.strip(),
        "root": root,
        "remote_url": remote,
        "dirty": bool(diff.strip()),
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest(),
        "diff": diff[:MAX_DIFF_CHARS],
    }
    if len(diff) > MAX_DIFF_CHARS:
        state["diff_truncated"] = True
    return state


@functools.cache
def packages() -> dict[str, Any]:
    """Installed distributions and a hash of them, to tell environments apart.

    Read once per process: parsing every package's metadata costs about 75 ms, and a
    sweep driver records many runs from one environment.
    """
    names = set()
    for dist in metadata.distributions():
        meta = dist.metadata
        if meta["Name"]:
            names.add(f"{meta['Name']}=={meta['Version']}")
    ordered = sorted(names, key=str.lower)
    return {
        "packages_sha256": hashlib.sha256("\n".join(ordered).encode()).hexdigest(),
        "packages": tuple(ordered),
    }


def collect(notebook: str | Path | None = None) -> dict[str, Any]:
    """Everything known before the kernel starts: code, environment, host."""

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "mlkit": __version__,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "executable": sys.executable,
    }
    if notebook:
        path = Path(notebook)
        out.update(notebook_paths(path))
        if path.exists():
            out["notebook_sha256"] = notebook_hash(path)
        cwd = path.resolve().parent
    else:
        cwd = Path.cwd()
    out["git"] = git_state(cwd)
    out.update(packages())
    out["packages"] = list(out["packages"])
    try:
        out["torch"] = metadata.version("torch")
    except metadata.PackageNotFoundError:
        out["torch"] = None
    return out


def wandb_git_settings(git: dict[str, Any] | None) -> dict[str, str]:
    """W&B's git settings, filled from the lineage: W&B then runs no git of its own.

    Otherwise ``wandb.init`` asks git three times per run (about 10 ms on an idle
    machine), inside the kernel, before the notebook's first line of training. They go
    to ``wandb.Settings``, not the environment: W&B reads its environment once per
    process, and a warm kernel runs many records.
    """
    if not git or not git.get("commit") or not git.get("root"):
        return {}
    return {
        "git_root": git["root"],
        "git_commit": git["commit"],
        "git_remote_url": git.get("remote_url") or "",
    }
