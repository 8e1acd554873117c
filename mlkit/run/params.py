"""A notebook's signature: the parameters cell, read without a kernel.

The parameters cell is made of flat annotated assignments with a help comment::

    lr: float = 3e-4  # peak learning rate; above 0
    optimizer: str = "adamw"  # update rule; one of adam, adamw, sgd

The text after the last ``;`` of the comment may state a rule that is checked
before anything runs: ``above 0``, ``at least 1``, ``below 1``, ``at most 10``, two of
them joined by ``and`` (``at least 0 and below 1``), or ``one of a, b, c``.
Reading uses only ``json`` and ``ast``, so ``mlkit inspect`` never starts a kernel
or imports papermill.
"""

from __future__ import annotations

import ast
import difflib
import io
import json
import keyword
import math
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlkit import table_sources
from mlkit.errors import NotebookError, NotebookNotFoundError, NotFoundError, ParameterError

_TYPES = {"int", "float", "str", "bool", "list", "dict"}


@dataclass(frozen=True)
class Rule:
    """A value rule stated in a parameter's help comment."""

    low: float | None = None
    low_inclusive: bool = True
    high: float | None = None
    high_inclusive: bool = True
    choices: tuple[str, ...] = ()
    text: str = ""
    # "one of a, b, or a table": a choice, or a table of the user's own (a .csv or .parquet
    # path, a folder of Parquet files, a database URL), checked when the run reads it.
    or_table: bool = False

    def check(self, value: Any) -> bool:
        if self.choices:
            return str(value) in self.choices or (
                self.or_table and isinstance(value, str) and table_sources.is_table_source(value)
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            return True
        if math.isnan(value):
            return False
        if self.low is not None and (
            value < self.low or (value == self.low and not self.low_inclusive)
        ):
            return False
        return not (
            self.high is not None
            and (value > self.high or (value == self.high and not self.high_inclusive))
        )


@dataclass(frozen=True)
class Parameter:
    """One assignment of a parameters cell."""

    name: str
    type: str  # int, float, str, bool, list, dict or "any"
    default: Any
    help: str = ""
    rule: Rule | None = None
    line: int = 0

    def describe_type(self) -> str:
        article = "an" if self.type[0] in "aeiou" else "a"
        rule = f" {self.rule.text}" if self.rule and not self.rule.choices else ""
        if self.rule and self.rule.choices:
            table = " or a table (a .csv or .parquet path, a folder, a database URL)"
            return "one of " + ", ".join(self.rule.choices) + (table if self.rule.or_table else "")
        return f"{article} {self.type}{rule}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "default": self.default,
            "help": self.help,
            "rule": self.rule.text if self.rule else "",
        }


@dataclass
class Signature:
    """The parameters of one notebook, in cell order."""

    notebook: str
    parameters: list[Parameter] = field(default_factory=list)
    kernel_name: str = "python3"

    def __getitem__(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.parameters}


def load_notebook_json(path: str | Path) -> dict[str, Any]:
    """Read a notebook file as plain JSON, with errors that say what to do."""
    path = Path(path)
    if not path.exists():
        raise NotebookNotFoundError(
            f"Notebook '{path}' does not exist. Check the path (templates live in templates/)."
        )
    if path.is_dir() or path.suffix != ".ipynb":
        raise NotebookError(f"'{path}' is not a notebook file. Pass a path ending in .ipynb.")
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NotebookError(f"Notebook '{path}' is not valid JSON ({exc}).") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookError(f"Notebook '{path}' has no list of cells; is it a Jupyter notebook?")
    return nb


def read_signature(path: str | Path) -> Signature:
    """Read the parameters of the notebook at ``path`` from its ``parameters`` cell.

    Raises:
        NotebookNotFoundError: the file does not exist.
        NotebookError: the notebook has no cell tagged ``parameters``.
    """
    nb = load_notebook_json(path)
    kernel = nb.get("metadata", {}).get("kernelspec", {}).get("name", "python3")
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.get("cell_type") == "code" and "parameters" in tags:
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else source
            return Signature(str(path), parse_parameters_cell(source, str(path)), kernel)
    raise NotebookError(
        f"Notebook '{path}' has no cell tagged 'parameters', so it cannot take parameters. "
        "In JupyterLab select the cell with the defaults, open the property inspector "
        "(the gear icon) and add the tag 'parameters'."
    )


