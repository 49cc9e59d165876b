"""The latency map's job: probe every cluster from one gateway region.

Sent to that region's own queue (`tesseract_web.celery.probe_queue`), which only a
worker running in that region reads: the round measures from where it runs."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from accounts import redis_client
from backends import probes


@shared_task(time_limit=probes.ROUND_TIME_LIMIT_S, ignore_result=True)
def probe_latency(
    cluster_ids: list[int] | None = None, region: str | None = None
) -> dict[str, int]:
    """One probe round (all clusters, or `cluster_ids`) from `region` (default: this
    process's `TESSERACT_GATEWAY_REGION`). Running it twice takes one more sample, which
    the EWMA absorbs; a round never overlaps another of its region (a Redis lock)."""
    with redis_client.connect(settings.REDIS_URL) as client:
        return probes.probe_clusters(client=client, cluster_ids=cluster_ids, region=region)
