"""One inference request, end to end, as an async generator of frames.

`Gateway.run(call)` routes the request, calls backends in the plan's order until one
answers (failing over only before the first token, within the deadline, never outside
the plan, which is policy-filtered), and yields:

    Head(status, headers)   once, first
    bytes                   the JSON body (non-streamed), or one SSE `data:` payload
                            per chunk (streamed); the transport adds the framing

The HTTP transport (`app.py`, SSE) and the WebSocket consumer (`ws.py`) both consume
this generator: one code path. Errors before the head are raised as
`TesseractAPIError`; after it, a streamed response ends with an OpenAI-style error
chunk. Exactly one usage record is published per routed request (`billing.metering`),
before the last frame is yielded, whatever happened.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import aiohttp
import msgspec
from django.conf import settings

from accounts.keycache import ResolvedKey
from backends import health
from billing import metering
from routing.engine import DEFAULT_STRATEGY, STRATEGIES, Choice, Plan, route
from routing.errors import (
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
    ModelNotFound,
    SlaUnsatisfiable,
    TesseractAPIError,
)
from routing.gateway import affinity, observability
from routing.gateway.live import InFlight, WorldHolder
from routing.gateway.parse import Parsed
from routing.gateway.upstream import (
    Upstream,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    read_body,
    sse_events,
)
from routing.snapshot import Endpoint, World

logger = logging.getLogger(__name__)

UPSTREAM_PATHS = {"chat.completions": "/chat/completions", "completions": "/completions"}
_MTOK = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Head:
    status: int
    headers: list[tuple[bytes, bytes]]


@dataclass
class Call:
    """One request as the transport hands it over."""

    key: ResolvedKey
    parsed: Parsed
    started: float = field(default_factory=time.perf_counter)
    request_id: str = field(default_factory=lambda: f"req_{secrets.token_hex(12)}")
    trace: observability.Trace = field(default_factory=observability.Trace.start)

    @property
    def trace_id(self) -> str:
        """The W3C trace id (32 hex): the caller's `traceparent`'s, or a new one."""
        return self.trace.trace_id


@dataclass(slots=True)
class _Session:
    org_id: int
    id: str
    held: affinity.Held | None
    move_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _UsageOnly(msgspec.Struct):
    usage: _Usage | None = None
    choices: list[Any] = []


class _ChunkHead(msgspec.Struct):
    id: str = ""
    created: int = 0
    model: str = ""


_usage_decoder = msgspec.json.Decoder(_UsageOnly)
#: A chunk that carries generated text (not the role-only first chunk, not usage).
_HAS_TEXT = re.compile(rb'"(?:content|text)":\s*"[^"]')
_head_decoder = msgspec.json.Decoder(_ChunkHead)
_encode = msgspec.json.encode


def check_strategy(name: str | None) -> str:
    if name is None:
        return DEFAULT_STRATEGY
    if name not in STRATEGIES:
        raise InvalidRequest(
            f"Unknown strategy {name!r}; one of {', '.join(sorted(STRATEGIES))}.",
            param="tesseract.strategy",
            code="invalid_value",
        )
    return name


def infeasible_error(plan: Plan) -> TesseractAPIError:
    """The honest answer when nothing can serve a request as asked."""
    why = plan.infeasible
    assert why is not None
    details = why.to_dict()
    if why.code == "model_not_served":
        return ModelNotFound(
            f"The model {plan.model!r} does not exist or is not served.", param="model"
        )
    if why.code in ("sla_ttft", "sla_latency"):
        best = (
            f" The best achievable is {why.best_ttft_ms:.0f} ms to first token and "
            f"{why.best_total_ms:.0f} ms in total, on {why.best_backend_id}."
            if why.best_ttft_ms is not None and why.best_total_ms is not None
            else ""
        )
        return SlaUnsatisfiable(
            f"No backend can meet this SLA: {why.detail}.{best}", details=details
        )
    if why.code in ("compliance", "residency", "price", "unreachable"):
        return SlaUnsatisfiable(
            f"No backend satisfies this request's policy: {why.detail}.",
            code="policy_unsatisfiable",
            details=details,
        )
    return BackendUnavailable(
        f"No backend can take this request now: {why.detail}.", details=details
    )


def _cost(endpoint: Endpoint, input_tokens: int, output_tokens: int) -> Decimal:
    return (
        Decimal(input_tokens) * Decimal(str(endpoint.price_input_per_mtok))
        + Decimal(output_tokens) * Decimal(str(endpoint.price_output_per_mtok))
    ) / _MTOK


@dataclass
class _Attempt:
    """Book-keeping of the request as it goes; becomes the usage record and the headers."""

    call: Call
    plan: Plan
    choice: Choice | None = None
    endpoint: Endpoint | None = None
    attempts: int = 0
    routed_at: float = 0.0
    sent_at: float = 0.0
    first_at: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    counted_chunks: int = 0
    status: str = "ok"
    published: bool = False

    # -- timing --------------------------------------------------------------------

    def ttft_ms(self) -> float | None:
        return None if self.first_at is None else (self.first_at - self.call.started) * 1000

    def timings(self, end: float) -> dict[str, float]:
        p = self.choice.prediction if self.choice else None
        upstream_ms = (end - self.sent_at) * 1000 if self.sent_at else 0.0
        net = p.rtt_ms if p else 0.0
        queue = p.queue_ms if p else 0.0
        return {
            "route": (self.routed_at - self.call.started) * 1000,
            "net": net,
            "queue": queue,
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
        return headers

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
            },
            "strategy": self.plan.strategy,
            "degraded": None if self.plan.degraded is None else self.plan.degraded.to_dict(),
            "attempts": self.attempts,
            "timing_ms": {k: round(v, 2) for k, v in t.items()},
            "ttft_ms": None if self.first_at is None else round(self.ttft_ms() or 0.0, 2),
            "predicted": self.choice.to_dict()["predicted"] if self.choice else None,
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
        if self.status == "error" and self.first_at is None:
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
                {"certifications": list(e.certifications), "jurisdictions": list(e.jurisdictions)}
                if e
                else {}
            ),
            trace_id=call.trace_id,
        )


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
        }.items()
        if v is not None
    }


class Gateway:
    """Everything a gateway process shares across requests."""

    def __init__(self, *, holder: WorldHolder, upstream: Upstream, redis: Any) -> None:
        self.holder = holder
        self.upstream = upstream
        self.redis = redis
        self.usage = metering.Publisher(redis)
        self.inflight = InFlight()
        self._background: set[asyncio.Task[Any]] = set()
        self._suspects: set[str] = set()

    async def plan(
        self, parsed: Parsed, strategy: str | None = None, *, org_id: int | None = None
    ) -> tuple[World, Plan]:
        world, plan, _ = await self._route(parsed, strategy, org_id)
        return world, plan

    async def _route(
        self, parsed: Parsed, strategy: str | None, org_id: int | None
    ) -> tuple[World, Plan, _Session | None]:
        world = await self.holder.get()
        snapshot = self.inflight.apply(world.snapshot, parsed.route.model)
        request, session = parsed.route, None
        session_id = request.session_id
        if session_id is not None and org_id is not None:
            held = await affinity.held(self.redis, org_id, session_id)
            request = affinity.with_affinity(request, held)
            session = _Session(org_id, session_id, held)
        name = check_strategy(strategy or parsed.strategy)
        plan = route(snapshot, request, name)
        if session is not None and session.held is not None:
            held = session.held

            def rank_holder() -> Choice | None:
                try:
                    region = snapshot.backend(held.backend_id).region
                except KeyError:
                    return None
                alone = route(snapshot, replace(request, allowed_regions=frozenset({region})), name)
                return next((c for c in alone.choices if c.backend_id == held.backend_id), None)

            session.move_reason = affinity.stay_if_possible(plan, held, rank_holder)
        return world, plan, session

    def _served(self, session: _Session | None, attempt: _Attempt) -> None:
        """Remember where the session's context now lives; record a move."""
        if session is None or attempt.choice is None:
            return
        backend = attempt.choice.backend_id
        tokens = (attempt.input_tokens or 0) + (attempt.output_tokens or 0)
        jobs = [affinity.remember(self.redis, session.org_id, session.id, backend, tokens)]
        held = session.held
        if held is not None and held.backend_id != backend:
            reason = session.move_reason or f"failover after {attempt.attempts - 1} failure(s)"
            jobs.append(
                affinity.record_move(session.org_id, session.id, held.backend_id, backend, reason)
            )
        for job in jobs:
            task = asyncio.get_running_loop().create_task(job)
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _upstream_body(self, parsed: Parsed, endpoint: Endpoint) -> bytes:
        body = dict(parsed.body)
        body["model"] = endpoint.model
        if parsed.stream:
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True  # we meter from the backend's own count
            body["stream_options"] = options
        return _encode(body)

    def _upstream_headers(self, call: Call) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "x-request-id": call.request_id,
            **call.trace.upstream_headers(),  # traceparent: a new span per attempt
        }

    async def _publish(self, attempt: _Attempt, end: float) -> None:
        if attempt.published:
            return
        attempt.published = True
        record = attempt.record(end)
        observability.request_finished(call=attempt.call, plan=attempt.plan, record=record)
        await self.usage.publish(record)

    def _passive(self, backend_id: str, error: Exception | None) -> None:
        """Feed the health state machine with what this request saw (passive health).

        A failure always counts; a success only for a backend this process has seen
        fail, so the common case costs no Redis write.
        """
        if error is None:
            if backend_id not in self._suspects:
                return
            self._suspects.discard(backend_id)
            outcome, reason = health.OK, "served a request"
        else:
            self._suspects.add(backend_id)
            outcome, reason = health.FAIL, f"{type(error).__name__}: {error}"
        task = asyncio.get_running_loop().create_task(
            health.observe_async(self.redis, backend_id, outcome, source="passive", reason=reason)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _publish_later(self, attempt: _Attempt) -> None:
        """For a cancelled request: publish from a task of its own (the caller is unwinding)."""
        task = asyncio.get_running_loop().create_task(self._publish(attempt, time.perf_counter()))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def run(self, call: Call) -> AsyncGenerator[Head | bytes, None]:
        parsed = call.parsed
        world, plan, session = await self._route(parsed, None, call.key.org_id)
        observability.plan_made(plan)
        if not plan.ok:
            raise infeasible_error(plan)
        attempt = _Attempt(call=call, plan=plan, routed_at=time.perf_counter())
        r = parsed.route
        deadline_s = (
            r.max_latency_ms / 1000
            if r.max_latency_ms is not None
            else settings.TESSERACT_DEADLINE_S
        )
        deadline = call.started + deadline_s
        first_token_limit = settings.TESSERACT_FIRST_TOKEN_TIMEOUT_S
        last_error: Exception | None = None
        try:
            for choice in plan.choices:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                endpoint = world.endpoints[choice.backend_id]
                attempt.choice, attempt.endpoint = choice, endpoint
                attempt.attempts += 1
                attempt.sent_at = time.perf_counter()
                self.inflight.start(choice.backend_id, endpoint.model)
                try:
                    if parsed.stream:
                        async for frame in self._stream(
                            call, attempt, remaining, first_token_limit
                        ):
                            yield frame
                    else:
                        async for frame in self._whole(call, attempt, remaining):
                            yield frame
                    self._passive(choice.backend_id, None)
                    self._served(session, attempt)
                    return
                except UpstreamError as exc:
                    self._passive(choice.backend_id, exc)
                    if attempt.first_at is not None:
                        raise  # after the first token there is no going back
                    observability.failed_over(endpoint, exc)
                    last_error = exc
                    logger.warning(
                        "backend %s failed before the first token (%s); trying the next",
                        choice.backend_id,
                        exc,
                    )
                finally:
                    self.inflight.finish(choice.backend_id)
            attempt.status = "error"
            error: TesseractAPIError
            if isinstance(last_error, UpstreamTimeout) or last_error is None:
                error = BackendTimeout(
                    f"No backend answered within the deadline ({deadline_s * 1000:.0f} ms) "
                    f"after {attempt.attempts} attempt(s)."
                )
            else:
                error = BackendUnavailable(
                    f"Every backend the policy allows failed ({attempt.attempts} tried); "
                    f"the last said: {last_error}."
                )
            await self._publish(attempt, time.perf_counter())
            raise error
        except asyncio.CancelledError:
            attempt.status = "cancelled"
            self._publish_later(attempt)
            raise

    async def _send(
        self, call: Call, attempt: _Attempt, timeout_s: float
    ) -> aiohttp.ClientResponse:
        endpoint = attempt.endpoint
        assert endpoint is not None
        return await self.upstream.open(
            endpoint.url + UPSTREAM_PATHS[call.parsed.endpoint],
            self._upstream_body(call.parsed, endpoint),
            self._upstream_headers(call),
            timeout_s=timeout_s,
        )

    async def _rejected(self, attempt: _Attempt, exc: UpstreamRejected) -> list[Head | bytes]:
        """The backend refused the request itself (a 4xx): relay its answer, no failover."""
        attempt.status = "error"
        await self._publish(attempt, time.perf_counter())
        return [Head(exc.status, [(b"content-type", b"application/json")]), exc.body]

    async def _whole(
        self, call: Call, attempt: _Attempt, remaining: float
    ) -> AsyncIterator[Head | bytes]:
        try:
            response = await self._send(call, attempt, remaining)
            payload = await read_body(
                response, timeout_s=max(remaining - (time.perf_counter() - attempt.sent_at), 0.001)
            )
        except UpstreamRejected as exc:
            for frame in await self._rejected(attempt, exc):
                yield frame
            return
        end = time.perf_counter()
        attempt.first_at = end
        try:
            usage = _usage_decoder.decode(payload).usage
        except msgspec.DecodeError:
            usage = None
        if usage is not None:
            attempt.input_tokens, attempt.output_tokens = (
                usage.prompt_tokens,
                usage.completion_tokens,
            )
        await self._publish(attempt, end)
        yield Head(200, attempt.headers(b"application/json", end))
        yield _splice(payload, attempt.info(end))

    async def _stream(
        self, call: Call, attempt: _Attempt, remaining: float, first_token_limit: float
    ) -> AsyncIterator[Head | bytes]:
        try:
            response = await self._send(call, attempt, min(remaining, first_token_limit))
        except UpstreamRejected as exc:
            for frame in await self._rejected(attempt, exc):
                yield frame
            return
        events = sse_events(response)
        wait = min(remaining - (time.perf_counter() - attempt.sent_at), first_token_limit)
        try:
            async with asyncio.timeout(max(wait, 0.001)):
                first = await anext(events)
        except TimeoutError as exc:
            await events.aclose()
            raise UpstreamTimeout("no first token in time") from exc
        except StopAsyncIteration as exc:
            raise UpstreamError("the stream ended before the first token") from exc
        attempt.first_at = time.perf_counter()
        head = _head_decoder.decode(first) if first != b"[DONE]" else _ChunkHead()
        yield Head(200, attempt.headers(b"text/event-stream", attempt.first_at))

        pending: list[bytes] = [] if first == b"[DONE]" else [first]
        usage: _Usage | None = None
        try:

            async def rest() -> AsyncIterator[bytes]:
                for item in pending:
                    yield item
                async for item in events:
                    yield item

            async for data in rest():
                if data == b"[DONE]":
                    break
                if b'"usage"' in data:
                    parsed = _usage_decoder.decode(data)
                    if parsed.usage is not None and not parsed.choices:
                        usage = parsed.usage
                        continue  # re-sent below, with the route, if the client asked
                if _HAS_TEXT.search(data):
                    attempt.counted_chunks += 1  # ~1 token each: the estimate if usage is missing
                yield data
        except UpstreamError as exc:
            attempt.status = "error"
            end = time.perf_counter()
            await self._publish(attempt, end)
            yield TesseractAPIError(
                f"The backend failed mid-stream: {exc}", code="backend_stream_error"
            ).to_json()
            return
        finally:
            await events.aclose()
        if usage is not None:
            attempt.input_tokens, attempt.output_tokens = (
                usage.prompt_tokens,
                usage.completion_tokens,
            )
        end = time.perf_counter()
        await self._publish(attempt, end)
        final: dict[str, Any] = {
            "id": head.id,
            "object": "chat.completion.chunk"
            if call.parsed.endpoint == "chat.completions"
            else "text_completion",
            "created": head.created,
            "model": head.model,
            "choices": [],
            "tesseract": attempt.info(end),
        }
        if call.parsed.include_usage and usage is not None:
            final["usage"] = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            }
        yield _encode(final)


def _splice(payload: bytes, info: dict[str, Any]) -> bytes:
    """Add `"tesseract": {...}` to a JSON object without decoding the rest of it."""
    body = payload.rstrip()
    if not body.endswith(b"}"):
        return payload
    return body[:-1] + b',"tesseract":' + _encode(info) + b"}"
