"""Redis clients from `REDIS_URL`: one server, Sentinel, or Cluster, sync and asyncio.

Every process builds its clients here, so the URL alone says what kind of Redis
Tesseract talks to (the module sits in `accounts`, the lowest layer that may import
redis, so that every app above can use it):

  redis://[user:password@]host:port/db       one server (also rediss:// for TLS, and
  unix:///path/to/redis.sock?db=0)           unix://; exactly `Redis.from_url`)
  redis+sentinel://[user:password@]host:port[,host:port…]/service_name[/db]
                                             the master Sentinel names `service_name`,
                                             found again after a failover
                                             (rediss+sentinel:// for TLS to the master)
  redis+cluster://[user:password@]host:port[,host:port…]
                                             Redis Cluster, discovered from any of the
                                             nodes given (rediss+cluster:// for TLS)

Options a caller passes (`socket_timeout`, `retry_on_error`, `socket_keepalive`, …)
apply to the connections to the data nodes in every form. A Sentinel URL may carry
`?sentinel_password=…` for Sentinels that require their own password.

**What works on Cluster.** Every script and MULTI Tesseract runs keeps its keys in one
slot (hash tags: `{org:N}` for limits and budgets, `{health}` for the health state
machine; the rest are single-key), which `tests/test_redis_cluster.py` checks against
a real three-master cluster. Pipelines without a transaction are split per node by
redis-py (the hot path's, `accounts.autopipe.ClientPipe`, queues EVALSHA raw: redis-py's
cluster pipeline blocks its `evalsha` method but routes the raw command by its keys,
which ours always keep in one slot). Pub/sub works as on one
server: redis-py 8's cluster clients, sync and asyncio, subscribe through one node
(chosen by the channel's slot), and a classic PUBLISH reaches every node of the
cluster; the asyncio client must load its slot map first (`pubsub_async`). Celery's
broker and Channels' layer do not run on Cluster (kombu and channels_redis have no
Cluster support): `celery_broker` and `channels_host` translate a single server or
Sentinel URL for them and refuse a Cluster one (settings: `REDIS_BROKER_URL`).
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

#: An asyncio client's pool of one server: a burst of commands past its size waits
#: (up to `timeout` s) for a connection to come back. redis-py's default pool raises
#: "Too many connections" instead, a ConnectionError the gateway would take for Redis
#: being down (seen once in `make run`: 124 requests at once on a fresh Redis refused
#: every tenant for a moment). The hot path's commands share one connection anyway
#: (`accounts.autopipe`); the pool serves the rest.
POOL = {"max_connections": 100, "timeout": 10.0}
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}


def kind(url: str) -> str:
    """ "server", "sentinel" or "cluster", from the URL's scheme."""
    scheme = urlsplit(url).scheme
    if scheme in SENTINEL_SCHEMES:
        return "sentinel"
    if scheme in CLUSTER_SCHEMES:
        return "cluster"
    return "server"


def _nodes(netloc: str, url: str) -> list[tuple[str, int]]:
    hosts = netloc.rpartition("@")[2]
    nodes = []
    for part in hosts.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{_safe(url)}: every node must be host:port, got {part!r}")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


def _credentials(netloc: str) -> dict[str, str]:
    userinfo, at, _ = netloc.rpartition("@")
    if not at:
        return {}
    username, colon, password = userinfo.partition(":")
    out = {}
    if colon:
        out["password"] = unquote(password)
        if username:
            out["username"] = unquote(username)
    elif username:  # redis://secret@host: the password alone, as redis-py reads it
        out["password"] = unquote(username)
    return out


def _safe(url: str) -> str:
    """The URL without its credentials, for error messages."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _sentinel_target(url: str) -> tuple[list[tuple[str, int]], str, int, dict[str, Any]]:
    parts = urlsplit(url)
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"{_safe(url)}: a Sentinel URL ends in /service_name or /service_name/db")
    db = int(path[1]) if len(path) == 2 else 0
    query = parse_qs(parts.query)
    sentinel_kwargs: dict[str, Any] = {}
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"][0]
    return _nodes(parts.netloc, url), path[0], db, sentinel_kwargs


def _node_options(url: str, options: dict[str, Any], tls: bool) -> dict[str, Any]:
    return {**_credentials(urlsplit(url).netloc), **({"ssl": True} if tls else {}), **options}


def _cluster_nodes(url: str) -> list[tuple[str, int]]:
    parts = urlsplit(url)
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError(f"{_safe(url)}: Redis Cluster has only database 0")
    return _nodes(parts.netloc, url)


def connect(url: str, **options: Any) -> Any:
    """A `redis.Redis` (one server, or Sentinel's master) or a `redis.cluster.RedisCluster`."""
    return _build(url, options, aio=False)


def connect_async(url: str, **options: Any) -> Any:
    """`connect` for asyncio: a `redis.asyncio.Redis` or a `redis.asyncio.cluster.RedisCluster`."""
    return _build(url, options, aio=True)


def _build(url: str, options: dict[str, Any], *, aio: bool) -> Any:
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.asyncio.sentinel
    import redis.cluster
    import redis.sentinel

    scheme = urlsplit(url).scheme
    if scheme in SENTINEL_SCHEMES:
        sentinel_cls = redis.asyncio.sentinel.Sentinel if aio else redis.sentinel.Sentinel
        nodes, service, db, sentinel_kwargs = _sentinel_target(url)
        sentinel = sentinel_cls(nodes, sentinel_kwargs=sentinel_kwargs or None)
        master = _node_options(url, options, SENTINEL_SCHEMES[scheme])
        return sentinel.master_for(service, db=db, **master)
    if scheme in CLUSTER_SCHEMES:
        cluster = redis.asyncio.cluster if aio else redis.cluster
        startup = [cluster.ClusterNode(host, port) for host, port in _cluster_nodes(url)]
        master = _node_options(url, options, CLUSTER_SCHEMES[scheme])
        try:
            return cluster.RedisCluster(startup_nodes=startup, **master)
        except redis.exceptions.RedisClusterException as exc:
            # The sync client connects as it is built; unreachable, it raises an error
            # that is not a RedisError. Callers handle an unreachable Redis as a
            # ConnectionError, whatever its kind.
            raise redis.exceptions.ConnectionError(str(exc)) from exc
    if aio:
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, **{**POOL, **_c_packing(scheme), **options}
        )
        return redis.asyncio.Redis.from_pool(pool)
    return redis.Redis.from_url(url, **options)


