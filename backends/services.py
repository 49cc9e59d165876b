"""Operator actions on the catalog."""

from __future__ import annotations

import ipaddress
import logging
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.utils.text import slugify

from accounts.types import Tenant
from backends import providers
from backends.models import (
    AIModel,
    Certification,
    Chip,
    Cluster,
    Deployment,
    Owner,
    Provider,
    Region,
    unknown_certifications,
)

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


# --------------------------------------------------------------------------- private clusters
# An organization's own endpoints (bring your own deployment). The API calls these with
# rows it has already scoped to the caller's organization (`backends.selectors`).


class PrivateClusterError(ValueError):
    """A request about a private cluster that cannot be carried out (a 400, said plainly)."""


#: Every private cluster's slug starts with its organization's id, so a name can only
#: ever clash with the organization's own clusters: a clash reveals nothing.
def private_slug(org: Tenant, name: str) -> str:
    base = slugify(name)[:60].strip("-")
    if not base:
        raise PrivateClusterError("Give the cluster a name with letters or digits.")
    return f"o{org.pk}-{base}"


def _certifications(tags: list[str]) -> list[str]:
    unknown = unknown_certifications(tags)
    if unknown:
        raise PrivateClusterError(
            f"Unknown certification(s): {', '.join(unknown)}; "
            f"one of {', '.join(Certification.values)}."
        )
    return sorted(set(tags))


@transaction.atomic
def private_cluster_create(
    *,
    org: Tenant,
    name: str,
    region: Region,
    chip: Chip,
    accelerators: int,
    certifications: list[str] | None = None,
    operator: str = "",
) -> Cluster:
    slug = private_slug(org, name)
    if Cluster.objects.filter(slug=slug).exists():
        raise PrivateClusterError(f"You already have a cluster named {name!r}.")
    cluster = Cluster.objects.create(
        slug=slug,
        name=name,
        region=region,
        chip=chip,
        operator=operator or "customer",
        owner=Owner.CUSTOMER,
        accelerators=accelerators,
        certifications=_certifications(certifications or []),
        organization_id=org.pk,
    )
    logger.warning("organization %s registered private cluster %s", org.pk, slug)
    return cluster


@transaction.atomic
def private_cluster_update(cluster: Cluster, **changes: Any) -> Cluster:
    """Change a private cluster's name, accelerators, certifications or drain switch."""
    allowed = {"name", "accelerators", "certifications", "drained", "operator"}
    unknown = set(changes) - allowed
    if unknown:
        raise PrivateClusterError(f"These cannot be changed: {', '.join(sorted(unknown))}.")
    if "certifications" in changes:
        changes["certifications"] = _certifications(changes["certifications"])
    for field, value in changes.items():
        setattr(cluster, field, value)
    cluster.save(update_fields=list(changes) or None)  # post_save → gateways reload
    return cluster


@transaction.atomic
def private_cluster_delete(cluster: Cluster) -> None:
    """Remove a private cluster, its deployments and its credential (usage history
    keeps their slugs)."""
    assert cluster.organization_id is not None, "only a private cluster is deleted this way"
    provider_id = cluster.provider_id
    Deployment.objects.filter(cluster=cluster).delete()
    cluster.delete()
    if provider_id is not None:
        Provider.objects.filter(pk=provider_id).delete()


#: A private cluster's provider row only carries how to authenticate: each of its
#: deployments has its own endpoint URL, which always wins over the provider's.
PRIVATE_PROVIDER_BASE_URL = "https://private-cluster.invalid/v1"


def _reachable_for_a_tenant(url: str) -> str:
    """`url`, unless it names this machine or its link-local neighbours (a cloud's
    metadata service): the gateways and the control plane call it for a tenant.
    (A host name is not resolved here: the deployment's network policy must still
    keep the gateways off internal services.)"""
    if settings.TESSERACT_PRIVATE_ENDPOINTS_ALLOW_LOCAL:
        return url
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise PrivateClusterError("The endpoint URL must be http(s)://host/….")
    if host == "localhost" or host.endswith(".localhost"):
        raise PrivateClusterError("The endpoint URL may not name this machine.")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return url
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        raise PrivateClusterError(f"The endpoint URL may not use the address {ip}.")
    return url


