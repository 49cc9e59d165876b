from __future__ import annotations

from celery import shared_task
from django.conf import settings

from accounts import redis_client
from billing import metering, rollup
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
