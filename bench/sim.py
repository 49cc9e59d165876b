"""A discrete-event simulation of the mesh, calling the real engine for every decision.

Model of one request (times in ms, from its arrival at the gateway):

    decide (engine, on a snapshot with the live counters of that instant)
    -> travel half the round trip to the backend
    -> wait for a free slot (FIFO per backend; `concurrency_slots` run at once)
    -> prefill (fixed part + uncached input tokens / prefill speed), first token
    -> decode (output tokens / decode speed); the slot is freed
    -> the first and the last token travel half the round trip back.

Round trips are drawn per request from a log-normal fitted to the pair's measured
p50 and p95 (never under the speed-of-light floor); compute is deterministic, at
the profile's speed, whatever the slot occupancy (the world sizes slots so that
per-request speed holds). The gateway's counters are exact and instant:
`in_flight` = requests holding a slot, `queued` = requests waiting at the backend
plus those travelling to it, and `mean_service_ms` an EWMA of finished requests'
slot time. A real gateway sees them a little late; see README "Limits".
"""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from backends.world import WorldSpec
from routing.engine import Snapshot, get_strategy, route

from .workload import Job

ARRIVE, FINISH = 0, 1
EWMA_ALPHA = 0.1
BLOCK_TOKENS = 512  # Mooncake's hash_ids: one hash per 512-token block
CACHE_BLOCKS = 8192  # KV-cache blocks a backend keeps (LRU): ~4M tokens


@dataclass(slots=True)
class _Backend:
    id: str
    model: str
    region: str
    slots: int
    floor_ms: float
    ms_per_in: float
    ms_per_out: float
    price_in: float
    price_out: float
    busy: int = 0
    transit: int = 0
    waiting: deque = field(default_factory=deque)
    ewma: float | None = None
    busy_ms: float = 0.0
    cache: OrderedDict | None = None


@dataclass(slots=True)
class Outcome:
    job: Job
    backend: str | None = None
    ttft_ms: float = math.inf
    e2e_ms: float = math.inf
    cost_usd: float = 0.0
    met: bool = False
    degraded: bool = False
    cached_tokens: int = 0


def backends_of(world: WorldSpec) -> dict[str, _Backend]:
    out = {}
    for d in world.deployments.values():
        p = d.profile
        out[d.slug] = _Backend(
            id=d.slug,
            model=d.model,
            region=world.clusters[d.cluster].region,
            slots=d.concurrency_slots,
            floor_ms=p.ttft_floor_ms,
            ms_per_in=1000.0 / p.prefill_tokens_per_s,
            ms_per_out=1000.0 / p.decode_tokens_per_s,
            price_in=p.price_input_per_mtok,
            price_out=p.price_output_per_mtok,
        )
    return out


class RttSampler:
    """Per-request RTT: log-normal through the pair's p50 and p95, floored by physics."""

    def __init__(self, world: WorldSpec, rng: random.Random, jitter: bool = True) -> None:
        self.world, self.rng, self.jitter = world, rng, jitter
        self._params: dict[tuple[str, str], tuple[float, float, float]] = {}

    def __call__(self, src: str, dst: str) -> float:
        got = self._params.get((src, dst))
        if got is None:
            if src == dst:
                p50 = p95 = self.world.rtt_ms(src, dst)
            else:
                p50, p95 = self.world.rtt[(src, dst)]
            sigma = math.log(p95 / p50) / 1.645 if p95 > p50 > 0 else 0.0
            got = self._params[(src, dst)] = (p50, sigma, self.world.floor_ms(src, dst))
        p50, sigma, floor = got
        if not self.jitter or sigma == 0.0:
            return p50
        return max(p50 * math.exp(sigma * self.rng.gauss(0.0, 1.0)), floor)


