"""Tell every gateway when the catalog changes, so routing follows within a second.

Any save or delete of a catalog row schedules one message on the `tesseract:world`
channel when the transaction commits (one per transaction, however many rows
changed). Gateways reload their world when they hear it (`routing.gateway.live`).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts import redis_client
from backends.models import AIModel, Chip, Cluster, Deployment, Provider, Region, RegionLatency
from billing.models import ListPrice

logger = logging.getLogger(__name__)

WORLD_CHANNEL = "tesseract:world"


def publish_world_change() -> None:
    try:
        redis_client.connect(settings.REDIS_URL).publish(WORLD_CHANNEL, b"changed")
    except redis.RedisError:
        logger.exception("could not announce a catalog change; gateways refresh on their timer")


def world_changed() -> None:
    """Announce a change once the current transaction commits (once per transaction)."""
    connection = transaction.get_connection()
    if any(entry[1] is publish_world_change for entry in connection.run_on_commit):
        return  # already scheduled for this transaction
    transaction.on_commit(publish_world_change)


#: Every table `backends.snapshot.load_world` reads.
CATALOG = (Region, RegionLatency, Chip, Cluster, AIModel, Deployment, Provider, ListPrice)


@receiver(post_save)
@receiver(post_delete)
def _catalog_changed(sender: type, **kwargs: Any) -> None:
    if sender in CATALOG:
        world_changed()
