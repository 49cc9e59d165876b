"""Who sends what: clients over regions, models, constraints and deadlines.

Everything here is drawn once per trace request from a seeded RNG, so every strategy
and every load level sees exactly the same requests. The default mix (`Mix()`) is
our assumption of a realistic tenant base, documented in bench/README.md — it was
written before any result was seen and is not tuned to flatter a strategy.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from backends.world import WorldSpec, great_circle_km, physical_rtt_floor_ms
from routing.engine import Request

from .traces import TraceRequest

MODELS = ("llama-3.1-8b-instruct", "llama-3.3-70b-instruct", "llama-3.1-405b-instruct")


@dataclass(frozen=True)
class Mix:
    #: Share of clients per geo group of the region table; inside a group every
    #: region is equally likely. Groups not listed share what is left.
    geo_share: dict[str, float] = field(
        default_factory=lambda: {
            "North America": 0.35,
            "Europe": 0.30,
            "Asia": 0.22,
            "Oceania": 0.04,
            "Middle East": 0.04,
            "South America": 0.03,
            "Africa": 0.02,
        }
    )
    model_share: dict[str, float] = field(
        default_factory=lambda: {
            "llama-3.1-8b-instruct": 0.5,
            "llama-3.3-70b-instruct": 0.4,
            "llama-3.1-405b-instruct": 0.1,
        }
    )
    #: TTFT deadline (ms) classes; None: no TTFT deadline, only `bulk_latency_ms`.
    ttft_classes: dict[float | None, float] = field(
        default_factory=lambda: {50.0: 0.2, 200.0: 0.4, 1000.0: 0.3, None: 0.1}
    )
    bulk_latency_ms: float = 60_000.0
    eu_only_share_of_eu_clients: float = 0.8  # residency {"EU"}, plus gdpr
    hipaa_share_of_us_clients: float = 0.25
    prefer_cost_share: float = 0.1
    #: Share of requests that accept a late answer over a refusal (allow_relaxed_deadline).
    relaxed_share: float = 1.0
    priorities: tuple[int, ...] = (1, 2, 3, 4, 5)  # uniform, independent of the deadline
    #: Share of requests that say nothing of where the client is (the `openai` SDK's
    #: default call). Such a request reaches the gateway nearest its client — gateways
    #: run where the world has clusters — and is routed as if the client were there;
    #: it is drawn from its own RNG, so the other requests stay exactly the same.
    no_location_share: float = 0.0
    #: Clients in real cities instead of on the region nodes (`--honest` turns it on):
    #: a client of region R sits in a city whose nearest region is R, within
    #: `city_radius_km`, drawn by population (GeoNames, bench/data/PROVENANCE.md). Its
    #: round trip to any backend is R's plus its access path: ACCESS_INFLATION x the
    #: fibre floor to R, plus a last mile drawn per request (log-normal through
    #: `last_mile_p50_ms` and `last_mile_p95_ms`). The engine is told the city's
    #: coordinates only, so it knows the floor to R and neither the inflation nor the
    #: last mile.
    cities: bool = False
    city_radius_km: float = 1000.0
    last_mile_p50_ms: float = 10.0
    last_mile_p95_ms: float = 35.0


CITIES_CSV = Path(__file__).resolve().parent / "data" / "geonames_cities_100k.csv"
#: Measured RTT over the fibre floor between Azure regions under 1,000 km apart (floor
#: under 10 ms): median of 234 pairs of backends/data/azure_region_rtt_long_2026-07.csv.
#: A client's path to its region is no straighter than the backbone's.
ACCESS_INFLATION = 2.68


@dataclass(frozen=True, slots=True)
class City:
    name: str
    country_code: str
    latitude: float
    longitude: float
    population: int


@cache
def load_cities(path: Path = CITIES_CSV) -> tuple[City, ...]:
    with open(path, newline="", encoding="utf-8") as fh:
        return tuple(
            City(
                row["name"],
                row["country_code"],
                float(row["latitude"]),
                float(row["longitude"]),
                int(row["population"]),
            )
            for row in csv.DictReader(fh)
        )


def cities_by_region(world: WorldSpec, radius_km: float) -> dict[str, list[City]]:
    """Each region's cities: those within `radius_km` whose nearest region it is."""
    regions = [(slug, r.latitude, r.longitude) for slug, r in sorted(world.regions.items())]
    out: dict[str, list[City]] = {slug: [] for slug, _, _ in regions}
    for city in load_cities():
        km = {
            slug: great_circle_km(city.latitude, city.longitude, lat, lon)
            for slug, lat, lon in regions
        }
        closest = min(km.values())
        if closest <= radius_km:
            for slug, d in km.items():
                if d <= closest + 1e-6:  # regions at one site share its cities
                    out[slug].append(city)
    return out


