"""What a gateway process keeps in memory: the world, and its own in-flight counts.

The world (the engine's snapshot plus how to reach each backend) is read from the
catalog in a worker thread, never on a request: at first use, then in the background
when it is older than `TESSERACT_WORLD_REFRESH_S`, or at once when the control plane
publishes a change on the `tesseract:world` channel (an operator drained a cluster,
a model was loaded somewhere). The live maps (`backends.livestate`: health, load,
observed speeds, probed RTTs) are laid over it from Redis — no query — when they are
announced on `tesseract:live`, and at the latest every `TESSERACT_LIVE_REFRESH_S`.
A request always routes on the last complete world.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from django.conf import settings

from backends import livestate
from backends.signals import WORLD_CHANNEL
from backends.snapshot import World, load_world
from routing.engine import Snapshot
from routing.gateway.db import off_loop

logger = logging.getLogger(__name__)


class WorldHolder:
    def __init__(
        self,
        loader: Callable[[], World] = load_world,
        *,
        refresh_s: float | None = None,
        redis: Any = None,
        live_refresh_s: float | None = None,
    ) -> None:
        self._loader = loader
        self._refresh_s = refresh_s if refresh_s is not None else settings.TESSERACT_WORLD_REFRESH_S
        self._redis = redis
        self._live_refresh_s = (
            live_refresh_s if live_refresh_s is not None else settings.TESSERACT_LIVE_REFRESH_S
        )
        self._world: World | None = None
        self._loaded_at = 0.0
        self._live_at = 0.0
        self._stale = False
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None
        self._live_task: asyncio.Task[None] | None = None
        self._live_again = False

    async def get(self) -> World:
        world = self._world
        if world is None:
            async with self._lock:
                if self._world is None:
                    await self._load()
            assert self._world is not None
            return self._world
        now = time.monotonic()
        if (self._stale or now - self._loaded_at > self._refresh_s) and (
            self._refreshing is None or self._refreshing.done()
        ):
            self._refreshing = asyncio.create_task(self._refresh())
        elif self._redis is not None and now - self._live_at > self._live_refresh_s:
            self.live_soon()
        return world

    async def _load(self) -> None:
        self._stale = False
        world = await off_loop(self._loader)()
        if self._redis is not None:
            try:
                world = world.with_live(await livestate.aread(self._redis))
                self._live_at = time.monotonic()
            except Exception:  # the catalog alone still routes correctly, if less well
                logger.exception("could not read the live maps; routing on the catalog")
        self._world, self._loaded_at = world, time.monotonic()

    def live_soon(self) -> None:
        """Re-read the live maps in the background, coalescing bursts into one read."""
        if self._redis is None:
            return
        if self._live_task is not None and not self._live_task.done():
            self._live_again = True  # it may have read before this change
            return
        self._live_at = time.monotonic()  # no second task from the next request
        self._live_task = asyncio.create_task(self._refresh_live())

    async def _refresh_live(self) -> None:
        while True:
            self._live_again = False
            try:
                maps = await livestate.aread(self._redis)
            except Exception:
                logger.warning("could not read the live maps; keeping the last ones")
                return
            if self._world is not None:
                self._world = self._world.with_live(maps)
                self._live_at = time.monotonic()
            if not self._live_again:
                return

    async def _refresh(self) -> None:
        try:
            await self._load()
        except Exception:  # keep serving the last good world
            logger.exception("world refresh failed; keeping version %s", self.version)
            self._loaded_at = time.monotonic()

    async def reload_now(self) -> World:
        async with self._lock:
            await self._load()
        assert self._world is not None
        return self._world

    def invalidate(self) -> None:
        """Refresh in the background on the next request."""
        self._stale = True

    async def reload_soon(self) -> None:
        """Reload now, coalescing a burst of announcements into one read of the catalog."""
        if self._refreshing is not None and not self._refreshing.done():
            self._stale = True  # the running refresh may predate the change
            return
        self._refreshing = asyncio.create_task(self._refresh())

    def forget(self) -> None:
        """Drop the world: the next request loads it before routing (tests, start-up)."""
        self._world = None

    @property
    def version(self) -> int | str | None:
        return None if self._world is None else self._world.version


class InFlight:
    """Requests this process has sent to each backend and not yet finished."""

    def __init__(self) -> None:
        self._counts: defaultdict[str, int] = defaultdict(int)
        self._by_model: defaultdict[str, set[str]] = defaultdict(set)

    def start(self, backend_id: str, model: str) -> None:
        self._counts[backend_id] += 1
        self._by_model[model].add(backend_id)

    def finish(self, backend_id: str) -> None:
        self._counts[backend_id] -= 1

    def apply(self, snapshot: Snapshot, model: str) -> Snapshot:
        """The snapshot with this process's in-flight counts for `model`'s backends.

        The snapshot's own count (the backend's, or all gateways' from the live maps)
        already includes ours as of its last refresh; ours is fresher. Take the larger.
        """
        ids = self._by_model.get(model)
        if not ids:
            return snapshot
        load = {}
        for i in ids:
            state = snapshot.backend(i).state
            load[i] = (max(self._counts[i], state.in_flight), state.queued)
        return snapshot.with_load(load, models=(model,))

    def counts(self) -> dict[str, int]:
        return {slug: n for slug, n in self._counts.items() if n > 0}


#: How often a gateway process shares its in-flight counts through Redis.
INFLIGHT_PUBLISH_S = 0.25


async def share_inflight(inflight: InFlight, redis: Any, process: str) -> None:
    """Keep this process's in-flight counts in Redis, for every other gateway to see."""
    last: dict[str, int] | None = None
    last_at = 0.0
    while True:
        await asyncio.sleep(INFLIGHT_PUBLISH_S)
        counts = inflight.counts()
        now = time.monotonic()
        if counts == last and now - last_at < livestate.INFLIGHT_TTL_S / 3:
            continue
        try:
            await livestate.ainflight_publish(redis, process, counts)
            last, last_at = counts, now
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("could not share in-flight counts; retrying")


async def listen_for_world_changes(holder: WorldHolder, redis_url: str) -> None:
    """Reload the catalog, or re-read the live maps, whenever the control plane says so."""
    import redis.asyncio as aioredis

    world_channel, live_channel = WORLD_CHANNEL.encode(), livestate.CHANNEL.encode()
    backoff = 0.1
    while True:
        try:
            client = aioredis.Redis.from_url(redis_url)
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(world_channel, live_channel)
                holder.invalidate()  # changes may have been missed while away
                backoff = 0.1
                async for message in pubsub.listen():
                    if message["type"] != "message":
                        continue
                    if message["channel"] == live_channel:
                        holder.live_soon()
                    else:
                        await holder.reload_soon()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("world listener lost Redis; retrying in %.1fs", backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
