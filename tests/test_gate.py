"""The promotion gate: per-model bounds on evaluation metrics, checked by `mlkit model promote`.

The models are real: a logistic model trained on synthetic_fairness with a planted bias of 0.3
and one trained on the unbiased version. Their evaluations are computed with mlkit.evaluate's
own functions on the test split (what templates/evaluate.ipynb computes) and recorded as
`evaluate` runs that name the evaluated run, which is how evaluation.find_evaluation finds them.
Training and evaluating in-process keeps the module to a few seconds.
"""

from __future__ import annotations

import json
import time
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from mlkit import errors, evaluate, record_store
from mlkit._contract import BUILD, WEIGHTS
from mlkit._io import now_iso, write_json
from mlkit.registry import aliases, evaluation, promotion, store
from tests.helpers import run_cli

DP = "fairness/demographic_parity_difference"
# 8000 rows give a 1200-row test split: the unbiased model's gap (~0.03 noise) stays well
# under a 0.1 bound, and the biased model's (~0.3) is far above it.
N_SAMPLES = 8000


@cache
def _trained(bias: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """A logistic model's state_dict and build spec, trained on synthetic_fairness(bias)."""
    import torch

    from mlkit import data, models, train

    torch.set_num_threads(1)
    ds = data.load("synthetic_fairness", bias=bias, n_samples=N_SAMPLES)
    train.seed_everything(0)
    net = models.build("linear", input_shape=ds.input_shape, n_outputs=ds.n_outputs)
    train.fit(net, ds, epochs=10, lr=0.05, batch_size=128, seed=0, device="cpu")
    build = {"input_shape": list(ds.input_shape), "n_outputs": ds.n_outputs}
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}, build


def model_run(root: Path, bias: float) -> Path:
    """A completed run record holding the trained model, as run.save_model leaves one."""
    from safetensors.torch import save_file

    state, build = _trained(bias)
    run_id, path = record_store.create_run_dir("fair", root)
    write_json(path / "run.json", {"id": run_id, "status": "completed", "started": now_iso()})
    params = {"dataset": "synthetic_fairness", "bias": bias, "n_samples": N_SAMPLES}
    write_json(path / "params.json", {"notebook": "x.ipynb", "parameters": params})
    write_json(path / "result.json", {"test/accuracy": 0.0})
    save_file(state, path / WEIGHTS)
    write_json(path / BUILD, {"name": "linear", "build": build})
    return path


def evaluate_model_run(root: Path, run_dir: Path) -> dict[str, Any]:
    """Evaluate the run's model on its test split and record it as `mlkit evaluate` does."""
    from mlkit import train

    net, ds = evaluate.load_run_model(run_dir, root)
    probs = train.predict(net, ds.test.X)
    pred = probs.argmax(1)
    fairness = evaluate.group_metrics(ds.test.y, pred, ds.groups("group"))
    result = {
        **evaluate.flatten(fairness, "fairness"),
        "calibration/ece": evaluate.expected_calibration_error(ds.test.y, probs),
        "test/accuracy": float((pred == ds.test.y).mean()),
    }
    eval_id, path = record_store.create_run_dir(evaluation.EXPERIMENT, root)
    write_json(
        path / "run.json",
        {
            "id": eval_id,
            "status": "completed",
            "started": now_iso(),
            "evaluates": run_dir.name,
        },
    )
    write_json(path / "result.json", result)
    assert evaluation.find_evaluation(run_dir.name, root)["id"] == eval_id
    return {"id": eval_id, "result": result}


def registered(root: Path, bias: float, name: str = "fair") -> tuple[int, dict[str, Any]]:
    """Register a trained run as the next version of ``name`` and evaluate it."""
    run_dir = model_run(root, bias)
    version = store.register(run_dir, name)["version"]
    return version, evaluate_model_run(root, run_dir)


