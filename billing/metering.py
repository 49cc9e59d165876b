"""The usage stream: how a finished request becomes exactly one UsageEvent.

The gateway appends one `UsageRecord` per request to a Redis stream before it sends
the last byte of the response (`publish`). A Celery task drains the stream into
PostgreSQL (`billing.services.usage_events_drain`) through a consumer group:

* the row is keyed by `request_id` (unique), inserted with ON CONFLICT DO NOTHING,
  so a replayed message changes nothing;
* a message is acknowledged only after its row is committed, so a worker killed
  between reading and committing leaves it pending, and the next drain claims it
  (XAUTOCLAIM) once it has been idle for `CLAIM_IDLE_MS`.

Together: nothing is lost when a gateway or a worker dies, nothing is counted twice.
The stream is as durable as the Redis it lives in; production runs Redis with AOF.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from django.conf import settings

logger = logging.getLogger(__name__)

STREAM: str = settings.TESSERACT_USAGE_STREAM
GROUP = "usage-drain"
CLAIM_IDLE_MS = 30_000


class UsageRecord(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    org_id: int
    api_key_id: int | None
    created_at: float  # unix seconds
    endpoint: str
    model: str
    served_model: str
    deployment: str
    region: str
    cluster: str
    chip: str
    stream: bool
    status: str
    input_tokens: int
    output_tokens: int
    usage_source: str
    cost_usd: str  # a decimal string: money never goes through a float
    ttft_ms: float | None = None
    latency_ms: float | None = None
    network_ms: float | None = None
    queue_ms: float | None = None
    compute_ms: float | None = None
    sla_met: bool | None = None
    attempts: int = 1
    constraints: dict[str, object] = {}
    backend_policy: dict[str, object] = {}
    trace_id: str = ""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UsageRecord)


def encode(record: UsageRecord) -> bytes:
    return _encoder.encode(record)


def decode(data: bytes) -> UsageRecord:
    return _decoder.decode(data)


async def publish(redis: Any, record: UsageRecord) -> None:
    """Append one record to the stream (`redis` is a `redis.asyncio.Redis`)."""
    await redis.xadd(STREAM, {b"r": encode(record)})


class Publisher:
    """Appends records in batches: one round trip to Redis for all the requests that
    finish in the same turn of the event loop.

    `publish()` returns only once its record is in Redis, so a caller that awaits it
    before sending its last byte keeps the durability promise. Under load this turns
    dozens of XADDs into one pipelined write.
    """

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._pending: list[tuple[bytes, Any, asyncio.Future[None]]] = []
        self._flushing = False

    async def publish(self, record: UsageRecord, *, settle: Any = None) -> None:
        """`settle`: (script, keys, args), run in the same round trip as the XADD
        (`billing.limits`: a request's budget settles with its usage record)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((encode(record), settle, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._start_flush)
        await future

    def _start_flush(self) -> None:
        task = asyncio.ensure_future(self._flush())
        task.add_done_callback(lambda _: None)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for data, settle, _ in batch:
                        pipe.xadd(STREAM, {b"r": data})
                        if settle is not None:
                            script, keys, args = settle
                            pipe.evalsha(script.sha, len(keys), *keys, *args)
                    results = iter(await pipe.execute(raise_on_error=False))
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, settle, future in batch:
                    added = next(results)
                    if settle is not None and isinstance(next(results), Exception):
                        await _settle_again(settle)
                    if future.done():
                        continue
                    if isinstance(added, Exception):
                        future.set_exception(added)
                    else:
                        future.set_result(None)
        self._flushing = False


async def _settle_again(settle: Any) -> None:
    """The script was not loaded (Redis restarted): load and run it on its own."""
    script, keys, args = settle
    try:
        await script(keys=keys, args=args)
    except Exception:
        logger.exception("could not settle a budget reservation (keys %s)", keys)
