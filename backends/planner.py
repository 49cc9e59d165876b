"""The placement planner: which model to load where, and which copy to unload.

A pure function of plain values — demand by (client region × model), the deployments
(cluster, region, model, loaded, slots, capacity used, cold start), each cluster's
capacity, an RTT map and the recent history of actions — that returns the actions it
proposes, each with a human-readable reason and its benefit. It imports no Django, no
Redis and no HTTP client, reads no clock (`now` is an argument) and is unit-tested on
hand-made inputs (`tests/control/test_planner.py`, `tests/control/test_placement.py`);
an import-linter contract keeps it so. `backends.placement` is the service around it:
it gathers the inputs from the database and Redis, and applies what this proposes.

The rules
---------

**Demand.** Every request of the window counts for its model (the one asked for) and
its client region: `constraints["client_region"]`, or the gateway's own region
(`TESSERACT_GATEWAY_REGION`) when the client gave none. A loaded copy *serves* a
(region, model) demand when it is the nearest routable loaded copy of that model to
that region (by RTT; ties go to more slots, then the slug).

**Capacity** is counted in accelerators (`Cluster.accelerators`). A loaded model keeps
its weights in bf16 (2 bytes per parameter, as the world's cold start assumes) on
half of each accelerator's memory, the other half being left to the KV cache of its
concurrent requests: `ceil(2 × parameters_b / (memory_gb / 2))` accelerators, with 80 GB
(an H100) where the chip's memory is not recorded — 8B: 1, 70B: 4, 405B: 21. Every
loaded deployment of a cluster uses capacity, drained or down ones included; a load
must fit in what is left (plus what this plan's unloads free in the same cluster).

**Benefit** of loading a candidate: for every region with demand for its model, the
RTT from that region to the nearest loaded copy minus the RTT to the candidate (a
saving under `MIN_SAVED_MS` per request counts as none; a model with no copy at all
costs `NO_COPY_MS` per request), times the requests per minute of the window; scaled
by the share of the next window the copy will be warm (`1 − cold start / window`: a
copy serves nothing while its weights load); divided by the accelerators it uses.
Unit: milliseconds of latency saved per minute of traffic, per accelerator. Loads are
picked greedily, best benefit first (ties: more slots, then the slug), re-scoring the
rest after every pick because each load moves the "nearest copy" of its model.

**Unloads.** A routable loaded copy that no request of the window ran on, and that
is the nearest copy for no demand of the window, is unloaded (the first condition
keeps the copies the router picks for other reasons than distance: compliance,
residency, speed), except: never the last routable loaded copy of a model (of a model
nobody asked for, the copy nearest the gateway region stays), and never a copy that is
the nearest *warm* copy for some demand while a copy loaded by a recent action is still
in its cold start (the new copy needs it until it can serve). A run unloads at most
`MAX_UNLOADS_PER_RUN` copies (the biggest first) besides those a load of the same run
needs room from; the others wait for the next run.

**Hysteresis.** A load needs a benefit of at least `MIN_BENEFIT`; a deployment with an
applied or failed action in the last `COOLDOWN_S` is left alone (so a failing control
API is retried once per cooldown, not once per run); in "recommend" mode, a proposal
identical to a recommendation recorded within the cooldown is not recorded again.

Drained deployments (or in a drained cluster or region) and those whose health is
DOWN are never loaded nor unloaded, and do not count as copies that serve demand.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from backends.world import WEIGHT_BYTES_PER_PARAM

#: The kinds of action (`PlacementAction.Kind` takes its values from here).
LOAD, UNLOAD = "load", "unload"
#: What became of an applied action (`PlacementAction.Status` takes its values from here).
APPLIED, FAILED = "applied", "failed"

#: Where a chip's memory is not recorded (`Chip.memory_gb`), an H100's.
DEFAULT_ACCELERATOR_MEMORY_GB = 80
#: The share of an accelerator's memory given to weights; the rest holds the KV cache.
WEIGHT_SHARE = 0.5

#: A load must save at least this much latency (ms per minute of traffic, per
#: accelerator): about 25 requests a minute saved 16 ms each, for a 70B (4 accelerators).
MIN_BENEFIT = 100.0
#: A copy only a few milliseconds nearer is no reason to spend a cold start.
MIN_SAVED_MS = 5.0
#: What a request for a model with no loaded copy anywhere is taken to lose (it fails).
NO_COPY_MS = 1000.0
#: After an applied or failed action, a deployment is left alone this long.
COOLDOWN_S = 600.0
#: At most this many unloads a run (plus those a load of the run needs room from): a
#: wrong demand reading cannot empty the fleet in one go, and a run stays short.
MAX_UNLOADS_PER_RUN = 8


def accelerators_for(parameters_b: float, memory_gb: float | None = None) -> int:
    """Accelerators a loaded model of `parameters_b` billion parameters occupies."""
    memory = memory_gb or DEFAULT_ACCELERATOR_MEMORY_GB
    weights_gb = parameters_b * WEIGHT_BYTES_PER_PARAM
    return max(1, math.ceil(weights_gb / (memory * WEIGHT_SHARE)))


class RttMap(Protocol):
    """Round-trip time from a client region to a backend region (ms; inf: unreachable).
    `routing.engine.LatencyMap` is one."""

    def rtt_ms(self, src: str, dst: str) -> float: ...


@dataclass(frozen=True, slots=True)
class Site:
    """A deployment as the planner sees it."""

    slug: str
    cluster: str
    region: str
    model: str
    loaded: bool
    slots: int
    #: capacity it uses while loaded (`accelerators_for`)
    accelerators: int
    #: seconds from a load to serving
    cold_start_s: float
    #: False when drained (itself, its cluster or its region) or DOWN: never touched
    routable: bool = True


@dataclass(frozen=True, slots=True)
class LastAction:
    """The latest applied or failed action on a deployment (recommendations excluded)."""

    kind: str  # LOAD or UNLOAD
    status: str  # APPLIED or FAILED
    at: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class Rules:
    window_s: float = 900.0
    cooldown_s: float = COOLDOWN_S
    min_benefit: float = MIN_BENEFIT
    min_saved_ms: float = MIN_SAVED_MS
    max_unloads: int = MAX_UNLOADS_PER_RUN


@dataclass(frozen=True, slots=True)
class Action:
    """One proposal: load or unload `slug`, why, and what it is worth."""

    slug: str
    kind: str
    #: ms of latency saved per minute of traffic, per accelerator (0 for an unload)
    benefit: float
    reason: str
    #: the numbers behind the reason, as JSON (recorded on the PlacementAction)
    demand: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]  # unloads first (they free capacity), then loads, best first
    #: deployments that would have been acted on but are in their cooldown
    held: tuple[str, ...] = ()
    #: idle copies past the per-run limit of unloads: next run's
    deferred: tuple[str, ...] = ()


def _minutes(window_s: float) -> str:
    return f"{window_s / 60:g} min"


def placement_plan(
    *,
    demand: Mapping[tuple[str, str], int],
    sites: Sequence[Site],
    capacity: Mapping[str, int],
    rtt: RttMap,
    history: Mapping[str, LastAction] | None = None,
    now: float,
    rules: Rules | None = None,
    home_region: str | None = None,
    served: Mapping[str, int] | None = None,
) -> Plan:
    """Propose loads and unloads (see the module docstring for the rules).

    `demand` maps (client region, model) to requests in the window; `served` maps a
    deployment slug to the requests of the window that ran on it; `capacity` maps a
    cluster slug to its accelerators; `history` maps a deployment slug to its latest
    applied or failed action; `now` is epoch seconds, as `LastAction.at`;
    `home_region` (the gateway's) decides which copy of an unrequested model stays.
    """
    rules = rules or Rules()
    history = history or {}
    ran = {slug for slug, n in (served or {}).items() if n > 0}
    by_slug = {s.slug: s for s in sites}
    window_min = rules.window_s / 60.0

    def cooling(s: Site) -> bool:
        last = history.get(s.slug)
        return last is not None and now - last.at < rules.cooldown_s

    def warming(s: Site) -> bool:
        last = history.get(s.slug)
        return (
            last is not None
            and last.kind == LOAD
            and last.status == APPLIED
            and now - last.at < s.cold_start_s
        )

    serving = {s.slug for s in sites if s.loaded and s.routable}
    warm = {slug for slug in serving if not warming(by_slug[slug])}
    held: set[str] = set()

    def nearest(region: str, model: str, among: Iterable[str]) -> tuple[str | None, float]:
        best: tuple[float, int, str] | None = None
        for slug in among:
            s = by_slug[slug]
            if s.model != model:
                continue
            key = (rtt.rtt_ms(region, s.region), -s.slots, s.slug)
            if best is None or key < best:
                best = key
        if best is None or math.isinf(best[0]):
            return None, math.inf
        return best[2], best[0]

    def served_by(among: set[str]) -> dict[str, dict[str, int]]:
        """slug -> {client region: requests} it would serve among the copies `among`."""
        out: dict[str, dict[str, int]] = {}
        for (region, model), n in demand.items():
            slug, _ = nearest(region, model, among)
            if slug is not None and n > 0:
                out.setdefault(slug, {})[region] = n
        return out

    # ---- unloads: copies nobody's demand reaches (computed first: they free capacity)
    serves, serves_warm = served_by(serving), served_by(warm)
    still_warming = len(warm) < len(serving)
    idle = [
        by_slug[slug]
        for slug in sorted(serving)
        if slug not in serves and slug not in ran and not (still_warming and slug in serves_warm)
    ]
    for model in sorted({s.model for s in idle}):
        copies = [slug for slug in serving if by_slug[slug].model == model]
        idle_copies = [s for s in idle if s.model == model]
        if len(idle_copies) == len(copies):  # nobody asked: the copy nearest home stays
            idle.remove(min(idle_copies, key=lambda s: _home_key(s, rtt, home_region)))
    unloads: list[Site] = []
    for s in idle:
        if cooling(s):
            held.add(s.slug)
        else:
            unloads.append(s)

    before = Room.of(sites, capacity).free()  # free accelerators per cluster, before this plan
    free = dict(before)
    for s in unloads:
        free[s.cluster] = free.get(s.cluster, 0) + s.accelerators
        serving.discard(s.slug)

    # ---- loads: greedy by benefit per accelerator, re-scored after every pick
    wanted = {model for (_, model), n in demand.items() if n > 0}
    candidates = [s for s in sites if not s.loaded and s.routable and s.model in wanted]

    def score(c: Site) -> tuple[float, dict[str, Any]]:
        regions: dict[str, dict[str, Any]] = {}
        saved_total = 0.0
        for (region, model), n in sorted(demand.items()):
            if model != c.model or n <= 0:
                continue
            after = rtt.rtt_ms(region, c.region)
            if math.isinf(after):
                continue
            near, before_ms = nearest(region, model, serving)
            if near is None:
                before_ms = NO_COPY_MS
            saved = before_ms - after
            if saved < rules.min_saved_ms:
                continue
            saved_total += n * saved
            regions[region] = {
                "requests": n,
                "from": near,
                "from_ms": round(before_ms, 1),
                "to_ms": round(after, 1),
            }
        warm_share = max(0.0, 1.0 - c.cold_start_s / rules.window_s)
        benefit = saved_total / window_min * warm_share / c.accelerators
        return benefit, {
            "window_s": rules.window_s,
            "regions": regions,
            "accelerators": c.accelerators,
            "cold_start_s": round(c.cold_start_s, 1),
            "warm_share": round(warm_share, 3),
        }

    loads: list[tuple[Site, float, dict[str, Any]]] = []
    while True:
        best: tuple[tuple[float, int, str], Site, float, dict[str, Any]] | None = None
        for c in candidates:
            if c.slug in serving or free.get(c.cluster, 0) < c.accelerators:
                continue
            benefit, detail = score(c)
            if benefit < rules.min_benefit:
                continue
            if cooling(c):
                held.add(c.slug)
                continue
            key = (-benefit, -c.slots, c.slug)
            if best is None or key < best[0]:
                best = (key, c, benefit, detail)
        if best is None:
            break
        _, c, benefit, detail = best
        held.discard(c.slug)
        free[c.cluster] -= c.accelerators
        serving.add(c.slug)
        loads.append((c, benefit, detail))

    # ---- keep the unloads a load needs room from; defer the rest past the per-run limit
    needed: list[Site] = []
    for cluster in sorted({c.cluster for c, _, _ in loads}):
        short = sum(c.accelerators for c, _, _ in loads if c.cluster == cluster)
        short -= before.get(cluster, 0)
        for s in sorted(unloads, key=lambda s: (-s.accelerators, s.slug)):
            if short <= 0:
                break
            if s.cluster == cluster:
                needed.append(s)
                short -= s.accelerators
    rest = sorted((s for s in unloads if s not in needed), key=lambda s: (-s.accelerators, s.slug))
    unloads, deferred = needed + rest[: rules.max_unloads], rest[rules.max_unloads :]
    serving.update(s.slug for s in deferred)

    actions: list[Action] = []
    left = dict(before)
    for s in unloads:
        left[s.cluster] = left.get(s.cluster, 0) + s.accelerators
        others = sorted(slug for slug in serving if by_slug[slug].model == s.model)
        actions.append(_unload_action(s, demand, others, rules))
    for c, benefit, detail in loads:
        left[c.cluster] = left.get(c.cluster, 0) - c.accelerators
        actions.append(
            Action(
                slug=c.slug,
                kind=LOAD,
                benefit=round(benefit, 3),
                reason=_load_reason(c, detail, benefit, left[c.cluster], capacity, rules),
                demand=detail,
            )
        )
    return Plan(
        actions=tuple(actions),
        held=tuple(sorted(held)),
        deferred=tuple(sorted(s.slug for s in deferred)),
    )


def _unload_action(
    s: Site, demand: Mapping[tuple[str, str], int], others: list[str], rules: Rules
) -> Action:
    requests = sum(n for (_, model), n in demand.items() if model == s.model)
    return Action(
        slug=s.slug,
        kind=UNLOAD,
        benefit=0.0,
        reason=(
            f"unload {s.model} from {s.slug} ({s.region}): none of the {requests} requests "
            f"for it in the last {_minutes(rules.window_s)} ran here or was nearest here; "
            f"frees {s.accelerators} accelerator{'s' if s.accelerators != 1 else ''} of "
            f"{s.cluster}; still loaded in {len(others)} other "
            f"place{'s' if len(others) != 1 else ''}"
        ),
        demand={
            "window_s": rules.window_s,
            "model_requests": requests,
            "accelerators": s.accelerators,
            "other_copies": others,
        },
    )


def _home_key(s: Site, rtt: RttMap, home_region: str | None) -> tuple[float, int, str]:
    return (rtt.rtt_ms(home_region, s.region) if home_region else 0.0, -s.slots, s.slug)


def _load_reason(
    c: Site,
    detail: dict[str, Any],
    benefit: float,
    free_after: int,
    capacity: Mapping[str, int],
    rules: Rules,
) -> str:
    regions = detail["regions"]
    parts = []
    for region, r in sorted(regions.items(), key=lambda kv: -kv[1]["requests"]):
        was = f"{r['from_ms']:g} ms from {r['from']}" if r["from"] else "no loaded copy"
        parts.append(
            f"{r['requests']} from {region} ({was} → {r['to_ms']:g} ms, "
            f"{r['from_ms'] - r['to_ms']:.0f} ms saved each)"
        )
    requests = sum(r["requests"] for r in regions.values())
    return (
        f"load {c.model} on {c.slug} ({c.region}): {requests} requests in the last "
        f"{_minutes(rules.window_s)} would be nearer here — {'; '.join(parts)}. Uses "
        f"{c.accelerators} of {capacity.get(c.cluster, 0)} accelerators of {c.cluster} "
        f"({free_after} left); cold start ~{c.cold_start_s:.0f} s. Benefit {benefit:,.0f} ms "
        "saved per minute of traffic per accelerator"
    )


# --------------------------------------------------------------------------- applying a plan


@dataclass(slots=True)
class Room:
    """Accelerators used per cluster while a plan is being applied.

    The plan counts on its unloads freeing room for its loads; when an unload fails,
    the load that needed its room no longer `fits()` and must not be attempted. Only
    what was really applied moves the count (`applied()`).
    """

    capacity: Mapping[str, int]
    used: dict[str, int]

    @classmethod
    def of(cls, sites: Iterable[Site], capacity: Mapping[str, int]) -> Room:
        used: dict[str, int] = {}
        for s in sites:
            if s.loaded:
                used[s.cluster] = used.get(s.cluster, 0) + s.accelerators
        return cls(capacity=capacity, used=used)

    def free(self) -> dict[str, int]:
        """Free accelerators per cluster (negative where a cluster is over capacity)."""
        return {
            c: self.capacity.get(c, 0) - self.used.get(c, 0) for c in {*self.capacity, *self.used}
        }

    def fits(self, site: Site) -> bool:
        free = self.capacity.get(site.cluster, 0) - self.used.get(site.cluster, 0)
        return site.accelerators <= free

    def applied(self, site: Site, kind: str) -> None:
        sign = 1 if kind == LOAD else -1
        self.used[site.cluster] = self.used.get(site.cluster, 0) + sign * site.accelerators


def unrecorded(
    actions: Iterable[Action], standing: Iterable[tuple[str, str]]
) -> tuple[list[Action], list[str]]:
    """Split a plan's proposals into those to record as recommendations and the slugs of
    those already standing (the same deployment and kind, recommended within the
    cooldown): recommend mode does not repeat itself every run."""
    already = set(standing)
    fresh: list[Action] = []
    repeated: list[str] = []
    for action in actions:
        if (action.slug, action.kind) in already:
            repeated.append(action.slug)
        else:
            fresh.append(action)
    return fresh, repeated