def test_gate_blocks_biased_model_until_forced_with_a_reason(exp_root: Path) -> None:
    # Rule: a biased model is refused by name, value and bound; --force needs --reason; the
    # forced promotion records forced, the reason, the violations and the evaluation id.
    version, ev = registered(exp_root, 0.3)
    gap = ev["result"][DP]
    assert gap > 0.2, "the planted bias shows in the evaluation"
    proc = run_cli("model", "bounds", "fair", "--set", f"{DP}=0.1", "--set", "test/accuracy>=0.6")
    assert proc.returncode == 0, proc.stderr
    before = store.show("fair")

    proc = run_cli("model", "promote", "fair", f"v{version}")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a failed check
    assert f"{DP} = {gap:.4g} exceeds its bound: at most 0.1" in proc.stderr
    assert ev["id"] in proc.stderr
    assert proc.stderr.rstrip().endswith("Pass --force --reason TEXT to promote anyway.")
    assert "test/accuracy" not in proc.stderr, "only the broken bound is named"

    for extra in (["--force"], ["--force", "--reason", "  "]):
        proc = run_cli("model", "promote", "fair", f"v{version}", *extra)
        assert proc.returncode == 2 and "needs a reason" in proc.stderr, proc.stderr
    assert store.show("fair") == before, "a refused promotion writes nothing"
    with pytest.raises(errors.ModelNotFoundError, match="no alias 'production'"):
        store.resolve("fair", "production")

    reason = "ticket FAIR-12: accepted for the pilot, retrain due next sprint"
    proc = run_cli("model", "promote", "fair", f"v{version}", "--force", "--reason", reason)
    assert proc.returncode == 0, proc.stderr
    assert "fair:production -> v1 (was nothing)" in proc.stdout and reason in proc.stdout
    assert store.resolve("fair", "production") == version
    (event,) = store.show("fair")["alias_history"]["production"]
    assert event["forced"] is True and event["reason"] == reason
    assert event["evaluation"] == ev["id"]
    assert len(event["violations"]) == 1 and DP in event["violations"][0]


def test_unbiased_model_promotes_without_force(exp_root: Path) -> None:
    # Rule: a version whose evaluation meets every bound promotes with no force, and the
    # history names the evaluation it passed.
    version, ev = registered(exp_root, 0.0)
    assert ev["result"][DP] < 0.1
    promotion.set_bounds("fair", [f"{DP}=0.1", "calibration/ece=0.2"])
    out = aliases.promote("fair", version)
    assert out == {"name": "fair", "alias": "production", "version": version, "previous": None}
    (event,) = store.show("fair")["alias_history"]["production"]
    assert event["evaluation"] == ev["id"] and "forced" not in event


def test_unevaluated_version_is_refused(exp_root: Path) -> None:
    # Rule: with bounds set, a version whose run has no completed evaluation is refused and
    # told to run mlkit evaluate on that run; each bound is named as unchecked.
    run_dir = model_run(exp_root, 0.0)
    store.register(run_dir, "fair")
    promotion.set_bounds("fair", [f"{DP}=0.1"])
    with pytest.raises(errors.PromotionBlockedError) as info:
        aliases.promote("fair", "v1")
    message = str(info.value)
    assert f"no evaluation yet: run mlkit evaluate {run_dir.name}" in message
    assert f"{DP} is missing" in message and "at most 0.1" in message
    assert store.show("fair")["aliases"] == {}
    evaluate_model_run(exp_root, run_dir)
    assert aliases.promote("fair", "v1")["version"] == 1


def test_bounds_command_sets_shows_and_clears(exp_root: Path) -> None:
    # Rule: `mlkit model bounds` stores at-most and at-least bounds in registry.json, `show`
    # lists them, `--clear` drops them, a malformed bound exits 2 and writes nothing.
    store.register(model_run(exp_root, 0.0), "fair")
    proc = run_cli("model", "bounds", "fair", "--set", f"{DP}=0.1", "--set", "test/accuracy>=0.9")
    assert proc.returncode == 0, proc.stderr
    assert f"{DP} <= 0.1" in proc.stdout and "test/accuracy >= 0.9" in proc.stdout
    reg = json.loads((exp_root / "registry" / "fair" / "registry.json").read_text())
    assert reg["bounds"] == {DP: 0.1, "test/accuracy": {"min": 0.9}}
    assert f"bound: {DP} <= 0.1" in run_cli("model", "show", "fair").stdout
    proc = run_cli("model", "bounds", "fair", "--set", "calibration/ece=lots")
    assert proc.returncode == 2 and "METRIC=NUMBER" in proc.stderr
    assert promotion.get_bounds("fair") == reg["bounds"]
    proc = run_cli("model", "bounds", "fair", "--clear", "--set", "calibration/ece=0.05")
    assert proc.returncode == 0 and promotion.get_bounds("fair") == {"calibration/ece": 0.05}
    run_cli("model", "bounds", "fair", "--clear")
    assert (
        promotion.get_bounds("fair") == {}
        and "no promotion bounds" in run_cli("model", "bounds", "fair").stdout
    )


