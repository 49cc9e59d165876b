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
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import msgspec
from django.conf import settings

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
from routing.gateway.attempt import Attempt, Call, Head
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

    def _served(self, session: _Session | None, attempt: Attempt) -> None:
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

    async def _publish(self, attempt: Attempt, end: float) -> None:
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

    def _publish_later(self, attempt: Attempt) -> None:
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
        attempt = Attempt(call=call, plan=plan, routed_at=time.perf_counter())
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
                last = attempt.choice.backend_id if attempt.choice else "?"
                error = BackendUnavailable(
                    f"Every backend the policy allows failed ({attempt.attempts} tried); "
                    f"the last, {last}: {_public(last_error)}."
                )
            await self._publish(attempt, time.perf_counter())
            raise error
        except asyncio.CancelledError:
            attempt.status = "cancelled"
            self._publish_later(attempt)
            raise

    async def _send(self, call: Call, attempt: Attempt, timeout_s: float) -> aiohttp.ClientResponse:
        endpoint = attempt.endpoint
        assert endpoint is not None
        return await self.upstream.open(
            endpoint.url + UPSTREAM_PATHS[call.parsed.endpoint],
            self._upstream_body(call.parsed, endpoint),
            self._upstream_headers(call),
            timeout_s=timeout_s,
        )

    async def _rejected(self, attempt: Attempt, exc: UpstreamRejected) -> list[Head | bytes]:
        """The backend refused the request itself (a 4xx): relay its answer, no failover."""
        attempt.status = "error"
        await self._publish(attempt, time.perf_counter())
        return [Head(exc.status, [(b"content-type", b"application/json")]), exc.body]

    async def _whole(
        self, call: Call, attempt: Attempt, remaining: float
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
        self, call: Call, attempt: Attempt, remaining: float, first_token_limit: float
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
            slug = attempt.choice.backend_id if attempt.choice else "the backend"
            yield TesseractAPIError(
                f"{slug} failed mid-stream: {exc.public}.", code="backend_stream_error"
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


def _public(error: Exception) -> str:
    """What a client may read of a backend's failure: never its URL, host or port."""
    return error.public if isinstance(error, UpstreamError) else "it failed"


def _splice(payload: bytes, info: dict[str, Any]) -> bytes:
    """Add `"tesseract": {...}` to a JSON object without decoding the rest of it."""
    body = payload.rstrip()
    if not body.endswith(b"}"):
        return payload
    return body[:-1] + b',"tesseract":' + _encode(info) + b"}"
