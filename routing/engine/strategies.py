"""Interchangeable ways to rank the candidates that survived the filters.

A strategy gets a `Decision` (the request, the model index and the per-candidate
predictions as arrays) and the positions of the candidates still in the running, and
returns them best first with a score each (lower is better). Hard filters — model,
compliance, residency, health, drain, price, capacity — run before any strategy, so
no strategy can break a policy. `sla_aware` strategies also only see candidates
predicted to meet the SLA; the baselines are not, because the gateways they stand
for do not predict latency.

Registry: `STRATEGIES` (name -> class); `get_strategy(name)` makes a fresh instance
(round robin keeps a counter, so a simulator wants its own).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .decision import Decision

#: `deadline` counts two candidates as finishing together when their predicted finish
#: differs by less than TIE_SHARE of the request's own deadline (TTFT, else latency),
#: and at least TIE_MS; ties go to the less loaded, then the cheaper backend.
TIE_MS = 1.0
TIE_SHARE = 0.1
TIE_SHARE_CONTENDED = 1.0
#: A candidate "meets the deadline with margin" when its prediction leaves this share
#: of the deadline unused; only such candidates take requests away from the fastest
#: one (ties, reservations): predictions are p50s and the network jitters.
SAFETY_SHARE = 0.1
#: The fastest candidate counts as contended from this busy share on (in-flight + queued
#: over slots); the tie band widens from TIE_SHARE to TIE_SHARE_CONTENDED past it.
CONTENTION_FROM = 0.5

#: Share of a backend's slots that a request of this priority leaves free when another
#: candidate also meets its deadline: the last free slots go to higher priorities and
#: to requests that have no other way to make their deadline.
RESERVE_BY_PRIORITY = {1: 0.20, 2: 0.15, 3: 0.10, 4: 0.05, 5: 0.02}


class Strategy:
    name: ClassVar[str] = ""
    sla_aware: ClassVar[bool] = True
    description: ClassVar[str] = ""

    def rank(self, d: Decision, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    @staticmethod
    def _by_keys(
        cand: np.ndarray, score: np.ndarray, *keys: np.ndarray, need: int = 4
    ) -> tuple[np.ndarray, np.ndarray]:
        """Order `cand` by keys (first most significant), position as the last tie-break.

        Only the head matters to the plan: with many candidates, those whose first key
        is above the `need`-th smallest cannot be in the head, so they are appended
        unsorted (their scores stay available for explanations).
        """
        head_size = max(need, 16)
        if cand.size > 4 * head_size:
            first = keys[0]
            kth = np.partition(first, head_size)[head_size]
            head = first <= kth
            tail = ~head
            sub = np.lexsort(tuple(k[head] for k in reversed(keys)))
            order = np.concatenate((cand[head][sub], cand[tail]))
            return order, np.concatenate((score[head][sub], score[tail]))
        order = np.lexsort(tuple(reversed(keys)))  # stable: equal keys keep position order
        return cand[order], score[order]


class Deadline(Strategy):
    """Modified shortest-job-first with constraints (the default).

    1. Only candidates predicted to meet the SLA (TTFT and end-to-end) compete.
    2. Among them the one predicted to finish first wins, with a tolerance: candidates
       finishing within `tie_band_ms` of the fastest tie, and ties go to the less
       loaded, then the cheaper backend. The band is TIE_SHARE (10%) of the request's
       own deadline while the fastest candidate is at most CONTENTION_FROM (half)
       busy, widening to TIE_SHARE_CONTENDED (100%) as it fills. An idle mesh serves
       everyone as fast as it can; a busy one spreads the requests that have slack
       and keeps fast capacity for those that have none.
    3. Priority decides who gets scarce capacity: a request does not take one of a
       backend's last RESERVE_BY_PRIORITY[p] free slots (nor queue there) while
       another candidate meets its deadline with margin. The reserve shrinks as
       priority rises; a request with no such alternative takes the slot.
    4. Only candidates that meet the deadline with margin (SAFETY_SHARE of it unused:
       predictions are p50s) may take a request from the fastest one (steps 2, 3).
    5. A late request (the plan relaxes its deadline because nothing can meet it) is
       spread like a contended one: it has lost its SLA already and must not take
       fast capacity from requests that can still make theirs.
    With `prefer_cost_over_latency`, the cheapest candidate meeting the SLA wins
    (latency, then load, break ties).

    The trace benchmark (bench/README.md) is why: pure finish-first piles requests
    with slack — and late ones — onto the nearest backend and starves tight deadlines.
    """

    name = "deadline"
    description = "finish first among SLA-feasible; slack and priority share fast capacity"

    def rank(self, d, cand):
        idx, r = d.idx, d.request
        total = d.total[cand]
        price = d.price[cand]
        load = idx.load[cand]
        # A late request (relaxed deadline) has already lost its SLA: it must not take
        # scarce fast capacity from requests that can still make theirs.
        safe = None if d.late else _with_margin(d, cand)  # None: every candidate is safe
        reserve = RESERVE_BY_PRIORITY[r.priority]
        reserved = None
        if reserve > 0.0:
            reserved = (idx.free_slots[cand] - 1.0) < reserve * idx.slots[cand]
            # Step aside only for an alternative that meets the deadline with margin.
            alternative = ~reserved if safe is None else safe & ~reserved
            if reserved.any() and alternative.any():
                d.reserved = cand[reserved]
            else:
                reserved = None
        if r.prefer_cost_over_latency:
            first = price if reserved is None else price + reserved * 1e15
            return self._by_keys(cand, total, first, total, load, need=d.need)
        j = int((total if reserved is None else np.where(reserved, np.inf, total)).argmin())
        i = int(cand[j])
        busy = 1.0 if d.late else float(idx.in_flight[i] + idx.queued[i]) / float(idx.slots[i])
        tie = total <= float(total[j]) + tie_band_ms(r, busy)
        if safe is not None:
            tie &= safe
        tie[j] = True
        # One sort key carries the classes, most significant first: reserved (+1e15),
        # outside the tie band (+ whole ms of the predicted finish), no margin (+0.5).
        first = np.where(tie, 0.0, np.floor(total / TIE_MS) + 1.0)
        if safe is not None:
            first += 0.5 * ~safe
        if reserved is not None:
            first += reserved * 1e15
        return self._by_keys(cand, total, first, load, price, total, need=d.need)


def _with_margin(d, cand: np.ndarray) -> np.ndarray | None:
    """Candidates predicted to meet the deadlines with SAFETY_SHARE of them to spare
    (None: the request has no deadline, so all of them)."""
    r = d.request
    ok = None
    if r.max_ttft_ms is not None:
        ok = d.ttft[cand] <= (1.0 - SAFETY_SHARE) * r.max_ttft_ms
    if r.max_latency_ms is not None:
        lat = d.total[cand] <= (1.0 - SAFETY_SHARE) * r.max_latency_ms
        ok = lat if ok is None else ok & lat
    return ok


def tie_band_ms(request, busy: float = 0.0) -> float:
    """How much later than the fastest candidate still counts as finishing first.

    TIE_SHARE of the request's deadline while the fastest candidate is at most half
    busy; past that the band widens linearly to TIE_SHARE_CONTENDED when it is full,
    so contended fast capacity goes to the requests that cannot be served elsewhere.
    """
    deadline = request.max_ttft_ms if request.max_ttft_ms is not None else request.max_latency_ms
    if deadline is None:
        return TIE_MS
    over = min(max((busy - CONTENTION_FROM) / (1.0 - CONTENTION_FROM), 0.0), 1.0)
    share = TIE_SHARE + (TIE_SHARE_CONTENDED - TIE_SHARE) * over
    return max(TIE_MS, share * deadline)


class Seed(Strategy):
    """The whitepaper's formula, exactly; quirks kept (see DESIGN.md).

    S_final = f_load · f_cost · f_priority · f_health · S_base, S_base = L_backend · C_token,
    with L_backend = predicted prefill + decode (ms, this request), C_token = blended
    USD per token, f_health 1.5 when DEGRADED, f_priority = 1/P, f_cost = 1000·C_token
    when prefer_cost_over_latency, f_load = 1 + Q/10 if the queue wait Q > 100 ms
    else 1 + load%/100. Lower wins. Quirks: a zero-price backend scores 0 and beats
    everything; 1/P multiplies every candidate alike, so it never reorders them.
    The SLA filter uses the whitepaper's expected latency, which is our `total`.
    """

    name = "seed"
    description = "whitepaper formula, quirks included"

    def rank(self, d, cand):
        idx, req = d.idx, d.request
        c_token = d.price[cand] / 1e6
        l_backend = d.prefill[cand] + d.decode[cand]
        q = d.queue[cand]
        f_load = np.where(q > 100.0, 1.0 + q / 10.0, 1.0 + idx.load[cand])  # load% / 100
        f_cost = 1000.0 * c_token if req.prefer_cost_over_latency else 1.0
        f_health = idx.health_factor[cand]
        score = f_load * f_cost * (1.0 / req.priority) * f_health * (l_backend * c_token)
        return self._by_keys(cand, score, score, need=d.need)


class FastestFeasible(Strategy):
    """A strong simple rule: among the candidates predicted to meet the SLA, the one
    predicted to finish first, queue included (nothing else: no tie band, no reserve).
    With no such candidate (a late request) the fastest predicted finish overall."""

    name = "fastest_feasible"
    description = "fastest predicted finish (queue included) among SLA-feasible"

    def rank(self, d, cand):
        total = d.total[cand]
        return self._by_keys(cand, total, total, d.rtt[cand], need=d.need)


class NearestFeasible(Strategy):
    """A strong simple rule: the lowest network RTT among the candidates predicted to
    meet the SLA, ties to the faster predicted finish. With no such candidate (a late
    request) the nearest overall."""

    name = "nearest_feasible"
    description = "lowest RTT among SLA-feasible"

    def rank(self, d, cand):
        rtt = d.rtt[cand]
        return self._by_keys(cand, rtt, rtt, d.total[cand], need=d.need)


class Nearest(Strategy):
    """The lowest network RTT; at a shared site (equal RTT) the faster chip for this
    request (predicted prefill + decode, blind to the queue), not the first id."""

    name, sla_aware = "nearest", False
    description = "lowest network RTT from the client"

    def rank(self, d, cand):
        rtt = d.rtt[cand]
        return self._by_keys(cand, rtt, rtt, d.prefill[cand] + d.decode[cand], need=d.need)


class RoundRobin(Strategy):
    name, sla_aware = "round_robin", False
    description = "rotate over the allowed backends"

    def __init__(self) -> None:
        self._turn = 0

    def rank(self, d, cand):
        k = self._turn % cand.size
        self._turn += 1
        order = np.roll(cand, -k)
        return order, np.arange(order.size, dtype=float)


class LeastLoaded(Strategy):
    name, sla_aware = "least_loaded", False
    description = "fewest (in-flight + queued) per slot"

    def rank(self, d, cand):
        idx = d.idx
        busy = (idx.in_flight[cand] + idx.queued[cand]) / idx.slots[cand]
        return self._by_keys(cand, busy, busy, need=d.need)


class LowestLatency(Strategy):
    """What latency-based gateways do: the backend with the lowest observed TTFT EWMA
    (the profile's TTFT when nothing is observed), blind to the client's network path
    and to the queue it is about to join."""

    name, sla_aware = "lowest_latency", False
    description = "lowest observed backend TTFT"

    def rank(self, d, cand):
        obs = d.idx.observed_ttft[cand]
        return self._by_keys(cand, obs, obs, need=d.need)


class Cheapest(Strategy):
    name, sla_aware = "cheapest", False
    description = "lowest blended price for this request"

    def rank(self, d, cand):
        price = d.price[cand]
        return self._by_keys(cand, price, price, need=d.need)


STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s
    for s in (
        Deadline, FastestFeasible, NearestFeasible, Seed, Nearest, RoundRobin, LeastLoaded,
        LowestLatency, Cheapest,
    )
}  # fmt: skip
DEFAULT_STRATEGY = "deadline"
BASELINES = (
    "fastest_feasible", "nearest_feasible", "nearest", "round_robin", "least_loaded",
    "lowest_latency", "cheapest",
)  # fmt: skip

_shared: dict[str, Strategy] = {}


def get_strategy(name: str) -> Strategy:
    """A fresh instance of the named strategy."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; one of {sorted(STRATEGIES)}") from None


def shared_strategy(name: str) -> Strategy:
    """The process-wide instance `route(strategy="name")` uses."""
    s = _shared.get(name)
    if s is None:
        s = _shared[name] = get_strategy(name)
    return s
