"""A private cluster's tokens are not billed at provider prices: the tier's platform fee
(per request, plus per 1M tokens) applies, fixed when the request completes, and the
invoice states it on lines of their own."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
from django.conf import settings

from accounts import services
from backends.demo import demo_world_load
from backends.models import Deployment
from backends.snapshot import load_world
from billing import invoicing, limits, pricebook, rating, subscriptions
from billing.models import ListPrice, SlaTier, UsageEvent
from routing.gateway.admission import Admission, Ticket
from tests.backends.private import private_deployment
from tests.billing.money import record, usage

D = Decimal
FEE = rating.PlatformFee(per_request=D("0.0001"), per_mtok=D("0.05"))


def test_a_private_deployment_is_charged_the_platform_fee_not_the_provider_cost():
    book = rating.PriceBook(
        costs={"public": rating.Price(D("1"), D("2")), "mine": rating.Price(D("0"), D("0"))},
        margins={1: [(0.0, D("20"))]},
        list_prices={"m": [(0.0, rating.Price(D("5"), D("7")))]},  # a list price: not for BYO
        private=frozenset({"mine"}),
        fees={1: [(0.0, FEE)]},
    )
    charged = book.rate(
        org_id=1, deployment="mine", model="m", at=10.0, input_tokens=1000, output_tokens=200
    )
    assert charged.basis == "platform-fee"
    assert charged.amount == D("0.0001") + D("1200") * D("0.05") / 1_000_000
    assert charged.per_request == D("0.0001")
    assert charged.price == rating.Price(D("0.05"), D("0.05"))
    public = book.rate(
        org_id=1, deployment="public", model="m", at=10.0, input_tokens=1000, output_tokens=200
    )
    assert (public.basis, public.per_request) == ("list", None)


def test_the_fee_in_force_when_the_request_completes_applies_and_nothing_served_is_free():
    t0 = 1_000_000.0
    later = rating.PlatformFee(D("0.00005"), D("0.02"))
    book = rating.PriceBook(private=frozenset({"mine"}), fees={1: [(t0, FEE), (t0 + 60, later)]})

    def rate(at: float, tokens: int = 10**6) -> rating.Charge:
        return book.rate(
            org_id=1, deployment="mine", model="m", at=at, input_tokens=tokens, output_tokens=0
        )

    assert rate(t0 + 59).amount == D("0.0501")
    assert rate(t0 + 60).amount == D("0.02005")
    assert rate(t0 + 60, tokens=0).amount == 0


# --------------------------------------------------------------------------- drain, invoice


@pytest.fixture
def deployments(acme):
    demo_world_load()
    public = (
        Deployment.objects.select_related("model", "cluster__region", "chip")
        .filter(price_input_per_mtok__gt=0)
        .order_by("slug")
        .first()
    )
    return public, private_deployment(acme, public, region="westeurope", name="Basement")


def test_the_drain_stores_the_platform_fee_on_a_private_cluster_s_requests(acme, deployments):
    public, mine = deployments
    now = datetime.now(UTC)
    subscriptions.tier_change(org=acme, tier=SlaTier.objects.get(slug="pro"), at=now)
    ListPrice.objects.create(
        model=mine.model.slug, input_per_mtok_usd=D("9"), output_per_mtok_usd=D("9")
    )
    later = now + timedelta(seconds=1)
    record(
        usage(acme, at=later, deployment=mine, request_id="mine"),
        usage(acme, at=later, deployment=public, request_id="public"),
    )
    mine_event = UsageEvent.objects.get(request_id="mine")
    assert mine_event.fee_per_request_usd == D("0.0001")  # Pro's
    assert mine_event.price_input_per_mtok_usd == mine_event.price_output_per_mtok_usd == D("0.05")
    assert mine_event.charge_usd == D("0.0001") + D("1200") * D("0.05") / 10**6
    public_event = UsageEvent.objects.get(request_id="public")
    assert public_event.fee_per_request_usd is None
    assert public_event.price_input_per_mtok_usd == D("9")  # the list price, as before


def test_the_invoice_bills_private_usage_on_its_own_line_at_the_platform_fee(acme, deployments):
    public, mine = deployments
    start = datetime(2026, 3, 1, tzinfo=UTC)
    subscriptions.tier_change(org=acme, tier=SlaTier.objects.get(slug="pro"), at=start)
    at = start + timedelta(days=3)
    record(
        *[usage(acme, at=at, deployment=mine, output_tokens=0) for _ in range(100)],
        usage(acme, at=at, deployment=public),
    )
    draft = invoicing.invoice_draft(org=acme, year=2026, month=3)
    usage_lines = [ln for ln in draft.lines if ln.kind == "usage"]
    assert len(usage_lines) == 2
    (private_line,) = [ln for ln in usage_lines if "private cluster" in ln.description]
    # 100 requests × $0.0001 + 100,000 tokens × $0.05 / 1M = $0.01 + $0.005
    assert private_line.exact_usd == D("0.015")
    assert private_line.amount_usd == D("0.02")  # rounded once, half-up, on the line
    assert private_line.requests == 100
    assert "$0.0001 a request" in private_line.description
    assert "$0.05 per 1M tokens" in private_line.description
    stored = sum(e.charge_usd for e in UsageEvent.objects.filter(deployment=mine.slug))
    assert private_line.exact_usd == stored


# --------------------------------------------------------------------------- the gateway


@pytest.mark.parametrize("served_by", ["private", "public", "listed"])
def test_the_gateway_settles_a_request_at_the_charge_the_drain_stores(acme, deployments, served_by):
    """The live spend counter and the stored charges must agree to the nano-dollar: the
    settlement rates a request by the drain's rule, the platform fee on a private cluster,
    the list price in force where an operator set one."""
    public, mine = deployments
    served = mine if served_by == "private" else public
    subscriptions.tier_change(org=acme, tier=SlaTier.objects.get(slug="pro"))
    if served_by == "listed":
        ListPrice.objects.create(
            model=public.model.slug, input_per_mtok_usd=D("0.123457"), output_per_mtok_usd=D("9")
        )
    world = load_world()
    key = services.api_key_create(org=acme, name="k").api_key
    lim = limits.load(key_id=key.pk, org_id=acme.pk)
    at = datetime.now(UTC) + timedelta(seconds=1)
    done = usage(acme, at=at, deployment=served, input_tokens=1234, output_tokens=567)
    verdict = limits.Verdict(limits.OK, 0, -1, -1, -1, -1, 0, 0, 0, True, True)
    ticket = Ticket(("a", "b", "c", "d"), verdict, lim, 2000, 10**9, [], world)
    admission = Admission(aioredis.Redis.from_url(settings.REDIS_URL), enabled=True)

    # Priced at admission first, as a request is: the settlement reads what it kept.
    tokens = {"input_tokens": 1234, "output_tokens": 567}
    admission.tariffs.worst(
        world.endpoints, lim, [served.slug], time.time(), time.time() + 60, **tokens
    )
    settled = admission.settlement(ticket, world.endpoints[served.slug], done)

    assert settled is not None
    actual_nano = settled[2][5]
    stored = pricebook.rate_record(pricebook.for_records([done]), done)
    assert (
        stored.basis == {"private": "platform-fee", "public": "margin", "listed": "list"}[served_by]
    )
    assert stored.amount > 0
    assert actual_nano == limits.to_nano(stored.amount)
