"""Faults switched at run time: error, slow (in test_timing), down, hang, mid-stream drop."""

from __future__ import annotations

import time

import httpx
import pytest

from backends.simulator import Simulator

from .helpers import EASTUS_70B, asgi_client, chat, run, serve, sse_events

BASE = f"/d/{EASTUS_70B}"
CHAT = f"{BASE}/v1/chat/completions"


def calls(app, *requests):
    """Run (method, path, json) requests in order against `app`; return the responses."""

    async def go():
        async with asgi_client(app) as client:
            return [await client.request(m, p, json=j) for m, p, j in requests]

    return run(go())


@pytest.mark.parametrize("time_scale", [0.0, 0.01])
def test_the_error_fault_answers_500_before_any_token(world, time_scale):
    app = Simulator(world, time_scale=time_scale)
    _, failed, streamed = calls(
        app,
        ("POST", f"{BASE}/control", {"fault": "error"}),
        ("POST", CHAT, chat()),
        ("POST", CHAT, chat(stream=True)),
    )

    for r in (failed, streamed):
        assert r.status_code == 500
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"]["type"] == "server_error"
        assert r.json()["error"]["code"] == "injected_error"
        assert "simulated" in r.json()["error"]["message"]


def test_the_error_rate_is_the_share_of_requests_that_fail(world):
    app = Simulator(world, time_scale=0)
    responses = calls(
        app,
        ("POST", f"{BASE}/control", {"fault": "error", "error_rate": 0.5}),
        *[("POST", CHAT, chat())] * 60,
        ("POST", f"{BASE}/control", {"fault": "error", "error_rate": 0}),
        *[("POST", CHAT, chat())] * 5,
    )

    half, none = responses[1:61], responses[62:]
    assert 15 <= sum(r.status_code == 500 for r in half) <= 45
    assert all(r.status_code == 200 for r in none)


def test_a_down_deployment_answers_503_everywhere_until_it_recovers(world):
    app = Simulator(world, time_scale=0)
    _, completion, models, health, _, after, health_after = calls(
        app,
        ("POST", f"{BASE}/control", {"fault": "down"}),
        ("POST", CHAT, chat()),
        ("GET", f"{BASE}/v1/models", None),
        ("GET", f"{BASE}/health", None),
        ("POST", f"{BASE}/control", {"fault": "none"}),
        ("POST", CHAT, chat()),
        ("GET", f"{BASE}/health", None),
    )

    assert completion.status_code == models.status_code == 503
    assert completion.json()["error"]["code"] == "backend_down"
    assert health.status_code == 503
    assert health.json()["status"] == "down"
    assert after.status_code == 200
    assert health_after.status_code == 200
    assert health_after.json() == {"status": "ok", "simulator": True, "time_scale": 0.0}


def test_a_hung_deployment_never_answers_and_holds_no_slot(world):
    app = Simulator(world, time_scale=0)
    dep = app.deployments[EASTUS_70B]
    with serve(app) as base, httpx.Client(base_url=base, timeout=0.2) as client:
        client.post(f"{BASE}/control", json={"fault": "hang"})
        for method, path in (
            ("POST", CHAT),
            ("GET", f"{BASE}/health"),
            ("GET", f"{BASE}/v1/models"),
        ):
            with pytest.raises(httpx.ReadTimeout):
                client.request(method, path, json=chat())
        assert dep.slots.running == 0
        assert client.get(f"{BASE}/metrics").status_code == 200  # the simulator's own side
        client.post(f"{BASE}/control", json={"fault": "none"})

        assert client.post(CHAT, json=chat()).status_code == 200


@pytest.mark.parametrize("time_scale", [0.0, 0.01])
def test_error_after_tokens_drops_the_stream_midway(world, time_scale):
    app = Simulator(world, time_scale=time_scale)
    received = []
    with serve(app) as base, httpx.Client(base_url=base, timeout=2) as client:
        client.post(f"{BASE}/control", json={"error_after_tokens": 3})
        with client.stream("POST", CHAT, json=chat(max_tokens=10, stream=True)) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            with pytest.raises(httpx.RemoteProtocolError):  # the connection just drops
                received.extend(lines)
        whole = client.post(CHAT, json=chat(max_tokens=10))
        short = client.post(CHAT, json=chat(max_tokens=3, stream=True))  # ends before the fault

    contents = [line for line in received if '"content":" ' in line]
    assert len(contents) == 3
    assert not any("[DONE]" in line or 'finish_reason":"' in line for line in received)
    assert whole.status_code == 500
    assert whole.json()["error"]["code"] == "injected_error"
    assert sse_events(short.text)[-1] == "[DONE]"


@pytest.mark.parametrize("time_scale", [0.0, 0.01])
def test_stall_after_tokens_stops_the_stream_midway_and_holds_it_open(world, time_scale):
    app = Simulator(world, time_scale=time_scale)
    deployment = app.deployments[EASTUS_70B]
    received = []
    timeout = httpx.Timeout(5, read=0.5)
    with serve(app) as base, httpx.Client(base_url=base, timeout=timeout) as client:
        client.post(f"{BASE}/control", json={"stall_after_tokens": 3})
        with client.stream("POST", CHAT, json=chat(max_tokens=10, stream=True)) as r:
            assert r.status_code == 200
            with pytest.raises(httpx.ReadTimeout):  # open, and silent after three tokens
                received.extend(r.iter_lines())
        with pytest.raises(httpx.ReadTimeout):
            client.post(CHAT, json=chat(max_tokens=10))  # a whole answer never comes
        short = client.post(CHAT, json=chat(max_tokens=3, stream=True))  # ends before the fault

    assert len([line for line in received if '"content":" ' in line]) == 3
    assert not any("[DONE]" in line for line in received)
    assert sse_events(short.text)[-1] == "[DONE]"
    deadline = time.monotonic() + 5
    while deployment.slots.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert deployment.slots.running == 0  # the slot was freed when the client gave up


def test_fault_none_clears_every_fault(world):
    app = Simulator(world, time_scale=0)
    _, state, _, cleared = calls(
        app,
        (
            "POST",
            f"{BASE}/control",
            {"fault": "slow", "slow_factor": 3, "error_after_tokens": 2, "stall_after_tokens": 4},
        ),
        ("GET", f"{BASE}/control", None),
        ("POST", f"{BASE}/control", {"fault": "none"}),
        ("GET", f"{BASE}/control", None),
    )

    assert state.json()["fault"] == {
        "fault": "slow",
        "error_rate": 1.0,
        "slow_factor": 3,
        "error_after_tokens": 2,
        "stall_after_tokens": 4,
        "retry_after_s": 1.0,
    }
    assert cleared.json()["fault"]["fault"] == "none"
    assert cleared.json()["fault"]["error_after_tokens"] is None
    assert cleared.json()["fault"]["stall_after_tokens"] is None
