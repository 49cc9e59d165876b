"""The engine's inputs: plain, immutable values.

Nothing here knows about Django, Redis or HTTP. `backends/snapshot.py` (the one seam)
turns ORM rows and live counters into these types; the gateway, `/v1/route` and the
trace-driven simulator in `bench/` all hand the same types to `route()`.

Units, everywhere in the engine: milliseconds, tokens, tokens per second, and USD per
one million tokens (`*_per_mtok`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol, SupportsFloat, SupportsInt

#: Light in optical fibre covers about 200,000 km/s, i.e. 200 km per millisecond.
FIBER_KM_PER_MS = 200.0
EARTH_RADIUS_KM = 6371.0088

#: Whitepaper: a DEGRADED backend's backend-and-network time is multiplied by 1.5.
DEGRADED_FACTOR = 1.5

#: `LiveState.out`: why a backend nothing says is ill is out of routing for now.
#: Its provider answered 429: it rests until the provider's Retry-After.
OUT_COOLING = "cooling"
#: Its provider rejected our credential (401/403), has none, or an operator disabled it.
OUT_PROVIDER = "provider_out"


class Health(enum.StrEnum):
    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    DOWN = "DOWN"


class ProfileFigures(Protocol):
    """Anything that carries a profile's six figures: a catalog row, a world spec."""

    @property
    def ttft_ms(self) -> SupportsFloat: ...
    @property
    def reference_prompt_tokens(self) -> SupportsInt: ...
    @property
    def prefill_tokens_per_s(self) -> SupportsFloat: ...
    @property
    def decode_tokens_per_s(self) -> SupportsFloat: ...
    @property
    def price_input_per_mtok(self) -> SupportsFloat: ...  # a Decimal in the catalog
    @property
    def price_output_per_mtok(self) -> SupportsFloat: ...


@dataclass(frozen=True, slots=True)
class Profile:
    """How fast and how dear one chip serves one model, for a lone request.

    `ttft_ms` is the backend-side time to first token (no network, no queue) for a
    prompt of `reference_prompt_tokens`. The part of it that prefill does not explain
    (`ttft_floor_ms`) is a fixed per-request cost.
    """

    ttft_ms: float
    reference_prompt_tokens: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    price_input_per_mtok: float
    price_output_per_mtok: float

    @classmethod
    def of(cls, figures: ProfileFigures) -> Profile:
        return cls(
            ttft_ms=float(figures.ttft_ms),
            reference_prompt_tokens=int(figures.reference_prompt_tokens),
            prefill_tokens_per_s=float(figures.prefill_tokens_per_s),
            decode_tokens_per_s=float(figures.decode_tokens_per_s),
            price_input_per_mtok=float(figures.price_input_per_mtok),
            price_output_per_mtok=float(figures.price_output_per_mtok),
        )

    @property
    def ttft_floor_ms(self) -> float:
        return max(
            self.ttft_ms - 1000.0 * self.reference_prompt_tokens / self.prefill_tokens_per_s, 0.0
        )


@dataclass(frozen=True, slots=True)
class LiveState:
    """What the resource map knows about one backend right now.

    `observed_ttft_ms` is an EWMA of backend-side TTFT (queue and network excluded)
    normalised to the profile's reference prompt length; when present it scales the
    whole prefill model by `observed / profile.ttft_ms`. `observed_decode_tokens_per_s`
    replaces the profile's decode speed. `mean_service_ms` is an EWMA of how long a
    request holds a slot; without it, queue wait is estimated with the incoming
    request's own service time. `out` (`OUT_COOLING`, `OUT_PROVIDER`, or "") takes a
    backend out of routing for a reason of its provider's: it stays a candidate, so
    that a plan can say why it was not used and that the request's policy did allow it.
    """

    health: Health = Health.HEALTHY
    in_flight: int = 0
    queued: int = 0
    observed_ttft_ms: float | None = None
    observed_decode_tokens_per_s: float | None = None
    mean_service_ms: float | None = None
    loaded: bool = True
    drained: bool = False
    out: str = ""


