"""When Redis cannot take a usage record, the gateway's publisher keeps it on disk and
replays it when Redis answers again; a spool left by a process that died is replayed
by the next publisher on the machine, a live process's never."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import redis.asyncio
from django.conf import settings

from billing import metering
from tests.billing.test_usage_metering import record, stream  # noqa: F401 (a fixture)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens there once the socket closes


def in_stream(client) -> list[str]:
    return [metering.decode(f[b"r"]).request_id for _, f in client.xrange(metering.STREAM)]


async def until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_records_redis_refuses_are_spooled_and_replayed_when_it_answers(
    acme,
    stream,  # noqa: F811
    tmp_path: Path,
):
    async def go() -> None:
        down = redis.asyncio.Redis(port=closed_port())
        publisher = metering.Publisher(down, spool=metering.Spool(tmp_path))
        await publisher.publish(record(acme, "req-1"))  # returns: the record is on disk
        assert publisher.available is False
        await publisher.publish(record(acme, "req-2"))  # straight to the spool now
        assert [metering.decode(line).request_id for line in publisher.spool.read()] == [
            "req-1",
            "req-2",
        ]
        assert in_stream(stream) == []

        up = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        publisher.redis = up  # Redis is back
        await until(lambda: publisher.available)
        assert publisher.spool.read() == []
        await publisher.publish(record(acme, "req-3"))
        await up.aclose()
        await down.aclose()

    asyncio.run(go())
    assert in_stream(stream) == ["req-1", "req-2", "req-3"]


def test_a_spool_left_by_a_dead_process_is_replayed_and_a_live_ones_is_not(
    acme,
    stream,  # noqa: F811
    tmp_path: Path,
):
    dead = metering.Spool(tmp_path)
    dead.append([metering.encode(record(acme, "from-the-dead"))])
    assert dead._fd is not None
    os.close(dead._fd)  # the process died: its lock is gone
    alive = metering.Spool(tmp_path)
    alive.append([metering.encode(record(acme, "from-the-living"))])
    long_ago = time.time() - 3600
    for path in (dead.path, alive.path):
        os.utime(path, (long_ago, long_ago))

    async def go() -> None:
        client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        publisher = metering.Publisher(client, spool=metering.Spool(tmp_path))
        await publisher.publish(record(acme, "fresh"))
        await until(lambda: not dead.path.exists())
        await client.aclose()

    asyncio.run(go())
    assert sorted(in_stream(stream)) == ["fresh", "from-the-dead"]
    assert alive.path.exists()
