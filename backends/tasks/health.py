from __future__ import annotations

from celery import shared_task
from django.conf import settings

from accounts import redis_client
from backends import health


@shared_task(time_limit=30, ignore_result=True)
def check_health() -> dict[str, str]:
    """Check every deployment once and feed the health state machine (idempotent:
    a second run is one more observation, which the hysteresis absorbs)."""
    return health.check_all(client=redis_client.connect(settings.REDIS_URL))
