"""Helpers for the simulator tests: an in-process client and a live loopback server.

`httpx.ASGITransport` drives the app in-process but buffers a streamed body, so tests
that time individual chunks (or need a dropped connection) use `serve()`, which runs
uvicorn in a thread on a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

import httpx

from backends.simulator import Simulator
from tests.servers import serve  # noqa: F401  (re-exported for the tests)

#: 70B on an H100 hub in eastus: 85 ms from westeurope, 17 ms TTFT floor, 58.6 tok/s.
EASTUS_70B = "eastus-tesseract-nvidia-h100--llama-3.3-70b-instruct"
MODEL_70B = "llama-3.3-70b-instruct"
#: 8B on the westeurope hub: 1 ms away, 14 s cold start.
WESTEUROPE_8B = "westeurope-tesseract-nvidia-h100--llama-3.1-8b-instruct"
MODEL_8B = "llama-3.1-8b-instruct"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def asgi_client(app: Simulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


def chat(model: str = MODEL_70B, content: str = "hello", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def sse_events(text: str) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON-decoded except `[DONE]`."""
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events