@dataclass(frozen=True, slots=True)
class Backend:
    """One routable deployment: a model on a chip in a cluster in a region.

    `certifications` are lower-case tags ("hipaa", "soc2", "gdpr", ...);
    `jurisdictions` are the legal areas the site belongs to ("FR", "EU", "EEA").
    `org_id` is None for a public backend; otherwise the backend is an organization's
    private cluster, which only that organization's requests may see or route to.
    A backend accepts up to `max_queue` requests waiting beyond its
    `concurrency_slots` (None: as many as it has slots); past that it is full.
    """

    id: str
    model: str
    region: str
    country: str
    profile: Profile
    concurrency_slots: int
    cluster: str = ""
    chip: str = ""
    owner: str = ""
    certifications: frozenset[str] = frozenset()
    jurisdictions: frozenset[str] = frozenset()
    max_queue: int | None = None
    state: LiveState = field(default_factory=LiveState)
    org_id: int | None = None

    @property
    def queue_limit(self) -> int:
        return self.concurrency_slots if self.max_queue is None else self.max_queue


def build_backend(
    *,
    id: str,
    model: str,
    region: str,
    country: str,
    figures: ProfileFigures,
    concurrency_slots: int,
    cluster: str = "",
    chip: str = "",
    owner: str = "",
    certifications: Iterable[str] = (),
    jurisdictions: Iterable[str] = (),
    state: LiveState | None = None,
    org_id: int | None = None,
) -> Backend:
    """The one builder of an engine `Backend`, whatever the source: the catalog's rows
    (`backends/snapshot.py`) and the world spec (`bench/worlds.py`) both call it.
    Certification tags are lower-cased; prices become floats."""
    return Backend(
        id=id,
        model=model,
        region=region,
        country=country,
        profile=Profile.of(figures),
        concurrency_slots=concurrency_slots,
        cluster=cluster,
        chip=chip,
        owner=owner,
        certifications=frozenset(c.lower() for c in certifications),
        jurisdictions=frozenset(jurisdictions),
        state=LiveState() if state is None else state,
        org_id=org_id,
    )


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def physical_rtt_floor_ms(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """There and back at the speed of light in fibre: no network can beat it."""
    return 2 * great_circle_km(lat1, lon1, lat2, lon2) / FIBER_KM_PER_MS


@dataclass(frozen=True, slots=True)
class LatencyMap:
    """Client location -> backend region round-trip times (p50, ms).

    `rtt` holds measured pairs `(src, dst)`; a pair missing from it, but present the
    other way round, is taken as symmetric; inside one region it is `intra_region_ms`.
    `coords` (region -> (lat, lon)) gives the physical floor for any pair, and lets a
    client given by coordinates be placed: it is attached to the nearest region that
    has measurements, plus the floor from the client to that region.
    A pair with neither measurement nor coordinates is unreachable (infinite RTT).
    """

    rtt: Mapping[tuple[str, str], float]
    coords: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    intra_region_ms: float = 1.0

    def rtt_ms(self, src: str, dst: str) -> float:
        if src == dst:
            return self.intra_region_ms
        ms = self.rtt.get((src, dst))
        if ms is None:
            ms = self.rtt.get((dst, src))
        return math.inf if ms is None else ms

    def floor_ms(self, src: str, dst: str) -> float:
        a, b = self.coords.get(src), self.coords.get(dst)
        if a is None or b is None:
            return 0.0
        return physical_rtt_floor_ms(a[0], a[1], b[0], b[1])

    def nearest_region(self, lat: float, lon: float) -> tuple[str, float]:
        """The closest region with coordinates, and the physical floor to reach it."""
        best, best_ms = "", math.inf
        for slug, (rlat, rlon) in self.coords.items():
            ms = physical_rtt_floor_ms(lat, lon, rlat, rlon)
            if ms < best_ms or (ms == best_ms and slug < best):
                best, best_ms = slug, ms
        return best, best_ms


#: A deadline-ordered queue's deadline for a request that sets none and has no default
#: of its own (`Request.queue_priority`): it waits behind the others for up to a minute.
NO_DEADLINE_MS = 60_000.0

#: A late request's place in a deadline-ordered queue, as a multiple of its predicted
#: first token (`Request.queue_priority`): behind the requests still in time whose
#: deadlines fall soon after that first token, for an answer that is late anyway.
#: Measured in the honest benchmark (bench/README, "A late request yields its place in
#: the queue"): 1.25x gains half as much, from 2x the late requests wait too long.
LATE_QUEUE_FACTOR = 1.5


@dataclass(frozen=True, slots=True)
class Request:
    """What the caller asks for. Every constraint left as None is no constraint.

    * `compliance`: certifications the backend must all hold.
    * `allowed_jurisdictions` / `allowed_countries` / `allowed_regions`: residency;
      each one given must match (a backend matches `allowed_jurisdictions` when it
      belongs to at least one of them, e.g. {"EU"}).
    * `max_price_per_mtok`: the blended price of *this* request, USD per 1M tokens:
      (input_tokens·price_in + max_output_tokens·price_out) / (input + output tokens).
    * `priority`: 1 (lowest) to 5 (highest).
    * Affinity: `affinity_backend_id` holds `cached_prefix_tokens` of this session's
      prompt in its KV cache, so it skips prefilling them; every other backend pays
      the full prefill (the recompute cost of moving the session).
    * Client location: `client_region`, or `client_lat`/`client_lon`.
    * `org_id`: the calling organization. Its private backends join the public ones;
      no other organization's private backend is ever a candidate, an exclusion or a
      count in the plan. None: public backends only.
    * Degradation the caller allows when nothing meets the SLA: `fallback_models`,
      tried in order; then `allow_relaxed_deadline` (serve a policy-allowed backend
      late rather than refuse; which one is the strategy's late rule, `deadline`'s the
      nearest). Compliance and residency are never relaxed.
    * `held_ms`: how long the gateway has already held the request before this
      decision (`held_for`); its deadlines are what is left of them.
    """

    model: str
    input_tokens: int
    max_output_tokens: int
    max_ttft_ms: float | None = None
    max_latency_ms: float | None = None
    compliance: frozenset[str] = frozenset()
    allowed_jurisdictions: frozenset[str] | None = None
    allowed_countries: frozenset[str] | None = None
    allowed_regions: frozenset[str] | None = None
    priority: int = 3
    prefer_cost_over_latency: bool = False
    max_price_per_mtok: float | None = None
    session_id: str | None = None
    affinity_backend_id: str | None = None
    cached_prefix_tokens: int = 0
    client_region: str | None = None
    client_lat: float | None = None
    client_lon: float | None = None
    fallback_models: tuple[str, ...] = ()
    allow_relaxed_deadline: bool = False
    org_id: int | None = None
    held_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.priority <= 5:
            raise ValueError(f"priority must be 1..5, not {self.priority}")
        if self.input_tokens < 0 or self.max_output_tokens < 0:
            raise ValueError("token counts must be >= 0")

    @property
    def first_deadline_ms(self) -> float | None:
        """The deadline that comes first: the first token's, else the whole answer's."""
        return self.max_ttft_ms if self.max_ttft_ms is not None else self.max_latency_ms

    def held_for(self, ms: float) -> Request:
        """The same request after the gateway held it `ms` longer: every deadline it
        sets is `ms` shorter (they count from its arrival), `held_ms` `ms` longer."""

        def less(deadline: float | None) -> float | None:
            return None if deadline is None else deadline - ms

        return replace(
            self,
            max_ttft_ms=less(self.max_ttft_ms),
            max_latency_ms=less(self.max_latency_ms),
            held_ms=self.held_ms + ms,
        )

    def met_by(self, ttft_ms: float, total_ms: float) -> bool:
        """Whether a first token at `ttft_ms` and a whole answer at `total_ms` meet
        every deadline this request sets."""
        return (self.max_ttft_ms is None or ttft_ms <= self.max_ttft_ms) and (
            self.max_latency_ms is None or total_ms <= self.max_latency_ms
        )

    def queue_priority(
        self,
        arrived_ms: float,
        default_deadline_ms: float = NO_DEADLINE_MS,
        sent_ms: float = 0.0,
        first_token_ms: float = 0.0,
        late: bool = False,
    ) -> int:
        """Where this request belongs in a backend's queue that serves the earliest
        deadline first: its first deadline (TTFT, else end-to-end, else
        `default_deadline_ms`), never earlier than its first token predicted at that
        backend (`first_token_ms` after it was sent, `sent_ms` after its arrival), as
        an absolute time in ms on the clock of `arrived_ms` (its arrival at the
        gateway).

        Lower is sooner, as vLLM's priority scheduling (`--scheduling-policy priority`)
        orders its waiting requests (ties: arrival). With the gateway's wall clock in
        ms, requests from every gateway compare on one scale. The floor: a request
        cannot claim more urgency than its first token can have, so a deadline nothing
        meets does not put it ahead of every other tenant's requests. A request
        predicted `late` there (served late, as the client allowed) goes further back,
        to `LATE_QUEUE_FACTOR` times its first token: its answer is late anyway, and the
        requests still in time just behind it keep theirs. A request the gateway held
        keeps the deadline it arrived with (`held_ms` restores it).
        """
        deadline = self.first_deadline_ms
        deadline = default_deadline_ms if deadline is None else deadline + self.held_ms
        if late:
            first_token_ms *= LATE_QUEUE_FACTOR
        return int(arrived_ms + max(deadline, self.held_ms + sent_ms + first_token_ms))
