"""Two gateway regions on one PostgreSQL and one Redis, as production runs them.

Real processes: two gateways (uvicorn, `tesseract_web.asgi:gateway`), one with
`TESSERACT_GATEWAY_REGION=westeurope` and one with `eastus`; two Celery workers, the
westeurope one reading every concern's queue and its region's probe queue and running
the one beat, the eastus one reading only `<queue>.probes.eastus`; the backend
simulator on loopback. The module shows, in one scenario (starting the processes is
the slow part):

* each gateway routes a request that names no client location with its own row of the
  latency map: westeurope's to Europe, eastus's to America;
* the beat probes from both regions, each round on its region's queue, so eastus's
  row is measured by the worker that reads only that queue;
* the four control signals reach both gateways within a second, each through its
  announcement (the gateways' periodic refreshes are put off for an hour, so only
  pub/sub can carry them): an operator's drain and a deployment going DOWN make both
  gateways' plans exclude those backends, a revoked key is refused (401) by both, and a
  deployment added to the catalog is routable on both, and no longer once removed.
  Each is measured from the operator's call to the first answer from each gateway
  that shows it; the assertion allows `SIGNAL_BOUND_S`, since a loaded machine can
  hold a process off the CPU that long — the measured times are printed;
* a key's requests-per-minute and an organization's budget are exact across both
  gateways hit at once;
* every request served is metered exactly once, by the real beat's drain.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal

import httpx
import pytest
import redis
from django.conf import settings

from accounts import keys, services
from accounts.models import Organization, User
from backends import health, probes
from backends.demo import demo_world_load
from backends.models import AIModel, Deployment, LatencyProbe, Region
from backends.services import drain_by_slug
from backends.simulator import create_app
from backends.world import demo_world
from billing import rating
from billing.models import SlaTier, UsageEvent
from billing.subscriptions import budget_set, key_limits_set, tier_change
from billing.tiers import ENTERPRISE
from tests import tiers
from tests.conftest import PASSWORD
from tests.gateway.conftest import live_maps_clear
from tests.servers import serve
from tests.workers import Workers

pytestmark = pytest.mark.django_db(transaction=True)

EIGHT_B = "llama-3.1-8b-instruct"
ASK = {"model": EIGHT_B, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
ROUTE = {"model": EIGHT_B, "input_tokens": 100, "max_tokens": 4}
REGIONS = ("westeurope", "eastus")
#: A control signal is announced on commit and applied by each gateway within
#: milliseconds on an idle machine (`bench/results/control_signals.md`); beside a CPU
#: hog a process can wait its turn for longer. The printed times are the measurement;
#: this is the alarm.
SIGNAL_BOUND_S = 3.0
#: The gateways' periodic refreshes (world, live maps, key cache), put off so that a
#: change seen within SIGNAL_BOUND_S can only have come through its announcement.
NO_REFRESH = {
    "TESSERACT_WORLD_REFRESH_S": "3600",
    "TESSERACT_LIVE_REFRESH_S": "3600",
    "TESSERACT_KEY_CACHE_TTL_S": "3600",
}
#: a model only the catalog test adds (and removes again)
NEW_MODEL = "propagation-test-1b"
#: Hundreds of requests at once across the two processes: 3 x BOB_RPM for bob's key,
#: 2 x BUDGET_FITS for alice's budget.
BOB_RPM = 97
BUDGET_USD = Decimal("0.50")
#: 0.50 $ at 4.48 m$ a request (4 output tokens at 1000 $/Mtok, 12% margin)
BUDGET_FITS = 111
#: how long a process may take to start, or the beat to come round, on a busy machine
PATIENCE_S = 180.0


def eventually(predicate: Callable[[], object], timeout_s: float = PATIENCE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


def user(name: str) -> User:
    return User.objects.create_user(f"{name}@example.com", PASSWORD, name=name.title())


@pytest.fixture
def world(transactional_db) -> Iterator[dict[str, str]]:
    """The demo world behind a simulator, and the cast's keys, all set before any
    process starts: alice's org (Enterprise, 12% margin) has a budget that fits exactly
    `BUDGET_FITS` requests, bob's key a rate limit of `BOB_RPM`, charlie neither. A
    request costs exactly its reservation (output tokens only, one price)."""
    spec = demo_world()
    live_maps_clear()  # org ids repeat between runs; Redis's counters outlive the database
    redis.Redis.from_url(settings.REDIS_URL).delete(probes.EWMA)
    with serve(create_app(spec, time_scale=0, gateway_region="westeurope")) as simulator_url:
        demo_world_load(spec, simulator_url=simulator_url)
        Deployment.objects.filter(model__slug=EIGHT_B).update(
            price_input_per_mtok=0, price_output_per_mtok=1000
        )
        keys = {}
        for name in ("alice", "bob", "charlie"):
            org = services.organization_create(name=f"{name.title()} Inc", owner=user(name))
            tiers.unlimited(org)
            issued = services.api_key_create(org=org, name="regions")
            keys[name] = issued.plaintext
            if name == "alice":
                enterprise, _ = SlaTier.objects.get_or_create(  # the seed was flushed
                    slug=ENTERPRISE.slug,
                    defaults={k: v for k, v in ENTERPRISE.fields().items() if k != "slug"},
                )
                tier_change(org=org, tier=enterprise)
                budget_set(org=org, monthly_budget_usd=BUDGET_USD)
            if name == "bob":
                key_limits_set(api_key=issued.api_key, requests_per_minute=BOB_RPM)
        yield keys


@pytest.fixture
def regions(world) -> Iterator[dict[str, str]]:
    """Both regions' gateways and workers, and the one beat; the gateways' URLs by region."""
    workers = Workers(
        TESSERACT_GATEWAY_REGIONS=",".join(REGIONS),
        TESSERACT_PROBE_INTERVAL_S="2",
        # Health checks and the rest are put off: the routing asserted here must not
        # depend on how a busy machine's answers happened to look to them.
        TESSERACT_HEALTH_INTERVAL_S="3600",
        TESSERACT_SCRAPE_INTERVAL_S="3600",
        TESSERACT_OBSERVED_INTERVAL_S="3600",
    )
    try:
        # westeurope: every concern's queue and its own probes (and the beat) ...
        workers.start(beat=True, TESSERACT_GATEWAY_REGION="westeurope")
        # ... eastus: its probes only, as a worker in that region would be started.
        workers.start(queues=["probes.eastus"], TESSERACT_GATEWAY_REGION="eastus")
        yield {r: workers.start_gateway(TESSERACT_GATEWAY_REGION=r, **NO_REFRESH) for r in REGIONS}
    finally:
        workers.stop()


def plan(url: str, key: str, model: str = EIGHT_B) -> dict:
    response = httpx.post(
        f"{url}/v1/route",
        headers={"Authorization": f"Bearer {key}"},
        json={**ROUTE, "model": model},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def burst(urls: dict[str, str], key: str, n: int) -> list[httpx.Response]:
    """`n` chat requests at once, alternating between the gateways."""
    targets = list(urls.values())

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{targets[i % len(targets)]}/v1/chat/completions",
                        headers={"Authorization": f"Bearer {key}"},
                        json=ASK,
                    )
                    for i in range(n)
                )
            )

    return asyncio.run(run())


def redis_minute_has(seconds: float) -> None:
    """Wait for a fresh minute on Redis's clock (the limits' window) if fewer than
    `seconds` are left of this one, so that a burst's requests share a window."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    now, _ = client.time()
    if 60 - now % 60 < seconds:
        time.sleep(60 - now % 60 + 0.5)
    client.close()


