"""Loading a registered model safely: weights without pickle, checked against the card.

A version loads only the weights file its card names, and only once the bytes read match
the sha256 that both the card and registry.json recorded at registration; any other weights
file in the version folder is refused. The hash a loaded model reports (the server's banner,
``/metadata``, every answer and log row) is of the very bytes that were loaded.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlkit._contract import BUILD, CARD_FILE, PREPROCESS_FILE, REGISTRY_FILE, WEIGHTS
from mlkit._io import read_json
from mlkit.errors import ModelNotFoundError, StateError, UnsafeModelError
from mlkit.lineage import sha256_file
from mlkit.rebuild import build_model, model_shape
from mlkit.registry.store import _VERSION_RE, model_dir, resolve

if TYPE_CHECKING:
    from torch import nn

    from mlkit.preprocess import Preprocessor

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl")
WEIGHT_SUFFIXES = (Path(WEIGHTS).suffix, *PICKLE_SUFFIXES)


@dataclass(frozen=True)
class WeightsRef:
    """The weights a version was registered with, and what to say when they do not match."""

    what: str  # "NAME vN", for messages
    path: Path
    expected: str  # sha256 recorded at registration
    fix: str


def check_weights_only_env(environ: dict[str, str] | None = None) -> None:
    """Refuse to go on when the environment tells torch to unpickle arbitrary objects.

    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` turns ``weights_only`` off for every ``torch.load``
    that does not pass it; in a server process that is any library's load, so it is refused
    rather than trusted to be harmless. ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=0`` states the same
    intent and is refused too.
    """
    env = os.environ if environ is None else environ
    bad = []
    if env.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "").strip().lower() in _TRUE:
        bad.append(f"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD={env['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD']}")
    forced = env.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    if forced is not None and forced.strip().lower() in _FALSE:
        bad.append(f"TORCH_FORCE_WEIGHTS_ONLY_LOAD={forced}")
    if bad:
        raise UnsafeModelError(
            f"The environment sets {' and '.join(bad)}, which lets torch.load run pickled code "
            "from a checkpoint. Unset it (unset TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD "
            "TORCH_FORCE_WEIGHTS_ONLY_LOAD) and start again."
        )


@dataclass
class LoadedModel:
    """A registered version, ready to predict: the module in eval mode and its card."""

    name: str
    version: int
    sha256: str
    module: nn.Module
    card: dict[str, Any]
    input_shape: tuple[int, ...]
    task: str
    classes: list[str] = field(default_factory=list)
    # A model trained on a table of the user's own: how its records become inputs.
    preprocessor: Preprocessor | None = None

    def records_to_inputs(self, records: list[dict[str, Any]]) -> Any:
        """Records in the table's own columns as the model's inputs, as in training.

        Raises:
            StateError: the model was not trained on a table, so it has no preprocessing.
            RecordError: a record lacks a column, has a wrong type or NaN (names both).
        """
        if self.preprocessor is None:
            raise StateError(
                f"{self.name} v{self.version} was not trained on a table, so it takes no "
                'records. Send "input"/"inputs" in its input space instead.'
            )
        self.preprocessor.validate_records(records)
        return self.preprocessor.transform(records).X

    def raw_to_inputs(self, X: Any) -> Any:
        """Raw features (float32, batch first) as the model's inputs, scaled as in training.

        Raises:
            StateError: the card does not say how the features were scaled (a card made
                before it kept the scaling, or data that could not be reloaded).
        """
        data = self.card.get("data") or {}
        if "feature_scaling" not in data:
            raise StateError(
                f"{self.name} v{self.version}'s card does not record how its features were "
                "scaled, so raw features cannot be converted. Send inputs already scaled "
                '("input"/"inputs"), or register the run again to record the scaling.'
            )
        scaling = data["feature_scaling"]
        if scaling is None:
            return X
        import numpy as np

        mean = np.asarray(scaling["mean"], dtype=np.float32)
        std = np.asarray(scaling["std"], dtype=np.float32)
        flat = X.reshape(len(X), -1)
        return ((flat - mean) / std).astype(np.float32).reshape(X.shape)

    def metadata(self) -> dict[str, Any]:
        data = self.card.get("data") or {}
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "model": (self.card.get("model") or {}).get("name"),
            "input_shape": list(self.input_shape),
            "dtype": "float32",
            "task": self.task,
            "classes": self.classes,
            "data_version": data.get("version"),
            "raw_inputs": "feature_scaling" in data,
            "records": self.preprocessor is not None,
            "run_id": (self.card.get("run") or {}).get("id"),
            "registered": self.card.get("created"),
        }


def _registered_weights(name: str, number: int, folder: Path, card: dict[str, Any]) -> WeightsRef:
    """The weights file and sha256 a version was registered with; card and registry agree.

    registry.json is written under the model's lock and lives outside the version folder, so
    a folder swapped whole (weights and a card to match) still disagrees with it.
    """
    weights = card.get("weights") or {}
    file = str(weights.get("file") or WEIGHTS)
    expected = weights.get("sha256")
    reg = read_json(folder.parent / REGISTRY_FILE) or {}
    entry = next((v for v in reg.get("versions", []) if v.get("version") == number), {})
    ref = WeightsRef(f"{name} v{number}", folder / file, expected or "", _fix(name, card))
    if Path(file).name != file or Path(file).suffix not in WEIGHT_SUFFIXES:
        raise UnsafeModelError(
            f"{folder / CARD_FILE} names {file!r} as the weights of {ref.what}: not a weights "
            f"file in the version folder. {ref.fix}"
        )
    if not expected or entry.get("sha256") != expected:
        raise UnsafeModelError(
            f"Refused to load {ref.path}: its card says sha256 {expected}, but "
            f"{folder.parent / REGISTRY_FILE} lists {entry.get('sha256')} for {ref.what}, so "
            f"its weights cannot be verified. {ref.fix}"
        )
    return ref


def _verified_bytes(ref: WeightsRef) -> tuple[bytes, str]:
    """The registered weights file, read once and checked against its hash before any load.

    Returns:
        The file's bytes and their sha256: what loads is exactly what was hashed.
    """
    for other in sorted(ref.path.parent.iterdir()):
        if other.name != ref.path.name and other.suffix in WEIGHT_SUFFIXES and other.is_file():
            raise UnsafeModelError(
                f"Refused to load {other}: the card of {ref.what} names {ref.path.name} with "
                f"sha256 {ref.expected}, and this file (sha256 {sha256_file(other)}) was added "
                f"or swapped in after registration. {ref.fix}"
            )
    if not ref.path.is_file():
        raise ModelNotFoundError(f"{ref.path} is missing: {ref.what} has no weights. {ref.fix}")
    data = ref.path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != ref.expected:
        raise UnsafeModelError(
            f"Refused to load {ref.path}: it has sha256 {actual}, but its card says "
            f"{ref.expected}: the file changed after registration. {ref.fix}"
        )
    return data, actual


def _fix(name: str, card: dict[str, Any]) -> str:
    run_id = (card.get("run") or {}).get("id") or "RUN"
    return (
        "Register the run again instead of editing a version: mlkit model register "
        f"{run_id} --name {name}"
    )


def _decode(path: Path, data: bytes) -> dict[str, Any]:
    """A state_dict from verified bytes: safetensors, or a legacy file without pickled code."""
    if path.suffix in PICKLE_SUFFIXES:
        return _torch_load_weights_only(path, data)
    from safetensors.torch import load

    return load(data)


def _torch_load_weights_only(path: Path, data: bytes) -> dict[str, Any]:
    """``torch.load`` that only ever unpickles tensors and containers, never code."""
    import pickle

    import torch

    check_weights_only_env()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError) as exc:
        raise UnsafeModelError(
            f"Refused to load {path}: it is not plain weights (torch.load with weights_only=True "
            f"said: {_torch_reason(exc)}). A checkpoint that needs pickled code can run "
            "anything; re-save the state_dict with safetensors.torch.save_file from a trusted "
            "environment."
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsafeModelError(
            f"{path} holds a {type(state).__name__}, not a state_dict of tensors. Save "
            "model.state_dict() with safetensors.torch.save_file."
        )
    return state


def _torch_reason(exc: BaseException) -> str:
    """The line of torch's long weights-only error that says what was refused."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    for line in lines:
        if "Unsupported global" in line or "WeightsUnpickler error" in line:
            return line.split(". Please", 1)[0]  # not its advice to allowlist the code
    return next((line for line in lines if line), type(exc).__name__)


def _task(card: dict[str, Any], n_outputs: int) -> str:
    return (card.get("data") or {}).get("task") or (
        "regression" if n_outputs == 1 else "classification"
    )


def task_of(name: str, ref: str | int | None = None, root: Path | None = None) -> str:
    """``classification`` or ``regression`` for a version, read from its files without torch."""
    folder = model_dir(name, root) / f"v{resolve(name, ref, root)}"
    build = (read_json(folder / BUILD) or {}).get("build") or {}
    return _task(read_json(folder / CARD_FILE) or {}, int(build.get("n_outputs", 0)))


def is_pinned(ref: str | int) -> bool:
    """Whether ``ref`` names a version (``v3`` or ``3``) rather than an alias or latest."""
    return bool(_VERSION_RE.match(str(ref)))


def load_model(name: str, ref: str | int | None = None, *, root: Path | None = None) -> LoadedModel:
    """Build version ``ref`` (``v3``, an alias, or latest) and load its weights without pickle.

    Raises:
        UnsafeModelError: the weights file differs from the sha256 registered for it, the
            version folder holds weights its card does not name, or loading would need pickle.
        ModelNotFoundError: the version's weights or model.json are missing.
    """

    number = resolve(name, ref, root)
    folder = model_dir(name, root) / f"v{number}"
    card = read_json(folder / CARD_FILE) or {}
    spec = read_json(folder / BUILD)
    if not spec:
        raise ModelNotFoundError(
            f"{folder / BUILD} is missing: version v{number} of {name!r} cannot be rebuilt. "
            f"Register the run again: mlkit model register RUN --name {name}"
        )
    input_shape, n_outputs = model_shape(spec)
    ref = _registered_weights(name, number, folder, card)
    data, sha256 = _verified_bytes(ref)
    module = build_model(
        spec,
        _decode(ref.path, data),
        what=f"{name} v{number}",
        fix="Register the run again.",
        notebook=(card.get("lineage") or {}).get("notebook"),
    )
    preprocessor = _preprocessor(name, number, folder, card)
    data = card.get("data") or {}
    task = _task(card, n_outputs)
    classes = data.get("class_names") or (
        [str(i) for i in range(n_outputs)] if task == "classification" else []
    )
    return LoadedModel(
        name=name,
        version=number,
        sha256=sha256,
        module=module,
        card=card,
        input_shape=input_shape,
        task=task,
        classes=list(classes),
        preprocessor=preprocessor,
    )


def _preprocessor(
    name: str, number: int, folder: Path, card: dict[str, Any]
) -> Preprocessor | None:
    """The version's preprocessing (a table's model), checked against the card's sha256."""
    import json

    from mlkit.preprocess import Preprocessor  # pandas and pyarrow: for a table's model only

    expected = (card.get("files") or {}).get(PREPROCESS_FILE)
    path = folder / PREPROCESS_FILE
    fix = _fix(name, card)
    if expected is None:
        if path.exists():
            raise UnsafeModelError(
                f"Refused to load {path}: the card of {name} v{number} names no preprocessing, "
                f"so this file was added after registration. {fix}"
            )
        return None
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing: {name} v{number} cannot read records. {fix}")
    raw = path.read_bytes()
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected:
        raise UnsafeModelError(
            f"Refused to load {path}: it has sha256 {actual}, but the card says {expected}: "
            f"the preprocessing changed after registration. {fix}"
        )
    return Preprocessor.from_dict(json.loads(raw))


def score(loaded: LoadedModel, X: Any) -> list[dict[str, Any]]:
    """Predictions for a float32 batch: class, index and probabilities, or a value."""
    import torch

    with torch.inference_mode():
        out = loaded.module(torch.from_numpy(X)).float()
    if loaded.task == "classification":
        probs = torch.softmax(out, dim=1).numpy()
        classes = loaded.classes
        return [
            {
                "class": classes[i] if i < len(classes) else str(i),
                "index": int(i),
                "probabilities": row.tolist(),
            }
            for i, row in zip(probs.argmax(axis=1).tolist(), probs, strict=True)
        ]
    data = loaded.card.get("data") or {}
    mean, std = float(data.get("target_mean", 0.0)), float(data.get("target_std", 1.0))
    values = out.reshape(len(X), -1)[:, 0].numpy() * std + mean  # back to the data's units
    return [{"value": float(v)} for v in values]


_FALSE = ("0", "n", "no", "false")


_TRUE = ("1", "y", "yes", "true")
