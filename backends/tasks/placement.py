from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings

from accounts import redis_client
from backends import placement


# The lock outlives no run: a run killed at the time limit leaves it to expire with it.
@shared_task(
    time_limit=placement.LOCK_TIMEOUT_S,
    soft_time_limit=placement.LOCK_TIMEOUT_S - 10,
    ignore_result=True,
)
def run_placement() -> dict[str, Any]:
    """Plan placement from the last window of demand; record or apply it (as the
    operator's `ControlSettings.placement_mode` says). Safe to run twice: one run at a
    time (a Redis lock), and a second run finds the first's actions in its cooldown."""
    return placement.placement_run(client=redis_client.connect(settings.REDIS_URL)).summary()