@dataclass(slots=True)
class Job:
    """One trace request dressed as a tenant's request."""

    i: int
    trace: TraceRequest
    client: str
    request: Request
    #: The region of the gateway that routed a request sent without a location.
    gateway: str | None = None
    #: Where the client really is (Mix.cities; None: on its region's node) and what
    #: its access path adds to every round trip (ms).
    lat: float | None = None
    lon: float | None = None
    access_ms: float = 0.0
    oracle_ok: bool = False
    physics_ok: bool = False

    def floor_ms(self, world: WorldSpec, region: str) -> float:
        """The speed-of-light round trip from the client to `region`."""
        if self.lat is None or self.lon is None:
            return world.floor_ms(self.client, region)
        r = world.regions[region]
        return physical_rtt_floor_ms(self.lat, self.lon, r.latitude, r.longitude)


def _weighted(rng: random.Random, table: dict):
    keys = list(table)
    return rng.choices(keys, weights=[table[k] for k in keys])[0]


def client_weights(world: WorldSpec, mix: Mix) -> dict[str, float]:
    groups: dict[str, list[str]] = {}
    for slug, r in world.regions.items():
        groups.setdefault(r.geo_group or "?", []).append(slug)
    listed = {g: s for g, s in mix.geo_share.items() if g in groups}
    rest = [g for g in groups if g not in listed]
    left = max(1.0 - sum(listed.values()), 0.0)
    share = dict(listed) | {g: left / len(rest) for g in rest} if rest else dict(listed)
    weights = {}
    for g, slugs in groups.items():
        for s in slugs:
            weights[s] = share.get(g, 0.0) / len(slugs)
    if not any(weights.values()):
        weights = dict.fromkeys(world.regions, 1.0)
    return weights


def gateway_sites(world: WorldSpec) -> list[str]:
    """Where gateways run: every region with a cluster (one gateway each)."""
    return sorted({c.region for c in world.clusters.values()})


def nearest_gateway(world: WorldSpec, client: str) -> str:
    """The gateway a client without a location reaches: the nearest region with a cluster."""
    return min(gateway_sites(world), key=lambda site: (world.rtt_ms(client, site), site))


def make_jobs(trace: list[TraceRequest], world: WorldSpec, mix: Mix, seed: int = 1) -> list[Job]:
    rng = random.Random(seed)
    unlocated = random.Random(seed + 7919)  # its own stream: the others' draws don't move
    placed = random.Random(seed + 15485863)  # the cities' and last miles' own stream
    near = cities_by_region(world, mix.city_radius_km) if mix.cities else {}
    mile_sigma = math.log(mix.last_mile_p95_ms / mix.last_mile_p50_ms) / 1.645
    weights = client_weights(world, mix)
    regions, wts = list(weights), list(weights.values())
    served = {d.model for d in world.deployments.values()}
    models = {m: s for m, s in mix.model_share.items() if m in served}
    models = models or dict.fromkeys(sorted(served), 1.0)
    jobs = []
    for i, tr in enumerate(trace):
        client = rng.choices(regions, weights=wts)[0]
        reg = world.regions[client]
        model = _weighted(rng, models)
        ttft = _weighted(rng, mix.ttft_classes)
        compliance: set[str] = set()
        juris = None
        if (reg.eu_member or reg.eea_member) and rng.random() < mix.eu_only_share_of_eu_clients:
            juris = frozenset({"EU"})
            compliance.add("gdpr")
        if reg.country_code == "US" and rng.random() < mix.hipaa_share_of_us_clients:
            compliance.add("hipaa")
        silent = unlocated.random() < mix.no_location_share
        lat = lon = None
        access = 0.0
        if mix.cities:
            access = mix.last_mile_p50_ms * math.exp(mile_sigma * placed.gauss(0.0, 1.0))
            towns = near.get(client)
            if towns:
                city = placed.choices(towns, weights=[c.population for c in towns])[0]
                lat, lon = city.latitude, city.longitude
                access += ACCESS_INFLATION * physical_rtt_floor_ms(
                    lat, lon, reg.latitude, reg.longitude
                )
        located = not silent and lat is not None
        jobs.append(
            Job(
                i=i,
                trace=tr,
                client=client,
                gateway=nearest_gateway(world, client) if silent else None,
                lat=lat,
                lon=lon,
                access_ms=access,
                request=Request(
                    model=model,
                    input_tokens=tr.input_tokens,
                    max_output_tokens=tr.output_tokens,
                    max_ttft_ms=ttft,
                    max_latency_ms=None if ttft is not None else mix.bulk_latency_ms,
                    compliance=frozenset(compliance),
                    allowed_jurisdictions=juris,
                    priority=rng.choice(mix.priorities),
                    prefer_cost_over_latency=rng.random() < mix.prefer_cost_share,
                    client_region=None if silent or located else client,
                    client_lat=lat if located else None,
                    client_lon=lon if located else None,
                    allow_relaxed_deadline=rng.random() < mix.relaxed_share,
                ),
            )
        )
    return jobs
