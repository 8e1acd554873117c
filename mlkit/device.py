"""Where training runs and how exactly it repeats: the device, mixed precision, the seeds.

``pick_device`` turns ``-p device auto`` into a device that exists here, and
``mixed_precision_dtype`` turns ``-p amp auto`` into the autocast dtype that device supports.
``seed_everything`` seeds every generator a run draws from and pins the kernels that would
otherwise differ from run to run.
"""

from __future__ import annotations

import numbers
import os
import random
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from mlkit.errors import ParameterError

__all__ = [
    "autocast_context",
    "mixed_precision_dtype",
    "model_device",
    "pick_device",
    "seed_everything",
]


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed Python, numpy and torch (all devices); with ``deterministic`` pin the kernels too.

    Call it before building the model so initial weights repeat. ``CUBLAS_WORKSPACE_CONFIG``
    only takes effect if set before CUDA's first cuBLAS call, so call this early in a process.
    Determinism settings are process-global and stay after ``fit`` returns.
    """
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ParameterError(
            f"The 'seed' parameter of seed_everything must be an int in [0, 2**32). Got "
            f"{seed!r} instead. Pass -p seed 0."
        )
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: an op without a deterministic kernel should warn, not kill a long run.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing: not repeatable


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; an explicit device must exist here."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise ParameterError(
                f"The 'device' parameter must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'. Got "
                f"{device!r} instead. Pass -p device auto."
            ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(
            f"The 'device' parameter asks for {str(dev)!r} but CUDA is not available here. "
            "Pass -p device auto or -p device cpu."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ParameterError(
            f"The 'device' parameter asks for {str(dev)!r} but this machine has "
            f"{torch.cuda.device_count()} CUDA device(s). Pass -p device cuda:0."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ParameterError(
            "The 'device' parameter asks for 'mps' but MPS is not available here. "
            "Pass -p device auto or -p device cpu."
        )
    return dev


def mixed_precision_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``amp`` (auto, bf16, fp16, off) asks for on ``device``; None for none.

    ``auto`` is bf16 on CUDA where supported, fp16 on older CUDA devices, and full precision
    elsewhere; ``bf16`` and ``fp16`` need a CUDA device.
    """
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise ParameterError(
            f"The 'amp' parameter {amp!r} needs a CUDA device, but fit runs on {device}. "
            "Pass -p amp auto (mixed precision on CUDA only) or -p amp off."
        )
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> Callable[[], Any]:
    """A factory of autocast contexts for ``dtype`` on ``device`` (a no-op one for None)."""
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters; cpu for a model without any."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
