"""Rebuilding what a run made: its module from ``model.json`` and weights, its data from its
parameters.

Kernel side, so the evaluate template and the registry share one way of doing each: an
evaluation of a run and a version registered from it see the same module and the same split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mlkit import data as mdata
from mlkit import models
from mlkit.errors import UnsafeArtifactError

if TYPE_CHECKING:
    from torch import nn

    from mlkit.data import Dataset

__all__ = ["build_model", "data_options", "load_data", "model_shape"]

_DATA_OPTIONS = ("n_samples", "n_features", "noise", "bias")


def model_shape(spec: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
    """(input shape, number of outputs) of the module a ``model.json`` describes."""
    build = spec["build"]
    return tuple(int(s) for s in build["input_shape"]), int(build["n_outputs"])


def build_model(
    spec: Mapping[str, Any], state: Mapping[str, Any], *, what: str, fix: str
) -> nn.Module:
    """The module ``spec`` (a ``model.json``) describes, with ``state`` loaded, in eval mode.

    Args:
        spec: ``{"name": architecture, "build": {"input_shape", "n_outputs", options...}}``.
        state: the weights, a state_dict of tensors.
        what: whose weights they are, for the error (``run 20240101-...``, ``digits v3``).
        fix: what to do when they do not fit, for the error.

    Raises:
        UnsafeArtifactError: ``state`` does not fit the module (tensors missing, extra or of
            another shape): the weights and their description do not belong together.
    """
    input_shape, n_outputs = model_shape(spec)
    options = {k: v for k, v in spec["build"].items() if k not in ("input_shape", "n_outputs")}
    module = models.build(spec["name"], input_shape=input_shape, n_outputs=n_outputs, **options)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UnsafeArtifactError(
            f"The weights of {what} do not fit the module model.json describes: "
            f"{str(exc).splitlines()[0]} {fix}"
        ) from None
    module.eval()
    return module


def data_options(dataset: str, /, **values: Any) -> dict[str, Any]:
    """The synthetic-data options of ``values`` that ``mlkit.data.load`` accepts for ``dataset``.

    Bundled datasets take none of them, and only ``synthetic_fairness`` takes ``bias``; a run's
    parameters may carry them anyway (templates declare them for every dataset).
    """
    if not dataset.startswith("synthetic_"):
        return {}
    keep = {k: v for k, v in values.items() if k in _DATA_OPTIONS and v is not None}
    if dataset != "synthetic_fairness":
        keep.pop("bias", None)
    return keep


def load_data(name: str, params: Mapping[str, Any], *, check: bool = True) -> Dataset:
    """Dataset ``name`` as a run with parameters ``params`` loaded it: the same split.

    The split seed is ``data_seed`` (``seed`` for a notebook without one, where it seeded
    both), and the synthetic options among ``params`` that ``name`` takes are passed on, so
    the test split is the one the run never trained on. ``check`` is ``mlkit.data.load``'s.
    """
    seed = int(params.get("data_seed", params.get("seed", 0)))
    return mdata.load(name, seed=seed, check=check, **data_options(name, **params))
