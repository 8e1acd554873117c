"""Run records: epoch rows on disk by the end, figures drawn once and never clipped."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from mlkit import record, record_store
from mlkit.errors import ParameterError
from mlkit.figures import render_png
from tests.helpers import fake_run, run_cli


def curves(bottom: float | None) -> Figure:
    fig = Figure(figsize=(10, 3.5))
    ax_loss, ax_acc = fig.subplots(1, 2)
    if bottom is not None:
        fig.subplots_adjust(bottom=bottom)
    epochs = list(range(1, 31))
    ax_loss.plot(epochs, [1 / e for e in epochs], label="train")
    ax_loss.set(xlabel="epoch", ylabel="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [1 - 1 / (e + 1) for e in epochs], color="tab:green")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy")
    return fig


def tight(fig: Figure) -> np.ndarray:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return np.asarray(Image.open(buffer), dtype=float)


def decoded(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"), dtype=float)


def ink(image: np.ndarray) -> np.ndarray:
    """First and last row and column that are not white."""
    rows = np.flatnonzero((image[..., :3] < 250).any(axis=(1, 2)))
    cols = np.flatnonzero((image[..., :3] < 250).any(axis=(0, 2)))
    return np.array([rows[0], rows[-1], cols[0], cols[-1]])


def count_savefig(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    calls: list[object] = []
    original = Figure.savefig

    def counting(self: Figure, *args: object, **kwargs: object) -> None:
        calls.append(kwargs.get("bbox_inches"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", counting)
    return calls


def test_figure_with_room_is_drawn_once_and_cropped_like_tight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = tight(curves(bottom=0.17))
    calls = count_savefig(monkeypatch)
    fig = curves(bottom=0.17)
    canvas = fig.canvas
    got = decoded(render_png(fig))
    assert calls == []  # cropped from one drawing, not saved by savefig
    assert got.shape == expected.shape
    # The same picture up to sub-pixel placement (savefig's crop shifts the drawing by a
    # fraction of a pixel): what is drawn sits at the same place, to the pixel.
    assert np.abs(ink(got) - ink(expected)).max() <= 1
    assert np.abs(got - expected).mean() < 10
    assert Image.open(io.BytesIO(render_png(curves(bottom=0.17)))).mode == "RGB"  # opaque
    # Whitespace around it is cropped as savefig does: the canvas is 1000 x 350.
    assert got.shape[1] < 1000 * 0.9
    # The figure is left as it was: same canvas, same dpi, and it still saves.
    assert fig.canvas is canvas and fig.dpi == 100
    monkeypatch.undo()
    assert tight(fig).shape == expected.shape


# A see-through figure keeps its alpha channel; an opaque one is stored without it.
def test_figure_transparency_is_kept() -> None:
    fig = curves(bottom=0.17)
    fig.patch.set_alpha(0.0)
    image = Image.open(io.BytesIO(render_png(fig)))
    assert image.mode == "RGBA" and np.asarray(image)[..., 3].min() == 0


def test_figure_drawn_past_its_edges_is_not_clipped(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 3.5-inch-high figure with the default margins puts its x labels below the canvas.
    fig = curves(bottom=None)
    fig.canvas.draw()
    assert fig.get_tightbbox().y0 < 0
    expected = tight(curves(bottom=None))
    calls = count_savefig(monkeypatch)
    got = decoded(render_png(curves(bottom=None)))
    assert len(calls) == 1 and calls[0] != "tight"  # the box measured once, reused
    assert np.array_equal(got, expected)  # savefig's own picture, labels included


# Epoch rows are appended without an fsync each, and forced to disk before result.json says
# the run is done (or when a run that never finished is closed).
@pytest.mark.parametrize("finished", [True, False])
def test_epoch_rows_reach_disk_by_the_end(
    exp_root: Path, monkeypatch: pytest.MonkeyPatch, finished: bool
) -> None:
    run = record.start_run({"x": 1}, experiment="sync")
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(record.os, "fsync", spy)
    for epoch in range(3):
        run.log({"epoch": epoch, "val/loss": 1.0 / (epoch + 1)}, step=epoch)
    rows = run.path / "metrics.jsonl"
    assert len(rows.read_text().splitlines()) == 3  # every row readable at once
    assert rows.stat().st_ino not in synced
    if finished:
        run.finish({"val/loss": 0.33})
        result = (run.path / "result.json").stat().st_ino
        assert synced.index(rows.stat().st_ino) < synced.index(result)
    record.close_active(None, failed=not finished)
    assert rows.stat().st_ino in synced


# A record file that is not valid JSON makes that run "unreadable", naming the file and the
# parse error; it never raises, and a good record next to it reads as before.
@pytest.mark.parametrize(
    ("name", "content", "said"),
    [
        ("run.json", '{"id": "x", "status": "compl', "is not valid JSON: Unterminated string"),
        ("run.json", "", "is empty"),
        ("params.json", "{not json", "is not valid JSON: Expecting property name"),
        ("result.json", "[1, 2]", "holds a JSON list, not an object"),
    ],
)
def test_damaged_record_is_unreadable_not_an_error(
    exp_root: Path, name: str, content: str, said: str
) -> None:
    good = fake_run(exp_root, weights=False)
    bad = fake_run(exp_root, weights=False)
    (bad / name).write_text(content)
    info = record_store.load_run(bad)
    assert info["status"] == "unreadable"
    assert info["reason"].startswith(f"{bad / name} {said}")
    assert info["id"] == bad.name and info["params"] == {} and info["result"] is None
    listed = {r["id"]: r["status"] for r in record_store.list_runs(root=exp_root)}
    assert listed == {good.name: "completed", bad.name: "unreadable"}


# The registry's folder is not an experiment: runs there would land among registered models.
def test_registry_folder_is_not_an_experiment_name(exp_root: Path) -> None:
    with pytest.raises(ParameterError, match="reserved"):
        record_store.check_experiment_name("registry")
    proc = run_cli("run", "tests/notebooks/echo.ipynb", "--experiment", "registry")
    assert proc.returncode == 2, proc.stderr
    assert "reserved" in proc.stderr and "Traceback" not in proc.stderr
    assert not (exp_root / "registry").exists()
