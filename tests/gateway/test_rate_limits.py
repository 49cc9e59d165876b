"""Rate limits, budgets and suspension, end to end: the openai SDK against live gateways."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from decimal import Decimal

import httpx
import openai
import pytest
import redis
from django.conf import settings
from django.utils import timezone

from accounts import services
from accounts.keycache import KeyCache
from backends.models import Deployment
from billing import dunning, limits, rating
from billing.models import ApiKeyLimits, BillingAccount, ListPrice, SlaTier, UsageEvent
from billing.subscriptions import budget_set, key_limits_set, tier_change
from billing.tiers import ENTERPRISE
from routing.gateway import observability
from routing.gateway.app import GatewayApp, KeyAuth
from routing.gateway.core import Gateway
from routing.gateway.live import WorldHolder
from routing.gateway.upstream import Upstream
from tests.servers import serve
from tests.waiting import eventually

EIGHT_B = "llama-3.1-8b-instruct"
ASK = {"model": EIGHT_B, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture
def org_key(mesh, alice):
    org = services.organization_create(name="Acme", owner=alice)
    issued = services.api_key_create(org=org, name="tests")
    return org, issued.api_key, issued.plaintext


def sdk(mesh, key: str, url: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"{url or mesh.gateway_url}/v1", max_retries=0)


def test_the_sdk_sees_rate_limit_error_with_its_code_and_headers_and_nothing_is_metered(
    mesh, org_key, usage
):
    _, key, plaintext = org_key
    key_limits_set(api_key=key, requests_per_minute=3)
    client = sdk(mesh, plaintext)
    remaining = []
    window = None
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(**ASK)
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        assert raw.headers["x-ratelimit-limit-tokens"] == "100000"  # the Free tier's
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        window = raw.headers["x-ratelimit-reset-requests"]
    assert window is not None
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**ASK)
    error = caught.value
    if remaining != ["2", "1", "0"]:
        pytest.skip("the minute turned during the test")
    assert error.code == "rate_limit_exceeded"
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(error.response.headers["retry-after"]) <= 60
    assert "requests per minute (3)" in error.message
    assert len(usage()) == 3  # the refused request was never metered


RATE_LIMIT_HEADERS = [
    f"x-ratelimit-{what}-{unit}"
    for unit in ("requests", "tokens")
    for what in ("limit", "remaining", "reset")
]


def test_completions_and_streams_carry_the_same_six_headers_and_share_one_limit(
    mesh, org_key, usage
):
    _, key, plaintext = org_key
    key_limits_set(api_key=key, requests_per_minute=5)
    client = sdk(mesh, plaintext)
    chat = client.chat.completions.with_raw_response.create(**ASK)
    legacy = client.completions.with_raw_response.create(
        model=ASK["model"], prompt="Say hello", max_tokens=4
    )
    with client.chat.completions.with_streaming_response.create(**ASK, stream=True) as stream:
        streamed = dict(stream.headers)
        assert any(line.startswith("data:") for line in stream.iter_lines())
    answers = [dict(chat.headers), dict(legacy.headers), streamed]
    for headers in answers:
        assert all(name in headers for name in RATE_LIMIT_HEADERS), headers
    remaining = [h["x-ratelimit-remaining-requests"] for h in answers]
    if remaining != ["4", "3", "2"]:
        pytest.skip("the minute turned during the test")
    assert len(usage()) == 3


def test_tokens_per_minute_count_max_tokens_and_refuse_what_would_exceed_them(mesh, org_key):
    _, key, plaintext = org_key
    key_limits_set(api_key=key, tokens_per_minute=30)
    client = sdk(mesh, plaintext)
    first = client.chat.completions.with_raw_response.create(**ASK)  # its input + 4 out
    counted = 30 - int(first.headers["x-ratelimit-remaining-tokens"])
    assert counted > ASK["max_tokens"]
    whole_window = 30 - (counted - ASK["max_tokens"])  # with the same input: 30 tokens
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**{**ASK, "max_tokens": whole_window})
    assert caught.value.code == "rate_limit_exceeded"
    assert "tokens per minute (30" in caught.value.message
    assert "retry-after" in caught.value.response.headers


def test_a_request_larger_than_a_whole_minute_of_tokens_says_so_and_the_sdk_does_not_retry_it(
    mesh, org_key, usage
):
    _, key, plaintext = org_key
    key_limits_set(api_key=key, tokens_per_minute=30)
    sent: list[httpx.Request] = []
    client = openai.OpenAI(
        api_key=plaintext,
        base_url=f"{mesh.gateway_url}/v1",
        max_retries=2,
        http_client=httpx.Client(event_hooks={"request": [sent.append]}),
    )
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**{**ASK, "max_tokens": 400})
    assert len(sent) == 1  # not retried
    error = caught.value
    assert error.code == "rate_limit_exceeded"
    assert "too large for this API key's limit of 30 tokens per minute" in error.message
    assert "reduce" in error.message
    assert error.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in error.response.headers
    assert error.response.headers["x-ratelimit-limit-tokens"] == "30"
    assert error.response.headers["x-ratelimit-remaining-tokens"] == "30"  # nothing counted
    assert usage() == []
    # Each of n completions may take max_tokens: four of 8 do not fit where one does.
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**{**ASK, "max_tokens": 8, "n": 4})
    assert "too large" in caught.value.message
    served = client.chat.completions.with_raw_response.create(**{**ASK, "max_tokens": 8})
    assert int(served.headers["x-ratelimit-remaining-tokens"]) < 30
    # The tighter limit decides, whichever refused first: the key's requests per minute
    # run out, and a request larger than the key's minute is still said to be too large.
    key_limits_set(api_key=key, tokens_per_minute=30, requests_per_minute=1)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**{**ASK, "max_tokens": 400})
    assert "too large for this API key's limit of 30" in caught.value.message


def _gateway_app(*, fresh_s: float | None = None) -> GatewayApp:
    """A gateway as another process would have it: its own key cache, Redis client, world.
    `fresh_s`: how long what it hears of a key's limits counts (`Admission.fresh_s`)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(settings.REDIS_URL)
    gateway = Gateway(holder=WorldHolder(redis=client), upstream=Upstream(), redis=client)
    if fresh_s is not None:
        gateway.admission.fresh_s = fresh_s
    return GatewayApp(gateway=gateway, auth=KeyAuth(KeyCache()))


