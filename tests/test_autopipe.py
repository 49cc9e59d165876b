"""The hot path's auto-pipelined Redis connection (`accounts.autopipe`), against a real
Redis: batching by turn, replies in order, errors in place, a lost or silent server."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest
import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis import exceptions as redis_errors

from accounts import autopipe, redis_client


def _key() -> str:
    return f"tesseract:test:autopipe:{uuid.uuid4().hex}"


def _run(scenario):
    return asyncio.run(asyncio.wait_for(scenario(), timeout=60))


@contextlib.asynccontextmanager
async def _redis(*keys: str):
    """A client of the test Redis; `keys` deleted and the client closed afterwards."""
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    try:
        yield client
    finally:
        if keys:
            await client.delete(*keys)
        await client.aclose()


def test_a_plain_server_gets_its_own_connection_and_a_cluster_or_tls_keeps_redis_py():
    plain = aioredis.Redis.from_url(settings.REDIS_URL)
    assert isinstance(autopipe.pipe_for(plain), autopipe.AutoPipeline)
    assert isinstance(
        autopipe.pipe_for(aioredis.Redis.from_url("unix:///tmp/redis.sock")), autopipe.AutoPipeline
    )
    tls = aioredis.Redis.from_url("rediss://127.0.0.1:6390/0")
    assert isinstance(autopipe.pipe_for(tls), autopipe.ClientPipe)
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    assert autopipe.pipe_for(client) is autopipe.pipe_for(client)  # one per client


#: Holds Redis for 0.3 s of its own clock (a written command stays unanswered).
BUSY = """
local t = redis.call('TIME')
local stop = tonumber(t[1]) * 1000000 + tonumber(t[2]) + 300000
repeat t = redis.call('TIME') until tonumber(t[1]) * 1000000 + tonumber(t[2]) >= stop
return 1
"""


def test_a_pipe_counts_what_is_unanswered_from_submission_to_reply():
    async def scenario():
        async with _redis() as client:
            counts = []
            for pipe in (autopipe.pipe_for(client), autopipe.ClientPipe(client)):
                counts.append(pipe.unanswered())
                busy = pipe.submit([("EVAL", BUSY, 0)])
                pings = [pipe.submit([("PING",)]) for _ in range(2)]
                counts.append(pipe.unanswered())  # queued
                await asyncio.sleep(0.05)  # written, Redis still busy with the first
                counts.append(pipe.unanswered())
                assert await busy == [1]
                await asyncio.gather(*pings)
                counts.append(pipe.unanswered())
            return counts

    assert _run(scenario) == [0, 3, 3, 0] * 2


def test_a_submission_leaves_when_its_turn_ends_not_before():
    key = _key()
    sync = redis.Redis.from_url(settings.REDIS_URL)

    def in_redis_within(seconds: float) -> bool:
        """Polled without yielding to the event loop: only a write already made counts."""
        give_up = time.monotonic() + seconds
        while time.monotonic() < give_up:
            if sync.get(key) == b"1":
                return True
            time.sleep(0.01)
        return False

    async def scenario():
        async with _redis(key) as client:
            pipe = autopipe.pipe_for(client)
            await pipe.submit([("PING",)])  # connected
            queued = pipe.submit([("INCR", key)])
            assert not in_redis_within(0.3)  # queued: it leaves when this turn ends
            assert await queued == [1]
            return int(await client.get(key))

    try:
        assert _run(scenario) == 1
    finally:
        sync.close()


def test_what_one_turn_submits_leaves_in_one_write_and_each_caller_gets_its_own_replies(
    monkeypatch,
):
    key = _key()
    writes: list[int] = []
    write = autopipe._Connection.write

    def counted(connection, submissions):
        writes.append(len(submissions))
        return write(connection, submissions)

    monkeypatch.setattr(autopipe._Connection, "write", counted)

    async def scenario():
        async with _redis(key) as client:
            pipe = autopipe.pipe_for(client)
            await pipe.submit([("PING",)])
            replies = await asyncio.gather(
                *(pipe.submit([("INCR", key), ("GET", key)]) for _ in range(20)),
                pipe.submit([("HGET", key, "f")]),  # the wrong type: an error, in place
            )
            return replies, int(await client.get(key))

    replies, value = _run(scenario)
    assert writes == [1, 21]
    assert list(replies[:20]) == [[n, str(n).encode()] for n in range(1, 21)]
    (error,) = replies[20]
    assert isinstance(error, redis_errors.ResponseError)
    assert "WRONGTYPE" in str(error)
    assert value == 20


def test_an_unknown_script_answers_noscript_as_redis_py_names_it():
    async def scenario():
        async with _redis() as client:
            return await autopipe.pipe_for(client).submit([("EVALSHA", "0" * 40, 0)])

    (reply,) = _run(scenario)
    assert isinstance(reply, redis_errors.NoScriptError)


def test_a_connection_killed_fails_what_was_written_and_the_next_command_reconnects():
    key = _key()

    async def scenario():
        async with _redis(key) as client:
            pipe = autopipe.pipe_for(client)
            await pipe.submit([("CLIENT", "SETNAME", "autopipe-victim")])
            blocked = pipe.submit([("BLPOP", key, 0)])  # waits in Redis until killed
            await asyncio.sleep(0.05)
            victims = [c for c in await client.client_list() if c["name"] == "autopipe-victim"]
            await client.execute_command("CLIENT", "KILL", "ID", victims[0]["id"])
            with pytest.raises(redis_errors.ConnectionError):
                await blocked
            return await pipe.submit([("SET", key, "back"), ("GET", key)])

    assert _run(scenario) == [b"OK", b"back"]


def test_a_server_that_never_answers_fails_its_callers_with_a_timeout():
    async def scenario():
        async def silent(reader, writer):
            await reader.read(1 << 16)
            await asyncio.sleep(30)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pipe = autopipe.AutoPipeline(address=("127.0.0.1", port), reply_timeout_s=0.3)
        try:
            with pytest.raises(redis_errors.TimeoutError):
                await pipe.submit([("PING",)])
        finally:
            server.close()

    _run(scenario)


def test_nothing_listening_fails_the_callers_with_a_connection_error_and_sends_nothing_later():
    async def scenario():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        pipe = autopipe.AutoPipeline(address=("127.0.0.1", port))
        with pytest.raises(redis_errors.ConnectionError):
            await pipe.submit([("PING",)])
        assert pipe._queued == []

    _run(scenario)


def test_a_caller_that_leaves_after_the_write_hands_its_replies_to_its_orphan_callback():
    key = _key()
    orphaned: list[list[object]] = []

    async def scenario():
        async with _redis(key) as client:
            pipe = autopipe.pipe_for(client)
            await pipe.submit([("PING",)])
            leaving = asyncio.ensure_future(pipe.submit([("INCR", key)], orphan=orphaned.append))
            await asyncio.sleep(0)
            while not pipe._connection.waiting:
                await asyncio.sleep(0)
            leaving.cancel()
            await pipe.submit([("PING",)])  # read after the INCR's reply
            return int(await client.get(key))

    assert _run(scenario) == 1
    assert orphaned == [[1]]


def test_credentials_and_the_database_of_the_url_are_used(tmp_path):
    """A password-protected server, database 5: AUTH and SELECT go first."""
    import shutil
    import subprocess

    from tests.test_redis_cluster import _cli, _free_port, _wait

    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is needed")
    port = _free_port()
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--requirepass", "s3cret", "--dir", str(tmp_path)]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(lambda: "NOAUTH" in _cli(port, "get", "x"), timeout=20, what="redis-server")

        async def scenario():
            good = redis_client.connect_async(f"redis://:s3cret@127.0.0.1:{port}/5")
            bad = redis_client.connect_async(f"redis://:wrong@127.0.0.1:{port}/5")
            try:
                await autopipe.pipe_for(good).submit([("SET", "k", "alice")])
                stored = await good.get("k"), await good.client_info()
                with pytest.raises(redis_errors.ConnectionError, match="refused"):
                    await autopipe.pipe_for(bad).submit([("GET", "k")])
                return stored
            finally:
                await good.aclose()
                await bad.aclose()

        value, info = _run(scenario)
        assert value == b"alice"
        assert info["db"] == 5
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_client_pipe_batches_a_turn_into_one_redis_py_pipeline():
    key = _key()

    async def scenario():
        async with _redis(key) as client:
            pipe = autopipe.ClientPipe(client)
            replies = await asyncio.gather(
                *(pipe.submit([("INCR", key)]) for _ in range(5)),
                pipe.submit([("EVALSHA", "0" * 40, 0)]),
            )
            return replies

    replies = _run(scenario)
    assert replies[:5] == [[1], [2], [3], [4], [5]]
    assert isinstance(replies[5][0], redis_errors.NoScriptError)


def test_it_runs_on_uvloop_as_the_gateway_does():
    import uvloop

    key = _key()

    async def scenario():
        async with _redis(key) as client:
            pipe = autopipe.pipe_for(client)
            return await asyncio.gather(*(pipe.submit([("INCR", key)]) for _ in range(3)))

    assert uvloop.run(scenario()) == [[1], [2], [3]]
