"""A catalog write is announced to every gateway on `tesseract:world` when it commits."""

from __future__ import annotations

import redis
from django.conf import settings

from backends.models import Chip
from backends.signals import WORLD_CHANNEL
from tests.pubsub import next_message


def test_a_chip_renamed_in_the_catalog_is_announced_to_the_gateways(transactional_db):
    """The world names each backend's chip: a renamed chip must reach every gateway at
    once, as a drain does, not on its next periodic reload."""
    chip = Chip.objects.create(slug="nvidia-h100", name="H100", vendor="NVIDIA", kind="gpu")
    pubsub = redis.Redis.from_url(settings.REDIS_URL).pubsub()
    pubsub.subscribe(WORLD_CHANNEL)
    next_message(pubsub, "subscribe")

    chip.slug = "nvidia-h100-sxm"
    chip.save()  # commits (autocommit): announced now

    assert next_message(pubsub, "message")["data"] == b"changed"
    pubsub.close()


def test_a_new_list_price_is_announced_so_budgets_reserve_at_it_at_once(transactional_db):
    """The gateways reserve and settle budgets at the list price (`routing.gateway.
    admission.rate`): it rides in the world, and reaches every gateway when written."""
    from billing.models import ListPrice

    pubsub = redis.Redis.from_url(settings.REDIS_URL).pubsub()
    pubsub.subscribe(WORLD_CHANNEL)
    next_message(pubsub, "subscribe")

    ListPrice.objects.create(model="m", input_per_mtok_usd=1, output_per_mtok_usd=2)

    assert next_message(pubsub, "message")["data"] == b"changed"
    pubsub.close()
