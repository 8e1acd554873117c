"""Model registry: small builders keyed by name, so a notebook picks a model with one string.

Builders import torch inside their body, so ``import mlkit.models`` stays cheap. Every model
returns raw outputs of shape (batch, n_outputs): logits for classification, and (batch, 1) for
regression, which :func:`mlkit.train.fit` squeezes.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mlkit.errors import ParameterError, UnknownNameError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "SHAPE_KEYS",
    "build",
    "class_kwargs",
    "class_path",
    "defaults",
    "names",
    "parse_sizes",
    "register",
]

Builder = Callable[..., "nn.Module"]
_REGISTRY: dict[str, Builder] = {}
_ACTIVATIONS = ("gelu", "relu")
# What one example looks like and how many outputs: every model.json's build holds them.
SHAPE_KEYS = ("input_shape", "n_outputs")


def register(name: str) -> Callable[[Builder], Builder]:
    """Register ``builder(input_shape, n_outputs, **params) -> nn.Module`` under ``name``.

    Registering a name again replaces the builder, so re-running a notebook cell that defines a
    model works instead of raising.
    """

    def decorator(builder: Builder) -> Builder:
        params = list(inspect.signature(builder).parameters)
        if params[:2] != ["input_shape", "n_outputs"]:
            raise ParameterError(
                f"Model builder {builder.__name__!r} must take (input_shape, n_outputs, ...) as "
                f"its first parameters, got {params[:2]}. Rename them."
            )
        _REGISTRY[name] = builder
        return builder

    return decorator


def names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def _builder(name: str) -> Builder:
    if name not in _REGISTRY:
        raise UnknownNameError(
            f"Unknown model {name!r}. Valid names: {', '.join(names())}. Pass -p model mlp."
        )
    return _REGISTRY[name]


def defaults(name: str) -> dict[str, Any]:
    """The hyperparameters a model accepts, with their defaults."""
    sig = inspect.signature(_builder(name))
    return {k: p.default for k, p in list(sig.parameters.items())[2:]}


def build(name: str, *, input_shape: Sequence[int], n_outputs: int, **params: Any) -> nn.Module:
    """Build model ``name`` for samples of ``input_shape`` with ``n_outputs`` outputs.

    Typical use: ``build("mlp", input_shape=data.input_shape, n_outputs=data.n_outputs,
    hidden="128,64")``. Unknown hyperparameters raise ParameterError naming the valid ones, so a
    typo in a sweep never silently trains the default model.
    """
    builder = _builder(name)
    valid = defaults(name)
    for key in params:
        if key not in valid:
            raise ParameterError(
                f"Unknown parameter {key!r} for model {name!r}. Valid parameters: "
                f"{', '.join(sorted(valid)) or '(none)'}. Remove it or fix the spelling."
            )
    shape = _shape(input_shape)
    if not isinstance(n_outputs, numbers.Integral) or isinstance(n_outputs, bool) or n_outputs < 1:
        raise ParameterError(
            f"The 'n_outputs' parameter of build must be an int >= 1. Got {n_outputs!r} "
            "instead. Pass n_outputs=data.n_outputs."
        )
    return builder(shape, int(n_outputs), **params)


def class_path(cls: type) -> str:
    """``package.module:QualName``, how a model.json names a class of the user's own."""
    return f"{cls.__module__}:{cls.__qualname__}"