def parse_parameters_cell(source: str, notebook: str = "<cell>") -> list[Parameter]:
    """Parse the assignments of a parameters cell; other statements are ignored."""
    # IPython magics and shell escapes are not Python; blank them so ast can parse.
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    clean = "\n".join(lines)
    try:
        tree = ast.parse(clean)
    except SyntaxError as exc:
        raise NotebookError(
            f"The parameters cell of '{notebook}' is not valid Python (line {exc.lineno}: "
            f"{exc.msg}). Fix the cell in JupyterLab."
        ) from None
    comments = _comments_by_line(clean)
    params: list[Parameter] = []
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name, annotation, value = node.target.id, ast.unparse(node.annotation), node.value
        elif (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            name, annotation, value = node.targets[0].id, None, node.value
        else:
            continue
        try:
            default = ast.literal_eval(value) if value is not None else None
        except ValueError:
            default = None
        type_name = _type_name(annotation, default)
        help_text, rule = _split_comment(comments.get(node.end_lineno or node.lineno, ""))
        params.append(Parameter(name, type_name, default, help_text, rule, node.lineno))
    return params


def _comments_by_line(source: str) -> dict[int, str]:
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
    except tokenize.TokenError:
        pass
    return comments


def _type_name(annotation: str | None, default: Any) -> str:
    if annotation:
        base = annotation.split("[")[0].split("|")[0].strip()
        base = {"List": "list", "Dict": "dict", "Tuple": "list", "tuple": "list"}.get(base, base)
        if base in _TYPES:
            return base
    for typ, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str")):
        if isinstance(default, typ):
            return name
    if isinstance(default, list | tuple):
        return "list"
    if isinstance(default, dict):
        return "dict"
    return "any"


_NUM = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf))"
_COMPARE = re.compile(rf"^(>=|<=|>|<|at least|at most|above|below)\s*{_NUM}$")
_OPS = {"at least": ">=", "at most": "<=", "above": ">", "below": "<"}
_ONE_OF = re.compile(r"^one of\s+(.+)$", re.IGNORECASE)


def parse_rule(text: str) -> Rule | None:
    """Parse ``above 0``, ``at least 0 and below 1`` or ``one of a, b`` into a Rule.

    Returns None when the text is no rule. Words rather than ``>=`` and brackets, on
    purpose: papermill's own parameter parser skips any line holding two ``=`` and
    reads an unbalanced bracket in a comment as a statement that goes on.
    """
    text = text.strip()
    if m := _ONE_OF.match(text):
        choices = tuple(c.strip().strip("'\"") for c in m.group(1).split(",") if c.strip())
        or_table = choices[-1] == "or a table"
        return Rule(choices=choices[:-1] if or_table else choices, text=text, or_table=or_table)
    bounds: dict[str, Any] = {}
    for part in text.split(" and "):
        m = _COMPARE.match(part.strip())
        if not m:
            return None
        op, num = _OPS.get(m.group(1), m.group(1)), float(m.group(2))
        if op.startswith(">"):
            bounds.update(low=num, low_inclusive=op == ">=")
        else:
            bounds.update(high=num, high_inclusive=op == "<=")
    return Rule(**bounds, text=text) if bounds else None


