"""Placement leaves private clusters alone: it never loads or unloads a model on an
organization's own cluster, never counts on one for public demand, and does not take
what a private cluster served for public demand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backends.demo import demo_world_load
from backends.models import Deployment
from backends.placement import demand_by_region, sites_from_catalog
from tests.backends.private import private_deployment
from tests.billing.money import record, usage


@pytest.fixture
def private(acme) -> Deployment:
    demo_world_load()
    like = Deployment.objects.select_related("model", "chip").order_by("slug").first()
    mine = private_deployment(acme, like, region="francecentral", name="Paris basement")
    Deployment.objects.filter(pk=mine.pk).update(loaded=False)  # room to "load" it
    mine.loaded = False
    return mine


def test_placement_sees_no_private_deployment_nor_cluster(private):
    sites, capacity, rows = sites_from_catalog()
    assert private.slug not in {s.slug for s in sites}
    assert private.slug not in rows
    assert private.cluster.slug not in capacity
    assert len(sites) == Deployment.objects.filter(cluster__organization=None).count() > 0


def test_what_a_private_cluster_served_is_not_public_demand(acme, private):
    public = Deployment.objects.select_related("model", "cluster__region", "chip").get(
        slug=Deployment.objects.filter(model=private.model, cluster__organization=None)
        .values_list("slug", flat=True)
        .first()
    )
    now = datetime.now(UTC)
    wanted = {"client_region": "francecentral"}
    record(
        *[usage(acme, at=now, deployment=private, constraints=wanted) for _ in range(5)],
        *[usage(acme, at=now, deployment=public, constraints=wanted) for _ in range(2)],
    )
    demand = demand_by_region(since=now - timedelta(minutes=1), default_region="westeurope")
    assert demand == {("francecentral", private.model.slug): 2}