def simulate(
    world: WorldSpec,
    snapshot: Snapshot,
    jobs: list[Job],
    arrivals_s: list[float],
    strategy: str,
    *,
    seed: int = 1,
    affinity: bool = False,
    kv_cache: bool = False,
    rtt_jitter: bool = True,
) -> tuple[list[Outcome], dict[str, _Backend], float]:
    """Replay `jobs` arriving at `arrivals_s`; returns outcomes, backend states, makespan (ms).

    `kv_cache`: backends keep prompt blocks (LRU) and skip prefilling a cached prefix.
    `affinity`: the gateway tells the engine which backend holds the deepest cached
    prefix of the prompt (needs `kv_cache`).
    """
    strat = get_strategy(strategy)
    backends = backends_of(world)
    if kv_cache or affinity:
        for b in backends.values():
            b.cache = OrderedDict()
    owner: dict[int, str] = {}  # block hash -> backend that last served it (gateway affinity map)
    rtt_of = RttSampler(world, random.Random(seed), rtt_jitter)
    load: dict[str, tuple] = {b.id: (0, 0, None) for b in backends.values()}
    events: list[tuple[float, int, int, object]] = []
    seq = 0
    outcomes = [Outcome(j) for j in jobs]
    order = sorted(range(len(jobs)), key=lambda k: arrivals_s[k])

    def publish(b: _Backend) -> None:
        load[b.id] = (b.busy, len(b.waiting) + b.transit, b.ewma)

    def start(b: _Backend, now: float, k: int, rtt: float, t0: float) -> None:
        nonlocal seq
        job = jobs[k]
        tr = job.trace
        cached = 0
        if b.cache is not None and tr.blocks:
            for h in tr.blocks:
                if h not in b.cache:
                    break
                cached += 1
            cached = min(cached * BLOCK_TOKENS, tr.input_tokens)
        prefill = b.floor_ms + (tr.input_tokens - cached) * b.ms_per_in
        service = prefill + tr.output_tokens * b.ms_per_out
        b.busy += 1
        publish(b)
        o = outcomes[k]
        o.cached_tokens = cached
        o.ttft_ms = now + prefill + rtt / 2 - t0
        o.e2e_ms = now + service + rtt / 2 - t0
        b.busy_ms += service
        seq += 1
        heapq.heappush(events, (now + service, seq, FINISH, (b, service, tr.blocks)))

    def handle(ev) -> None:
        now, _, kind, data = ev
        if kind == ARRIVE:
            b, k, rtt, t0 = data
            b.transit -= 1
            if b.busy < b.slots:
                start(b, now, k, rtt, t0)
            else:
                b.waiting.append((k, rtt, t0))
                publish(b)
        else:
            b, service, blocks = data
            b.busy -= 1
            b.ewma = service if b.ewma is None else b.ewma + EWMA_ALPHA * (service - b.ewma)
            if b.cache is not None and blocks:
                for h in blocks:
                    b.cache[h] = True
                    b.cache.move_to_end(h)
                    owner[h] = b.id
                while len(b.cache) > CACHE_BLOCKS:
                    b.cache.popitem(last=False)
            if b.waiting:
                k, rtt, t0 = b.waiting.popleft()
                start(b, now, k, rtt, t0)
            else:
                publish(b)

    for k in order:
        now = arrivals_s[k] * 1000.0
        while events and events[0][0] <= now:
            handle(heapq.heappop(events))
        job = jobs[k]
        req = job.request
        models = (req.model, *req.fallback_models)
        if affinity and job.trace.blocks:
            req = _with_affinity(req, job, backends, owner)
        snap = snapshot.with_load(load, models=models)
        if job.gateway is not None:
            snap = snap.at_gateway(job.gateway)  # no location: routed from its gateway
        plan = route(snap, req, strat, max_fallbacks=0)
        o = outcomes[k]
        if plan.primary is None:
            continue
        b = backends[plan.primary.backend_id]
        o.backend = b.id
        o.degraded = plan.status == "degraded"
        tr = job.trace
        o.cost_usd = (tr.input_tokens * b.price_in + tr.output_tokens * b.price_out) / 1e6
        rtt = rtt_of(job.client, b.region)
        b.transit += 1
        publish(b)
        seq += 1
        heapq.heappush(events, (now + rtt / 2, seq, ARRIVE, (b, k, rtt, now)))
    makespan = 0.0
    while events:
        ev = heapq.heappop(events)
        makespan = ev[0]
        handle(ev)
    for o in outcomes:
        r = o.job.request
        if o.backend is not None:
            o.met = (r.max_ttft_ms is None or o.ttft_ms <= r.max_ttft_ms) and (
                r.max_latency_ms is None or o.e2e_ms <= r.max_latency_ms
            )
    return outcomes, backends, makespan


def _with_affinity(req, job: Job, backends: dict[str, _Backend], owner: dict[int, str]):
    """The gateway's affinity map: who last served this prompt's deepest known block."""
    from dataclasses import replace

    blocks = job.trace.blocks
    for h in reversed(blocks):
        bid = owner.get(h)
        if bid is None or backends[bid].model != req.model:
            continue
        cache = backends[bid].cache
        n = 0
        for x in blocks:
            if x not in cache:
                break
            n += 1
        if n:
            return replace(
                req,
                affinity_backend_id=bid,
                cached_prefix_tokens=min(n * BLOCK_TOKENS, req.input_tokens),
            )
        break
    return req
