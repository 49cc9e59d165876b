"""Health of each deployment: HEALTHY, DEGRADED or DOWN, with hysteresis.

Two kinds of evidence feed one state machine:

* active checks (`check_all`, a Celery task every `TESSERACT_HEALTH_INTERVAL_S`): the
  backend's health endpoint (the simulator's `/d/<slug>/health`) or, for a provider,
  `GET /v1/models`; a check that answers but slower than the profile allows, or a
  backend whose observed TTFT runs far over its profile, is *slow*;
* passive evidence from the gateways (`observe_async`): a connect error, a 5xx or a
  timeout before the first token is a failure, like Envoy's outlier detection.

The rules (`DOWN_AFTER` consecutive failures to go DOWN, `UP_AFTER` consecutive
answers to come back; `SLOW_AFTER` slow answers in a row to go DEGRADED, `UP_AFTER`
good ones to recover) run as one Lua script inside Redis, so concurrent writers (the
health task, every gateway process) never lose an update. The state lives in the live
maps (`backends.livestate`); a change is announced there at once, so every gateway
routes around it within milliseconds. The database keeps the history
(`HealthEvent`) and the last state (`Deployment.health`), synced by the task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backends import livestate, providers
from backends.models import Deployment, Health, HealthEvent
from backends.snapshot import load_world

logger = logging.getLogger(__name__)

DOWN_AFTER = 3
UP_AFTER = 2
SLOW_AFTER = 2
#: a check is slow past this multiple of the expected round trip (plus a fixed margin)
SLOW_CHECK_FACTOR, SLOW_CHECK_MARGIN_MS = 3.0, 50.0
#: a backend is slow when its observed TTFT exceeds its profile by this factor
SLOW_TTFT_FACTOR = 2.0

OK, SLOW, FAIL = "ok", "slow", "fail"
# The script's three keys carry one hash tag (`livestate.HEALTH_TAG`): one slot on
# Redis Cluster, so it runs there unchanged (a script's keys must share a slot).
COUNTERS = "tesseract:health:" + livestate.HEALTH_TAG + ":counters:"  # + slug: fails/slows/oks/up
REASONS = "tesseract:health:" + livestate.HEALTH_TAG + ":reasons"  # slug -> source|reason

# KEYS: counters hash, health hash, reasons hash. ARGV: slug, outcome, reason,
# DOWN_AFTER, UP_AFTER, SLOW_AFTER. Returns {previous, current}.
_TRANSITION = """
local state = redis.call('HGET', KEYS[2], ARGV[1]) or 'healthy'
local outcome = ARGV[2]
local down_after, up_after, slow_after = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local new = state
if outcome == 'fail' then
  local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
  redis.call('HSET', KEYS[1], 'oks', 0, 'slows', 0, 'up', 0)
  if fails >= down_after then new = 'down' end
else
  local up = redis.call('HINCRBY', KEYS[1], 'up', 1)
  redis.call('HSET', KEYS[1], 'fails', 0)
  if outcome == 'slow' then
    local slows = redis.call('HINCRBY', KEYS[1], 'slows', 1)
    redis.call('HSET', KEYS[1], 'oks', 0)
    if state == 'down' then
      if up >= up_after then new = 'degraded' end
    elseif slows >= slow_after then
      new = 'degraded'
    end
  else
    local oks = redis.call('HINCRBY', KEYS[1], 'oks', 1)
    redis.call('HSET', KEYS[1], 'slows', 0)
    if state == 'down' and up >= up_after then new = 'healthy' end
    if state == 'degraded' and oks >= up_after then new = 'healthy' end
  end
end
if new ~= state then
  redis.call('HSET', KEYS[2], ARGV[1], new)
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
end
return {state, new}
"""


def script_keys(slug: str) -> tuple[str, str, str]:
    """The transition script's keys for one deployment: its counters, the health map,
    the reasons."""
    return (COUNTERS + slug, livestate.HEALTH, REASONS)


def _args(slug: str, outcome: str, source: str, reason: str) -> tuple[Any, ...]:
    keys = script_keys(slug)
    argv = (slug, outcome, f"{source}|{reason}"[:300], DOWN_AFTER, UP_AFTER, SLOW_AFTER)
    return (_TRANSITION, 3, *keys, *argv)


def _result(raw: Any) -> tuple[str, str]:
    previous, current = (v.decode() if isinstance(v, bytes) else v for v in raw)
    return previous, current


def observe(client: Any, slug: str, outcome: str, *, source: str, reason: str) -> tuple[str, str]:
    """Feed one observation; returns (previous, current) and announces a change."""
    previous, current = _result(client.eval(*_args(slug, outcome, source, reason)))
    if previous != current:
        livestate.announce_change(client, "health", [slug])
    return previous, current


async def observe_async(
    client: Any, slug: str, outcome: str, *, source: str, reason: str
) -> tuple[str, str]:
    """`observe` for the gateway's event loop (a `redis.asyncio.Redis`)."""
    previous, current = _result(await client.eval(*_args(slug, outcome, source, reason)))
    if previous != current:
        await client.publish(livestate.CHANNEL, b'{"what":"health","names":["%s"]}' % slug.encode())
        logger.warning("%s is now %s (%s)", slug, current, reason)
    return previous, current


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Target:
    slug: str
    url: str
    expected_rtt_ms: float
    profile_ttft_ms: float
    #: the provider's slug and its headers, credential included (never printed)
    provider: str = ""
    headers: dict[str, str] = field(default_factory=dict, repr=False)


#: what `_check` reports when the provider refused our credential (401/403)
REJECTED = "rejected"


