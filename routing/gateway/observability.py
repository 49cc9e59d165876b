"""What a gateway shows of itself: Prometheus metrics, W3C trace context, OTLP spans.

Each part pays on the hot path only what it must (the gateway's whole overhead budget
is ~1 ms per request):

**Metrics** (prometheus-client). A finished request updates a few series through
children cached per label set: ~4 µs per request, measured with timeit. `GET /metrics`
(served by the gateway app) renders them together with gauges read from the live maps
in Redis at scrape time — health, observed speeds and load per deployment, probed
RTTs — so the scrape shows what the control plane knows now, not what this process
last routed on. Set `TESSERACT_METRICS_TOKEN` to require `Authorization: Bearer …`;
without it the endpoint is open, so keep it off the public internet either way.

Route labels are (model, region, chip, status), not the deployment slug. Today the
two identify the same 67 series (one cluster per region and chip), so the cost is the
same; but the triple is what operators slice by ("TTFT of Groq in eastus"), it stays
bounded by the catalog's axes as clusters are added, and the slug remains available
on the per-deployment gauges (joined with `tesseract_deployment_info`). `model` is the
served model, which comes from the catalog: a client cannot mint label values.

**Processes.** Each gateway process exposes its own registry: the layout is one
uvicorn process per container, scaled by replicas, each scraped as its own target
(`make run` runs one). prometheus-client's multiprocess mode — several workers behind
one port — works too when `PROMETHEUS_MULTIPROC_DIR` is set (an empty directory per
start), at the cost of an mmap write per update. The live-map gauges describe shared
state, so every process reports the same values: aggregate them with `max by
(deployment)`, don't sum them.

**Trace context** (W3C `traceparent`). A valid incoming header continues the caller's
trace: its trace id becomes the request's `x-tesseract-trace-id`, its span the parent
of ours. A malformed one is ignored (and its `tracestate` with it) and a new trace
starts. Each upstream attempt sends `traceparent` with a span id of its own, and
`tracestate` is forwarded unchanged.

**Span export** (OpenTelemetry, OTLP/HTTP) only when `OTEL_EXPORTER_OTLP_ENDPOINT` is
set: then, and only then, the `otel` extra is imported. The spans are built after the
request finished, from its usage record — one SERVER span per request and one CLIENT
span per upstream attempt, with the very span ids the backends received — and handed
to a batch processor that exports from its own thread. The rest of the `OTEL_*`
variables (headers, timeout, compression, service name) are read by the SDK.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hmac
import logging
import os
import random
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings
from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily, Metric

from backends import livestate
from backends.models import Health

if TYPE_CHECKING:
    from backends.snapshot import World
    from billing.metering import UsageRecord
    from routing.engine import Plan

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- metrics

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # CPU, memory, open files of this process
REGISTRY.register(GC_COLLECTOR)

_ROUTE = ("model", "region", "chip", "status")
#: End to end: from the request's arrival to its last byte.
_DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 120)
#: Fine where SLAs are set (tens to hundreds of milliseconds).
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 15)

REQUEST_DURATION = Histogram(
    "tesseract_gateway_request_duration_seconds",
    "Routed requests, end to end: arrival at the gateway to the last byte.",
    _ROUTE,
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "tesseract_gateway_time_to_first_token_seconds",
    "Routed requests that got a first token: arrival at the gateway to that token.",
    _ROUTE,
    buckets=_TTFT_BUCKETS,
    registry=REGISTRY,
)
TOKENS = Counter(
    "tesseract_gateway_tokens",
    "Tokens served (the backend's count, else the gateway's estimate).",
    ("model", "region", "chip", "direction"),
    registry=REGISTRY,
)
SLA_REQUESTS = Counter(
    "tesseract_gateway_sla_requests",
    "Routed requests that set max_ttft_ms or max_latency_ms (theirs or their key's), "
    "by whether it was met; a failed or cancelled one missed it (as billing counts).",
    ("model", "region", "chip", "outcome"),
    registry=REGISTRY,
)
ROUTING_DECISIONS = Counter(
    "tesseract_gateway_routing_decisions",
    "Plans made for requests (not dry runs): outcome is routed, degraded, or the "
    "reason code of an infeasible plan.",
    ("strategy", "outcome"),
    registry=REGISTRY,
)
FAILOVERS = Counter(
    "tesseract_gateway_failovers",
    "Attempts abandoned before the first token: the request moved on to the next "
    "backend of its plan, if the plan and the deadline had one. Region and chip are "
    "those of the backend that failed.",
    ("region", "chip", "reason"),
    registry=REGISTRY,
)
ERRORS = Counter(
    "tesseract_gateway_errors",
    "Error answers of the HTTP API, by status and code.",
    ("status", "code"),
    registry=REGISTRY,
)
OVERLAPS = Counter(
    "tesseract_gateway_admission_overlaps",
    "Requests whose backend was called in the same round trip as their admission "
    "(a key whose last answer left room to spare).",
    registry=REGISTRY,
)
OVERLAPS_REFUSED = Counter(
    "tesseract_gateway_admission_overlaps_refused",
    "Requests whose backend was called beside their admission (a key with room to "
    "spare) and that the admission then refused: the backend's work went unused.",
    registry=REGISTRY,
)
DEFERRALS = Counter(
    "tesseract_gateway_admission_deferrals",
    "Non-streamed requests admitted only once served, in one step with their usage "
    "record (a key whose last answer left room to spare).",
    registry=REGISTRY,
)
DEFERRALS_REFUSED = Counter(
    "tesseract_gateway_admission_deferrals_refused",
    "Requests admitted once served (a key with room to spare) that the admission then "
    "refused: the backend's work went unused, and nothing was metered.",
    registry=REGISTRY,
)

HELD = Gauge(
    "tesseract_gateway_requests_held",
    "Requests this process holds now before routing them again: a loose deadline, "
    "and the backend it would take nearly full (the plan's hold_ms).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
HOLD_DURATION = Histogram(
    "tesseract_gateway_hold_seconds",
    "How long held requests waited at the gateway before they were sent (or gave "
    "up), by the model of their plan.",
    ("model",),
    buckets=(0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5),
    registry=REGISTRY,
)

_FAILOVER_REASONS = {
    "UpstreamTimeout": "timeout",
    "UpstreamConnectError": "connect",
    "UpstreamStatusError": "status",
    "UpstreamRateLimited": "rate_limited",
    "UpstreamAuthRejected": "credential_rejected",
    "UpstreamMisconfigured": "misconfigured",
}


class _RouteSeries:
    """The children one label set updates, resolved once: `labels()` costs ~1 µs."""

    __slots__ = ("duration", "input_tokens", "output_tokens", "ttft")

    def __init__(self, model: str, region: str, chip: str, status: str) -> None:
        self.duration = REQUEST_DURATION.labels(model, region, chip, status)
        self.ttft = TIME_TO_FIRST_TOKEN.labels(model, region, chip, status)
        self.input_tokens = TOKENS.labels(model, region, chip, "input")
        self.output_tokens = TOKENS.labels(model, region, chip, "output")


_route_series: dict[tuple[str, str, str, str], _RouteSeries] = {}
_sla_series: dict[tuple[str, str, str, str], Any] = {}
_decision_series: dict[tuple[str, str], Any] = {}


def plan_made(plan: Plan) -> None:
    """Count a routing decision (call for requests, not for dry runs)."""
    if plan.primary is not None:
        outcome = "routed" if plan.degraded is None else "degraded"
    else:
        outcome = plan.infeasible.code if plan.infeasible is not None else "infeasible"
    key = (plan.strategy, outcome)
    child = _decision_series.get(key)
    if child is None:
        child = _decision_series[key] = ROUTING_DECISIONS.labels(*key)
    child.inc()


@contextlib.contextmanager
def holding(model: str) -> Iterator[None]:
    """Count a request as held (`HELD`) while the block runs, then its time held."""
    HELD.inc()
    start = time.perf_counter()
    try:
        yield
    finally:
        HELD.dec()
        HOLD_DURATION.labels(model).observe(time.perf_counter() - start)


def failed_over(endpoint: Any, exc: BaseException) -> None:
    """A backend (a `backends.snapshot.Endpoint`) failed before the first token."""
    reason = _FAILOVER_REASONS.get(type(exc).__name__, "other")
    FAILOVERS.labels(endpoint.region, endpoint.chip, reason).inc()


def overlapped() -> None:
    OVERLAPS.inc()


def overlap_refused() -> None:
    OVERLAPS_REFUSED.inc()


def deferred() -> None:
    DEFERRALS.inc()


def deferral_refused() -> None:
    DEFERRALS_REFUSED.inc()


def error_answered(status: int, code: str) -> None:
    ERRORS.labels(str(status), code).inc()


def request_finished(*, call: Any, plan: Plan, record: UsageRecord) -> None:
    """A routed request is over (its usage record is made): metrics, then its spans.

    `call` is the gateway's `Call`. Runs once per request, on the event loop.
    """
    key = (record.served_model, record.region, record.chip, record.status)
    series = _route_series.get(key)
    if series is None:
        series = _route_series[key] = _RouteSeries(*key)
    series.duration.observe((record.latency_ms or 0.0) / 1000)
    if record.ttft_ms is not None:
        series.ttft.observe(record.ttft_ms / 1000)
    if record.input_tokens:
        series.input_tokens.inc(record.input_tokens)
    if record.output_tokens:
        series.output_tokens.inc(record.output_tokens)
    route = call.parsed.route
    if route.max_ttft_ms is not None or route.max_latency_ms is not None:
        sla = (*key[:3], "met" if record.sla_met else "missed")
        child = _sla_series.get(sla)
        if child is None:
            child = _sla_series[sla] = SLA_REQUESTS.labels(*sla)
        child.inc()
    exporter = span_exporter()
    if exporter is not None:
        exporter.export(call=call, plan=plan, record=record)


# --------------------------------------------------------------------------- scrape

#: A scrape waits this long for the live maps, then renders without them.
LIVE_READ_TIMEOUT_S = 1.0


def scrape_authorized(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    token: str = settings.TESSERACT_METRICS_TOKEN
    if not token:
        return True
    expected = b"bearer " + token.encode()
    for name, value in headers:
        if name == b"authorization":
            scheme, _, given = value.partition(b" ")
            return hmac.compare_digest(scheme.lower() + b" " + given.strip(), expected)
    return False


async def scrape(*, redis: Any, world: World | None, accept: str = "") -> tuple[bytes, str]:
    """The body and content type of `GET /metrics`; reads the live maps first.

    Rendering costs ~10 µs per line: ~25 ms for the demo world's usual ~2,500 lines,
    ~80 ms if every deployment had seen every status. It runs in a worker thread so
    the event loop keeps serving between the GIL's switches instead of stalling for
    the whole render; each scrape renders its own collector of what it read.
    """
    maps: livestate.LiveMaps | None
    try:
        async with asyncio.timeout(LIVE_READ_TIMEOUT_S):
            maps = await livestate.aread(redis)
    except Exception:  # a scrape still shows the process's own metrics
        logger.warning("metrics: could not read the live maps", exc_info=True)
        maps = None
    encoder, content_type = choose_encoder(accept)
    collector = _Scrape(_process_registry(), LiveCollector(maps, world))
    return await asyncio.to_thread(encoder, collector), content_type


def _process_registry() -> Any:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return registry


class _Scrape:
    def __init__(self, *collectors: Any) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


_HEALTH_STATES = tuple(Health.values)


class LiveCollector:
    """Gauges from one reading of the live maps (and the world, for what is where).

    A deployment the live maps have no record of is reported as the maps read it:
    healthy, nothing observed.
    """

    def __init__(self, maps: livestate.LiveMaps | None, world: World | None) -> None:
        self._maps = maps
        self._world = world

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "tesseract_live_maps_up", "1 if this scrape could read the live maps from Redis."
        )
        up.add_metric([], 0 if self._maps is None else 1)
        yield up
        endpoints = self._world.endpoints if self._world is not None else {}
        if endpoints:
            info = InfoMetricFamily(
                "tesseract_deployment",
                "Where each deployment of the catalog is (join on deployment).",
                labels=("deployment",),
            )
            for slug, e in sorted(endpoints.items()):
                info.add_metric(
                    [slug], {"region": e.region, "cluster": e.cluster, "chip": e.chip,
                             "model": e.model},
                )  # fmt: skip
            yield info
        if self._maps is None:
            return
        yield from _deployment_families(self._maps, endpoints.keys())
        rtt = GaugeMetricFamily(
            "tesseract_probe_rtt_seconds",
            "Smoothed round-trip time between regions, as probed (the live RTT map).",
            labels=("src", "dst"),
        )
        for (src, dst), ms in sorted(self._maps.rtt.items()):
            rtt.add_metric([src, dst], ms / 1000)
        yield rtt


def _deployment_families(maps: livestate.LiveMaps, known: Iterable[str]) -> Iterator[Metric]:
    def gauge(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=("deployment",))

    health = GaugeMetricFamily(
        "tesseract_deployment_health",
        "1 for the state a deployment is in (the live health map), 0 for the others.",
        labels=("deployment", "state"),
    )
    ttft = gauge(
        "tesseract_deployment_observed_ttft_seconds",
        "Smoothed backend-side time to first token (queue and network excluded).",
    )
    tps = gauge(
        "tesseract_deployment_observed_decode_tokens_per_second",
        "Smoothed per-request decode speed.",
    )
    running = gauge("tesseract_deployment_running_requests", "Running, as the backend says.")
    waiting = gauge("tesseract_deployment_waiting_requests", "Queued, as the backend says.")
    inflight = gauge(
        "tesseract_deployment_inflight_requests", "In flight from all gateways (live map)."
    )
    updated = gauge(
        "tesseract_deployment_live_updated_timestamp_seconds",
        "When the control plane last wrote this deployment's live record (Unix time).",
    )
    default = livestate.DeploymentLive()
    for slug in sorted(set(known) | set(maps.deployments) | set(maps.inflight)):
        live = maps.deployments.get(slug, default)
        states = _HEALTH_STATES if live.health in _HEALTH_STATES else (*_HEALTH_STATES, live.health)
        for state in states:
            health.add_metric([slug, state], 1 if state == live.health else 0)
        if live.observed_ttft_ms is not None:
            ttft.add_metric([slug], live.observed_ttft_ms / 1000)
        if live.observed_decode_tps is not None:
            tps.add_metric([slug], live.observed_decode_tps)
        if live.running is not None:
            running.add_metric([slug], live.running)
        if live.waiting is not None:
            waiting.add_metric([slug], live.waiting)
        if slug in maps.inflight:
            inflight.add_metric([slug], maps.inflight[slug])
        if live.updated_at:
            updated.add_metric([slug], live.updated_at)
    yield from (health, ttft, tps, running, waiting, inflight, updated)


# --------------------------------------------------------------------------- trace context

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_SPAN = b"0" * 32, b"0" * 16
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
#: Longer `tracestate` values are dropped rather than forwarded (W3C: 512 is enough).
MAX_TRACESTATE = 512


def parse_traceparent(value: bytes) -> tuple[str, str, bool] | None:
    """(trace id, parent span id, sampled) of a valid W3C `traceparent`, else None.

    Version 00 must be exactly four fields; a later version may append more (they are
    ignored, as the spec asks); version ff, upper case and all-zero ids are invalid.
    """
    match = _TRACEPARENT.fullmatch(value.strip(b" \t"))
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == b"ff" or (version == b"00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id.decode(), parent_id.decode(), bool(int(flags, 16) & 1)


#: Where trace, span and request ids come from: a generator of this process's own,
#: seeded from the system's randomness, and again in a forked child (a worker forked
#: from its server shares no ids with its siblings). The ids must be unique, not
#: secret (OpenTelemetry's SDK draws its own from `random` too); a read of the
#: system's randomness per id was three system calls per request, ~4% of a busy
#: gateway's CPU (`python -m bench.inprocess`).
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def random_hex(nbytes: int) -> str:
    """`nbytes` random bytes as lowercase hex (`2 * nbytes` characters)."""
    return f"{_ids.getrandbits(nbytes * 8):0{nbytes * 2}x}"


@dataclass(slots=True)
class Trace:
    """A request's place in a distributed trace.

    `span_id` is the gateway's own span for the request; `attempts` holds the span id
    and send time (`time.perf_counter()`) of each upstream call, in order.
    """

    trace_id: str
    span_id: str
    parent_id: str | None = None
    sampled: bool = True
    state: str | None = None
    attempts: list[tuple[str, float]] = field(default_factory=list)

    @classmethod
    def start(cls) -> Trace:
        return cls(random_hex(16), random_hex(8))

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[bytes, bytes]]) -> Trace:
        """Continue the caller's trace if it sent one valid `traceparent`; else start one."""
        parents: list[bytes] = []
        states: list[bytes] = []
        for name, value in headers:
            if name == b"traceparent":
                parents.append(value)
            elif name == b"tracestate":
                states.append(value.strip())
        parsed = parse_traceparent(parents[0]) if len(parents) == 1 else None
        if parsed is None:
            return cls.start()
        trace_id, parent_id, sampled = parsed
        state = b",".join(s for s in states if s)
        ok = state and len(state) <= MAX_TRACESTATE and _PRINTABLE.fullmatch(state)
        return cls(trace_id, random_hex(8), parent_id, sampled, state.decode() if ok else None)

    def upstream_headers(self) -> dict[str, str]:
        """Headers of one upstream attempt: a new span, child of the request's."""
        span = random_hex(8)
        self.attempts.append((span, time.perf_counter()))
        headers = {"traceparent": f"00-{self.trace_id}-{span}-{'01' if self.sampled else '00'}"}
        if self.state:
            headers["tracestate"] = self.state
        return headers


