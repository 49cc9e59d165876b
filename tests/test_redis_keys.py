"""Every Redis script and MULTI keeps its keys in one Cluster slot, and the URL says
which Redis to build.

Redis Cluster refuses a script or a transaction whose keys hash to different slots
(CROSSSLOT), so each key family the gateway and the control plane run atomically is
built here with the real key-building functions and hashed with redis-py's own
`key_slot`. `tests/test_redis_cluster.py` runs the same calls on a real cluster.
"""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from accounts import redis_client
from backends import health, livestate
from billing import limits

ALICE_ORG, BOB_ORG = 1, 2  # alice's org and bob's: their keys land on different slots
ALICE_KEY, BOB_KEY = 11, 22


def slots(keys: tuple[str, ...] | list[str]) -> set[int]:
    return {key_slot(k.encode()) for k in keys}


def script_calls() -> dict[str, list[str]]:
    """Every multi-key atomic call, by name: the keys of one call."""
    return {
        "admission and settlement, alice's org, her key": list(
            limits.redis_keys(org_id=ALICE_ORG, key_id=ALICE_KEY, month="2026-11")
        ),
        "admission and settlement, bob's org, no key": list(
            limits.redis_keys(org_id=BOB_ORG, key_id=None, month="2026-12")
        ),
        "health transition of one deployment": list(health.script_keys("llama-70b-westeurope")),
        "health transition of another": list(health.script_keys("qwen-7b-eastus")),
        "a live record merged": [livestate.DEPLOYMENTS],
        "a gateway's in-flight counts replaced (MULTI)": [
            livestate.inflight_key("gw-1:1234"),
            livestate.INFLIGHT_REGISTRY,
        ],
    }


@pytest.mark.parametrize("name", list(script_calls()))
def test_the_keys_of_each_script_call_share_one_cluster_slot(name: str) -> None:
    keys = script_calls()[name]
    assert len(slots(keys)) == 1, f"{name}: {keys} span slots {slots(keys)}"


def test_alices_and_bobs_counters_land_on_different_slots_so_orgs_spread_over_shards() -> None:
    alice = limits.redis_keys(org_id=ALICE_ORG, key_id=ALICE_KEY, month="2026-11")
    bob = limits.redis_keys(org_id=BOB_ORG, key_id=BOB_KEY, month="2026-11")
    assert slots(alice) != slots(bob)


def test_a_months_budget_keys_stay_with_the_orgs_rate_windows() -> None:
    november = limits.redis_keys(org_id=ALICE_ORG, key_id=ALICE_KEY, month="2026-11")
    december = limits.redis_keys(org_id=ALICE_ORG, key_id=None, month="2026-12")
    assert slots(november) == slots(december)


def test_a_url_names_a_server_a_sentinel_or_a_cluster() -> None:
    assert redis_client.kind("redis://127.0.0.1:6379/0") == "server"
    assert redis_client.kind("unix:///run/redis.sock?db=1") == "server"
    assert redis_client.kind("redis+sentinel://s1:26379,s2:26379/mymaster/2") == "sentinel"
    assert redis_client.kind("redis+cluster://n1:7000,n2:7001") == "cluster"


def test_a_single_server_url_builds_the_same_client_as_from_url() -> None:
    import redis

    client = redis_client.connect("redis://:sekrit@10.0.0.9:6380/3", socket_timeout=1)
    expected = redis.Redis.from_url("redis://:sekrit@10.0.0.9:6380/3", socket_timeout=1)
    kwargs = client.connection_pool.connection_kwargs
    plain = (str, int, float, bool, type(None))
    assert {k: v for k, v in kwargs.items() if isinstance(v, plain)} == {
        k: v for k, v in expected.connection_pool.connection_kwargs.items() if isinstance(v, plain)
    }
    assert type(client.connection_pool) is type(expected.connection_pool)
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
        "10.0.0.9",
        6380,
        3,
        "sekrit",
    )
    assert kwargs["socket_timeout"] == 1


def test_a_sentinel_url_asks_its_sentinels_for_the_named_master_and_db() -> None:
    client = redis_client.connect(
        "redis+sentinel://:sekrit@s1:26379,s2:26380/mymaster/2?sentinel_password=watch",
        socket_timeout=1,
    )
    pool = client.connection_pool
    assert pool.service_name == "mymaster"
    sentinels = pool.sentinel_manager.sentinels
    addresses = [s.connection_pool.connection_kwargs for s in sentinels]
    assert [(a["host"], a["port"]) for a in addresses] == [("s1", 26379), ("s2", 26380)]
    assert addresses[0]["password"] == "watch"
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"], kwargs["socket_timeout"]) == (2, "sekrit", 1)


def test_an_async_sentinel_url_builds_an_asyncio_client() -> None:
    import redis.asyncio

    client = redis_client.connect_async("redis+sentinel://s1:26379/mymaster")
    assert isinstance(client, redis.asyncio.Redis)
    assert client.connection_pool.service_name == "mymaster"


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://s1:26379",  # no service name
        "redis+sentinel://s1:26379/mymaster/zero",
        "redis+cluster://n1",  # no port
        "redis+cluster://n1:7000/3",  # Cluster has only db 0
    ],
)
def test_a_malformed_sentinel_or_cluster_url_is_refused_with_a_clear_error(url: str) -> None:
    with pytest.raises(ValueError, match=r"n1|s1"):
        redis_client.connect(url)


def test_an_unreachable_cluster_is_a_connection_error_like_an_unreachable_server() -> None:
    import redis

    with pytest.raises(redis.ConnectionError, match=r"127\.0\.0\.1:1"):
        redis_client.connect("redis+cluster://127.0.0.1:1", socket_connect_timeout=1)


def test_celery_and_channels_take_a_single_server_url_as_it_is() -> None:
    url = "redis://:sekrit@10.0.0.9:6380/3"
    assert redis_client.celery_broker(url) == (url, {})
    assert redis_client.channels_host(url) == url


def test_celery_and_channels_reach_sentinels_master_in_their_own_forms() -> None:
    url = "redis+sentinel://:sekrit@s1:26379,s2:26380/mymaster/2?sentinel_password=watch"
    broker, options = redis_client.celery_broker(url)
    assert broker == "sentinel://:sekrit@s1:26379/2;sentinel://:sekrit@s2:26380/2"
    assert options == {"master_name": "mymaster", "sentinel_kwargs": {"password": "watch"}}
    assert redis_client.channels_host(url) == {
        "sentinels": [("s1", 26379), ("s2", 26380)],
        "master_name": "mymaster",
        "db": 2,
        "password": "sekrit",
        "sentinel_kwargs": {"password": "watch"},
    }


def test_celery_and_channels_refuse_a_cluster_url_saying_what_to_do() -> None:
    with pytest.raises(ValueError, match="REDIS_BROKER_URL"):
        redis_client.celery_broker("redis+cluster://n1:7000")
    with pytest.raises(ValueError, match="REDIS_BROKER_URL"):
        redis_client.channels_host("redis+cluster://n1:7000")


def test_the_gateway_takes_an_unreachable_cluster_for_redis_down_as_it_does_one_server() -> None:
    """Not a 500: the same answer as a lost single server (`metering_unavailable`)."""
    import asyncio

    from routing.gateway import core

    async def admit() -> None:
        client = redis_client.connect_async("redis+cluster://127.0.0.1:1")
        try:
            await client.get("tesseract:rl:{org:1}:org")
        finally:
            await client.aclose()

    with pytest.raises(core._REDIS_DOWN):
        asyncio.run(admit())