def seen_after(
    urls: dict[str, str], change: Callable[[], object], shows: Callable[[str], bool]
) -> dict[str, float]:
    """Make `change`; seconds until each gateway's answers show it (`shows(url)`),
    every gateway polled at once from its own thread."""
    seen: dict[str, float] = {}

    def watch(gateway: str) -> None:
        eventually(lambda: shows(urls[gateway]), timeout_s=60)
        seen[gateway] = time.perf_counter()

    watchers = [threading.Thread(target=watch, args=(g,)) for g in urls]
    started = time.perf_counter()
    change()
    for thread in watchers:
        thread.start()
    for thread in watchers:
        thread.join()
    return {g: round(seen[g] - started, 3) for g in urls if g in seen}


def excluded_as(code: str, slugs: set[str], key: str) -> Callable[[str], bool]:
    """Whether a gateway's plan excludes every one of `slugs` with `code`."""

    def shows(url: str) -> bool:
        codes = {e["backend_id"]: e["code"] for e in plan(url, key)["excluded"]}
        return all(codes.get(slug) == code for slug in slugs)

    return shows


def primary_for(url: str, key: str, model: str) -> str | None:
    """The backend a gateway's plan would send `model` to (None: it serves no such model)."""
    primary = plan(url, key, model)["primary"]
    return None if primary is None else primary["backend_id"]


