"""`redis+sentinel://` against a real Sentinel: a master and one Sentinel watching it,
started for this module. The clients, sync and asyncio, find the master through the
Sentinel and run the limits script and pub/sub on it; Celery's broker URL is kombu's
own Sentinel form."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from accounts import redis_client
from billing import limits
from tests.test_redis_cluster import _cli, _free_port, _wait

REDIS_SERVER = shutil.which("redis-server")


@pytest.fixture(scope="module")
def sentinel_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if REDIS_SERVER is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed to start a Sentinel")
    workdir: Path = tmp_path_factory.mktemp("redis-sentinel")
    master_port, sentinel_port = _free_port(), _free_port()
    config = workdir / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor tesseract 127.0.0.1 {master_port} 1\n"
    )
    master_cmd = [REDIS_SERVER, "--port", str(master_port), "--bind", "127.0.0.1",
                  "--save", "", "--appendonly", "no", "--dir", str(workdir)]  # fmt: skip
    processes = [
        subprocess.Popen(master_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(
            [REDIS_SERVER, str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        _wait(lambda: _cli(master_port, "ping").strip() == "PONG", timeout=20, what="master")
        _wait(
            lambda: (
                str(master_port)
                in _cli(sentinel_port, "sentinel", "get-master-addr-by-name", "tesseract")
            ),
            timeout=20,
            what="the Sentinel to know its master",
        )
        yield f"redis+sentinel://127.0.0.1:{sentinel_port}/tesseract/3"
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


def test_the_sync_client_finds_the_master_and_its_db_through_the_sentinel(sentinel_url):
    client = redis_client.connect(sentinel_url, socket_timeout=2)
    client.set("tesseract:test:sentinel", "alice")
    assert client.get("tesseract:test:sentinel") == b"alice"
    assert client.connection_pool.get_master_address()[0] == "127.0.0.1"
    assert client.client_info()["db"] == 3
    client.close()


def test_admission_and_pub_sub_run_on_the_master_with_the_asyncio_client(sentinel_url):
    lim = limits.Limits("test", 2, None, None, None, Decimal("1.00"), None, Decimal(0))
    keys = limits.redis_keys(org_id=1, key_id=11, month="2026-11")

    async def scenario() -> None:
        client = redis_client.connect_async(sentinel_url, retry_on_error=[RedisConnectionError])
        scripts = limits.Scripts(client)
        await limits.seed(client, keys, org_nano=0, key_nano=0)
        verdicts = await asyncio.gather(
            *(limits.admit(scripts, keys, lim, tokens=1, reserve_nano=5) for _ in range(3))
        )
        if len({v.window for v in verdicts}) == 1:
            assert sorted(v.status for v in verdicts) == [limits.OK, limits.OK, limits.RPM_ORG]
        async with await redis_client.pubsub_async(client) as pubsub:
            await pubsub.subscribe("tesseract:live")
            await pubsub.get_message(timeout=2)  # the subscription's confirmation
            await client.publish("tesseract:live", b"hello")
            message = None
            for _ in range(20):
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if message:
                    break
            assert message is not None
            assert message["data"] == b"hello"
        await client.aclose()

    asyncio.run(scenario())


def test_celerys_broker_reaches_the_master_through_kombus_sentinel_transport(sentinel_url):
    from kombu import Connection

    broker, options = redis_client.celery_broker(sentinel_url)
    with Connection(broker, transport_options=options) as connection:
        queue = connection.SimpleQueue("tesseract-test-sentinel")
        queue.put({"for": "bob"})
        assert queue.get(timeout=5).payload == {"for": "bob"}
        queue.close()
