"""/openapi.json tells the truth: the /predict body and every status the server answers.

Unit tests read the document of an app built in this process; the slow test points
schemathesis, with all its checks, at a real ``mlkit serve`` on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from mlkit.serve.app import create_app
from tests.helpers import log_rows, registered_digits_flat, start_server, stop

TOKEN = "openapi-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REFUSALS = {"401", "413", "422", "500", "503"}


@pytest.fixture
def app(exp_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An app serving a linear digits_flat model (64 features, raw inputs allowed), token set."""
    registered_digits_flat(exp_root)
    monkeypatch.setenv("MLKIT_SERVE_TOKEN", TOKEN)
    app = create_app("digits", "production", follow_s=0)
    yield app
    app.state.server.log.close()  # the lifespan that would close it never ran


def json_schema(response: dict[str, Any]) -> dict[str, Any]:
    return response["content"]["application/json"]["schema"]


def body_schema(doc: dict[str, Any]) -> dict[str, Any]:
    return json_schema(doc["paths"]["/predict"]["post"]["requestBody"])


# /predict declares its body: the four keys, exactly one of them, each of the model's shape.
def test_predict_declares_its_request_body(app: Any) -> None:
    post = app.openapi()["paths"]["/predict"]["post"]
    assert post["requestBody"]["required"] is True
    schema = body_schema(app.openapi())
    assert set(schema["properties"]) == {"input", "inputs", "raw_input", "raw_inputs"}
    assert (schema["minProperties"], schema["maxProperties"]) == (1, 1)
    assert schema["additionalProperties"] is False
    one = schema["properties"]["input"]
    assert one["minItems"] == one["maxItems"] == 64 and one["items"]["type"] == "number"
    batch = schema["properties"]["inputs"]
    assert (batch["minItems"], batch["maxItems"]) == (1, 1024)
    assert batch["items"]["minItems"] == batch["items"]["maxItems"] == 64


# The schema and the hand-written parser agree: a body is valid exactly when the server scores it.
def test_request_schema_agrees_with_the_parser(app: Any) -> None:
    validator = Draft202012Validator(body_schema(app.openapi()))
    server = app.state.server
    row = [0.5] * 64
    bodies = {
        "one": {"input": row},
        "batch": {"inputs": [row, row]},
        "raw": {"raw_input": row},
        "raw batch": {"raw_inputs": [row]},
        "ints": {"input": [1] * 64},
        "none": {},
        "two keys": {"input": row, "inputs": [row]},
        "null": {"input": None},
        "null beside a key": {"input": None, "inputs": [row]},
        "short": {"input": row[:-1]},
        "empty batch": {"inputs": []},
        "a word": {"input": ["seven", *row[1:]]},
        "a boolean": {"input": [True, *row[1:]]},
        "an extra key": {"input": row, "label": 3},
        "beyond float32": {"input": [1e39, *row[1:]]},
        # the next double past the bound, which a cast to float32 would round back onto it
        "just beyond float32": {"input": [-3.402823466385289e38, *row[1:]]},
        "float32's bound": {"input": [-3.4028234663852886e38, *([0.0] * 63)]},
    }
    for name, body in bodies.items():
        status = server.predict(json.dumps(body).encode())[0]
        assert validator.is_valid(body) == (status == 200), (name, status)


# Every status /predict answers is declared, each with the body and headers it really has.
def test_predict_declares_every_status_it_answers(app: Any) -> None:
    responses = app.openapi()["paths"]["/predict"]["post"]["responses"]
    assert set(responses) == {"200", *REFUSALS}
    for code in REFUSALS:
        schema = json_schema(responses[code])
        assert {"request_id", "version", "detail"} <= set(schema["required"]), code
        assert "X-Request-ID" in responses[code]["headers"], code
    assert json_schema(responses["422"])["properties"]["detail"]["type"] == "array"
    assert "WWW-Authenticate" in responses["401"]["headers"]
    ok = json_schema(responses["200"])["oneOf"]
    assert [s["required"][-1] for s in ok] == ["prediction", "predictions"]


# With a token, the bearer scheme is declared and /predict and /metadata require it.
def test_bearer_scheme_declared_with_a_token(app: Any) -> None:
    doc = app.openapi()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "$MLKIT_SERVE_TOKEN",
    }
    paths = doc["paths"]
    assert paths["/predict"]["post"]["security"] == [{"bearer": []}]
    assert paths["/metadata"]["get"]["security"] == [{"bearer": []}]
    assert "401" in paths["/metadata"]["get"]["responses"]
    assert "security" not in paths["/health"]["get"]