@transaction.atomic
def private_cluster_auth_set(
    cluster: Cluster,
    *,
    credential: str | None = None,
    auth_style: str | None = None,
    auth_header: str | None = None,
    by: str = "its organization",
) -> Provider:
    """How Tesseract authenticates to the cluster's endpoints, and the credential,
    sealed like every provider's (`backends.providers.credential_set`): it is never
    shown again, only its last four characters."""
    assert cluster.organization_id is not None, "only a private cluster takes these"
    provider = cluster.provider
    if provider is None:
        provider = Provider(
            slug=cluster.slug,
            name=f"{cluster.name} (private cluster)",
            base_url=PRIVATE_PROVIDER_BASE_URL,
            auth_style=Provider.Auth.BEARER,
        )
    if auth_style is not None:
        if auth_style not in Provider.Auth.values:
            raise PrivateClusterError(f"auth_style is one of {', '.join(Provider.Auth.values)}.")
        provider.auth_style = auth_style
    if auth_header is not None:
        provider.auth_header = auth_header.strip()
    if provider.auth_style == Provider.Auth.HEADER and not provider.auth_header:
        raise PrivateClusterError("Name the header that carries the credential (auth_header).")
    if provider.pk is None and Provider.objects.filter(slug=provider.slug).exists():
        raise PrivateClusterError("This cluster's credential cannot be stored; rename it.")
    provider.save()
    if credential is not None:
        try:
            providers.credential_set(provider, credential, by=by)
        except ValueError as exc:
            raise PrivateClusterError(f"The credential is not usable: {exc}.") from None
    if cluster.provider_id != provider.pk:
        cluster.provider = provider
        cluster.save(update_fields=["provider"])
    for d in Deployment.objects.filter(cluster=cluster).exclude(provider=provider):
        d.provider = provider
        d.save(update_fields=["provider"])
    return provider


#: What an organization declares of a deployment: its server's own name for the model,
#: whether it orders its queue by priority, and the profile the deadline prediction
#: starts from.
DEPLOYMENT_FIELDS = (
    "provider_model_id",
    "priority_scheduling",
    "concurrency_slots",
    "ttft_ms",
    "reference_prompt_tokens",
    "prefill_tokens_per_s",
    "decode_tokens_per_s",
)


@transaction.atomic
def private_deployment_create(
    *, cluster: Cluster, model: AIModel, endpoint_url: str, **profile: Any
) -> Deployment:
    """A model served by the organization's own endpoint, with the profile it declares
    (the deadline prediction starts from it, then follows what is observed)."""
    assert cluster.organization_id is not None, "only a private cluster takes these"
    if Deployment.objects.filter(cluster=cluster, model=model).exists():
        raise PrivateClusterError(f"This cluster already serves {model.slug}.")
    return Deployment.objects.create(
        slug=f"{cluster.slug}--{model.slug}",
        cluster=cluster,
        chip_id=cluster.chip_id,
        model=model,
        endpoint_url=_reachable_for_a_tenant(endpoint_url),
        adapter=Deployment.Adapter.OPENAI,
        provider_id=cluster.provider_id,  # the cluster's credential, if it has one
        # Not billed at provider prices: the tier's platform fee applies (billing.rating).
        price_input_per_mtok=Decimal(0),
        price_output_per_mtok=Decimal(0),
        profile_source="declared by its organization",
        **{f: profile[f] for f in DEPLOYMENT_FIELDS if f in profile},
    )


@transaction.atomic
def private_deployment_update(deployment: Deployment, **changes: Any) -> Deployment:
    allowed = {"endpoint_url", "drained", *DEPLOYMENT_FIELDS}
    unknown = set(changes) - allowed
    if unknown:
        raise PrivateClusterError(f"These cannot be changed: {', '.join(sorted(unknown))}.")
    if "endpoint_url" in changes:
        _reachable_for_a_tenant(changes["endpoint_url"])
    for field, value in changes.items():
        setattr(deployment, field, value)
    deployment.save(update_fields=list(changes) or None)
    return deployment


def private_deployment_delete(deployment: Deployment) -> None:
    assert deployment.cluster.organization_id is not None
    deployment.delete()
