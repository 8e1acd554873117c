"""Search spaces: a YAML file of dimensions, checked against a notebook's parameters.

```yaml
lr: {type: float, low: 1.0e-4, high: 0.1, log: true}
epochs: {type: int, low: 5, high: 30, step: 5}
model: [mlp, cnn]                       # a list is a categorical dimension
channels:                               # exists only when model is cnn
  type: categorical
  choices: ["8,16", "16,32"]
  when: {model: cnn}
```

Every problem (unknown name, a type that does not fit the parameter, an empty
range, a condition on an unknown value) is reported before any trial runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlkit.errors import ParameterError
from mlkit.run.params import Signature, read_yaml_file, validate

KINDS = ("float", "int", "categorical")


# Kept importable under its earlier name; raised as ParameterError.
SpaceError = ParameterError


@dataclass(frozen=True)
class Dim:
    """One dimension of the search space."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def active(self, chosen: dict[str, Any]) -> bool:
        return all(chosen.get(name) in values for name, values in self.when.items())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind}
        if self.kind == "categorical":
            out["choices"] = list(self.choices)
        else:
            out.update(low=self.low, high=self.high)
            if self.log:
                out["log"] = True
            if self.step is not None:
                out["step"] = self.step
        if self.when:
            out["when"] = {k: list(v) for k, v in self.when.items()}
        return out


def load(path: str | Path) -> list[Dim]:
    """Read a search-space YAML file."""
    raw = read_yaml_file(path, "Search-space file", f"--space {path}")
    return parse(raw, str(path))


def parse(raw: Any, source: str = "the search space") -> list[Dim]:
    """Turn the YAML mapping into dimensions, with errors that name the dimension."""
    if not isinstance(raw, dict) or not raw:
        raise ParameterError(
            f"{source} must be a mapping of parameter name to range, such as "
            "'lr: {type: float, low: 0.0001, high: 0.1, log: true}'."
        )
    dims = []
    for name, spec in raw.items():
        dims.append(_parse_dim(str(name), spec, source))
    names = [d.name for d in dims]
    for i, dim in enumerate(dims):
        for cond, values in dim.when.items():
            if cond not in names[:i]:
                raise ParameterError(
                    f"Dimension '{dim.name}' in {source} depends on '{cond}', which must be a "
                    f"dimension listed before it. Valid: {', '.join(names[:i]) or 'none'}."
                )
            parent = dims[names.index(cond)]
            if parent.kind == "categorical":
                bad = [v for v in values if v not in parent.choices]
                if bad:
                    raise ParameterError(
                        f"Dimension '{dim.name}' in {source} depends on {cond}={bad[0]!r}, "
                        f"but '{cond}' takes only {list(parent.choices)}."
                    )
    return dims


def _parse_dim(name: str, spec: Any, source: str) -> Dim:
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        raise ParameterError(
            f"Dimension '{name}' in {source} must be a list of choices or a mapping with "
            f"'type', got {spec!r}."
        )
    kind = spec.get("type")
    if kind not in KINDS:
        raise ParameterError(
            f"Dimension '{name}' in {source} needs 'type' set to one of {', '.join(KINDS)}, "
            f"got {kind!r}."
        )
    allowed = {"type", "when"} | (
        {"choices"} if kind == "categorical" else {"low", "high", "log", "step"}
    )
    unknown = set(spec) - allowed
    if unknown:
        raise ParameterError(
            f"Dimension '{name}' in {source} has unknown key(s) {sorted(unknown)}; a {kind} "
            f"dimension takes {sorted(allowed)}."
        )
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise ParameterError(f"'when' of dimension '{name}' in {source} must map a name to values.")
    when_t = {str(k): tuple(v) if isinstance(v, list) else (v,) for k, v in when.items()}
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ParameterError(
                f"Dimension '{name}' in {source} needs a non-empty list of choices."
            )
        return Dim(name, kind, choices=tuple(choices), when=when_t)
    low, high = spec.get("low"), spec.get("high")
    for key, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParameterError(
                f"Dimension '{name}' in {source} needs a number for '{key}', got {value!r}."
            )
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ParameterError(
            f"Dimension '{name}' in {source} is an int; low and high must be ints."
        )
    if not low < high:
        raise ParameterError(
            f"Dimension '{name}' in {source} has an empty range: low={low} must be below "
            f"high={high}."
        )
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise ParameterError(f"Dimension '{name}' in {source} is log-scaled, so low must be > 0.")
    step = spec.get("step")
    if step is not None and (not isinstance(step, int | float) or step <= 0):
        raise ParameterError(f"Dimension '{name}' in {source} needs a step > 0, got {step!r}.")
    if step is not None and log:
        raise ParameterError(f"Dimension '{name}' in {source} cannot have both 'log' and 'step'.")
    return Dim(
        name,
        kind,
        low=int(low) if kind == "int" else float(low),
        high=int(high) if kind == "int" else float(high),
        log=log,
        step=step,
        when=when_t,
    )


