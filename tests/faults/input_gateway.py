"""A gateway of its own for the hostile-input fault tests: a live simulator, and a fresh
`GatewayApp` with its WebSocket consumer served by uvicorn on loopback.

Not the session-wide server of `tests/gateway`: that one serves the process-wide
`application`, whose Redis and HTTP clients belong to its server's event loop. This
module's tests import the fixtures below; each module gets its own servers.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import path

from accounts import services
from backends.demo import demo_world_load
from backends.simulator import create_app
from backends.world import WorldSpec, demo_world
from billing import metering
from billing.models import UsageEvent
from billing.services import usage_events_drain
from routing.gateway.app import GatewayApp
from routing.gateway.ws import StreamConsumer
from tests.gateway.conftest import live_maps_clear
from tests.servers import Swappable, serve

#: The fixtures, for `from tests.faults.input_gateway import *` in a test module.
__all__ = ["key", "served", "simulator", "site", "usage"]

EIGHT_B = "llama-3.1-8b-instruct"
CHAT = {"model": EIGHT_B, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@dataclass
class Site:
    """The gateway under test: its app (to inspect or replace parts) and its URLs."""

    app: GatewayApp
    url: str
    simulator_url: str
    spec: WorldSpec

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/stream"

    def post(self, key: str | None, *, content: bytes, headers: dict[str, str] | None = None,
             path: str = "/v1/chat/completions") -> httpx.Response:  # fmt: skip
        auth = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return httpx.post(
            self.url + path, content=content, headers={**auth, **(headers or {})}, timeout=20
        )


def build(app: GatewayApp) -> Any:
    return ProtocolTypeRouter(
        {
            "http": app,
            "websocket": URLRouter([path("v1/stream", StreamConsumer.as_asgi(http=app))]),
        }
    )


@pytest.fixture(scope="module")
def simulator() -> Iterator[tuple[Swappable, str]]:
    swappable = Swappable()
    with serve(swappable) as url:
        yield swappable, url


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[GatewayApp, str]]:
    from django.conf import settings

    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0  # no connection outlives a test
    app = GatewayApp()
    router = build(app)
    loops: list[asyncio.AbstractEventLoop] = []

    async def served_app(scope: Any, receive: Any, send: Any) -> None:
        if not loops:
            loops.append(asyncio.get_running_loop())
        await router(scope, receive, send)

    with serve(served_app) as url:
        yield app, url
        if loops:  # close the app's clients in its own loop, before the server stops
            asyncio.run_coroutine_threadsafe(app.aclose(), loops[0]).result(timeout=10)


@pytest.fixture
def site(transactional_db, simulator, served) -> Site:
    swappable, simulator_url = simulator
    spec = demo_world()
    swappable.app = create_app(spec, time_scale=0, gateway_region="westeurope")
    live_maps_clear()
    demo_world_load(spec, simulator_url=simulator_url)
    app, url = served
    app.forget_world()
    return Site(app, url, simulator_url, spec)


@pytest.fixture
def key(site, alice) -> str:
    org = services.organization_create(name="Acme", owner=alice)
    return services.api_key_create(org=org, name="faults").plaintext


@pytest.fixture
def usage(monkeypatch) -> Iterator[Callable[..., list[UsageEvent]]]:
    """A private usage stream; `usage(expect=n)` drains it until n events are recorded
    (records are published in the background, a moment after the answer) and returns
    them. A test that makes a request that is served must wait for its record, or it
    would land in the next test's stream."""
    from django.conf import settings

    name = f"test:usage:{uuid.uuid4().hex}"
    monkeypatch.setattr(metering, "STREAM", name)
    client = redis.Redis.from_url(settings.REDIS_URL)

    def drain(expect: int = 0, timeout_s: float = 30) -> list[UsageEvent]:
        deadline = time.monotonic() + timeout_s
        while True:
            usage_events_drain(client=client, claim_idle_ms=0)
            events = list(UsageEvent.objects.order_by("created_at"))
            if len(events) >= expect or time.monotonic() > deadline:
                return events
            time.sleep(0.05)

    yield drain
    client.delete(name)


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def ws_answer(ws: Any, frame: str | bytes, timeout_s: float = 10) -> dict:
    """Send one frame and return the JSON of the first frame that answers it."""
    ws.send(frame)
    return json.loads(ws.recv(timeout=timeout_s))
