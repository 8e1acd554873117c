"""The training loop: one plain ``fit()`` function, in the spirit of nanoGPT's train.py.

Each step runs in a fixed order: set the learning rate, forward, backward, clip, optimizer step.
After each epoch: evaluate on val under ``no_grad``, keep the best weights, log, run callbacks,
check early stopping. At the end the best weights are loaded back into the model.

Threads: ``fit`` never changes ``torch.set_num_threads``; the caller (or the kernel that runs the
notebook) decides. On a 2-core machine one thread is often the fastest for small models.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlkit import metrics as _metrics
from mlkit.data import Dataset, Split, as_tensors
from mlkit.device import (
    autocast_context,
    mixed_precision_dtype,
    model_device,
    pick_device,
    seed_everything,
)
from mlkit.errors import ParameterError, UnknownNameError

__all__ = [
    "AMP_MODES",
    "LOG_INTERVAL_S",
    "OPTIMIZERS",
    "SCHEDULES",
    "FitResult",
    "evaluate",
    "fit",
    "pick_device",
    "predict",
    "seed_everything",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
AMP_MODES = ("auto", "bf16", "fp16", "off")

# With log_every=None the step loss is recorded at most this often, and pending log calls are
# delivered in one burst at most this often. A step log costs a device sync, and W&B's run.log
# blocks on a round trip to its I/O thread: ~0.15 ms back to back but ~1 ms when spread out,
# measured here. Bounding by time keeps logging under 1% of training whatever the step time,
# where a fixed step count is too chatty for a 1 ms step and too sparse for a 1 s step. Epochs
# longer than this are logged the moment they end, exactly as with synchronous logging.
# Calling log from a helper thread instead was measured too: no faster on 2 shared cores.
LOG_INTERVAL_S = 0.25

_MINIMIZE = ("loss", "rmse", "mae", "error")


@dataclass
class FitResult:
    """What ``fit`` returns: the model with its best weights loaded, and how it got there."""

    model: nn.Module
    history: list[dict[str, float]]
    best_epoch: int  # 1-based; 0 when no epoch produced a finite monitored value
    best_score: float
    monitor: str
    best_state: dict[str, torch.Tensor]  # on CPU, ready for torch.save / safetensors
    steps: int
    seconds: float
    device: str
    stopped_early: bool
    stop_reason: str = ""  # "patience", "callback", "non-finite train loss" or ""
    mode: str = field(default="min")  # "min" or "max": how monitor was compared


# (rule text, check, example fix) per numeric parameter; validated once, before any work.
_INT_RULES: dict[str, tuple[str, Callable[[int], bool], str]] = {
    "epochs": ("an int >= 1", lambda v: v >= 1, "10"),
    "batch_size": ("an int >= 1", lambda v: v >= 1, "64"),
    "patience": ("an int >= 0 (0 disables early stopping)", lambda v: v >= 0, "5"),
    "seed": ("an int in [0, 2**32)", lambda v: 0 <= v < 2**32, "0"),
}
_FLOAT_RULES: dict[str, tuple[str, Callable[[float], bool], str]] = {
    "lr": ("a float > 0", lambda v: v > 0 and math.isfinite(v), "0.001"),
    "weight_decay": ("a float >= 0", lambda v: 0 <= v < math.inf, "0.0"),
    "momentum": ("a float in [0, 1)", lambda v: 0 <= v < 1, "0.9"),
    "warmup_epochs": ("a float >= 0 (epochs, may be fractional)", lambda v: 0 <= v < math.inf, "0"),
    "grad_clip": ("a float >= 0 (0 disables clipping)", lambda v: 0 <= v < math.inf, "1.0"),
}


def _param_error(param: str, rule: str, value: Any, fix: str) -> ParameterError:
    return ParameterError(
        f"The '{param}' parameter of fit must be {rule}. Got {value!r} instead. "
        f"Pass -p {param} {fix}."
    )


def _validate(values: dict[str, Any]) -> None:
    for name, (rule, ok, fix) in _INT_RULES.items():
        v = values[name]
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or not ok(v):
            raise _param_error(name, rule, v, fix)
    for name, (rule, ok, fix) in _FLOAT_RULES.items():
        v = values[name]
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not ok(float(v)):
            raise _param_error(name, rule, v, fix)
    if values["warmup_epochs"] >= values["epochs"]:
        raise _param_error(
            "warmup_epochs", f"< epochs ({values['epochs']})", values["warmup_epochs"], "0"
        )
    log_every = values["log_every"]
    if log_every is not None and (
        not isinstance(log_every, numbers.Integral) or isinstance(log_every, bool) or log_every < 1
    ):
        raise _param_error(
            "log_every", "an int >= 1, or None for time-based logging", log_every, "10"
        )
    for name, valid in (
        ("optimizer", OPTIMIZERS),
        ("schedule", SCHEDULES),
        ("amp", AMP_MODES),
    ):
        if values[name] not in valid:
            raise UnknownNameError(
                f"Unknown {name} {values[name]!r}. Valid names: {', '.join(valid)}. "
                f"Pass -p {name} {valid[0] if name != 'amp' else 'auto'}."
            )
    if values["log"] is not None and not callable(values["log"]):
        raise ParameterError(
            f"The 'log' parameter of fit must be a callable log(metrics, step) or None. Got "
            f"{values['log']!r} instead. Pass log=run.log."
        )


def _metric_names(task: str) -> list[str]:
    names = ["val/accuracy", "val/f1_macro", "val/log_loss"]
    if task == "regression":
        names = ["val/rmse", "val/mae", "val/r2"]
    return ["val/loss", "train/loss", *names]


def _resolve_monitor(monitor: str, task: str) -> tuple[str, str]:
    valid = _metric_names(task)
    key = "val/loss" if monitor == "auto" else monitor
    if "/" not in key:
        key = f"val/{key}"  # "accuracy" is what people type in a notebook
    if key not in valid:
        raise UnknownNameError(
            f"Unknown monitor {monitor!r} for a {task} dataset. Valid names: auto, "
            f"{', '.join(valid)}. Pass -p monitor val/loss."
        )
    mode = "min" if any(word in key for word in _MINIMIZE) else "max"
    return key, mode


def _make_optimizer(
    name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _loss(out: torch.Tensor, y: torch.Tensor, regression: bool) -> torch.Tensor:
    # No .float() needed: autocast runs both losses in float32 (its fp32 op list).
    if regression:
        return F.mse_loss(out.reshape(-1), y)
    return F.cross_entropy(out, y)


def _outputs(
    model: nn.Module,
    X: torch.Tensor,
    batch_size: int,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast():
            outs = [model(X[i : i + batch_size]) for i in range(0, len(X), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs).float()


def _evaluate(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    task: str,
    batch_size: int,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> dict[str, float]:
    out = _outputs(model, X, batch_size, autocast)
    regression = task == "regression"
    loss = _loss(out, y, regression)
    out_np = out.cpu().numpy()  # CPU-GPU sync point, once per evaluation
    y_np = y.cpu().numpy()
    scores = (
        _metrics.regression(y_np, out_np)
        if regression
        else _metrics.classification(y_np, out_np, from_logits=True)
    )
    return {"loss": float(loss), **scores}


def evaluate(
    model: nn.Module,
    split: Split,
    *,
    task: str,
    device: str | torch.device | None = None,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Loss plus :mod:`mlkit.metrics` of ``model`` on ``split``, as plain floats (no prefix).

    ``device=None`` uses the device the model's parameters are on.
    """
    if task not in ("classification", "regression"):
        raise UnknownNameError(
            f"Unknown task {task!r}. Valid names: classification, regression. Pass task=data.task."
        )
    dev = model_device(model) if device is None else pick_device(device)
    model.to(dev)
    X = torch.from_numpy(split.X).to(dev)
    y = torch.from_numpy(split.y).to(dev)
    return _evaluate(model, X, y, task, batch_size)


