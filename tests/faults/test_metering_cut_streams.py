"""Streams the client cuts off mid-way are metered: once each, with the tokens produced.

The issue's reproduction: 20 concurrent WebSocket streams that read 250 tokens of a
long answer and then drop the connection gave 0 usage rows. Here the same over the
WebSocket (closed cleanly, or the TCP connection simply dropped) and over HTTP SSE,
against the real simulator and a real gateway. Each stream must leave exactly one
usage record, status `cancelled`, counting at least the tokens the client read
(estimated from the chunks: the backend's own count comes only at the end).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from django.conf import settings
from websockets.sync.client import connect

from billing import metering
from routing.gateway.app import GatewayApp
from tests.faults.metering_gateway import (
    Site,
    api_key_for_acme,
    chat,
    gateway_app,
    serve_gateway,
    simulator_server,  # noqa: F401 (a fixture)
    site_for,
    usage_stream,  # noqa: F401 (a fixture)
)

STREAMS = 20
READ = 250
#: Long enough that the stream is still going when the client leaves after `READ`.
MAX_TOKENS = 2000
#: Real time: an 8B decodes 288 tokens/s, so 250 take about a second and the other
#: 1750 six more; a busy client has all that time to leave before the stream ends.
TIME_SCALE = 1.0
LONG = chat("tell me everything", max_tokens=MAX_TOKENS, tesseract={"regions": ["westeurope"]})


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[GatewayApp, str]]:
    app = gateway_app()
    with serve_gateway(app) as url:
        yield app, url


@pytest.fixture
def site(transactional_db, usage_stream, simulator_server, served) -> Site:  # noqa: F811
    app, url = served
    return site_for(app, url, simulator_server, time_scale=TIME_SCALE, redis_url=settings.REDIS_URL)


def has_text(chunk: str) -> bool:
    try:
        choices = json.loads(chunk).get("choices") or []
    except ValueError:
        return False
    return any((c.get("delta") or {}).get("content") for c in choices)


def ws_read_and_leave(site: Site, key: str, how: str) -> int:
    with connect(site.ws_url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        ws.send(json.dumps({**LONG, "stream": True}))
        read = 0
        while read < READ:
            frame = ws.recv(timeout=30)
            assert isinstance(frame, str)
            assert '"error"' not in frame, frame
            read += has_text(frame)
        if how == "drop":  # no close frame: the TCP connection just goes away
            ws.close_socket()
    return read


def sse_read_and_leave(site: Site, key: str) -> int:
    read = 0
    with httpx.stream(
        "POST",
        f"{site.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={**LONG, "stream": True},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                read += has_text(line[6:])
            if read >= READ:
                break
    return read


def wait_for_records(n: int, timeout_s: float = 60.0) -> int:
    """Wait until `n` records are in the stream; then a moment more, to see any extra."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    deadline = time.monotonic() + timeout_s
    while client.xlen(metering.STREAM) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    return int(client.xlen(metering.STREAM))


def assert_each_cut_stream_metered_once(site: Site) -> None:
    assert wait_for_records(STREAMS) == STREAMS  # not fewer, not doubled
    events = site.drain()
    assert len(events) == STREAMS
    assert len({e.request_id for e in events}) == STREAMS
    for event in events:
        assert event.status == "cancelled"
        assert event.stream is True
        assert event.usage_source == "estimated"
        assert READ <= event.output_tokens < MAX_TOKENS
        assert event.input_tokens > 0
        assert event.cost_usd > 0


@pytest.mark.parametrize("how", ["close", "drop"])
def test_websocket_streams_cut_off_mid_way_are_each_metered_once(site, how):
    key = api_key_for_acme()
    with ThreadPoolExecutor(STREAMS) as pool:
        reads = list(pool.map(lambda _: ws_read_and_leave(site, key, how), range(STREAMS)))
    assert reads == [READ] * STREAMS
    assert_each_cut_stream_metered_once(site)


def test_sse_streams_cut_off_mid_way_are_each_metered_once(site):
    key = api_key_for_acme()
    with ThreadPoolExecutor(STREAMS) as pool:
        reads = list(pool.map(lambda _: sse_read_and_leave(site, key), range(STREAMS)))
    assert reads == [READ] * STREAMS
    assert_each_cut_stream_metered_once(site)


class BrokenUsageBackend:
    """Westeurope's 8B as a backend that streams five tokens, then a usage chunk that is
    not JSON: the gateway fails mid-stream on something other than the network. The
    other deployments are the simulator's."""

    def __init__(self, simulator: object) -> None:
        self.simulator = simulator

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if not (
            path.startswith("/d/westeurope-") and path.endswith("8b-instruct/v1/chat/completions")
        ):
            await self.simulator(scope, receive, send)  # type: ignore[operator]
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
        for n in range(5):
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": f"w{n} "}}]}  # fmt: skip
            body = b"data: " + json.dumps(chunk).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b'data: {"usage": {"prompt_tok\n\n'})


def test_a_stream_that_fails_mid_way_is_metered_once_as_an_error(site, simulator_server):  # noqa: F811
    swappable, _ = simulator_server
    swappable.app = BrokenUsageBackend(swappable.app)
    key = api_key_for_acme()
    read = 0
    with (
        contextlib.suppress(httpx.HTTPError),
        httpx.stream(
            "POST",
            f"{site.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={**LONG, "stream": True},
            timeout=30,
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            read += line.startswith("data: ") and has_text(line[6:])
    assert read == 5
    assert wait_for_records(1) == 1
    [event] = site.drain()
    assert (event.status, event.output_tokens, event.usage_source) == ("error", 5, "estimated")
