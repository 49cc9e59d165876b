"""Gateway processes share their in-flight counts through Redis and read everyone's
(`backends.livestate`, `routing.gateway.live.share_inflight`), on the real Redis."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import redis.asyncio
from django.conf import settings

from backends import livestate
from routing.gateway.live import InFlight, share_inflight
from tests.engine.mini_world import make_backend, make_snapshot


def run(coro_fn):
    async def scenario():
        client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        try:
            return await coro_fn(client)
        finally:
            await client.aclose()

    return asyncio.run(scenario())


def test_each_processs_counts_are_read_back_by_process_and_add_up_in_the_live_maps(live):
    async def scenario(client):
        await livestate.ainflight_publish(client, "gw-a:1", {"alpha": 2})
        await livestate.ainflight_publish(client, "gw-b:7", {"alpha": 3, "beta": 1})
        return await livestate.aread_inflight(client), await livestate.aread(client)

    per_process, maps = run(scenario)
    assert per_process == {"gw-a:1": {"alpha": 2}, "gw-b:7": {"alpha": 3, "beta": 1}}
    assert maps.inflight == {"alpha": 5, "beta": 1}
    assert maps.gateways == 2
    assert livestate.read(live).inflight == {"alpha": 5, "beta": 1}  # the console's read


def test_a_process_that_finished_everything_leaves_the_registry(live):
    async def scenario(client):
        await livestate.ainflight_publish(client, "gw-a:1", {"alpha": 2})
        await livestate.ainflight_publish(client, "gw-a:1", {})
        return await livestate.aread_inflight(client)

    assert run(scenario) == {}
    assert live.zcard(livestate.INFLIGHT_REGISTRY) == 0


def test_a_dead_processs_counts_go_with_its_expired_hash_and_it_leaves_the_registry_later(live):
    async def scenario(client):
        long_ago = time.time() - livestate.INFLIGHT_REGISTRY_KEEP_S - 1
        await livestate.ainflight_publish(client, "gw-dead:1", {"alpha": 9}, now=long_ago)
        await client.delete(livestate.inflight_key("gw-dead:1"))  # what its TTL does
        before = await livestate.aread_inflight(client)
        await livestate.ainflight_publish(client, "gw-a:1", {"alpha": 1})
        return before, await client.zrange(livestate.INFLIGHT_REGISTRY, 0, -1)

    before, registry = run(scenario)
    assert before == {}
    assert registry == [b"gw-a:1"]  # the next publication swept the dead one out
    assert live.ttl(livestate.inflight_key("gw-a:1")) > 0


def test_two_gateway_processes_each_count_the_others_sends_through_redis(live):
    snap = make_snapshot(make_backend("a", slots=100))
    holder = SimpleNamespace(current=SimpleNamespace(snapshot=snap, live=None))

    def seen(inflight: InFlight) -> float:
        idx = inflight.apply(snap, "m-70b").index("m-70b")
        return float(idx.in_flight[idx.pos["a"]])

    async def scenario(client):
        mine, theirs = InFlight(), InFlight()
        tasks = [
            asyncio.ensure_future(share_inflight(mine, client, "gw-mine:1", holder)),
            asyncio.ensure_future(share_inflight(theirs, client, "gw-theirs:1", holder)),
        ]
        try:
            for _ in range(7):
                theirs.start("a", "m-70b")
            mine.start("a", "m-70b")
            deadline = time.monotonic() + 30  # generous: a busy machine delays the loop
            while (seen(mine), seen(theirs)) != (8, 8) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return seen(mine), seen(theirs)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    assert run(scenario) == (8, 8)
