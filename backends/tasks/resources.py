"""The resource map's jobs: scrape the backends' metrics; fold observed speeds."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from accounts import redis_client
from backends import resources


@shared_task(time_limit=resources.SCRAPE_TIME_LIMIT_S, ignore_result=True)
def scrape_metrics(deployment_ids: list[int] | None = None) -> dict[str, int]:
    """Running, waiting and loaded of every deployment (or `deployment_ids`), from its
    metrics. Running it twice writes the same values and announces nothing new."""
    with redis_client.connect(settings.REDIS_URL) as client:
        return resources.scrape_metrics(client=client, deployment_ids=deployment_ids)


@shared_task(time_limit=resources.FOLD_TIME_LIMIT_S, ignore_result=True)
def fold_observed_speeds() -> int:
    """Completed requests → observed TTFT and decode speed. The watermark makes a
    second run (or a replay) read nothing and change nothing."""
    with redis_client.connect(settings.REDIS_URL) as client:
        return resources.fold_observed(client=client)
