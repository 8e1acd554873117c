"""A notebook trains a ``torch.nn.Module`` class of its own, and the whole chain rebuilds it.

The class lives in a module beside the notebook; model.json names it (``module:QualName``)
with the arguments it was built with. Registration, the server and ``mlkit evaluate``
import it again; a class that cannot be imported is refused at registration and at server
start, naming it, never at a first request.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from mlkit import errors
from mlkit._contract import BUILD, WEIGHTS
from mlkit.registry import loading, store
from tests.helpers import run_cli

MODULE = '''
from torch import nn


class TinyNet(nn.Module):
    """Two layers; n_outputs is also what mlkit measures and passes back."""

    def __init__(self, n_in: int, hidden: int = 16, n_outputs: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, n_outputs)

    def forward(self, x):
        return self.head(self.body(x))
'''

PARAMETERS = """\
dataset: str = "digits_flat"  # bundled flat dataset
hidden: int = 16  # hidden units of TinyNet
epochs: int = 2  # passes over the training data
seed: int = 0  # seeds the weights and shuffling
data_seed: int = 0  # seeds the split
"""

TRAIN = """\
import mlkit
from mlkit import data as mdata, train
from {module} import TinyNet

run = mlkit.start_run(mlkit.parameters(globals()), experiment="custom")
data = mdata.load(dataset, seed=data_seed)
run.set_data(data)
train.seed_everything(seed)
net = TinyNet(n_in=data.input_shape[0], hidden=hidden, n_outputs=data.n_outputs)
fitted = train.fit(net, data, epochs=epochs, batch_size=64, lr=0.01, seed=seed, device="cpu")
test = train.evaluate(fitted.model, data.test, task=data.task)
run.save_model(
    fitted.model,
    build={{"n_in": data.input_shape[0], "hidden": hidden, "input_shape": list(data.input_shape)}},
)
run.finish({{f"test/{{k}}": v for k, v in test.items()}})
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A project folder holding a model module of a name no other test uses."""
    folder = tmp_path / "project"
    folder.mkdir()
    module = f"tinynets_{secrets.token_hex(4)}"
    (folder / f"{module}.py").write_text(MODULE)
    monkeypatch.setattr(sys, "path", list(sys.path))  # rebuilding appends the project folder
    yield folder, module
    sys.modules.pop(module, None)


def _import(folder: Path, module: str) -> Any:
    """The project's model module, imported as the notebook's kernel imports it."""
    sys.path.append(str(folder))
    return __import__(module)


def _hand_run() -> Any:
    """A run started in this process, as a notebook run by hand starts one."""
    import mlkit

    return mlkit.start_run({}, experiment="custom")


def _gone(folder: Path, module: str) -> None:
    """The module deleted and forgotten: nothing in this process or on disk can import it."""
    (folder / f"{module}.py").unlink()
    sys.modules.pop(module, None)


# model.json names the class and the arguments it was built with; n_outputs, left out, is
# measured; the registry rebuilds the module from it with the very same weights.
def test_own_class_is_recorded_and_registered(
    exp_root: Path, project: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    folder, module = project
    tiny = _import(folder, module)
    torch.manual_seed(0)
    net = tiny.TinyNet(n_in=64, hidden=8)
    run = _hand_run()
    run.save_model(net, build={"n_in": 64, "hidden": 8, "input_shape": [64]})
    run.finish({"test/accuracy": 0.5})
    spec = json.loads((run.path / BUILD).read_text())
    assert spec == {
        "name": f"{module}:TinyNet",
        "class": f"{module}:TinyNet",
        "build": {"n_in": 64, "hidden": 8, "input_shape": [64], "n_outputs": 10},
    }
    entry = store.register(run.path, "tiny")
    assert entry["model"] == f"{module}:TinyNet"
    loaded = loading.load_model("tiny", "v1")
    assert type(loaded.module).__qualname__ == "TinyNet"
    x = torch.randn(3, 64)
    with torch.inference_mode():
        assert torch.equal(loaded.module(x), net.eval()(x))
    assert loaded.input_shape == (64,) and loaded.classes == [str(i) for i in range(10)]


# A class the registry cannot import is refused before anything is copied, naming it and the
# fix; the server refuses to start on a registered version whose class is gone.
def test_missing_class_fails_registration_and_server_start(
    exp_root: Path, project: tuple[Path, str]
) -> None:
    from mlkit.serve import app as serve_app

    folder, module = project
    tiny = _import(folder, module)
    run = _hand_run()
    run.save_model(
        tiny.TinyNet(n_in=4, hidden=3, n_outputs=2),
        build={"n_in": 4, "hidden": 3, "input_shape": [4]},
    )
    run.finish({"test/accuracy": 0.5})
    store.register(run.path, "tiny")
    _gone(folder, module)
    with pytest.raises(errors.ModelNotFoundError) as refused:
        store.register(run.path, "tiny")
    message = str(refused.value)
    assert f"{module}:TinyNet" in message and f"{module}.py back beside the notebook" in message
    assert [v["version"] for v in store.show("tiny")["versions"]] == [1]
    assert not list((exp_root / "registry" / "tiny").glob(".v*"))
    with pytest.raises(errors.ModelNotFoundError, match=f"{module}:TinyNet"):
        serve_app.create_app("tiny", "v1", root=exp_root)
    # the module back, without the class: named just as clearly
    (folder / f"{module}.py").write_text("X = 1\n")
    with pytest.raises(errors.ModelNotFoundError, match="has no TinyNet"):
        store.register(run.path, "tiny")


# A class defined in the notebook itself (its cells run in __main__), or inside a function,
# is refused when it is saved: nothing could import it later. Nothing is written.
@pytest.mark.parametrize("where", ["notebook", "function"])
def test_class_that_cannot_be_imported_is_refused_at_save(exp_root: Path, where: str) -> None:
    from torch import nn

    if where == "notebook":
        cell = {"__name__": "__main__", "nn": nn}
        exec(
            "class Net(nn.Module):\n    def __init__(self):\n"
            "        super().__init__()\n        self.fc = nn.Linear(2, 2)\n",
            cell,
        )
        net = cell["Net"]()
    else:

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.fc = nn.Linear(2, 2)

        net = Net()
    run = _hand_run()
    with pytest.raises(errors.ParameterError) as refused:
        run.save_model(net, build={"input_shape": [2]})
    message = str(refused.value)
    assert "Net" in message and "mymodels.py" in message and "import it" in message
    assert not (run.path / BUILD).exists() and not (run.path / WEIGHTS).exists()


# What would not rebuild is refused at save time, saying what to pass: no input_shape, an
# argument left out of build (the rebuilt weights differ), an argument the class does not take.
@pytest.mark.parametrize(
    ("build", "message"),
    [
        ({"n_in": 4, "hidden": 3}, 'build={"input_shape"'),
        ({"n_in": 4, "input_shape": [4]}, "do not fit"),
        ({"n_in": 4, "hidden": 3, "width": 9, "input_shape": [4]}, "width"),
        ({"n_in": 4, "hidden": 3, "input_shape": [0]}, "positive ints"),
    ],
)
def test_build_that_would_not_rebuild_is_refused(
    exp_root: Path, project: tuple[Path, str], build: dict[str, Any], message: str
) -> None:
    folder, module = project
    net = _import(folder, module).TinyNet(n_in=4, hidden=3, n_outputs=2)
    run = _hand_run()
    with pytest.raises(errors.ParameterError, match=message):
        run.save_model(net, build=build)
    assert not (run.path / BUILD).exists()


def _notebook(path: Path, module: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    params = nbformat.v4.new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(TRAIN.format(module=module))]
    nbformat.write(nb, path)
    return path


# The whole chain from the command line: `mlkit run` in the project folder trains the
# notebook's own class; `mlkit model register`, a server and `mlkit evaluate`, run from
# elsewhere, find the module beside the notebook; with the module gone, registration exits 2
# naming the class and the server refuses to start.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_whole_chain_from_the_command_line(exp_root: Path, project: tuple[Path, str]) -> None:
    from fastapi.testclient import TestClient

    from mlkit import data
    from mlkit.serve import app as serve_app

    folder, module = project
    notebook = _notebook(folder / "train.ipynb", module)
    env = {**os.environ, "MLKIT_EXPERIMENTS": str(exp_root), "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "mlkit", "run", str(notebook), "-p", "hidden", "12"],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = exp_root.glob("*/runs/*")
    spec = json.loads((run_dir / BUILD).read_text())
    assert spec["class"] == f"{module}:TinyNet" and spec["build"]["hidden"] == 12

    proc = run_cli("model", "register", str(run_dir), "--name", "tiny")  # from the repo root
    assert proc.returncode == 0, proc.stderr
    card = json.loads((exp_root / "registry" / "tiny" / "v1" / "card.json").read_text())
    assert card["model"]["class"] == f"{module}:TinyNet"

    X = data.load("digits_flat", seed=0).test.X[:2]
    with TestClient(serve_app.create_app("tiny", "v1", root=exp_root)) as client:
        answer = client.post("/predict", json={"inputs": X.tolist()})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 2 and len(predictions[0]["probabilities"]) == 10

    proc = run_cli("evaluate", run_dir.name, "--quiet", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"of run {run_dir.name} completed" in proc.stdout

    _gone(folder, module)
    proc = run_cli("model", "register", str(run_dir), "--name", "tiny")
    assert proc.returncode == 2, proc.stderr
    assert f"{module}:TinyNet" in proc.stderr and "beside the notebook" in proc.stderr
    assert not (exp_root / "registry" / "tiny" / "v2").exists()
    with pytest.raises(errors.ModelNotFoundError, match=f"{module}:TinyNet"):
        serve_app.create_app("tiny", "v1", root=exp_root)


# A name that is none of mlkit's architectures labels the model; the class still rebuilds it.
def test_a_name_of_your_own_labels_the_class(exp_root: Path, project: tuple[Path, str]) -> None:
    folder, module = project
    net = _import(folder, module).TinyNet(n_in=4, hidden=3, n_outputs=2)
    run = _hand_run()
    run.save_model(net, name="tiny-net", build={"n_in": 4, "hidden": 3, "input_shape": [4]})
    spec = json.loads((run.path / BUILD).read_text())
    assert spec["name"] == "tiny-net" and spec["class"] == f"{module}:TinyNet"
    assert spec["build"]["n_outputs"] == 2
