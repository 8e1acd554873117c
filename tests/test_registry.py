"""Model registry: versions, aliases, cards, concurrent registration, and loading without pickle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from mlkit import errors
from mlkit._contract import WEIGHTS
from mlkit.registry import aliases, loading, store
from tests.helpers import ROOT, fake_run, run_cli, trained_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return trained_run(tmp_path_factory)


# Each registration of a run is the next version, with a card holding parameters, metrics,
# the data version, lineage, the executed notebook and the weights' sha256.
def test_register_versions_and_card(exp_root: Path, run: dict[str, Any]) -> None:
    first = store.register(run["path"], "digits")
    second = store.register(run["path"], "digits")
    assert (first["version"], second["version"]) == (1, 2)
    folder = exp_root / "registry" / "digits"
    card = json.loads((folder / "v1" / "card.json").read_text())
    assert card["parameters"]["epochs"] == 2 and card["parameters"]["hidden"] == "32"
    assert card["metrics"]["test/accuracy"] == run["result"]["test/accuracy"]
    lineage = json.loads((Path(run["path"]) / "lineage.json").read_text())
    assert card["data"]["version"] == lineage["data"]["version"] and card["data"]["verified"]
    assert card["data"]["class_names"] == [str(i) for i in range(10)]
    assert Path(card["run"]["executed_notebook"]).name == "output.ipynb"
    assert Path(card["run"]["executed_notebook"]).exists()
    from mlkit.lineage import sha256_file

    assert card["weights"]["sha256"] == sha256_file(Path(run["path"]) / "model.safetensors")
    assert card["weights"]["sha256"] == sha256_file(folder / "v1" / "model.safetensors")
    md = (folder / "v1" / "card.md").read_text()
    assert run["id"] in md and card["data"]["version"] in md and "test/accuracy" in md
    listed = store.list_models()
    assert listed == [{"name": "digits", "versions": 2, "latest": 2, "aliases": {}}]
    assert [v["version"] for v in store.show("digits")["versions"]] == [1, 2]


# Weights loaded from the registry give exactly the test accuracy the run recorded.
def test_loaded_model_reproduces_test_accuracy(exp_root: Path, run: dict[str, Any]) -> None:
    from mlkit import data, train

    store.register(run["path"], "digits")
    loaded = loading.load_model("digits", "latest")
    assert loaded.version == 1 and loaded.task == "classification"
    assert loaded.input_shape == (1, 8, 8) and len(loaded.classes) == 10
    ds = data.load("digits", seed=run["params"].get("data_seed", 0))
    acc = train.evaluate(loaded.module, ds.test, task=ds.task)["accuracy"]
    assert acc == run["result"]["test/accuracy"]


# promote moves an alias and keeps its history; rollback walks back one promotion at a time,
# and refuses when there is nothing earlier.
def test_promote_and_rollback(exp_root: Path, run: dict[str, Any]) -> None:
    for _ in range(3):
        store.register(run["path"], "m")
    assert aliases.promote("m", "v1")["previous"] is None
    assert aliases.promote("m", 2)["previous"] == 1
    assert aliases.promote("m", "v3", "production") == {
        "name": "m",
        "alias": "production",
        "version": 3,
        "previous": 2,
    }
    aliases.promote("m", "v1", "staging")
    assert store.resolve("m", "production") == 3 and store.resolve("m", "staging") == 1
    assert aliases.rollback("m")["version"] == 2
    assert loading.load_model("m", "production").version == 2
    assert aliases.rollback("m")["version"] == 1
    with pytest.raises(errors.RegistryError, match="no earlier version"):
        aliases.rollback("m")
    reg = store.show("m")
    assert reg["aliases"] == {"production": 1, "staging": 1}
    moves = [(e["action"], e["from"], e["to"]) for e in reg["alias_history"]["production"]]
    assert moves == [
        ("promote", None, 1),
        ("promote", 1, 2),
        ("promote", 2, 3),
        ("rollback", 3, 2),
        ("rollback", 2, 1),
    ]


# Two processes registering at once never collide: every version is distinct and whole.
def test_concurrent_registration_gives_distinct_versions(
    exp_root: Path, run: dict[str, Any]
) -> None:
    code = (
        "import sys; from mlkit import registry\n"
        "for _ in range(4):\n"
        "    print(registry.register(sys.argv[1], 'm')['version'], flush=True)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, run["path"]], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    versions = sorted(int(v) for out in outs for v in out.split())
    assert versions == list(range(1, 9))
    reg = store.show("m")
    assert [v["version"] for v in reg["versions"]] == list(range(1, 9))
    folder = exp_root / "registry" / "m"
    assert sorted(p.name for p in folder.glob("v*")) == sorted(f"v{n}" for n in range(1, 9))
    assert not list(folder.glob(".v*")), "no staging directory is left behind"
    for n in range(1, 9):
        assert (folder / f"v{n}" / "card.json").exists()


# `--study` registers the run of the study's best trial (its run_path user attribute).
def test_register_best_trial_of_a_study(exp_root: Path, run: dict[str, Any]) -> None:
    import optuna

    from mlkit import storage as storages

    url = storages.default_storage("s", exp_root)
    study = optuna.create_study(study_name="s", storage=storages.open_storage(url))
    dist = {"lr": optuna.distributions.FloatDistribution(0.001, 0.1)}
    for value, path in ((0.5, "/nowhere"), (0.9, run["path"])):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 0.01}, distributions=dist, value=-value, user_attrs={"run_path": path}
            )
        )
    proc = run_cli("model", "register", "--study", "s", "--name", "best")
    assert proc.returncode == 0, proc.stderr
    assert "registered best v1" in proc.stdout
    card = json.loads((exp_root / "registry" / "best" / "v1" / "card.json").read_text())
    assert card["run"]["id"] == run["id"]


# Bad input exits 2 with a message naming the thing and the fix, and writes nothing.
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["register", "nope", "--name", "m"], "No run 'nope'"),
        (["register", "FAILED", "--name", "m"], "not completed"),
        (["register", "NOWEIGHTS", "--name", "m"], "has no model.safetensors"),
        (["register", "OK", "--name", "bad/name"], "Model name 'bad/name'"),
        (["register", "--name", "m"], "exactly one of RUN or --study"),
        (["promote", "m", "v1"], "No registered model 'm'"),
        (["rollback", "m"], "No registered model 'm'"),
        (["show", "m"], "mlkit model register RUN --name m"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    exp_root: Path, args: list[str], message: str
) -> None:
    refs = {
        "FAILED": fake_run(exp_root, status="failed"),
        "NOWEIGHTS": fake_run(exp_root, weights=False),
        "OK": fake_run(exp_root),
    }
    argv = [str(refs.get(a, a)) for a in args]
    proc = run_cli("model", *argv)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert not (exp_root / "registry").exists(), "nothing is written for bad input"


# An unknown version or alias names the ones that exist.
def test_unknown_version_and_alias(exp_root: Path) -> None:
    store.register(fake_run(exp_root), "m")
    with pytest.raises(errors.ModelNotFoundError, match="Versions: v1"):
        aliases.promote("m", "v7")
    with pytest.raises(errors.ModelNotFoundError, match="no alias 'production'"):
        loading.load_model("m", "production")
    with pytest.raises(errors.RegistryError, match="neither 'latest' nor a version"):
        aliases.promote("m", "v1", alias="v2")
    proc = run_cli("model", "promote", "m", "v9")
    assert proc.returncode == 2 and "Versions: v1" in proc.stderr


class _Payload:
    """Pickled, this object opens (creates) a file when it is unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _state(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(folder / WEIGHTS)


def _altered(state: dict[str, Any]) -> dict[str, Any]:
    """Other valid weights of the same shapes: every answer of the model changes."""
    return {k: (v + 1.0).contiguous() for k, v in state.items()}


def _name_in_card(folder: Path, file: str) -> str:
    """Point the version's card and registry.json at ``file``, with its hash: a legacy version."""
    from mlkit.lineage import sha256_file

    sha = sha256_file(folder / file)
    card_path = folder / "card.json"
    card = json.loads(card_path.read_text())
    card["weights"].update(file=file, sha256=sha)
    card_path.write_text(json.dumps(card))
    reg_path = folder.parent / "registry.json"
    reg = json.loads(reg_path.read_text())
    for entry in reg["versions"]:
        if f"v{entry['version']}" == folder.name:
            entry["sha256"] = sha
    reg_path.write_text(json.dumps(reg))
    return sha


# A checkpoint carrying pickled code is refused with a clear error, and its code never runs:
# dropped in beside the card (which names model.safetensors), and even named by the card with
# its own hash, where torch.load(weights_only=True) is what refuses it. The same file does run
# code under a plain torch.load, so the test's pickle is real.
@pytest.mark.parametrize("named", [False, True])
def test_pickled_code_checkpoint_is_refused(exp_root: Path, tmp_path: Path, named: bool) -> None:
    import torch

    store.register(fake_run(exp_root), "m")
    folder = exp_root / "registry" / "m" / "v1"
    (folder / WEIGHTS).unlink()
    marker = tmp_path / "pwned"
    torch.save({"weight": _Payload(marker)}, folder / "model.pt")
    if named:
        _name_in_card(folder, "model.pt")
    with pytest.raises(errors.UnsafeModelError, match=r"Refused to load .*model\.pt") as caught:
        loading.load_model("m", "v1")
    assert ("not plain weights" in str(caught.value)) is named
    assert not marker.exists(), "the pickled code ran"
    control = tmp_path / "control"
    torch.save({"weight": _Payload(control)}, tmp_path / "evil.pt")
    check = f"import torch; torch.load({str(tmp_path / 'evil.pt')!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True)
    assert control.exists(), "the payload would run code when unpickled without weights_only"


# A legacy .pt holding a plain state_dict loads (weights_only=True allows tensors) when the
# card names it with its hash, and the loaded model reports that file's hash.
def test_plain_state_dict_checkpoint_loads(exp_root: Path) -> None:
    import torch

    store.register(fake_run(exp_root), "m")
    folder = exp_root / "registry" / "m" / "v1"
    state = _state(folder)
    (folder / WEIGHTS).unlink()
    torch.save(state, folder / "model.pt")
    sha = _name_in_card(folder, "model.pt")
    loaded = loading.load_model("m", "v1")
    assert loaded.sha256 == sha
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, state[key])


