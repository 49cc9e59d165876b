"""One inference request, end to end, as an async generator of frames.

`Gateway.run(call)` routes the request, calls backends in the plan's order until one
answers (failing over only before the first token, within the deadline, never outside
the plan, which is policy-filtered), and yields:

    Head(status, headers)   once, first
    bytes                   the JSON body (non-streamed, or an error's answer)
    list[bytes]             streamed: the SSE `data:` payloads that arrived together
                            (a chunk each); the transport adds the framing

The HTTP transport (`app.py`, SSE) and the WebSocket consumer (`ws.py`) both consume
this generator: one code path. Errors before the head are raised as
`TesseractAPIError`; after it, a streamed response ends with an OpenAI-style error
chunk. Exactly one usage record is published per routed request (`billing.metering`),
before the last frame is yielded, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import aiohttp
import msgspec
from django.conf import settings
from redis import exceptions as redis_errors

from backends import health, livestate, providers
from backends.snapshot import Endpoint, World
from billing import limits, metering
from routing.engine import (
    DEFAULT_STRATEGY,
    NO_DEADLINE_MS,
    POLICY_CODES,
    STRATEGIES,
    Choice,
    Plan,
    Request,
    route,
)
from routing.errors import (
    BackendTimeout,
    BackendUnavailable,
    BudgetExceeded,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    SlaUnsatisfiable,
    TesseractAPIError,
)
from routing.gateway import affinity, observability
from routing.gateway.admission import Admission
from routing.gateway.attempt import Attempt, Call, Frame, Head, attempt_budget
from routing.gateway.live import InFlight, WorldHolder
from routing.gateway.parse import Parsed, check_regions
from routing.gateway.upstream import (
    StreamGuard,
    Upstream,
    UpstreamAuthRejected,
    UpstreamError,
    UpstreamMisconfigured,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    sse_batches,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

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


#: Retry-After (s) of a 503 whose allowed backends are all out, by the reason: a full
#: queue frees within a second or so; a DOWN or unloaded backend is re-checked by every
#: health round (seconds); a drain or a provider's credential waits for an operator.
#: A deployment cooling after a 429 gives its own time (`_cooling_retry_s`).
RETRY_AFTER_S = {
    "capacity": 1, "down": 5, "not_loaded": 5, "cooling": 5, "drained": 30, "provider_out": 30,
}  # fmt: skip


def infeasible_error(plan: Plan, live: livestate.LiveMaps | None = None) -> TesseractAPIError:
    """The honest answer when nothing can serve a request as asked.

    The client's to change (422): its policy matches no backend of the catalog, or its
    SLA is beyond even the healthy backends it allows. Ours (503, with Retry-After):
    backends its policy allows exist but are all out now — drained, DOWN, cooling after
    a provider's 429, their provider rejected our credential, or their queues are full.
    `live` (the world's live maps) gives a cooling deployment's end of rest.
    """
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
    if why.code in POLICY_CODES:
        return SlaUnsatisfiable(
            f"No backend satisfies this request's policy: {why.detail}.",
            code="policy_unsatisfiable",
            details=details,
        )
    retry_s = RETRY_AFTER_S.get(why.code, 5)
    if why.code == "cooling" and live is not None:
        retry_s = _cooling_retry_s(why.unavailable, live) or retry_s
    return BackendUnavailable(
        f"No backend can take this request now: {why.detail}. Backends this request "
        f"allows exist but are temporarily out; retry in {retry_s} s.",
        retry_after_s=retry_s,
        details=details,
    )


def _cooling_retry_s(backend_ids: tuple[str, ...], live: livestate.LiveMaps) -> int | None:
    """Seconds until the first of these deployments ends its rest (None: none rests)."""
    now = time.time()
    ends = [live.cooling[b] for b in backend_ids if live.cooling.get(b, 0.0) > now]
    return max(1, math.ceil(min(ends) - now)) if ends else None


#: What says Redis cannot be reached (as opposed to a script or a value it refused).
#: A Redis Cluster none of whose nodes answers raises RedisClusterException (not a
#: RedisError), one that lost a shard ClusterDownError.
_REDIS_DOWN = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,
    redis_errors.RedisClusterException,
    OSError,
)


def metering_unavailable() -> TesseractAPIError:
    """Refuse new work while usage cannot be recorded: nothing is served unbilled."""
    return BackendUnavailable(
        "Usage metering is temporarily unavailable, so Tesseract is not accepting new "
        "requests (nothing was served or billed). Retry in a few seconds.",
        code="metering_unavailable",
        retry_after_s=2,
    )


class Gateway:
    """Everything a gateway process shares across requests."""

    def __init__(self, *, holder: WorldHolder, upstream: Upstream, redis: Any) -> None:
        self.holder = holder
        self.upstream = upstream
        self.redis = redis
        self.usage = metering.Publisher(redis)
        self.admission = Admission(redis)
        self.inflight = InFlight()
        #: requests of this process in flight (routed, admitted, served), this one included
        self.running = 0
        self._background: set[asyncio.Task[Any]] = set()
        self._suspects: set[str] = set()

    async def plan(
        self, parsed: Parsed, strategy: str | None = None, *, org_id: int | None = None
    ) -> tuple[World, Plan]:
        world, plan, _ = await self._route(parsed, strategy, org_id)
        return world, plan

    async def _route(
        self,
        parsed: Parsed,
        strategy: str | None,
        org_id: int | None,
        request: Request | None = None,
    ) -> tuple[World, Plan, _Session | None]:
        """Plan `request` (the parsed one by default) on the world of this instant."""
        world = await self.holder.get()
        request, session = request or parsed.route, None
        snapshot = self.holder.snapshot(world)
        check_regions(parsed, snapshot)
        for model in (request.model, *request.fallback_models):  # what the plan may use
            snapshot = self.inflight.apply(snapshot, model, request.org_id, live=world.live)
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

    async def _route_in_time(self, call: Call) -> tuple[World, Plan, _Session | None, float]:
        """Plan the call; while the plan asks to hold it (`Plan.hold_ms`: a loose
        deadline, and the backend it would take nearly full), wait that long and plan
        it again, its deadlines shorter by the time since it arrived. If a plan made
        after a hold finds nothing, the one that held it is served. Also returns the
        time held, ms."""
        parsed, org_id = call.parsed, call.key.org_id
        world, plan, session = await self._route(parsed, None, org_id)
        if not plan.hold_ms:
            return world, plan, session, 0.0
        held_from = time.perf_counter()
        with observability.holding(plan.model):
            while plan.hold_ms:
                await asyncio.sleep(plan.hold_ms / 1000.0)
                since_ms = (time.perf_counter() - call.started) * 1000.0
                again = await self._route(parsed, None, org_id, parsed.route.held_for(since_ms))
                if not again[1].ok:
                    break
                world, plan, session = again
        return world, plan, session, (time.perf_counter() - held_from) * 1000.0

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

    def _upstream_body(self, call: Call, endpoint: Endpoint, choice: Choice) -> bytes:
        parsed = call.parsed
        body = dict(parsed.body)
        body["model"] = endpoint.upstream_model  # the provider's own id for the model
        # A backend's queue order is ours to set, for every tenant alike: a client's
        # own "priority" is never passed on (on a server ordering by it, it would jump
        # every other tenant's requests).
        body.pop("priority", None)
        if endpoint.priority_scheduling:  # it serves the earliest deadline first
            body["priority"] = queue_priority(call, choice)
        if parsed.stream:
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True  # we meter from the backend's own count
            body["stream_options"] = options
        return _encode(body)

    def _upstream_headers(self, call: Call, endpoint: Endpoint) -> dict[str, str]:
        return {
            **endpoint.upstream_headers(),  # the provider's extra headers and credential
            "content-type": "application/json",
            "x-request-id": call.request_id,
            **call.trace.upstream_headers(),  # traceparent: a new span per attempt
        }

    def _provider_failed(self, endpoint: Endpoint, exc: UpstreamError) -> None:
        """A provider's 429 rests the deployment; its 401/403 takes the provider out.

        Both are announced in Redis, so every gateway routes around them within
        milliseconds (this one, a rest at once); neither is the backend's ill health
        (no passive failure).
        """
        job: Any
        if isinstance(exc, UpstreamRateLimited):
            now = time.time()
            self.holder.rest(endpoint.backend_id, livestate.cooling_until(exc.retry_after_s, now))
            job = livestate.acool(self.redis, endpoint.backend_id, exc.retry_after_s, now=now)
            logger.warning(
                "%s is rate-limited by its provider: resting it for %.1f s",
                endpoint.backend_id,
                exc.retry_after_s,
            )
        else:
            status = exc.status if isinstance(exc, UpstreamAuthRejected) else 0
            reason = providers.rejection_reason(status, endpoint.backend_id)
            job = providers.amark_rejected(self.redis, endpoint.provider, reason)
        task = asyncio.get_running_loop().create_task(job)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _metering_lost(self, exc: BaseException) -> TesseractAPIError:
        """Redis went away before this process noticed (affinity, limits): the answer
        the publisher gives when it already knows (`metering_unavailable`), and now it
        does."""
        self.usage.report_down(exc)
        return metering_unavailable()

    async def _admitted(self, attempt: Attempt) -> None:
        """Wait for an admission sent beside the backend call (`Admission.overlap`):
        the ticket, or its refusal raised (the backend's answer goes unused)."""
        pending = attempt.pending
        if pending is None:
            return
        try:
            attempt.ticket = await self.admission.resolve(pending)
        except Exception as exc:  # (a hang-up is not: `_publish` waits for the answer)
            attempt.pending, attempt.refused = None, True
            if isinstance(exc, RateLimited | BudgetExceeded):
                observability.overlap_refused()
            elif isinstance(exc, _REDIS_DOWN):
                raise self._metering_lost(exc) from exc
            raise
        attempt.pending = None

    async def _publish(self, attempt: Attempt, end: float) -> None:
        if attempt.pending is not None:  # before `published`: a hang-up here leaves the
            with contextlib.suppress(Exception):  # record to `run`'s `_publish_later`
                await self._admitted(attempt)
        if attempt.published or attempt.refused:
            return  # refused: nothing was served, nothing is metered
        if attempt.deferred is not None:
            await self._publish_admitted(attempt, end)
            return
        attempt.published = True
        record = attempt.record(end)
        observability.request_finished(call=attempt.call, plan=attempt.plan, record=record)
        world = self.holder.current
        settle = self.admission.settlement(
            attempt.ticket, attempt.endpoint, record, world.endpoints if world else None
        )
        await self.usage.publish(record, settle=settle)

    async def _publish_admitted(self, attempt: Attempt, end: float) -> None:
        """A deferred request (`Admission.defer`), served: admitted and metered in one
        atomic step, or refused (raised, nothing metered).

        Redis lost before it answered: the script may have run (the record is in the
        stream) or not. The answer is given and the record spooled, as for any request
        that ends during an outage: the drain stores a request id once, so a record the
        script did append is not counted twice, and a client is never billed for an
        answer it did not get. (It was deferred only with a tenth of every limit and
        cap to spare, so admitting it unchecked cannot overrun them.)"""
        ask, attempt.deferred = attempt.deferred, None
        attempt.published = True  # one try, whatever it answers: exactly one record
        record = attempt.record(end)
        world = self.holder.current
        try:
            attempt.ticket = await self.admission.admit_served(
                ask, record, attempt.endpoint, world.endpoints if world else None
            )
        except _REDIS_DOWN as exc:
            self.usage.report_down(exc)
            await self.usage.publish(record)  # to the spool: the publisher is down now
        observability.request_finished(call=attempt.call, plan=attempt.plan, record=record)

    def _passive(
        self, backend_id: str, error: Exception | None, outcome: str = health.FAIL
    ) -> None:
        """Feed the health state machine with what this request saw (passive health).

        A failure (or, with `outcome=health.SLOW`, slowness) always counts; a success
        only for a backend this process has seen fail, so the common case costs no
        Redis write.
        """
        if error is None:
            if backend_id not in self._suspects:
                return
            self._suspects.discard(backend_id)
            outcome, reason = health.OK, "served a request"
        else:
            self._suspects.add(backend_id)
            reason = f"{type(error).__name__}: {error}"
        task = asyncio.get_running_loop().create_task(
            health.observe_async(self.redis, backend_id, outcome, source="passive", reason=reason)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _publish_later(self, attempt: Attempt) -> None:
        """For a request that ended abnormally: publish from a task of its own (the caller
        is unwinding, and may be cancelled again or closed before an await returns)."""
        task = asyncio.get_running_loop().create_task(
            self._publish_quietly(attempt, time.perf_counter())
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _publish_quietly(self, attempt: Attempt, end: float) -> None:
        """`_publish`, with nobody left to answer: a deferred request refused, or not
        admitted for want of Redis, is not metered (`_publish_admitted`), and says so
        only in the metrics and the log."""
        with contextlib.suppress(TesseractAPIError):
            await self._publish(attempt, end)

    async def run(self, call: Call) -> AsyncGenerator[Frame, None]:
        if not self.usage.available:  # an attribute read: no round trip on the happy path
            raise metering_unavailable()
        parsed = call.parsed
        self.running += 1  # until it ends, however it ends
        try:
            world, plan, session, held_ms = await self._route_in_time(call)
            observability.plan_made(plan)
            if not plan.ok:
                raise infeasible_error(plan, world.live)
            deadline_s = _deadline_s(parsed, plan)
            ask = self.admission.prepare(call, plan, world, deadline_s)  # 403: suspended
            ticket, pending, deferred = None, None, None
            if ask is not None:
                # Not waiting for the answer before the backend is called pays only in a
                # process with nothing else in flight: under load, the requests that went
                # ahead measured more CPU per request for all (bench/results/limits.md).
                alone = self.running == 1
                if alone and not world.endpoints[plan.choices[0].backend_id].provider:
                    if not parsed.stream and self.admission.defer(ask):
                        deferred = ask  # admitted with its usage record, once served
                    else:
                        pending = self.admission.overlap(ask)  # the backend goes beside it
                if pending is None and deferred is None:
                    ticket = await self.admission.ask(ask)  # 429: nothing called
        except _REDIS_DOWN as exc:
            self.running -= 1
            raise self._metering_lost(exc) from exc
        except BaseException:
            self.running -= 1
            raise
        attempt = Attempt(
            call=call,
            plan=plan,
            routed_at=time.perf_counter(),
            held_ms=held_ms,
            ticket=ticket,
            pending=pending,
            deferred=deferred,
        )
        deadline = call.started + deadline_s
        first_token_limit = settings.TESSERACT_FIRST_TOKEN_TIMEOUT_S
        last_error: Exception | None = None
        try:
            choices = plan.choices
            for n, choice in enumerate(choices):
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                endpoint = world.endpoints[choice.backend_id]
                budget = attempt_budget(
                    choice.prediction,
                    remaining_s=remaining,
                    first_token_s=endpoint.first_token_timeout_s or first_token_limit,
                    stream=parsed.stream,
                    last=n == len(choices) - 1,
                )
                attempt.choice, attempt.endpoint = choice, endpoint
                attempt.attempts += 1
                attempt.sent_at = time.perf_counter()
                self.inflight.start(choice.backend_id, endpoint.model)
                watch = self.holder.observed.watch(attempt)  # its speed: evidence at once
                try:
                    body = (
                        self._stream(call, attempt, budget, deadline)
                        if parsed.stream
                        else self._whole(call, attempt, budget)
                    )
                    # Closed with us when the client leaves at a yield, so the backend
                    # call ends now, not whenever the collector finalizes it.
                    async with contextlib.aclosing(body) as frames:
                        async for frame in frames:
                            yield frame
                    self._passive(choice.backend_id, attempt.failure, attempt.failure_outcome)
                    self._served(session, attempt)
                    return
                except UpstreamError as exc:
                    if isinstance(exc, UpstreamRateLimited) or (
                        isinstance(exc, UpstreamAuthRejected) and endpoint.provider
                    ):
                        self._provider_failed(endpoint, exc)  # not the backend's ill health
                    else:
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
                    watch.close()
                    self.inflight.finish(choice.backend_id)
            attempt.status = "error"
            await self._admitted(attempt)  # a refusal outranks the backends' failures
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
                    f"the last, {last}: {_public(last_error)}.",
                    retry_after_s=(
                        max(1, math.ceil(last_error.retry_after_s))
                        if isinstance(last_error, UpstreamRateLimited)
                        else None
                    ),
                )
            await self._publish(attempt, time.perf_counter())
            error.extra_headers = attempt.limit_headers()
            raise error
        except (asyncio.CancelledError, GeneratorExit):
            # The client left: the transport cancelled us mid-await, or closed this
            # generator at a yield. What was produced up to now is billed.
            attempt.status = "cancelled"
            raise
        except BaseException:
            attempt.status = "error"  # a record already published keeps its status
            raise
        finally:
            self.running -= 1
            if not attempt.published:  # however the request ended: exactly one record
                self._publish_later(attempt)

    async def _send(self, call: Call, attempt: Attempt, timeout_s: float) -> aiohttp.ClientResponse:
        """The attempt's backend's response, its head read, within `timeout_s`."""
        return await self._call(self.upstream.open, call, attempt, timeout_s)

    async def _fetch(self, call: Call, attempt: Attempt, timeout_s: float) -> bytes:
        """The attempt's backend's whole answer, within `timeout_s` (one timer)."""
        return await self._call(self.upstream.fetch, call, attempt, timeout_s)

    async def _call(
        self,
        call_upstream: Callable[..., Awaitable[_T]],
        call: Call,
        attempt: Attempt,
        timeout_s: float,
    ) -> _T:
        endpoint = attempt.endpoint
        assert endpoint is not None
        assert attempt.choice is not None
        args = (
            endpoint.url + UPSTREAM_PATHS[call.parsed.endpoint],
            self._upstream_body(call, endpoint, attempt.choice),
            self._upstream_headers(call, endpoint),
        )
        if endpoint.provider:  # a provider's API is never called before the answer
            await self._admitted_for_provider(attempt)
        try:
            if attempt.pending is None:
                return await call_upstream(
                    *args, timeout_s=timeout_s, connect_timeout_s=endpoint.connect_timeout_s
                )
            return await self._beside_admission(
                call_upstream, args, attempt, timeout_s, endpoint.connect_timeout_s
            )
        except UpstreamRejected as exc:
            if exc.status != 404 or not endpoint.provider:
                raise
            # The catalog serves the model: a provider that does not know it has been
            # given a wrong model id or URL. Fail over; tell the operators, not the client.
            logger.error(
                "provider %s answered 404 for %s (model id %r): check its base URL and the "
                "deployment's provider_model_id",
                endpoint.provider,
                endpoint.backend_id,
                endpoint.upstream_model,
            )
            raise UpstreamMisconfigured(exc.status, exc.body) from None

    async def _admitted_for_provider(self, attempt: Attempt) -> None:
        """Before a provider's API is called (whose work we pay for): the admission's
        answer. One sent beside the call is waited for; a deferred one (the request
        failed over from a backend we run) is asked now, its claim released; Redis gone
        is `metering_unavailable`, and a refused attempt meters nothing."""
        if attempt.pending is not None:
            await self._admitted(attempt)
        elif attempt.deferred is not None:
            ask, attempt.deferred = attempt.deferred, None
            self.admission.release(ask)
            try:
                attempt.ticket = await self.admission.ask(ask)
            except BaseException as exc:
                attempt.refused = True
                if isinstance(exc, _REDIS_DOWN):
                    raise self._metering_lost(exc) from exc
                raise

    async def _beside_admission(
        self,
        call_upstream: Callable[..., Awaitable[_T]],
        args: tuple[str, bytes, dict[str, str]],
        attempt: Attempt,
        timeout_s: float,
        connect_timeout_s: float | None,
    ) -> _T:
        """The backend call while the admission is in flight: a refusal (or Redis lost)
        cuts it off as soon as it is known; the call's answer is handed on only once
        admitted (a backend's own refusal too: the admission's outranks it)."""
        pending = attempt.pending
        loop = asyncio.get_running_loop()
        guarding = True

        def cut_off_if_stopped(_: object) -> None:
            if guarding and pending.stops():
                cutoff.reschedule(loop.time())

        try:
            try:
                async with asyncio.timeout(None) as cutoff:
                    pending.reply.add_done_callback(cut_off_if_stopped)
                    result = await call_upstream(
                        *args, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s
                    )
            finally:  # before any await below: the cut-off is over
                guarding = False
                pending.reply.remove_done_callback(cut_off_if_stopped)
        except TimeoutError:
            if cutoff.expired():
                await self._admitted(attempt)  # raises the refusal, or Redis's failure
            raise
        except UpstreamRejected:
            await self._admitted(attempt)  # the admission's answer outranks the backend's
            raise
        except UpstreamError:
            # A backend that failed is failed over while the answer is on its way; an
            # answer already in is heard first (a refusal ends the request here).
            if pending.reply.done():
                await self._admitted(attempt)
            raise
        try:
            await self._admitted(attempt)
        except BaseException:
            if isinstance(result, aiohttp.ClientResponse):
                result.close()  # a stream refused after its head: not read, cut off
            raise
        return result

    async def _rejected(self, attempt: Attempt, exc: UpstreamRejected) -> list[Head | bytes]:
        """The backend refused the request itself (a 4xx): relay its answer in OpenAI's
        shape, naming the catalog's model, with no failover. The client's error: metered
        as `rejected` (nothing served, not counted against our availability)."""
        attempt.status = "rejected"
        await self._publish(attempt, time.perf_counter())
        headers = [(b"content-type", b"application/json"), *attempt.limit_headers()]
        assert attempt.endpoint is not None
        return [
            Head(exc.status, headers),
            openai_error_body(exc.status, exc.body, attempt.endpoint),
        ]

    async def _whole(
        self, call: Call, attempt: Attempt, budget: float
    ) -> AsyncGenerator[Frame, None]:
        """A non-streamed answer, within `budget` seconds (`attempt_budget`)."""
        try:
            payload = await self._fetch(call, attempt, budget)
        except UpstreamRejected as exc:
            for frame in await self._rejected(attempt, exc):
                yield frame
            return
        end = time.perf_counter()
        attempt.first_at = attempt.done_at = end
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
        endpoint = attempt.endpoint
        assert endpoint is not None
        yield _splice(endpoint.own_model(payload), attempt.info(end))

    async def _stream(
        self, call: Call, attempt: Attempt, budget: float, deadline: float
    ) -> AsyncGenerator[Frame, None]:
        """A streamed answer: its first token within `budget` seconds (`attempt_budget`),
        then no silence longer than the stall timeout, and the end by `deadline`."""
        try:
            response = await self._send(call, attempt, budget)
        except UpstreamRejected as exc:
            for frame in await self._rejected(attempt, exc):
                yield frame
            return
        guard = StreamGuard(response)
        batches = sse_batches(response, guard)
        wait = budget - (time.perf_counter() - attempt.sent_at)
        try:
            async with asyncio.timeout(max(wait, 0.001)):
                first = await anext(batches)
        except TimeoutError as exc:
            await batches.aclose()
            raise UpstreamTimeout("no first token in time") from exc
        except StopAsyncIteration as exc:
            raise UpstreamError("the stream ended before the first token") from exc
        attempt.first_at = time.perf_counter()
        head = _head_decoder.decode(first[0]) if first[0] != b"[DONE]" else _ChunkHead()
        yield Head(200, attempt.headers(b"text/event-stream", attempt.first_at))
        stall_s = settings.TESSERACT_STALL_TIMEOUT_S
        guard.arm(stall_s=stall_s, deadline_in_s=deadline - time.perf_counter())

        usage: _Usage | None = None
        endpoint = attempt.endpoint
        assert endpoint is not None
        #: the provider names the model its own way: each chunk gets the catalog's slug
        mapped = endpoint if endpoint.model_field is not None else None
        try:

            async def rest() -> AsyncIterator[list[bytes]]:
                yield first
                async for batch in batches:
                    yield batch

            done = False
            async for batch in rest():
                out: list[bytes] = []
                for data in batch:
                    if data == b"[DONE]":
                        done = True
                        break
                    if b'"usage"' in data:
                        try:
                            parsed = _usage_decoder.decode(data)
                        except msgspec.DecodeError:
                            if out:  # the chunks before the broken one reach the client
                                yield out
                            raise
                        if parsed.usage is not None and not parsed.choices:
                            usage = parsed.usage
                            continue  # re-sent below, with the route, if the client asked
                    if _HAS_TEXT.search(data):  # ~1 token each: the estimate if usage is missing
                        attempt.counted_chunks += 1
                    out.append(data if mapped is None else mapped.own_model(data))
                if out:
                    yield out
                if done:
                    break
        except UpstreamError as exc:
            attempt.status = "error"
            attempt.failure = exc
            # Still sending at the deadline: slow, not broken (health: DEGRADED, not DOWN).
            attempt.failure_outcome = health.SLOW if guard.expired == "deadline" else health.FAIL
            end = attempt.done_at = time.perf_counter()
            await self._publish(attempt, end)
            yield [_mid_stream_error(exc, guard, attempt).to_json()]
            return
        finally:
            guard.cancel()
            await batches.aclose()
        if usage is not None:
            attempt.input_tokens, attempt.output_tokens = (
                usage.prompt_tokens,
                usage.completion_tokens,
            )
        end = attempt.done_at = time.perf_counter()
        await self._publish(attempt, end)
        final: dict[str, Any] = {
            "id": head.id,
            "object": "chat.completion.chunk"
            if call.parsed.endpoint == "chat.completions"
            else "text_completion",
            "created": head.created,
            "model": head.model if mapped is None else endpoint.model,
            "choices": [],
            "tesseract": attempt.info(end),
        }
        if call.parsed.include_usage and usage is not None:
            final["usage"] = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            }
        yield [_encode(final)]


def queue_priority(call: Call, choice: Choice) -> int:
    """The priority a deadline-ordered backend queue gets for this request on the
    backend of `choice`: its first deadline on the wall clock, in ms, never before the
    first token predicted there from now, and further back where that backend is
    predicted late (`Request.queue_priority`: a request held at the gateway keeps the
    deadline it arrived with); without a deadline, the tier's default TTFT (what its
    latency objective counts)."""
    since_ms = (time.perf_counter() - call.started) * 1000.0
    arrived_ms = time.time() * 1000.0 - since_ms
    default = limits.of(call.key).default_ttft_ms or NO_DEADLINE_MS
    return call.parsed.route.queue_priority(
        arrived_ms, default, since_ms, choice.prediction.ttft_ms, late=not choice.meets_sla
    )


def _deadline_s(parsed: Parsed, plan: Plan) -> float:
    """The request's whole budget: its `max_latency_ms`, else the default deadline.

    A plan that relaxed the deadline (the caller allowed it: nothing could meet it) is
    served late rather than cut at the deadline it already cannot meet.
    """
    default = float(settings.TESSERACT_DEADLINE_S)
    max_latency_ms = parsed.route.max_latency_ms
    if max_latency_ms is None:
        return default
    if plan.degraded is not None and plan.degraded.kind == "relaxed_deadline":
        return max(default, max_latency_ms / 1000)
    return max_latency_ms / 1000


def _mid_stream_error(
    exc: UpstreamError, guard: StreamGuard, attempt: Attempt
) -> TesseractAPIError:
    """The error event that ends a stream the backend failed after its first token."""
    if guard.expired == "stall":
        return BackendTimeout(
            f"The backend sent nothing for {guard.stall_s:g} s mid-stream; the stream was ended."
        )
    if guard.expired == "deadline":
        deadline_ms = _deadline_s(attempt.call.parsed, attempt.plan) * 1000
        return BackendTimeout(
            f"The request's deadline ({deadline_ms:.0f} ms) passed mid-stream; the "
            f"stream was ended."
        )
    slug = attempt.choice.backend_id if attempt.choice else "the backend"
    return TesseractAPIError(
        f"{slug} failed mid-stream: {exc.public}.", code="backend_stream_error"
    )


def _public(error: Exception) -> str:
    """What a client may read of a backend's failure: never its URL, host or port."""
    return error.public if isinstance(error, UpstreamError) else "it failed"


def openai_error_body(status: int, body: bytes, endpoint: Endpoint) -> bytes:
    """A backend's 4xx answer in OpenAI's shape, naming the catalog's model.

    OpenAI-shaped answers (`{"error": {"message": …}}`) pass with the provider's model
    id replaced; others (TGI's `{"error": "…", "error_type": …}`, plain text) become
    `{"error": {"message", "type": "invalid_request_error", "param", "code"}}`.
    """
    message: str | None = None
    code: Any = None
    param: Any = None
    kind: Any = None
    try:
        decoded = msgspec.json.decode(body) if body else None
    except msgspec.DecodeError:
        decoded = None
    if isinstance(decoded, dict):
        error = decoded.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message, code, param = error["message"], error.get("code"), error.get("param")
            kind = error.get("type")
        elif isinstance(error, str):
            message, code = error, decoded.get("error_type")
        elif isinstance(decoded.get("message"), str):
            message, code = decoded["message"], decoded.get("code")
        elif isinstance(decoded.get("detail"), str):
            message = decoded["detail"]
    elif body and decoded is None:
        message = body[:500].decode("utf-8", "replace").strip() or None
    if message is None:
        message = f"The backend refused the request ({status})."
    if endpoint.upstream_model != endpoint.model:
        message = message.replace(endpoint.upstream_model, endpoint.model)
    return _encode(
        {
            "error": {
                "message": message[:1000],
                "type": kind if isinstance(kind, str) and kind else "invalid_request_error",
                "param": param if isinstance(param, str) else None,
                "code": code if isinstance(code, str | int) else None,
            }
        }
    )


def _splice(payload: bytes, info: dict[str, Any]) -> bytes:
    """Add `"tesseract": {...}` to a JSON object without decoding the rest of it."""
    body = payload.rstrip()
    if not body.endswith(b"}"):
        return payload
    return body[:-1] + b',"tesseract":' + _encode(info) + b"}"
