"""The inference API over HTTP: a bare ASGI application for `/v1/*`.

Why not a Django view or a DRF view: Django's request handler hops threads for its
request signals and costs more than the whole overhead budget (1 ms at p50); DRF's
views are synchronous. This app authenticates from an in-process key cache, routes on
an in-memory world, and streams bytes straight from the backend. `tesseract_web.asgi`
sends `/v1/` here and everything else to Django.

    POST /v1/chat/completions   POST /v1/completions     (SSE when "stream": true)
    GET  /v1/models             POST /v1/route            (the dry run)
    GET  /v1/models/{model}
    GET  /metrics               Prometheus (`observability`; no API key, an optional token)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from django.conf import settings

from accounts import autopipe, keys
from accounts.keycache import KeyCache, KeyRejected, ResolvedKey, default_cache
from accounts.models import Scope
from accounts.services import LAST_USED_RESOLUTION, api_key_touch
from routing.errors import (
    AuthenticationFailed,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    PermissionDenied,
    RouteNotFound,
    TesseractAPIError,
)
from routing.gateway import observability
from routing.gateway.attempt import Call, Head
from routing.gateway.core import Gateway, check_strategy
from routing.gateway.db import off_loop
from routing.gateway.live import (
    WorldHolder,
    connect_redis,
    listen_for_world_changes,
    share_inflight,
)
from routing.gateway.parse import MAX_BODY_BYTES, parse
from routing.gateway.upstream import Upstream

logger = logging.getLogger(__name__)

Scope_ = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_REJECTIONS = {
    "malformed": f"The API key is malformed: a Tesseract key is {keys.SHAPE}.",
    "unknown": "Incorrect API key provided.",
    "revoked": "This API key has been revoked.",
    "expired": "This API key has expired.",
}
_JSON = b"application/json"
MODEL_PATH = "/v1/models/"
#: How long a starting gateway waits for its world before it takes requests anyway.
WARM_TIMEOUT_S = 30.0
#: ... and for its announcements listener to subscribe (Redis away: it starts regardless).
WARM_LISTEN_S = 5.0


async def read_body(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", _JSON),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            break
    raise AuthenticationFailed(
        "Missing API key: send it as 'Authorization: Bearer tsk_…'.", code="missing_api_key"
    )


class KeyAuth:
    """Resolve keys on the event loop; the database is touched only on a cache miss."""

    def __init__(self, cache: KeyCache | None = None) -> None:
        self._cache = cache
        self._touched: dict[int, float] = {}
        self._background: set[asyncio.Future[Any]] = set()

    @property
    def cache(self) -> KeyCache:
        if self._cache is None:
            self._cache = default_cache()
        return self._cache

    async def authenticate(self, headers: list[tuple[bytes, bytes]], scope: str) -> ResolvedKey:
        token = bearer_token(headers)
        try:
            key = self.cache.resolve_cached(token)
            if key is None:
                key = await off_loop(self.cache.resolve)(token)
        except KeyRejected as exc:
            raise AuthenticationFailed(_REJECTIONS[exc.reason]) from None
        if scope not in key.scopes:
            raise PermissionDenied(
                f"This API key lacks the '{scope}' scope.", code="insufficient_scope"
            )
        self._touch(key)
        return key

    def _touch(self, key: ResolvedKey) -> None:
        """Record use at most once a minute per key and process, off the event loop."""
        now = time.monotonic()
        if now - self._touched.get(key.id, -1e9) < LAST_USED_RESOLUTION.total_seconds():
            return
        self._touched[key.id] = now
        future = asyncio.ensure_future(off_loop(api_key_touch)(key_id=key.id))
        self._background.add(future)
        future.add_done_callback(self._touched_done)

    def _touched_done(self, future: asyncio.Future[Any]) -> None:
        self._background.discard(future)
        if not future.cancelled() and future.exception() is not None:
            logger.warning("could not record an API key's last use: %s", future.exception())


class GatewayApp:
    def __init__(self, gateway: Gateway | None = None, auth: KeyAuth | None = None) -> None:
        self._gateway = gateway
        self.auth = auth or KeyAuth()
        self._listener: asyncio.Future[Any] | None = None
        self.routes: dict[str, tuple[str, Callable[..., Awaitable[None]]]] = {
            "/v1/chat/completions": ("POST", self.completions),
            "/v1/completions": ("POST", self.completions),
            "/v1/route": ("POST", self.dry_run),
            "/v1/models": ("GET", self.models),
            "/metrics": ("GET", self.metrics),
        }

    @property
    def gateway(self) -> Gateway:
        if self._gateway is None:
            redis = connect_redis(settings.REDIS_URL)
            self._gateway = Gateway(
                holder=WorldHolder(redis=redis), upstream=Upstream(), redis=redis
            )
        if self._listener is None:
            gateway = self._gateway
            process = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
            self._listener = asyncio.ensure_future(
                asyncio.gather(
                    listen_for_world_changes(gateway.holder, settings.REDIS_URL),
                    share_inflight(gateway.inflight, gateway.redis, process, gateway.holder),
                )
            )
        return self._gateway

    async def warm(self, timeout_s: float = WARM_TIMEOUT_S) -> None:
        """Get ready before the first request (the server's start-up, `lifespan`): the
        Redis client, the listeners and the world, so that the first request routes as
        fast as the next ones (loading the world took it ~50 ms more on the demo world).
        A world that cannot load yet (the database away, or slower than `timeout_s`) is
        logged and left to the first request, as before: the process starts either way."""
        holder = self.gateway.holder  # starts the listeners
        try:
            # Loaded before the listener subscribes, the world would be refreshed again at
            # the first request: a change announced in between would be missed otherwise.
            async with asyncio.timeout(WARM_LISTEN_S):
                await holder.listening.wait()
        except TimeoutError:
            logger.warning("the gateway starts before it hears the control plane (Redis away?)")
        try:
            async with asyncio.timeout(timeout_s):
                await holder.get()
        except Exception as exc:  # TimeoutError included
            logger.warning(
                "the gateway starts without its world (%s: %s); the first request loads it",
                type(exc).__name__,
                exc,
            )

    async def aclose(self) -> None:
        """Stop the listeners and close the clients (a clean shutdown; tests' servers)."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
            self._listener = None
        if self._gateway is not None:
            await self._gateway.upstream.close()
            await autopipe.pipe_for(self._gateway.redis).aclose()
            await self._gateway.redis.aclose()

    def forget_world(self) -> None:
        """Make the next request load the world first (after a bulk catalog change)."""
        if self._gateway is not None:
            self._gateway.holder.forget()

    async def __call__(self, scope: Scope_, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError(f"GatewayApp serves HTTP only, not {scope['type']}")
        path = scope["path"].rstrip("/")
        # Every answer, errors included, names its trace: support can find any request.
        trace = scope["tesseract.trace"] = observability.Trace.from_headers(scope["headers"])
        response = _Response(send)
        try:
            route = self.routes.get(path)
            if route is None and path.startswith(MODEL_PATH) and len(path) > len(MODEL_PATH):
                route = ("GET", self.model)
            if route is None:
                raise RouteNotFound(f"Unknown endpoint {scope['method']} {scope['path']}.")
            method, handler = route
            if scope["method"] != method:
                raise InvalidRequest(
                    f"{path} accepts {method}, not {scope['method']}.", code="method_not_allowed"
                )
            await handler(scope, receive, response.send)
        except TesseractAPIError as exc:
            observability.error_answered(exc.http_status, exc.code or "")
            headers = [*exc.headers(), (b"x-tesseract-trace-id", trace.trace_id.encode())]
            await response.fail(exc, headers)
        except asyncio.CancelledError:
            pass  # the client went away; nothing to answer
        except Exception:
            logger.exception("unhandled error on %s (trace %s)", path, trace.trace_id)
            observability.error_answered(500, "internal_error")
            error = TesseractAPIError(
                f"Internal error; it has been logged (trace {trace.trace_id})."
            )
            await response.fail(error, [(b"x-tesseract-trace-id", trace.trace_id.encode())])

    # -- endpoints -----------------------------------------------------------------

    async def completions(self, scope: Scope_, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        key = await self.auth.authenticate(scope["headers"], Scope.INFERENCE)
        raw = await read_body(receive)
        endpoint = "chat.completions" if scope["path"].startswith("/v1/chat") else "completions"
        parsed = parse(endpoint, raw, scope["headers"], key)
        check_strategy(parsed.strategy)
        call = Call(key=key, parsed=parsed, started=started, trace=scope["tesseract.trace"])
        frames = self.gateway.run(call)
        # Relay from this task while a watcher cancels it if the client leaves:
        # cancelling the relay cancels the upstream call. (One task per request, not two
        # and an asyncio.wait: this runs on every request.)
        relay = asyncio.current_task()
        assert relay is not None
        watcher = asyncio.ensure_future(_cancel_on_disconnect(receive, relay))
        try:
            await self._relay(frames, send, parsed.stream)
        except asyncio.CancelledError:
            if not watcher.done() or watcher.cancelled():
                raise  # cancelled from outside (the server shutting down), not the client
            relay.uncancel()  # the client left: nothing to answer
        finally:
            watcher.cancel()

    async def _relay(self, frames: Any, send: Send, stream: bool) -> None:
        """Write the gateway's frames as an HTTP response: SSE framing when streaming.

        A whole body goes out with its content-length, in one write after the head.
        """
        sse = False
        head: Head | None = None
        try:
            async for frame in frames:
                if isinstance(frame, Head):
                    head = frame
                    sse = stream and frame.status == 200
                    if sse:
                        headers = [*frame.headers, (b"cache-control", b"no-cache")]
                        await send(
                            {"type": "http.response.start", "status": 200, "headers": headers}
                        )
                elif sse:
                    body = b"".join([b"data: " + data + b"\n\n" for data in frame])
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                else:
                    assert head is not None
                    assert isinstance(frame, bytes)
                    length = (b"content-length", str(len(frame)).encode())
                    await send(
                        {
                            "type": "http.response.start",
                            "status": head.status,
                            "headers": [*head.headers, length],
                        }
                    )
                    await send({"type": "http.response.body", "body": frame})
            if sse:
                await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        finally:
            await frames.aclose()

    async def dry_run(self, scope: Scope_, receive: Receive, send: Send) -> None:
        key = await self.auth.authenticate(scope["headers"], Scope.ROUTE)
        parsed = parse("route", await read_body(receive), scope["headers"], key)
        world, plan = await self.gateway.plan(parsed, org_id=key.org_id)
        body = {
            "object": "tesseract.route_plan",
            "request": {
                "model": parsed.model,
                "input_tokens": parsed.route.input_tokens,
                "max_output_tokens": parsed.route.max_output_tokens,
            },
            "world_version": world.version,
            **plan.to_dict(),
        }
        await send_json(send, 200, msgspec.json.encode(body))

    async def metrics(self, scope: Scope_, receive: Receive, send: Send) -> None:
        """Prometheus metrics: this process's, and the live maps read now (`observability`)."""
        if not observability.scrape_authorized(scope["headers"]):
            raise AuthenticationFailed(
                "Scraping needs 'Authorization: Bearer <TESSERACT_METRICS_TOKEN>'.",
                code="invalid_metrics_token",
            )
        gateway = self.gateway
        try:
            world = await gateway.holder.get()
        except Exception:  # no catalog: still show the process and the live maps
            logger.warning("metrics: no world to label deployments with", exc_info=True)
            world = None
        accept = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"accept"), "")
        body, content_type = await observability.scrape(
            redis=gateway.redis, world=world, accept=accept
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def models(self, scope: Scope_, receive: Receive, send: Send) -> None:
        objects = await self._model_objects(scope)
        data = [objects[model] for model in sorted(objects)]
        await send_json(send, 200, msgspec.json.encode({"object": "list", "data": data}))

    async def model(self, scope: Scope_, receive: Receive, send: Send) -> None:
        """GET /v1/models/{model} (the SDKs' `models.retrieve`): one entry of the list."""
        model = scope["path"].rstrip("/").removeprefix(MODEL_PATH)
        found = (await self._model_objects(scope)).get(model)
        if found is None:
            raise ModelNotFound(f"The model '{model}' does not exist or is not served.")
        await send_json(send, 200, msgspec.json.encode(found))

    async def _model_objects(self, scope: Scope_) -> dict[str, dict[str, Any]]:
        """The models this key may call, by id, as OpenAI's model objects with where
        Tesseract serves them: within the key's default regions and compliance."""
        key = await self.auth.authenticate(scope["headers"], Scope.READ)
        world = await self.gateway.holder.get()
        allowed = set(key.default_regions)
        required = set(key.default_compliance)
        # The public backends and this key's organization's private ones: another
        # organization's private cluster is never listed, nor its models.
        places: dict[str, set[tuple[str, str, bool]]] = {}
        for e in world.endpoints_for(key.org_id):
            if (not allowed or e.region in allowed) and required <= set(e.certifications):
                places.setdefault(e.model, set()).add((e.region, e.chip, e.org_id is not None))
        return {
            model: {
                "id": model,
                "object": "model",
                "created": 0,
                "owned_by": "tesseract",
                "tesseract": {
                    "regions": sorted({r for r, _, _ in where}),
                    "chips": sorted({c for _, c, _ in where}),
                    "private_regions": sorted({r for r, _, p in where if p}),
                },
            }
            for model, where in places.items()
        }


class _Response:
    """The `send` of one HTTP exchange, remembering how far the response got.

    An error is answered with a whole JSON response only while nothing has been sent;
    once the head is out, a second `http.response.start` would break the protocol, so
    an SSE stream ends with an error event and any other body is ended where it is.
    """

    __slots__ = ("_send", "ended", "sse", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = self.ended = self.sse = False

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            for k, v in message.get("headers", ()):
                if k == b"content-type":
                    self.sse = v.startswith(b"text/event-stream")
                    break
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            self.ended = True
        await self._send(message)

    async def fail(self, error: TesseractAPIError, headers: list[tuple[bytes, bytes]]) -> None:
        if not self.started:
            await send_json(self.send, error.http_status, error.to_json(), headers)
            return
        if self.ended:
            return
        tail = b"data: " + error.to_json() + b"\n\ndata: [DONE]\n\n" if self.sse else b""
        await self.send({"type": "http.response.body", "body": tail})


async def lifespan(app: GatewayApp, receive: Receive, send: Send) -> None:
    """ASGI lifespan of a gateway process: warm before the server takes requests
    (`GatewayApp.warm`). Shutting down closes nothing here: the server has finished its
    requests by then, and a record still being published must keep its clients."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await app.warm()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _cancel_on_disconnect(receive: Receive, relay: asyncio.Task[Any]) -> None:
    """Cancel `relay` when the client disconnects (its request body is already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            relay.cancel()
            return


application = GatewayApp()
