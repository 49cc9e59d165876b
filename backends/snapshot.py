"""The one seam between the catalog (ORM rows) and the routing engine's plain types.

`load_world()` reads the catalog once — deployments with their cluster, region and
chip, the latency map, region coordinates — and returns a `World`: the engine's
immutable `Snapshot` plus what the gateway needs to reach each backend. The gateway
builds one per refresh, never per request.

`World.with_live(maps)` lays the live maps from Redis (`backends.livestate`) over the
catalog: health, load, observed speeds, what is loaded, probe-measured RTTs, and the
deployments resting after a provider's 429 (`LiveState.out` = "cooling") or whose
provider rejected our credential ("provider_out", as for a provider the catalog has
MISCONFIGURED, DISABLED or without a credential). Those stay in the snapshot, out of
routing: a plan names them, and a request whose policy allows only them is told the
backends are out (503), not that its policy matches nothing (422). It costs no query,
so a gateway re-applies it whenever the control plane announces a change.

A deployment with a provider (`backends.models.Provider`) is reached with the
provider's credential, unsealed here — when the world is built, never per request —
and held only in memory, inside `Endpoint.auth` (a `Secret`, which never prints); the
model id sent upstream is the provider's own (`Endpoint.upstream_model`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field, replace
from itertools import count

from django.conf import settings

from backends import livestate, sealing
from backends.livestate import LiveMaps
from backends.models import Deployment, Provider, Region, RegionLatency
from backends.world import INTRA_REGION_RTT_MS
from billing import rating
from billing.models import ListPrice
from routing.engine import (
    OUT_COOLING,
    OUT_PROVIDER,
    Backend,
    Health,
    LatencyMap,
    LiveState,
    Snapshot,
    build_backend,
)

logger = logging.getLogger(__name__)

_versions = count(1)


@dataclass(frozen=True, slots=True)
class Auth:
    """The header that carries a provider's credential; its value never prints."""

    header: str
    value: sealing.Secret


@dataclass(frozen=True, slots=True)
class Endpoint:
    """How to reach one backend, and the policy facts the audit trail records."""

    backend_id: str
    url: str  # the OpenAI-compatible base URL, ending in /v1
    adapter: str
    model: str  # the catalog's slug: what the client is told served it
    region: str
    cluster: str
    chip: str
    price_input_per_mtok: float
    price_output_per_mtok: float
    certifications: tuple[str, ...]
    jurisdictions: tuple[str, ...]
    country: str = ""
    #: the provider's slug ("" without one) and its name for the model (sent upstream)
    provider: str = ""
    upstream_model: str = ""
    #: the provider's extra headers (never secrets) and its credential header
    headers: tuple[tuple[str, str], ...] = ()
    auth: Auth | None = field(default=None, repr=False, compare=False)
    connect_timeout_s: float | None = None
    first_token_timeout_s: float | None = None
    #: quirk: the server sends no usage in streams (tokens are then estimated)
    ignores_include_usage: bool = False
    #: the server serves its waiting requests by the priority each carries (vLLM's
    #: `--scheduling-policy priority`): the gateway sends the request's deadline
    #: (`Request.queue_priority`) in place of any priority the client gave
    priority_scheduling: bool = False
    #: it serves Prometheus /metrics beside its /v1 (`backends.resources` scrapes it):
    #: a provider says whether (`Provider.exposes_metrics`); a deployment without one
    #: (the simulator, a server at its own URL) is scraped, as it always was
    exposes_metrics: bool = True
    #: finds `"model": "<upstream_model>"` in an answer, to name the catalog's slug
    model_field: re.Pattern[bytes] | None = field(default=None, repr=False, compare=False)
    #: None: a public backend; else the organization whose private cluster this is
    org_id: int | None = None
    #: the operators' list prices for its model, (effective from, unix s; price), oldest
    #: first, from the one in force when the world was read: what
    #: `billing.rating.PriceBook` charges instead of cost × margin
    list_prices: tuple[tuple[float, rating.Price], ...] = ()
    #: its model's context window in tokens (0: unknown): the most a request that sets
    #: no max_tokens may generate here, which its budget reservation covers
    context_length: int = 0

    def __post_init__(self) -> None:
        if not self.upstream_model:
            object.__setattr__(self, "upstream_model", self.model)
        if self.upstream_model != self.model and self.model_field is None:
            quoted = re.escape(_json_string(self.upstream_model))
            object.__setattr__(self, "model_field", re.compile(rb'"model"\s*:\s*' + quoted))

    def visible_to(self, org_id: int | None) -> bool:
        return self.org_id is None or self.org_id == org_id

    def upstream_headers(self) -> dict[str, str]:
        """The provider's headers, credential included: for the request, never a log."""
        out = dict(self.headers)
        if self.auth is not None:
            out[self.auth.header] = self.auth.value.reveal()
        return out

    def own_model(self, payload: bytes, *, count: int = 1) -> bytes:
        """`payload` with the provider's model id replaced by the catalog's slug."""
        if self.model_field is None:
            return payload
        ours = b'"model":' + _json_string(self.model)
        return self.model_field.sub(lambda _: ours, payload, count=count)


