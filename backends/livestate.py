"""The live maps, in Redis: what every gateway process routes on, between catalog reads.

The control plane writes here (health checks, latency probes, metrics scrapes, and the
gateways themselves with what they observe); each gateway keeps a copy in memory and
re-reads it when told of a change on `CHANNEL`, or at the latest every
`TESSERACT_LIVE_REFRESH_S`. Nothing here is history: the console's time series and the
audit trail are rows in PostgreSQL (`HealthEvent`, `LatencyProbe`, …).

Keys
  tesseract:live:deployments  hash  deployment slug → DeploymentLive (JSON)
  tesseract:live:{health}     hash  deployment slug → healthy | degraded | down
                              (written only by `backends.health`, atomically: its
                              script's keys share the `{health}` hash tag, one slot
                              on Redis Cluster)
  tesseract:live:rtt          hash  "<src region>|<dst region>" → smoothed RTT, ms
  tesseract:live:{inflight}:<gateway process>   (`inflight_key`)
                              hash  deployment slug → requests that process has in flight
                              (rewritten a few times a second, expires if the process dies)
  tesseract:live:{inflight}   sorted set  gateway process → when it last shared its counts
                              (epoch seconds): readers look up the hashes here instead of
                              scanning the keyspace; one `{inflight}` slot on Redis
                              Cluster, so a process replaces its hash and its entry at once
  tesseract:live:cooling      hash  deployment slug → epoch seconds until which it rests
                              (the provider answered 429; `Retry-After`)
  tesseract:live:providers:rejected
                              hash  provider slug → why its credential was rejected
                              (`backends.providers`)
  tesseract:live              channel: a change happened (the message names what)

Synchronous functions take a `redis.Redis` (Celery tasks, the loader thread); the
gateway's hot path uses the `a*` variants with a `redis.asyncio.Redis`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

DEPLOYMENTS = "tesseract:live:deployments"
#: The hash tag of the health state machine's keys (`backends.health`): its script
#: writes this hash and its own counters atomically, so on Redis Cluster they must
#: live in one slot.
HEALTH_TAG = "{health}"
HEALTH = "tesseract:live:" + HEALTH_TAG
RTT = "tesseract:live:rtt"
INFLIGHT_REGISTRY = "tesseract:live:{inflight}"
INFLIGHT_PREFIX = INFLIGHT_REGISTRY + ":"
INFLIGHT_TTL_S = 3
#: A process gone quiet this long (seconds) leaves the registry at another's next
#: publication; its hash expired long before. (Readers skip an expired hash; the margin
#: is for the publishers' clocks, which need not agree.)
INFLIGHT_REGISTRY_KEEP_S = 60
#: How often a gateway process shares its in-flight counts and re-reads everyone's
#: (seconds): an 8B request holds its slot for about a quarter of a second.
INFLIGHT_PUBLISH_S = 0.25
CHANNEL = "tesseract:live"
COOLING = "tesseract:live:cooling"
REJECTED_PROVIDERS = "tesseract:live:providers:rejected"
#: a cooldown asked for longer than this is capped (a provider's typo must not park a
#: deployment for a day); the health checks still see it
MAX_COOLDOWN_S = 600.0


class DeploymentLive(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The resource map's view of one deployment. Absent fields: nothing observed yet."""

    #: backends.models.Health values; kept in its own hash by `backends.health` and
    #: merged in here by `read()` (do not write it with `deployment_update`)
    health: str = "healthy"
    #: EWMA of backend-side time to first token (queue and network excluded), ms
    observed_ttft_ms: float | None = None
    #: EWMA of per-request decode speed, tokens/s
    observed_decode_tps: float | None = None
    #: when a sample last moved the two above (epoch seconds; 0: before this field)
    observed_at: float = 0.0
    #: when the newest request folded into them ended (its record's `created_at`, epoch
    #: seconds, never past the fold's own clock; 0: unknown)
    sampled_at: float = 0.0
    #: from the backend's own metrics (vLLM: num_requests_running / waiting)
    running: int | None = None
    waiting: int | None = None
    #: the model is in accelerator memory (from the backend), None: as the catalog says
    loaded: bool | None = None
    updated_at: float = 0.0


def fold_weight(count: int, span_s: float | None, alpha: float, time_constant_s: float) -> float:
    """How far `count` new requests move a deployment's observed average (0 to 1).

    Each request weighs `alpha`: `count` of them, 1 - (1 - alpha)^count, as many EWMA
    steps would. The requests of a span of time weigh together no more than
    1 - exp(-span / time_constant), as a moving average over time would: a backend
    serving hundreds a second is averaged over about `time_constant`, not over its last
    few requests, whose scatter alone would swing the average by tens of percent.
    `span_s`: from the newest request folded before to the newest of these. When time
    says nothing — the first fold (None), or none of them newer than what was folded
    before (a gateway's spool replayed, a clock behind) — they weigh by count alone.
    `time_constant_s` 0 sets no bound in time.
    """
    weight = 1.0 - (1.0 - alpha) ** count
    if span_s is not None and span_s > 0 and time_constant_s > 0:
        weight = min(weight, 1.0 - math.exp(-span_s / time_constant_s))
    return weight


