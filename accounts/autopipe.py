"""Auto-pipelining for the gateway's hot path: what is sent in one turn, leaves together.

A request sends Redis two things: its admission (`billing.limits`) and its usage record
with the budget's settlement (`billing.metering`). Through redis-py's asyncio client
each costs ~50 µs of the gateway's CPU (a connection checked out of the pool, a
pipeline object, a coroutine per reply read), more than the rest of the request's Redis
work together. `pipe_for(client)` gives the client's `Pipe` instead:

`AutoPipeline`, for one server or Sentinel's master (plain TCP or a unix socket): one
connection per process and event loop, an `asyncio.Protocol` that packs commands with
hiredis's C packer and parses replies with its C reader. Whatever is submitted in one
turn of the event loop leaves in one write; replies come back in order and resolve each
submission as soon as its last reply is read (like ioredis's `enableAutoPipelining` and
Lettuce's single shared connection). ~5 µs of CPU per command under load
(bench/results/limits.md). Each command still runs on its own in Redis: a script is as
atomic as ever; only the syscalls are shared.

`ClientPipe`, for everything else (Redis Cluster, TLS): the same batching by turn, sent
as a redis-py pipeline (which splits it per node on Cluster).

Both give each submission its replies in order, errors as exception instances
(`raise_on_error=False`'s convention, NOSCRIPT as `NoScriptError`); a lost or silent
connection fails what was written on it with `ConnectionError`/`TimeoutError` (what
was written may have run: callers treat it as unknown, as with any client). Nothing
written is ever sent twice; what was submitted but not yet written is sent on the next
connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import hiredis
from redis import exceptions as redis_errors

logger = logging.getLogger(__name__)

Command = Sequence[Any]

#: A reply not read within this many seconds (with nothing read meanwhile) means the
#: server is stuck or gone: the connection is dropped and what waits on it fails.
REPLY_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0


class Pipe(Protocol):
    def submit(
        self, commands: Sequence[Command], *, orphan: Orphan | None = None
    ) -> asyncio.Future[list[Any]]:
        """The commands' replies, in order (errors as instances), once all are read.

        A caller that leaves (the future cancelled) before they are written has them
        not sent at all; after, `orphan` is given the replies when they arrive."""
        ...

    async def aclose(self) -> None:
        """Close its own connection, if it has one (the client closes the rest)."""
        ...

    def unanswered(self) -> int:
        """Submissions not answered yet (queued, or written and waiting for replies)."""
        ...


def pipe_for(client: Any) -> Pipe:
    """The client's pipe, made once per client (its connection made on first use)."""
    pipe = _pipes.get(client)
    if pipe is None:
        pipe = AutoPipeline.of(client) or ClientPipe(client)
        _pipes[client] = pipe
    return pipe


_pipes: weakref.WeakKeyDictionary[Any, Pipe] = weakref.WeakKeyDictionary()


def reply_error(error: Exception) -> Exception:
    """redis-py's class for an error reply: what callers already catch (NOSCRIPT)."""
    if str(error).startswith("NOSCRIPT"):
        return redis_errors.NoScriptError(*error.args)
    return error


Orphan = Callable[[list[Any]], None]


class _Submission:
    __slots__ = ("expected", "future", "orphan", "packed", "replies")

    def __init__(
        self,
        future: asyncio.Future[list[Any]],
        expected: int,
        orphan: Orphan | None,
        packed: Sequence[bytes] = (),  # what AutoPipeline writes for it
    ) -> None:
        self.future = future
        self.expected = expected
        self.orphan = orphan
        self.packed = packed
        self.replies: list[Any] = []

    def done(self) -> None:
        """All its replies are read: to its caller, or to `orphan` if the caller left."""
        if not self.future.done():
            self.future.set_result(self.replies)
        elif self.orphan is not None:
            self.orphan(self.replies)


