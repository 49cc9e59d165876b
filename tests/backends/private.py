"""A helper for tests that need an organization's private cluster in the catalog."""

from __future__ import annotations

from typing import Any

from backends import services as catalog
from backends.models import Deployment, Region


def private_deployment(org: Any, like: Deployment, *, region: str, name: str) -> Deployment:
    """`org`'s own cluster in `region`, serving `like`'s model on `like`'s chip, with
    its relations loaded (as usage records and the drain read them)."""
    cluster = catalog.private_cluster_create(
        org=org, name=name, region=Region.objects.get(slug=region), chip=like.chip,
        accelerators=64,
    )  # fmt: skip
    mine = catalog.private_deployment_create(
        cluster=cluster,
        model=like.model,
        endpoint_url="http://10.0.0.7:8000/v1",
        concurrency_slots=8,
        ttft_ms=100.0,
        reference_prompt_tokens=1000,
        prefill_tokens_per_s=10_000.0,
        decode_tokens_per_s=100.0,
    )
    return Deployment.objects.select_related("model", "cluster__region", "chip").get(pk=mine.pk)