def fold(prior: float, mean: float, weight: float) -> float:
    """`prior` moved `weight` (0 to 1, `fold_weight`) of the way to `mean`, on the
    logarithm: prior × (mean / prior)^weight.

    Speeds are ratios and their scatter is multiplicative: one straggler — a first
    token 100 times late, which real backends do produce — would move an arithmetic
    average of a busy backend's second by a multiple and make it look slow to every
    gateway for that second; on the logarithm it moves it by a few percent, while a
    backend that slows for everyone moves as far as before. With `mean` the geometric
    mean of the samples (`backends.resources`) the average tracks the median, which is
    what the engine's predictions are (bench/README.md, "Stragglers"). A prior that is
    not positive (a profile's TTFT of 0) is no prior: `mean` is taken as it is.
    """
    if prior <= 0:
        return mean
    return prior * (mean / prior) ** weight


_encode = msgspec.json.encode
_decode = msgspec.json.Decoder(DeploymentLive).decode


def rtt_field(src: str, dst: str) -> str:
    return f"{src}|{dst}"


# --------------------------------------------------------------------------- writing


def deployment_get(client: Any, slug: str) -> DeploymentLive:
    raw = client.hget(DEPLOYMENTS, slug)
    return DeploymentLive() if raw is None else _decode(raw)


# KEYS: the deployments hash. ARGV: slug, JSON of the fields to set, now.
# Merges inside Redis, so writers of different fields (scrape, fold) never lose each
# other's updates. Returns 1 when a field changed.
_MERGE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local record = raw and cjson.decode(raw) or {}
local changed = 0
for name, value in pairs(cjson.decode(ARGV[2])) do
  if record[name] ~= value then changed = 1 end
  record[name] = value
end
record['updated_at'] = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
return changed
"""


def deployment_update(client: Any, slug: str, *, announce: bool = True, **changes: Any) -> bool:
    """Merge `changes` into a deployment's live record, atomically; True when one changed."""
    unknown = set(changes) - set(DeploymentLive.__struct_fields__) | {"health"} & set(changes)
    if unknown:
        raise ValueError(f"not live deployment fields: {sorted(unknown)}")
    changed = bool(client.eval(_MERGE, 1, DEPLOYMENTS, slug, _encode(changes), time.time()))
    if changed and announce:
        announce_change(client, "deployments", [slug])
    return changed


def rtt_set(client: Any, src: str, dst: str, ms: float, *, announce: bool = True) -> None:
    client.hset(RTT, rtt_field(src, dst), f"{ms:.3f}")
    if announce:
        announce_change(client, "rtt", [rtt_field(src, dst)])


def inflight_key(process: str) -> str:
    """One gateway process's in-flight counts (in the registry's slot: one MULTI)."""
    return INFLIGHT_PREFIX + process


async def ainflight_publish(
    client: Any, process: str, counts: Mapping[str, int], *, now: float | None = None
) -> None:
    """Replace this gateway process's in-flight counts (they expire if it dies)."""
    now = time.time() if now is None else now
    key = inflight_key(process)
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        if counts:
            pipe.hset(key, mapping=dict(counts))
            pipe.expire(key, INFLIGHT_TTL_S)
            pipe.zadd(INFLIGHT_REGISTRY, {process: now})
        else:
            pipe.zrem(INFLIGHT_REGISTRY, process)
        pipe.zremrangebyscore(INFLIGHT_REGISTRY, "-inf", now - INFLIGHT_REGISTRY_KEEP_S)
        await pipe.execute()


async def aread_inflight(client: Any) -> dict[str, dict[str, int]]:
    """Every gateway process's in-flight counts: process → deployment slug → requests."""
    processes = await client.zrange(INFLIGHT_REGISTRY, 0, -1)
    if not processes:
        return {}
    async with client.pipeline(transaction=False) as pipe:
        for process in processes:
            pipe.hgetall(inflight_key(process.decode()))
        replies = await pipe.execute()
    return {p.decode(): _counts(c) for p, c in zip(processes, replies, strict=True) if c}