def _split_comment(comment: str) -> tuple[str, Rule | None]:
    if ";" in comment:
        head, tail = comment.rsplit(";", 1)
        rule = parse_rule(tail)
        if rule is not None:
            return head.strip(), rule
    return comment, None


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def coerce(param: Parameter, raw: str, notebook: str = "the notebook") -> Any:
    """Turn a command-line string into the parameter's declared type."""

    def fail(expected: str) -> ParameterError:
        return ParameterError(
            f"Parameter '{param.name}' of {notebook} must be {expected}, got {raw!r}. "
            f"Pass -p {param.name} {_example(param)}."
        )

    if param.type == "int":
        try:
            return int(raw)
        except ValueError:
            raise fail("an int") from None
    if param.type == "float":
        try:
            return float(raw)
        except ValueError:
            raise fail("a float") from None
    if param.type == "bool":
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise fail("a bool (true or false)")
    if param.type == "str":
        return raw
    import yaml  # only for list, dict and untyped values

    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise fail(f"a {param.type} written as YAML or JSON") from None
    if param.type == "list":
        return list(value) if isinstance(value, list | tuple) else [value]
    if param.type == "dict" and not isinstance(value, dict):
        raise fail("a dict written as YAML or JSON, such as '{a: 1}'")
    return value


def _example(param: Parameter) -> str:
    if param.rule and param.rule.choices:
        return param.rule.choices[0]
    if param.default is not None and param.type != "str":
        return json.dumps(param.default)
    if param.type == "str":
        return repr(param.default) if param.default else "VALUE"
    return "VALUE"


def validate(
    values: dict[str, Any], signature: Signature, *, from_cli: bool = False
) -> dict[str, Any]:
    """Check given values against the signature; return them converted.

    Every problem is reported before anything runs, naming the parameter, the
    rule, the value received and the fix.
    """
    notebook = signature.notebook
    out: dict[str, Any] = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ParameterError(
                f"Parameter name {name!r} is not a Python identifier, so it cannot be a "
                f"parameter of {notebook}. Use letters, digits and underscores, such as "
                f"'learning_rate'."
            )
        if name not in signature.names:
            close = difflib.get_close_matches(name, signature.names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ParameterError(
                f"Unknown parameter '{name}' for {notebook}.{hint} Valid parameters: "
                f"{', '.join(signature.names)}. See them with: mlkit inspect {notebook}"
            )
        param = signature[name]
        raw = value
        if from_cli and isinstance(value, str):
            value = coerce(param, value, notebook)
        out[name] = _check_type(param, value, notebook)
        if param.rule and not param.rule.check(out[name]):
            raise ParameterError(
                f"Parameter '{name}' of {notebook} must be {param.describe_type()}, got "
                f"{raw!r}. Pass -p {name} {_example(param)}."
            )
    _check_json_builtin(out, notebook)
    return out


def _check_type(param: Parameter, value: Any, notebook: str) -> Any:
    ok = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "bool": lambda v: isinstance(v, bool),
        "list": lambda v: isinstance(v, list | tuple),
        "dict": lambda v: isinstance(v, dict),
    }.get(param.type, lambda v: True)
    if not ok(value):
        raise ParameterError(
            f"Parameter '{param.name}' of {notebook} must be {param.describe_type()}, got "
            f"{value!r} ({type(value).__name__}). Pass -p {param.name} {_example(param)}."
        )
    if param.type == "float":
        return float(value)
    if param.type == "list":
        return list(value)
    return value


def _check_json_builtin(values: dict[str, Any], notebook: str) -> None:
    try:
        json.dumps(values, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ParameterError(
            f"Parameters for {notebook} must be JSON values (numbers, strings, booleans, "
            f"lists, dicts, null): {exc}. NaN and infinity are not allowed either."
        ) from None


def read_yaml_file(path: str | Path, what: str, flag: str) -> Any:
    """The YAML in ``path``; a missing or malformed file is bad input naming ``flag``.

    Args:
        path: the file.
        what: what the file is, for the message ("Parameters file").
        flag: how it was given, for the message ("-f params.yaml").

    Raises:
        NotFoundError: the file does not exist.
        ParameterError: it is not YAML.
    """
    import yaml  # pyyaml is only needed by the commands that read such files

    file = Path(path)
    if not file.exists():
        raise NotFoundError(f"{what} '{path}' does not exist ({flag}).")
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParameterError(f"{what} '{path}' is not valid YAML: {exc}") from None
