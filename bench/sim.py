"""A discrete-event simulation of the mesh, calling the real engine for every decision.

Model of one request (times in ms, from its arrival at the gateway):

    decide (engine, on a snapshot with the live counters of that instant); a plan
       that holds the request (`Plan.hold_ms`) decides again that much later, its
       deadlines shorter by the time held, as the gateway does
    -> travel half the round trip to the backend
    -> wait for a free slot (`concurrency_slots` run at once; in arrival order, or
       with `truth.deadline_queues` the earliest deadline first)
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

With a `Truth` (`--honest`, `bench/truth.py`) the backends stop following the
engine's model: compute times scatter per request as measured, the counters the
engine routes on are the live map's, refreshed every `truth.counter_age_s` of
simulated time (not exact and instant). The in-flight counts go as the gateways share
them: each gateway publishes its own every `truth.inflight_publish_s` and reads
everyone's every `truth.inflight_read_s`, half a publish period out of step; between
reads it knows at once how many requests it has itself sent to each backend and not
seen finish, counts its own part exactly rather than as last published, and projects
everyone's count from its own change since the read (`routing.engine.
projected_in_flight`, as `routing.gateway.live.InFlight.apply` does). Every finished
request is folded into the backend's observed TTFT and decode speed the way the gateway and
`backends.resources.observation` do it — TTFT less the *predicted* network and
queue, so a queue wait the engine did not foresee shows up as a slower backend.
The engine routes on those observed speeds from the next refresh on. With
`truth.deadline_queues` every backend takes its waiting requests in the order of the
priority the gateway sends (`Request.queue_priority`: the earliest deadline first,
without preempting a request that holds a slot), as a vLLM server started with
`--scheduling-policy priority` does.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict
from dataclasses import dataclass, field, replace

from backends.livestate import fold, fold_weight
from backends.world import WorldSpec
from routing.engine import LiveState, Snapshot, get_strategy, projected_in_flight, route

from .truth import Truth
from .workload import Job, gateway_sites, nearest_gateway
from .worlds import engine_backends, latency_map

ARRIVE, FINISH, RETRY = 0, 1, 2  # RETRY: a request the gateway held is routed again
EWMA_ALPHA = 0.1
BLOCK_TOKENS = 512  # Mooncake's hash_ids: one hash per 512-token block
CACHE_BLOCKS = 8192  # KV-cache blocks a backend keeps (LRU): ~4M tokens
#: As the gateway's fold of observed speeds (TESSERACT_OBSERVED_EWMA_ALPHA_PCT = 20,
#: TESSERACT_OBSERVED_TIME_CONSTANT_MS = 1000, backends.resources.MIN_DECODE_TOKENS = 8),
#: with the same weights (`livestate.fold_weight`) but one request at a time, as each
#: ends: the control plane folds every TESSERACT_OBSERVED_INTERVAL_S (2 s), so there
#: an average moves in steps of the interval's mean.
OBSERVED_ALPHA = 0.2
OBSERVED_TIME_CONSTANT_S = 1.0
MIN_DECODE_TOKENS = 8


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
    ttft_ms: float = 0.0  # the profile's, at its reference prompt
    busy: int = 0
    transit: int = 0
    #: requests waiting for a slot, a heap of (*key, k, rtt, t0, arrived): the key is
    #: (priority, arrived) with deadline-ordered queues, else (arrived, event seq)
    waiting: list = field(default_factory=list)
    ewma: float | None = None
    busy_ms: float = 0.0
    cache: OrderedDict | None = None
    observed_ttft: float | None = None
    observed_decode: float | None = None
    sampled_ms: float | None = None  # when the last request folded into the two above ended


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
    service_ms: float = 0.0  # time holding a slot
    wait_ms: float = 0.0  # time waiting for a slot at the backend
    held_ms: float = 0.0  # time held at the gateway before it was sent (`Plan.hold_ms`)

    @property
    def waited_ms(self) -> float:
        """All the time it waited: held at the gateway, then queued at its backend."""
        return self.held_ms + self.wait_ms


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
            ttft_ms=p.ttft_ms,
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
    truth: Truth | None = None,
) -> tuple[list[Outcome], dict[str, _Backend], float]:
    """Replay `jobs` arriving at `arrivals_s`; returns outcomes, backend states, makespan (ms).

    `kv_cache`: backends keep prompt blocks (LRU) and skip prefilling a cached prefix.
    `affinity`: the gateway tells the engine which backend holds the deepest cached
    prefix of the prompt (needs `kv_cache`).
    `truth`: the honest mode (module docstring).
    """
    strat = get_strategy(strategy)
    backends = backends_of(world)
    by_deadline = truth is not None and truth.deadline_queues
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
    predicted: dict[int, tuple[float, float]] = {}  # job -> the plan's (rtt, queue)
    #: job -> when the plan sent it, its predicted TTFT there, and whether that is late
    #: (deadline-ordered queues: `Request.queue_priority`, as the gateway sends it)
    first_token: dict[int, tuple[float, float, bool]] = {}
    seen = load  # what the engine routes on: the true counters, or the live map's
    own: dict[str, dict[str, int]] = {}  # gateway -> backend -> sent, not finished
    gateway_of: dict[int, str] = {}  # job -> the gateway that sent it
    nearest: dict[str, str] = {}
    refresh_at = -math.inf
    engine_view = snapshot
    observed_version = 0
    refreshed_version = 0
    own_at_read: dict[str, dict[str, int]] = {}  # gateway -> its own counts at the read
    gateways = len(gateway_sites(world))
    # The shared in-flight counts: each gateway publishes its own every `publish_ms`
    # (0: a read sees them exact) and reads everyone's every `read_ms`, half a publish
    # period after one (they are not in step).
    publish_ms = truth.inflight_publish_s * 1000.0 if truth is not None else 0.0
    read_ms = (truth.inflight_read_s or truth.counter_age_s) * 1000.0 if truth is not None else 0.0
    read_offset_ms = publish_ms / 2.0
    publish_at = read_at = -math.inf
    published: tuple[dict, dict[str, dict[str, int]]] = ({}, {})
    own_published: dict[str, dict[str, int]] = {}  # gateway -> its counts in the read

    def read_inflight(now: float) -> None:
        """Everyone's in-flight counts as a gateway reads them from Redis at `now`."""
        nonlocal seen, read_at, own_at_read, own_published, publish_at, published
        if publish_ms and now >= publish_at:
            publish_at = (math.floor(now / publish_ms) + 1.0) * publish_ms
            published = (dict(load), {g: dict(m) for g, m in own.items()})
        if now >= read_at:
            read_at = (math.floor((now - read_offset_ms) / read_ms) + 1.0) * read_ms
            read_at += read_offset_ms
            own_at_read = {g: dict(m) for g, m in own.items()}
            if publish_ms:
                seen, own_published = dict(published[0]), published[1]
            else:
                seen, own_published = dict(load), own_at_read

    def refresh(now: float) -> None:
        """The live map's observed speeds as a gateway reads them at `now`."""
        nonlocal refresh_at, engine_view, refreshed_version
        age_ms = truth.counter_age_s * 1000.0
        refresh_at = (math.floor(now / age_ms) + 1.0) * age_ms
        if observed_version != refreshed_version:
            refreshed_version = observed_version
            engine_view = Snapshot(
                [
                    replace(
                        e,
                        state=LiveState(
                            observed_ttft_ms=backends[e.id].observed_ttft,
                            observed_decode_tokens_per_s=backends[e.id].observed_decode,
                        ),
                    )
                    for e in engine_list
                ],
                latency,
                observed_version,
            )

    def observe(b: _Backend, k: int, ttft_ms: float, e2e_ms: float, now: float) -> None:
        """Fold one request, finished at `now`, into `b`'s observed speeds (as the
        gateway does)."""
        nonlocal observed_version
        tr = jobs[k].trace
        span_s = None if b.sampled_ms is None else (now - b.sampled_ms) / 1000.0
        b.sampled_ms = now
        weight = fold_weight(1, span_s, OBSERVED_ALPHA, OBSERVED_TIME_CONSTANT_S)
        net, queue = predicted.pop(k)
        # The gateway times the backend from where it stands: the client's access path
        # is not in what it observes.
        backend_ms = ttft_ms - jobs[k].access_ms - net - queue
        expected = b.floor_ms + tr.input_tokens * b.ms_per_in
        if backend_ms > 0 and expected > 0:
            sample = backend_ms * b.ttft_ms / expected
            prior = b.ttft_ms if b.observed_ttft is None else b.observed_ttft
            b.observed_ttft = fold(prior, sample, weight)
        if tr.output_tokens - 1 >= MIN_DECODE_TOKENS and e2e_ms > ttft_ms:
            sample = (tr.output_tokens - 1) * 1000.0 / (e2e_ms - ttft_ms)
            prior = 1000.0 / b.ms_per_out if b.observed_decode is None else b.observed_decode
            b.observed_decode = fold(prior, sample, weight)
        observed_version += 1

    if truth is not None:
        engine_list = engine_backends(world)
        latency = latency_map(world)

    def publish(b: _Backend) -> None:
        load[b.id] = (b.busy, len(b.waiting) + b.transit, b.ewma)

    def start(b: _Backend, now: float, k: int, rtt: float, t0: float, wait: float = 0.0) -> None:
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
        decode = tr.output_tokens * b.ms_per_out
        if truth is not None:
            prefill, decode = truth.service_ms(
                b.id, k, b.floor_ms, (tr.input_tokens - cached) * b.ms_per_in, decode
            )
        service = prefill + decode
        b.busy += 1
        publish(b)
        o = outcomes[k]
        o.cached_tokens = cached
        o.service_ms = service
        o.wait_ms = wait
        o.ttft_ms = now + prefill + rtt / 2 - t0
        o.e2e_ms = now + service + rtt / 2 - t0
        b.busy_ms += service
        seq += 1
        heapq.heappush(events, (now + service, seq, FINISH, (b, service, tr.blocks, k)))

    def handle(ev) -> None:
        now, ev_seq, kind, data = ev
        if kind == RETRY:
            decide(now=now, k=data[0], t0=data[1], fallback=data[2])
        elif kind == ARRIVE:
            b, k, rtt, t0 = data
            b.transit -= 1
            if b.busy < b.slots:
                start(b, now, k, rtt, t0)
            else:
                if by_deadline:  # the priority the gateway sends, then arrival
                    sent, ttft, late = first_token.pop(k)
                    priority = jobs[k].request.queue_priority(
                        t0, sent_ms=sent, first_token_ms=ttft, late=late
                    )
                    key = (priority, now)
                else:
                    key = (now, ev_seq)  # arrival order
                heapq.heappush(b.waiting, (*key, k, rtt, t0, now))
                publish(b)
        else:
            b, service, blocks, k = data
            b.busy -= 1
            if truth is not None:
                observe(b, k, outcomes[k].ttft_ms, outcomes[k].e2e_ms, now)
                own[gateway_of.pop(k)][b.id] -= 1
            b.ewma = service if b.ewma is None else b.ewma + EWMA_ALPHA * (service - b.ewma)
            if b.cache is not None and blocks:
                for h in blocks:
                    b.cache[h] = True
                    b.cache.move_to_end(h)
                    owner[h] = b.id
                while len(b.cache) > CACHE_BLOCKS:
                    b.cache.popitem(last=False)
            if b.waiting:
                _, _, k, rtt, t0, arrived = heapq.heappop(b.waiting)
                start(b, now, k, rtt, t0, now - arrived)
            else:
                publish(b)

    def decide(k: int, now: float, t0: float, fallback=None) -> None:
        """Route job `k` at `now` (it arrived at `t0`): send it, or hold it and decide
        again when the plan says (`Plan.hold_ms`), as the gateway does. `fallback`: the
        plan that held it, taken if routing again finds nothing."""
        nonlocal seq
        job = jobs[k]
        req = job.request if now == t0 else job.request.held_for(now - t0)
        models = (req.model, *req.fallback_models)
        if affinity and job.trace.blocks:
            req = _with_affinity(req, job, backends, owner)
        view = seen
        if truth is not None:
            if now >= refresh_at:
                refresh(now)
            if now >= read_at or (publish_ms and now >= publish_at):
                read_inflight(now)
            gw = job.gateway
            if gw is None:
                gw = nearest.get(job.client)
                if gw is None:
                    gw = nearest[job.client] = nearest_gateway(world, job.client)
            mine = own.setdefault(gw, {})
            if mine:
                # As `InFlight.apply`: everyone's count as read, with this gateway's own
                # part as it was at the read (exact) rather than as it had published it.
                view = dict(seen)
                base = own_at_read.get(gw, {})
                shared = own_published.get(gw, {})
                for bid, count in mine.items():
                    at_read = base.get(bid, 0)
                    stale = shared.get(bid, 0)
                    if count != at_read or stale != at_read:
                        fl, qu, ms = seen[bid]
                        live = fl + qu - stale + at_read
                        total = projected_in_flight(live, count, at_read, gateways)
                        qu = min(qu, total)
                        view[bid] = (total - qu, qu, ms)
        snap = engine_view.with_load(view, models=models)
        if job.gateway is not None:
            snap = snap.at_gateway(job.gateway)  # no location: routed from its gateway
        plan = route(snap, req, strat, max_fallbacks=0)
        if plan.primary is None:
            plan = fallback
            if plan is None:
                return
        elif plan.hold_ms > 0:
            seq += 1
            heapq.heappush(events, (now + plan.hold_ms, seq, RETRY, (k, t0, plan)))
            return
        o = outcomes[k]
        b = backends[plan.primary.backend_id]
        o.backend = b.id
        o.degraded = plan.status == "degraded"
        o.held_ms = now - t0
        if truth is not None:
            pred = plan.primary.prediction
            # The gateway times the backend from when it sent the request.
            predicted[k] = (pred.rtt_ms, pred.queue_ms + o.held_ms)
            if by_deadline:
                first_token[k] = (o.held_ms, pred.ttft_ms, not plan.primary.meets_sla)
            gateway_of[k] = gw
            mine[b.id] = mine.get(b.id, 0) + 1
        tr = job.trace
        o.cost_usd = (tr.input_tokens * b.price_in + tr.output_tokens * b.price_out) / 1e6
        rtt = rtt_of(job.client, b.region) + job.access_ms
        b.transit += 1
        publish(b)
        seq += 1
        heapq.heappush(events, (now + rtt / 2, seq, ARRIVE, (b, k, rtt, t0)))

    for k in order:
        now = arrivals_s[k] * 1000.0
        while events and events[0][0] <= now:
            handle(heapq.heappop(events))
        decide(k, now, now)
    makespan = 0.0
    while events:
        ev = heapq.heappop(events)
        makespan = ev[0]
        handle(ev)
    for o in outcomes:
        if o.backend is not None:
            o.met = o.job.request.met_by(o.ttft_ms, o.e2e_ms)
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