def _json_string(value: str) -> bytes:
    return json.dumps(value).encode()


@dataclass(frozen=True)
class World:
    snapshot: Snapshot
    endpoints: dict[str, Endpoint]
    #: model -> regions serving it, public backends only (`models_for` adds an org's own)
    models: dict[str, list[str]] = field(default_factory=dict)
    #: the catalog's own snapshot, before any live maps were laid over it
    catalog: Snapshot | None = None
    live: LiveMaps = field(default_factory=LiveMaps.empty)

    @property
    def version(self) -> int | str:
        return self.snapshot.version

    def endpoints_for(self, org_id: int | None) -> list[Endpoint]:
        """The endpoints `org_id` may know of: the public ones and its own private ones."""
        return [e for e in self.endpoints.values() if e.visible_to(org_id)]

    def with_live(self, maps: LiveMaps) -> World:
        """This world's catalog with `maps` laid over it (a new version)."""
        base = self.catalog or self.snapshot
        now = time.time()
        rejected = maps.rejected_providers

        def out(backend_id: str) -> str:
            endpoint = self.endpoints.get(backend_id)
            provider = endpoint.provider if endpoint is not None else ""
            if provider and provider in rejected:
                return OUT_PROVIDER
            return OUT_COOLING if maps.resting(backend_id, now) else ""

        backends = [_overlay(b, maps, out=out(b.id)) for b in base.backends]
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


def _overlay(b: Backend, maps: LiveMaps, *, out: str = "") -> Backend:
    live = maps.deployments.get(b.id)
    in_flight = maps.inflight.get(b.id, 0)
    if live is None and not in_flight and not out:
        return b
    state = b.state
    if out and not state.out:  # resting after a 429, or its provider rejected our credential
        state = replace(state, out=out)
    if live is not None:
        state = replace(
            state,
            health=_HEALTH.get(live.health, state.health),
            observed_ttft_ms=live.observed_ttft_ms,
            observed_decode_tokens_per_s=live.observed_decode_tps,
            loaded=state.loaded if live.loaded is None else live.loaded,
        )
    # The gateways' count is fresher than the backend's last scrape, but takes in its
    # queue too (`livestate.occupancy`).
    holding, waiting = livestate.occupancy(in_flight, live)
    return replace(b, state=replace(state, in_flight=holding, queued=waiting))


def _provider_out(provider: Provider | None) -> bool:
    """The provider cannot be used: an operator disabled it, or it rejected our credential."""
    return provider is not None and provider.status != Provider.Status.ACTIVE


#: (provider, problem) already logged by this process: a world is built every few
#: seconds, the operators need to read a broken credential once, not every time
_reported: set[tuple[str, str]] = set()


def _report(provider: Provider, problem: str) -> None:
    if (provider.slug, problem) not in _reported:
        _reported.add((provider.slug, problem))
        logger.error("provider %s: %s; its deployments are out of routing", provider.slug, problem)


def _auth(provider: Provider | None) -> tuple[Auth | None, bool]:
    """The credential header of `provider`, unsealed; and whether it is usable."""
    if provider is None or provider.auth_style == Provider.Auth.NONE:
        return None, True
    if not provider.credential_sealed:
        _report(provider, "no credential was entered")
        return None, False
    try:
        secret = sealing.unseal(provider.credential_sealed)
    except sealing.SealingError as exc:
        _report(provider, str(exc))
        return None, False
    if provider.auth_style == Provider.Auth.BEARER:
        return Auth("authorization", sealing.Secret(f"Bearer {secret.reveal()}")), True
    return Auth(provider.auth_header.strip().lower(), secret), True