class AutoPipeline:
    """One shared connection; everything submitted in a turn leaves in one write."""

    def __init__(
        self,
        *,
        address: Any,
        handshake: Sequence[Command] = (),
        reply_timeout_s: float = REPLY_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        #: (host, port), a unix socket's path, or an async callable giving (host, port)
        self.address = address
        self.handshake = [hiredis.pack_command(tuple(c)) for c in handshake]
        self.reply_timeout_s = reply_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        #: submitted, not yet written
        self._queued: list[_Submission] = []
        self._flush_soon = False

    @classmethod
    def of(cls, client: Any) -> AutoPipeline | None:
        """For a redis-py asyncio client of one server or Sentinel's master over TCP or
        a unix socket (None otherwise: Cluster, TLS). Same server, credentials, db."""
        from redis.asyncio.connection import (
            Connection,
            SSLConnection,
            UnixDomainSocketConnection,
        )
        from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedConnection

        pool = getattr(client, "connection_pool", None)
        if pool is None:
            return None
        kwargs = pool.connection_kwargs
        handshake: list[Command] = []
        password = kwargs.get("password")
        if password:
            username = kwargs.get("username")
            handshake.append(("AUTH", username, password) if username else ("AUTH", password))
        if kwargs.get("db"):
            handshake.append(("SELECT", kwargs["db"]))
        timeout = kwargs.get("socket_timeout") or REPLY_TIMEOUT_S
        connect_timeout = kwargs.get("socket_connect_timeout") or CONNECT_TIMEOUT_S
        options = {"reply_timeout_s": timeout, "connect_timeout_s": connect_timeout}
        connection_class = pool.connection_class
        address: Any
        if isinstance(pool, SentinelConnectionPool):
            if connection_class is not SentinelManagedConnection:
                return None
            address = pool.get_master_address  # asked again at every (re)connection
        elif connection_class is UnixDomainSocketConnection:
            address = kwargs["path"]
        elif issubclass(connection_class, Connection) and not issubclass(
            connection_class, SSLConnection
        ):
            address = (kwargs.get("host", "localhost"), kwargs.get("port", 6379))
        else:
            return None
        return cls(address=address, handshake=handshake, **options)

    def submit(
        self, commands: Sequence[Command], *, orphan: Orphan | None = None
    ) -> asyncio.Future[list[Any]]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests, a restarted server): a new connection
            self._reset(loop)
        future: asyncio.Future[list[Any]] = loop.create_future()
        packed = [hiredis.pack_command(tuple(c)) for c in commands]
        self._queued.append(_Submission(future, len(packed), orphan, packed))
        if not self._flush_soon:
            self._flush_soon = True
            loop.call_soon(self._flush)
        return future

    def unanswered(self) -> int:
        connection = self._connection
        return len(self._queued) + (len(connection.waiting) if connection is not None else 0)

    def _reset(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._connection is not None:
            self._connection.abandon()
        self._loop, self._connection, self._connecting = loop, None, None
        self._queued, self._flush_soon = [], False

    def _flush(self) -> None:
        self._flush_soon = False
        connection = self._connection
        if connection is None or connection.lost:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            return  # written once connected
        queued, self._queued = self._queued, []
        live = [s for s in queued if not s.future.done()]  # a caller gone: not sent
        if live:
            connection.write(live)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                address = self.address
                if callable(address):
                    address = await address()
                if isinstance(address, str):
                    _, connection = await loop.create_unix_connection(
                        lambda: _Connection(self.reply_timeout_s), address
                    )
                else:
                    host, port = address
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self.reply_timeout_s), host, port
                    )
                if self.handshake:
                    hello = _Submission(
                        loop.create_future(), len(self.handshake), None, self.handshake
                    )
                    connection.write([hello])
                    for answer in await hello.future:
                        if isinstance(answer, Exception):
                            connection.abort()
                            raise redis_errors.ConnectionError(f"Redis refused us: {answer}")
        except Exception as exc:
            self._connecting = None
            queued, self._queued = self._queued, []
            error = (
                exc
                if isinstance(exc, redis_errors.RedisError)
                else redis_errors.ConnectionError(f"Error connecting to Redis: {exc!r}")
            )
            for submission in queued:
                if not submission.future.done():
                    submission.future.set_exception(error)
            return
        self._connection, self._connecting = connection, None
        self._flush()

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.abort()
        self._connection = None