# Without a token the server never answers 401, so the document declares neither 401 nor a scheme.
def test_no_token_no_401(exp_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registered_digits_flat(exp_root)
    monkeypatch.delenv("MLKIT_SERVE_TOKEN", raising=False)
    app = create_app("digits", "production", follow_s=0)
    doc = app.openapi()
    app.state.server.log.close()
    assert "securitySchemes" not in doc.get("components", {})
    assert set(doc["paths"]["/predict"]["post"]["responses"]) == {"200", *REFUSALS} - {"401"}
    assert "401" not in doc["paths"]["/metadata"]["get"]["responses"]
    assert "security" not in doc["paths"]["/predict"]["post"]


# /health and /metadata answer what the document says, refusals included.
def test_health_and_metadata_match_their_schemas(app: Any) -> None:
    from fastapi.testclient import TestClient

    paths = app.openapi()["paths"]
    client = TestClient(app)
    cases = [
        ("/health", {}, 200),
        ("/metadata", AUTH, 200),
        ("/metadata", {}, 401),
        ("/metadata", {"Authorization": "Bearer wrong"}, 401),
    ]
    for path, headers, status in cases:
        response = client.get(path, headers=headers)
        assert response.status_code == status, (path, response.text)
        declared = paths[path]["get"]["responses"][str(status)]
        Draft202012Validator(json_schema(declared)).validate(response.json())


# An input whose output overflows float32 gets a 422 that says so, logged as a 422, not a 500.
def test_output_overflow_is_a_logged_422(app: Any, exp_root: Path) -> None:
    from fastapi.testclient import TestClient

    response = TestClient(app).post("/predict", json={"input": [3.4e38] * 64}, headers=AUTH)
    assert response.status_code == 422, response.text
    assert [d["type"] for d in response.json()["detail"]] == ["finite_output"]
    declared = app.openapi()["paths"]["/predict"]["post"]["responses"]["422"]
    Draft202012Validator(json_schema(declared)).validate(response.json())
    rows = log_rows(exp_root / "registry" / "digits" / "predictions.sqlite")
    assert [(r["request_id"], r["status"]) for r in rows] == [(response.json()["request_id"], 422)]


# What no schema of the inputs can say. A schema-valid body may be refused with 413 (over
# --max-body-bytes: a rejection of invalid data too) or with 422 when the model's output
# overflows; the custom check fails any other 422 of a body schemathesis generated as valid.
HOOKS = """
import schemathesis


@schemathesis.check
def refused_only_for_overflow(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    detail = response.json()["detail"]
    if {d["type"] for d in detail} != {"finite_output"}:
        raise AssertionError(f"a schema-valid body was refused: {detail}")
    return None
"""
CONFIG = """
[[operations]]
include-name = "POST /predict"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "401", "403", "404", "409", "429", "5xx", "413", "422",
]
checks.negative_data_rejection.expected-statuses = [
    "400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429", "5xx", "413",
]
"""


# schemathesis, every check on, finds nothing wrong with a real server and its document.
@pytest.mark.slow
def test_schemathesis_finds_nothing(exp_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("schemathesis")
    registered_digits_flat(exp_root)
    (tmp_path / "hooks.py").write_text(HOOKS)
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    proc, url = start_server(exp_root, "digits:production", env={"MLKIT_SERVE_TOKEN": TOKEN})
    try:
        # Checks include ignored_auth: it resends requests without and with a wrong token.
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "st"),
                "--config-file",
                str(tmp_path / "schemathesis.toml"),
                "run",
                f"{url}/openapi.json",
                "--checks",
                "all",
                "-H",
                f"Authorization: Bearer {TOKEN}",
                "--max-examples",
                "100",
                "--seed",
                "0",
                "--workers",
                "1",
                "--generation-database",
                "none",
                "--no-color",
            ],
            cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": str(tmp_path / "hooks.py")},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stop(proc)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "3 selected / 3 total" in result.stdout
    # It scored bodies, was refused some, and sent requests without the token.
    statuses = {
        r["status"] for r in log_rows(exp_root / "registry" / "digits" / "predictions.sqlite")
    }
    assert {200, 401, 422} <= statuses, statuses
