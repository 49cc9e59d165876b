"""The one seam between the catalog (ORM rows) and the routing engine's plain types.

`load_world()` reads the catalog once — deployments with their cluster, region and
chip, the latency map, region coordinates — and returns a `World`: the engine's
immutable `Snapshot` plus what the gateway needs to reach each backend. The gateway
builds one per refresh, never per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count

from backends.models import Deployment, Region, RegionLatency
from backends.world import INTRA_REGION_RTT_MS
from routing.engine import Backend, LatencyMap, LiveState, Profile, Snapshot

_versions = count(1)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """How to reach one backend, and the policy facts the audit trail records."""

    backend_id: str
    url: str  # the OpenAI-compatible base URL, ending in /v1
    adapter: str
    model: str
    region: str
    cluster: str
    chip: str
    price_input_per_mtok: float
    price_output_per_mtok: float
    certifications: tuple[str, ...]
    jurisdictions: tuple[str, ...]


@dataclass(frozen=True)
class World:
    snapshot: Snapshot
    endpoints: dict[str, Endpoint]
    models: dict[str, list[str]] = field(default_factory=dict)  # model -> regions serving it

    @property
    def version(self) -> int | str:
        return self.snapshot.version


def _backend(d: Deployment) -> Backend:
    region = d.cluster.region
    return Backend(
        id=d.slug,
        model=d.model.slug,
        region=region.slug,
        country=region.country_code,
        profile=Profile(
            ttft_ms=d.ttft_ms,
            reference_prompt_tokens=d.reference_prompt_tokens,
            prefill_tokens_per_s=d.prefill_tokens_per_s,
            decode_tokens_per_s=d.decode_tokens_per_s,
            price_input_per_mtok=float(d.price_input_per_mtok),
            price_output_per_mtok=float(d.price_output_per_mtok),
        ),
        concurrency_slots=d.concurrency_slots,
        cluster=d.cluster.slug,
        chip=d.chip.slug,
        owner=d.cluster.owner,
        certifications=frozenset(
            c.lower() for c in (*region.certifications, *d.cluster.certifications)
        ),
        jurisdictions=region.jurisdictions,
        state=LiveState(loaded=d.loaded, drained=d.drained or d.cluster.drained),
    )


def load_world() -> World:
    """Read the catalog into a fresh, versioned World (a few queries, no per-row ones)."""
    deployments = list(
        Deployment.objects.select_related("cluster__region", "chip", "model").order_by("slug")
    )
    names = dict(Region.objects.values_list("pk", "slug"))
    rtt = {
        (names[src], names[dst]): p50
        for src, dst, p50 in RegionLatency.objects.values_list("src_id", "dst_id", "rtt_p50_ms")
    }
    coords = {
        slug: (lat, lon)
        for slug, lat, lon in Region.objects.values_list("slug", "latitude", "longitude")
    }
    backends = [_backend(d) for d in deployments]
    snapshot = Snapshot(
        backends,
        LatencyMap(rtt=rtt, coords=coords, intra_region_ms=INTRA_REGION_RTT_MS),
        version=next(_versions),
    )
    endpoints = {
        d.slug: Endpoint(
            backend_id=d.slug,
            url=d.endpoint_url.rstrip("/"),
            adapter=d.adapter,
            model=d.model.slug,
            region=d.cluster.region.slug,
            cluster=d.cluster.slug,
            chip=d.chip.slug,
            price_input_per_mtok=float(d.price_input_per_mtok),
            price_output_per_mtok=float(d.price_output_per_mtok),
            certifications=tuple(sorted(b.certifications)),
            jurisdictions=tuple(sorted(b.jurisdictions)),
        )
        for d, b in zip(deployments, backends, strict=True)
    }
    models: dict[str, list[str]] = {}
    for b in backends:
        models.setdefault(b.model, [])
        if b.region not in models[b.model]:
            models[b.model].append(b.region)
    return World(snapshot=snapshot, endpoints=endpoints, models=models)
