"""The sweep report: a real study, the real kernel, the notebook and its HTML page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlkit import errors
from mlkit import storage as storages
from mlkit._io import redact, redact_text
from mlkit.run.notebook import read_result
from mlkit.sweep import report

SECRET = "s3cret-pw"


def _add(study: Any, state: str, params: dict[str, Any], **fields: Any) -> None:
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    distributions = {"x": FloatDistribution(-3.0, 3.0), "width": IntDistribution(8, 64)}
    study.add_trial(
        optuna.trial.create_trial(
            state=getattr(optuna.trial.TrialState, state),
            params=params,
            distributions={k: distributions[k] for k in params},
            **fields,
        )
    )


def make_study(root: Path, name: str, url: str | None = None) -> tuple[str, float]:
    """8 trials on (x - 1)^2: 5 complete, 2 pruned, 1 failed. Returns (url, best value)."""
    import optuna

    url = url or storages.default_storage(name, root)
    study = optuna.create_study(
        study_name=name, storage=storages.open_storage(url), direction="minimize"
    )
    study.set_user_attr(
        "mlkit",
        {
            "notebook": "templates/classify.ipynb",
            "space": [],
            "objectives": ["val/loss"],
            "fixed": {},
            "sampler": "tpe",
            "pruner": "median",
            "seed": 0,
        },
    )
    best = float("inf")
    for number, x in enumerate([-2.0, 0.5, 2.5, -1.0, 1.2, 3.0, 0.0, 1.8]):
        run_path = root / name / "runs" / f"run-{number}"
        run_path.mkdir(parents=True)
        (run_path / "output.ipynb").write_text("{}")
        attrs = {"run_id": f"run-{number}", "run_path": str(run_path), "seed": number}
        params = {"x": x, "width": 8 * (number + 1)}
        value = (x - 1.0) ** 2
        curve = {step: value + 1.0 / step for step in range(1, 6)}
        if number == 5:
            _add(study, "FAIL", params, user_attrs={**attrs, "fail_reason": "cell 7 raised <boom>"})
        elif number in (3, 6):
            _add(
                study,
                "PRUNED",
                params,
                user_attrs=attrs,
                intermediate_values={s: v for s, v in curve.items() if s <= 2},
            )
        else:
            attrs["result"] = {"val/loss": value, "test/accuracy": 1.0 - value / 10}
            _add(
                study, "COMPLETE", params, value=value, intermediate_values=curve, user_attrs=attrs
            )
            best = min(best, value)
    return url, best


def page_and_notebook(out: dict[str, Any]) -> tuple[str, str]:
    return Path(out["html"]).read_text(), Path(out["notebook"]).read_text()


# The report of a journal study: completed, plots embedded, links to records, right counts.
@pytest.mark.slow
def test_report_single_objective(exp_root: Path) -> None:
    _, best = make_study(exp_root, "quad-sweep")
    out = report.sweep_report("quad-sweep", progress=False)
    assert out["status"] == "completed", out["reason"]
    assert Path(out["notebook"]) == exp_root / "quad-sweep" / "report" / "sweep_report.ipynb"
    page, _ = page_and_notebook(out)
    assert "quad-sweep" in page
    assert 'href="../runs/run-1/output.ipynb"' in page
    # history, importances, parallel coordinates, intermediate values, slice: plotly figures,
    # plotly.js inline once, and no script fetched from anywhere (require.js, MathJax)
    assert page.count('class="plotly-graph-div"') == 5
    assert page.count("plotly.js v") == 1
    assert "<script src=" not in page
    assert "run-1" in page.split("plotly.js v")[1]  # a trial's record id in the plots' data
    assert "cell 7 raised &lt;boom&gt;" in page  # the failed trial's reason, escaped
    assert "test/accuracy" in page
    result = read_result(out["notebook"])
    assert result == {"n_trials": 8, "n_complete": 5, "best_value": pytest.approx(best)}


# Two objectives: a Pareto front instead of one best value; the plots still render.
@pytest.mark.slow
def test_report_two_objectives(exp_root: Path) -> None:
    import optuna

    url = storages.default_storage("pareto-sweep", exp_root)
    study = optuna.create_study(
        study_name="pareto-sweep",
        storage=storages.open_storage(url),
        directions=["maximize", "minimize"],
    )
    study.set_user_attr("mlkit", {"objectives": ["val/accuracy", "time"]})
    for number, (acc, seconds) in enumerate([(0.8, 3.0), (0.9, 5.0), (0.7, 1.0), (0.6, 4.0)]):
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": number / 4},
                distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
                values=[acc, seconds],
            )
        )
    out = report.sweep_report("pareto-sweep", progress=False)
    assert out["status"] == "completed", out["reason"]
    page, _ = page_and_notebook(out)
    assert "Pareto front" in page and page.count('class="plotly-graph-div"') >= 3
    assert read_result(out["notebook"]) == {
        "n_trials": 4,
        "n_complete": 4,
        "pareto_size": 3,
    }


def history_figure(study: Any) -> Any:
    import optuna.visualization as vis

    return vis.plot_optimization_history(study, target_name="val/loss")


# Hovering a point of the history plot shows that trial's record id, value and parameters,
# and the points lie over the best-value line, which would otherwise take the hover.
def test_history_hover_names_the_trial_record_and_params(exp_root: Path) -> None:
    url, _ = make_study(exp_root, "hover-sweep")
    study = storages.load_study(url, "hover-sweep")
    trials = study.get_trials()
    figure = report.trial_hover(history_figure(study), trials, ["val/loss"])
    points = figure.data[-1]
    assert points.mode == "markers" and points.hovertemplate == "%{customdata}<extra></extra>"
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert [int(x) for x in points.x] == [t.number for t in complete]
    first = points.customdata[0]
    assert first.startswith("<b>trial 0</b> · run-0<br>val/loss 9<br>")
    assert "x -2<br>width 8" in first
    assert "heartbeat" not in first and "run_path" not in first
    line = next(t for t in figure.data if t.mode == "lines")
    assert line.hovertemplate is None  # a trace of no trials keeps its own hover


# Optuna's Pareto-front hover (every user attribute as JSON) becomes the same short text.
def test_pareto_hover_is_short(exp_root: Path) -> None:
    import optuna
    import optuna.visualization as vis

    study = optuna.create_study(directions=["maximize", "minimize"])
    for number, values in enumerate([(0.8, 3.0), (0.9, 5.0)]):
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": number / 4},
                distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
                values=list(values),
                user_attrs={"run_id": f"run-{number}", "heartbeat": "2026-01-01"},
            )
        )
    figure = vis.plot_pareto_front(study, target_names=["acc", "time"])
    report.trial_hover(figure, study.get_trials(), ["acc", "time"])
    texts = [text for trace in figure.data for text in (trace.customdata or [])]
    assert sorted(texts) == [
        "<b>trial 0</b> · run-0<br>acc 0.8<br>time 3<br>x 0",
        "<b>trial 1</b> · run-1<br>acc 0.9<br>time 5<br>x 0.25",
    ]


# plotly.js goes inline only where asked (the report's first figure), never from a CDN.
def test_figure_html_inlines_plotlyjs_once(exp_root: Path) -> None:
    url, _ = make_study(exp_root, "html-sweep")
    study = storages.load_study(url, "html-sweep")
    first = report.figure_html(history_figure(study), plotlyjs=True)
    later = report.figure_html(history_figure(study), plotlyjs=False)
    assert "plotly.js v" in first and len(first) > 1_000_000
    assert "plotly.js v" not in later and len(later) < 100_000
    assert "Plotly.newPlot" in later and "<script src=" not in first + later


# A study that does not exist fails before a kernel starts, and nothing is written.
def test_missing_study_fails_early(exp_root: Path, tmp_path: Path) -> None:
    with pytest.raises(errors.SweepError, match="No study 'nope'"):
        report.sweep_report("nope", progress=False)
    with pytest.raises(errors.SweepError, match="does not exist"):
        report.sweep_report("nope", storage=f"sqlite:///{tmp_path / 'typo.db'}")
    assert not exp_root.exists()
    assert not (tmp_path / "typo.db").exists()


# A storage URL with a password goes to the kernel in the environment, never as a parameter.
@pytest.mark.parametrize(
    ("url", "secret"),
    [
        (f"postgresql://me:{SECRET}@db.example:5432/optuna", True),
        (f"postgresql://db.example/optuna?user=me&password={SECRET}", True),
        ("postgresql://me@db.example/optuna", False),
        ("sqlite:////tmp/x.db", False),
        ("/tmp/study.journal", False),
    ],
)
def test_storage_with_password_goes_in_env(url: str, secret: bool) -> None:
    parameters, env = report.storage_inputs(url)
    if secret:
        assert parameters == {} and env == {report.ENV_STORAGE: url}
    else:
        assert parameters == {"storage": url} and env == {}


# One redaction for every URL written down: the password hidden, user and host kept, a URL
# with nothing to hide (a path, a journal) unchanged, and odd input never raising.
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql://me:{SECRET}@db.example:5432/optuna",
            "postgresql://me:***@db.example:5432/optuna",
        ),
        (
            f"postgresql://db.example/optuna?user=me&password={SECRET}",
            "postgresql://db.example/optuna?password=***&user=me",
        ),
        (
            f"postgresql://me:{SECRET}@db.example:port/optuna",
            "postgresql://***@db.example:port/optuna",
        ),
        ("postgresql://me@db.example/optuna", "postgresql://me@db.example/optuna"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("journal:///tmp/study.journal", "journal:///tmp/study.journal"),
        ("/tmp/study.journal", "/tmp/study.journal"),
        ("postgresql://", "postgresql://"),
        (f"://me:{SECRET}@", "://***@"),
    ],
)
def test_redact_hides_the_password(url: str, shown: str) -> None:
    assert redact(url) == shown


# A driver's error may quote the URL or the bare password: neither reaches the message shown.
def test_redact_text_hides_the_password_in_a_message() -> None:
    url = f"postgresql+psycopg://me:{SECRET}@db.example/optuna"
    text = f'connection to {url} failed: password "{SECRET}" was refused'
    shown = redact_text(text, url)
    assert SECRET not in shown
    assert shown.startswith("connection to postgresql+psycopg://me:***@db.example/optuna failed")
    assert redact_text(text, "postgresql://me@db.example/optuna") == text


# The environment route works end to end: the URL is in neither the notebook's parameters nor
# its cells, and the report still loads the study (sqlite here; PostgreSQL is not at hand).
@pytest.mark.slow
def test_env_route_keeps_url_out_of_notebook(
    exp_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    make_study(exp_root, "sql-sweep", url=url)
    monkeypatch.setattr(report, "has_password", lambda _: True)
    out = report.sweep_report("sql-sweep", storage=url, progress=False)
    assert out["status"] == "completed", out["reason"]
    assert Path(out["notebook"]).parent == exp_root / "sql-sweep" / "report"
    nb = json.loads(Path(out["notebook"]).read_text())
    assert nb["metadata"]["papermill"]["parameters"] == {"study": "sql-sweep"}
    sources = "".join("".join(cell["source"]) for cell in nb["cells"])
    assert "studies.db" not in sources
    assert read_result(out["notebook"])["n_trials"] == 8