def test_card_and_evaluation_reload_the_same_data(exp_root: Path) -> None:
    # Rule: the card reloads the run's data with its synthetic options, bias included, and
    # verifies its version; the evaluation reloads the very same split.
    from mlkit import data

    run_dir = model_run(exp_root, 0.3)
    trained_on = data.load("synthetic_fairness", bias=0.3, n_samples=N_SAMPLES)
    write_json(run_dir / "lineage.json", {"data": trained_on.spec()})
    entry = store.register(run_dir, "fair")
    card = json.loads((Path(entry["path"]) / "card.json").read_text())["data"]
    assert card.get("verified") is True, card.get("details")
    assert card["settings"]["bias"] == 0.3 and card["settings"]["n_samples"] == N_SAMPLES
    _, evaluated_on = evaluate.load_run_model(run_dir, exp_root)
    assert evaluated_on.version == card["version"] == trained_on.version


def test_weights_that_do_not_fit_model_json_are_refused(exp_root: Path) -> None:
    # Rule: weights that do not fit the module model.json describes are an unsafe artifact,
    # named as such, whether a run is evaluated or a registered version is loaded.
    from mlkit.registry import loading

    run_dir = model_run(exp_root, 0.0)
    entry = store.register(run_dir, "fair")
    for path in (run_dir / BUILD, Path(entry["path"]) / BUILD):
        spec = json.loads(path.read_text())
        spec["build"]["n_outputs"] = 3
        write_json(path, spec)
    with pytest.raises(errors.UnsafeArtifactError, match=f"run {run_dir.name} do not fit"):
        evaluate.load_run_model(run_dir, exp_root)
    with pytest.raises(errors.UnsafeArtifactError, match="fair v1 do not fit"):
        loading.load_model("fair", "v1")


def _wandb_records(path: Path) -> list[Any]:
    """The protobuf records of an offline run's .wandb file.

    The file is a LevelDB-style log: a 7-byte file header, then 32 KiB blocks of records, each
    with a 7-byte header (checksum, little-endian length, type: 1 full, 2 first, 3 middle,
    4 last) and zero padding where fewer than 7 bytes are left in a block.
    """
    from wandb.proto import wandb_internal_pb2

    raw, block = path.read_bytes(), 32768
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(raw):
        room = block - pos % block
        if room < 7:
            pos += room
            continue
        length, kind = int.from_bytes(raw[pos + 4 : pos + 6], "little"), raw[pos + 6]
        if kind == 0:
            break
        pending += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            records.append(rec)
            pending = b""
    return records


def _finished_records(path: Path, wait_s: float = 30.0) -> list[Any]:
    """The run's records once W&B's service has written its exit record (it writes the file
    from a process of its own, and may still be at it when the run's finish returns)."""
    deadline = time.monotonic() + wait_s
    while True:
        records = _wandb_records(path)
        kinds = {r.WhichOneof("record_type") for r in records}
        if "exit" in kinds or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def test_forced_promotion_reaches_wandb_artifact(
    exp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rule: with W&B offline, a forced promotion's history event is the logged artifact's
    # metadata: forced, the reason, the violations and the evaluation id.
    version, ev = registered(exp_root, 0.3)
    promotion.set_bounds("fair", [f"{DP}=0.1"])
    monkeypatch.setenv("WANDB_MODE", "offline")
    reason = "forced for the W&B test"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a W&B failure would only warn: make it fail here
        assert aliases.promote("fair", version, force=True, reason=reason)["forced"]
    (run,) = (exp_root / "registry" / "fair" / "wandb").glob("offline-run-*")
    records = _finished_records(next(run.glob("*.wandb")))
    kinds = [r.WhichOneof("record_type") for r in records]
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert len(artifacts) == 1, kinds
    assert artifacts[0].type == "model" and "production" in artifacts[0].aliases
    metadata = json.loads(artifacts[0].metadata)
    (event,) = store.show("fair")["alias_history"]["production"]
    assert metadata == {k: v for k, v in event.items() if k != "action"}
    assert metadata["reason"] == reason and metadata["evaluation"] == ev["id"]


# `mlkit evaluate NAME:alias` evaluates the registered version's run, and the gate finds it.
@pytest.mark.slow
def test_evaluate_a_registered_model_by_alias(exp_root: Path) -> None:
    run_dir = model_run(exp_root, 0.3)
    version = store.register(run_dir, "byalias")["version"]
    aliases.promote("byalias", version, "staging")
    assert evaluation.resolve_run("byalias:staging", exp_root) == run_dir
    proc = run_cli("evaluate", "byalias:staging", "--sensitive", "group", "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = evaluation.find_evaluation(run_dir.name, exp_root)
    assert found and found["result"]["fairness/demographic_parity_difference"] > 0.1
    unknown = run_cli("evaluate", "nosuchmodel:production")
    assert unknown.returncode == 2 and "no registered model" in unknown.stderr
