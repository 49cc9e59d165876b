"""`/v1/stream`: the inference API over a WebSocket (Channels).

The same requests, the same generator (`Gateway.run`), the same chunks as SSE:

* authenticate with `Authorization: Bearer tsk_…` on the handshake, or with an
  `"api_key"` field in a request (browsers cannot set handshake headers);
* send a request as one JSON text frame: an OpenAI chat body (or a completions body
  with `"endpoint": "completions"`), with the usual `tesseract` object;
* a socket that has not authenticated within `TESSERACT_WS_AUTH_TIMEOUT_S` (a valid
  key on the handshake, or a request that authenticates) gets an `auth_timeout` error
  frame and is closed with 1008;
* receive one text frame per chunk — exactly the JSON of the SSE `data:` lines, the
  final one carrying `tesseract` — then the text frame `[DONE]`. A non-streamed
  request gets its whole body in one frame. Errors are `{"error": {...}}` frames:
  every failure gets one, an unexpected one (`server_error`) is also logged with its
  traceback.

Requests on one socket are served one at a time; closing the socket cancels the
request in flight and with it the backend call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from accounts.models import Scope
from routing.errors import AuthenticationFailed, InvalidRequest, TesseractAPIError
from routing.gateway import observability
from routing.gateway.app import GatewayApp
from routing.gateway.app import application as http_gateway
from routing.gateway.attempt import Call, Head
from routing.gateway.parse import NUL_ESCAPE, decode_json, parse_body

logger = logging.getLogger(__name__)

#: Policy violation: the socket did not authenticate in time.
CLOSE_AUTH_TIMEOUT = 1008


class StreamConsumer(AsyncWebsocketConsumer):
    _task: asyncio.Task[None] | None = None
    _auth_headers: list[tuple[bytes, bytes]] | None = None
    _auth_timer: asyncio.Task[None] | None = None
    _authenticated = False

    def __init__(self, *args: Any, http: GatewayApp | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The HTTP gateway whose keys, world and backends this socket shares.
        self.http = http or http_gateway

    async def connect(self) -> None:
        await self.accept()
        headers = [(k, v) for k, v in self.scope.get("headers", []) if k == b"authorization"]
        self._auth_headers = headers or None
        if headers:
            with contextlib.suppress(TesseractAPIError):  # a request will say why
                await self.http.auth.authenticate(headers, Scope.INFERENCE)
                self._authenticated = True
        if not self._authenticated:
            self._auth_timer = asyncio.ensure_future(self._close_unless_authenticated())

    async def _close_unless_authenticated(self) -> None:
        timeout_s = settings.TESSERACT_WS_AUTH_TIMEOUT_S
        await asyncio.sleep(timeout_s)
        while not self._authenticated and self._task is not None and not self._task.done():
            await asyncio.wait([self._task])  # a request may be authenticating right now
        if self._authenticated:
            return
        logger.info("closing a WebSocket that did not authenticate within %ss", timeout_s)
        await self._send_error(
            AuthenticationFailed(
                f"No API key authenticated this socket within {timeout_s} s; closing it.",
                code="auth_timeout",
            )
        )
        await self.close(code=CLOSE_AUTH_TIMEOUT)

    async def disconnect(self, code: int) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        if self._task is not None:
            self._task.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._task is not None and not self._task.done():
            await self._send_error(
                InvalidRequest("One request at a time on a socket.", code="request_in_progress")
            )
            return
        raw = text_data.encode() if text_data is not None else (bytes_data or b"")
        self._task = asyncio.ensure_future(self._serve(raw))

    async def _serve(self, raw: bytes) -> None:
        """Serve one request; whatever fails, the client gets an error frame."""
        try:
            await self._serve_one(raw)
        except TesseractAPIError as exc:
            logger.info("WebSocket request refused: %s (%s)", exc.code, exc.message)
            observability.error_answered(exc.http_status, exc.code or "")
            await self._send_error(exc)
        except Exception:  # a bug: never a silent socket, never a lost traceback
            trace = observability.Trace.from_headers(self.scope.get("headers", []))
            logger.exception("unhandled error on a /v1/stream request (trace %s)", trace.trace_id)
            observability.error_answered(500, "internal_error")
            await self._send_error(
                TesseractAPIError(f"Internal error; it has been logged (trace {trace.trace_id}).")
            )

    async def _serve_one(self, raw: bytes) -> None:
        body: dict[str, Any] = decode_json(raw)
        endpoint = body.pop("endpoint", "chat.completions")
        if endpoint not in ("chat.completions", "completions"):
            raise InvalidRequest(
                "endpoint must be 'chat.completions' or 'completions'.", param="endpoint"
            )
        headers = self._auth_headers
        api_key = body.pop("api_key", None)
        if api_key is not None:
            headers = [(b"authorization", f"Bearer {api_key}".encode())]
        if headers is None:
            raise AuthenticationFailed(
                "Authenticate with an Authorization header on the handshake, or api_key.",
                code="missing_api_key",
            )
        key = await self.http.auth.authenticate(headers, Scope.INFERENCE)
        self._authenticated = True
        parsed = parse_body(
            endpoint, body, self.scope.get("headers", []), key, may_hold_nul=NUL_ESCAPE in raw
        )
        # Each request is its own span; a `traceparent` on the handshake is their parent.
        trace = observability.Trace.from_headers(self.scope.get("headers", []))
        frames = self.http.gateway.run(Call(key=key, parsed=parsed, trace=trace))
        streamed = parsed.stream
        try:
            async for frame in frames:
                if isinstance(frame, Head):
                    streamed = parsed.stream and frame.status == 200
                    continue
                for data in frame if isinstance(frame, list) else (frame,):
                    await self.send(text_data=data.decode())
            if streamed:
                await self.send(text_data="[DONE]")
        finally:
            await frames.aclose()

    async def _send_error(self, exc: TesseractAPIError) -> None:
        try:
            await self.send(text_data=exc.to_json().decode())
        except Exception:  # the socket is gone: nobody left to tell
            logger.debug("could not send an error frame to a closed WebSocket", exc_info=True)
