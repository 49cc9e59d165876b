"""`/v1/stream`: the inference API over a WebSocket (Channels).

The same requests, the same generator (`Gateway.run`), the same chunks as SSE:

* authenticate with `Authorization: Bearer tsk_…` on the handshake, or with an
  `"api_key"` field in a request (browsers cannot set handshake headers);
* send a request as one JSON text frame: an OpenAI chat body (or a completions body
  with `"endpoint": "completions"`), with the usual `tesseract` object;
* receive one text frame per chunk — exactly the JSON of the SSE `data:` lines, the
  final one carrying `tesseract` — then the text frame `[DONE]`. A non-streamed
  request gets its whole body in one frame. Errors are `{"error": {...}}` frames.

Requests on one socket are served one at a time; closing the socket cancels the
request in flight and with it the backend call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from channels.generic.websocket import AsyncWebsocketConsumer

from accounts.models import Scope
from routing.errors import AuthenticationFailed, InvalidRequest, TesseractAPIError
from routing.gateway import observability
from routing.gateway.app import application as http_gateway
from routing.gateway.attempt import Call, Head
from routing.gateway.parse import parse


class StreamConsumer(AsyncWebsocketConsumer):
    _task: asyncio.Task[None] | None = None
    _auth_headers: list[tuple[bytes, bytes]] | None = None

    async def connect(self) -> None:
        await self.accept()
        headers = [(k, v) for k, v in self.scope.get("headers", []) if k == b"authorization"]
        self._auth_headers = headers or None

    async def disconnect(self, code: int) -> None:
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
        try:
            await self._serve_one(raw)
        except TesseractAPIError as exc:
            await self._send_error(exc)

    async def _serve_one(self, raw: bytes) -> None:
        from routing.gateway.parse import decode_json

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
        key = await http_gateway.auth.authenticate(headers, Scope.INFERENCE)
        parsed = parse(endpoint, msgspec.json.encode(body), self.scope.get("headers", []), key)
        # Each request is its own span; a `traceparent` on the handshake is their parent.
        trace = observability.Trace.from_headers(self.scope.get("headers", []))
        frames = http_gateway.gateway.run(Call(key=key, parsed=parsed, trace=trace))
        streamed = parsed.stream
        try:
            async for frame in frames:
                if isinstance(frame, Head):
                    streamed = parsed.stream and frame.status == 200
                    continue
                await self.send(text_data=frame.decode())
            if streamed:
                await self.send(text_data="[DONE]")
        finally:
            await frames.aclose()

    async def _send_error(self, exc: TesseractAPIError) -> None:
        await self.send(text_data=exc.to_json().decode())
