"""Holding at the gateway (`Plan.hold_ms`): a request with a loose deadline whose
backend is nearly full waits at the gateway and is routed again, rather than take a
slot a tight request arriving next would need; a tight one goes at once; a client that
hangs up while held leaves nothing behind."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from django.conf import settings

from backends import livestate
from routing.engine import HOLD_STEP_MS
from tests.gateway.test_observability import scrape, value
from tests.waiting import eventually

EIGHT_B = "llama-3.1-8b-instruct"
HERE = {"regions": ["westeurope"], "client_region": "westeurope"}
HELD = "tesseract_gateway_requests_held"
HOLDS = "tesseract_gateway_hold_seconds_count"


def body(**tesseract: Any) -> dict[str, Any]:
    return {
        "model": EIGHT_B,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 4,
        "tesseract": {**HERE, **tesseract},
    }


def plan(mesh, key: str, **tesseract: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{mesh.gateway_url}/v1/route",
        headers={"Authorization": f"Bearer {key}"},
        json=body(**tesseract),
    )
    assert response.status_code == 200, response.text
    return response.json()


class Load:
    """Sets what the live maps (which every gateway routes on) say of the 8B
    backends in westeurope, the only ones these requests may use."""

    def __init__(self, mesh) -> None:
        self.mesh = mesh
        self.client = redis.Redis.from_url(settings.REDIS_URL)
        self.slugs = [s for s in mesh.deployments(EIGHT_B) if s.startswith("westeurope-")]
        assert self.slugs

    def _set(self, free: int | None) -> None:
        for slug in self.slugs:
            slots = self.mesh.spec.deployments[slug].concurrency_slots
            running = 0 if free is None else slots - free
            livestate.deployment_update(self.client, slug, running=running, waiting=0)

    def nearly_full(self) -> None:
        self._set(free=1)

    def idle(self) -> None:
        self._set(free=None)


@pytest.fixture
def load(mesh) -> Load:
    return Load(mesh)


def test_a_loose_request_waits_while_its_backend_is_nearly_full_then_goes(mesh, api_key, load):
    load.nearly_full()
    eventually(lambda: plan(mesh, api_key, max_ttft_ms=10_000)["hold_ms"] > 0)
    holds = value(scrape(mesh), HOLDS, model=EIGHT_B)
    answer: dict[str, httpx.Response] = {}
    sender = threading.Thread(
        target=lambda: answer.update(
            r=httpx.post(
                f"{mesh.gateway_url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {api_key}"},
                json=body(max_ttft_ms=10_000),
                timeout=60,
            )
        )
    )
    sender.start()
    eventually(lambda: value(scrape(mesh), HELD) == 1)  # held, not sent: nothing answered
    assert "r" not in answer
    load.idle()  # slots free again: the next plan sends it
    sender.join(timeout=60)
    response = answer["r"]
    assert response.status_code == 200, response.text
    info = response.json()["tesseract"]
    assert info["sla_met"] is True
    assert info["timing_ms"]["queue"] >= HOLD_STEP_MS  # held counts as waiting
    after = scrape(mesh)
    assert value(after, HELD) == 0
    assert value(after, HOLDS, model=EIGHT_B) == holds + 1


def test_a_tight_request_goes_at_once_to_the_nearly_full_backend(mesh, api_key, load):
    load.nearly_full()
    eventually(lambda: plan(mesh, api_key, max_ttft_ms=10_000)["hold_ms"] > 0)
    ttft = plan(mesh, api_key)["primary"]["predicted"]["ttft_ms"]
    tight = 2 * ttft + 25  # under HOLD_LOOSE (4) times it: no time to spare
    assert plan(mesh, api_key, max_ttft_ms=tight)["hold_ms"] == 0
    holds = value(scrape(mesh), HOLDS, model=EIGHT_B)
    response = httpx.post(
        f"{mesh.gateway_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {api_key}"},
        json=body(max_ttft_ms=tight),
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert value(scrape(mesh), HOLDS, model=EIGHT_B) == holds


def test_a_client_that_hangs_up_while_held_is_forgotten_and_never_billed(
    mesh, api_key, load, usage
):
    load.nearly_full()
    eventually(lambda: plan(mesh, api_key, max_ttft_ms=10_000)["hold_ms"] > 0)
    url = urlsplit(mesh.gateway_url)
    payload = json.dumps(body(max_ttft_ms=10_000)).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port)) as conn:
        conn.sendall(head + payload)
        eventually(lambda: value(scrape(mesh), HELD) == 1)
    eventually(lambda: value(scrape(mesh), HELD) == 0)  # the hold was cancelled
    load.idle()
    assert usage() == []  # nothing was sent to a backend, nothing is billed