def models_status(url: str, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.get(f"{url}/v1/models", headers=headers, timeout=30).status_code


def reached_both(signal: str, took: dict[str, float]) -> None:
    print(f"{signal}: seen by each gateway after (s): {took}")
    assert set(took) == set(REGIONS), took
    assert all(t < SIGNAL_BOUND_S for t in took.values()), took


def deployment_added(model_slug: str, like: Deployment) -> Deployment:
    """What an operator does in the admin to serve a new model: a model row, and a
    deployment of it on an existing cluster (saved as new from `like`)."""
    model = AIModel.objects.create(
        slug=model_slug, name=model_slug, family="test", parameters_b=1, context_length=8192
    )
    like.pk = None
    like.slug = f"{like.cluster.slug}--{model_slug}"
    like.model = model
    like.save()
    return like


def served_ids(responses: list[httpx.Response]) -> list[str]:
    return [r.headers["x-request-id"] for r in responses if r.status_code == 200]


def test_two_regions_route_probe_signal_limit_and_meter_as_one_service(world, regions):
    urls = regions
    charlie, bob, alice = world["charlie"], world["bob"], world["alice"]

    # Each gateway routes a request without a client location with its own latency row.
    longitude = dict(Region.objects.values_list("slug", "longitude"))
    primary = {r: plan(urls[r], charlie)["primary"] for r in REGIONS}
    assert longitude[primary["westeurope"]["region"]] > -30, primary  # Europe
    assert longitude[primary["eastus"]["region"]] < -30, primary  # the Americas

    # Both regions are probed, each round by the worker reading its region's queue
    # (the eastus worker reads nothing else).
    def probed() -> set[str]:
        return set(LatencyProbe.objects.values_list("src_region__slug", flat=True))

    eventually(lambda: probed() == set(REGIONS))

    # The kill switch: an operator's drain reaches both gateways' worlds.
    drained = primary["westeurope"]["region"]
    slugs = set(
        Deployment.objects.filter(cluster__region__slug=drained, model__slug=EIGHT_B).values_list(
            "slug", flat=True
        )
    )
    assert slugs
    took = seen_after(
        urls,
        lambda: drain_by_slug("region", drained, drained=True, by="test"),
        excluded_as("drained", slugs, charlie),
    )
    reached_both(f"drain of {drained}", took)
    assert plan(urls["westeurope"], charlie)["primary"]["region"] != drained

    # A health change: the backends each gateway now prefers go DOWN (the health
    # checks' third failure in a row), and both gateways route around them ...
    down = {plan(urls[r], charlie)["primary"]["backend_id"] for r in REGIONS}
    client = redis.Redis.from_url(settings.REDIS_URL)

    def fail_checks() -> None:
        for slug in down:
            for _ in range(health.DOWN_AFTER):
                health.observe(client, slug, health.FAIL, source="check", reason="test")

    reached_both("health DOWN", seen_after(urls, fail_checks, excluded_as("down", down, charlie)))
    assert not {plan(urls[r], charlie)["primary"]["backend_id"] for r in REGIONS} & down
    # ... and back, for what follows.
    for slug in down:
        health.set_by_operator(client, slug, "healthy", "test over")
    client.close()

    # A key revocation: a key both gateways have in their caches is refused by both.
    org = Organization.objects.get(api_keys__lookup=keys.parse_lookup(charlie))
    doomed = services.api_key_create(org=org, name="doomed")
    assert all(models_status(url, doomed.plaintext) == 200 for url in urls.values())
    took = seen_after(
        urls,
        lambda: services.api_key_revoke(api_key=doomed.api_key, reason="test"),
        lambda url: models_status(url, doomed.plaintext) == 401,
    )
    reached_both("key revocation", took)

    # A catalog change: a deployment of a new model becomes routable on both gateways,
    # and stops being routable on both once it is removed.
    assert all(primary_for(url, charlie, NEW_MODEL) is None for url in urls.values())
    like = (
        Deployment.objects.filter(model__slug=EIGHT_B, loaded=True).exclude(slug__in=slugs).first()
    )
    assert like is not None
    added: list[Deployment] = []
    took = seen_after(
        urls,
        lambda: added.append(deployment_added(NEW_MODEL, like)),
        lambda url: primary_for(url, charlie, NEW_MODEL) == added[0].slug,
    )
    reached_both("deployment added", took)
    took = seen_after(
        urls,
        lambda: added[0].delete(),
        lambda url: primary_for(url, charlie, NEW_MODEL) is None,
    )
    reached_both("deployment removed", took)

    # Bob's key: exactly its requests per minute, across both gateways at once.
    redis_minute_has(40)
    responses = burst(urls, bob, 3 * BOB_RPM)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, {r.status_code: r.text for r in responses}
    assert statuses.count(200) == BOB_RPM, statuses
    served = served_ids(responses)

    # Alice's org: a budget that fits exactly BUDGET_FITS requests admits exactly those.
    per_request = rating.charge(
        rating.with_margin(rating.Price(Decimal(0), Decimal(1000)), Decimal(12)), 0, 4
    )
    assert BUDGET_USD // per_request == BUDGET_FITS
    responses = burst(urls, alice, 2 * BUDGET_FITS)
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == BUDGET_FITS, (statuses, responses[-1].text)
    refused = [r.json()["error"]["code"] for r in responses if r.status_code != 200]
    assert set(refused) == {"insufficient_quota"}
    served += served_ids(responses)

    # Every request served, by either gateway, is metered exactly once (the beat's drain).
    eventually(lambda: UsageEvent.objects.count() >= len(served))
    time.sleep(3)  # more drains come round: nothing more may arrive
    assert sorted(UsageEvent.objects.values_list("request_id", flat=True)) == sorted(served)
