"""The gateway's asyncio Redis client packs commands in C (hiredis), byte for byte as
redis-py's own Python packer would."""

import asyncio

import pytest
from django.conf import settings
from redis.asyncio.connection import Connection

from accounts.redis_client import connect_async

COMMANDS = [
    ("EVALSHA", "0123abcd" * 5, 3, "rl:{org:7}:rpm", "rl:{org:7}:tpm", "budget:{org:7}:2026-11",
     60, 1_000_000, 1764400000123, 250_000_000),
    ("XADD", "usage", "*", b"r", b'{"request_id":"req_1","model":"llama"}'),
    ("SET", "ünïcode", "värde", "EX", 30),
    ("CONFIG GET", "maxmemory"),
    ("HSET", "h", "f", 1.5),
]  # fmt: skip


def test_a_plain_redis_url_gets_connections_that_pack_in_c():
    client = connect_async("redis://127.0.0.1:6379/0")
    assert client.connection_pool.connection_class.__name__ == "CPackingConnection"


@pytest.mark.parametrize("args", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_packed_commands_are_the_bytes_redis_py_would_send(args):
    fast_class = connect_async("redis://127.0.0.1:6379/0").connection_pool.connection_class
    fast, python = fast_class(), Connection()
    assert b"".join(fast.pack_command(*args)) == b"".join(python.pack_command(*args))


def test_a_pipeline_through_c_packing_connections_round_trips():
    async def go():
        client = connect_async(settings.REDIS_URL)
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.set("packing:test", "värde")
                pipe.get("packing:test")
                pipe.delete("packing:test")
                return await pipe.execute()
        finally:
            await client.aclose()

    assert asyncio.run(go()) == [True, "värde".encode(), 1]


def test_a_burst_of_more_commands_than_the_pool_has_connections_waits_its_turn():
    # redis-py's asyncio pool raises "Too many connections" past its size (100 by
    # default), which the gateway would take for Redis being down: 124 requests at
    # once, each loading a script Redis had lost, refused every tenant for a moment.
    # Ours waits for a connection to come back instead.
    async def go():
        client = connect_async(settings.REDIS_URL, max_connections=2)
        try:
            return await asyncio.gather(
                *(client.blpop([f"packing:empty:{n}"], timeout=0.05) for n in range(8))
            )
        finally:
            await client.aclose()

    assert asyncio.run(go()) == [None] * 8
