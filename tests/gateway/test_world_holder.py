"""What a gateway process applies to its own world at once (`WorldHolder.rest`)."""

from __future__ import annotations

import asyncio
import time

from backends.snapshot import OUT_COOLING, World
from routing.gateway.live import WorldHolder
from tests.engine.mini_world import make_backend, make_snapshot


def _holder() -> WorldHolder:
    snapshot = make_snapshot(make_backend("a"), make_backend("b", "frankfurt"))
    holder = WorldHolder(lambda: World(snapshot, {}), refresh_s=3600)
    asyncio.run(holder.get())
    return holder


def _out(holder: WorldHolder, slug: str) -> str:
    world = holder.current
    assert world is not None
    return world.snapshot.backend(slug).state.out


def test_a_429_seen_here_rests_the_deployment_in_this_process_before_any_announcement():
    holder = _holder()
    holder.rest("a", time.time() + 30)
    assert _out(holder, "a") == OUT_COOLING
    assert _out(holder, "b") == ""


def test_a_shorter_rest_leaves_a_longer_one_as_it_was():
    holder = _holder()
    until = time.time() + 30
    holder.rest("a", until)
    world = holder.current
    holder.rest("a", until - 20)
    assert holder.current is world  # nothing rebuilt
    assert holder.current.live.cooling["a"] == until


def test_a_rest_already_over_changes_nothing_a_request_routes_on():
    holder = _holder()
    world = holder.current
    holder.rest("a", time.time() - 1)
    assert holder.current is world
    assert _out(holder, "a") == ""


def test_a_rest_outlives_a_reload_that_read_the_live_maps_before_it_reached_redis():
    holder = _holder()
    holder.rest("a", time.time() + 30)
    asyncio.run(holder.reload_now())  # a world built from maps without the rest
    assert _out(holder, "a") == OUT_COOLING
    assert _out(holder, "b") == ""
