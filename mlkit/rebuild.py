"""Rebuilding what a run made: its module from ``model.json`` and weights, its data from its
parameters.

Kernel side, so the evaluate template and the registry share one way of doing each: an
evaluation of a run and a version registered from it see the same module and the same split.

A ``model.json`` names one of mlkit's architectures (``{"name": "mlp", "build": {...}}``,
built by :func:`mlkit.models.build`) or a class of the user's own (``{"class":
"mymodels:TinyNet", "build": {...}}``), imported and called with the recorded arguments.
Importing the user's code is trusted as any project import is; the class must be a
``torch.nn.Module``, so a model.json cannot name any other callable.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlkit import data as mdata
from mlkit import models, table_sources
from mlkit.errors import ModelNotFoundError, StateError, UnsafeArtifactError

if TYPE_CHECKING:
    from torch import nn

    from mlkit.data import Dataset

__all__ = ["CLASS_KEY", "build_model", "data_options", "import_class", "load_data", "model_shape"]

CLASS_KEY = "class"
_DATA_OPTIONS = ("n_samples", "n_features", "noise", "bias")


def model_shape(spec: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
    """(input shape, number of outputs) of the module a ``model.json`` describes."""
    build = spec.get("build") or {}
    missing = [k for k in models.SHAPE_KEYS if k not in build]
    if missing:
        raise UnsafeArtifactError(
            f"model.json of {spec.get(CLASS_KEY) or spec.get('name')!r} has no "
            f"{' or '.join(missing)} in its build, so nothing can say what the model takes. "
            'Save it again with run.save_model(model, build={"input_shape": '
            "list(data.input_shape), ...})."
        )
    return tuple(int(s) for s in build["input_shape"]), int(build["n_outputs"])


def build_model(
    spec: Mapping[str, Any],
    state: Mapping[str, Any],
    *,
    what: str,
    fix: str,
    notebook: str | Path | None = None,
) -> nn.Module:
    """The module ``spec`` (a ``model.json``) describes, with ``state`` loaded, in eval mode.

    Args:
        spec: ``{"name": architecture, "build": {"input_shape", "n_outputs", options...}}``,
            or ``{"class": "package.module:QualName", "build": {arguments...}}``.
        state: the weights, a state_dict of tensors.
        what: whose weights they are, for the error (``run 20240101-...``, ``digits v3``).
        fix: what to do when they do not fit, for the error.
        notebook: the run's notebook; its folder, and the current directory, are where a
            class's module is looked for when it is not importable already.

    Raises:
        ModelNotFoundError: the class's module or the class itself cannot be found.
        StateError: the class's module fails to import, or the class refuses the arguments.
        UnsafeArtifactError: ``state`` does not fit the module (tensors missing, extra or of
            another shape): the weights and their description do not belong together; or
            the model.json names something that is not a module class.
    """
    if CLASS_KEY in spec:
        path = spec[CLASS_KEY]
        cls = import_class(path, what=what, notebook=notebook)
        module = _construct(cls, spec.get("build") or {}, path=path, what=what)
        describes = f"the class {path} called with model.json's arguments"
        fix = f"Did the class change since the run? Restore it as it was, or train again. {fix}"
    else:
        input_shape, n_outputs = model_shape(spec)
        options = {k: v for k, v in spec["build"].items() if k not in models.SHAPE_KEYS}
        module = models.build(spec["name"], input_shape=input_shape, n_outputs=n_outputs, **options)
        describes = "the module model.json describes"
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UnsafeArtifactError(
            f"The weights of {what} do not fit {describes}: {str(exc).splitlines()[0]} {fix}"
        ) from None
    module.eval()
    return module


def import_class(path: str, *, what: str, notebook: str | Path | None = None) -> type[nn.Module]:
    """The ``torch.nn.Module`` subclass ``path`` (``package.module:QualName``) names.

    The notebook's folder and the current directory are added to the end of ``sys.path``
    first: a module beside the notebook imports as it did in the notebook's kernel.

    Raises:
        ModelNotFoundError: no such module, or no such class in it.
        StateError: the module exists but fails to import.
        UnsafeArtifactError: ``path`` is malformed or names something other than a module
            class.
    """
    module_name, _, qualname = str(path).partition(":")
    if not module_name or not qualname:
        raise UnsafeArtifactError(
            f"model.json of {what} names the class {path!r}; it must be "
            "'package.module:QualName'. Save the model again with run.save_model."
        )
    folders = _code_folders(notebook)
    where = ", ".join(str(f) for f in folders)
    file = module_name.replace(".", "/") + ".py"
    fix = (
        f"Put {file} back beside the notebook, run this from the folder that holds it, or add "
        "that folder to PYTHONPATH."
    )
    for folder in folders:
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
    importlib.invalidate_caches()  # a module written since this process started
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and not (module_name + ".").startswith(exc.name + "."):
            raise StateError(
                f"The class {path} of {what} cannot be imported: its module {module_name} "
                f"needs {exc.name!r}, which is not installed. Install it, then try again."
            ) from None
        raise ModelNotFoundError(
            f"The class {path} of {what} cannot be imported: no module {module_name!r} "
            f"(looked in {where} and the installed packages). {fix}"
        ) from None
    except Exception as exc:
        raise StateError(
            f"The class {path} of {what} cannot be imported: importing {module_name} raised "
            f"{type(exc).__name__}: {exc}. Fix the module, then try again."
        ) from None
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ModelNotFoundError(
                f"The class {path} of {what} cannot be imported: module {module_name} "
                f"({getattr(module, '__file__', None) or 'no file'}) has no {qualname}. "
                f"Restore the class there, or train again. {fix}"
            )
    from torch import nn  # torch only once a module is rebuilt: `import mlkit.rebuild` stays light

    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise UnsafeArtifactError(
            f"model.json of {what} names {path}, which is not a torch.nn.Module class: refused. "
            "Save the model again with run.save_model."
        )
    return found


def _code_folders(notebook: str | Path | None) -> list[Path]:
    """The notebook's folder (a relative path is read from here) and the current directory."""
    folders = [Path(notebook).resolve().parent] if notebook else []
    cwd = Path.cwd()
    return folders + ([cwd] if cwd not in folders else [])


def _construct(
    cls: type[nn.Module], build: Mapping[str, Any], *, path: str, what: str
) -> nn.Module:
    kwargs = models.class_kwargs(cls, build)
    try:
        return cls(**kwargs)
    except Exception as exc:
        raise StateError(
            f"The class {path} of {what} refused the arguments model.json records, {kwargs!r}: "
            f"{type(exc).__name__}: {exc}. Restore the class as it was when the run saved "
            "it, or train again."
        ) from None


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
    if table_sources.is_table_source(name):  # a table of the user's own, with its options
        options = {k: params.get(k) for k in table_sources.TABLE_OPTIONS}
        return mdata.load(name, seed=seed, check=check, **options)
    return mdata.load(name, seed=seed, check=check, **data_options(name, **params))
