"""Load the demo world (`backends.world.demo_world`) into the catalog.

Idempotent: rows are matched by slug and updated in place, so running it again
after an operator edited a profile restores the published numbers, and nothing is
duplicated. RTT rows from the same source are replaced as a set.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import transaction

from backends import world as w
from backends.models import AIModel, Chip, Cluster, Deployment, Owner, Region, RegionLatency

RTT_SOURCE = "Azure network round-trip latency statistics, P50/P95, 30 days to 2026-07-30"


@dataclass(frozen=True)
class LoadResult:
    regions: int
    chips: int
    models: int
    clusters: int
    deployments: int
    latencies: int


@transaction.atomic
def demo_world_load(
    spec: w.WorldSpec | None = None, *, simulator_url: str | None = None
) -> LoadResult:
    """Upsert the world; every deployment points at the backend simulator."""
    spec = spec or w.demo_world()
    simulator_url = simulator_url or settings.TESSERACT_SIMULATOR_URL
    ours = {c.region for c in spec.clusters.values() if c.owner == Owner.TESSERACT}

    regions = {}
    for r in spec.regions.values():
        regions[r.slug], _ = Region.objects.update_or_create(
            slug=r.slug,
            defaults={
                "name": r.name,
                "physical_location": r.physical_location,
                "country_code": r.country_code,
                "country": r.country,
                "geo_group": r.geo_group,
                "latitude": r.latitude,
                "longitude": r.longitude,
                "eu_member": r.eu_member,
                "eea_member": r.eea_member,
                "eu_adequacy": r.eu_adequacy,
                "certifications": sorted(r.certifications),
                "sovereign": r.sovereign,
                "owner": Owner.TESSERACT if r.slug in ours else Owner.PARTNER,
            },
        )
    chips = {}
    for c in spec.chips.values():
        chips[c.slug], _ = Chip.objects.update_or_create(
            slug=c.slug, defaults={"name": c.name, "vendor": c.vendor, "kind": c.kind}
        )
    models = {}
    for m in spec.models.values():
        models[m.slug], _ = AIModel.objects.update_or_create(
            slug=m.slug,
            defaults={
                "name": m.name,
                "family": m.family,
                "parameters_b": Decimal(str(m.parameters_b)),
                "context_length": m.context_length,
            },
        )
    clusters = {}
    for cl in spec.clusters.values():
        clusters[cl.slug], _ = Cluster.objects.update_or_create(
            slug=cl.slug,
            defaults={
                "name": cl.name,
                "region": regions[cl.region],
                "chip": chips[cl.chip],
                "operator": cl.operator,
                "owner": cl.owner,
                "accelerators": cl.accelerators,
                "certifications": sorted(cl.certifications),
            },
        )
    for d in spec.deployments.values():
        cluster = spec.clusters[d.cluster]
        p = d.profile
        Deployment.objects.update_or_create(
            slug=d.slug,
            defaults={
                "cluster": clusters[d.cluster],
                "chip": chips[cluster.chip],
                "model": models[d.model],
                "adapter": Deployment.Adapter.SIMULATOR,
                # the simulator orders its queues by priority, as vLLM can
                "priority_scheduling": True,
                "endpoint_url": f"{simulator_url.rstrip('/')}/d/{d.slug}/v1",
                "price_input_per_mtok": Decimal(str(p.price_input_per_mtok)),
                "price_output_per_mtok": Decimal(str(p.price_output_per_mtok)),
                "concurrency_slots": d.concurrency_slots,
                "ttft_ms": p.ttft_ms,
                "reference_prompt_tokens": p.reference_prompt_tokens,
                "prefill_tokens_per_s": p.prefill_tokens_per_s,
                "decode_tokens_per_s": p.decode_tokens_per_s,
                "profile_source": "\n".join(p.sources),
            },
        )

    RegionLatency.objects.filter(source=RTT_SOURCE).delete()
    RegionLatency.objects.bulk_create(
        RegionLatency(
            src=regions[src], dst=regions[dst], rtt_p50_ms=p50, rtt_p95_ms=p95, source=RTT_SOURCE
        )
        for (src, dst), (p50, p95) in spec.rtt.items()
    )
    return LoadResult(
        regions=len(regions),
        chips=len(chips),
        models=len(models),
        clusters=len(clusters),
        deployments=len(spec.deployments),
        latencies=len(spec.rtt),
    )