# The attack on a registered version: its safetensors deleted and a weights-only .pt with
# altered tensors dropped in. It is refused, naming the file, both hashes and the fix.
def test_swapped_pt_is_refused(exp_root: Path) -> None:
    import torch

    from mlkit.lineage import sha256_file

    store.register(fake_run(exp_root), "m")
    folder = exp_root / "registry" / "m" / "v1"
    registered = json.loads((folder / "card.json").read_text())["weights"]["sha256"]
    altered = _altered(_state(folder))
    (folder / WEIGHTS).unlink()
    torch.save(altered, folder / "model.pt")
    with pytest.raises(errors.UnsafeModelError) as caught:
        loading.load_model("m", "v1")
    message = str(caught.value)
    assert str(folder / "model.pt") in message and registered in message
    assert sha256_file(folder / "model.pt") in message
    assert "mlkit model register" in message


# A weights file beside the one the card names is refused too, though the named one matches:
# nothing in a version folder may be weights the card does not vouch for.
def test_extra_weights_file_is_refused(exp_root: Path) -> None:
    import torch

    store.register(fake_run(exp_root), "m")
    folder = exp_root / "registry" / "m" / "v1"
    torch.save(_altered(_state(folder)), folder / "model.bin")
    with pytest.raises(errors.UnsafeModelError, match=r"model\.bin"):
        loading.load_model("m", "v1")


