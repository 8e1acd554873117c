"""The shape of the code: small modules, short functions, mlkit imports at the top.

Each rule reads the source with ``ast``, so a violation names the file and line to fix. The
fourth rule of the house, that ``import mlkit`` and ``mlkit --help`` import none of torch,
wandb, papermill, ipywidgets or optuna, runs a real interpreter and lives in
``tests/test_cli.py::test_import_and_help_import_nothing_heavy``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mlkit"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
LONG_ON_PURPOSE = "# Long on purpose:"
# Tool directives say nothing about why an import waits for its function.
NOT_A_REASON = re.compile(r"#\s*(noqa|type:|pragma)\b")

Function = ast.FunctionDef | ast.AsyncFunctionDef


@cache
def modules() -> tuple[Path, ...]:
    found = tuple(sorted(PACKAGE.rglob("*.py")))
    assert len(found) > 20, f"expected the mlkit package under {PACKAGE}, found {found}"
    return found


@cache
def source(path: Path) -> tuple[list[str], ast.Module]:
    text = path.read_text(encoding="utf-8")
    return text.splitlines(), ast.parse(text, filename=str(path))


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT).as_posix()}:{line}"


def functions(tree: ast.AST) -> Iterator[Function]:
    """Every function and method, nested ones included."""
    for node in ast.walk(tree):
        if isinstance(node, Function):
            yield node


def function_lines(node: Function) -> int:
    """From the ``def`` line to the last line of the body, docstring included."""
    assert node.end_lineno is not None
    return node.end_lineno - node.lineno + 1


def comment_above(lines: list[str], lineno: int) -> list[str]:
    """The block of comment lines that ends right above line ``lineno`` (1-based), top first."""
    block: list[str] = []
    i = lineno - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        block.insert(0, lines[i].strip())
        i -= 1
    return block


def says_why_long(lines: list[str], node: Function) -> bool:
    """The comment right above the ``def`` or its decorators starts ``# Long on purpose:``.

    The reason may go on over several comment lines; the block must touch the ``def``.
    """
    starts = {node.lineno, *(d.lineno for d in node.decorator_list)}
    blocks = [comment_above(lines, n) for n in starts]
    return any(block and block[0].startswith(LONG_ON_PURPOSE) for block in blocks)


def imports_mlkit(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name == "mlkit" or a.name.startswith("mlkit.") for a in node.names)
    if isinstance(node, ast.ImportFrom):
        module = node.module or ""
        return node.level > 0 or module == "mlkit" or module.startswith("mlkit.")
    return False


def has_reason(lines: list[str], node: ast.stmt) -> bool:
    """A comment on the import's own lines or on the line above, tool directives aside."""
    assert node.end_lineno is not None
    own = lines[node.lineno - 1 : node.end_lineno]
    above = [lines[node.lineno - 2]] if node.lineno >= 2 else []
    comments = [ln[ln.index("#") :] for ln in own if "#" in ln]
    comments += [ln.strip() for ln in above if ln.strip().startswith("#")]
    return any(not NOT_A_REASON.match(c) for c in comments)


def lazy_imports_allowed(path: Path) -> bool:
    """The CLI imports each command's modules late, and lazy ``__init__`` files re-export."""
    rel = path.relative_to(PACKAGE)
    return path.name == "__init__.py" or rel.parts[0] in ("cli", "cli.py")


def test_scan_sees_functions_and_inner_imports() -> None:
    # The scanners find what they look for: a nested function and an import inside one.
    tree = ast.parse("def outer():\n    def inner():\n        from mlkit import data\n")
    assert [f.name for f in functions(tree)] == ["outer", "inner"]
    assert [imports_mlkit(n) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] == [True]


