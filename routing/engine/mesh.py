"""The world snapshot the engine decides on, with per-model indexes built once.

A `Snapshot` is immutable. Building one does the per-backend work (profiles turned
into per-token costs, static exclusions such as DOWN or drained, tag sets) so that
a decision is a handful of vector operations over the candidates of one model.
Live counters (in-flight, queued) change far more often than anything else, so
`Snapshot.with_load()` makes a new snapshot that shares every static index and cache
and only replaces the counters: the gateway and the simulator call it per decision.

Why numpy: a per-candidate Python loop costs ~0.5 µs a candidate, ~240 µs for 500;
the same decision as array operations is a few tens of µs. It is the only
dependency beyond the standard library.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .inputs import DEGRADED_FACTOR, OUT_COOLING, OUT_PROVIDER, Backend, Health, LatencyMap

#: Codes of the exclusions a snapshot decides on its own, per backend.
STATIC_OK, NOT_LOADED, DRAINED, DOWN, COOLING, PROVIDER_OUT = 0, 1, 2, 3, 4, 5
_OUT = {OUT_COOLING: COOLING, OUT_PROVIDER: PROVIDER_OUT}

_CACHE_LIMIT = 4096


def projected_in_flight(live: float, mine: int, mine_at_read: int, gateways: int) -> float:
    """A backend's in-flight count now, as one of `gateways` gateway processes can tell.

    `live` is the count the last read of the shared counts gave (every gateway's, as of
    that read), `mine_at_read` this process's own count at that read, `mine` its count
    now. The others send and finish too, and nobody tells this process until the next
    read, which comes every quarter second (every second from the live maps alone)
    while a small model's request holds its slot for about as long. So this process
    takes its own change since the read for its share
    of everyone's: at a share of 25%, each request it sends counts for four. A process
    that had no share takes an equal one, 1 / `gateways`: when a backend looks free,
    each gateway claims its part of it, not all of it, and the mesh no longer piles
    onto it in the second after it looked idle (bench/README.md, "Counters a second
    old"). Alone (`gateways` 1) a process counts exactly what it sent.
    """
    if mine == mine_at_read:
        return max(live, mine)
    share = min(max(mine_at_read / max(live, 1.0), 1.0 / max(gateways, 1)), 1.0)
    return max(live + (mine - mine_at_read) / share, mine, 0.0)


#: How far a backend's observed speed may stray from its peers' (the same chip serving
#: the same model at the same profile) before the engine believes the difference: two
#: estimates of one speed folded from the measured per-request scatter (the llmperf
#: requests, log-sd 0.22 of a 70B's TTFT) over the gateway's fold (weight 0.2 a
#: request) differ by up to ~20% from noise alone (two standard deviations of their
#: difference). Within it a backend is predicted at its peers' speed; beyond it, at
#: its own (a slow node, a hot region). bench/README.md, "Peers".
PEER_BAND = 0.2


def peer_speeds(backends: Sequence[Backend]) -> list[tuple[float, float]]:
    """Each backend's predicted speed: (its TTFT over its profile's, decode tokens/s).

    Observed speeds are averages of a few requests' and scatter as much as the
    requests do; peers — deployments of one chip and profile — run at one speed, so
    the median of their observed speeds (each as a ratio to the profile, on the
    logarithm) is the better estimate of each one's, unless a backend's own departs
    from it by more than PEER_BAND. A backend not yet observed keeps its profile: a
    peer that slowed must not slow its unobserved neighbours with it.
    """
    own = []  # (peer group, TTFT ratio, decode ratio), a ratio None where not observed
    ttft_logs: dict[tuple, list[float]] = {}
    decode_logs: dict[tuple, list[float]] = {}
    for b in backends:
        p, s = b.profile, b.state
        key = (b.chip, p.ttft_ms, p.reference_prompt_tokens, p.prefill_tokens_per_s,
               p.decode_tokens_per_s)  # fmt: skip
        ttft = _ratio(s.observed_ttft_ms, p.ttft_ms)
        speed = _ratio(s.observed_decode_tokens_per_s, p.decode_tokens_per_s)
        own.append((key, ttft, speed))
        if ttft is not None:
            ttft_logs.setdefault(key, []).append(math.log(ttft))
        if speed is not None:
            decode_logs.setdefault(key, []).append(math.log(speed))
    peers_ttft = {k: math.exp(statistics.median(v)) for k, v in ttft_logs.items()}
    peers_decode = {k: math.exp(statistics.median(v)) for k, v in decode_logs.items()}
    return [
        (
            _believed(ttft, peers_ttft.get(key)),
            b.profile.decode_tokens_per_s * _believed(speed, peers_decode.get(key)),
        )
        for b, (key, ttft, speed) in zip(backends, own, strict=True)
    ]


def _ratio(observed: float | None, profile: float) -> float | None:
    """An observed speed over its profile's (None: not observed)."""
    return observed / profile if observed and profile > 0 else None


