from __future__ import annotations

from celery import shared_task
from django.conf import settings

from accounts import redis_client
from billing import metering, partitions, rollup
from billing.services import usage_events_drain


@shared_task(time_limit=60, ignore_result=True)
def drain_usage(claim_idle_ms: int = metering.CLAIM_IDLE_MS, batch: int = 500) -> int:
    """Move metered usage from the Redis stream into the database (idempotent).

    Records another worker read but never acknowledged are claimed once they have been
    idle `claim_idle_ms`: that worker died between reading and committing.
    """
    return usage_events_drain(
        client=redis_client.connect(settings.REDIS_URL), claim_idle_ms=claim_idle_ms, batch=batch
    )


@shared_task(time_limit=600, ignore_result=True)
def rollup_usage() -> int:
    """Reconcile the daily usage rollup the drain keeps current: build every day not
    built yet (today included) and rebuild the dirty ones (`billing.rollup`). Safe to
    run twice: a day is rebuilt whole."""
    days = rollup.days_to_build()
    for day in days:
        rollup.build_day(day)
    return len(days)


@shared_task(time_limit=300, ignore_result=True)
def ensure_usage_partitions() -> int:
    """Keep the usage table's month partitions ready: the last month, this one and
    `partitions.MONTHS_AHEAD` more (PostgreSQL; a no-op on SQLite). Returns the rows in
    the default partition, which no month covers (logged at WARNING). Idempotent."""
    return partitions.ensure().in_default