def test_a_budget_holds_across_gateways_under_hundreds_of_concurrent_requests(mesh, org_key, usage):
    org, key, plaintext = org_key
    enterprise, _ = SlaTier.objects.get_or_create(  # a transactional test flushed the seed
        slug=ENTERPRISE.slug, defaults={k: v for k, v in ENTERPRISE.fields().items() if k != "slug"}
    )
    tier_change(org=org, tier=enterprise)  # 10k rpm, 12% margin
    budget_set(org=org, monthly_budget_usd=Decimal("1.00"))
    # Output only, one price everywhere: every request costs exactly its reservation.
    Deployment.objects.filter(model__slug=EIGHT_B).update(
        price_input_per_mtok=0, price_output_per_mtok=1000
    )
    per_request = rating.charge(
        rating.with_margin(rating.Price(Decimal(0), Decimal(1000)), Decimal(12)), 0, 4
    )
    fits = int(Decimal("1.00") // per_request)
    assert fits == 223
    n = 320

    async def burst(urls: list[str]) -> list[httpx.Response]:
        limit = asyncio.Semaphore(64)
        async with httpx.AsyncClient(timeout=60) as client:

            async def one(i: int) -> httpx.Response:
                async with limit:
                    return await client.post(
                        f"{urls[i % len(urls)]}/v1/chat/completions",
                        headers={"Authorization": f"Bearer {plaintext}"},
                        json=ASK,
                    )

            return await asyncio.gather(*(one(i) for i in range(n)))

    with ExitStack() as stack:
        urls = [stack.enter_context(serve(_gateway_app())) for _ in range(2)]
        responses = asyncio.run(burst(urls))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, {r.status_code: r.text for r in responses}
    refused = [r for r in responses if r.status_code == 429]
    assert all(r.json()["error"]["code"] == "insufficient_quota" for r in refused)
    assert statuses.count(200) == fits  # exactly what fits: the cap is never exceeded
    assert len(refused) == n - fits  # ... and nothing that fits is refused
    message = refused[0].json()["error"]["message"]
    assert "cap $1.00" in message
    assert "resets on" in message
    # The month's spend it names is why this one did not fit.
    spent = re.search(r"spent \(and reserved\) \$([0-9.]+) this month", message)
    assert spent, message
    assert Decimal("1.00") - per_request < Decimal(spent[1]) <= Decimal("1.00")
    events = usage()
    assert len(events) == fits
    stored = sum((e.charge_usd for e in events), Decimal(0))
    month = limits.month_of(timezone.now())
    spend_key = limits.redis_keys(org_id=org.pk, key_id=key.pk, month=month)[2]
    ledger = int(redis.Redis.from_url(settings.REDIS_URL).get(spend_key))
    assert ledger == limits.to_nano(stored)  # the gateway settled what the drain stored
    assert stored <= Decimal("1.00")

    # The SDK sees the same refusal as insufficient_quota (from the session's gateway,
    # once it has read the new prices).
    from routing.gateway.app import application

    application.forget_world()
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(mesh, plaintext).chat.completions.create(**ASK)
    assert caught.value.code == "insufficient_quota"


def test_an_operator_s_list_price_is_what_a_budget_reserves_and_what_it_settles(
    mesh, org_key, usage
):
    org, key, plaintext = org_key
    enterprise, _ = SlaTier.objects.get_or_create(
        slug=ENTERPRISE.slug, defaults={k: v for k, v in ENTERPRISE.fields().items() if k != "slug"}
    )
    tier_change(org=org, tier=enterprise)
    budget_set(org=org, monthly_budget_usd=Decimal("1.00"))
    Deployment.objects.filter(model__slug=EIGHT_B).update(
        price_input_per_mtok=0, price_output_per_mtok=1000
    )
    # Ten times cost × margin, with no margin on top: 4 tokens cost $0.04, 25 fit.
    ListPrice.objects.create(
        model=EIGHT_B,
        input_per_mtok_usd=0,
        output_per_mtok_usd=10_000,
        effective_from=timezone.now() - timedelta(minutes=1),
    )
    from routing.gateway.app import application

    application.forget_world()

    async def burst(n: int) -> list[int]:
        limit = asyncio.Semaphore(16)
        async with httpx.AsyncClient(timeout=60) as client:

            async def one() -> int:
                async with limit:
                    r = await client.post(
                        f"{mesh.gateway_url}/v1/chat/completions",
                        headers={"Authorization": f"Bearer {plaintext}"},
                        json=ASK,
                    )
                    return r.status_code

            return await asyncio.gather(*(one() for _ in range(n)))

    statuses = asyncio.run(burst(40))
    assert statuses.count(200) == 25
    assert statuses.count(429) == 15
    events = usage()
    assert {e.charge_usd for e in events} == {Decimal("0.04")}  # the drain's list price
    stored = sum((e.charge_usd for e in events), Decimal(0))
    assert stored == Decimal("1.00")
    month = limits.month_of(timezone.now())
    spend_key = limits.redis_keys(org_id=org.pk, key_id=key.pk, month=month)[2]
    assert int(redis.Redis.from_url(settings.REDIS_URL).get(spend_key)) == limits.to_nano(stored)


def test_a_key_budget_is_its_own_cap_below_the_org_s(mesh, org_key):
    _, key, plaintext = org_key
    Deployment.objects.filter(model__slug=EIGHT_B).update(
        price_input_per_mtok=0, price_output_per_mtok=1000
    )
    from routing.gateway.app import application

    application.forget_world()
    key_limits_set(api_key=key, monthly_budget_usd=Decimal("0.01"))  # Free: 5.2 m$ a request
    client = sdk(mesh, plaintext)
    client.chat.completions.create(**ASK)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**ASK)
    assert caught.value.code == "insufficient_quota"
    assert "API key's monthly budget: cap $0.01" in caught.value.message
    assert ApiKeyLimits.objects.get(api_key=key).monthly_budget_usd == Decimal("0.01")