def test_long_on_purpose_must_touch_the_def() -> None:
    # The exemption counts only when its comment block ends right above the def or decorator.
    def exempt(code: str) -> bool:
        lines = code.splitlines()
        return says_why_long(lines, next(functions(ast.parse(code))))

    assert exempt("# Long on purpose: one loop\n# read whole.\n@cache\ndef f():\n    pass\n")
    assert exempt("@cache\n# Long on purpose: one loop\ndef f():\n    pass\n")
    assert not exempt("# Long on purpose: one loop\n\ndef f():\n    pass\n")
    assert not exempt("# a loop\n# Long on purpose: too late\ndef f():\n    pass\n")


def test_a_reason_is_a_comment_not_a_directive() -> None:
    # An import inside a function is excused by a comment on it or above it, not by a noqa.
    def excused(code: str) -> bool:
        lines = code.splitlines()
        node = next(n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.ImportFrom))
        return has_reason(lines, node)

    assert excused("def f():\n    # torch loads only here\n    from mlkit import train\n")
    assert excused("def f():\n    from mlkit import train  # torch loads only here\n")
    assert not excused("def f():\n    from mlkit import train  # noqa: F401\n")
    assert not excused("def f():\n    x = 1\n    from mlkit import train\n")


def test_no_module_over_600_lines() -> None:
    # Rule: no module under mlkit/ is longer than 600 lines.
    too_long = [
        f"{where(path, 1)} has {n} lines"
        for path in modules()
        if (n := len(source(path)[0])) > MAX_MODULE_LINES
    ]
    assert not too_long, "split these by concern:\n" + "\n".join(too_long)


def test_no_function_over_80_lines_without_a_reason() -> None:
    # Rule: no function is longer than 80 lines unless a "# Long on purpose:" comment says why.
    too_long = []
    for path in modules():
        lines, tree = source(path)
        for node in functions(tree):
            n = function_lines(node)
            if n > MAX_FUNCTION_LINES and not says_why_long(lines, node):
                too_long.append(f"{where(path, node.lineno)} {node.name}() has {n} lines")
    assert not too_long, (
        f"shorten these, or put a '{LONG_ON_PURPOSE} ...' comment above the def:\n"
        + "\n".join(too_long)
    )


def test_mlkit_imports_at_module_top() -> None:
    # Rule: outside the CLI and __init__ files, a function imports mlkit only with a reason.
    late = []
    for path in modules():
        if lazy_imports_allowed(path):
            continue
        lines, tree = source(path)
        seen: set[int] = set()
        for func in functions(tree):
            for node in ast.walk(func):
                if id(node) in seen or not imports_mlkit(node):
                    continue
                seen.add(id(node))
                assert isinstance(node, ast.stmt)
                if not has_reason(lines, node):
                    late.append(f"{where(path, node.lineno)} {lines[node.lineno - 1].strip()}")
    assert not late, (
        "move these imports to the top of the module, or say why on the line above:\n"
        + "\n".join(late)
    )


# Rule: `import mlkit` and importing `mlkit.cli` load none of torch, wandb, papermill, ipywidgets
# or optuna. That needs a fresh interpreter, so it is checked once, in a subprocess, by
# tests/test_cli.py::test_import_and_help_import_nothing_heavy, and not repeated here.


# Names templates, notebooks and users import keep working after the move into subpackages.
def test_earlier_names_still_import() -> None:
    import mlkit
    from mlkit import abtest, guard, monitor, notebook, params, predlog, report, runner, space
    from mlkit.ops import abtest as ops_abtest
    from mlkit.run import runner as run_runner

    assert runner is run_runner and callable(mlkit.runner.run)
    assert abtest is ops_abtest
    for module, home in (
        (guard, "mlkit.ops.guard"),
        (monitor, "mlkit.ops.monitor"),
        (notebook, "mlkit.run.notebook"),
        (params, "mlkit.run.params"),
        (predlog, "mlkit.serve.predlog"),
        (report, "mlkit.sweep.report"),
        (space, "mlkit.sweep.space"),
    ):
        assert module.__name__ == home
    assert callable(mlkit.start_run) and callable(mlkit.parameters)
    assert callable(mlkit.trial.current)
    from mlkit.record import list_runs, write_json  # noqa: F401  (used by older notebooks)
