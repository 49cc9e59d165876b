"""The gateway app belongs to the event loop it serves from, and its listeners stay up."""

import asyncio
import logging

import pytest

from routing.gateway import app as app_module
from routing.gateway.app import GatewayApp

pytestmark = pytest.mark.redis


async def _touch(application: GatewayApp):
    gateway = application.gateway
    await asyncio.sleep(0)
    return gateway, application._listener


def test_an_app_served_from_a_new_event_loop_makes_its_clients_and_listeners_again():
    application = GatewayApp()
    first, first_listener = asyncio.run(_touch(application))
    second, second_listener = asyncio.run(_touch(application))
    assert second is not first  # the first one's Redis client belongs to a closed loop
    assert second_listener is not first_listener
    assert second_listener.get_loop() is not first_listener.get_loop()


def test_on_one_loop_the_app_keeps_its_gateway():
    application = GatewayApp()

    async def twice():
        return (await _touch(application)), (await _touch(application))

    (a, listener_a), (b, listener_b) = asyncio.run(twice())
    assert a is b
    assert listener_a is listener_b


def test_listeners_that_stopped_on_an_error_are_started_again_and_logged(monkeypatch, caplog):
    calls = []

    async def listener_that_fails_once(holder, url):
        calls.append(url)
        if len(calls) == 1:
            raise ConnectionError("pubsub went away")
        await asyncio.Event().wait()

    async def quiet(*args):
        await asyncio.Event().wait()

    monkeypatch.setattr(app_module, "listen_for_world_changes", listener_that_fails_once)
    monkeypatch.setattr(app_module, "share_inflight", quiet)
    application = GatewayApp()

    async def scenario():
        assert application.gateway is not None
        for _ in range(100):
            await asyncio.sleep(0)
            if application._listener.done():
                break
        assert application.gateway is not None
        await asyncio.sleep(0)
        return application._listener.done()

    with caplog.at_level(logging.WARNING, logger="routing.gateway.app"):
        assert asyncio.run(scenario()) is False
    assert len(calls) == 2
    assert "pubsub went away" in caplog.text
    assert "starting them again" in caplog.text
