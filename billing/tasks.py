from __future__ import annotations

import redis
from celery import shared_task
from django.conf import settings

from billing.services import usage_events_drain


@shared_task(time_limit=60, ignore_result=True)
def drain_usage() -> int:
    """Move metered usage from the Redis stream into the database (idempotent)."""
    return usage_events_drain(client=redis.Redis.from_url(settings.REDIS_URL))
