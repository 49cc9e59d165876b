"""Deadlines hold to the last token: a stream that stalls, or outlives its request's
deadline, is ended by the gateway with an OpenAI-style error event, then `[DONE]`.

Real simulator (its `stall_after_tokens` and `slow` faults), real gateway, real Redis;
the simulator runs 20× faster than real time, and the deadlines are small, so each
test takes a second or two.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import redis
from django.conf import settings as django_settings

from backends import health
from tests.gateway import conftest as gateway

# The gateway suite's fixtures: a live simulator and gateway, a private usage stream.
world_spec = gateway.world_spec
simulator_server = gateway.simulator_server
gateway_url = gateway.gateway_url
mesh = gateway.mesh
usage = gateway.usage
api_key = gateway.api_key

EIGHT_B = "llama-3.1-8b-instruct"
WESTEUROPE_8B = "westeurope-tesseract-nvidia-h100--llama-3.1-8b-instruct"


def ask(max_tokens: int, **tesseract: Any) -> dict[str, Any]:
    return {
        "model": EIGHT_B,
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "max_tokens": max_tokens,
        # one candidate: nothing to fail over to, the stream is this backend's
        "tesseract": {"regions": ["westeurope"], **tesseract},
    }


def read_stream(mesh, key: str, body: dict[str, Any]) -> tuple[list[str], float]:
    """The stream's `data:` payloads and how long it took (fails after 20 s)."""
    started = time.monotonic()
    with httpx.stream(
        "POST",
        f"{mesh.gateway_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={**body, "stream": True},
        timeout=httpx.Timeout(20),
    ) as response:
        assert response.status_code == 200, response.read()
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    return events, time.monotonic() - started


def contents(events: list[str]) -> list[str]:
    out = []
    for e in events:
        if e.startswith("{") and '"choices"' in e:
            for choice in json.loads(e)["choices"]:
                text = choice.get("delta", {}).get("content")
                if text:
                    out.append(text)
    return out


def passive_failures(slug: str) -> int:
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    return int(client.hget(health.COUNTERS + slug, "fails") or 0)


def test_a_stream_that_stalls_after_its_first_tokens_is_ended_by_the_stall_timeout(
    mesh, api_key, usage, settings
):
    settings.TESSERACT_STALL_TIMEOUT_S = 0.5
    mesh.fault(WESTEUROPE_8B, stall_after_tokens=3)
    backend = mesh.simulator.deployments[WESTEUROPE_8B]

    events, took = read_stream(mesh, api_key, ask(50))

    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "backend_timeout"
    assert error["type"] == "server_error"
    assert "0.5 s" in error["message"]
    assert len(contents(events)) == 3  # what the backend did send was passed on
    assert took < 5  # the stall timeout, not the 120 s default deadline
    mesh.wait_until_idle(backend)  # the upstream call was closed: the slot is free
    [event] = usage()
    assert event.status == "error"
    assert event.output_tokens == 3  # what was served is billed
    assert passive_failures(WESTEUROPE_8B) == 1  # and the gateway told the health map


def test_a_stream_still_running_at_its_deadline_is_ended_there(mesh, api_key, usage):
    # 300 tokens are predicted to take ~1.05 s: feasible within 1.5 s. Slowed 100×
    # (at the mesh's 1/20 time scale), the backend would need ~5 s in real time.
    mesh.fault(WESTEUROPE_8B, fault="slow", slow_factor=100)

    events, took = read_stream(mesh, api_key, ask(300, max_latency_ms=1500))

    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "backend_timeout"
    assert "1500 ms" in error["message"]
    served = len(contents(events))
    assert 0 < served < 300  # tokens flowed until the deadline, and no longer
    assert 1.4 < took < 4.0
    mesh.wait_until_idle(mesh.simulator.deployments[WESTEUROPE_8B])
    [event] = usage()
    assert event.status == "error"
    assert event.output_tokens == served
    assert event.sla_met is False


def test_a_stream_that_keeps_flowing_is_not_cut_by_the_stall_timeout(
    mesh, api_key, usage, settings
):
    settings.TESSERACT_STALL_TIMEOUT_S = 0.5
    # ~0.1 s between tokens (slowed): slow, but never silent for the stall timeout
    mesh.fault(WESTEUROPE_8B, fault="slow", slow_factor=600)

    events, _ = read_stream(mesh, api_key, ask(12))

    assert events[-1] == "[DONE]"
    assert len(contents(events)) == 12
    assert json.loads(events[-2])["tesseract"]["route"]["backend"] == WESTEUROPE_8B
    [event] = usage()
    assert event.status == "ok"
