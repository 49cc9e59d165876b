"""Talking to backends: one pooled HTTP client per process, errors mapped to ours.

The OpenAI-compatible adapter covers vLLM, SGLang, TGI, llama.cpp, Ollama, Groq,
Cerebras, Together and the Tesseract simulator: POST `{base}/chat/completions` or
`{base}/completions`, SSE when streaming.

    UpstreamError            the backend failed; safe to try another before the first token
    ├── UpstreamConnectError can't connect, or the connection dropped
    ├── UpstreamTimeout      no answer in time
    └── UpstreamStatusError  5xx or 429
    UpstreamRejected         4xx other than 429: the request itself is wrong; not retried

aiohttp rather than httpx: measured on this machine, the same forwarding loop served
about twice the requests per second with aiohttp (see bench/README.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import aiohttp

SSE_SEPARATOR = b"\n\n"


class UpstreamError(Exception):
    """A failure of the backend, not of the request.

    The message may name the backend's URL (for logs and operators); `public` is what
    a client may be told, and never names a URL, a host or a port.
    """

    public = "the backend failed"


class UpstreamConnectError(UpstreamError):
    public = "the connection to the backend failed"


class UpstreamTimeout(UpstreamError):
    public = "the backend did not answer in time"


class UpstreamStatusError(UpstreamError):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"backend answered {status}")
        self.status = status
        self.body = body
        self.public = f"the backend answered {status}"


class UpstreamRejected(Exception):
    """The backend refused the request as malformed: pass its answer on."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"backend rejected the request with {status}")
        self.status = status
        self.body = body


class Upstream:
    """A process-wide aiohttp session, created in the running event loop on first use."""

    def __init__(self, *, connections: int = 1000) -> None:
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._connections, ttl_dns_cache=300, keepalive_timeout=30
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def open(
        self, url: str, body: bytes, headers: dict[str, str], *, timeout_s: float
    ) -> aiohttp.ClientResponse:
        """POST and wait for the response head; raise an `UpstreamError` on failure."""
        try:
            async with asyncio.timeout(timeout_s):
                response = await self.session().post(url, data=body, headers=headers)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no response from {url} in {timeout_s:.1f}s") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise UpstreamConnectError(f"{url}: {exc}") from exc
        if response.status >= 500 or response.status == 429:
            payload = await _read_quietly(response)
            raise UpstreamStatusError(response.status, payload)
        if response.status >= 400:
            payload = await _read_quietly(response)
            raise UpstreamRejected(response.status, payload)
        return response


async def _read_quietly(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
    except aiohttp.ClientError:
        return b""
    finally:
        response.release()


async def read_body(response: aiohttp.ClientResponse, *, timeout_s: float) -> bytes:
    try:
        async with asyncio.timeout(timeout_s):
            return await response.read()
    except TimeoutError as exc:
        raise UpstreamTimeout(f"body not complete in {timeout_s:.1f}s") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise UpstreamConnectError(str(exc)) from exc
    finally:
        response.release()


class StreamGuard:
    """Ends a stream whose backend goes silent, or that outlives its request's deadline.

    Armed after the first token (the wait for it has its own timeout): the backend
    may send nothing for at most `stall_s` while the gateway is waiting for it (time
    spent handing chunks to a slow client does not count), and the stream must end
    by the deadline. When either passes, the guard fails the pending read with
    `UpstreamTimeout` and closes the connection, so the backend sees the client leave
    and frees its slot; `expired` says which ("stall" or "deadline").

    One timer per stream, re-armed only when it fires: a chunk costs two clock reads
    (in `sse_events`), not a timer each. The timer never cancels the task, which may
    be suspended in the client's transport rather than in the upstream read.
    """

    __slots__ = ("_deadline", "_handle", "_loop", "_response", "expired", "stall_s",
                 "waiting_since")  # fmt: skip

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self.stall_s = 0.0
        #: loop time since when the stream has been waiting for the backend (None: not)
        self.waiting_since: float | None = None
        self.expired: str | None = None

    def arm(self, *, stall_s: float, deadline_in_s: float) -> None:
        now = self._loop.time()
        self.stall_s = stall_s
        self._deadline = now + max(deadline_in_s, 0.0)
        self._handle = self._loop.call_at(min(self._deadline, now + stall_s), self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        now = self._loop.time()
        since = self.waiting_since
        if now >= self._deadline:
            self._expire("deadline")
        elif since is not None and now - since >= self.stall_s:
            self._expire("stall")
        else:
            due = (now if since is None else since) + self.stall_s
            self._handle = self._loop.call_at(min(self._deadline, due), self._check)

    def _expire(self, why: str) -> None:
        self._handle = None
        self.expired = why
        self._response.content.set_exception(UpstreamTimeout(f"stream {why}"))
        self._response.close()


async def sse_events(
    response: aiohttp.ClientResponse, guard: StreamGuard | None = None
) -> AsyncGenerator[bytes, None]:
    """The `data:` payloads of a server-sent event stream, as raw bytes.

    With a `guard`, the time spent waiting for each piece is recorded for its stall check.
    """
    buffer = b""
    content = response.content
    clock = asyncio.get_running_loop().time
    try:
        while True:
            if guard is not None:
                guard.waiting_since = clock()
                piece = await content.readany()
                guard.waiting_since = None
            else:
                piece = await content.readany()
            if not piece:
                break
            buffer += piece
            while True:
                cut = buffer.find(SSE_SEPARATOR)
                if cut < 0:
                    break
                event, buffer = buffer[:cut], buffer[cut + 2 :]
                for line in event.split(b"\n"):
                    if line.startswith(b"data:"):
                        yield line[5:].strip()
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise UpstreamConnectError(str(exc)) from exc
    finally:
        response.release()
