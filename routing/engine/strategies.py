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

from typing import Any, ClassVar

import numpy as np

from .decision import Decision
from .mesh import ModelIndex

#: `deadline`'s finish band: a candidate meeting the deadline is "in band" when its
#: predicted decode takes at most this share of the request's own deadline (TTFT, else
#: latency) longer than the quickest decode among the candidates meeting it. In-band
#: candidates rank first (after the margin, SAFETY_SHARE), the nearest of them first.
#: Larger: more locality, and a request may stream its answer more slowly than the
#: fastest backend would; smaller: more requests chase the fast-decoding chips, which
#: herd (bench/README.md, "Honest mode"). 0.5 keeps a backend whose decode slowed 5x out
#: of the band of a short answer's 300 ms deadline.
FINISH_BAND_SHARE = 0.5
#: `deadline` spreads a request once the backend it would take has at most this share
#: of its slots free (in flight and queued as this gateway projects them): it goes to
#: the least loaded candidate of the same groups (SAFETY_SHARE margin, decode band).
#: Below it a full backend's queue would miss deadlines the scatter of service times
#: decides; above it requests leave a backend that still had room (bench/README.md).
SPREAD_WHEN_FREE = 0.1
#: How far a late request (nothing meets its deadline) reaches beyond the nearest
#: candidate for an earlier first token: this share of the first token predicted at
#: the nearest, at least LATE_REACH_MIN_MS more round trip. Its answer is late anyway,
#: and the earliest first token keeps the lateness smallest. A request that waits long
#: for its first token (a big model's) may cross to a neighbouring region that answers
#: sooner; one that would answer soon stays near, off the quick backends of other
#: regions, whose slots serve requests still in time there (bench/README.md, "Late
#: requests" and "How far a late request may go").
LATE_REACH_SHARE = 0.15
LATE_REACH_MIN_MS = 5.0
#: A candidate meets the deadline "with margin" when its prediction leaves this share
#: of the deadline unused: predictions are medians, service times scatter around them
#: and the network jitters. `deadline` ranks candidates with margin first. 40%, not the
#: 30% set when backends served their queues in arrival order: with deadline-ordered
#: queues and peer speeds it measured +0.04-0.09 point at every load of both honest
#: worlds (bench/README.md, "Peers").
SAFETY_SHARE = 0.4
#: `deadline` holds a request at the gateway, rather than send it to a nearly full
#: backend (SPREAD_WHEN_FREE, after spreading), in steps of HOLD_STEP_MS, routing it
#: again after each, while its deadline less the step is still at least HOLD_LOOSE
#: times the first token (else the whole answer) predicted there; a request with no
#: deadline for at most HOLD_CAP_MS in all. A loose request sent into a full mesh
#: takes a slot a tight one, arriving in the next few ms, would have needed; held a
#: little, it goes when a slot frees and still has time to spare (bench/README.md,
#: "Holding loose requests at the gateway").
HOLD_STEP_MS = 25.0
HOLD_LOOSE = 4.0
HOLD_CAP_MS = 500.0


