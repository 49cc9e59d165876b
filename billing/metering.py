"""The usage stream: how a finished request becomes exactly one UsageEvent.

The gateway appends one `UsageRecord` per request to a Redis stream before it sends
the last byte of the response (`publish`). A Celery task drains the stream into
PostgreSQL (`billing.services.usage_events_drain`) through a consumer group:

* the row is keyed by `request_id`: the id is inserted into `UsageRequestId` (its
  primary key) with ON CONFLICT DO NOTHING, and the event only if the id was new, so
  a replayed message changes nothing;
* a message is acknowledged only after its row is committed, so a worker killed
  between reading and committing leaves it pending, and the next drain claims it
  (XAUTOCLAIM) once it has been idle for `CLAIM_IDLE_MS`.

Together: nothing is lost when a gateway or a worker dies, nothing is counted twice.
The stream is as durable as the Redis it lives in; production runs Redis with AOF.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import msgspec
from django.conf import settings

from accounts import autopipe

STREAM: str = settings.TESSERACT_USAGE_STREAM
GROUP = "usage-drain"
CLAIM_IDLE_MS = 30_000

logger = logging.getLogger(__name__)


class UsageRecord(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    org_id: int
    api_key_id: int | None
    created_at: float  # unix seconds
    endpoint: str
    model: str
    served_model: str
    deployment: str
    region: str
    cluster: str
    chip: str
    stream: bool
    status: str
    input_tokens: int
    output_tokens: int
    usage_source: str
    cost_usd: str  # a decimal string: money never goes through a float
    ttft_ms: float | None = None
    latency_ms: float | None = None
    network_ms: float | None = None
    queue_ms: float | None = None
    compute_ms: float | None = None
    sla_met: bool | None = None
    attempts: int = 1
    constraints: dict[str, object] = {}
    #: the backend's certifications, jurisdictions and country at decision time
    backend_policy: dict[str, object] = {}
    trace_id: str = ""
    #: the plan as the audit log keeps it: strategy, snapshot, the ranked backends (the
    #: drain adds its hash, `accounts.audit_verify.plan_hash`)
    plan: dict[str, object] = {}
    # -- developer dashboard (issue 11): the request's own story -----------------------
    #: the deployments the gateway sent it to, in order (the last one answered, or failed)
    tried: list[str] = []


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UsageRecord)


def encode(record: UsageRecord) -> bytes:
    return _encoder.encode(record)


def decode(data: bytes) -> UsageRecord:
    return _decoder.decode(data)


def _id(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return int(ms), int(seq or 0)


def trim(client: Any) -> int:
    """Delete from the stream the entries every consumer group has stored; return how many.

    An entry may go once its group has read it (its id is at most the group's
    last-delivered id) and acknowledged it (it is older than the group's oldest
    pending entry, whichever consumer holds that). The groups are read before their
    pending lists: an entry delivered in between has an id above the last-delivered
    id read, so it is kept whether or not it then shows as pending. A stream with no
    group yet keeps everything (nobody has stored anything).
    """
    import redis

    try:
        groups = client.xinfo_groups(STREAM)
    except redis.ResponseError:  # no stream yet
        return 0
    keep: tuple[int, int] | None = None
    for group in groups:
        ms, seq = _id(group["last-delivered-id"])
        first_kept = (ms, seq + 1)
        if group["pending"]:
            oldest = client.xpending(STREAM, group["name"])["min"]
            if oldest is not None:
                first_kept = min(first_kept, _id(oldest))
        keep = first_kept if keep is None else min(keep, first_kept)
    if keep is None:
        return 0
    return int(client.xtrim(STREAM, minid=f"{keep[0]}-{keep[1]}", approximate=False))


async def publish(redis: Any, record: UsageRecord) -> None:
    """Append one record to the stream (`redis` is a `redis.asyncio.Redis`)."""
    await redis.xadd(STREAM, {b"r": encode(record)})


#: How long a publish may wait on Redis before its records go to the spool instead.
PUBLISH_TIMEOUT_S = 2.0
#: While Redis is down: how often to ping it (and replay the spool when it answers).
RETRY_INTERVAL_S = 0.25
#: A spool file unlocked and untouched this long belongs to a process that is gone.
ORPHAN_AGE_S = 10.0


class Spool:
    """An append-only file of records that could not reach Redis: one per publisher.

    Each line is one encoded record (JSON never contains a raw newline). `append`
    returns once the lines are fsync'd, so a record written here survives the process
    and the machine. The owner holds an exclusive `flock` on its file for as long as it
    lives: a file nobody holds (and older than `ORPHAN_AGE_S`) was left by a process
    that died, and any other publisher on the machine replays it (`orphans`).
    Replaying twice is harmless: the drain keys rows by request id.

    The file methods block (write, fsync): call them in a thread.
    """

    SUFFIX = ".spool"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = (
            directory / f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}{self.SUFFIX}"
        )
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the new file's name is durable too
            finally:
                os.close(dir_fd)
            self._fd = fd
        return self._fd

    def append(self, lines: list[bytes]) -> None:
        fd = self._open()
        data = memoryview(b"".join(line + b"\n" for line in lines))
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)

    def read(self) -> list[bytes]:
        if self._fd is None:
            return []
        return _lines(self.path.read_bytes())

    def clear(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)

    def orphans(self) -> list[tuple[Path, list[bytes]]]:
        """The lines of the spool files that processes now gone left in this directory."""
        found: list[tuple[Path, list[bytes]]] = []
        if not self.directory.is_dir():
            return found
        for path in self.directory.glob(f"*{self.SUFFIX}"):
            if path == self.path:
                continue
            try:
                if time.time() - path.stat().st_mtime < ORPHAN_AGE_S:
                    continue  # perhaps just created, not yet locked by its owner
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                found.append((path, _lines(path.read_bytes())))
            except BlockingIOError:  # its owner is alive
                pass
            finally:
                os.close(fd)
        return found


def _lines(data: bytes) -> list[bytes]:
    # A line cut short by a crash mid-write is passed on as it is: the drain
    # dead-letters what it cannot decode, rather than anything being dropped here.
    return [line for line in data.split(b"\n") if line]


class Publisher:
    """Appends records in batches: one round trip to Redis for all the requests that
    finish in the same turn of the event loop.

    `publish()` returns only once its record is durable: in Redis, or — when Redis
    cannot take it within `PUBLISH_TIMEOUT_S` — fsync'd to this process's spool file.
    A caller that awaits it before sending its last byte keeps the promise that a
    served request is billed. Under load this turns dozens of XADDs into one pipelined
    write.

    When a write to Redis fails, `available` turns false (the gateway then refuses new
    requests with a 503 before calling any backend: checking it costs an attribute
    read, no round trip), records go straight to the spool, and a watcher pings Redis
    every `RETRY_INTERVAL_S`. When Redis answers, the watcher replays the spool into the
    stream (and any spool a dead process left on this machine), then turns `available`
    back on. Replays may repeat a record already in Redis (a write that timed out after
    all): the drain stores each request id once.
    """

    def __init__(self, redis: Any, *, spool: Spool | None = None) -> None:
        self.redis = redis
        self.spool = spool or Spool(Path(settings.VAR_DIR) / "usage-spool")
        self.available = True
        self.down_since: float | None = None
        self._pending: list[tuple[bytes, Any, asyncio.Future[None]]] = []
        self._flushing = False
        self._spool_lock: asyncio.Lock | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._adopted = False
        self._spooled = False  # records in our spool that no replay has taken yet

    @property
    def pipe(self) -> autopipe.Pipe:
        return autopipe.pipe_for(self.redis)

    async def publish(self, record: UsageRecord, *, settle: Any = None) -> None:
        """`settle`: (script, keys, args), run in the same round trip as the XADD
        (`billing.limits`: a request's budget settles with its usage record)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((encode(record), settle, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._start_flush)
        await future

    def _start_flush(self) -> None:
        task = asyncio.ensure_future(self._flush())
        task.add_done_callback(lambda _: None)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                datas = [data for data, _, _ in batch]
                if self.available:
                    try:
                        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                            await self._xadd(datas, [settle for _, settle, _ in batch])
                    except Exception as exc:
                        self._down(exc)
                    else:
                        _resolve(batch)
                        if not self._adopted:
                            self._adopted = True
                            self._watch()  # once: replay what dead processes left here
                        continue
                try:
                    await self._to_spool(datas)
                except Exception:
                    # Neither Redis nor the disk took it: the log is all that is left.
                    logger.critical(
                        "usage records lost to Redis and to the spool %s: %s",
                        self.spool.path,
                        b"\n".join(datas).decode(errors="backslashreplace"),
                        exc_info=True,
                    )
                # Served is served: the caller answers its client. (A budget reservation
                # that could not settle now expires with its month's key; see billing.limits.)
                _resolve(batch)
        finally:
            self._flushing = False

    async def _xadd(self, datas: list[bytes], settles: list[Any] | None = None) -> None:
        """One pipelined round trip (`accounts.autopipe`: with whatever else this turn
        sends): each record's XADD, and after it the budget settlement that goes with
        it. Raises if any XADD failed (the whole batch is then spooled; the drain stores
        each request id once)."""
        settles = settles or [None] * len(datas)
        commands: list[tuple[Any, ...]] = []
        for data, settle in zip(datas, settles, strict=True):
            commands.append(("XADD", STREAM, "*", b"r", data))
            if settle is not None:
                script, keys, args = settle
                commands.append(("EVALSHA", script.sha, len(keys), *keys, *args))
        results = iter(await self.pipe.submit(commands))
        failed: BaseException | None = None
        for settle in settles:
            added = next(results)
            if isinstance(added, BaseException):
                failed = added
            if settle is not None and isinstance(next(results), BaseException):
                await _settle_again(settle)
        if failed is not None:
            raise failed

    def _lock(self) -> asyncio.Lock:
        if self._spool_lock is None:
            self._spool_lock = asyncio.Lock()
        return self._spool_lock

    async def _to_spool(self, datas: list[bytes]) -> None:
        async with self._lock():
            await asyncio.to_thread(self.spool.append, datas)
            self._spooled = True
        self._watch()  # whatever is in the spool, a watcher will replay it

    def report_down(self, exc: BaseException) -> None:
        """Another use of the same Redis failed (admission, affinity): refuse new work
        until the watcher sees it answer again."""
        self._down(exc)

    def _down(self, exc: BaseException) -> None:
        if self.available:
            self.available = False
            self.down_since = time.time()
            logger.error(
                "usage stream unreachable (%s: %s); spooling to %s and refusing new requests",
                type(exc).__name__,
                exc,
                self.spool.path,
                exc_info=exc,
            )
        self._watch()

    def _watch(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Until the spool is replayed: ping Redis, replay when it answers, then reopen."""
        while True:
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                    await self.redis.ping()
                async with self._lock():
                    await self._replay(await asyncio.to_thread(self.spool.read))
                    await asyncio.to_thread(self.spool.clear)
                    self._spooled = False
                    if not self.available:
                        logger.warning("usage stream reachable again; spool replayed")
                    self.available, self.down_since = True, None
                for path, lines in await asyncio.to_thread(self.spool.orphans):
                    await self._replay(lines)
                    await asyncio.to_thread(path.unlink, missing_ok=True)
                    logger.warning("replayed %d usage records a dead process left in %s",
                                   len(lines), path)  # fmt: skip
                if not self._spooled:  # (a write that failed meanwhile spooled again)
                    return
            except Exception as exc:
                self._down(exc)
                await asyncio.sleep(RETRY_INTERVAL_S)

    async def _replay(self, lines: list[bytes]) -> None:
        for start in range(0, len(lines), 500):
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self._xadd(lines[start : start + 500])


def _resolve(batch: list[tuple[bytes, Any, asyncio.Future[None]]]) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_result(None)


async def _settle_again(settle: Any) -> None:
    """The script was not loaded (Redis restarted): load and run it on its own."""
    script, keys, args = settle
    try:
        await script(keys=keys, args=args)
    except Exception:
        logger.exception("could not settle a budget reservation (keys %s)", keys)