# --------------------------------------------------------------------------- span export


class SpanExporter:
    """Spans of finished requests to an OTLP/HTTP collector (the `otel` extra)."""

    def __init__(self, endpoint: str) -> None:
        from opentelemetry import trace as api
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace.status import Status, StatusCode

        self._api, self._span, self._status, self._code = api, ReadableSpan, Status, StatusCode
        self.endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
            endpoint.rstrip("/") + "/v1/traces"
        )
        name = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "tesseract-gateway"}
        self._resource = Resource.create(name)
        self._scope = InstrumentationScope("tesseract.gateway")
        self._processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=self.endpoint))

    def export(self, *, call: Any, plan: Plan, record: UsageRecord) -> None:
        trace: Trace = call.trace
        if not trace.sampled:
            return
        end_perf, end_ns = time.perf_counter(), time.time_ns()

        def ns(t: float) -> int:
            return end_ns - int((end_perf - t) * 1e9)

        api = self._api
        flags = api.TraceFlags(api.TraceFlags.SAMPLED)
        trace_id = int(trace.trace_id, 16)
        server = api.SpanContext(trace_id, int(trace.span_id, 16), False, flags)
        parent = (
            api.SpanContext(trace_id, int(trace.parent_id, 16), True, flags)
            if trace.parent_id
            else None
        )
        chat = record.endpoint == "chat.completions"
        path = "/v1/chat/completions" if chat else "/v1/completions"
        route = f"{record.region}/{record.cluster}/{record.chip}/{record.served_model}"
        attributes: dict[str, Any] = {
            "http.request.method": "POST",
            "http.route": path,
            "gen_ai.operation.name": "chat" if chat else "text_completion",
            "gen_ai.request.model": record.model,
            "gen_ai.response.model": record.served_model,
            "gen_ai.usage.input_tokens": record.input_tokens,
            "gen_ai.usage.output_tokens": record.output_tokens,
            "tesseract.request_id": record.request_id,
            "tesseract.org_id": record.org_id,
            "tesseract.route": route,
            "tesseract.deployment": record.deployment,
            "tesseract.region": record.region,
            "tesseract.chip": record.chip,
            "tesseract.strategy": plan.strategy,
            "tesseract.status": record.status,
            "tesseract.stream": record.stream,
            "tesseract.attempts": record.attempts,
            "tesseract.latency_ms": round(record.latency_ms or 0.0, 3),
            "tesseract.sla_met": record.sla_met,
        }
        if record.ttft_ms is not None:
            attributes["tesseract.ttft_ms"] = round(record.ttft_ms, 3)
        error = self._status(self._code.ERROR) if record.status == "error" else self._status()
        self._processor.on_end(
            self._span(
                name=f"POST {path}",
                context=server,
                parent=parent,
                resource=self._resource,
                attributes=attributes,
                kind=api.SpanKind.SERVER,
                status=error,
                start_time=ns(call.started),
                end_time=end_ns,
                instrumentation_scope=self._scope,
            )
        )
        choices = plan.choices
        last = len(trace.attempts) - 1
        for i, (span_id, sent) in enumerate(trace.attempts):
            backend = choices[i].backend_id if i < len(choices) else ""
            outcome = record.status if i == last else "failed"
            self._processor.on_end(
                self._span(
                    name=f"backend {backend}",
                    context=api.SpanContext(trace_id, int(span_id, 16), False, flags),
                    parent=server,
                    resource=self._resource,
                    attributes={"tesseract.deployment": backend, "tesseract.attempt": i + 1,
                                "tesseract.outcome": outcome},
                    kind=api.SpanKind.CLIENT,
                    status=self._status(self._code.ERROR) if outcome != "ok" else self._status(),
                    start_time=ns(sent),
                    end_time=end_ns if i == last else ns(trace.attempts[i + 1][1]),
                    instrumentation_scope=self._scope,
                )
            )  # fmt: skip

    def flush(self, timeout_s: float = 5.0) -> bool:
        return bool(self._processor.force_flush(int(timeout_s * 1000)))

    def shutdown(self) -> None:
        self._processor.shutdown()


class _Export:
    exporter: SpanExporter | None = None
    configured = False


_export = _Export()


def span_exporter() -> SpanExporter | None:
    """The process's span exporter, set up on first use from the settings; None: off."""
    if not _export.configured:
        configure_export(settings.OTEL_EXPORTER_OTLP_ENDPOINT)
    return _export.exporter


def configure_export(endpoint: str | None) -> SpanExporter | None:
    """Export spans to `endpoint` (an OTLP/HTTP base URL) from now on; empty: stop."""
    old = _export.exporter
    _export.exporter = SpanExporter(endpoint) if endpoint else None
    _export.configured = True
    if old is not None:
        atexit.unregister(old.shutdown)
        old.shutdown()
    if _export.exporter is not None:
        atexit.register(_export.exporter.shutdown)  # flush what is queued at exit
    return _export.exporter
