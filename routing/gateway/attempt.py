"""A request as the gateway carries it: what the transport hands over (`Call`), the
head of the answer (`Head`), and the book-keeping of the attempt that becomes the
response headers, the `tesseract` field and the one usage record (`Attempt`)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from accounts.keycache import ResolvedKey
from backends.snapshot import Endpoint
from billing import metering
from routing.engine import Choice, Plan, Prediction
from routing.gateway import observability
from routing.gateway.parse import Parsed

_MTOK = Decimal(1_000_000)

#: A healthy backend's whole answer may take this many times its predicted decode time
#: on top of the first-token timeout ...
DECODE_SLACK = 2.0
#: ... and an attempt is never cut short of this many times its own prediction.
PREDICTION_SLACK = 1.5
#: While other candidates remain, one attempt may use at most this share of what is left.
FAIR_SHARE = 0.5


def attempt_budget(
    prediction: Prediction, *, remaining_s: float, first_token_s: float, stream: bool, last: bool
) -> float:
    """Seconds one attempt may wait for its first token (streamed) or its whole answer
    (not streamed) before the gateway gives up on it and tries the next candidate.

    * The last candidate of the plan gets everything that is left of the deadline:
      there is no one to fail over to, so a slow answer beats none (a single-candidate
      plan waits for its backend until the deadline).
    * Otherwise the attempt gets what a healthy backend needs, `own`: the first-token
      timeout, plus, for a whole answer, the predicted decode time × DECODE_SLACK
      (there is no first token to watch, the answer comes at the end) —
    * but at most its fair share of what is left (`remaining × FAIR_SHARE`), so that
      under a tight deadline a hung primary still leaves the fallbacks their chance —
    * and never less than its own prediction × PREDICTION_SLACK (the predicted TTFT
      when streamed, the predicted total otherwise): cutting a backend short of what
      it was expected to need would fail requests that a patient wait would serve.

        budget = remaining                                          if last
               = min(remaining, max(min(own, remaining × FAIR_SHARE),
                                    predicted × PREDICTION_SLACK))  otherwise

    E.g. a hung primary under the 120 s default deadline is abandoned after 15 s (the
    first-token timeout); under `max_latency_ms: 2000`, after 1 s.
    """
    if last:
        return remaining_s
    own = first_token_s
    expected_ms = prediction.ttft_ms
    if not stream:
        own += DECODE_SLACK * prediction.decode_ms / 1000
        expected_ms = prediction.total_ms
    fair = remaining_s * FAIR_SHARE
    return min(remaining_s, max(min(own, fair), PREDICTION_SLACK * expected_ms / 1000))


@dataclass(frozen=True, slots=True)
class Head:
    status: int
    headers: list[tuple[bytes, bytes]]


#: What `Gateway.run` yields (see `routing.gateway.core`): the head, then a whole body
#: or, streamed, lists of SSE `data:` payloads.
Frame = Head | bytes | list[bytes]


@dataclass
class Call:
    """One request as the transport hands it over."""

    key: ResolvedKey
    parsed: Parsed
    started: float = field(default_factory=time.perf_counter)
    request_id: str = field(default_factory=lambda: f"req_{observability.random_hex(12)}")
    trace: observability.Trace = field(default_factory=observability.Trace.start)

    @property
    def trace_id(self) -> str:
        """The W3C trace id (32 hex): the caller's `traceparent`'s, or a new one."""
        return self.trace.trace_id


@functools.lru_cache(maxsize=4096)
def _per_mtok(price: float) -> Decimal:
    """A catalog price as the decimal it was written as (a few distinct values)."""
    return Decimal(str(price))


def _cost(endpoint: Endpoint, input_tokens: int, output_tokens: int) -> Decimal:
    return (
        Decimal(input_tokens) * _per_mtok(endpoint.price_input_per_mtok)
        + Decimal(output_tokens) * _per_mtok(endpoint.price_output_per_mtok)
    ) / _MTOK


@dataclass
class Attempt:
    """Book-keeping of the request as it goes; becomes the usage record and the headers."""

    call: Call
    plan: Plan
    choice: Choice | None = None
    endpoint: Endpoint | None = None
    attempts: int = 0
    routed_at: float = 0.0
    #: how long the gateway held the request before its plan (`Plan.hold_ms`), ms
    held_ms: float = 0.0
    sent_at: float = 0.0
    first_at: float | None = None
    #: when the backend's answer was complete (the last chunk of a stream)
    done_at: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    counted_chunks: int = 0
    status: str = "ok"
    published: bool = False
    #: what the backend did wrong after the first token (the stream was ended), and
    #: what the health map should hear about it (`backends.health.FAIL` or `SLOW`)
    failure: Exception | None = None
    failure_outcome: str = "fail"
    #: The admission's reservation and x-ratelimit-* headers (`routing.gateway.admission`).
    ticket: Any = None
    #: An admission sent beside the first backend call and not yet resolved (`Pending`).
    pending: Any = None
    #: An admission to make once served, with the usage record (`Admission.defer`: an
    #: `Ask`).
    deferred: Any = None
    #: The admission refused the request (or could not be answered): nothing is metered.
    refused: bool = False

    def limit_headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.ticket.headers) if self.ticket is not None else []

    # -- timing --------------------------------------------------------------------

    def ttft_ms(self) -> float | None:
        return None if self.first_at is None else (self.first_at - self.call.started) * 1000

    def timings(self, end: float) -> dict[str, float]:
        p = self.choice.prediction if self.choice else None
        upstream_ms = (end - self.sent_at) * 1000 if self.sent_at else 0.0
        net = p.rtt_ms if p else 0.0
        queue = p.queue_ms if p else 0.0
        # Held at the gateway is waiting, as in a queue: the time to the first token
        # less the network and this is the backend's (`backends.resources.observation`).
        return {
            "route": (self.routed_at - self.call.started) * 1000 - self.held_ms,
            "net": net,
            "queue": self.held_ms + queue,
            "compute": max(upstream_ms - net - queue, 0.0),
            "upstream": upstream_ms,
            "total": (end - self.call.started) * 1000,
        }

    def sla_met(self, total_ms: float) -> bool:
        r = self.call.parsed.route
        ttft = self.ttft_ms()
        ok = r.max_latency_ms is None or total_ms <= r.max_latency_ms
        if r.max_ttft_ms is not None:
            ok = ok and ttft is not None and ttft <= r.max_ttft_ms
        return ok and self.status == "ok"

    # -- output ----------------------------------------------------------------------

    def route_header(self) -> str:
        e = self.endpoint
        assert e is not None
        return f"{e.region}/{e.cluster}/{e.chip}/{e.model}"

    def headers(self, content_type: bytes, end: float) -> list[tuple[bytes, bytes]]:
        t = self.timings(end)
        timing = ", ".join(f"{k};dur={v:.2f}" for k, v in t.items())
        headers = [
            (b"content-type", content_type),
            (b"x-request-id", self.call.request_id.encode()),
            (b"x-tesseract-trace-id", self.call.trace_id.encode()),
            (b"x-tesseract-route", self.route_header().encode()),
            (b"server-timing", timing.encode()),
        ]
        if self.plan.degraded is not None:
            headers.append((b"x-tesseract-degraded", self.plan.degraded.kind.encode()))
        return headers + self.limit_headers()

    def info(self, end: float) -> dict[str, Any]:
        """The `tesseract` object of a response body or final chunk."""
        t = self.timings(end)
        e = self.endpoint
        assert e is not None
        return {
            "request_id": self.call.request_id,
            "trace_id": self.call.trace_id,
            "route": {
                "backend": e.backend_id,
                "region": e.region,
                "cluster": e.cluster,
                "chip": e.chip,
                "model": e.model,
                # who served it, under which of its own model ids
                "provider": e.provider or None,
                "provider_model": e.upstream_model,
            },
            "strategy": self.plan.strategy,
            "degraded": None if self.plan.degraded is None else self.plan.degraded.to_dict(),
            "attempts": self.attempts,
            "timing_ms": {k: round(v, 2) for k, v in t.items()},
            "ttft_ms": None if self.first_at is None else round(self.ttft_ms() or 0.0, 2),
            "predicted": self.choice.predicted() if self.choice else None,
            "sla_met": self.sla_met(t["total"]),
        }

    def record(self, end: float) -> metering.UsageRecord:
        call, r = self.call, self.call.parsed.route
        e = self.endpoint
        t = self.timings(end)
        input_tokens = self.input_tokens
        output_tokens = self.output_tokens
        source = "upstream"
        if input_tokens is None or output_tokens is None:
            source = "estimated"
            input_tokens = r.input_tokens if input_tokens is None else input_tokens
            output_tokens = self.counted_chunks if output_tokens is None else output_tokens
        if self.status in ("error", "rejected") and self.first_at is None:
            input_tokens = output_tokens = 0  # nothing was served: nothing is billed
        return metering.UsageRecord(
            request_id=call.request_id,
            org_id=call.key.org_id,
            api_key_id=call.key.id,
            created_at=time.time(),
            endpoint=call.parsed.endpoint,
            model=call.parsed.model,
            served_model=e.model if e else "",
            deployment=e.backend_id if e else "",
            region=e.region if e else "",
            cluster=e.cluster if e else "",
            chip=e.chip if e else "",
            stream=call.parsed.stream,
            status=self.status,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            usage_source=source,
            cost_usd=str(_cost(e, input_tokens, output_tokens) if e else Decimal(0)),
            ttft_ms=self.ttft_ms(),
            latency_ms=t["total"],
            network_ms=t["net"],
            queue_ms=t["queue"],
            compute_ms=t["compute"],
            sla_met=self.sla_met(t["total"]),
            attempts=self.attempts,
            constraints=_constraints(call.parsed),
            backend_policy=(
                {
                    "certifications": list(e.certifications),
                    "jurisdictions": list(e.jurisdictions),
                    "country": e.country,
                }
                if e
                else {}
            ),
            trace_id=call.trace_id,
            plan=_plan_summary(self.plan),
            tried=[c.backend_id for c in self.plan.choices[: self.attempts]],
        )


def _plan_summary(plan: Plan) -> dict[str, Any]:
    """What the audit log keeps of the plan: the backends the gateway could try, in
    order, and what ranked them (a few dozen bytes; the drain hashes it, off the hot
    path)."""
    return {
        "strategy": plan.strategy,
        "snapshot_version": str(plan.snapshot_version),
        "ranked": [c.backend_id for c in plan.choices],
    }


def _constraints(parsed: Parsed) -> dict[str, Any]:
    r = parsed.route
    return {
        k: (sorted(v) if isinstance(v, frozenset) else v)
        for k, v in {
            "compliance": r.compliance or None,
            "jurisdictions": r.allowed_jurisdictions,
            "countries": r.allowed_countries,
            "regions": r.allowed_regions,
            "max_ttft_ms": r.max_ttft_ms,
            "max_latency_ms": r.max_latency_ms,
            "priority": r.priority,
            "client_region": r.client_region,
            # the flags only when asked (what the request page routes again with)
            "allow_relaxed_deadline": r.allow_relaxed_deadline or None,
            "prefer_cost_over_latency": r.prefer_cost_over_latency or None,
        }.items()
        if v is not None
    }
