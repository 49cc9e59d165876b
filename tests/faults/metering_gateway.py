"""A gateway of its own for the metering fault tests: a live simulator and a fresh
`GatewayApp` (HTTP and the WebSocket consumer) served by uvicorn on loopback.

Not the session-wide server of `tests/gateway`: that one serves the process-wide
`application`, whose Redis and HTTP clients belong to its server's event loop. Here
each `Site` is its own app on its own server, optionally on a Redis of its own (the
outage tests stop and restart one). The WebSocket consumer reaches the HTTP app
through `routing.gateway.ws.http_gateway`, which the site points at its app while it
is served. Test modules import the fixtures they use from here.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from channels.routing import ProtocolTypeRouter, URLRouter
from django.conf import settings
from django.urls import path

from accounts import services
from accounts.models import User
from backends.demo import demo_world_load
from backends.simulator import Simulator, create_app
from backends.world import WorldSpec, demo_world
from billing import metering
from billing.models import UsageEvent
from billing.services import usage_events_drain
from routing.gateway import ws
from routing.gateway.app import GatewayApp
from routing.gateway.core import Gateway
from routing.gateway.live import WorldHolder, connect_redis
from routing.gateway.upstream import Upstream
from tests import tiers
from tests.conftest import PASSWORD
from tests.gateway.conftest import live_maps_clear
from tests.servers import Swappable, serve

EIGHT_B = "llama-3.1-8b-instruct"


@dataclass
class Site:
    """The gateway under test, the simulator behind it, and where its usage goes."""

    app: GatewayApp
    url: str
    simulator: Simulator
    simulator_url: str
    spec: WorldSpec
    redis_url: str

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/stream"

    def drain(self) -> list[UsageEvent]:
        """Move the usage stream into the database; every event recorded so far."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            while usage_events_drain(client=client, claim_idle_ms=0):
                pass
        finally:
            client.close()
        return list(UsageEvent.objects.order_by("created_at"))


def gateway_app(redis_url: str | None = None, spool_dir: Path | None = None) -> GatewayApp:
    """A fresh gateway app; on `redis_url`'s Redis when given (the usage stream's too),
    spooling usage to `spool_dir` when Redis cannot take it."""
    if redis_url is None:
        return GatewayApp()
    client = connect_redis(redis_url)
    gateway = Gateway(holder=WorldHolder(redis=client), upstream=Upstream(), redis=client)
    if spool_dir is not None:
        gateway.usage.spool = metering.Spool(spool_dir)
    return GatewayApp(gateway=gateway)


@contextlib.contextmanager
def serve_gateway(app: GatewayApp) -> Iterator[str]:
    """Serve `app` over HTTP and `/v1/stream`, the socket consumer pointed at it."""
    router = ProtocolTypeRouter(
        {"http": app, "websocket": URLRouter([path("v1/stream", ws.StreamConsumer.as_asgi())])}
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ws, "http_gateway", app)
        # The server's threads must not keep connections open past a test, or the test
        # database cannot be dropped at the end of the session.
        patch.setitem(settings.DATABASES["default"], "CONN_MAX_AGE", 0)
        with serve(router) as url:
            yield url
    # The app's background listener ended with its server's loop: read its outcome, or
    # its garbage collection logs a traceback (which, on Python 3.11, can race the
    # main thread's compiling and crash pytest's exit).
    listener = app._listener
    if listener is not None and listener.done() and not listener.cancelled():
        listener.exception()


@pytest.fixture(scope="module")
def simulator_server() -> Iterator[tuple[Swappable, str]]:
    swappable = Swappable()
    with serve(swappable) as url:
        yield swappable, url


@pytest.fixture
def usage_stream(monkeypatch) -> Iterator[str]:
    """A private usage stream name for the test."""
    name = f"test:usage:{uuid.uuid4().hex}"
    monkeypatch.setattr(metering, "STREAM", name)
    yield name
    with contextlib.suppress(redis.RedisError):
        redis.Redis.from_url(settings.REDIS_URL).delete(name)


def site_for(
    app: GatewayApp,
    url: str,
    simulator_server: tuple[Swappable, str],
    *,
    time_scale: float,
    redis_url: str,
) -> Site:
    """The demo world in the database, pointing at a fresh simulator."""
    swappable, simulator_url = simulator_server
    spec = demo_world()
    swappable.app = create_app(spec, time_scale=time_scale, gateway_region="westeurope")
    live_maps_clear()
    demo_world_load(spec, simulator_url=simulator_url)
    app.forget_world()
    return Site(app, url, swappable.app, simulator_url, spec, redis_url)


def api_key_for_acme() -> str:
    alice = User.objects.create_user("alice@example.com", PASSWORD, name="Alice")
    org = services.organization_create(name="Acme", owner=alice)
    tiers.unlimited(org)  # many requests per test: these test metering, not limits
    return services.api_key_create(org=org, name="faults").plaintext


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": EIGHT_B, "messages": [{"role": "user", "content": content}], **extra}
