"""Reads of the catalog that are scoped to a tenant: its own private clusters.

Anything of another organization (or a public cluster) is a 404, worded exactly like
a slug that never existed, so an organization cannot learn another's clusters exist.
"""

from __future__ import annotations

from django.http import Http404

from accounts.types import Tenant
from backends.models import Cluster, Deployment


def private_cluster_list(*, org: Tenant) -> list[Cluster]:
    return list(
        Cluster.objects.for_org(org)
        .select_related("region", "chip", "provider")
        .prefetch_related("deployments__model")
        .order_by("slug")
    )


def access_private_cluster(*, org: Tenant, slug: str) -> Cluster:
    cluster = (
        Cluster.objects.for_org(org)
        .select_related("region", "chip", "provider")
        .prefetch_related("deployments__model")
        .filter(slug=slug)
        .first()
    )
    if cluster is None:
        raise Http404("No such cluster.")
    return cluster


def access_private_deployment(*, org: Tenant, cluster_slug: str, slug: str) -> Deployment:
    deployment = (
        Deployment.objects.for_org(org)
        .select_related("cluster", "model")
        .filter(cluster__slug=cluster_slug, slug=slug)
        .first()
    )
    if deployment is None:
        raise Http404("No such deployment.")
    return deployment