def _backend(d: Deployment, *, out: str = "") -> Backend:
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
        org_id=d.cluster.organization_id,
        certifications=(*region.certifications, *d.cluster.certifications),
        jurisdictions=region.jurisdictions,
        state=LiveState(
            health=_HEALTH[d.health],
            loaded=d.loaded,
            drained=d.drained or d.cluster.drained or region.drained,
            out=out,
        ),
    )


def load_world() -> World:
    """Read the catalog into a fresh, versioned World (a few queries, no per-row ones)."""
    deployments = list(
        Deployment.objects.select_related("cluster__region", "chip", "model", "provider").order_by(
            "slug"
        )
    )
    auths: dict[int, tuple[Auth | None, bool]] = {}
    for d in deployments:
        if d.provider_id is not None and d.provider_id not in auths:
            auths[d.provider_id] = _auth(d.provider)

    def usable(d: Deployment) -> bool:
        if d.provider is None:
            return True
        return not _provider_out(d.provider) and auths[d.provider.pk][1]

    names = dict(Region.objects.values_list("pk", "slug"))
    rtt = {
        (names[src], names[dst]): p50
        for src, dst, p50 in RegionLatency.objects.values_list("src_id", "dst_id", "rtt_p50_ms")
    }
    coords = {
        slug: (lat, lon)
        for slug, lat, lon in Region.objects.values_list("slug", "latitude", "longitude")
    }
    backends = [_backend(d, out="" if usable(d) else OUT_PROVIDER) for d in deployments]
    listed: dict[str, list[tuple[float, rating.Price]]] = {}
    prices = ListPrice.objects.order_by("model", "effective_from")
    loaded = time.time()  # every request of this world completes after it
    for model, since, pin, pout in prices.values_list(
        "model", "effective_from", "input_per_mtok_usd", "output_per_mtok_usd"
    ):
        history = listed.setdefault(model, [])
        if history and since.timestamp() <= loaded:
            history.pop()  # replaced before this world was read: nobody pays it now
        history.append((since.timestamp(), rating.Price(pin, pout)))
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
            url=d.base_url.rstrip("/"),
            adapter=d.adapter,
            model=d.model.slug,
            upstream_model=d.upstream_model,
            provider=d.provider.slug if d.provider else "",
            headers=_extra_headers(d.provider),
            auth=auths[d.provider.pk][0] if d.provider else None,
            connect_timeout_s=d.provider.connect_timeout_s if d.provider else None,
            first_token_timeout_s=d.provider.first_token_timeout_s if d.provider else None,
            ignores_include_usage=bool(d.provider and d.provider.ignores_include_usage),
            priority_scheduling=d.priority_scheduling,
            exposes_metrics=d.provider.exposes_metrics if d.provider else True,
            region=d.cluster.region.slug,
            cluster=d.cluster.slug,
            chip=d.chip.slug,
            price_input_per_mtok=float(d.price_input_per_mtok),
            price_output_per_mtok=float(d.price_output_per_mtok),
            certifications=tuple(sorted(b.certifications)),
            jurisdictions=tuple(sorted(b.jurisdictions)),
            country=b.country,
            org_id=b.org_id,
            list_prices=tuple(listed.get(d.model.slug, ())),
            context_length=d.model.context_length,
        )
        for d, b in zip(deployments, backends, strict=True)
    }
    models: dict[str, list[str]] = {}
    for b in backends:
        if b.org_id is not None:
            continue  # a private cluster's models are listed to its organization only
        models.setdefault(b.model, [])
        if b.region not in models[b.model]:
            models[b.model].append(b.region)
    return World(snapshot=snapshot, endpoints=endpoints, models=models, catalog=snapshot)


def _extra_headers(provider: Provider | None) -> tuple[tuple[str, str], ...]:
    if provider is None or not isinstance(provider.extra_headers, dict):
        return ()
    return tuple((str(k).lower(), str(v)) for k, v in sorted(provider.extra_headers.items()))
