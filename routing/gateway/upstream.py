"""Talking to backends: one pooled HTTP client per process, errors mapped to ours.

The OpenAI-compatible adapter covers vLLM, SGLang, TGI, llama.cpp, Ollama, Groq,
Cerebras, Together and the Tesseract simulator: POST `{base}/chat/completions` or
`{base}/completions`, SSE when streaming.

    UpstreamError            the backend failed; safe to try another before the first token
    ├── UpstreamConnectError can't connect, or the connection dropped
    ├── UpstreamTimeout      no answer in time
    └── UpstreamStatusError  5xx or 429
        ├── UpstreamRateLimited  429: the deployment rests for its Retry-After
        ├── UpstreamAuthRejected 401/403: the provider rejected *our* credential
        └── UpstreamMisconfigured 404 from a provider: our model id or URL is wrong
    UpstreamRejected         another 4xx: the request itself is wrong; not retried

A provider's error body is kept on the exception for the operators (`body`) and never
goes into its message, which the logs and the health reasons carry: a provider may
echo the credential it refused.

aiohttp rather than httpx: measured on this machine, the same forwarding loop served
about twice the requests per second with aiohttp (see bench/README.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

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


class UpstreamRateLimited(UpstreamStatusError):
    """429: the provider wants this deployment left alone for `retry_after_s`."""

    #: without a usable Retry-After, the deployment rests this long
    DEFAULT_RETRY_AFTER_S = 5.0

    def __init__(self, status: int, body: bytes, retry_after_s: float) -> None:
        super().__init__(status, body)
        self.retry_after_s = retry_after_s
        self.public = "the backend is rate-limited"


class UpstreamAuthRejected(UpstreamStatusError):
    """401/403: the provider refused our credential. Not the client's fault."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status, body)
        self.public = "the backend is misconfigured"


class UpstreamMisconfigured(UpstreamStatusError):
    """A provider answered 404: the model id or the base URL we were given is wrong.

    The client asked for a model the catalog serves; it is not told it does not exist.
    """

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status, body)
        self.public = "the backend is misconfigured"


def retry_after_s(value: str | None, *, now: float | None = None) -> float:
    """Seconds from a Retry-After header (seconds or an HTTP date); a default otherwise."""
    import email.utils
    import time

    if value:
        value = value.strip()
        try:
            return max(float(value), 0.0)
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return UpstreamRateLimited.DEFAULT_RETRY_AFTER_S
        return max(when - (time.time() if now is None else now), 0.0)
    return UpstreamRateLimited.DEFAULT_RETRY_AFTER_S


class UpstreamRejected(Exception):
    """The backend refused the request as malformed: pass its answer on."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"backend rejected the request with {status}")
        self.status = status
        self.body = body


#: How long an idle connection to a backend stays in the pool: under the 5 s after which
#: uvicorn (vLLM's, SGLang's and the simulator's server) closes one, so that no request
#: is written into a connection closing under it (a reset, a needless failover, and a
#: failure counted against a healthy backend). Busy backends keep their connections.
UPSTREAM_KEEPALIVE_S = 4.0


class Upstream:
    """A process-wide aiohttp session, created in the running event loop on first use."""

    def __init__(self, *, connections: int = 1000) -> None:
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._connections,
                    ttl_dns_cache=300,
                    keepalive_timeout=UPSTREAM_KEEPALIVE_S,
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                # No timer of aiohttp's own per request: every wait on a backend is
                # bounded by ours (`open`, `fetch`, `StreamGuard`).
                timeout=aiohttp.ClientTimeout(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def open(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        *,
        timeout_s: float,
        connect_timeout_s: float | None = None,
    ) -> aiohttp.ClientResponse:
        """POST and wait for the response head; raise an `UpstreamError` on failure."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self._open(url, body, headers, connect_timeout_s)
        except TimeoutError as exc:  # aiohttp's connect timeout is one too
            raise UpstreamTimeout(f"no response from {url} in {timeout_s:.1f}s") from exc

    async def fetch(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        *,
        timeout_s: float,
        connect_timeout_s: float | None = None,
    ) -> bytes:
        """POST and read the whole answer: head and body under one timer, not a timer
        for each (a non-streamed request pays for one)."""
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._open(url, body, headers, connect_timeout_s)
                return await _read(response)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no complete answer from {url} in {timeout_s:.1f}s") from exc

    async def _open(
        self, url: str, body: bytes, headers: dict[str, str], connect_timeout_s: float | None
    ) -> aiohttp.ClientResponse:
        options: dict[str, Any] = {}
        if connect_timeout_s is not None:  # the provider's; the whole wait is `timeout_s`
            options["timeout"] = aiohttp.ClientTimeout(sock_connect=connect_timeout_s)
        try:
            response = await self.session().post(url, data=body, headers=headers, **options)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise UpstreamConnectError(f"{url}: {exc}") from exc
        if response.status == 429:
            wait = retry_after_s(response.headers.get("retry-after"))
            raise UpstreamRateLimited(429, await _read_quietly(response), wait)
        if response.status in (401, 403):
            raise UpstreamAuthRejected(response.status, await _read_quietly(response))
        if response.status >= 500:
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


async def _read(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
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
    (in `sse_batches`), not a timer each. The timer never cancels the task, which may
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


async def sse_batches(
    response: aiohttp.ClientResponse, guard: StreamGuard | None = None
) -> AsyncGenerator[list[bytes], None]:
    """The `data:` payloads of a server-sent event stream, as raw bytes, a list per read:
    the events that arrived together leave together (one write to the client, not one
    per event). Never an empty list.

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
            cut = buffer.rfind(SSE_SEPARATOR)
            if cut < 0:
                continue
            events, buffer = buffer[:cut], buffer[cut + 2 :]
            batch = [
                line[5:].strip()
                for event in events.split(SSE_SEPARATOR)
                for line in event.split(b"\n")
                if line.startswith(b"data:")
            ]
            if batch:
                yield batch
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise UpstreamConnectError(str(exc)) from exc
    finally:
        response.release()
