"""Set-up files agree with each other."""

from __future__ import annotations

import tomllib
import yaml
from packaging.requirements import Requirement

from tests.helpers import ROOT


def _pyproject() -> dict[str, Requirement]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["dev"]
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def _environment() -> dict[str, Requirement]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {Requirement(r).name.lower(): Requirement(r) for r in pip if not r.startswith("-e")}


# environment.yml lists the same packages as pyproject.toml, with the same bounds.
def test_environment_matches_pyproject() -> None:
    py, env = _pyproject(), _environment()
    assert set(py) == set(env)
    for name, req in py.items():
        if name == "torch":  # pinned for conda users; the pin must satisfy the range
            pinned = next(iter(env[name].specifier)).version
            assert req.specifier.contains(pinned)
        else:
            assert str(req.specifier) == str(env[name].specifier), name


# The Makefile installs the same pinned torch as environment.yml, before anything else.
def test_makefile_pins_torch_first() -> None:
    makefile = (ROOT / "Makefile").read_text()
    pin = str(_environment()["torch"])
    assert f"TORCH ?= {pin}" in makefile
    assert makefile.index('"$(TORCH)"') < makefile.index('-e ".[dev]"')


def _imported_distributions() -> dict[str, set[str]]:
    """Third-party distributions that mlkit's modules import, with the modules importing them."""
    import ast
    import importlib.metadata
    import sys

    owners = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in (ROOT / "mlkit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "mlkit" or top in sys.stdlib_module_names:
                    continue
                for dist in owners.get(top, [top]):
                    found.setdefault(dist.lower().replace("_", "-"), set()).add(str(path))
    return found


# Every third-party package mlkit imports is declared, so a clean install has it.
def test_every_imported_package_is_declared() -> None:
    declared = set(_pyproject())
    missing = {
        dist: sorted(where)
        for dist, where in _imported_distributions().items()
        if dist not in declared
    }
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