def health_url(endpoint_url: str, adapter: str) -> str:
    """The simulator's per-deployment health endpoint, or a provider's model list."""
    base = endpoint_url.rstrip("/")
    if adapter == Deployment.Adapter.SIMULATOR and base.endswith("/v1"):
        return base[: -len("/v1")] + "/health"
    return base + "/models"


async def _check(client: httpx.AsyncClient, t: Target, timeout_s: float) -> tuple[str, str]:
    started = time.perf_counter()
    try:
        response = await client.get(t.url, timeout=timeout_s, headers=t.headers)
    except httpx.HTTPError as exc:
        return FAIL, f"no answer: {type(exc).__name__}"
    elapsed_ms = (time.perf_counter() - started) * 1000
    if response.status_code in (401, 403) and t.provider:
        return REJECTED, f"HTTP {response.status_code}: the provider rejected our credential"
    if response.status_code >= 500:
        status = _status(response)
        if status in ("unloaded", "loading"):
            return OK, status  # not loaded is the resource map's business, not ill health
        return FAIL, f"HTTP {response.status_code} {status}".strip()
    if response.status_code >= 400:
        return FAIL, f"HTTP {response.status_code}"
    if elapsed_ms > t.expected_rtt_ms * SLOW_CHECK_FACTOR + SLOW_CHECK_MARGIN_MS:
        return SLOW, f"check took {elapsed_ms:.0f} ms, expected ~{t.expected_rtt_ms:.0f} ms"
    return OK, f"answered in {elapsed_ms:.0f} ms"


def _status(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("status", "")) if isinstance(body, dict) else ""


def _targets() -> list[Target]:
    """Every deployment with somewhere to reach it, as the gateway would reach it: a
    provider's deployments are checked with its credential (an authenticated
    `GET /v1/models`), unsealed in the world this builds."""
    world = load_world()  # the expected RTT, as the gateway sees it
    region = settings.TESSERACT_GATEWAY_REGION
    latency = world.snapshot.latency
    profiles = dict(Deployment.objects.values_list("slug", "ttft_ms"))
    out = []
    for slug, e in world.endpoints.items():
        if not e.url or slug not in profiles:
            continue
        rtt = latency.rtt_ms(region, e.region)
        out.append(
            Target(
                slug,
                health_url(e.url, e.adapter),
                rtt if rtt != float("inf") else 300.0,
                profiles[slug],
                provider=e.provider,
                headers=e.upstream_headers(),
            )
        )
    return out


async def check_targets(targets: list[Target], timeout_s: float) -> list[tuple[str, str]]:
    """Each target's (outcome, reason). Targets that share a URL and a provider (a
    hosted API's one endpoint, behind several of our deployments) are asked once: a
    provider is not sent the same authenticated request many times a round."""
    unique: dict[tuple[str, str], Target] = {}
    for t in targets:
        unique.setdefault((t.url, t.provider), t)
    async with httpx.AsyncClient() as http:
        answers = await asyncio.gather(*(_check(http, t, timeout_s) for t in unique.values()))
    by_key = dict(zip(unique, answers, strict=True))
    return [by_key[(t.url, t.provider)] for t in targets]


def check_all(*, client: Any, timeout_s: float | None = None) -> dict[str, str]:
    """Check every deployment once, feed the state machine, sync the database.

    Returns each deployment's state after the check.
    """
    timeout = timeout_s if timeout_s is not None else settings.TESSERACT_HEALTH_TIMEOUT_S
    targets = _targets()
    live = livestate.read(client).deployments

    results = asyncio.run(check_targets(targets, timeout))
    for t, (outcome, reason) in zip(targets, results, strict=True):
        if outcome == REJECTED:
            providers.mark_rejected(client, t.provider, f"{reason} (health check of {t.slug})")
            outcome = FAIL
        observed = live.get(t.slug)
        ttft = observed.observed_ttft_ms if observed is not None else None
        if outcome == OK and ttft is not None and ttft > t.profile_ttft_ms * SLOW_TTFT_FACTOR:
            outcome = SLOW
            reason = f"observed TTFT {ttft:.0f} ms against a profile of {t.profile_ttft_ms:.0f} ms"
        observe(client, t.slug, outcome, source=HealthEvent.Source.CHECK, reason=reason)
    states = sync_to_database(client)
    providers.sync_rejections(client)  # a provider the gateways saw refuse us: alert
    return {t.slug: states.get(t.slug, Health.HEALTHY.value) for t in targets}


def sync_to_database(client: Any) -> dict[str, str]:
    """Record every state that differs from the database's as a HealthEvent."""
    states = {k.decode(): v.decode() for k, v in client.hgetall(livestate.HEALTH).items()}
    reasons = {k.decode(): v.decode() for k, v in client.hgetall(REASONS).items()}
    now = timezone.now()
    with transaction.atomic():
        for d in Deployment.objects.select_for_update().filter(slug__in=states):
            current = states[d.slug]
            if current == d.health:
                continue
            source, _, reason = reasons.get(d.slug, "check|").partition("|")
            HealthEvent.objects.create(
                deployment=d, previous=d.health, current=current, source=source,
                reason=reason or "-", created_at=now,
            )  # fmt: skip
            # .update(), not .save(): health is live state, not a catalog change that
            # should make every gateway re-read the catalog.
            Deployment.objects.filter(pk=d.pk).update(health=current, health_since=now)
    return states


def set_by_operator(client: Any, slug: str, state: str, reason: str) -> None:
    """An operator forces a state (e.g. DOWN for maintenance); checks take over after."""
    if state not in Health.values:
        raise ValueError(f"unknown health state {state!r}")
    client.hset(livestate.HEALTH, slug, state)
    client.hset(REASONS, slug, f"{HealthEvent.Source.OPERATOR}|{reason}"[:300])
    client.delete(COUNTERS + slug)
    livestate.announce_change(client, "health", [slug])
    sync_to_database(client)