def class_kwargs(cls: type, build: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments a class of the user's own is called with to rebuild it.

    ``build`` holds the arguments the model was constructed with, plus ``input_shape`` and
    ``n_outputs``, which describe it to the server; those two are passed on only when the
    class's ``__init__`` takes a parameter of that name.
    """
    takes = inspect.signature(cls).parameters
    return {k: v for k, v in build.items() if k not in SHAPE_KEYS or k in takes}


def _shape(input_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
        ok = len(shape) > 0 and all(s >= 1 for s in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ParameterError(
            f"The 'input_shape' parameter of build must be a non-empty sequence of positive "
            f"ints. Got {input_shape!r} instead. Pass input_shape=data.input_shape."
        )
    return shape


def parse_sizes(value: Any, *, name: str = "hidden") -> tuple[int, ...]:
    """Turn ``"128,64"``, ``128``, ``[128, 64]`` or ``""`` into a tuple of positive ints.

    Layer sizes arrive as strings because notebook parameters must be primitive values.
    """
    if isinstance(value, bool):
        items: list[Any] = [value]  # reported as invalid below; True is not a size
    elif isinstance(value, numbers.Integral):
        items = [value]
    elif isinstance(value, str):
        items = [part.strip() for part in value.split(",")] if value.strip() else []
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        items = [value]
    sizes: list[int] = []
    for item in items:
        is_int = isinstance(item, numbers.Integral) and not isinstance(item, bool)
        size = int(item) if is_int or (isinstance(item, str) and item.isdigit()) else None
        if size is None or size < 1:
            raise ParameterError(
                f"The '{name}' parameter must be comma-separated positive ints like '128,64' "
                f"(or '' for none). Got {value!r} instead. Pass -p {name} 128,64."
            )
        sizes.append(size)
    return tuple(sizes)


def _dropout(value: Any, model: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value < 1:
        raise ParameterError(
            f"The 'dropout' parameter of model {model!r} must be a float in [0, 1). Got "
            f"{value!r} instead. Pass -p dropout 0.1."
        )
    return float(value)


def _activation(value: Any, model: str) -> type[nn.Module]:
    from torch import nn

    if value not in _ACTIVATIONS:
        raise ParameterError(
            f"The 'activation' parameter of model {model!r} must be one of "
            f"{', '.join(_ACTIVATIONS)}. Got {value!r} instead. Pass -p activation relu."
        )
    return {"gelu": nn.GELU, "relu": nn.ReLU}[value]


def _features(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@register("linear")
def _linear(input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """Flatten then one affine layer: the baseline every other model must beat."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(_features(input_shape), n_outputs))


@register("mlp")
def _mlp(
    input_shape: tuple[int, ...],
    n_outputs: int,
    *,
    hidden: str | Sequence[int] | int = "128,64",
    dropout: float = 0.0,
    activation: str = "relu",
) -> nn.Module:
    """Flatten, then Linear -> activation -> dropout per hidden size, then the output layer."""
    from torch import nn

    sizes = parse_sizes(hidden, name="hidden")
    p = _dropout(dropout, "mlp")
    act = _activation(activation, "mlp")
    layers: list[nn.Module] = [nn.Flatten()]
    width = _features(input_shape)
    for size in sizes:
        layers += [nn.Linear(width, size), act()]
        if p:
            layers.append(nn.Dropout(p))
        width = size
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


@register("cnn")
def _cnn(
    input_shape: tuple[int, ...],
    n_outputs: int,
    *,
    channels: str | Sequence[int] | int = "16,32",
    dropout: float = 0.0,
) -> nn.Module:
    """Conv3x3 -> ReLU -> MaxPool2 per channel size, then dropout and a linear head."""
    from torch import nn

    if len(input_shape) != 3:
        raise ParameterError(
            f"Model 'cnn' needs image input of shape (C, H, W), got input_shape "
            f"{tuple(input_shape)}. Use model 'mlp' or 'linear' for flat features, or dataset "
            "'digits' for images."
        )
    sizes = parse_sizes(channels, name="channels")
    if not sizes:
        raise ParameterError(
            "The 'channels' parameter of model 'cnn' needs at least one size. Got "
            f"{channels!r} instead. Pass -p channels 16,32."
        )
    p = _dropout(dropout, "cnn")
    c, h, w = input_shape
    if h >> len(sizes) < 1 or w >> len(sizes) < 1:
        raise ParameterError(
            f"The 'channels' parameter of model 'cnn' gives {len(sizes)} blocks, each halving "
            f"the image, but a {h}x{w} input allows at most {min(h, w).bit_length() - 1}. "
            "Pass fewer sizes, e.g. -p channels 16,32."
        )
    layers: list[nn.Module] = []
    for size in sizes:
        layers += [nn.Conv2d(c, size, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = size, h // 2, w // 2
    layers.append(nn.Flatten())
    if p:
        layers.append(nn.Dropout(p))
    layers.append(nn.Linear(c * h * w, n_outputs))
    return nn.Sequential(*layers)
