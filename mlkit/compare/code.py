"""The code each run executed: notebook hash, git commit, the diff between the commits and
each run's uncommitted change, as the lineage recorded them.

Git is asked through its CLI, and only for the diff between two recorded commits; a run made
outside a checkout, or a commit no longer in the repository, is said so in a note.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from mlkit.compare.runs import Side
from mlkit.compare.sections import MISSING, row
from mlkit.lineage import git_output

MAX_DIFF_CHARS = 100_000  # a shown diff; the lineage holds up to twice this


def code_section(a: Side, b: Side) -> dict[str, Any]:
    """Notebook path and content hash, commits, dirty flags and uncommitted changes."""
    la, lb = a.lineage, b.lineage
    ga, gb = la.get("git") or {}, lb.get("git") or {}
    rows = [
        row("notebook", a.info.get("notebook"), b.info.get("notebook")),
        row(
            "notebook hash", la.get("notebook_sha256", MISSING), lb.get("notebook_sha256", MISSING)
        ),
        row("git commit", ga.get("commit"), gb.get("commit")),
        row("uncommitted change", _dirty(ga), _dirty(gb)),
    ]
    section: dict[str, Any] = {"title": "Code", "rows": rows}
    if ga.get("commit") and gb.get("commit") and ga["commit"] != gb["commit"]:
        diff, note = commit_diff(ga, gb, la.get("notebook_abs") or a.info.get("notebook_abs"))
        section["commit_diff"] = diff
        if note:
            section["note"] = note
    if rows[3]["change"] != "same":
        section["uncommitted"] = {
            side: g.get("diff") or "" for side, g in (("a", ga), ("b", gb)) if g.get("dirty")
        }
    return section


def _dirty(git: dict[str, Any]) -> str | None:
    """The uncommitted change by its hash (the text itself may be cut short in the record)."""
    if git.get("commit") is None:
        return None
    return f"sha256:{git.get('diff_sha256', '')[:16]}" if git.get("dirty") else "none"


def commit_diff(ga: dict[str, Any], gb: dict[str, Any], notebook: str | None) -> tuple[str, str]:
    """``git diff A..B -- NOTEBOOK`` in the runs' repository: (diff text, note when none).

    Limited to the notebook when it lies in the repository, else the whole tree.
    """
    root = ga.get("root") or gb.get("root")
    if not root or not Path(root).is_dir():
        return "", f"the repository {root} is not here: no diff between the commits"
    for commit in (ga["commit"], gb["commit"]):
        if git_output(["cat-file", "-e", f"{commit}^{{commit}}"], root) is None:
            return "", f"commit {commit[:12]} is not in {root}: no diff between the commits"
    paths: list[str] = []
    if notebook:
        with contextlib.suppress(ValueError):  # a notebook outside the repository
            paths = ["--", Path(notebook).resolve().relative_to(Path(root).resolve()).as_posix()]
    out = git_output(["diff", "--no-color", f"{ga['commit']}..{gb['commit']}", *paths], root)
    if out is None:
        return "", f"git diff failed in {root}"
    if len(out) > MAX_DIFF_CHARS:
        return out[:MAX_DIFF_CHARS], f"the diff is cut at {MAX_DIFF_CHARS} characters"
    return out, ""