def test_without_max_tokens_the_budget_reserves_what_the_backend_may_generate(mesh, org_key):
    # A server that is given no max_tokens generates to the end of its context, not to
    # our default: the reservation covers that, so the cap holds, and the refusal says
    # how to reserve less.
    _, key, plaintext = org_key
    Deployment.objects.filter(model__slug=EIGHT_B).update(
        price_input_per_mtok=0, price_output_per_mtok=1000
    )
    from routing.gateway.app import application

    application.forget_world()
    key_limits_set(api_key=key, monthly_budget_usd=Decimal("1.00"))  # Free: 5.2 m$ for 4
    client = sdk(mesh, plaintext)
    unbounded = {k: v for k, v in ASK.items() if k != "max_tokens"}
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**unbounded)
    assert caught.value.code == "insufficient_quota"
    assert "it sets no max_tokens" in caught.value.message
    assert "set max_tokens to reserve less" in caught.value.message
    client.chat.completions.create(**ASK)  # with max_tokens: its own worst case fits
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**{**ASK, "max_tokens": 400, "n": 4})
    assert caught.value.code == "insufficient_quota"  # $2.08 for four of 400: over $1
    assert "max_tokens" not in caught.value.message.split("which does not fit")[0]


def test_a_suspended_org_gets_403_and_a_paid_invoice_restores_it_at_once(mesh, org_key, usage):
    org, _, plaintext = org_key
    client = sdk(mesh, plaintext)
    client.chat.completions.create(**ASK)  # the key is cached, unsuspended, everywhere
    account = BillingAccount.objects.get(org=org)
    failed = timezone.now() - timedelta(days=account.tier.dunning_grace_days + 1)
    BillingAccount.objects.filter(pk=account.pk).update(payment_failed_at=failed)
    assert dunning.accounts_suspend_overdue() == [org.pk]

    def refused() -> bool:
        try:
            client.chat.completions.create(**ASK)
        except openai.PermissionDeniedError as exc:
            seen.append(exc)
            return True
        return False

    seen: list[openai.PermissionDeniedError] = []
    eventually(refused)
    assert seen[0].code == "account_suspended"
    assert "grace period" in seen[0].message
    before = len(usage())
    dunning.account_restore(account=BillingAccount.objects.get(org=org))

    def served() -> bool:
        try:
            client.chat.completions.create(**ASK)
        except openai.PermissionDeniedError:
            return False
        return True

    eventually(served)
    assert len(usage()) == before + 1  # refusals metered nothing
    assert UsageEvent.objects.filter(org=org).count() == before + 1


