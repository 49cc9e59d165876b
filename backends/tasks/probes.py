"""The latency map's job: probe every cluster from this gateway's region."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from accounts import redis_client
from backends import probes


@shared_task(time_limit=probes.ROUND_TIME_LIMIT_S, ignore_result=True)
def probe_latency(cluster_ids: list[int] | None = None) -> dict[str, int]:
    """One probe round (all clusters, or `cluster_ids`). Running it twice takes one more
    sample, which the EWMA absorbs; a round never overlaps another (a Redis lock)."""
    with redis_client.connect(settings.REDIS_URL) as client:
        return probes.probe_clusters(client=client, cluster_ids=cluster_ids)
