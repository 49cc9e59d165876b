"""A live gateway in front of a live simulator, on loopback, for the whole session.

Each test gets a fresh simulator (no faults, empty queues), the demo world in the
database pointing at it, and its own usage stream in Redis.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from django.conf import settings

from accounts import services
from backends.demo import demo_world_load
from backends.simulator import Simulator, create_app
from backends.world import WorldSpec, demo_world
from billing import metering
from billing.models import UsageEvent
from billing.services import usage_events_drain
from tests import tiers
from tests.servers import Swappable, serve

#: Simulated time runs 20× faster than real time: a 70B answer takes milliseconds.
TIME_SCALE = 0.05


@pytest.fixture(scope="session")
def world_spec() -> WorldSpec:
    return demo_world()


@pytest.fixture(scope="session")
def simulator_server() -> Iterator[tuple[Swappable, str]]:
    swappable = Swappable()
    with serve(swappable) as url:
        yield swappable, url


#: The one gateway server of the session (see `gateway_url`).
_gateway: dict[str, Any] = {}


@pytest.fixture(scope="session")
def gateway_url() -> Iterator[str]:
    """The live gateway. One per process, however many modules import this fixture
    (tests/faults reuse it): the app's shared state (HTTP session, Redis clients)
    belongs to the event loop of the server that first ran it, so a second server
    would drive it from another thread's loop. The last user stops it."""
    from django.conf import settings

    from tesseract_web.asgi import application

    # The server's threads must not keep connections open past a test, or the test
    # database cannot be dropped at the end of the session.
    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0
    if not _gateway:
        stack = contextlib.ExitStack()
        _gateway.update(url=stack.enter_context(serve(application)), stack=stack, users=0)
    _gateway["users"] += 1
    try:
        yield _gateway["url"]
    finally:
        _gateway["users"] -= 1
        if not _gateway["users"]:
            _gateway.pop("stack").close()
            _gateway.clear()


@dataclass
class Mesh:
    simulator: Simulator
    simulator_url: str
    gateway_url: str
    spec: WorldSpec

    def fault(self, slug: str, **state: Any) -> None:
        response = httpx.post(f"{self.simulator_url}/d/{slug}/control", json=state)
        response.raise_for_status()

    def stream(self, key: str, body: dict[str, Any]) -> Any:
        """A streamed chat completion, as a context manager yielding the response."""
        return httpx.stream(
            "POST",
            f"{self.gateway_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={**body, "stream": True},
        )

    def slowed(self, model: str, region: str) -> Any:
        """The simulated deployment of `model` in `region`, switched to the slow fault."""
        slug = f"{region}-tesseract-nvidia-h100--{model}"
        self.fault(slug, fault="slow")
        return self.simulator.deployments[slug]

    def wait_until_idle(self, backend: Any, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while backend.slots.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert backend.slots.running == 0, "the backend call was not cancelled"

    def deployments(self, model: str, *, eu: bool | None = None) -> list[str]:
        out = []
        for d in self.spec.deployments.values():
            region = self.spec.regions[self.spec.clusters[d.cluster].region]
            if d.model == model and (eu is None or region.eu_member == eu):
                out.append(d.slug)
        return out


def live_maps_clear() -> None:
    """Forget what earlier tests taught the control plane (health, load, affinity)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    for pattern in (
        "tesseract:live*",
        "tesseract:health:*",
        "tesseract:affinity:*",
        "tesseract:rl:*",  # rate windows and budgets: org ids can repeat between tests
        "tesseract:spend:*",
    ):
        keys = list(client.scan_iter(match=pattern))
        if keys:
            client.delete(*keys)


@pytest.fixture
def mesh(transactional_db, world_spec, simulator_server, gateway_url) -> Mesh:
    swappable, simulator_url = simulator_server
    swappable.app = create_app(world_spec, time_scale=TIME_SCALE, gateway_region="westeurope")
    live_maps_clear()
    demo_world_load(world_spec, simulator_url=simulator_url)
    from routing.gateway.app import application

    application.forget_world()
    return Mesh(swappable.app, simulator_url, gateway_url, world_spec)


@pytest.fixture
def usage(monkeypatch) -> Iterator[Any]:
    """A private usage stream; `usage()` drains it and returns the recorded events."""
    name = f"test:usage:{uuid.uuid4().hex}"
    monkeypatch.setattr(metering, "STREAM", name)
    client = redis.Redis.from_url(settings.REDIS_URL)

    def drain() -> list[UsageEvent]:
        usage_events_drain(client=client, claim_idle_ms=0)
        return list(UsageEvent.objects.order_by("created_at"))

    yield drain
    client.delete(name)


@pytest.fixture
def api_key(mesh, alice) -> str:
    org = services.organization_create(name="Acme", owner=alice)
    tiers.unlimited(org)  # many requests per test: this suite tests routing, not limits
    return services.api_key_create(org=org, name="tests").plaintext