def _c_packing(scheme: str) -> dict[str, Any]:
    """For an asyncio client of one `redis://` server: connections that pack commands
    with hiredis's C packer, as redis-py's sync connections already do when hiredis is
    installed (its asyncio ones pack in Python). Same bytes on the wire; the gateway
    packs two or three commands per request, and packing was most of their client CPU.
    (`rediss://` and `unix://` keep the connection class their URL implies.)"""
    from redis.utils import HIREDIS_AVAILABLE

    if scheme != "redis" or not HIREDIS_AVAILABLE:
        return {}
    return {"connection_class": _c_packing_connection()}


@functools.cache
def _c_packing_connection() -> type:
    from redis.asyncio.connection import Connection
    from redis.connection import HiredisRespSerializer

    packer = HiredisRespSerializer()

    class CPackingConnection(Connection):
        def pack_command(self, *args: Any) -> list[bytes]:
            return packer.pack(*args)

    return CPackingConnection


async def pubsub_async(client: Any, **options: Any) -> Any:
    """`client.pubsub()` for an asyncio client, ready to subscribe.

    redis-py's asyncio cluster client picks its pub/sub node from the slot map, which it
    loads only on its first command: a subscription made first fails (KeyError on an
    empty map), so it is told to load the map here. On one server (or Sentinel's master)
    `initialize` does nothing."""
    await client.initialize()
    return client.pubsub(**options)


# --------------------------------------------------------------------------- Celery, Channels


def _no_cluster(url: str, user: str) -> str:
    """The URL's scheme, unless it names a Cluster (refused, saying what to do)."""
    scheme = urlsplit(url).scheme
    if scheme in CLUSTER_SCHEMES:
        raise ValueError(
            f"{_safe(url)}: {user} cannot run on Redis Cluster;"
            " set REDIS_BROKER_URL to a single server or Sentinel"
        )
    return scheme


def celery_broker(url: str) -> tuple[str, dict[str, Any]]:
    """Celery's broker URL and transport options for a Redis URL.

    kombu reads one server's URL as is and Sentinel in its own form (`sentinel://` per
    Sentinel, `;`-separated, the master's name as a transport option). It has no
    Redis Cluster transport: a Cluster URL is refused, with what to do instead."""
    scheme = _no_cluster(url, "Celery's broker")
    if scheme not in SENTINEL_SCHEMES:
        return url, {}
    if SENTINEL_SCHEMES[scheme]:
        raise ValueError(
            f"{_safe(url)}: Celery's broker is not given TLS through Sentinel here;"
            " set REDIS_BROKER_URL to a rediss:// server or a plain redis+sentinel://"
        )
    nodes, service, db, sentinel_kwargs = _sentinel_target(url)
    userinfo, at, _ = urlsplit(url).netloc.rpartition("@")
    prefix = f"{userinfo}@" if at else ""
    broker = ";".join(f"sentinel://{prefix}{host}:{port}/{db}" for host, port in nodes)
    options: dict[str, Any] = {"master_name": service}
    if sentinel_kwargs:
        options["sentinel_kwargs"] = sentinel_kwargs
    return broker, options


def channels_host(url: str) -> Any:
    """One entry of channels_redis's `hosts` for a Redis URL (a URL, or Sentinel's dict).

    channels_redis has no Cluster support: a Cluster URL is refused."""
    scheme = _no_cluster(url, "Channels' layer")
    if scheme not in SENTINEL_SCHEMES:
        return url
    nodes, service, db, sentinel_kwargs = _sentinel_target(url)
    host: dict[str, Any] = {
        "sentinels": nodes,
        "master_name": service,
        "db": db,
        **_node_options(url, {}, SENTINEL_SCHEMES[scheme]),
    }
    if sentinel_kwargs:
        host["sentinel_kwargs"] = sentinel_kwargs
    return host
