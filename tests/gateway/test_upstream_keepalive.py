"""The gateway never sends a request on a connection its backend is about to close.

vLLM, SGLang and the simulator serve through uvicorn, which closes a connection after
5 idle seconds. A pool that kept it longer would now and then write a request into a
connection closing under it: a reset, a failover and a failure counted against a
healthy backend. The gateway's pool lets a connection go idle for less than that.
"""

from __future__ import annotations

import asyncio
import time

import uvicorn

from routing.gateway.upstream import UPSTREAM_KEEPALIVE_S, Upstream
from tests.servers import serve


class Peers:
    """An ASGI app that answers `{}` and remembers each client's port."""

    def __init__(self) -> None:
        self.ports: list[int] = []

    async def __call__(self, scope, receive, send) -> None:
        self.ports.append(scope["client"][1])
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def test_an_idle_connection_is_dropped_before_the_backends_keep_alive_ends_and_reused_before():
    assert uvicorn.Config(app=None).timeout_keep_alive > UPSTREAM_KEEPALIVE_S
    peers = Peers()

    async def calls(url: str) -> None:
        upstream = Upstream()
        try:
            for pause in (0.0, 0.2, UPSTREAM_KEEPALIVE_S + 0.5):
                await asyncio.sleep(pause)
                assert await upstream.fetch(url, b"{}", {}, timeout_s=30) == b"{}"
        finally:
            await upstream.close()

    with serve(peers) as url:
        started = time.monotonic()
        asyncio.run(calls(url))
    assert time.monotonic() - started > UPSTREAM_KEEPALIVE_S
    first, soon_after, after_idling = peers.ports
    assert soon_after == first  # the pool works
    assert after_idling != first  # and let the idle connection go
