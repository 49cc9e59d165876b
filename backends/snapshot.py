"""The one seam between the catalog (ORM rows) and the routing engine's plain types.

`load_world()` reads the catalog once — deployments with their cluster, region and
chip, the latency map, region coordinates — and returns a `World`: the engine's
immutable `Snapshot` plus what the gateway needs to reach each backend. The gateway
builds one per refresh, never per request.

`World.with_live(maps)` lays the live maps from Redis (`backends.livestate`) over the
catalog: health, load, observed speeds, what is loaded, probe-measured RTTs. It costs
no query, so a gateway re-applies it whenever the control plane announces a change.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import count

from django.conf import settings

from backends.livestate import LiveMaps
from backends.models import Deployment, Region, RegionLatency
from backends.world import INTRA_REGION_RTT_MS
from routing.engine import Backend, Health, LatencyMap, LiveState, Snapshot, build_backend

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
    country: str = ""


@dataclass(frozen=True)
class World:
    snapshot: Snapshot
    endpoints: dict[str, Endpoint]
    models: dict[str, list[str]] = field(default_factory=dict)  # model -> regions serving it
    #: the catalog's own snapshot, before any live maps were laid over it
    catalog: Snapshot | None = None
    live: LiveMaps = field(default_factory=LiveMaps.empty)

    @property
    def version(self) -> int | str:
        return self.snapshot.version

    def with_live(self, maps: LiveMaps) -> World:
        """This world's catalog with `maps` laid over it (a new version)."""
        base = self.catalog or self.snapshot
        backends = [_overlay(b, maps) for b in base.backends]
        latency = base.latency
        if maps.rtt:
            latency = replace(latency, rtt={**latency.rtt, **maps.rtt})
        snapshot = Snapshot(
            backends,
            latency,
            version=f"{_catalog_version(base)}.{next(_versions)}",
            gateway_region=base.gateway_region,
        )
        return replace(self, snapshot=snapshot, catalog=base, live=maps)


def _catalog_version(snapshot: Snapshot) -> str:
    return str(snapshot.version).split(".")[0]


_HEALTH = {"healthy": Health.HEALTHY, "degraded": Health.DEGRADED, "down": Health.DOWN}


def _overlay(b: Backend, maps: LiveMaps) -> Backend:
    live = maps.deployments.get(b.id)
    in_flight = maps.inflight.get(b.id, 0)
    if live is None and not in_flight:
        return b
    state = b.state
    if live is not None:
        state = replace(
            state,
            health=_HEALTH.get(live.health, state.health),
            observed_ttft_ms=live.observed_ttft_ms,
            observed_decode_tokens_per_s=live.observed_decode_tps,
            loaded=state.loaded if live.loaded is None else live.loaded,
            queued=live.waiting or 0,
        )
    # The backend's own count includes every gateway's requests; between two scrapes
    # the gateways' counters are fresher. Take the larger.
    running = live.running if live is not None and live.running is not None else 0
    return replace(b, state=replace(state, in_flight=max(running, in_flight)))


def _backend(d: Deployment) -> Backend:
    region = d.cluster.region
    return build_backend(
        id=d.slug,
        model=d.model.slug,
        region=region.slug,
        country=region.country_code,
        figures=d,
        concurrency_slots=d.concurrency_slots,
        cluster=d.cluster.slug,
        chip=d.chip.slug,
        owner=d.cluster.owner,
        certifications=(*region.certifications, *d.cluster.certifications),
        jurisdictions=region.jurisdictions,
        state=LiveState(
            health=_HEALTH[d.health],
            loaded=d.loaded,
            drained=d.drained or d.cluster.drained or region.drained,
        ),
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
        # A request without a client location comes from this gateway (issue 8).
        gateway_region=settings.TESSERACT_GATEWAY_REGION or None,
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
            country=b.country,
        )
        for d, b in zip(deployments, backends, strict=True)
    }
    models: dict[str, list[str]] = {}
    for b in backends:
        models.setdefault(b.model, [])
        if b.region not in models[b.model]:
            models[b.model].append(b.region)
    return World(snapshot=snapshot, endpoints=endpoints, models=models, catalog=snapshot)
