"""The console's live view: a WebSocket that pushes health changes and counters.

`/console/live` (the web process, `tesseract_web.asgi:web`) follows the same Redis
announcements the gateways follow (`backends.livestate.CHANNEL` for health and resource
changes, `backends.signals.WORLD_CHANNEL` for catalog changes such as a drain) and sends
the browser what changed, as JSON:

* `{"type": "deployments", "rows": [...], "counters": {...}, "regions": {...}}` — the
  rows of the deployments named by the announcement (every row after a catalog change
  or at the start), the console's counters and each region's colour on the map;
* `{"type": "health", "slug", "health", "at"}` — one per health change, for the timeline;
* `{"type": "counters", "counters": {...}}` — every `TICK_S`, for in-flight counts that
  change without an announcement.

Only operators may connect (`dashboards.console.is_operator`, with the 2FA
verification of the session); anyone else is refused at the handshake (HTTP 403,
close code 4403 in the ASGI exchange) before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.models import Device
from redis.exceptions import RedisClusterException, RedisError

from accounts import redis_client
from backends import livestate
from backends.signals import WORLD_CHANNEL
from dashboards import console_data
from dashboards.console import is_operator

TICK_S = 2.0
FORBIDDEN = 4403
#: "try again later" (RFC 6455 §7.4.1, 1013)
RETRY = 1013

logger = logging.getLogger(__name__)


def _verified_operator(scope: dict[str, Any]) -> bool:
    """The socket's user is an operator, with the session's second factor checked as
    django-otp's middleware checks it for a page."""
    user = scope.get("user")
    session = scope.get("session")
    if user is None or not getattr(user, "is_authenticated", False):
        return False
    device = None
    persistent_id = session.get(DEVICE_ID_SESSION_KEY) if session is not None else None
    if persistent_id:
        candidate = Device.from_persistent_id(persistent_id)
        if candidate is not None and candidate.user_id == user.pk:
            device = candidate
    user.otp_device = device
    user.is_verified = lambda: device is not None
    return is_operator(user)


class ConsoleConsumer(AsyncJsonWebsocketConsumer):
    statics: list[console_data.Static]
    follower: asyncio.Task[None] | None = None
    redis: aioredis.Redis | None = None

    async def connect(self) -> None:
        if not await database_sync_to_async(_verified_operator)(self.scope):
            await self.close(code=FORBIDDEN)
            return
        self.statics = await database_sync_to_async(console_data.deployments_static)()
        self.redis = redis_client.connect_async(settings.REDIS_URL)
        pubsub = await redis_client.pubsub_async(self.redis)
        await pubsub.subscribe(livestate.CHANNEL, WORLD_CHANNEL)
        await self.accept()
        await self._send_rows(None)
        self.follower = asyncio.create_task(self._follow(pubsub))

    async def disconnect(self, code: int) -> None:
        if self.follower is not None:
            self.follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.follower
        if self.redis is not None:
            await self.redis.aclose()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The browser has nothing to say; anything it sends is ignored."""

    async def _follow(self, pubsub: Any) -> None:
        last_tick = time.monotonic()
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=TICK_S)
                if message is not None:
                    await self._announced(message)
                if time.monotonic() - last_tick >= TICK_S:
                    last_tick = time.monotonic()
                    live = await livestate.aread(self.redis)
                    await self.send_json({"type": "counters", "counters": self._counters(live)})
        except (RedisError, RedisClusterException, OSError):
            # Lost Redis (a Cluster none of whose nodes answers raises the second):
            # close, and the page's client reconnects (with a back-off).
            logger.warning("the console's live socket lost Redis; closing it", exc_info=True)
            await self.close(code=RETRY)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _announced(self, message: dict[str, Any]) -> None:
        channel = message["channel"].decode()
        if channel == WORLD_CHANNEL:
            self.statics = await database_sync_to_async(console_data.deployments_static)()
            await self._send_rows(None)
            return
        try:
            news = json.loads(message["data"])
            what, names = news["what"], [str(n) for n in news["names"]]
        except (ValueError, KeyError, TypeError):
            return
        if what not in ("health", "deployments"):
            return
        live = await self._send_rows(set(names))
        if what == "health":
            for slug in names:
                state = live.deployments.get(slug)
                if state is not None:
                    await self.send_json(
                        {"type": "health", "slug": slug, "health": state.health, "at": time.time()}
                    )

    def _rows(self, live: livestate.LiveMaps) -> list[dict[str, Any]]:
        region = settings.TESSERACT_GATEWAY_REGION
        return [console_data.deployment_row(s, live, region) for s in self.statics]

    def _counters(self, live: livestate.LiveMaps) -> dict[str, int]:
        return console_data.counters(self._rows(live))

    async def _send_rows(self, names: set[str] | None) -> livestate.LiveMaps:
        live = await livestate.aread(self.redis)
        rows = self._rows(live)
        await self.send_json(
            {
                "type": "deployments",
                "rows": rows if names is None else [r for r in rows if r["slug"] in names],
                "counters": console_data.counters(rows),
                "regions": {
                    region: entry["css"]
                    for region, entry in console_data.region_health(rows).items()
                },
            }
        )
        return live
