"""`Decision`: one request against one model's candidates, as arrays.

The hard filters' masks and the per-candidate predictions live here, below both
`router` (which builds a Decision and turns it into a plan) and `strategies` (which
rank its candidates): the type has one home and neither imports the other for it.

    ttft  = h·(rtt + prefill) + queue        h = 1.5 when DEGRADED, else 1
    total = ttft + h·decode
    prefill = ttft_floor + (input - cached prefix on the affinity backend) / prefill speed
    decode  = max_output_tokens / decode speed
    queue   = slot releases needed before a slot frees × service time / slots

The network counts one full round trip before the first token (request out, first
token back). A request without a client location is taken to come from the
snapshot's gateway region: the gateway→backend round trip is always paid.
"""

from __future__ import annotations

import math

import numpy as np

from .inputs import Request
from .mesh import ModelIndex, Snapshot
from .plan import Choice, Prediction


class Decision:
    """One request against one model's candidates: masks and predictions as arrays."""

    __slots__ = (
        "client",
        "cost",
        "decode",
        "held",
        "idx",
        "late",
        "masks",
        "model",
        "need",
        "ok",
        "prefill",
        "price",
        "queue",
        "request",
        "rtt",
        "total",
        "ttft",
    )  # fmt: skip

    def __init__(self, snapshot: Snapshot, request: Request, idx: ModelIndex) -> None:
        self.request = r = request
        self.idx = idx
        self.model = idx.model
        (self.rtt, reach, rtt0), self.client = _client_rtt(snapshot, r, idx)
        self.need = 4  # how many ranked candidates the plan will use
        self.late = False  # ranking for a relaxed deadline: the SLA is already lost

        # ---- hard filters (each a cached boolean array; cached by request part)
        comp = r.compliance
        comp_ok = idx.mask(("c", comp), lambda b: comp <= b.certifications) if comp else None
        res_key = (r.allowed_jurisdictions, r.allowed_countries, r.allowed_regions)
        res_ok = (
            idx.mask(("r", res_key), lambda b: _resident(b, r))
            if res_key != (None, None, None)
            else None
        )
        n_in, n_out = r.input_tokens, r.max_output_tokens
        spend = n_in * idx.price_in + n_out * idx.price_out  # USD per 1M of this request
        self.price = spend / max(n_in + n_out, 1)
        self.cost = spend / 1e6
        price_ok = self.price <= r.max_price_per_mtok if r.max_price_per_mtok is not None else None
        self.masks = (
            ("compliance", comp_ok), ("residency", res_ok), ("price", price_ok),
            ("capacity", ~idx.full), ("unreachable", reach),
        )  # fmt: skip
        ok = idx.available & reach
        for m in (comp_ok, res_ok, price_ok):
            if m is not None:
                ok = ok & m
        self.ok = ok

        # ---- prediction
        prefill = idx.base_ms + n_in * idx.ms_per_in
        #: the position of the backend holding this session's cached prefix (None: none)
        self.held = None
        if r.affinity_backend_id is not None and r.cached_prefix_tokens > 0:
            self.held = i = idx.pos.get(r.affinity_backend_id)
            if i is not None:
                prefill = prefill.copy()
                prefill[i] -= min(r.cached_prefix_tokens, n_in) * idx.ms_per_in[i]
        self.prefill = prefill
        self.decode = n_out * idx.ms_per_out
        # The common cases skip work: no backend queues, none is DEGRADED.
        if idx.any_waiting:
            service = prefill + self.decode
            if idx.any_mean_service:
                service = np.where(idx.has_mean_service, idx.mean_service, service)
            self.queue = idx.ahead * service / idx.slots
        else:
            self.queue = idx.zeros
        if idx.any_degraded:
            h = idx.health_factor
            self.ttft = h * (rtt0 + prefill) + self.queue
            self.total = self.ttft + h * self.decode
        else:
            self.ttft = rtt0 + prefill + self.queue
            self.total = self.ttft + self.decode

    def sla_masks(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        r = self.request
        t = self.ttft <= r.max_ttft_ms if r.max_ttft_ms is not None else None
        lat = self.total <= r.max_latency_ms if r.max_latency_ms is not None else None
        return t, lat

    def choices(self, top: list[int], scores: list[float]) -> tuple[Choice, ...]:
        """Choices for positions `top`, gathered in one go (numpy scalar indexing is slow)."""
        idx, r, model = self.idx, self.request, self.model
        arrays = (
            self.rtt, self.queue, self.prefill, self.decode, self.ttft, self.total, self.price,
            self.cost,
        )  # fmt: skip
        cols = [[a.item(i) for i in top] for a in arrays]
        max_ttft = math.inf if r.max_ttft_ms is None else r.max_ttft_ms
        max_lat = math.inf if r.max_latency_ms is None else r.max_latency_ms
        out = []
        for k, (i, rtt, queue, prefill, decode, ttft, total, price, cost) in enumerate(
            zip(top, *cols, strict=False)
        ):
            out.append(
                Choice(
                    backend_id=idx.ids[i],
                    model=model,
                    region=idx.regions[i],
                    prediction=Prediction(rtt, queue, prefill, decode, ttft, total),
                    price_per_mtok=price,
                    cost_usd=cost,
                    score=scores[k],
                    meets_sla=ttft <= max_ttft and total <= max_lat,
                )
            )
        return tuple(out)

    def policy_allowed(self) -> np.ndarray:
        """Allowed by policy (model, health, drain, compliance, residency, price), reachable."""
        ok = self.idx.static_ok.copy()
        for code, m in self.masks:
            if m is not None and code != "capacity":
                ok &= m
        return ok


def _resident(b, r: Request) -> bool:
    if r.allowed_jurisdictions is not None and not (b.jurisdictions & r.allowed_jurisdictions):
        return False
    if r.allowed_countries is not None and b.country not in r.allowed_countries:
        return False
    return not (r.allowed_regions is not None and b.region not in r.allowed_regions)


def _client_rtt(snapshot: Snapshot, r: Request, idx: ModelIndex):
    lat = snapshot.latency
    if r.client_region is not None:
        src = r.client_region
        return idx.rtt_from(src, lambda dst: lat.rtt_ms(src, dst)), src
    if r.client_lat is not None and r.client_lon is not None:
        src, extra = snapshot.client_origin(r.client_lat, r.client_lon)
        if src:
            key = (src, round(extra, 3))
            return idx.rtt_from(key, lambda dst: lat.rtt_ms(src, dst) + extra), src
    gw = snapshot.gateway_region
    if gw is not None:
        # No client location (the openai SDK's default call): the client is taken to
        # be at its gateway, whose round trip to every backend is known.
        return idx.rtt_from(gw, lambda dst: lat.rtt_ms(gw, dst)), gw
    return idx.rtt_from(None, lambda dst: 0.0), None