def overlaps(what: str = "overlaps") -> float:
    """How many requests this process has called a backend for beside their admission
    (`what="overlaps_refused"`: and then seen refused; `"deferrals"`: before it, to be
    admitted once served)."""
    name = f"tesseract_gateway_admission_{what}_total"
    return observability.REGISTRY.get_sample_value(name) or 0.0


@contextlib.contextmanager
def _a_and_b(mesh, plaintext: str) -> Iterator[tuple[openai.OpenAI, openai.OpenAI, int]]:
    """The SDK on gateway A (what it hears stays fresh, however slow this is) and on
    gateway B, early in a minute (the rate window; a new one if this one is late), and
    that minute."""
    gateway_a = _gateway_app(fresh_s=3600)
    gateway_b = _gateway_app()
    if time.time() % 60 > 40:
        time.sleep(60.1 - time.time() % 60)
    minute = int(time.time() // 60)
    with serve(gateway_a) as url_a, serve(gateway_b) as url_b:
        yield sdk(mesh, plaintext, url_a), sdk(mesh, plaintext, url_b), minute


@pytest.mark.parametrize("stream", [False, True])
def test_a_key_with_room_to_spare_calls_its_backend_beside_its_admission_and_a_refusal_cuts_it_off(
    mesh, org_key, usage, settings, stream
):
    """Gateway A last heard that the key had room; gateway B then used the rest of the
    minute. A's next request goes to its backend beside its admission, which refuses it:
    the client gets the 429, the backend call is cut off, nothing is metered, and A, now
    knowing, waits for the answer before calling any backend. (Non-streamed requests are
    admitted once served, with their record, unless deferring is off, as here: the next
    test.)"""
    settings.TESSERACT_ADMISSION_DEFER = False
    _, key, plaintext = org_key
    key_limits_set(api_key=key, requests_per_minute=10)
    # A stalled backend would hold an attempt for a minute: longer than the client waits.
    settings.TESSERACT_FIRST_TOKEN_TIMEOUT_S = 120
    with _a_and_b(mesh, plaintext) as (a, b, minute):
        before = overlaps()
        a.chat.completions.create(**ASK)
        assert overlaps() == before  # A had not heard of the key: it waited for the answer
        raw = a.chat.completions.with_raw_response.create(**ASK)
        assert overlaps() == before + 1  # 9 left, 8 after it: room to spare
        assert raw.headers["x-ratelimit-remaining-requests"] == "8"  # as exact as ever
        for _ in range(8):
            b.chat.completions.create(**ASK)
        stalled = mesh.deployments(EIGHT_B)
        for slug in stalled:  # a backend called now holds the call open, never answering
            mesh.fault(slug, stall_after_tokens=0)
        before, refused_before = overlaps(), overlaps("overlaps_refused")  # B's counted too
        error: openai.APIError | None = None
        try:  # served, if the minute turned: then the stalled backend holds it
            a.with_options(timeout=30).chat.completions.create(**ASK, stream=stream)
        except (openai.RateLimitError, openai.APITimeoutError) as exc:
            error = exc
        if int(time.time() // 60) != minute:
            pytest.skip("the minute turned during the test")
        assert isinstance(error, openai.RateLimitError), error  # not after a minute's wait
        assert overlaps() == before + 1  # A still believed 7 were left
        assert overlaps("overlaps_refused") == refused_before + 1
        assert error.code == "rate_limit_exceeded"
        assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
        for slug in stalled:
            mesh.wait_until_idle(mesh.simulator.deployments[slug], timeout_s=30)
            mesh.fault(slug, stall_after_tokens=None)
        with pytest.raises(openai.RateLimitError):
            a.chat.completions.create(**ASK)
        if int(time.time() // 60) != minute:
            pytest.skip("the minute turned during the test")
        assert overlaps() == before + 1  # now it knows: no backend is called first
    assert len(usage()) == 10  # the refused requests metered nothing


def test_a_served_request_with_room_to_spare_is_admitted_with_its_record_and_refused_meters_none(
    mesh, org_key, usage
):
    """Gateway A last heard that the key had room; gateway B then used the rest of the
    minute. A serves its next non-streamed request and then admits it in one step with
    its usage record: refused, the client gets the 429 (not the answer), nothing is
    metered, and A, now knowing, waits for the answer before calling any backend."""
    _, key, plaintext = org_key
    key_limits_set(api_key=key, requests_per_minute=10)
    with _a_and_b(mesh, plaintext) as (a, b, minute):
        before = overlaps("deferrals")
        a.chat.completions.create(**ASK)
        assert overlaps("deferrals") == before  # not heard of: it waited for the answer
        raw = a.chat.completions.with_raw_response.create(**ASK)
        assert overlaps("deferrals") == before + 1  # 9 left, 8 after it: room to spare
        assert raw.headers["x-ratelimit-remaining-requests"] == "8"  # as exact as ever
        assert raw.parse().choices[0].message.content
        for _ in range(8):
            b.chat.completions.create(**ASK)
        before, refused_before = overlaps("deferrals"), overlaps("deferrals_refused")
        with pytest.raises(openai.RateLimitError) as caught:
            a.chat.completions.create(**ASK)
        assert overlaps("deferrals") == before + 1  # A still believed 7 were left
        assert overlaps("deferrals_refused") == refused_before + 1
        assert caught.value.code == "rate_limit_exceeded"
        assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError):
            a.chat.completions.create(**ASK)
        assert overlaps("deferrals") == before + 1  # now it knows: it waits for the answer
        if int(time.time() // 60) != minute:
            pytest.skip("the minute turned during the test")
    assert len(usage()) == 10  # the refused requests metered nothing


def test_a_process_with_another_request_in_flight_waits_for_every_admission(mesh, org_key):
    """Under load, the requests that went ahead of their admission measured more CPU per
    request for all: a key with room to spare waits too, unless its process is idle."""
    _, _, plaintext = org_key
    app = _gateway_app(fresh_s=3600)
    with serve(app) as url:
        client = sdk(mesh, plaintext, url)
        client.chat.completions.create(**ASK)  # heard of: room to spare
        before = overlaps() + overlaps("deferrals")
        app.gateway.running += 1  # as if another request were in flight
        client.chat.completions.create(**ASK)
        client.chat.completions.create(**ASK, stream=True).close()
        assert overlaps() + overlaps("deferrals") == before
        app.gateway.running -= 1
        client.chat.completions.create(**ASK)
        assert overlaps() + overlaps("deferrals") == before + 1
        with pytest.raises(openai.NotFoundError):  # refused before its admission
            client.chat.completions.create(**{**ASK, "model": "no-such-model"})
        assert app.gateway.running == 0  # however each ended, none is left counted


@pytest.mark.parametrize("defer", [True, False], ids=["deferred", "overlapped"])
def test_a_client_that_hangs_up_beside_its_overlapped_admission_leaves_nothing_reserved(
    mesh, org_key, usage, settings, defer
):
    """Admitted beside the call, what it reserved comes back; admitted once served (with
    its record), it reserved nothing and is charged for what it was served: nothing."""
    settings.TESSERACT_ADMISSION_DEFER = defer
    org, key, plaintext = org_key
    budget_set(org=org, monthly_budget_usd=Decimal("5.00"))
    gateway = _gateway_app(fresh_s=3600)
    with serve(gateway) as url:
        sdk(mesh, plaintext, url).chat.completions.create(**ASK)  # heard of: room to spare
        stalled = mesh.deployments(EIGHT_B)
        for slug in stalled:
            mesh.fault(slug, stall_after_tokens=0)
        before = overlaps() + overlaps("deferrals")
        with pytest.raises(httpx.ReadTimeout):  # the client gives up, the backend silent
            httpx.post(
                f"{url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {plaintext}"},
                json=ASK,
                timeout=httpx.Timeout(30, read=1.0),
            )
        assert overlaps() + overlaps("deferrals") == before + 1
        for slug in stalled:
            mesh.wait_until_idle(mesh.simulator.deployments[slug], timeout_s=30)
        events: list[UsageEvent] = []

        def both_recorded() -> bool:
            events[:] = usage()
            return len(events) == 2

        eventually(both_recorded)
    assert [e.status for e in events] == ["ok", "cancelled"]
    assert events[1].output_tokens == 0
    month = limits.month_of(timezone.now())
    spend_key = limits.redis_keys(org_id=org.pk, key_id=key.pk, month=month)[2]
    ledger = int(redis.Redis.from_url(settings.REDIS_URL).get(spend_key))
    stored = sum((e.charge_usd for e in events), Decimal(0))
    assert ledger == limits.to_nano(stored)  # the hung-up request's reservation came back
