"""Bad requests get OpenAI-style error bodies with the right status."""

from __future__ import annotations

import pytest

from backends.simulator import Simulator

from .helpers import EASTUS_70B, MODEL_70B, asgi_client, chat, run

CHAT = f"/d/{EASTUS_70B}/v1/chat/completions"


@pytest.fixture
def app(world):
    return Simulator(world, time_scale=0)


def call(app, method, path, **kwargs):
    async def go():
        async with asgi_client(app) as client:
            return await client.request(method, path, **kwargs)

    return run(go())


M = MODEL_70B.encode()
HI = b'[{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        (b"{not json", 400, "invalid_json", None),
        (b"[1, 2]", 400, "invalid_type", None),
        (b'{"messages": %s}' % HI, 400, "missing_required_parameter", "model"),
        (b'{"model": 7, "messages": []}', 400, "invalid_type", "model"),
        (b'{"model": "%s"}' % M, 400, "missing_required_parameter", "messages"),
        (b'{"model": "%s", "messages": []}' % M, 400, "invalid_type", "messages"),
        (b'{"model": "%s", "messages": ["hi"]}' % M, 400, "invalid_type", "messages[0]"),
        (b'{"model": "gpt-4o", "messages": %s}' % HI, 404, "model_not_found", "model"),
    ],
)
def test_a_malformed_request_gets_an_openai_error(app, body, status, code, param):
    r = call(app, "POST", CHAT, content=body, headers={"content-type": "application/json"})

    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["param"] == param
    assert error["message"]


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("max_tokens", "ten", "invalid_type"),
        ("max_tokens", 0, "invalid_value"),
        ("max_tokens", True, "invalid_type"),
        ("max_completion_tokens", 1.5, "invalid_type"),
        ("stream", "yes", "invalid_type"),
        ("stream_options", {"include_usage": True}, "invalid_value"),  # without stream
        ("n", 0, "invalid_value"),
        ("n", 129, "invalid_value"),
        ("n", 2**40, "invalid_value"),
        ("n", "two", "invalid_type"),
        ("temperature", -0.5, "invalid_value"),
        ("temperature", "hot", "invalid_type"),
        ("top_p", 0, "invalid_value"),
        ("top_p", 1.5, "invalid_value"),
        ("top_p", True, "invalid_type"),
    ],
)
def test_a_field_of_the_wrong_type_or_value_is_a_400_naming_it(app, field, value, code):
    r = call(app, "POST", CHAT, json=chat(**{field: value}))

    assert r.status_code == 400
    assert r.json()["error"]["param"] == field
    assert r.json()["error"]["code"] == code


def test_a_request_longer_than_the_context_is_refused(app):
    r = call(app, "POST", CHAT, json=chat(max_tokens=131_072))

    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_an_unknown_deployment_is_a_404(app):
    r = call(app, "POST", "/d/nowhere-nothing/v1/chat/completions", json=chat())

    assert r.status_code == 404
    assert r.json()["error"]["code"] == "deployment_not_found"


def test_an_unknown_path_is_a_404(app):
    assert call(app, "GET", f"/d/{EASTUS_70B}/v2/things").status_code == 404
    assert call(app, "GET", "/v1/models").status_code == 404


def test_the_wrong_method_is_a_405(app):
    r = call(app, "GET", CHAT)

    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "body",
    [
        {"fault": "explode"},
        {"error_rate": 2},
        {"error_rate": "high"},
        {"slow_factor": -1},
        {"error_after_tokens": 1.5},
        {"loaded": "no"},
        {"concurrency_slots": 0},
        {"colour": "blue"},
    ],
)
def test_a_bad_control_request_is_a_400_and_changes_nothing(app, body):
    before = call(app, "GET", f"/d/{EASTUS_70B}/control").json()

    r = call(app, "POST", f"/d/{EASTUS_70B}/control", json=body)

    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert call(app, "GET", f"/d/{EASTUS_70B}/control").json() == before


def test_a_bad_time_scale_is_a_400(app):
    r = call(app, "POST", "/control/time_scale", json={"time_scale": -1})

    assert r.status_code == 400
    assert app.time_scale == 0
