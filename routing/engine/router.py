"""`route()`: hard filters, prediction, SLA filter, score, plan.

    candidates of the model
      -> hard filters, in this order (the first that fails is the reason):
         not_loaded, drained, provider_out, cooling, down,
         compliance, residency, price, capacity, unreachable
      -> prediction per candidate:
         ttft  = h·(rtt + prefill) + queue        h = 1.5 when DEGRADED, else 1
         total = ttft + h·decode
         prefill = ttft_floor + (input - cached prefix on the affinity backend) / prefill speed
         decode  = max_output_tokens / decode speed
         queue   = slot releases needed before a slot frees × service time / slots
      -> SLA filter (sla_aware strategies): ttft ≤ max_ttft_ms, total ≤ max_latency_ms
      -> strategy ranks the rest: primary + fallbacks
    nothing left -> fallback models in order, then a relaxed deadline if allowed,
                    else an infeasible plan naming the binding constraint:
                    the policy (compliance, residency, price, reachability) over
                    every backend of the model, up or not -> that policy code;
                    else, if every backend it allows is out (drained, DOWN, its
                    provider out or cooling, queue full) -> that outage, naming them;
                    else the SLA the healthy allowed backends cannot meet.

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

_STATIC_CODES = {
    mesh.NOT_LOADED: "not_loaded", mesh.DRAINED: "drained", mesh.DOWN: "down",
    mesh.COOLING: "cooling", mesh.PROVIDER_OUT: "provider_out",
}  # fmt: skip
#: An exclusion's sentence for each static code.
_STATIC_TEXT = {
    "not_loaded": "model {model} not loaded", "drained": "drained by an operator",
    "down": "health: DOWN", "cooling": "cooling: its provider answered 429 (rate limited)",
    "provider_out": "provider: our credential was rejected, or the provider is disabled",
}  # fmt: skip
#: How an infeasible plan counts the allowed backends that are out, by reason.
_OUT_TEXT = {
    "not_loaded": "not loaded", "drained": "drained by an operator",
    "provider_out": "whose provider rejected our credential or is disabled",
    "cooling": "resting after its provider's 429", "down": "DOWN",
    "capacity": "with a full queue",
}  # fmt: skip


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
        hold_ms=strat.hold_ms(d, int(order[0])) if sla else 0.0,
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
        return code, _STATIC_TEXT[code].format(model=d.model)
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
    out = []
    for i, bid in enumerate(d.idx.ids):
        if i in chosen:
            continue
        fail = _first_failure(d, i, t_ok, l_ok)
        if fail is None:
            s = (scored or {}).get(i, math.nan)
            fail = ("outranked", f"outranked: predicted total {d.total[i]:.0f} ms, score {s:.4g}")
        out.append(Exclusion(bid, *fail))
    return tuple(out)


def _infeasibility(d: Decision, t_ok, l_ok) -> Infeasibility:
    """Why nothing could serve `d`: whose move it is, and how close we got.

    Runs only when nothing was feasible. The policy comes first, over every backend of
    the model whatever its state: if it matches none, the catalog cannot serve the
    request as asked. Otherwise, if every backend it allows is out now (drained, DOWN,
    its provider out or cooling, its queue full), the outage is the reason, not the
    policy: the same request will succeed when they are back.
    """
    idx, r, model = d.idx, d.request, d.model
    allowed = np.ones(idx.n, dtype=bool)
    binding = None
    for code, m in d.masks:
        if m is None or code == "capacity":
            continue
        allowed = allowed & m
        if not allowed.any():
            binding = code
            break
    unavailable: tuple[str, ...] = ()
    outage = ""
    if binding is None:
        up = allowed & idx.static_ok
        running = up & ~idx.full
        if not running.any():
            out = np.flatnonzero(allowed).tolist()
            kinds = [_STATIC_CODES.get(int(idx.static_code[i]), "capacity") for i in out]
            binding = "capacity" if up.any() else max(sorted(set(kinds)), key=kinds.count)
            unavailable = tuple(idx.ids[i] for i in out)
            outage = ", ".join(
                f"{kinds.count(k)} {text}" for k, text in _OUT_TEXT.items() if k in kinds
            )
        for code, m in (("sla_ttft", t_ok), ("sla_latency", l_ok)):
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
    if outage:
        detail = f"every backend of {model}{_policy_text(r)} is out: {outage}"
        return Infeasibility(model, binding, detail, best_ttft, best_total, best_id, unavailable)
    detail = {
        "compliance": f"no backend of {model} holds {', '.join(sorted(r.compliance))}",
        "residency": f"no backend of {model} is in the allowed area",
        "price": (
            f"no backend of {model} at or under {r.max_price_per_mtok} USD/1M tokens"
            if r.max_price_per_mtok is not None
            else ""
        ),
        "unreachable": f"no allowed backend of {model} is reachable from {d.client}",
        "sla_ttft": f"no backend can deliver a first token within {r.max_ttft_ms} ms"
        + (fastest.format(best_ttft) if best_ttft is not None else ""),
        "sla_latency": f"no backend can finish within {r.max_latency_ms} ms"
        + (fastest.format(best_total) if best_total is not None else ""),
    }[binding]
    return Infeasibility(model, binding, detail, best_ttft, best_total, best_id)


def _policy_text(r: Request) -> str:
    """What the request's policy allows, for a sentence: " in EU", " (in EU; holding hipaa)"."""
    parts = [
        "in " + "/".join(sorted(area))
        for area in (r.allowed_jurisdictions, r.allowed_countries, r.allowed_regions)
        if area is not None
    ]
    if r.compliance:
        parts.append("holding " + ", ".join(sorted(r.compliance)))
    if r.max_price_per_mtok is not None:
        parts.append(f"at or under {r.max_price_per_mtok:g} USD/1M tokens")
    if len(parts) > 1:
        return f" ({'; '.join(parts)})"
    return f" {parts[0]}" if parts else ""