def check_against(dims: list[Dim], signature: Signature, source: str = "the search space") -> None:
    """Each dimension must be a parameter of the notebook, of a type that fits it."""
    for dim in dims:
        if dim.name not in signature.names:
            raise ParameterError(
                f"Dimension '{dim.name}' in {source} is not a parameter of "
                f"{signature.notebook}. Valid parameters: {', '.join(signature.names)}."
            )
        param = signature[dim.name]
        if dim.kind == "float" and param.type not in ("float", "any"):
            raise ParameterError(
                f"Dimension '{dim.name}' in {source} is a float range, but parameter "
                f"'{dim.name}' of {signature.notebook} is {param.type}. "
                + ("Use type: int." if param.type == "int" else "Use a list of choices.")
            )
        if dim.kind == "int" and param.type not in ("int", "float", "any"):
            raise ParameterError(
                f"Dimension '{dim.name}' in {source} is an int range, but parameter "
                f"'{dim.name}' of {signature.notebook} is {param.type}. Use a list of choices."
            )
        values = list(dim.choices) if dim.kind == "categorical" else [dim.low, dim.high]

        for value in values:
            try:
                validate({dim.name: value}, signature)
            except ParameterError as exc:
                raise ParameterError(f"Dimension '{dim.name}' in {source}: {exc}") from None


def suggest(trial: Any, dims: list[Dim]) -> dict[str, Any]:
    """Ask an Optuna trial for values, define-by-run, skipping inactive dimensions."""
    chosen: dict[str, Any] = {}
    for dim in dims:
        if not dim.active(chosen):
            continue
        if dim.kind == "categorical":
            chosen[dim.name] = trial.suggest_categorical(dim.name, list(dim.choices))
        elif dim.kind == "int":
            chosen[dim.name] = trial.suggest_int(
                dim.name, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log
            )
        else:
            chosen[dim.name] = trial.suggest_float(
                dim.name, dim.low, dim.high, step=dim.step, log=dim.log
            )
    return chosen


def grid(dims: list[Dim]) -> dict[str, list[Any]]:
    """The search space as Optuna's GridSampler takes it; every dimension must be finite."""
    out: dict[str, list[Any]] = {}
    for dim in dims:
        if dim.when:
            raise ParameterError(
                f"The grid sampler needs a fixed space, but '{dim.name}' is conditional. "
                "Use --sampler tpe or random, or drop 'when'."
            )
        if dim.kind == "categorical":
            out[dim.name] = list(dim.choices)
        elif dim.step is None and dim.kind == "float":
            raise ParameterError(
                f"The grid sampler needs a finite set of values: give float dimension "
                f"'{dim.name}' a 'step', or list its choices."
            )
        else:
            step = dim.step or 1
            count = math.floor((dim.high - dim.low) / step + 1e-9) + 1
            values = [dim.low + i * step for i in range(count)]
            out[dim.name] = [int(v) for v in values] if dim.kind == "int" else values
    return out
