"""Notebooks reviewed as cells: templates stay output-free, and `git diff` shows cells.

`make lint` runs nbstripout's check on templates/ and `make format` strips them; the tests
read those commands from the Makefile, so they check what CI runs. `make venv` sets up
nbdime as git's notebook diff and merge driver for the `.gitattributes` of the repository.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlkit.run.params import read_signature
from tests.helpers import ROOT

TEMPLATES = sorted((ROOT / "templates").glob("*.ipynb"))
NBSTRIPOUT = Path(sys.prefix) / "bin" / "nbstripout"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def make_nbstripout(target: str) -> list[str]:
    """The nbstripout command of ``make TARGET``, without its file arguments."""
    recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe, f"no '{target}:' rule in the Makefile"
    line = next((ln for ln in recipe[1].splitlines() if "bin/nbstripout" in ln), None)
    assert line, f"`make {target}` runs no nbstripout"
    words = shlex.split(line)
    flags = words[words.index(next(w for w in words if w.endswith("bin/nbstripout"))) + 1 :]
    return [str(NBSTRIPOUT), *(w for w in flags if not w.endswith(".ipynb"))]


def executed(template: Path, copy: Path) -> Path:
    """``copy`` of ``template`` as JupyterLab saves it after a run: outputs, counts, UI state."""
    nb = json.loads(template.read_text(encoding="utf-8"))
    for n, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        cell["execution_count"] = n + 1
        cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["ran\n"]}]
        cell["metadata"]["scrolled"] = True
        cell["metadata"]["ExecuteTime"] = {"end_time": "2030-01-01T00:00:00.000Z"}
    copy.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    return copy


def nbstripout(target: str, *notebooks: Path) -> subprocess.CompletedProcess[str]:
    """Run the nbstripout command of ``make TARGET`` on ``notebooks``."""
    command = [*make_nbstripout(target), *map(str, notebooks)]
    return subprocess.run(command, capture_output=True, text=True)


# Today's templates pass the check CI runs.
def test_templates_are_committed_without_outputs() -> None:
    check = nbstripout("lint", *TEMPLATES)
    assert check.returncode == 0, check.stdout + check.stderr


# A template saved with outputs fails the check, naming it; so does one with only a count.
def test_a_template_saved_with_outputs_fails_the_check(tmp_path: Path) -> None:
    template = ROOT / "templates" / "classify.ipynb"
    with_outputs = executed(template, tmp_path / "with_outputs.ipynb")
    nb = json.loads(template.read_text(encoding="utf-8"))
    next(c for c in nb["cells"] if c["cell_type"] == "code")["execution_count"] = 1
    with_count = tmp_path / "with_count.ipynb"
    with_count.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    clean = tmp_path / "clean.ipynb"
    shutil.copy(template, clean)
    check = nbstripout("lint", with_outputs, with_count, clean)
    assert check.returncode != 0
    assert "with_outputs.ipynb" in check.stdout and "with_count.ipynb" in check.stdout
    assert "clean.ipynb" not in check.stdout


# `make format` strips outputs and counts but keeps what the templates need: cell ids, the
# `parameters` tag and other tags, the sources, and so the parameters mlkit reads.
def test_format_keeps_tags_ids_and_the_parameters(tmp_path: Path) -> None:
    copies = [executed(t, tmp_path / t.name) for t in TEMPLATES]
    assert nbstripout("format", *copies).returncode == 0
    for template, copy in zip(TEMPLATES, copies, strict=True):
        before = json.loads(template.read_text(encoding="utf-8"))
        after = json.loads(copy.read_text(encoding="utf-8"))
        assert [c["id"] for c in after["cells"]] == [c["id"] for c in before["cells"]]
        assert [c["source"] for c in after["cells"]] == [c["source"] for c in before["cells"]]
        tags = [c["metadata"].get("tags") for c in after["cells"]]
        assert tags == [c["metadata"].get("tags") for c in before["cells"]], template.name
        assert ["parameters"] in tags, template.name
        code = [c for c in after["cells"] if c["cell_type"] == "code"]
        assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
        assert read_signature(copy).parameters == read_signature(template).parameters
    check = nbstripout("lint", *copies)
    assert check.returncode == 0, check.stdout


def git_env(home: Path) -> dict[str, str]:
    """No user or system git config, and no venv on PATH: the set-up must not need either."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    venv_bin = (Path(sys.prefix) / "bin").resolve()
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != venv_bin]
    env.update(
        PATH=os.pathsep.join(path),
        HOME=str(home),
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CEILING_DIRECTORIES=str(home.parent),
        GIT_AUTHOR_NAME="mlkit test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="mlkit test",
        GIT_COMMITTER_EMAIL="test@example.com",
    )
    return env


def notebook_git(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """What `make venv` runs to set up the notebook drivers, in ``cwd``."""
    command = ["make", "-s", "-f", str(ROOT / "Makefile"), "notebook-git", f"VENV={sys.prefix}"]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


# In a repository with our .gitattributes and the set-up `make venv` runs, `git diff` of a
# template shows the changed cell as nbdime prints it, not lines of JSON, with no venv activated.
@pytest.mark.slow  # git runs nbdime's driver, a Python process that imports nbdime: seconds
def test_git_diff_of_a_template_shows_cells(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = git_env(tmp_path)

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    git("init", "-q", ".")
    shutil.copy(ROOT / ".gitattributes", repo / ".gitattributes")
    shutil.copy(ROOT / "templates" / "classify.ipynb", repo / "classify.ipynb")
    setup = notebook_git(repo, env)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert git("config", "diff.jupyternotebook.command").startswith(sys.prefix)
    assert "git-nbmergedriver merge" in git("config", "merge.jupyternotebook.driver")
    git("add", "-A")
    git("commit", "-q", "-m", "template")

    nb = json.loads((repo / "classify.ipynb").read_text(encoding="utf-8"))
    index, cell = next((i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code")
    cell["source"] = [*cell["source"][:-1], cell["source"][-1] + "\n", "lr: float = 0.5  # new\n"]
    (repo / "classify.ipynb").write_text(json.dumps(nb, indent=1), encoding="utf-8")
    diff = ANSI.sub("", git("diff"))
    assert f"## modified /cells/{index}/source:" in diff, diff
    assert "+lr: float = 0.5  # new" in diff
    assert '"source": [' not in diff  # cells, not the notebook's JSON


# Outside a git checkout (an unpacked source archive) the set-up does nothing and succeeds.
def test_notebook_git_outside_a_checkout_is_a_no_op(tmp_path: Path) -> None:
    folder = tmp_path / "unpacked"
    folder.mkdir()
    setup = notebook_git(folder, git_env(tmp_path))
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert not (folder / ".git").exists()
