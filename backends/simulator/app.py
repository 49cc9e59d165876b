"""The ASGI application: a hand-written router over the simulated deployments.

No framework on purpose: this process is the upstream of the gateway's overhead
benchmark, so a request at time scale 0 costs one dict lookup, one `json.loads`, a few
byte concatenations and two `send` calls.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

from backends.world import WorldSpec

from .persona import render_error
from .protocol import (
    SYSTEM_FINGERPRINT,
    ApiError,
    ChunkWriter,
    GenerationRequest,
    completion_body,
    finish_reason,
    invalid,
    parse_request,
    unavailable,
)
from .state import SimDeployment

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES = 16 * 1024 * 1024
#: Streams wake up at most once per this many (wall) seconds and send every token that
#: became due meanwhile, each as its own chunk: at 1,800 tokens/s a sleep per token
#: would cost more CPU than the emulation is worth. The first token is never delayed.
MIN_BATCH_S = 0.01

X_SIMULATOR = (b"x-simulator", b"tesseract")
JSON = b"application/json"
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    X_SIMULATOR,
]


class _ClientGone(Exception):
    """The client disconnected before its request body was complete."""


class MidStreamAbort(Exception):
    """Raised after part of a stream was sent: the server drops the connection abruptly.

    This is the injected `error_after_tokens` fault: the client sees the body end
    without its final chunk (an incomplete chunked read), like a backend that died.
    """


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                X_SIMULATOR,
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "The request body is too large.", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    delay = when - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


def _method_not_allowed(method: str, allowed: str) -> ApiError:
    return ApiError(
        405, f"Method {method} is not allowed here; use {allowed}.", code="method_not_allowed"
    )


class Simulator:
    """The ASGI app: every deployment of `world` (or the chosen ones) under `/d/<slug>/`."""

    def __init__(
        self,
        world: WorldSpec,
        *,
        gateway_region: str = "westeurope",
        time_scale: float = 1.0,
        deployments: Iterable[str] | None = None,
    ) -> None:
        if gateway_region not in world.regions:
            raise ValueError(f"unknown gateway region {gateway_region!r}")
        if time_scale < 0:
            raise ValueError("time_scale must be >= 0")
        slugs = list(world.deployments) if deployments is None else list(deployments)
        unknown = [s for s in slugs if s not in world.deployments]
        if unknown:
            raise ValueError(f"unknown deployments: {unknown}")
        self.world = world
        self.gateway_region = gateway_region
        self.time_scale = float(time_scale)
        self.deployments = {
            s: SimDeployment.build(world, world.deployments[s], gateway_region) for s in slugs
        }

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                await self._route(scope, receive, send)
            except _ClientGone:
                return
            except ApiError as exc:
                extra = []
                if exc.retry_after is not None:
                    extra.append((b"retry-after", str(max(1, round(exc.retry_after))).encode()))
                body = render_error(exc, getattr(exc, "style", "openai"))
                await _respond(send, exc.status, body, extra=extra)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/d/"):
            slug, _, rest = path[3:].partition("/")
            dep = self.deployments.get(slug)
            if dep is None:
                raise ApiError(
                    404,
                    f"No simulated deployment {slug!r}; GET /deployments lists them.",
                    code="deployment_not_found",
                )
            try:
                await self._deployment(dep, rest, path, method, scope, receive, send)
            except ApiError as exc:
                if dep.persona is not None:
                    exc.style = dep.persona.error_style  # type: ignore[attr-defined]
                raise
        elif path == "/health":
            body = {
                "status": "ok",
                "simulator": SYSTEM_FINGERPRINT,
                "deployments": len(self.deployments),
                "gateway_region": self.gateway_region,
                "time_scale": self.time_scale,
            }
            await _respond(send, 200, _json(body))
        elif path == "/control/time_scale":
            if method == "POST":
                body = _parse_json(await _read_body(receive))
                value = body.get("time_scale") if isinstance(body, dict) else None
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise invalid("'time_scale' must be a number >= 0", param="time_scale")
                self.time_scale = float(value)
            elif method != "GET":
                raise _method_not_allowed(method, "GET or POST")
            await _respond(send, 200, _json({"time_scale": self.time_scale}))
        elif path == "/deployments":
            listing = [
                {
                    "deployment": d.spec.slug,
                    "model": d.model,
                    "region": d.region,
                    "chip": d.chip,
                    "rtt_ms": d.rtt_ms,
                    "base_url": f"/d/{d.spec.slug}/v1",
                }
                for d in self.deployments.values()
            ]
            await _respond(send, 200, _json({"simulator": True, "deployments": listing}))
        else:
            raise ApiError(404, f"Unknown path {path!r}.", code="not_found")

    async def _deployment(
        self, dep: SimDeployment, rest: str, path: str, method: str, scope: Scope,
        receive: Receive, send: Send,
    ) -> None:  # fmt: skip
        if rest in ("v1/chat/completions", "v1/completions"):
            if method != "POST":
                raise _method_not_allowed(method, "POST")
            credential = dep.persona.authorize(scope["headers"]) if dep.persona else None
            await self._generate(dep, rest == "v1/chat/completions", receive, send, credential)
        elif rest == "v1/models":
            if dep.persona is not None:
                dep.persona.authorize(scope["headers"])
            self._check_up(dep)
            if dep.fault.kind == "hang":
                await self._until_disconnect(receive, asyncio.get_running_loop().create_future())
                return
            await _respond(send, 200, self._models_body(dep))
        elif rest == "health":
            await self._health(dep, receive, send)
        elif rest == "metrics":
            if dep.persona is not None:  # as behind an authenticating proxy (persona.py)
                dep.persona.authorize(scope["headers"])
            await _respond(send, 200, self._metrics_body(dep), b"text/plain; version=0.0.4")
        elif rest == "control":
            await self._control(dep, method, receive, send)
        else:
            raise ApiError(404, f"Unknown path {path!r}.", code="not_found")

    # ------------------------------------------------------------------ endpoints

    def _check_up(self, dep: SimDeployment) -> None:
        if dep.fault.kind == "down":
            raise unavailable(
                f"Simulated deployment {dep.spec.slug} is down (injected fault).",
                code="backend_down",
            )

    def _check_ready(self, dep: SimDeployment, now: float) -> None:
        self._check_up(dep)
        availability = dep.availability(now)
        if availability == "loading":
            remaining = (dep.loading_until or now) - now
            raise unavailable(
                f"Model {dep.model} is loading (simulated cold start); ready in {remaining:.1f} s.",
                code="model_loading",
                retry_after=remaining,
            )
        if availability == "unloaded":
            raise unavailable(
                f"Model {dep.model} is not loaded on this simulated deployment; "
                f'POST {{"loaded": true}} to /d/{dep.spec.slug}/control to load it.',
                code="model_not_loaded",
            )

    def _models_body(self, dep: SimDeployment) -> bytes:
        model = {
            "id": dep.model_id,
            "object": "model",
            "created": 0,
            "owned_by": SYSTEM_FINGERPRINT,
            "root": dep.model_id,
            "max_model_len": dep.context_length,
        }
        return _json({"object": "list", "data": [model]})

    def _metrics_body(self, dep: SimDeployment) -> bytes:
        now = asyncio.get_running_loop().time()

        def extra(labels: str) -> list[str]:
            info = (
                f'{labels},deployment="{dep.spec.slug}",region="{dep.region}",'
                f'chip="{dep.chip}",fault="{dep.fault.kind}"'
            )
            return [
                "# HELP tesseract_simulator_info This backend is the Tesseract simulator.",
                "# TYPE tesseract_simulator_info gauge",
                f"tesseract_simulator_info{{{info}}} 1.0",
                "# HELP tesseract_simulator_concurrency_slots Concurrency slots.",
                "# TYPE tesseract_simulator_concurrency_slots gauge",
                f"tesseract_simulator_concurrency_slots{{{labels}}} {float(dep.slots.capacity)!r}",
                "# HELP tesseract_simulator_model_loaded 1 when the model is loaded.",
                "# TYPE tesseract_simulator_model_loaded gauge",
                f"tesseract_simulator_model_loaded{{{labels}}} "
                f"{1.0 if dep.availability(now) == 'ready' else 0.0}",
            ]

        return dep.metrics.render(
            model=dep.model_id, running=dep.slots.running, waiting=dep.slots.waiting, extra=extra
        )

    async def _health(self, dep: SimDeployment, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        if dep.fault.kind == "hang":
            await self._until_disconnect(receive, loop.create_future())
            return
        try:
            self._check_ready(dep, loop.time())
        except ApiError as exc:
            status = {"backend_down": "down", "model_loading": "loading"}.get(
                exc.code or "", "unloaded"
            )
            await _respond(send, 503, _json({"status": status, "message": exc.message}))
            return
        # A probe pays the network round trip, so a poller can measure it. The answer
        # names the time scale the delay was slept at, so that the prober can turn the
        # wall time it measured back into real milliseconds (÷ time scale) without a
        # second request that could race a change of scale. A "slow" fault stretches
        # the delay but is not reported: a real probe would see a slower path.
        scale = self.time_scale
        delay = dep.rtt_ms / 1000.0 * self._scale(dep)
        if delay > 0:
            await asyncio.sleep(delay)
        await _respond(send, 200, _json({"status": "ok", "simulator": True, "time_scale": scale}))

    async def _control(self, dep: SimDeployment, method: str, receive: Receive, send: Send) -> None:
        now = asyncio.get_running_loop().time()
        if method == "POST":
            body = _parse_json(await _read_body(receive))
            dep.apply_control(body, now=now, time_scale=self.time_scale)
        elif method != "GET":
            raise _method_not_allowed(method, "GET or POST")
        state = dep.state(now=now, time_scale=self.time_scale, gateway_region=self.gateway_region)
        await _respond(send, 200, _json(state))

    def _scale(self, dep: SimDeployment) -> float:
        fault = dep.fault
        return self.time_scale * (fault.slow_factor if fault.kind == "slow" else 1.0)

    # ------------------------------------------------------------------ generation

    async def _generate(
        self,
        dep: SimDeployment,
        chat: bool,
        receive: Receive,
        send: Send,
        credential: str | None = None,
    ) -> None:
        raw = await _read_body(receive)
        if dep.persona is not None:
            dep.persona.seen.append((credential, _asked_model(raw)))
        req = parse_request(raw, chat=chat, context_length=dep.context_length)
        if req.model != dep.model_id:
            raise ApiError(
                404,
                f"The model `{req.model}` does not exist on this deployment (it serves "
                f"`{dep.model_id}`).",
                param="model",
                code="model_not_found",
            )
        if dep.persona is not None and dep.persona.ignores_include_usage:
            req = replace(req, include_usage=False)
        loop = asyncio.get_running_loop()
        self._check_ready(dep, loop.time())
        fault = dep.fault
        if fault.kind == "rate_limited":
            dep.metrics.finished("rate_limited")
            raise ApiError(
                429,
                f"Rate limit reached for model `{dep.model_id}`: please try again in "
                f"{fault.retry_after_s:g}s.",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                retry_after=fault.retry_after_s,
            )
        failed = fault.kind == "error" and dep.rng.random() < fault.error_rate
        scale = self._scale(dep)
        if fault.kind == "hang":
            await self._until_disconnect(receive, loop.create_future())
        elif scale > 0:
            await self._until_disconnect(receive, self._timed(dep, req, scale, failed, send))
        else:
            await self._immediate(dep, req, failed, send)

    async def _immediate(
        self, dep: SimDeployment, req: GenerationRequest, failed: bool, send: Send
    ) -> None:
        """Time scale 0: no delay, no queue; the same bytes as the timed path."""
        metrics = dep.metrics
        if failed:
            metrics.finished("error")
            raise _injected_error()
        metrics.prompt_tokens += req.prompt_tokens
        tokens = req.max_tokens
        stall_after = dep.fault.stall_after_tokens
        if stall_after is not None and stall_after < tokens:
            metrics.generation_tokens += stall_after * req.n
            if req.stream:
                writer = ChunkWriter(req, model=dep.model_id, created=int(time.time()))
                await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
                body = writer.start() + writer.tokens(stall_after)
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await asyncio.get_running_loop().create_future()  # until the client gives up
        abort_after = dep.fault.error_after_tokens
        if abort_after is not None and abort_after < tokens:
            metrics.generation_tokens += abort_after * req.n
            metrics.finished("abort")
            if not req.stream:
                raise _injected_error(after=abort_after)
            writer = ChunkWriter(req, model=dep.model_id, created=int(time.time()))
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            body = writer.start() + writer.tokens(abort_after)
            await send({"type": "http.response.body", "body": body, "more_body": True})
            raise MidStreamAbort(f"injected: stream dropped after {abort_after} tokens")
        metrics.generation_tokens += tokens * req.n
        metrics.ttft.observe(0.0)
        metrics.e2e.observe(0.0)
        metrics.finished(finish_reason(req))
        if req.stream:
            writer = ChunkWriter(req, model=dep.model_id, created=int(time.time()))
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            body = writer.start() + writer.tokens(tokens) + writer.finish()
            await send({"type": "http.response.body", "body": body})
        else:
            await _respond(
                send, 200, completion_body(req, model=dep.model_id, created=int(time.time()))
            )

    async def _timed(
        self, dep: SimDeployment, req: GenerationRequest, scale: float, failed: bool, send: Send
    ) -> None:
        """The timing model of the package docstring, in wall seconds × `scale`."""
        loop = asyncio.get_running_loop()
        metrics, slots = dep.metrics, dep.slots
        half_rtt = dep.rtt_ms / 2000.0 * scale
        if half_rtt > 0:
            await asyncio.sleep(half_rtt)  # the request travels to the backend
        arrival = loop.time()
        if failed:
            await asyncio.sleep(half_rtt)  # the error travels back
            metrics.finished("error")
            raise _injected_error()
        if (slots.waiting or slots.running >= slots.capacity) and slots.waiting >= dep.max_waiting:
            await asyncio.sleep(half_rtt)
            metrics.finished("overloaded")
            raise unavailable(
                f"Simulated deployment {dep.spec.slug} is overloaded: {slots.waiting} requests "
                f"already wait for {slots.capacity} slots.",
                code="overloaded",
                retry_after=1,
            )
        held = await slots.acquire(req.priority, req.n)
        admitted = loop.time()
        # The slot is held while the chip computes, not while the last bytes travel
        # back: a timer frees it when the last token is computed.
        lease_done = False

        def free() -> None:
            nonlocal lease_done
            if not lease_done:
                lease_done = True
                slots.release(held)

        generated = 0
        writer: ChunkWriter | None = None
        try:
            metrics.prompt_tokens += req.prompt_tokens
            tokens = req.max_tokens
            abort_after = dep.fault.error_after_tokens
            if abort_after is not None and abort_after >= tokens:
                abort_after = None
            stall_after = dep.fault.stall_after_tokens
            if stall_after is not None and stall_after >= tokens:
                stall_after = None
            if stall_after is not None:
                abort_after = None
            produced = tokens if abort_after is None else abort_after
            if stall_after is not None:
                produced = stall_after
            interval = dep.token_interval_s * scale
            first_ready = admitted + dep.ttft_s(req.prompt_tokens) * scale
            compute_end = first_ready + max(produced - 1, 0) * interval
            # A stalled deployment holds its slot until the client gives up.
            timer = loop.call_at(compute_end, free) if stall_after is None else None
            try:
                if not req.stream and stall_after is not None:
                    await loop.create_future()  # never answers
                if not req.stream:
                    await _sleep_until(loop, compute_end + half_rtt)
                    generated = produced
                    if abort_after is not None:
                        metrics.finished("abort")
                        raise _injected_error(after=abort_after)
                    metrics.ttft.observe(first_ready - arrival)
                    metrics.e2e.observe(compute_end - arrival)
                    metrics.finished(finish_reason(req))
                    body = completion_body(req, model=dep.model_id, created=int(time.time()))
                    await _respond(send, 200, body)
                    return
                first_due = first_ready + half_rtt
                await _sleep_until(loop, first_due)
                metrics.ttft.observe(first_ready - arrival)
                writer = ChunkWriter(req, model=dep.model_id, created=int(time.time()))
                await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
                pending = await _stream_tokens(send, writer, produced, first_due, interval)
                if stall_after is not None:
                    await send({"type": "http.response.body", "body": pending, "more_body": True})
                    await loop.create_future()  # nothing more, until the client gives up
                if abort_after is not None:
                    await send({"type": "http.response.body", "body": pending, "more_body": True})
                    metrics.finished("abort")
                    raise MidStreamAbort(f"injected: stream dropped after {abort_after} tokens")
                metrics.e2e.observe(compute_end - arrival)
                metrics.finished(finish_reason(req))
                await send({"type": "http.response.body", "body": pending + writer.finish()})
            finally:
                if timer is not None:
                    timer.cancel()
        except asyncio.CancelledError:
            metrics.finished("abort")  # the client went away
            raise
        finally:
            metrics.generation_tokens += (writer.sent if writer is not None else generated) * req.n
            free()

    async def _until_disconnect(self, receive: Receive, work: Awaitable[Any]) -> None:
        """Run `work`; if the client disconnects first, cancel it (which frees its slot)."""
        task = asyncio.current_task()
        assert task is not None
        state = {"done": False, "disconnected": False}

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not state["done"]:
                        state["disconnected"] = True
                        task.cancel()
                    return

        watcher = asyncio.create_task(watch())
        try:
            await work
        except asyncio.CancelledError:
            if state["disconnected"]:
                task.uncancel()
                return
            raise
        finally:
            state["done"] = True
            watcher.cancel()


async def _stream_tokens(
    send: Send, writer: ChunkWriter, produced: int, first_due: float, interval: float
) -> bytes:
    """Send `produced` tokens, the first at `first_due`, then one every `interval` s.

    The caller has sent the response start. Tokens that are due together go out in
    one write, one chunk each (see `MIN_BATCH_S`). Returns the bytes of the last batch,
    not yet sent, so that the caller can append the ending to the same write.
    """
    loop = asyncio.get_running_loop()
    pending = writer.start()
    while True:
        due = produced
        if interval > 0:
            due = min(produced, 1 + int((loop.time() - first_due) / interval + 1e-9))
        if due > writer.sent:
            pending += writer.tokens(due - writer.sent)
        if writer.sent >= produced:
            return pending
        if pending:
            await send({"type": "http.response.body", "body": pending, "more_body": True})
            pending = b""
        next_due = first_due + writer.sent * interval
        await asyncio.sleep(max(next_due - loop.time(), MIN_BATCH_S))


def _asked_model(raw: bytes) -> str | None:
    """The `model` a request body names, for a persona's record (None: unreadable)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(
            400, "We could not parse the JSON body of your request.", code="invalid_json"
        ) from None


def _injected_error(after: int | None = None) -> ApiError:
    message = "Injected error (simulated backend fault)."
    if after is not None:
        message = f"Injected error after {after} tokens (simulated backend fault)."
    return ApiError(500, message, type="server_error", code="injected_error")


def create_app(world: WorldSpec | None = None, **options: Any) -> Simulator:
    """The simulator for `world` (the demo world by default); options as `Simulator`."""
    if world is None:
        from backends.world import demo_world

        world = demo_world()
    return Simulator(world, **options)