def predict(
    model: nn.Module,
    X: np.ndarray | Split,
    *,
    task: str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Class probabilities (n, n_classes) for classification, values (n,) for regression.

    ``task=None`` infers it from the output width: one column means regression, since
    classifiers here always have one logit per class (two for binary).
    """
    if isinstance(X, Split):
        X = X.X
    dev = model_device(model) if device is None else pick_device(device)
    model.to(dev)
    out = _outputs(model, torch.as_tensor(np.asarray(X, dtype=np.float32)).to(dev), batch_size)
    out_np = out.cpu().numpy()
    if task is None:
        task = "regression" if out_np.shape[1] == 1 else "classification"
    if task == "regression":
        return out_np.reshape(-1)
    if task == "classification":
        return _metrics.softmax(out_np).astype(np.float32)
    raise UnknownNameError(
        f"Unknown task {task!r}. Valid names: classification, regression. Pass task=data.task."
    )


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _flush(log: Callable[[dict[str, Any], int], Any], pending: list[tuple[dict, int]]) -> float:
    """Deliver pending log calls in order; return the time, for the next interval."""
    for metrics, step in pending:
        log(metrics, step)
    pending.clear()
    return time.perf_counter()


def _progress_bar(epochs: int) -> Any:
    from tqdm.auto import tqdm  # only a fit that shows progress pays for tqdm

    return tqdm(total=epochs, unit="epoch", desc="fit")


def _check_output(model: nn.Module, X: torch.Tensor, data: Dataset) -> None:
    # One tiny eval-mode forward before training: a model built for another dataset fails here
    # with a fixable message instead of deep inside the loop (or, for MSE, silently broadcasting).
    try:
        out = _outputs(model, X[:2], 2)
    except RuntimeError as err:
        raise ParameterError(
            f"The model cannot take samples of shape {tuple(data.input_shape)} from dataset "
            f"'{data.name}': {err}. Build it with input_shape=data.input_shape."
        ) from None
    expected = data.n_outputs
    ok = out.ndim == 2 and out.shape[1] == expected
    if data.task == "regression":
        ok = ok or out.ndim == 1
    if not ok:
        raise ParameterError(
            f"The model outputs shape {tuple(out.shape[1:])} per batch of 2, but dataset "
            f"'{data.name}' ({data.task}) needs {expected} output(s) per sample. Build it with "
            "n_outputs=data.n_outputs."
        )


# Long on purpose: the training loop reads top to bottom in one place, in a fixed order
# (learning rate, step, evaluate, keep the best, log, stop), as nanoGPT's does; the argument
# checks and setup are helpers above, and splitting the loop would scatter its shared state.
def fit(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adamw",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    schedule: str = "cosine",
    warmup_epochs: float = 0.0,
    grad_clip: float = 0.0,
    patience: int = 0,
    monitor: str = "auto",
    seed: int = 0,
    device: str | torch.device = "auto",
    amp: str = "auto",
    log: Callable[[dict[str, Any], int], Any] | None = None,
    log_every: int | None = None,
    callbacks: Iterable[Callable[[int, dict[str, float]], Any]] = (),
    progress: bool = False,
) -> FitResult:
    """Train ``model`` on ``data.train``, evaluating on ``data.val`` after every epoch.

    Args:
        epochs: Maximum number of passes over train.
        lr: Peak learning rate; ``schedule="cosine"`` decays it per step towards 0 after a
            linear warmup of ``warmup_epochs`` epochs (a float, so 0.5 means half an epoch).
        optimizer: ``adam``, ``adamw`` or ``sgd`` (``momentum``, no Nesterov).
        grad_clip: Max global gradient norm; 0 disables clipping.
        patience: Stop after this many epochs without improvement of ``monitor``; 0 disables.
        monitor: ``val/loss`` by default; names containing loss, rmse or mae are minimised,
            others (``val/accuracy``, ``val/r2``, ...) maximised. ``accuracy`` means
            ``val/accuracy``.
        seed: Seeds the shuffling and torch's global RNG (dropout). Initial weights come from
            whatever seeded the model's construction: call ``seed_everything`` before building.
        device: ``auto`` (cuda, mps, cpu) or an explicit device. The model is moved there.
        amp: ``auto`` uses bf16 autocast on CUDA (fp16 with a GradScaler where bf16 is not
            supported) and full precision elsewhere; ``bf16``/``fp16`` force it (CUDA only);
            ``off`` disables it.
        log: ``log(metrics, step)``, e.g. a W&B ``run.log``. Each epoch's metrics are logged at
            the epoch's last step; between, the mean train loss of the steps since the last
            record is logged every ``log_every`` steps, or with ``log_every=None`` at most every
            ``LOG_INTERVAL_S`` seconds. The loss is accumulated on the device, so there is no
            per-step ``.item()`` sync. Calls are delivered in step order, in bursts at most
            ``LOG_INTERVAL_S`` apart (epochs shorter than that are batched), and all of them
            before ``fit`` returns or raises.
        callbacks: ``cb(epoch, metrics)`` after each epoch; returning ``"stop"`` ends
            training, as a pruner would. Exceptions propagate. A callback that logs to the same
            W&B run itself should not pass explicit steps: batched calls may still be pending.
        progress: Show a tqdm bar over epochs.

    Returns:
        FitResult with the best weights loaded into ``model``. ``torch.set_num_threads`` is
        left alone. On CPU, two calls with the same seed, data and initial weights give
        bit-identical history (except ``seconds``) and weights.
    """
    _validate(locals())
    monitor_key, mode = _resolve_monitor(monitor, data.task)
    dev = pick_device(device)
    amp_dtype = mixed_precision_dtype(amp, dev)
    autocast = autocast_context(dev, amp_dtype)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    regression = data.task == "regression"
    callbacks = list(callbacks)

    torch.manual_seed(seed)  # dropout and any other draw from torch's global generator
    shuffle_gen = torch.Generator().manual_seed(seed)
    model.to(dev)
    # Small datasets live on the device whole: indexing a tensor is far cheaper than a
    # DataLoader's per-batch collation for models whose step takes a millisecond.
    X_train, y_train = as_tensors(data.train, device=dev)
    X_val, y_val = as_tensors(data.val, device=dev)
    _check_output(model, X_train, data)
    opt = _make_optimizer(optimizer, model.parameters(), lr, weight_decay, momentum)

    n = len(X_train)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    cosine = schedule == "cosine"
    last_batch = n - (steps_per_epoch - 1) * batch_size

    history: list[dict[str, float]] = []
    best_score = math.nan
    best_epoch = 0
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs = 0
    stop_reason = ""
    step = 0
    lr_now = lr
    t_start = time.perf_counter()
    last_record = last_flush = t_start
    # Log calls wait here and go out in bursts: back to back, W&B's I/O thread stays awake and
    # a call costs far less than spread-out calls (see LOG_INTERVAL_S).
    pending: list[tuple[dict[str, float], int]] = []
    bar = _progress_bar(epochs) if progress else None

    model.train()
    try:
        for epoch in range(1, epochs + 1):
            t_epoch = time.perf_counter()
            perm = torch.randperm(n, generator=shuffle_gen).to(dev)
            # Step losses stay on the device; reading one forces a sync, so only logging does.
            # A list append costs ~1 µs where an in-place running sum costs ~5 µs per step.
            losses: list[torch.Tensor] = []
            recorded = seen = 0  # steps of this epoch already in a step record
            for start in range(0, n, batch_size):
                if cosine or step < warmup_steps:
                    if step < warmup_steps:
                        lr_now = lr * (step + 1) / warmup_steps
                    else:
                        progress_ = (step - warmup_steps) / max(1, total_steps - warmup_steps)
                        lr_now = lr * 0.5 * (1.0 + math.cos(math.pi * progress_))
                    for group in opt.param_groups:
                        group["lr"] = lr_now
                idx = perm[start : start + batch_size]
                xb, yb = X_train[idx], y_train[idx]
                with autocast():
                    loss = _loss(model(xb), yb, regression)
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if grad_clip:
                        scaler.unscale_(opt)
                        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    if grad_clip:
                        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    opt.step()
                losses.append(loss.detach())
                seen += batch_size
                step += 1
                # The epoch's last step is logged with the epoch's metrics instead.
                if log is not None and seen < n:
                    if log_every is not None:
                        due = step % log_every == 0
                    else:
                        due = time.perf_counter() - last_record >= LOG_INTERVAL_S
                    if due:
                        # CPU-GPU sync point, once per record. Full batches only: the short
                        # last batch is never in a step record.
                        window = torch.stack(losses[recorded:]).mean().item()
                        record = {"train/loss": window, "lr": lr_now, "epoch": epoch - 1 + seen / n}
                        pending.append((record, step))
                        recorded = len(losses)
                        last_record = time.perf_counter()
                        if last_record - last_flush >= LOG_INTERVAL_S:
                            last_flush = _flush(log, pending)

            # Sample-weighted mean (the last batch may be short); CPU-GPU sync, once per epoch.
            epoch_sum = torch.stack(losses).sum() * batch_size + losses[-1] * (
                last_batch - batch_size
            )
            train_loss = epoch_sum.item() / n
            val = _evaluate(model, X_val, y_val, data.task, 1024, autocast)
            metrics: dict[str, float] = {"epoch": epoch, "train/loss": train_loss}
            metrics.update({f"val/{k}": v for k, v in val.items()})
            metrics["lr"] = lr_now
            metrics["seconds"] = time.perf_counter() - t_epoch
            history.append(metrics)

            score = metrics[monitor_key]
            improved = math.isfinite(score) and (
                best_state is None or (score < best_score if mode == "min" else score > best_score)
            )
            if improved:
                best_score, best_epoch, bad_epochs = score, epoch, 0
                best_state = _cpu_state(model)
            else:
                bad_epochs += 1

            if log is not None:
                pending.append((dict(metrics), step))
                if time.perf_counter() - last_flush >= LOG_INTERVAL_S:
                    last_flush = _flush(log, pending)
            if bar is not None:
                bar.set_postfix({monitor_key: f"{score:.4g}"}, refresh=False)
                bar.update(1)
            for cb in callbacks:
                if cb(epoch, dict(metrics)) == "stop":
                    stop_reason = "callback"
            if not stop_reason and not math.isfinite(train_loss):
                stop_reason = "non-finite train loss"  # every later step would be wasted
            if not stop_reason and patience and bad_epochs >= patience:
                stop_reason = "patience"
            if stop_reason:
                break
    finally:
        if log is not None and pending:
            _flush(log, pending)
        if bar is not None:
            bar.close()

    if best_state is None:  # no finite monitored value: keep the final weights
        best_state = _cpu_state(model)
    else:
        model.load_state_dict(best_state)
    return FitResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        best_score=best_score,
        monitor=monitor_key,
        best_state=best_state,
        steps=step,
        seconds=time.perf_counter() - t_start,
        device=str(dev),
        stopped_early=bool(stop_reason),
        stop_reason=stop_reason,
        mode=mode,
    )
