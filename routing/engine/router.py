"""`route()`: hard filters, prediction, SLA filter, score, plan.

    candidates of the model
      -> hard filters, in this order (the first that fails is the reason):
         not_loaded, drained, down, compliance, residency, price, capacity, unreachable
      -> prediction per candidate:
         ttft  = h·(rtt + prefill) + queue        h = 1.5 when DEGRADED, else 1
         total = ttft + h·decode
         prefill = ttft_floor + (input - cached prefix on the affinity backend) / prefill speed
         decode  = max_output_tokens / decode speed
         queue   = slot releases needed before a slot frees × service time / slots
      -> SLA filter (sla_aware strategies): ttft ≤ max_ttft_ms, total ≤ max_latency_ms
      -> strategy ranks the rest: primary + fallbacks
    nothing left -> fallback models in order, then a relaxed deadline if allowed,
                    else an infeasible plan naming the binding constraint.

The network counts one full round trip before the first token (request out, first
token back); streamed tokens then arrive as they are decoded. A request without a
client location is taken to come from the snapshot's gateway region (the gateway's
round trip to the backend is always known and always paid). The per-request arrays
live in `decision.Decision`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from . import mesh
from .decision import Decision
from .inputs import Request
from .mesh import Snapshot
from .plan import Degradation, Exclusion, Infeasibility, Plan
from .strategies import DEFAULT_STRATEGY, Strategy, shared_strategy

_STATIC_CODES = {mesh.NOT_LOADED: "not_loaded", mesh.DRAINED: "drained", mesh.DOWN: "down"}


# --------------------------------------------------------------------------- route


def route(
    snapshot: Snapshot,
    request: Request,
    strategy: str | Strategy = DEFAULT_STRATEGY,
    *,
    max_fallbacks: int = 3,
) -> Plan:
    """Pick a backend for `request`: a pure function of its inputs (round robin aside)."""
    strat = shared_strategy(strategy) if isinstance(strategy, str) else strategy
    plan, why, explain = _plan_for(
        snapshot, request, request.model, strat, strat.sla_aware, max_fallbacks
    )
    if plan is not None:
        return plan
    assert why is not None
    for alt in request.fallback_models:
        alt_plan, _, _ = _plan_for(snapshot, request, alt, strat, strat.sla_aware, max_fallbacks)
        if alt_plan is not None:
            alt_plan.status = "degraded"
            alt_plan.degraded = Degradation("fallback_model", request.model, alt, why)
            return alt_plan
    if request.allow_relaxed_deadline and why.code in ("sla_ttft", "sla_latency"):
        late, _, _ = _plan_for(snapshot, request, request.model, strat, False, max_fallbacks)
        if late is not None:
            late.status = "degraded"
            late.degraded = Degradation("relaxed_deadline", request.model, request.model, why)
            return late
    idx = snapshot.index(request.model, request.org_id)
    return Plan(
        status="infeasible",
        strategy=strat.name,
        model=request.model,
        snapshot_version=snapshot.version,
        primary=None,
        fallbacks=(),
        infeasible=why,
        considered=0 if idx is None else idx.n,
        explain=explain,
    )


def _plan_for(
    snapshot: Snapshot, request: Request, model: str, strat: Strategy, sla: bool, max_fallbacks: int
) -> tuple[Plan | None, Infeasibility | None, Callable[[], tuple[Exclusion, ...]] | None]:
    idx = snapshot.index(model, request.org_id)
    if idx is None or idx.n == 0:
        return None, Infeasibility(model, "model_not_served", f"no backend serves {model}"), None
    req = request if model == request.model else _retarget(request, model)
    d = Decision(snapshot, req, idx)
    d.late = not sla and strat.sla_aware
    feasible = d.ok
    t_ok = l_ok = None
    if sla:
        t_ok, l_ok = d.sla_masks()
        if t_ok is not None:
            feasible = feasible & t_ok
        if l_ok is not None:
            feasible = feasible & l_ok
    cand = np.flatnonzero(feasible)
    d.need = max_fallbacks + 1
    if cand.size == 0:
        return None, _infeasibility(d, t_ok, l_ok), lambda: _explain(d, t_ok, l_ok)
    order, scores = strat.rank(d, cand)
    k = min(order.size, max_fallbacks + 1)
    top = order[:k].tolist()
    choices = d.choices(top, scores[:k].tolist())

    def explain() -> tuple[Exclusion, ...]:
        scored = dict(zip(order.tolist(), scores.tolist(), strict=True))
        return _explain(d, t_ok, l_ok, top, scored)

    plan = Plan(
        status="ok",
        strategy=strat.name,
        model=model,
        snapshot_version=snapshot.version,
        primary=choices[0],
        fallbacks=choices[1:],
        considered=idx.n,
        explain=explain,
    )
    return plan, None, None


def _retarget(r: Request, model: str) -> Request:
    """The same request for a fallback model; affinity does not carry across models."""
    from dataclasses import replace

    return replace(
        r, model=model, affinity_backend_id=None, cached_prefix_tokens=0, fallback_models=()
    )


# --------------------------------------------------------------------------- explanations


def _first_failure(d: Decision, i: int, t_ok, l_ok) -> tuple[str, str] | None:
    idx, r = d.idx, d.request
    b = idx.backends[i]
    sc = int(idx.static_code[i])
    if sc:
        code = _STATIC_CODES[sc]
        text = {"not_loaded": f"model {d.model} not loaded", "drained": "drained by an operator",
                "down": "health: DOWN"}[code]  # fmt: skip
        return code, text
    for code, m in d.masks:
        if m is None or m[i]:
            continue
        if code == "compliance":
            missing = ", ".join(sorted(r.compliance - b.certifications))
            return code, f"compliance: missing {missing}"
        if code == "residency":
            return code, f"residency: {_residency_text(b, r)}"
        if code == "price":
            return code, (f"price: {d.price[i]:.4g} USD/1M tokens > max {r.max_price_per_mtok:.4g}")
        if code == "capacity":
            return code, (
                f"capacity: queue full ({int(idx.queued[i])} waiting, "
                f"limit {int(idx.queue_limit[i])})"
            )
        if code == "unreachable":
            return code, f"network: no RTT from {d.client} to {b.region}"
    if t_ok is not None and not t_ok[i]:
        return "sla_ttft", f"sla: predicted ttft {d.ttft[i]:.0f} ms > {r.max_ttft_ms:g} ms"
    if l_ok is not None and not l_ok[i]:
        return (
            "sla_latency",
            f"sla: predicted latency {d.total[i]:.0f} ms > {r.max_latency_ms:g} ms",
        )
    return None


def _residency_text(b, r: Request) -> str:
    if r.allowed_jurisdictions is not None and not (b.jurisdictions & r.allowed_jurisdictions):
        return f"region {b.region} ({b.country}) not in {'/'.join(sorted(r.allowed_jurisdictions))}"
    if r.allowed_countries is not None and b.country not in r.allowed_countries:
        return f"country {b.country} not in {'/'.join(sorted(r.allowed_countries))}"
    return f"region {b.region} not in {'/'.join(sorted(r.allowed_regions or ()))}"


def _explain(d: Decision, t_ok, l_ok, chosen=(), scored=None) -> tuple[Exclusion, ...]:
    chosen = set(chosen)
    reserved: set[int] = set(d.reserved.tolist()) if d.reserved is not None else set()
    out = []
    for i, bid in enumerate(d.idx.ids):
        if i in chosen:
            continue
        fail = _first_failure(d, i, t_ok, l_ok)
        if fail is None:
            if i in reserved:
                fail = ("reserved", (
                    f"reserved: predicted total {d.total[i]:.0f} ms, but its last free slots are "
                    f"kept for priority > {d.request.priority}"
                ))  # fmt: skip
            else:
                s = (scored or {}).get(i, math.nan)
                fail = (
                    "outranked",
                    f"outranked: predicted total {d.total[i]:.0f} ms, score {s:.4g}",
                )
        out.append(Exclusion(bid, *fail))
    return tuple(out)


def _infeasibility(d: Decision, t_ok, l_ok) -> Infeasibility:
    idx, r, model = d.idx, d.request, d.model
    running = idx.static_ok.copy()
    binding = None
    if not running.any():
        codes = [_STATIC_CODES[int(c)] for c in idx.static_code]
        binding = max(sorted(set(codes)), key=codes.count)
    stages = [*list(d.masks), ("sla_ttft", t_ok), ("sla_latency", l_ok)]
    for code, m in stages:
        if binding is not None:
            break
        if m is None:
            continue
        running = running & m
        if not running.any():
            binding = code
    binding = binding or "sla_latency"

    allowed = d.policy_allowed()
    best_ttft = best_total = None
    best_id = None
    if allowed.any():
        pos = np.flatnonzero(allowed)
        j = int(pos[np.argmin(d.total[pos])])
        best_total, best_id = float(d.total[j]), idx.ids[j]
        best_ttft = float(d.ttft[pos].min())
    fastest = f"; best predicted {{:.0f}} ms ({best_id})"
    detail = {
        "not_loaded": f"{model} is not loaded on any backend",
        "drained": f"every backend of {model} is drained",
        "down": f"every backend of {model} is DOWN",
        "compliance": f"no available backend of {model} holds {', '.join(sorted(r.compliance))}",
        "residency": f"no available backend of {model} is in the allowed area",
        "price": (
            f"no backend of {model} at or under {r.max_price_per_mtok} USD/1M tokens"
            if r.max_price_per_mtok is not None
            else ""
        ),
        "capacity": f"every allowed backend of {model} has a full queue",
        "unreachable": f"no allowed backend of {model} is reachable from {d.client}",
        "sla_ttft": f"no backend can deliver a first token within {r.max_ttft_ms} ms"
        + (fastest.format(best_ttft) if best_ttft is not None else ""),
        "sla_latency": f"no backend can finish within {r.max_latency_ms} ms"
        + (fastest.format(best_total) if best_total is not None else ""),
    }[binding]
    return Infeasibility(model, binding, detail, best_ttft, best_total, best_id)