class Strategy:
    name: ClassVar[str] = ""
    sla_aware: ClassVar[bool] = True
    description: ClassVar[str] = ""

    def rank(self, d: Decision, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def hold_ms(self, d: Decision, top: int) -> float:
        """How long the gateway should hold the request and route it again rather
        than send it now to `top` (the winner's position); 0: send it."""
        return 0.0

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
    """The nearest backend that meets the deadline with margin, within a finish band,
    until it is nearly full; then the least loaded one with margin (the default).

    1. Only candidates predicted to meet the SLA (TTFT and end-to-end) compete; those
       that meet it with SAFETY_SHARE of the deadline unused come first.
    2. Inside each of those two groups, a candidate is *in band* when its predicted
       decode is at most FINISH_BAND_SHARE of the request's deadline longer than the
       quickest decode among all of them. In-band candidates come first, then the rest;
       then the nearest (lowest network RTT), a session's affinity backend, the earlier
       predicted finish, the less loaded, the cheaper.
    3. When the winner of step 2 has at most SPREAD_WHEN_FREE of its slots free, the
       request spreads: inside the same groups (margin, then band) the least loaded
       candidate wins, ties to the earlier finish. A request that no candidate meets
       with margin does not spread: it keeps step 2's order.
    4. A request with no deadline at all is served by the earliest predicted finish:
       there is nothing to trade speed against.
    5. A late request (the plan relaxes its deadline because nothing can meet it) goes
       to the earliest predicted first token among the candidates within its reach
       (LATE_REACH_SHARE of the first token predicted at the nearest) that have more
       than SPREAD_WHEN_FREE of their slots free; a candidate out of reach or nearly
       full comes after them, one both after that;
       ties to the nearest, a session's affinity backend, the earlier finish.
    6. When the winner is still nearly full and the request is loose (its deadline,
       less HOLD_STEP_MS, at least HOLD_LOOSE times the first token predicted there;
       with no deadline, held under HOLD_CAP_MS so far), the plan asks the gateway to
       hold it HOLD_STEP_MS and route it again (`Plan.hold_ms`).
    With `prefer_cost_over_latency`, the cheapest candidate meeting the SLA with
    margin wins (with no deadline, the cheapest); at one price the nearest, then the
    earlier finish, the less loaded.
    A late request that prefers cost is routed as any late request: no candidate
    meets its SLA, and the cheapest one's queue is where every such request would wait.

    Why margin first: predictions are medians; a real backend's time to first token
    scatters around it (bench/README.md, "Honest mode"), and a candidate predicted to
    answer just in time misses about as often as it makes it. Why nearest next: the
    shared counters are a quarter of a second to a second old while an 8B request holds
    a slot for about a quarter of a second; distance does not change with the counters,
    clients spread by geography as the capacity is placed, and an idle mesh serves each
    request from nearby. The band is on decode, not on the whole finish, because the
    observed TTFT the prefill prediction scales with carries the queues nobody foresaw,
    while observed decode speed is measured between the first and the last token, past
    any queue; it keeps a request off a backend that would stream its answer far more
    slowly than another that also meets its deadline (a slowed backend loses its traffic
    while still in time, spread or not). Why spread when nearly full: the nearest rule
    alone fills each nearby backend to the edge of feasibility, where the scatter misses
    (at 90% load it trailed finishing first by 6-17 points). Each gateway projects
    everyone's in-flight counts from its own sends (`mesh.projected_in_flight`), so a
    backend filling up is seen within the second and the spread does not herd. Finishing
    first instead (`fastest_feasible`) piles requests with slack on the fast chips and
    loses at every load of the honest benchmark. Why not spread a request without
    margin: every candidate is then near its deadline, and the least loaded one is
    often the one it barely reaches (a neighbouring region's, predicted a few ms inside
    the deadline), where the scatter misses about half the time, while the nearly
    full one's queue, if it has one, is in its prediction already. Why hold a loose
    request: the bursts of a full mesh are shorter than its slack; sent at once it
    takes a slot the next tight request needed, held a few tens of ms it finds one
    free (bench/README.md, "Holding loose requests at the gateway").
    """

    name = "deadline"
    description = "nearest SLA-feasible with margin, within a decode band; least loaded when full"

    def rank(self, d, cand):
        r = d.request
        idx = d.idx
        total = d.total[cand]
        load = idx.load[cand]
        held = d.held
        affinity = (cand != held).astype(float) if held is not None else idx.zeros[cand]
        if d.late:
            rtt = d.rtt[cand]
            near = int(np.argmin(rtt))
            own_wait = LATE_REACH_SHARE * float(d.ttft[cand][near])
            far = rtt > float(rtt[near]) + max(LATE_REACH_MIN_MS, own_wait)
            aside = far.astype(float) + _nearly_full(idx, cand)
            return self._by_keys(
                cand,
                total,
                aside,
                d.ttft[cand],
                rtt,
                affinity,
                total,
                load,
                d.price[cand],
                need=d.need,
            )
        margin = _with_margin(d, cand)
        short = 2.0 * ~margin
        if r.prefer_cost_over_latency:
            price = d.price[cand]
            return self._by_keys(cand, total, short, price, d.rtt[cand], total, load, need=d.need)
        deadline = r.first_deadline_ms
        if deadline is None:
            return self._by_keys(cand, total, total, d.rtt[cand], load, d.price[cand], need=d.need)
        decode = d.decode[cand]
        first = short + (decode > float(decode.min()) + FINISH_BAND_SHARE * deadline)
        order, score = self._by_keys(
            cand, total, first, d.rtt[cand], affinity, total, load, d.price[cand], need=d.need
        )
        top = int(order[0])
        if not _nearly_full(idx, top) or not margin.any():
            return order, score
        # Spread: the same groups (margin, band), the least loaded first; a queue shows
        # in the predicted finish, the tie-break (`load` stops at a full backend).
        return self._by_keys(cand, total, first, load, total, need=d.need)

    def hold_ms(self, d, top):
        """HOLD_STEP_MS while the winner is nearly full and the request loose enough
        (the constants' comment); never for a late request."""
        if d.late or not _nearly_full(d.idx, top):
            return 0.0
        r = d.request
        if r.max_ttft_ms is not None:
            slack, predicted = r.max_ttft_ms, float(d.ttft[top])
        elif r.max_latency_ms is not None:
            slack, predicted = r.max_latency_ms, float(d.total[top])
        else:
            return HOLD_STEP_MS if r.held_ms + HOLD_STEP_MS <= HOLD_CAP_MS else 0.0
        return HOLD_STEP_MS if slack - HOLD_STEP_MS >= HOLD_LOOSE * predicted else 0.0


def _nearly_full(idx: ModelIndex, at: int | np.ndarray) -> Any:
    """Whether the backend(s) at `at` (a position or an array of them) have at most
    SPREAD_WHEN_FREE of their slots free, in flight and queued as this gateway projects
    them: where `deadline` spreads a request, and what a late request leaves aside."""
    return idx.free_slots[at] <= SPREAD_WHEN_FREE * idx.slots[at]


def _with_margin(d: Decision, cand: np.ndarray) -> np.ndarray:
    """Candidates predicted to meet each of the request's deadlines that is set (TTFT,
    end-to-end) with SAFETY_SHARE of it unused; all of them when neither is set."""
    r = d.request
    keep = 1.0 - SAFETY_SHARE
    ok = np.ones(cand.size, dtype=bool)
    if r.max_ttft_ms is not None:
        ok &= d.ttft[cand] <= keep * r.max_ttft_ms
    if r.max_latency_ms is not None:
        ok &= d.total[cand] <= keep * r.max_latency_ms
    return ok


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
    predicted to finish first, queue included (nothing else: no band, no distance).
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