class _Connection(asyncio.Protocol):
    """One socket to Redis: writes batches, reads replies into the waiting submissions."""

    def __init__(self, reply_timeout_s: float) -> None:
        self.reader = hiredis.Reader(replyError=redis_errors.ResponseError)
        self.waiting: collections.deque[_Submission] = collections.deque()
        self.transport: Any = None  # asyncio's or uvloop's (not an asyncio.Transport)
        self.lost = False
        self.reply_timeout_s = reply_timeout_s
        self._read_at = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def write(self, submissions: list[_Submission]) -> None:
        if not self.waiting:
            self._read_at = time.monotonic()
            self._arm()
        self.waiting.extend(submissions)
        try:
            if len(submissions) == 1 and submissions[0].expected == 1:
                self.transport.write(submissions[0].packed[0])
            else:
                self.transport.write(b"".join([p for s in submissions for p in s.packed]))
        except Exception as exc:  # a transport closing under us: nothing may hang
            self._fail(redis_errors.ConnectionError(f"Error writing to Redis: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        self._read_at = time.monotonic()
        waiting = self.waiting
        gets = self.reader.gets
        while True:
            try:
                reply = gets()
            except hiredis.ProtocolError as exc:
                self._fail(redis_errors.ConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not waiting:  # nothing asked for it: the stream is out of step
                self._fail(redis_errors.ConnectionError("a reply nobody asked for"))
                return
            submission = waiting[0]
            if isinstance(reply, redis_errors.ResponseError):
                reply = reply_error(reply)
            submission.replies.append(reply)
            if len(submission.replies) == submission.expected:
                waiting.popleft()
                submission.done()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis_errors.ConnectionError(f"Connection to Redis lost: {exc or 'closed'}"))

    def _arm(self) -> None:
        if self._watchdog is None:
            loop = asyncio.get_running_loop()
            self._watchdog = loop.call_later(self.reply_timeout_s, self._check)

    def _check(self) -> None:
        self._watchdog = None
        if not self.waiting or self.lost:
            return
        silent = time.monotonic() - self._read_at
        if silent >= self.reply_timeout_s:
            self._fail(redis_errors.TimeoutError(f"Redis sent nothing for {silent:.1f} s"))
        else:
            loop = asyncio.get_running_loop()
            self._watchdog = loop.call_later(self.reply_timeout_s - silent, self._check)

    def _fail(self, error: Exception) -> None:
        self.lost = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiting, self.waiting = self.waiting, collections.deque()
        for submission in waiting:
            if not submission.future.done():
                submission.future.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def abort(self) -> None:
        self._fail(redis_errors.ConnectionError("Connection to Redis closed"))

    def abandon(self) -> None:
        """Close a connection whose event loop has ended (nothing can wait on it now)."""
        self.lost = True
        self.waiting.clear()
        if self.transport is not None:
            with contextlib.suppress(RuntimeError):  # its socket goes with the transport
                self.transport.abort()


class ClientPipe:
    """The same batching by turn through a redis-py client (Cluster: split per node)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued: list[tuple[Sequence[Command], _Submission]] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._sent = 0  # submissions in the batches being sent

    def submit(
        self, commands: Sequence[Command], *, orphan: Orphan | None = None
    ) -> asyncio.Future[list[Any]]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._queued, self._sent = loop, [], 0
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._queued.append((commands, _Submission(future, len(commands), orphan)))
        if len(self._queued) == 1:  # the first of this turn: one flush sends them all
            loop.call_soon(self._flush)
        return future

    async def aclose(self) -> None:
        pass  # the client's own pool

    def unanswered(self) -> int:
        return len(self._queued) + self._sent

    def _flush(self) -> None:
        batch, self._queued = self._queued, []
        batch = [(c, s) for c, s in batch if not s.future.done()]  # a caller gone: not sent
        if not batch:
            return
        self._sent += len(batch)
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Sequence[Command], _Submission]]) -> None:
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for commands, _ in batch:
                    for command in commands:
                        pipe.execute_command(*command)
                replies = list(await pipe.execute(raise_on_error=False))
        except Exception as exc:
            for _, submission in batch:
                if not submission.future.done():
                    submission.future.set_exception(exc)
            return
        finally:
            self._sent -= len(batch)  # before any caller hears
        at = 0
        for commands, submission in batch:
            submission.replies = replies[at : at + len(commands)]
            at += len(commands)
            submission.done()
