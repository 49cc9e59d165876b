"""Tesseract's shared counters on a real Redis Cluster, built from a `redis+cluster://` URL.

A three-master cluster is started for this module (three `redis-server` processes in
cluster mode, joined with `redis-cli --cluster create`) and torn down after. Through it
run, unchanged: admission and settlement of rate limits and budgets for alice's org and
bob's (their keys hash to different slots, so their scripts run on different masters,
and concurrent admissions of both leave in one pipeline that redis-py splits per
node), the usage stream's publish with its settlement in the same round trip, the
gateways' in-flight counts, the health state machine, and pub/sub.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from redis.crc import key_slot

from accounts import keycache, redis_client
from backends import health, livestate
from backends.signals import WORLD_CHANNEL
from billing import limits, metering
from tesseract_web.run import stop_processes

ALICE_ORG, BOB_ORG = 1, 2
ALICE_KEY, BOB_KEY = 11, 22
MONTH = "2026-11"


def _free_port() -> int:
    """A port free for the node and for its cluster bus (the port + 10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait(condition, *, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if condition():
                return
        time.sleep(0.1)
    raise TimeoutError(f"gave up waiting for {what}")


REDIS_SERVER, REDIS_CLI = shutil.which("redis-server"), shutil.which("redis-cli")


def _cli(port: int, *args: str) -> str:
    assert REDIS_CLI is not None
    out = subprocess.run(
        [REDIS_CLI, "-p", str(port), *args], capture_output=True, text=True, timeout=30
    )
    return out.stdout


def _server_command(port: int, workdir: Path) -> list[str]:
    assert REDIS_SERVER is not None
    return [
        REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
        "--cluster-config-file", str(workdir / f"nodes-{port}.conf"), "--dir", str(workdir),
        "--save", "", "--appendonly", "no", "--daemonize", "no",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`redis+cluster://` of a fresh three-master cluster on this machine."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server and redis-cli are needed to start a Redis Cluster")
    workdir: Path = tmp_path_factory.mktemp("redis-cluster")
    ports = [_free_port() for _ in range(3)]
    servers = []
    try:
        for port in ports:
            server = subprocess.Popen(
                _server_command(port, workdir),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            servers.append(server)
        for port, server in zip(ports, servers, strict=True):
            _wait(lambda p=port: _cli(p, "ping").strip() == "PONG", timeout=20, what="PONG")
            if server.poll() is not None:
                log = server.stdout.read() if server.stdout else ""
                if "cluster" in log.lower():
                    pytest.skip(f"this redis-server has no cluster support: {log[-300:]}")
                raise RuntimeError(f"redis-server on {port} exited: {log[-500:]}")
        nodes = [f"127.0.0.1:{p}" for p in ports]
        create = [REDIS_CLI, "--cluster", "create", *nodes, "--cluster-replicas", "0"]
        created = subprocess.run(
            [*create, "--cluster-yes"], capture_output=True, text=True, timeout=60
        )
        assert created.returncode == 0, created.stdout + created.stderr
        for port in ports:
            _wait(
                lambda p=port: "cluster_state:ok" in _cli(p, "cluster", "info"),
                timeout=30,
                what=f"cluster_state:ok on {port}",
            )
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:2])
    finally:
        stop_processes(servers, timeout_s=10)


def ports_of(url: str) -> list[int]:
    """Every master's port (the URL names only some: the client discovers the rest)."""
    client = redis_client.connect(url)
    ports = [node.port for node in client.get_primaries()]
    client.close()
    return ports


def _keys(org_id: int, key_id: int) -> tuple[str, str, str, str]:
    return limits.redis_keys(org_id=org_id, key_id=key_id, month=MONTH)


def test_alices_and_bobs_keys_live_on_different_masters(cluster_url: str) -> None:
    client = redis_client.connect(cluster_url)
    alice, bob = _keys(ALICE_ORG, ALICE_KEY), _keys(BOB_ORG, BOB_KEY)
    owner = {
        name: client.nodes_manager.get_node_from_slot(key_slot(keys[0].encode())).name
        for name, keys in (("alice", alice), ("bob", bob))
    }
    assert owner["alice"] != owner["bob"], "pick org ids whose slots sit on different masters"
    client.close()


def test_limits_and_budgets_admit_and_settle_exactly_for_two_orgs_on_a_cluster(
    cluster_url: str,
) -> None:
    lim = limits.Limits("test", 5, None, None, None, Decimal("1.00"), None, Decimal(0))
    reserve = limits.to_nano(Decimal("0.10"))

    async def scenario() -> None:
        client = redis_client.connect_async(cluster_url)
        scripts = limits.Scripts(client)
        alice, bob = _keys(ALICE_ORG, ALICE_KEY), _keys(BOB_ORG, BOB_KEY)
        for keys in (alice, bob):
            first = await limits.admit(scripts, keys, lim, tokens=10, reserve_nano=reserve)
            assert first.status == limits.SEED_ORG  # no counter yet: the gateway seeds it
            await limits.seed(client, keys, org_nano=0, key_nano=0)
        # Both orgs at once: the queued admissions leave together in one pipeline,
        # which the cluster client splits between alice's master and bob's.
        verdicts = await asyncio.gather(
            *(
                limits.admit(scripts, keys, lim, tokens=10, reserve_nano=reserve)
                for keys in (alice, bob)
                for _ in range(8)
            )
        )
        by_org = {"alice": verdicts[:8], "bob": verdicts[8:]}
        for name, vs in by_org.items():
            if any(v.window != vs[0].window for v in vs):
                pytest.skip("the minute turned during the burst")
            statuses = [v.status for v in vs]
            assert statuses.count(limits.OK) == 5, (name, statuses)  # 5 requests a minute
            assert statuses.count(limits.RPM_ORG) == 3, (name, statuses)
        assert int(await client.get(alice[2])) == 5 * reserve
        assert int(await client.get(bob[2])) == 5 * reserve

        # Settlement: alice's request cost 0.04 of its 0.10 reservation.
        ok = next(v for v in by_org["alice"] if v.status == limits.OK)
        args = limits.settle_args(
            ok,
            reserved_tokens=10,
            actual_tokens=4,
            reserve_nano=reserve,
            actual_nano=limits.to_nano(Decimal("0.04")),
        )
        await scripts.settle(keys=alice, args=args)
        assert int(await client.get(alice[2])) == 4 * reserve + limits.to_nano(Decimal("0.04"))
        assert int(await client.get(bob[2])) == 5 * reserve  # bob's untouched
        assert int(await client.hget(alice[0], "t")) == 5 * 10 - 6

        # Every master forgets its scripts (restarted, or flushed): queued admissions
        # answered NOSCRIPT are loaded and sent again, on whichever master they belong.
        for port in ports_of(cluster_url):
            _cli(port, "script", "flush")
        again = await asyncio.gather(
            *(
                limits.admit(scripts, keys, lim, tokens=10, reserve_nano=0)
                for keys in (alice, bob)
                for _ in range(3)
            )
        )
        if any(v.window != verdicts[0].window for v in again):
            pytest.skip("the minute turned between the bursts")
        assert {v.status for v in again} == {limits.RPM_ORG}  # they ran: the minute is full
        await client.aclose()

    asyncio.run(scenario())


def test_the_usage_stream_takes_a_record_and_its_settlement_in_one_round_trip_on_a_cluster(
    cluster_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metering, "STREAM", "test:usage:cluster")
    lim = limits.Limits("test", None, None, None, None, Decimal("1.00"), None, Decimal(0))
    reserve = limits.to_nano(Decimal("0.10"))
    keys = limits.redis_keys(org_id=BOB_ORG, key_id=BOB_KEY, month="2026-12")

    async def scenario() -> None:
        client = redis_client.connect_async(cluster_url)
        scripts = limits.Scripts(client)
        await limits.seed(client, keys, org_nano=0, key_nano=0)
        verdict = await limits.admit(scripts, keys, lim, tokens=10, reserve_nano=reserve)
        assert verdict.status == limits.OK
        publisher = metering.Publisher(client, spool=metering.Spool(tmp_path / "spool"))
        record = metering.UsageRecord(
            request_id="req-bob-1", org_id=BOB_ORG, api_key_id=BOB_KEY,
            created_at=time.time(), endpoint="chat", model="llama", served_model="llama",
            deployment="d", region="westeurope", cluster="c", chip="h100", stream=False,
            status="ok", input_tokens=3, output_tokens=2, usage_source="backend",
            cost_usd="0.01",
        )  # fmt: skip
        settle = (
            scripts.settle,
            keys,
            limits.settle_args(
                verdict,
                reserved_tokens=10,
                actual_tokens=5,
                reserve_nano=reserve,
                actual_nano=limits.to_nano(Decimal("0.01")),
            ),
        )
        await publisher.publish(record, settle=settle)
        assert publisher.available, "the record went to the spool: Redis refused it"
        entries = await client.xrange(metering.STREAM)
        assert [metering.decode(e[1][b"r"]).request_id for e in entries] == ["req-bob-1"]
        assert int(await client.get(keys[2])) == limits.to_nano(Decimal("0.01"))
        await client.delete(metering.STREAM)
        await client.aclose()

    asyncio.run(scenario())


def test_in_flight_counts_of_many_gateways_add_up_on_a_cluster(cluster_url: str) -> None:
    async def publish() -> None:
        client = redis_client.connect_async(cluster_url)
        await livestate.ainflight_publish(client, "gw-a:1", {"alpha": 2, "beta": 1})
        await livestate.ainflight_publish(client, "gw-b:7", {"alpha": 3})
        await livestate.ainflight_publish(client, "gw-c:9", {"beta": 4})
        await livestate.ainflight_publish(client, "gw-c:9", {})  # it finished everything
        maps = await livestate.aread(client)
        assert maps.inflight == {"alpha": 5, "beta": 1}
        assert maps.gateways == 2  # the processes with requests in flight
        assert await livestate.aread_inflight(client) == {
            "gw-a:1": {"alpha": 2, "beta": 1},
            "gw-b:7": {"alpha": 3},
        }
        await client.aclose()

    asyncio.run(publish())
    sync = redis_client.connect(cluster_url)  # the console and Celery read it too
    assert livestate.read(sync).inflight == {"alpha": 5, "beta": 1}
    sync.close()


def test_the_health_state_machine_and_live_records_run_on_a_cluster(cluster_url: str) -> None:
    client = redis_client.connect(cluster_url)
    slug = "llama-70b-westeurope"
    states = [
        health.observe(client, slug, health.FAIL, source="active", reason="refused")
        for _ in range(health.DOWN_AFTER)
    ]
    assert states[-1] == ("healthy", "down")
    assert livestate.deployment_update(client, slug, running=3, announce=False)
    maps = livestate.read(client)
    assert maps.deployments[slug].health == "down"
    assert maps.deployments[slug].running == 3
    client.close()


def test_pub_sub_reaches_a_subscriber_on_another_node_of_the_cluster(cluster_url: str) -> None:
    """Redis Cluster forwards a PUBLISH to every node: the gateway's listener (asyncio,
    two channels) hears what a Celery task publishes, wherever each is connected."""

    async def listen() -> list[bytes]:
        subscriber = redis_client.connect_async(cluster_url)
        publisher = redis_client.connect(cluster_url)
        heard: list[bytes] = []
        async with await redis_client.pubsub_async(subscriber) as pubsub:
            await pubsub.subscribe(WORLD_CHANNEL.encode(), livestate.CHANNEL.encode())
            confirmed = 0
            deadline = time.monotonic() + 10
            while confirmed < 2 and time.monotonic() < deadline:
                message = await pubsub.get_message(timeout=0.5)
                confirmed += message is not None and message["type"] == "subscribe"
            publisher.publish(WORLD_CHANNEL, b"changed")
            livestate.announce_change(publisher, "rtt", ["a|b"])
            while len(heard) < 2 and time.monotonic() < deadline:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if message is not None:
                    heard.append(message["channel"])
        await subscriber.aclose()
        publisher.close()
        return heard

    channels = sorted([livestate.CHANNEL.encode(), WORLD_CHANNEL.encode()])
    assert sorted(asyncio.run(listen())) == channels


def test_a_revoked_key_leaves_the_key_cache_of_a_process_listening_on_a_cluster(
    cluster_url: str,
) -> None:
    """The key cache's listener (a thread, the synchronous cluster client's pub/sub)."""
    cache = keycache.KeyCache(loader=lambda lookup: None)
    cache._entries["tsk_alice01"] = (None, time.monotonic() + 3600)
    listener = keycache.Listener(cache, cluster_url)
    listener.start()
    try:
        assert listener.subscribed.wait(10)
        cache._entries["tsk_alice01"] = (None, time.monotonic() + 3600)  # after its clear()
        publisher = redis_client.connect(cluster_url)
        deadline = time.monotonic() + 10
        while "tsk_alice01" in cache._entries and time.monotonic() < deadline:
            publisher.publish(keycache.CHANNEL, "tsk_alice01")
            time.sleep(0.2)
        publisher.close()
        assert "tsk_alice01" not in cache._entries
    finally:
        listener.stop()
        listener.join(5)


def test_the_drain_stores_each_record_once_from_a_stream_on_a_cluster(
    cluster_url: str, acme, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The billing worker's side: consumer group, claim, acknowledge, trim."""
    from billing.models import UsageEvent
    from billing.services import usage_events_drain
    from tests.billing.test_usage_metering import record

    monkeypatch.setattr(metering, "STREAM", "test:usage:drain")
    client = redis_client.connect(cluster_url)
    try:

        async def publish() -> None:
            aclient = redis_client.connect_async(cluster_url)
            for n in range(3):
                await metering.publish(aclient, record(acme, f"req-alice-{n}"))
            await metering.publish(aclient, record(acme, "req-alice-0"))  # a replay
            await aclient.aclose()

        asyncio.run(publish())
        assert usage_events_drain(client=client, claim_idle_ms=0) == 4  # the replay too
        assert usage_events_drain(client=client, claim_idle_ms=0) == 0
        assert UsageEvent.objects.filter(org=acme).count() == 3
        assert client.xlen(metering.STREAM) == 0  # stored, so trimmed (`metering.trim`)
    finally:
        client.delete(metering.STREAM)
        client.close()
