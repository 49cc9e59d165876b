"""Operator actions on the catalog."""

from __future__ import annotations

import logging

from django.db import transaction

from backends.models import Cluster, Deployment, Region

logger = logging.getLogger(__name__)

Drainable = Region | Cluster | Deployment
KINDS: dict[str, type[Drainable]] = {"region": Region, "cluster": Cluster, "deployment": Deployment}


def drain_set(target: Drainable, *, drained: bool, by: str = "operator") -> None:
    """The kill switch: route nothing more to a region, a cluster or a deployment.

    The save announces a catalog change when it commits; every gateway reloads its
    world at once and stops routing there. Requests already in flight finish: nothing
    is cut off. Draining twice is the same as once.
    """
    with transaction.atomic():
        type(target).objects.filter(pk=target.pk).select_for_update().first()
        target.drained = drained
        target.save(update_fields=["drained"])  # post_save → gateways reload
    logger.warning(
        "%s %s %s by %s",
        "drained" if drained else "undrained",
        type(target).__name__.lower(),
        target,
        by,
    )


def drain_by_slug(kind: str, slug: str, *, drained: bool, by: str = "operator") -> Drainable:
    try:
        model = KINDS[kind]
    except KeyError:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}") from None
    target = model.objects.get(slug=slug)
    drain_set(target, drained=drained, by=by)
    return target
