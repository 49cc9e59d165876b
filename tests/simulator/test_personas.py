"""Provider personas: a simulated deployment that authenticates, names the model its
own way, answers errors in its provider's style, rate-limits, or ignores include_usage."""

from __future__ import annotations

import httpx
import pytest

from backends.simulator import Simulator

from .helpers import EASTUS_70B, asgi_client, chat, run, sse_events

BASE = f"/d/{EASTUS_70B}"
CHAT = f"{BASE}/v1/chat/completions"
KEY = "sk-persona-test-1234"
OWN = "llama-3.3-70b-versatile"


def calls(app, *requests):
    """Run (method, path, json, headers) requests in order; return the responses."""

    async def go():
        async with asgi_client(app) as client:
            return [await client.request(m, p, json=j, headers=h) for m, p, j, h in requests]

    return run(go())


def persona(**fields):
    return ("POST", f"{BASE}/control", {"persona": {"keys": [KEY], "model_id": OWN, **fields}},
            {})  # fmt: skip


def test_a_persona_wants_its_key_in_its_header_and_its_own_model_id(world):
    app = Simulator(world, time_scale=0)
    _, missing, wrong, right, slug, models = calls(
        app,
        persona(auth_header="api-key"),
        ("POST", CHAT, chat(OWN), {}),
        ("POST", CHAT, chat(OWN), {"api-key": "sk-other"}),
        ("POST", CHAT, chat(OWN), {"api-key": KEY}),
        ("POST", CHAT, chat(), {"api-key": KEY}),
        ("GET", f"{BASE}/v1/models", None, {"api-key": KEY}),
    )
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert "sk-other" in wrong.json()["error"]["message"]  # it echoes: the worst case
    assert right.status_code == 200
    assert right.json()["model"] == OWN
    assert slug.status_code == 404  # the catalog's slug is not its name for the model
    assert [m["id"] for m in models.json()["data"]] == [OWN]
    # refused requests never got that far
    assert app.deployments[EASTUS_70B].persona.seen == [(KEY, OWN), (KEY, "llama-3.3-70b-instruct")]


def test_a_bearer_persona_takes_the_key_after_bearer(world):
    app = Simulator(world, time_scale=0)
    _, ok = calls(
        app,
        persona(auth_header="authorization"),
        ("POST", CHAT, chat(OWN), {"authorization": f"Bearer {KEY}"}),
    )
    assert ok.status_code == 200


def test_a_persona_that_wants_a_key_guards_its_metrics_with_it_too(world):
    app = Simulator(world, time_scale=0)
    metrics = f"{BASE}/metrics"
    before, _, missing, wrong, right = calls(
        app,
        ("GET", metrics, None, {}),
        persona(auth_header="authorization"),
        ("GET", metrics, None, {}),
        ("GET", metrics, None, {"authorization": "Bearer sk-other"}),
        ("GET", metrics, None, {"authorization": f"Bearer {KEY}"}),
    )
    assert before.status_code == 200  # no persona: open, as before
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert "vllm:num_requests_running" not in missing.text + wrong.text
    assert right.status_code == 200
    assert "vllm:num_requests_running" in right.text


@pytest.mark.parametrize(
    ("style", "body"),
    [
        (
            "tgi",
            {"error": "'temperature' must be at least 0", "error_type": "invalid_value"},
        ),
        ("plain", {"error": "'temperature' must be at least 0"}),
    ],
)
def test_errors_come_in_the_personas_style(world, style, body):
    app = Simulator(world, time_scale=0)
    _, bad = calls(app, persona(error_style=style), ("POST", CHAT, chat(OWN, temperature=-1), {}))
    assert bad.status_code == 400
    assert bad.json() == body


def test_the_rate_limited_fault_answers_429_with_retry_after(world):
    app = Simulator(world, time_scale=0)
    _, limited = calls(
        app,
        ("POST", f"{BASE}/control", {"fault": "rate_limited", "retry_after_s": 7}, {}),
        ("POST", CHAT, chat(), {}),
    )
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert limited.json()["error"]["type"] == "rate_limit_error"


def test_a_persona_that_ignores_include_usage_streams_no_usage(world):
    app = Simulator(world, time_scale=0)
    _, streamed = calls(
        app,
        persona(ignores_include_usage=True),
        ("POST", CHAT, chat(OWN, stream=True, stream_options={"include_usage": True},
                           max_tokens=3), {}),
    )  # fmt: skip
    events = [e for e in sse_events(streamed.text) if e != "[DONE]"]
    assert events
    assert all("usage" not in e or e["usage"] is None for e in events)


def test_a_malformed_persona_is_refused_and_changes_nothing(world):
    app = Simulator(world, time_scale=0)
    bad, state = calls(
        app,
        ("POST", f"{BASE}/control", {"persona": {"keys": "not-a-list"}}, {}),
        ("GET", f"{BASE}/control", None, {}),
    )
    assert bad.status_code == 400
    assert state.json()["persona"] is None


def test_the_control_state_counts_keys_but_never_shows_them(world):
    app = Simulator(world, time_scale=0)
    _, state = calls(app, persona(auth_header="api-key"), ("GET", f"{BASE}/control", None, {}))
    assert state.json()["persona"]["keys"] == 1
    assert KEY not in state.text


def test_an_unknown_route_still_answers_404(world):
    response = calls(Simulator(world, time_scale=0), ("GET", f"{BASE}/nope", None, {}))[0]
    assert isinstance(response, httpx.Response)
    assert response.status_code == 404
