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
redis-py. Pub/sub works as on one server: the cluster client subscribes through one
node (redis-py 8's `ClusterPubSub`, sync and asyncio), and a classic PUBLISH reaches
every node of the cluster. What does not run on Cluster is outside this module:
Celery's broker (kombu has no Cluster transport) and Channels' layer need a single
server or Sentinel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

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
    single = redis.asyncio.Redis if aio else redis.Redis
    return single.from_url(url, **options)


def queue_evalsha(pipe: Any, sha: str, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queue EVALSHA on a pipeline, one server's or a cluster's.

    redis-py's cluster pipeline blocks its `evalsha` method (it cannot know in general
    that a script's keys share a slot) but routes the raw command by its keys, which
    ours always do (one hash tag per script call). On one server this is exactly what
    `Pipeline.evalsha` sends."""
    pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)


async def pubsub_async(client: Any, **options: Any) -> Any:
    """`client.pubsub()` for an asyncio client, ready to subscribe.

    redis-py's asyncio cluster client picks its pub/sub node from the slot map, which it
    loads only on its first command: a subscription made first fails (KeyError on an
    empty map), so it is told to load the map here. On one server (or Sentinel's master)
    `initialize` does nothing."""
    await client.initialize()
    return client.pubsub(**options)
