"""The ceiling: the thinnest Python proxy that could do the gateway's job.

A bare ASGI callable that forwards every POST to one upstream URL with the same HTTP
client the gateway uses (one pooled aiohttp session, the same connector settings) and
passes the answer back, streamed or whole. No authentication, no parsing, no routing,
no limits, no metering. `make bench-gateway` serves it with the same uvicorn options as
Tesseract and reports Tesseract's overhead and throughput as ratios to it: what is left
between the two is what Tesseract's features cost, on whatever machine runs the
benchmark.

    CEILING_UPSTREAM=http://127.0.0.1:8100/d/<deployment>/v1/chat/completions \\
        uvicorn bench.ceiling:app --loop uvloop --http httptools
"""

from __future__ import annotations

import os
from typing import Any

from routing.gateway.upstream import Upstream

UPSTREAM = os.environ.get("CEILING_UPSTREAM", "")
_upstream = Upstream()
_HEADERS = {"content-type": "application/json"}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # lifespan: nothing to set up
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
            await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["method"] != "POST":  # the benchmark's readiness probe
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    response = await _upstream.open(UPSTREAM, b"".join(chunks), _HEADERS, timeout_s=30.0)
    try:
        headers = [(b"content-type", response.headers["content-type"].encode())]
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for piece in response.content.iter_any():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            body = await response.read()
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
    finally:
        response.release()
