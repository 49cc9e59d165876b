"""The latency map: round-trip time from each gateway region to every cluster.

A round measures from one region (`TESSERACT_GATEWAY_REGION`, or the task's `region`)
and runs in that region: the beat sends it to the region's own queue, which a worker
there reads (`tesseract_web.celery`). Each region's rounds fill its row of the map.

One round (`probe_clusters`, a Celery task every `TESSERACT_PROBE_INTERVAL_S`):

1. **Targets.** Every cluster that is not drained (nor its region), reached through one
   of its deployments: the health endpoint beside its OpenAI base URL
   (`http://host/d/<slug>/v1` → `http://host/d/<slug>/health`; vLLM, SGLang and TGI
   serve `/health` beside `/v1` the same way). A deployment that the live map says is
   loaded and not down is preferred: only a healthy answer measures the path.
2. **Measure**, every cluster at once, one `GET` each. The RTT is timed from the
   request's first byte leaving to the answer's headers arriving (httpcore's trace
   hooks), so connection set-up — one more round trip for TCP, more for TLS — is not
   counted. Sends are spaced `SPACING_S` apart: a burst of sends keeps the event loop
   busy just when the first answers (the nearest clusters) arrive, and would add
   milliseconds to exactly the paths where they matter most. Only a 2xx counts: an
   error may come from a fast-fail path that skips the network (the simulator's 503s
   do) or from a proxy. The backend simulator sleeps its emulated RTT × its time scale
   and names that time scale in the answer; the wall time is divided by it, so the map
   is in real milliseconds at any scale. (At time scale 0 nothing is emulated: the
   loopback time is kept as measured, and physics judges it.)
3. **Judge** each sample against physics. The floor is the great-circle round trip at
   200,000 km/s (`routing.engine.LatencyMap.floor_ms`, the one implementation).
   - `failed`: no 2xx answer within the timeout.
   - `below_floor`: faster than light in fibre, so a measurement error (a clock, a
     proxy or cache answering for the cluster, a mis-scaled emulator). Recorded,
     flagged, never used.
   - `degraded_path`: above `DEGRADED_FLOOR_FACTOR` × floor + `DEGRADED_MARGIN_MS` *and*
     above `DEGRADED_CATALOG_FACTOR` × the catalog's median for the pair. The first
     half alone flags 20 of the 2,862 pairs of Azure's published matrix (Israel–Qatar
     is 109 ms against an 18.7 ms floor: roundabout, but normal for that pair); the
     second half keeps those normal. Flagged and *used*: the path really is slow now,
     and routing should know it.
   - `ok` otherwise.
4. **Smooth.** Used samples update an EWMA per region pair (a new sample weighs
   `TESSERACT_PROBE_EWMA_ALPHA_PCT` %), seeded with the catalog's median so that one odd
   first sample cannot swing the map. Clusters sharing a region feed one pair: the
   map is by region, as the engine reads it.
5. **Publish** to the live map (`livestate.rtt_set`) only when the EWMA is more than
   max(`PUBLISH_MIN_MS`, `PUBLISH_MIN_SHARE` × value) away from what the gateways route
   on, with one announcement per round: a steady mesh wakes no gateway.
6. **Record** every sample, used or not, as a `LatencyProbe` row (the time series);
   rows older than `TESSERACT_PROBE_RETENTION_H` are pruned.

The EWMA itself is kept in Redis (`EWMA`), apart from the published map. Rounds never
overlap (a Redis lock): one that finds the previous still running does nothing. A
second round is one more sample, which the EWMA absorbs. Rounds of different regions
are independent (one lock per region; they write different rows).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Q
from django.utils import timezone
from redis.exceptions import LockError

from backends import livestate
from backends.models import Cluster, Deployment, Health, LatencyProbe, Region, RegionLatency
from backends.world import INTRA_REGION_RTT_MS
from routing.engine import LatencyMap

logger = logging.getLogger(__name__)

Verdict = LatencyProbe.Verdict

#: hash "<src region>|<dst region>" → the probes' EWMA, ms (the published value is
#: `livestate.RTT`, which lags it by less than the publishing threshold)
EWMA = "tesseract:control:rtt_ewma"
#: the lock of a region's rounds is "<LOCK>:<region>"
LOCK = "tesseract:control:lock:probes"

#: A probe without an answer by then has failed (wall seconds).
TIMEOUT_S = 1.5
#: Sends are this far apart, and all of them within MAX_SPREAD_S.
SPACING_S = 0.005
MAX_SPREAD_S = 0.5
#: The Celery time limit of a round, and the life of its lock.
ROUND_TIME_LIMIT_S = 10

DEGRADED_FLOOR_FACTOR = 3.0
DEGRADED_MARGIN_MS = 20.0
DEGRADED_CATALOG_FACTOR = 2.0

PUBLISH_MIN_MS = 1.0
PUBLISH_MIN_SHARE = 0.02

_SENT = "http11.send_request_headers.started"
_ANSWERED = "http11.receive_response_headers.complete"


@dataclass(frozen=True, slots=True)
class Target:
    cluster_id: int
    cluster: str
    region: str
    url: str
    #: a provider's server: any answer below 500 (a 401 to a probe without credentials)
    #: has made the round trip, so it counts
    any_answer: bool = False


@dataclass(frozen=True, slots=True)
class Measurement:
    #: real (unscaled) milliseconds; None: no usable answer
    rtt_ms: float | None
    #: wall clock (epoch seconds) when it ended
    at: float
    error: str = ""


# --------------------------------------------------------------------------- the rules


def judge(rtt_ms: float | None, *, floor_ms: float, catalog_ms: float) -> str:
    """The verdict on one sample (module docstring, step 3). `catalog_ms` may be inf."""
    if rtt_ms is None:
        return Verdict.FAILED
    if rtt_ms < floor_ms:
        return Verdict.BELOW_FLOOR
    usual = catalog_ms if math.isfinite(catalog_ms) else 0.0
    if (
        rtt_ms > DEGRADED_FLOOR_FACTOR * floor_ms + DEGRADED_MARGIN_MS
        and rtt_ms > DEGRADED_CATALOG_FACTOR * usual
    ):
        return Verdict.DEGRADED_PATH
    return Verdict.OK


def ewma(previous: float | None, sample: float, alpha: float) -> float:
    """An exponentially weighted moving average; the first sample starts it."""
    return sample if previous is None else previous + alpha * (sample - previous)


def moved(published: float | None, value: float) -> bool:
    """Worth telling every gateway: the live map is that far from `value`."""
    if published is None:
        return True
    return abs(value - published) > max(PUBLISH_MIN_MS, PUBLISH_MIN_SHARE * published)


def probe_url(endpoint_url: str) -> str:
    """`http://host/d/<slug>/v1` → `http://host/d/<slug>/health`."""
    return endpoint_url.rstrip("/").removesuffix("/v1") + "/health"


def provider_probe_url(base_url: str) -> str:
    """A provider's `GET {base}/models`: every OpenAI-compatible server has it (the
    probe sends no credential; the 401 it may get back is as good a round trip)."""
    return base_url.rstrip("/") + "/models"


@contextmanager
def exclusive(client: Any, name: str, ttl_s: float) -> Iterator[bool]:
    """Hold the Redis lock `name` for the block; yields False (at once) if someone has it.

    Periodic jobs use it so that a run still going when the next is due makes that
    one a no-op; `ttl_s` (the job's time limit) frees it if the holder was killed.
    """
    lock = client.lock(name, timeout=ttl_s, blocking=False)
    if not lock.acquire(blocking=False):
        yield False
        return
    try:
        yield True
    finally:
        try:
            lock.release()
        except LockError:  # it expired: the run took longer than its time limit
            logger.warning("lock %s expired before its run ended", name)


# --------------------------------------------------------------------------- a round


def lock_name(region: str) -> str:
    return f"{LOCK}:{region}"


def probe_clusters(
    *,
    client: Any,
    cluster_ids: Iterable[int] | None = None,
    timeout_s: float = TIMEOUT_S,
    region: str | None = None,
) -> dict[str, int]:
    """Probe every cluster (or those of `cluster_ids`) once from `region` (default:
    `TESSERACT_GATEWAY_REGION`); returns counts by verdict.

    `client` is a `redis.Redis`. Raises ImproperlyConfigured when the region is not in
    the catalog: a map measured from nowhere would be wrong everywhere.
    """
    src = region or settings.TESSERACT_GATEWAY_REGION
    with exclusive(client, lock_name(src), ROUND_TIME_LIMIT_S) as mine:
        if not mine:
            return {"skipped": 1}
        ids = None if cluster_ids is None else list(cluster_ids)
        return _round(client, src, ids, timeout_s)


def _round(
    client: Any, src: str, cluster_ids: list[int] | None, timeout_s: float
) -> dict[str, int]:
    gateway = Region.objects.filter(slug=src).first()
    if gateway is None:
        raise ImproperlyConfigured(
            f"gateway region {src!r} (TESSERACT_GATEWAY_REGION) is not a region of the catalog"
        )
    targets = _targets(client, cluster_ids)
    latency = _catalog_latency(src)
    alpha = settings.TESSERACT_PROBE_EWMA_ALPHA_PCT / 100
    measurements = asyncio.run(_measure_all(targets, timeout_s))

    fields = sorted({livestate.rtt_field(src, t.region) for t in targets})
    ewmas = _floats(client, EWMA, fields)
    published = _floats(client, livestate.RTT, fields)
    touched: dict[str, str] = {}  # field -> destination region
    counts = dict.fromkeys(Verdict.values, 0)
    rows = []
    for target, m in zip(targets, measurements, strict=True):
        field = livestate.rtt_field(src, target.region)
        floor = latency.floor_ms(src, target.region)
        catalog = latency.rtt_ms(src, target.region)
        verdict = judge(m.rtt_ms, floor_ms=floor, catalog_ms=catalog)
        counts[verdict] += 1
        smoothed = None
        if m.rtt_ms is not None and verdict in (Verdict.OK, Verdict.DEGRADED_PATH):
            prior = ewmas[field]
            if prior is None and math.isfinite(catalog):
                prior = catalog
            smoothed = ewmas[field] = ewma(prior, m.rtt_ms, alpha)
            touched[field] = target.region
        if verdict in (Verdict.BELOW_FLOOR, Verdict.DEGRADED_PATH):
            logger.info("probe %s → %s: %s, %.1f ms against a floor of %.1f ms",
                        src, target.cluster, verdict, m.rtt_ms, floor)  # fmt: skip
        elif verdict == Verdict.FAILED:  # whether it is down is the health checks' call
            logger.debug("probe %s → %s failed: %s", src, target.cluster, m.error)
        rows.append(
            LatencyProbe(
                src_region=gateway,
                cluster_id=target.cluster_id,
                rtt_ms=m.rtt_ms,
                ewma_ms=smoothed,
                floor_ms=floor,
                verdict=verdict,
                measured_at=datetime.fromtimestamp(m.at, tz=UTC),
            )
        )

    if touched:
        client.hset(EWMA, mapping={f: repr(ewmas[f]) for f in touched})
    announce = []
    for field, dst in touched.items():
        value = ewmas[field]
        assert value is not None
        if moved(published[field], value):
            livestate.rtt_set(client, src, dst, value, announce=False)
            announce.append(field)
    if announce:
        livestate.announce_change(client, "rtt", announce)

    LatencyProbe.objects.bulk_create(rows)
    cutoff = timezone.now() - timedelta(hours=settings.TESSERACT_PROBE_RETENTION_H)
    LatencyProbe.objects.filter(measured_at__lt=cutoff).delete()
    return {**counts, "published": len(announce)}


def _floats(client: Any, key: str, fields: list[str]) -> dict[str, float | None]:
    raw = client.hmget(key, fields) if fields else []
    return {f: None if v is None else float(v) for f, v in zip(fields, raw, strict=True)}


def _targets(client: Any, cluster_ids: list[int] | None) -> list[Target]:
    """One deployment per live cluster, the likeliest to give a healthy answer."""
    clusters = Cluster.objects.filter(drained=False, region__drained=False)
    if cluster_ids is not None:
        clusters = clusters.filter(pk__in=cluster_ids)
    live = livestate.read(client).deployments
    best: dict[int, tuple[tuple[bool, bool, str], Target]] = {}
    rows = (
        Deployment.objects.filter(cluster__in=clusters, drained=False)
        .exclude(endpoint_url="", provider__isnull=True)
        .values_list("cluster_id", "cluster__slug", "cluster__region__slug", "slug",
                     "endpoint_url", "loaded", "provider__base_url")
    )  # fmt: skip
    for cluster_id, cluster, region, slug, url, loaded, provider_url in rows:
        state = live.get(slug)
        if state is not None and state.loaded is not None:
            loaded = state.loaded
        rank = (state is not None and state.health == Health.DOWN, not loaded, slug)
        if provider_url is not None:  # a real server: its own host, its model list
            target = Target(cluster_id, cluster, region,
                            provider_probe_url(url or provider_url), any_answer=True)  # fmt: skip
        else:
            target = Target(cluster_id, cluster, region, probe_url(url))
        if cluster_id not in best or rank < best[cluster_id][0]:
            best[cluster_id] = (rank, target)
    return sorted((t for _, t in best.values()), key=lambda t: t.cluster)


def _catalog_latency(src: str) -> LatencyMap:
    """The catalog's medians from (and to) `src`, and every region's coordinates."""
    pairs = RegionLatency.objects.filter(Q(src__slug=src) | Q(dst__slug=src))
    rtt = {(a, b): p50 for a, b, p50 in pairs.values_list("src__slug", "dst__slug", "rtt_p50_ms")}
    coords = {
        slug: (lat, lon)
        for slug, lat, lon in Region.objects.values_list("slug", "latitude", "longitude")
    }
    return LatencyMap(rtt=rtt, coords=coords, intra_region_ms=INTRA_REGION_RTT_MS)


# --------------------------------------------------------------------------- measuring


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context per process: building one (the CA bundle) costs ~25 ms of CPU,
    and these jobs make a client every second or two."""
    return httpx.create_ssl_context()


def http_client(timeout_s: float) -> httpx.AsyncClient:
    """A client for the control plane's polls. No proxy from the environment: through
    one, a probe would measure the proxy (the gateway's own client goes direct too)."""
    return httpx.AsyncClient(
        timeout=timeout_s,
        trust_env=False,
        verify=tls_context(),
        limits=httpx.Limits(max_connections=None),
    )


async def _measure_all(targets: list[Target], timeout_s: float) -> list[Measurement]:
    spacing = min(SPACING_S, MAX_SPREAD_S / max(len(targets), 1))
    async with http_client(timeout_s) as http:
        return await asyncio.gather(
            *(_measure(http, t, i * spacing, timeout_s) for i, t in enumerate(targets))
        )


async def _measure(
    http: httpx.AsyncClient, target: Target, delay_s: float, timeout_s: float
) -> Measurement:
    await asyncio.sleep(delay_s)
    marks: dict[str, float] = {}

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event in (_SENT, _ANSWERED):
            marks[event] = time.perf_counter()

    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            response = await http.get(target.url, extensions={"trace": trace})
    except (httpx.HTTPError, TimeoutError) as exc:
        return Measurement(None, time.time(), f"no answer: {type(exc).__name__}")
    ended = time.perf_counter()
    answered = response.status_code < 500 if target.any_answer else response.is_success
    if not answered:
        return Measurement(None, time.time(), f"HTTP {response.status_code}")
    wall_ms = (marks.get(_ANSWERED, ended) - marks.get(_SENT, started)) * 1000
    return Measurement(wall_ms / _time_scale(response), time.time())


def _time_scale(response: httpx.Response) -> float:
    """The time scale the backend simulator slept its delays at; a real backend: 1."""
    try:
        body = response.json()
    except ValueError:
        return 1.0
    if isinstance(body, dict) and body.get("simulator") is True:
        scale = body.get("time_scale")
        if isinstance(scale, int | float) and not isinstance(scale, bool) and scale > 0:
            return float(scale)
    return 1.0
