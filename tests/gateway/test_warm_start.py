"""A gateway process gets ready before its first request (ASGI lifespan, `GatewayApp.warm`)."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from django.conf import settings

from backends.snapshot import World
from routing.gateway.app import GatewayApp, lifespan
from routing.gateway.core import Gateway
from routing.gateway.live import WorldHolder, connect_redis
from routing.gateway.upstream import Upstream
from tests.engine.mini_world import make_backend, make_snapshot


def _app(loader) -> GatewayApp:
    redis = connect_redis(settings.REDIS_URL)
    holder = WorldHolder(loader, refresh_s=3600)
    return GatewayApp(gateway=Gateway(holder=holder, upstream=Upstream(), redis=redis))


async def _start_and_stop(app: GatewayApp, during_startup: list[Any]) -> list[str]:
    """Drive the lifespan protocol as a server does; note the world when startup ends."""
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    sent: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            holder = app.gateway.holder
            during_startup.append(holder.current)
            if holder.current is not None:
                await asyncio.wait_for(holder.listening.wait(), timeout=30)
                await holder.get()  # as the first request does, once the listener is in
                if holder._refreshing is not None:  # a refresh that would set off
                    await holder._refreshing
            await inbox.put({"type": "lifespan.shutdown"})

    await inbox.put({"type": "lifespan.startup"})
    try:
        await asyncio.wait_for(lifespan(app, inbox.get, send), timeout=60)
    finally:
        await app.aclose()
    return sent


def test_a_gateway_loads_its_world_before_the_server_takes_its_first_request_and_once():
    loads: list[int] = []
    snapshot = make_snapshot(make_backend("a"))

    def load() -> World:
        loads.append(1)
        return World(snapshot, {})

    app = _app(load)
    world: list[Any] = []
    sent = asyncio.run(_start_and_stop(app, world))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert loads == [1]  # not again at the first request: it heard the announcements first
    assert world[0] is not None
    assert world[0].snapshot is snapshot


def test_a_gateway_whose_world_cannot_load_yet_still_starts_and_says_why(caplog):
    def load() -> World:
        raise ConnectionError("the database is away")

    app = _app(load)
    world: list[Any] = []
    with caplog.at_level(logging.WARNING, logger="routing.gateway.app"):
        sent = asyncio.run(_start_and_stop(app, world))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert world == [None]  # left to the first request, as without a warm start
    assert "starts without its world (ConnectionError: the database is away)" in caplog.text


def test_a_world_slower_than_the_warm_up_allows_does_not_hold_the_start_up_back(caplog):
    release = threading.Event()

    def load() -> World:
        release.wait(30)  # a database that takes its time
        return World(make_snapshot(make_backend("a")), {})

    app = _app(load)

    async def warm_briefly() -> Any:
        try:
            await app.warm(timeout_s=0.2)
            return app.gateway.holder.current
        finally:
            release.set()
            await app.aclose()

    with caplog.at_level(logging.WARNING, logger="routing.gateway.app"):
        assert asyncio.run(warm_briefly()) is None
    assert "starts without its world (TimeoutError" in caplog.text