# A legacy .pt the card names is checked against the card like safetensors: altered, refused.
def test_named_pt_that_changed_is_refused(exp_root: Path) -> None:
    import torch

    store.register(fake_run(exp_root), "m")
    folder = exp_root / "registry" / "m" / "v1"
    state = _state(folder)
    (folder / WEIGHTS).unlink()
    torch.save(state, folder / "model.pt")
    registered = _name_in_card(folder, "model.pt")
    torch.save(_altered(state), folder / "model.pt")
    with pytest.raises(errors.UnsafeModelError, match="changed after registration") as caught:
        loading.load_model("m", "v1")
    assert registered in str(caught.value) and "model.pt" in str(caught.value)


# model.safetensors replaced by other valid weights is refused; so is the same swap with the
# card rewritten to match, since registry.json still lists the hash that was registered.
@pytest.mark.parametrize("card_rewritten", [False, True])
def test_replaced_safetensors_is_refused(exp_root: Path, card_rewritten: bool) -> None:
    from safetensors.torch import save_file

    from mlkit.lineage import sha256_file

    store.register(fake_run(exp_root), "m")
    folder = exp_root / "registry" / "m" / "v1"
    registered = sha256_file(folder / WEIGHTS)
    save_file(_altered(_state(folder)), folder / WEIGHTS)
    swapped = sha256_file(folder / WEIGHTS)
    if card_rewritten:
        card = json.loads((folder / "card.json").read_text())
        card["weights"]["sha256"] = swapped
        (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(errors.UnsafeModelError) as caught:
        loading.load_model("m", "v1")
    message = str(caught.value)
    assert registered in message and swapped in message and WEIGHTS in message
    assert "mlkit model register" in message


# Weights changed after registration are refused: the card's sha256 no longer matches.
def test_tampered_weights_are_refused(exp_root: Path) -> None:
    store.register(fake_run(exp_root), "m")
    weights = exp_root / "registry" / "m" / "v1" / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(errors.UnsafeModelError, match="changed after registration"):
        loading.load_model("m", "v1")


# An environment that turns torch.load's weights_only off is refused by name.
@pytest.mark.parametrize(
    "env",
    [{"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}, {"TORCH_FORCE_WEIGHTS_ONLY_LOAD": "0"}],
)
def test_weights_only_disabled_by_env_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(errors.UnsafeModelError, match=next(iter(env))):
        loading.check_weights_only_env(env)
    loading.check_weights_only_env({"TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"})


# With W&B offline, a registration and a promotion are logged as `model` artifacts under the
# registry, and the mlkit version travels as the alias mlkit-v<N>.
def test_wandb_artifact_offline(exp_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a W&B failure would only warn: make it fail here
        store.register(fake_run(exp_root), "m")
        aliases.promote("m", "v1")
    runs = sorted((exp_root / "registry" / "m" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    assert os.path.getsize(next(runs[0].glob("*.wandb"))) > 0


# The `mlkit model` commands as a user types them: register, promote, rollback, list, show.
def test_model_commands(exp_root: Path) -> None:
    run_dir = fake_run(exp_root)
    for expected in ("registered m v1", "registered m v2"):
        proc = run_cli("model", "register", str(run_dir), "--name", "m")
        assert proc.returncode == 0 and expected in proc.stdout, proc.stderr
    assert "m:production -> v1 (was nothing)" in run_cli("model", "promote", "m", "1").stdout
    assert "-> v2 (was v1)" in run_cli("model", "promote", "m", "v2").stdout
    out = run_cli("model", "rollback", "m").stdout
    assert "m:production -> v1 (rolled back from v2)" in out
    listed = json.loads(run_cli("model", "list", "--json").stdout)
    assert listed == [{"name": "m", "versions": 2, "latest": 2, "aliases": {"production": 1}}]
    shown = run_cli("model", "show", "m").stdout
    assert "production -> v1" in shown and "card.md" in shown and run_dir.name in shown
