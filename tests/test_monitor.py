"""Drift monitoring: the statistics on seeded data, the template as a run, the CLI's exit code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlkit.ops import monitor, stats
from mlkit.registry import loading
from tests.helpers import registered_digits_flat, run_cli

N_FEATURES = 12
WINDOW = 1000
REFERENCE = 2000


def correlated(rng: np.random.Generator, n: int) -> np.ndarray:
    """Correlated numeric features plus one categorical column (3 levels), as real data has."""
    base = rng.standard_normal((n, N_FEATURES))
    mixed = base + 0.6 * base[:, :1]  # every feature shares a common factor
    category = rng.choice(3, size=n, p=[0.5, 0.3, 0.2]).astype(float)
    return np.column_stack([mixed, category])


NAMES = [*(f"x{i}" for i in range(N_FEATURES)), "color"]


def test_holm_matches_the_step_down_definition() -> None:
    # Holm's adjusted p-values: sorted p times (m - rank), made monotone, capped at 1.
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.5])
    assert np.allclose(adjusted, [0.04, 0.09, 0.09, 0.5])
    assert stats.holm([0.9, 0.8]).tolist() == [1.0, 1.0]


def test_one_shifted_feature_is_flagged_and_no_other() -> None:
    # Traffic with one numeric feature shifted by +1 standard deviation: that feature drifts.
    for seed in range(3):
        rng = np.random.default_rng(seed)
        ref, cur = correlated(rng, REFERENCE), correlated(rng, WINDOW)
        cur[:, 4] += ref[:, 4].std()
        rows = monitor.feature_drift(ref, cur, names=NAMES, categorical=["color"])
        assert [r["feature"] for r in rows if r["drifted"]] == ["x4"]
        by_name = {r["feature"]: r for r in rows}
        assert by_name["x4"]["test"] == "ks" and by_name["color"]["test"] == "chi2"
        assert by_name["x4"]["psi"] > 0.25  # a major shift by the usual PSI rule of thumb
        assert max(r["psi"] for r in rows if r["feature"] != "x4") < 0.1


def test_a_shifted_category_mix_is_flagged_by_chi_squared() -> None:
    # A categorical feature whose level shares change is flagged by its chi-squared test.
    rng = np.random.default_rng(7)
    ref, cur = correlated(rng, REFERENCE), correlated(rng, WINDOW)
    cur[:, -1] = rng.choice(3, size=WINDOW, p=[0.3, 0.3, 0.4])
    rows = monitor.feature_drift(ref, cur, names=NAMES, categorical=["color"])
    assert [r["feature"] for r in rows if r["drifted"]] == ["color"]


def test_unshifted_traffic_false_alarm_rate_at_most_5_percent() -> None:
    # Unshifted traffic over 50 seeds: any feature flagged (a false alarm) in at most 5% of them.
    alarms = 0
    for seed in range(50):
        rng = np.random.default_rng(1000 + seed)
        rows = monitor.feature_drift(
            correlated(rng, REFERENCE), correlated(rng, WINDOW), names=NAMES, categorical=[12]
        )
        alarms += any(r["drifted"] for r in rows)
    rate = alarms / 50
    print(f"false-alarm rate over 50 seeds (Holm, alpha 0.01): {rate:.2%}")
    assert rate <= 0.05


def test_unshifted_digits_traffic_raises_no_false_alarm() -> None:
    # The same guarantee on real, discrete data: disjoint random halves of digits_flat.
    from mlkit import data

    ds = data.load("digits_flat", seed=0, check=False)
    X = np.concatenate([ds.train.X, ds.val.X, ds.test.X])
    alarms = 0
    for seed in range(50):
        order = np.random.default_rng(seed).permutation(len(X))
        ref, cur = X[order[:800]], X[order[800:]]
        alarms += any(r["drifted"] for r in monitor.feature_drift(ref, cur))
    print(f"digits_flat false-alarm rate over 50 seeds: {alarms / 50:.2%}")
    assert alarms / 50 <= 0.05


def test_prediction_drift_when_the_class_mix_shifts() -> None:
    # Predicted classes whose mix moves are flagged; the same mix is not.
    rng = np.random.default_rng(3)
    ref = rng.choice(3, size=REFERENCE, p=[0.5, 0.3, 0.2])
    same = rng.choice(3, size=WINDOW, p=[0.5, 0.3, 0.2])
    moved = rng.choice(3, size=WINDOW, p=[0.35, 0.3, 0.35])
    assert not monitor.prediction_drift(ref, same)["drifted"]
    out = monitor.prediction_drift(ref, moved)
    assert out["drifted"] and out["test"] == "chi2"
    assert out["shares"]["2"]["current"] > out["shares"]["2"]["reference"]
    named = monitor.prediction_drift(ref, moved, class_names=["no", "yes"])
    # Classes by name where the model has one; a class past the names keeps its index.
    assert list(named["shares"]) == ["no", "yes", "2"]
    assert named["shares"]["2"] == out["shares"]["2"]
    values = rng.standard_normal(REFERENCE)
    assert monitor.prediction_drift(values, rng.standard_normal(WINDOW) + 0.5, task="regression")[
        "drifted"
    ]


def test_bad_input_is_refused_with_a_fix() -> None:
    # Mismatched feature counts, NaN, a bad alpha and too small a window are MonitorErrors.
    ref = np.zeros((10, 3))
    with pytest.raises(monitor.MonitorError, match="3 features"):
        monitor.feature_drift(ref, np.zeros((10, 4)))
    with pytest.raises(monitor.MonitorError, match="NaN"):
        monitor.feature_drift(ref, np.full((10, 3), np.nan))
    with pytest.raises(monitor.MonitorError, match="alpha"):
        monitor.feature_drift(ref, ref, alpha=1.5)
    with pytest.raises(monitor.MonitorError, match="window"):
        monitor.window_from_log("/nonexistent.sqlite", "m", last=1)
    with pytest.raises(monitor.MonitorError, match="No prediction log"):
        monitor.window_from_log("/nonexistent.sqlite", "m", last=10)


def _serve_into_log(loaded: loading.LoadedModel, X: np.ndarray, url: str) -> None:
    """Rows as the server writes them (batches of 10, plus a refused request to skip)."""
    from mlkit.registry import loading
    from mlkit.serve import predlog

    log = predlog.PredictionLog(url)
    common = {"role": "primary", "model": "digits", "version": loaded.version, "latency_ms": 1.0}
    common["sha256"] = loaded.sha256
    log.write({**common, "request_id": "bad", "status": 422, "n": 0, "input": "{}"})
    for i in range(0, len(X), 10):
        batch = X[i : i + 10].astype(np.float32)
        body = json.dumps({"inputs": batch.tolist()})
        output = {"predictions": loading.score(loaded, batch)}
        row = {"request_id": str(i), "status": 200, "n": len(batch), "input": body}
        log.write({**common, **row, "output": output})
    log.close()


@pytest.mark.slow
def test_monitor_a_registered_model_from_its_log_and_cli_exit_codes(exp_root: Path) -> None:
    # A registered model's logged traffic: unshifted exits 0; one shifted feature exits 1.
    loaded, ds = registered_digits_flat(exp_root)
    X = np.concatenate([ds.val.X, ds.test.X])
    calm = exp_root / "calm.sqlite"
    _serve_into_log(loaded, X, f"sqlite:///{calm}")
    window = monitor.window_from_log(calm, "digits", last=300)
    assert window.X.shape == (300, 64) and set(window.versions) == {1}
    assert np.allclose(window.X, X[-300:], atol=1e-6)  # the newest 300, in order

    shifted = X.copy()
    j = ds.feature_names.index("pixel_3_4")
    shifted[:, j] += ds.train.X[:, j].std()
    moved = exp_root / "moved.sqlite"
    _serve_into_log(loaded, shifted, f"sqlite:///{moved}")

    env = {"MLKIT_EXPERIMENTS": str(exp_root), "WANDB_MODE": "disabled"}
    ok = run_cli("monitor", "digits", "--log", str(calm), "--window", "500", "-q", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "drift/n_features_drifted = 0" in ok.stdout
    bad = run_cli("monitor", "digits:production", "--log", str(moved), "-q", env=env)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "drift/features_drifted = pixel_3_4" in bad.stdout
    assert "report.html" in bad.stdout
    missing = run_cli("monitor", "nosuch", env=env)
    assert missing.returncode == 2 and "No registered model" in missing.stderr


@pytest.mark.slow
def test_template_demo_run_flags_the_shifted_feature(exp_root: Path) -> None:
    # The template's demo through mlkit.runner.run: a shift of 2 sd on one pixel is flagged.
    info = monitor.monitor("", params={"shift": 2.0, "shift_feature": "pixel_2_5"})
    assert info["status"] == "completed", info.get("reason")
    assert info["experiment"] == "monitor-demo"
    result = info["result"]
    assert result["drift/features_drifted"] == "pixel_2_5"
    assert result["drift/detected"] == 1 and result["drift/max_psi"] > 0.25
    table = json.loads((Path(info["path"]) / "drift.json").read_text())
    assert table["correction"] == "holm" and len(table["features"]) == 64
    assert "pixel_2_5" in Path(info["html"]).read_text()
    for figure in ("feature_drift.png", "prediction_drift.png"):
        assert (Path(info["path"]) / figure).stat().st_size > 0
