"""What a gateway process keeps in memory: the world, and its own in-flight counts.

The world (the engine's snapshot plus how to reach each backend) is read from the
catalog in a worker thread, never on a request: at first use, then in the background
when it is older than `TESSERACT_WORLD_REFRESH_S`, or at once when the control plane
publishes a change on the `tesseract:world` channel (an operator drained a cluster,
a model was loaded somewhere). A request always routes on the last complete world.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable

from django.conf import settings

from backends.signals import WORLD_CHANNEL
from routing.engine import Snapshot
from routing.gateway.db import off_loop
from routing.snapshot import World, load_world

logger = logging.getLogger(__name__)


class WorldHolder:
    def __init__(
        self, loader: Callable[[], World] = load_world, *, refresh_s: float | None = None
    ) -> None:
        self._loader = loader
        self._refresh_s = refresh_s if refresh_s is not None else settings.TESSERACT_WORLD_REFRESH_S
        self._world: World | None = None
        self._loaded_at = 0.0
        self._stale = False
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None

    async def get(self) -> World:
        world = self._world
        if world is None:
            async with self._lock:
                if self._world is None:
                    await self._load()
            assert self._world is not None
            return self._world
        if (self._stale or time.monotonic() - self._loaded_at > self._refresh_s) and (
            self._refreshing is None or self._refreshing.done()
        ):
            self._refreshing = asyncio.create_task(self._refresh())
        return world

    async def _load(self) -> None:
        self._stale = False
        world = await off_loop(self._loader)()
        self._world, self._loaded_at = world, time.monotonic()

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
        """The snapshot with this process's in-flight counts for `model`'s backends."""
        ids = self._by_model.get(model)
        if not ids:
            return snapshot
        return snapshot.with_load({i: (self._counts[i], 0) for i in ids}, models=(model,))


async def listen_for_world_changes(holder: WorldHolder, redis_url: str) -> None:
    """Invalidate the world whenever the control plane announces a change."""
    import redis.asyncio as aioredis

    backoff = 0.1
    while True:
        try:
            client = aioredis.Redis.from_url(redis_url)
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(WORLD_CHANNEL)
                holder.invalidate()  # changes may have been missed while away
                backoff = 0.1
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        await holder.reload_soon()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("world listener lost Redis; retrying in %.1fs", backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