def _counts(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    return {slug.decode(): max(int(n), 0) for slug, n in raw.items()}


def encode_change(what: str, names: Iterable[str]) -> bytes:
    return _encode({"what": what, "names": list(names)})


def announce_change(client: Any, what: str, names: Iterable[str]) -> None:
    client.publish(CHANNEL, encode_change(what, names))


def cooling_until(seconds: float, now: float | None = None) -> float:
    """The epoch time a rest of `seconds` from `now` ends (capped at MAX_COOLDOWN_S)."""
    return (time.time() if now is None else now) + min(max(seconds, 0.0), MAX_COOLDOWN_S)


async def acool(client: Any, slug: str, seconds: float, *, now: float | None = None) -> float:
    """Rest `slug` for `seconds` (a provider's 429): every gateway routes around it
    until then. Returns the epoch time it rests until (a longer rest already set wins)."""
    until = cooling_until(seconds, now)
    current = await client.hget(COOLING, slug)
    if current is not None and float(current) >= until:
        return float(current)
    await client.hset(COOLING, slug, f"{until:.3f}")
    await client.publish(CHANNEL, encode_change("cooling", [slug]))
    return until


# --------------------------------------------------------------------------- reading


class LiveMaps(msgspec.Struct, frozen=True):
    deployments: Mapping[str, DeploymentLive]
    rtt: Mapping[tuple[str, str], float]
    inflight: Mapping[str, int]
    #: deployment slug → epoch seconds until which it rests (a provider's 429)
    cooling: Mapping[str, float] = {}
    #: providers whose credential a gateway saw rejected (401/403)
    rejected_providers: frozenset[str] = frozenset()
    #: gateway processes that shared in-flight counts (those with requests in flight)
    gateways: int = 0

    @classmethod
    def empty(cls) -> LiveMaps:
        return cls({}, {}, {})

    def resting(self, slug: str, now: float) -> bool:
        until = self.cooling.get(slug)
        return until is not None and until > now


def occupancy(shared: int, live: DeploymentLive | None) -> tuple[int, int]:
    """(holding a slot, waiting for one) at a deployment, as the engine counts them.

    `shared` is every gateway's count of requests sent to it and not finished: those
    running and those in its queue alike. `live` is what the backend itself last
    reported (running, waiting: every source's, a scrape old). The queue is the
    backend's; what holds a slot is the rest of the gateways' count, and never less
    than the backend says is running."""
    running = live.running or 0 if live is not None else 0
    waiting = live.waiting or 0 if live is not None else 0
    return max(running, shared - waiting), waiting


def _maps(deployments: Mapping[bytes, bytes], health: Mapping[bytes, bytes],
          rtt: Mapping[bytes, bytes], cooling: Mapping[bytes, bytes],
          rejected: Mapping[bytes, bytes],
          per_process: Iterable[Mapping[bytes, bytes]]) -> LiveMaps:  # fmt: skip
    out_rtt = {}
    for pair, value in rtt.items():
        src, _, dst = pair.decode().partition("|")
        out_rtt[(src, dst)] = float(value)
    inflight: dict[str, int] = {}
    gateways = 0
    for raw in per_process:
        gateways += bool(raw)
        for slug, n in _counts(raw).items():
            inflight[slug] = inflight.get(slug, 0) + n
    records = {k.decode(): _decode(v) for k, v in deployments.items()}
    for raw_slug, state in health.items():
        name = raw_slug.decode()
        record = records.get(name, DeploymentLive())
        records[name] = msgspec.structs.replace(record, health=state.decode())
    return LiveMaps(
        deployments=records,
        rtt=out_rtt,
        inflight=inflight,
        cooling={k.decode(): float(v) for k, v in cooling.items()},
        rejected_providers=frozenset(k.decode() for k in rejected),
        gateways=gateways,
    )


def read(client: Any) -> LiveMaps:
    processes = [inflight_key(p.decode()) for p in client.zrange(INFLIGHT_REGISTRY, 0, -1)]
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(DEPLOYMENTS)
        pipe.hgetall(HEALTH)
        pipe.hgetall(RTT)
        pipe.hgetall(COOLING)
        pipe.hgetall(REJECTED_PROVIDERS)
        for key in processes:
            pipe.hgetall(key)
        deployments, health, rtt, cooling, rejected, *per_process = pipe.execute()
    return _maps(deployments, health, rtt, cooling, rejected, per_process)


async def aread(client: Any) -> LiveMaps:
    processes = [inflight_key(p.decode()) for p in await client.zrange(INFLIGHT_REGISTRY, 0, -1)]
    async with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(DEPLOYMENTS)
        pipe.hgetall(HEALTH)
        pipe.hgetall(RTT)
        pipe.hgetall(COOLING)
        pipe.hgetall(REJECTED_PROVIDERS)
        for key in processes:
            pipe.hgetall(key)
        deployments, health, rtt, cooling, rejected, *per_process = await pipe.execute()
    return _maps(deployments, health, rtt, cooling, rejected, per_process)
