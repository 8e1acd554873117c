"""Tests for mlkit.train: the fit loop's behaviour, determinism, logging and errors."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from mlkit import data, models, train
from mlkit.errors import ParameterError, UnknownNameError


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Two threads made tiny models several times slower on the 2-core CI machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.load("digits_flat")


@pytest.fixture(scope="module")
def wine() -> data.Dataset:
    return data.load("wine")


def _mlp(ds: data.Dataset, seed: int = 0, **params) -> torch.nn.Module:
    train.seed_everything(seed)
    return models.build("mlp", input_shape=ds.input_shape, n_outputs=ds.n_outputs, **params)


def _no_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_mlp_learns_digits(digits: data.Dataset) -> None:
    # Rule: the default template model reaches > 0.9 val accuracy on digits in a few epochs.
    result = train.fit(_mlp(digits), digits, epochs=8, lr=3e-3)
    assert result.history[-1]["val/accuracy"] > 0.9
    assert result.seconds < 10
    assert result.steps == 8 * math.ceil(len(digits.train) / 64)
    # device="auto" picks the GPU where there is one
    assert result.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not result.stopped_early
    assert set(result.history[0]) == {
        "epoch", "train/loss", "val/loss", "val/accuracy", "val/f1_macro", "val/log_loss",
        "lr", "seconds",
    }  # fmt: skip


def test_cnn_learns_digit_images() -> None:
    # Rule: the cnn trains end to end on image-shaped data.
    ds = data.load("digits")
    train.seed_everything(0)
    model = models.build("cnn", input_shape=ds.input_shape, n_outputs=ds.n_outputs, channels="8,16")
    result = train.fit(model, ds, epochs=6, lr=5e-3)
    assert result.history[-1]["val/accuracy"] > 0.85


def test_same_seed_is_bit_identical(wine: data.Dataset) -> None:
    # Rule: on CPU two fits with the same seed give identical history and weights.
    kwargs = {"epochs": 4, "batch_size": 16, "seed": 7}
    a = train.fit(_mlp(wine, dropout=0.2), wine, **kwargs)
    b = train.fit(_mlp(wine, dropout=0.2), wine, **kwargs)
    assert _no_time(a.history) == _no_time(b.history)
    for key, value in a.best_state.items():
        assert torch.equal(value, b.best_state[key])


def test_different_seed_differs(wine: data.Dataset) -> None:
    # Rule: the fit seed changes the shuffling (and dropout), so results differ.
    a = train.fit(_mlp(wine), wine, epochs=3, batch_size=16, seed=1)
    b = train.fit(_mlp(wine), wine, epochs=3, batch_size=16, seed=2)
    assert _no_time(a.history) != _no_time(b.history)


def test_best_weights_are_restored(wine: data.Dataset) -> None:
    # Rule: the returned model holds best_state, the weights of the best monitored epoch.
    result = train.fit(_mlp(wine), wine, epochs=6, batch_size=16, lr=0.05, monitor="accuracy")
    assert result.monitor == "val/accuracy" and result.mode == "max"
    scores = [h["val/accuracy"] for h in result.history]
    assert result.best_score == max(scores)
    assert result.best_epoch == scores.index(max(scores)) + 1
    for key, value in result.model.state_dict().items():
        assert torch.equal(value.cpu(), result.best_state[key])
    again = train.evaluate(result.model, wine.val, task="classification")
    assert again["accuracy"] == result.best_score


def test_early_stopping_triggers(wine: data.Dataset) -> None:
    # Rule: with patience, training stops after that many epochs without improvement.
    result = train.fit(_mlp(wine), wine, epochs=50, lr=1e-7, patience=2, monitor="val/accuracy")
    assert result.stopped_early and result.stop_reason == "patience"
    assert len(result.history) == result.best_epoch + 2 < 50


def test_callback_stop_stops_and_sees_metrics(wine: data.Dataset) -> None:
    # Rule: a callback receives (epoch, metrics) and returning "stop" ends training.
    seen: list[tuple[int, float]] = []

    def prune(epoch: int, metrics: dict) -> str | None:
        seen.append((epoch, metrics["val/loss"]))
        return "stop" if epoch == 2 else None

    result = train.fit(_mlp(wine), wine, epochs=10, callbacks=[prune])
    assert [e for e, _ in seen] == [1, 2]
    assert len(result.history) == 2 and result.stop_reason == "callback"


@pytest.mark.parametrize("optimizer", train.OPTIMIZERS)
@pytest.mark.parametrize("schedule", train.SCHEDULES)
def test_optimizers_and_schedules_reduce_loss(
    wine: data.Dataset, optimizer: str, schedule: str
) -> None:
    # Rule: every optimizer/schedule pair trains (loss goes down), with warmup and clipping.
    lr = 0.05 if optimizer == "sgd" else 3e-3
    result = train.fit(
        _mlp(wine), wine, epochs=5, batch_size=32, lr=lr, optimizer=optimizer,
        schedule=schedule, warmup_epochs=1, grad_clip=1.0, weight_decay=1e-4,
    )  # fmt: skip
    losses = [h["train/loss"] for h in result.history]
    assert losses[-1] < losses[0]


def test_schedule_shapes_lr(wine: data.Dataset) -> None:
    # Rule: warmup rises linearly to lr, cosine decays towards 0, constant stays at lr.
    logged: list[tuple[int, float]] = []
    train.fit(
        _mlp(wine), wine, epochs=4, batch_size=32, lr=0.01, warmup_epochs=1,
        log=lambda m, step: logged.append((step, m["lr"])), log_every=1,
    )  # fmt: skip
    lrs = dict(logged)
    assert lrs[1] == pytest.approx(0.01 / 4) and lrs[4] == pytest.approx(0.01)
    assert lrs[16] < 0.001
    const = train.fit(_mlp(wine), wine, epochs=2, lr=0.01, schedule="constant")
    assert [h["lr"] for h in const.history] == [0.01, 0.01]


def test_tiny_grad_clip_slows_training(wine: data.Dataset) -> None:
    # Rule: grad_clip really limits the update (a tiny norm barely moves the loss).
    free = train.fit(_mlp(wine), wine, epochs=3, optimizer="sgd", lr=0.1, schedule="constant")
    clipped = train.fit(
        _mlp(wine), wine, epochs=3, optimizer="sgd", lr=0.1, schedule="constant", grad_clip=1e-4
    )
    assert clipped.history[-1]["train/loss"] > free.history[-1]["train/loss"] + 0.1


@pytest.mark.parametrize("name", ["diabetes", "synthetic_regression"])
def test_regression_reduces_loss(name: str) -> None:
    # Rule: regression fits with MSE and reports rmse/mae/r2, improving on the start.
    ds = data.load(name)
    result = train.fit(_mlp(ds), ds, epochs=8, lr=3e-3)
    first, last = result.history[0], result.history[-1]
    assert last["val/loss"] < first["val/loss"]
    assert last["val/r2"] > 0.3
    assert result.monitor == "val/loss"
    assert last["val/rmse"] == pytest.approx(math.sqrt(last["val/loss"]), rel=1e-4)
    preds = train.predict(result.model, ds.test)
    assert preds.shape == (len(ds.test),)


def test_log_receives_windows_and_epochs(digits: data.Dataset) -> None:
    # Rule: log(metrics, step) gets step-loss windows every log_every steps and each epoch's
    # metrics at the epoch's last step, with non-decreasing steps.
    calls: list[tuple[dict, int]] = []
    result = train.fit(
        _mlp(digits), digits, epochs=2, log=lambda m, s: calls.append((m, s)), log_every=5
    )
    steps = [s for _, s in calls]
    assert steps == sorted(steps)
    per_epoch = math.ceil(len(digits.train) / 64)
    epoch_calls = [(m, s) for m, s in calls if "val/loss" in m]
    assert [s for _, s in epoch_calls] == [per_epoch, 2 * per_epoch]
    assert epoch_calls[-1][0] == result.history[-1]
    window_calls = [m for m, _ in calls if "val/loss" not in m]
    assert len(window_calls) == 2 * ((per_epoch - 1) // 5)  # last step: epoch log
    assert all(set(m) == {"train/loss", "lr", "epoch"} for m in window_calls)


def test_time_based_logging_default_is_sparse(digits: data.Dataset) -> None:
    # Rule: with log_every=None, step logs are at most one per LOG_INTERVAL_S.
    calls: list[int] = []
    result = train.fit(_mlp(digits), digits, epochs=3, log=lambda m, s: calls.append(s))
    assert len(calls) <= 3 + result.seconds / train.LOG_INTERVAL_S + 1


def test_predict_returns_probabilities(wine: data.Dataset) -> None:
    # Rule: predict gives class probabilities that sum to one.
    result = train.fit(_mlp(wine), wine, epochs=2)
    probs = train.predict(result.model, wine.test.X)
    assert probs.shape == (len(wine.test), 3)
    assert abs(float(probs.sum(axis=1).mean()) - 1) < 1e-5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1.0}, "The 'lr' parameter of fit must be a float > 0. Got -1.0 instead."),
        ({"epochs": 0}, "The 'epochs' parameter of fit must be an int >= 1. Got 0 instead."),
        ({"batch_size": 2.5}, "'batch_size' parameter of fit must be an int >= 1"),
        ({"weight_decay": -0.1}, "'weight_decay' parameter of fit must be a float >= 0"),
        ({"grad_clip": -1}, "'grad_clip' parameter of fit must be a float >= 0"),
        ({"patience": -2}, "'patience' parameter of fit must be an int >= 0"),
        ({"warmup_epochs": 3, "epochs": 2}, "'warmup_epochs' parameter of fit must be < epochs"),
        ({"device": "tpu"}, "'device' parameter must be"),
        ({"amp": "bf16"}, "'amp' parameter 'bf16' needs a CUDA device"),
    ],
)
def test_invalid_values_raise_parameter_error(wine: data.Dataset, kwargs: dict, message) -> None:
    # Rule: bad numeric values raise ParameterError naming parameter, rule and value.
    with pytest.raises(ParameterError) as info:
        train.fit(_mlp(wine), wine, device="cpu", **kwargs) if "device" not in kwargs else (
            train.fit(_mlp(wine), wine, **kwargs)
        )
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"optimizer": "lion"}, "adam, adamw, sgd"),
        ({"schedule": "step"}, "constant, cosine"),
        ({"monitor": "val/auc"}, "val/accuracy"),
    ],
)
def test_unknown_names_list_valid_ones(wine: data.Dataset, kwargs: dict, names: str) -> None:
    # Rule: unknown optimizer/schedule/monitor names raise UnknownNameError with valid names.
    with pytest.raises(UnknownNameError, match=names):
        train.fit(_mlp(wine), wine, **kwargs)


def test_model_for_other_dataset_is_rejected(wine: data.Dataset, digits: data.Dataset) -> None:
    # Rule: a model built for another dataset fails before training with a fix.
    with pytest.raises(ParameterError, match=r"n_outputs=data.n_outputs"):
        train.fit(models.build("linear", input_shape=(13,), n_outputs=5), wine)
    with pytest.raises(ParameterError, match=r"input_shape=data.input_shape"):
        train.fit(_mlp(wine), digits)


def test_pick_device() -> None:
    # Rule: explicit devices are honoured; auto falls back to cpu without accelerators.
    assert train.pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert train.pick_device("auto").type in ("cpu", "mps")
        with pytest.raises(ParameterError, match=r"CUDA is not available"):
            train.pick_device("cuda")


def test_fit_keeps_thread_count(wine: data.Dataset) -> None:
    # Rule: fit leaves the process's torch thread count alone.
    train.fit(_mlp(wine), wine, epochs=1)
    assert torch.get_num_threads() == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", ["auto", "fp16"])
def test_amp_on_cuda_trains(digits: data.Dataset, amp: str) -> None:
    # Rule: mixed precision (bf16, or fp16 with GradScaler and clipping) trains on CUDA.
    result = train.fit(
        _mlp(digits), digits, epochs=5, lr=3e-3, device="cuda", amp=amp, grad_clip=1.0
    )
    assert result.device.startswith("cuda")
    assert result.history[-1]["val/accuracy"] > 0.85
    assert all(v.device.type == "cpu" for v in result.best_state.values())


def test_pending_logs_are_delivered_when_a_callback_raises(wine: data.Dataset) -> None:
    # Rule: batched log calls all reach log before fit's exception does (e.g. a pruner raising).
    calls: list[int] = []

    def prune(epoch: int, metrics: dict) -> None:
        if epoch == 3:
            raise KeyboardInterrupt("pruned")

    with pytest.raises(KeyboardInterrupt):
        train.fit(_mlp(wine), wine, epochs=10, log=lambda m, s: calls.append(m["epoch"]),
                  callbacks=[prune])  # fmt: skip
    assert calls == [1, 2, 3]


def test_non_finite_loss_stops_training() -> None:
    # Rule: a diverging run stops at the first non-finite epoch; with no finite monitored value
    # best_epoch is 0 and best_score NaN.
    ds = data.load("synthetic_regression")
    result = train.fit(_mlp(ds), ds, epochs=20, optimizer="sgd", lr=1e4, schedule="constant")
    assert result.stop_reason == "non-finite train loss" and result.stopped_early
    assert len(result.history) == 1
    assert result.best_epoch == 0 and math.isnan(result.best_score)
