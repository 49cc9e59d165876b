"""Deadline-ordered backend queues: to a server with priority scheduling (vLLM's
`--scheduling-policy priority`; the simulator always has it) the gateway sends each
request's deadline, on the wall clock in ms, as its `priority`; to any other server
nothing of the kind."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from backends.models import Deployment
from billing.models import BillingAccount
from routing.engine import LATE_QUEUE_FACTOR
from routing.gateway.app import read_body

EIGHT_B = "llama-3.1-8b-instruct"
HERE = {"regions": ["westeurope"], "client_region": "westeurope"}


class Recorder:
    """The simulator, keeping the body of every generation request it is sent."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/completions"):
            return await self.app(scope, receive, send)
        raw = await read_body(receive)
        self.bodies.append(json.loads(raw))
        replayed = False

        async def again() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, again, send)


@pytest.fixture
def recorder(mesh, simulator_server) -> Recorder:
    swappable, _ = simulator_server
    swappable.app = recorder = Recorder(swappable.app)
    return recorder


def ask(mesh, key: str, **fields: Any) -> httpx.Response:
    body = {
        "model": EIGHT_B,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 4,
        "tesseract": HERE,
        **fields,
    }
    response = httpx.post(
        f"{mesh.gateway_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json=body,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response


def wall_ms() -> float:
    return time.time() * 1000.0


def test_a_priority_scheduling_backend_gets_the_requests_deadline_as_its_priority(
    mesh, api_key, recorder
):
    before = wall_ms()
    ask(mesh, api_key, tesseract={**HERE, "max_ttft_ms": 4000})
    after = wall_ms()
    (body,) = recorder.bodies
    assert before + 4000 - 1 <= body["priority"] <= after + 4000


def test_an_end_to_end_deadline_orders_the_queue_when_no_first_token_deadline_is_set(
    mesh, api_key, recorder
):
    before = wall_ms()
    ask(mesh, api_key, tesseract={**HERE, "max_latency_ms": 9000})
    after = wall_ms()
    assert before + 9000 - 1 <= recorder.bodies[0]["priority"] <= after + 9000


def test_a_request_without_a_deadline_queues_by_its_tiers_default_ttft(mesh, api_key, recorder):
    tier = BillingAccount.objects.get(org__api_keys__isnull=False).tier
    before = wall_ms()
    ask(mesh, api_key)
    after = wall_ms()
    default = tier.default_ttft_ms
    assert before + default - 1 <= recorder.bodies[0]["priority"] <= after + default


def test_a_streamed_request_carries_its_deadline_too(mesh, api_key, recorder):
    before = wall_ms()
    with mesh.stream(api_key, {
        "model": EIGHT_B, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4,
        "tesseract": {**HERE, "max_ttft_ms": 3000},
    }) as response:  # fmt: skip
        assert response.status_code == 200
        response.read()
    after = wall_ms()
    assert before + 3000 - 1 <= recorder.bodies[0]["priority"] <= after + 3000


def test_a_deadline_nothing_can_meet_does_not_jump_the_queue(mesh, api_key, recorder):
    # Served late, as the client allowed: it queues behind its best predicted first
    # token (LATE_QUEUE_FACTOR times it), not at the millisecond it asked for (which
    # would put it ahead of every tenant), nor ahead of requests still in time.
    before = wall_ms()
    response = ask(
        mesh, api_key, tesseract={**HERE, "max_ttft_ms": 1, "allow_relaxed_deadline": True}
    )
    after = wall_ms()
    predicted = response.json()["tesseract"]["predicted"]["ttft_ms"]
    assert predicted > 1
    late = predicted * LATE_QUEUE_FACTOR
    assert before + late - 2 <= recorder.bodies[0]["priority"] <= after + late + 1


def test_a_clients_own_priority_never_reaches_a_deadline_ordered_queue(mesh, api_key, recorder):
    before = wall_ms()
    ask(mesh, api_key, priority=-(10**15), tesseract={**HERE, "max_ttft_ms": 4000})
    assert recorder.bodies[0]["priority"] >= before + 4000 - 1


def test_a_backend_without_priority_scheduling_gets_no_priority_not_even_the_clients(
    mesh, api_key, recorder
):
    Deployment.objects.filter(model__slug=EIGHT_B).update(priority_scheduling=False)
    from routing.gateway.app import application

    application.forget_world()
    ask(mesh, api_key, priority=-(10**15), tesseract={**HERE, "max_ttft_ms": 4000})
    assert "priority" not in recorder.bodies[0]
