"""The demo world served by one simulator for a whole test module, on loopback; the
control plane's state in the real Redis, under keys private to each test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
import redis
from django.conf import settings
from django.db import transaction

from backends import livestate, probes, resources
from backends.demo import demo_world_load
from backends.world import WorldSpec, demo_world
from tests.pubsub import next_message
from tests.servers import Swappable, serve


@pytest.fixture(scope="module")
def spec() -> WorldSpec:
    return demo_world()


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Swappable, str]]:
    swappable = Swappable()
    with serve(swappable) as url:
        yield swappable, url


@pytest.fixture(scope="module")
def catalog(django_db_setup, django_db_blocker, spec, server) -> Iterator[None]:
    """The demo world in the database, pointing at the simulator, once for the module:
    each test runs in a savepoint inside this transaction (and rolls back to it)."""
    with django_db_blocker.unblock(), transaction.atomic():
        demo_world_load(spec, simulator_url=server[1])
        yield
        transaction.set_rollback(True)


#: Every Redis key the control plane's jobs read or write, by module.
CONTROL_KEYS = (
    (
        livestate,
        ("DEPLOYMENTS", "HEALTH", "RTT", "INFLIGHT_REGISTRY", "INFLIGHT_PREFIX", "CHANNEL"),
    ),
    (probes, ("EWMA", "LOCK")),
    (resources, ("SCRAPE_LOCK", "FOLD_LOCK", "WATERMARK")),
)


@pytest.fixture
def live(monkeypatch) -> Iterator[redis.Redis]:
    """The real Redis, with the live maps and the jobs' state under keys of this test
    (deleted after it)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    prefix = f"test:{uuid.uuid4().hex}:"
    for module, names in CONTROL_KEYS:
        for name in names:
            monkeypatch.setattr(module, name, prefix + getattr(module, name))
    yield client
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


#: Published behind the jobs' announcements to know when all of them have been read.
MARK = b"test:mark"


@pytest.fixture
def announced(live) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """`announced()`: what was announced on the live maps' channel since the last call.

    Subscribed (and confirmed) before the test runs. Each call publishes a mark and
    reads up to it: Redis delivers a channel's messages in the order their PUBLISH
    ran, so every announcement made before the call is read, however late a busy
    machine delivers it, and none of a later one is.
    """
    pubsub = live.pubsub()
    pubsub.subscribe(livestate.CHANNEL)
    next_message(pubsub, "subscribe")

    def read() -> list[dict[str, Any]]:
        live.publish(livestate.CHANNEL, MARK)
        out = []
        while (data := next_message(pubsub, "message")["data"]) != MARK:
            out.append(msgspec.json.decode(data))
        return out

    yield read
    pubsub.close()