def _believed(own: float | None, peers: float | None) -> float:
    """A backend's ratio to its profile: its peers' where its own is within PEER_BAND
    of theirs, else its own; 1 (the profile) while it has none."""
    if own is None:
        return 1.0
    if peers is not None and 1.0 / (1.0 + PEER_BAND) < own / peers < 1.0 + PEER_BAND:
        return peers
    return own


class ModelIndex:
    """Every backend of one model, as parallel arrays (position = index in `ids`)."""

    __slots__ = (
        "_based",
        "_mask_cache",
        "_rtt_cache",
        "ahead",
        "any_degraded",
        "any_mean_service",
        "any_waiting",
        "available",
        "backends",
        "base_ms",
        "countries",
        "free_slots",
        "full",
        "has_mean_service",
        "health_factor",
        "ids",
        "in_flight",
        "load",
        "mean_service",
        "model",
        "ms_per_in",
        "ms_per_out",
        "n",
        "observed_ttft",
        "pos",
        "price_in",
        "price_out",
        "queue_limit",
        "queued",
        "regions",
        "slots",
        "static_code",
        "static_ok",
        "zeros",
    )

    def __init__(self, model: str, backends: Iterable[Backend]) -> None:
        self.model = model
        self.backends = tuple(sorted(backends, key=lambda b: b.id))
        self.ids = tuple(b.id for b in self.backends)
        self.pos = {bid: i for i, bid in enumerate(self.ids)}
        self.regions = tuple(b.region for b in self.backends)
        self.countries = tuple(b.country for b in self.backends)
        self.n = len(self.backends)
        f = np.array
        health_factor, base, per_in, per_out, obs, mean, code = [], [], [], [], [], [], []
        for b, (ratio, decode) in zip(self.backends, peer_speeds(self.backends), strict=True):
            p, s = b.profile, b.state
            health_factor.append(DEGRADED_FACTOR if s.health is Health.DEGRADED else 1.0)
            base.append(p.ttft_floor_ms * ratio)
            per_in.append(1000.0 * ratio / p.prefill_tokens_per_s)
            per_out.append(1000.0 / decode)
            obs.append(s.observed_ttft_ms or p.ttft_ms)
            mean.append(s.mean_service_ms if s.mean_service_ms is not None else math.nan)
            code.append(
                NOT_LOADED if not s.loaded
                else DRAINED if s.drained
                else _OUT[s.out] if s.out
                else DOWN if s.health is Health.DOWN
                else STATIC_OK
            )  # fmt: skip
        self.health_factor = f(health_factor, dtype=float)
        self.base_ms = f(base, dtype=float)
        self.ms_per_in = f(per_in, dtype=float)
        self.ms_per_out = f(per_out, dtype=float)
        self.price_in = f([b.profile.price_input_per_mtok for b in self.backends], dtype=float)
        self.price_out = f([b.profile.price_output_per_mtok for b in self.backends], dtype=float)
        self.slots = f([max(b.concurrency_slots, 1) for b in self.backends], dtype=float)
        self.queue_limit = f([b.queue_limit for b in self.backends], dtype=float)
        self.mean_service = f(mean, dtype=float)
        self.has_mean_service = ~np.isnan(self.mean_service)
        self.any_mean_service = bool(np.count_nonzero(self.has_mean_service))
        self.any_degraded = bool(np.count_nonzero(self.health_factor != 1.0))
        self.zeros = np.zeros(self.n)
        self.observed_ttft = f(obs, dtype=float)
        self.static_code = f(code, dtype=np.int8)
        self.static_ok = self.static_code == STATIC_OK
        self._rtt_cache: dict[object, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._mask_cache: dict[object, np.ndarray] = {}
        self._based: tuple[Mapping[str, tuple], ModelIndex] | None = None
        self._set_load(
            f([b.state.in_flight for b in self.backends], dtype=float),
            f([b.state.queued for b in self.backends], dtype=float),
        )

    def _set_load(self, in_flight: np.ndarray, queued: np.ndarray) -> None:
        self.in_flight = in_flight
        self.queued = queued
        self.load = np.minimum(in_flight / self.slots, 1.0)
        self.free_slots = np.maximum(self.slots - in_flight - queued, 0.0)
        # Slot releases needed before this request starts (0: a slot is free).
        self.ahead = np.maximum(in_flight + queued + 1.0 - self.slots, 0.0)
        self.any_waiting = bool(np.count_nonzero(self.ahead))
        self.full = queued >= self.queue_limit
        self.available = self.static_ok & ~self.full

    def with_load(
        self, in_flight: np.ndarray, queued: np.ndarray, mean_service: np.ndarray | None = None
    ) -> ModelIndex:
        clone = object.__new__(ModelIndex)
        for name in ModelIndex.__slots__:
            setattr(clone, name, getattr(self, name))
        clone._based = None
        if mean_service is not None:
            clone.mean_service = mean_service
            clone.has_mean_service = ~np.isnan(mean_service)
            clone.any_mean_service = bool(np.count_nonzero(clone.has_mean_service))
        clone._set_load(in_flight, queued)
        return clone

    def based_on(self, base: Mapping[str, tuple]) -> ModelIndex:
        """This index with the counters of `base` (as `Snapshot.with_load`), built once
        for as long as the same `base` object comes back: the gateway's read of
        everyone's in-flight counts stands for a quarter of a second, hundreds of
        requests, each of which then lays only its own few counts over it."""
        got = self._based
        if got is not None and got[0] is base:
            return got[1]
        loaded = _loaded(self, base)
        self._based = (base, loaded)
        return loaded

    #: The per-backend arrays that `_set_load` does not derive.
    _STATIC_ARRAYS = (
        "base_ms", "has_mean_service", "health_factor", "mean_service", "ms_per_in",
        "ms_per_out", "observed_ttft", "price_in", "price_out", "queue_limit", "slots",
        "static_code", "static_ok", "zeros",
    )  # fmt: skip

    @classmethod
    def merged(cls, public: ModelIndex | None, own: ModelIndex) -> ModelIndex:
        """`public`'s backends followed by `own`'s, by concatenating their arrays: a
        few µs per index, where building one from the backends costs µs per backend."""
        if public is None:
            return own
        m = object.__new__(cls)
        m.model = own.model
        m.backends = public.backends + own.backends
        m.ids = public.ids + own.ids
        m.pos = dict(public.pos)
        m.pos.update((bid, public.n + i) for i, bid in enumerate(own.ids))
        m.regions = public.regions + own.regions
        m.countries = public.countries + own.countries
        m.n = public.n + own.n
        for name in cls._STATIC_ARRAYS:
            setattr(m, name, np.concatenate((getattr(public, name), getattr(own, name))))
        m.any_mean_service = public.any_mean_service or own.any_mean_service
        m.any_degraded = public.any_degraded or own.any_degraded
        m._rtt_cache = {}
        m._mask_cache = {}
        m._based = None
        m._set_load(
            np.concatenate((public.in_flight, own.in_flight)),
            np.concatenate((public.queued, own.queued)),
        )
        return m

    # ---------------------------------------------------------------- cached masks

    def rtt_from(self, key: object, compute) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rtt with inf where unknown, reachable mask, rtt with 0 where unknown), memoised."""
        got = self._rtt_cache.get(key)
        if got is None:
            if len(self._rtt_cache) > _CACHE_LIMIT:
                self._rtt_cache.clear()
            arr = np.array([compute(r) for r in self.regions], dtype=float)
            reach = np.isfinite(arr)
            got = self._rtt_cache[key] = (arr, reach, np.where(reach, arr, 0.0))
        return got

    def mask(self, key: object, predicate) -> np.ndarray:
        """A boolean array over the backends, memoised by `key` (a hashable request part)."""
        arr = self._mask_cache.get(key)
        if arr is None:
            if len(self._mask_cache) > _CACHE_LIMIT:
                self._mask_cache.clear()
            arr = self._mask_cache[key] = np.array(
                [predicate(b) for b in self.backends], dtype=bool
            )
        return arr


class Snapshot:
    """The backends by model, the latency map, a version, and where the deciding
    gateway sits; immutable.

    `gateway_region`: the region of the gateway that routes with this snapshot. A
    request that gives no client location is taken to come from there (its network is
    at least the gateway's round trip to the backend). None: unknown, and such a
    request is routed with zero network time (only for worlds with no gateway, as in
    unit tests).

    Private clusters: a backend with an `org_id` belongs to that organization alone.
    The per-model indexes (`index(model)`) hold the public backends only; for every
    organization with private backends of a model, one more index holds the public
    ones followed by its own, built here once by concatenating the public index's
    arrays with those of its own backends. `index(model, org_id)` picks that one (two
    dictionary lookups), so a decision never even sees another organization's
    private backends: they cannot be chosen, excluded, counted or named.
    """

    __slots__ = (
        "_by_id", "_by_model", "_client_cache", "_private", "_private_keys", "_private_models",
        "backends", "gateway_region", "known_regions", "latency", "version",
    )  # fmt: skip

    def __init__(
        self,
        backends: Iterable[Backend],
        latency: LatencyMap,
        version: int | str = 0,
        *,
        gateway_region: str | None = None,
    ) -> None:
        self.backends = tuple(backends)
        self.latency = latency
        self.version = version
        self.gateway_region = gateway_region
        #: every region this world has heard of: its backends' and its latency map's
        self.known_regions = frozenset(
            {b.region for b in self.backends}.union(
                latency.coords, (r for pair in latency.rtt for r in pair)
            )
        )
        groups: dict[str, list[Backend]] = {}
        private: dict[tuple[int, str], list[Backend]] = {}
        for b in self.backends:
            if b.org_id is None:
                groups.setdefault(b.model, []).append(b)
            else:
                private.setdefault((b.org_id, b.model), []).append(b)
        self._by_model = {m: ModelIndex(m, bs) for m, bs in groups.items()}
        self._private = {
            (org, m): ModelIndex.merged(self._by_model.get(m), ModelIndex(m, bs))
            for (org, m), bs in private.items()
        }
        #: model -> the (org, model) keys of its private indexes
        self._private_keys: dict[str, tuple[tuple[int, str], ...]] = {}
        models: dict[int, set[str]] = {}
        for org, m in self._private:
            self._private_keys[m] = (*self._private_keys.get(m, ()), (org, m))
            models.setdefault(org, set()).add(m)
        self._private_models = {org: frozenset(ms) for org, ms in models.items()}
        self._by_id = {b.id: b for b in self.backends}
        if len(self._by_id) != len(self.backends):
            raise ValueError("backend ids must be unique")
        self._client_cache: dict[tuple[float, float], tuple[str, float]] = {}

    @property
    def models(self) -> frozenset[str]:
        """The models public backends serve."""
        return frozenset(self._by_model)

    def models_for(self, org_id: int | None) -> frozenset[str]:
        """The models `org_id` can route to: the public ones and its private ones."""
        own = self._private_models.get(org_id) if org_id is not None else None
        return self.models | own if own else self.models

    def index(self, model: str, org_id: int | None = None) -> ModelIndex | None:
        """`model`'s candidates as `org_id` sees them (None: public backends only)."""
        if org_id is not None and self._private:
            idx = self._private.get((org_id, model))
            if idx is not None:
                return idx
        return self._by_model.get(model)

    def visible(self, backend_id: str, org_id: int | None) -> bool:
        """Whether `org_id` may know of this backend (a public one, or its own)."""
        b = self._by_id.get(backend_id)
        return b is not None and (b.org_id is None or b.org_id == org_id)

    def backend(self, backend_id: str) -> Backend:
        return self._by_id[backend_id]

    def with_load(
        self,
        load: Mapping[str, tuple],
        *,
        models: Iterable[str] | None = None,
        version: int | str | None = None,
        org_id: int | None = None,
        base: Mapping[str, tuple] | None = None,
    ) -> Snapshot:
        """A snapshot with new live counters for the backends in `load`.

        Values are `(in_flight, queued)` or `(in_flight, queued, mean_service_ms)`
        (None: no estimate). Static indexes and caches are shared. With `models`, only
        those models' counters are refreshed (the others keep the old ones): the
        simulator uses this to pay only for the model it is about to route. With
        `org_id`, only the indexes that organization routes on are refreshed.
        With `base`, the counters are `base`'s with `load`'s laid over them, and each
        index takes `base`'s once for as long as the same object is passed
        (`ModelIndex.based_on`): a read of shared counts, reused by many decisions
        that each change a few.
        """
        clone = self._clone()
        if version is not None:
            clone.version = version
        by_model = dict(self._by_model)
        private = dict(self._private) if self._private else self._private
        for m in self._by_model.keys() | self._private_keys.keys() if models is None else models:
            own = (org_id, m) if org_id is not None else None
            if own is not None and own in private:
                private[own] = _loaded(private[own], load, base)
                continue
            idx = self._by_model.get(m)
            if idx is not None:
                by_model[m] = _loaded(idx, load, base)
            if org_id is None:
                for key in self._private_keys.get(m, ()):
                    private[key] = _loaded(private[key], load, base)
        clone._by_model = by_model
        clone._private = private
        return clone

    def at_gateway(self, region: str | None) -> Snapshot:
        """The same snapshot as seen by a gateway in `region` (indexes shared)."""
        clone = self._clone()
        clone.gateway_region = region
        return clone

    def _clone(self) -> Snapshot:
        clone = object.__new__(Snapshot)
        for name in Snapshot.__slots__:
            setattr(clone, name, getattr(self, name))
        return clone

    def client_origin(self, lat: float, lon: float) -> tuple[str, float]:
        """Nearest known region to a client given by coordinates, and the floor to it."""
        key = (round(lat, 3), round(lon, 3))
        got = self._client_cache.get(key)
        if got is None:
            if len(self._client_cache) > _CACHE_LIMIT:
                self._client_cache.clear()
            got = self._client_cache[key] = self.latency.nearest_region(lat, lon)
        return got


def _loaded(
    idx: ModelIndex, load: Mapping[str, tuple], base: Mapping[str, tuple] | None = None
) -> ModelIndex:
    """`idx` with the counters of its backends in `base`, then in `load` over them (see
    `Snapshot.with_load`); `idx` itself when neither names one of its backends."""
    if base is not None:
        idx = idx.based_on(base)
    pos = idx.pos
    if len(load) < idx.n:  # a request's own few counts, not everyone's
        found = [(i, got) for bid, got in load.items() if (i := pos.get(bid)) is not None]
    else:
        found = [(i, got) for i, bid in enumerate(idx.ids) if (got := load.get(bid)) is not None]
    if not found:
        return idx
    fl, qu = idx.in_flight.copy(), idx.queued.copy()
    ms = None
    for i, got in found:
        fl[i], qu[i] = got[0], got[1]
        if len(got) > 2:
            if ms is None:
                ms = idx.mean_service.copy()
            ms[i] = math.nan if got[2] is None else got[2]
    return idx.with_load(fl, qu, ms)
