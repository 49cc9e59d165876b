from __future__ import annotations

import redis
from celery import shared_task
from django.conf import settings

from billing import metering
from billing.services import usage_events_drain


@shared_task(time_limit=60, ignore_result=True)
def drain_usage(claim_idle_ms: int = metering.CLAIM_IDLE_MS, batch: int = 500) -> int:
    """Move metered usage from the Redis stream into the database (idempotent).

    Records another worker read but never acknowledged are claimed once they have been
    idle `claim_idle_ms`: that worker died between reading and committing.
    """
    return usage_events_drain(
        client=redis.Redis.from_url(settings.REDIS_URL), claim_idle_ms=claim_idle_ms, batch=batch
    )
