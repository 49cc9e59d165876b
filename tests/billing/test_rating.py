"""Rating: Decimal end to end, fixed when the request completes, rounded only on invoices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from backends.demo import demo_world_load
from backends.models import Deployment
from billing import rating, subscriptions
from billing.models import ListPrice, SlaTier, UsageEvent
from tests.billing.money import record, usage

D = Decimal


def test_our_price_is_the_cost_plus_the_margin_stated_to_a_millionth():
    price = rating.with_margin(rating.Price(D("0.15"), D("0.6")), D("20"))
    assert price == rating.Price(D("0.180000"), D("0.720000"))
    odd = rating.with_margin(rating.Price(D("0.0333"), D("1")), D("12.5"))
    assert odd.input_per_mtok == D("0.037463")  # 0.0374625 rounds half-up


def test_a_charge_keeps_every_digit():
    price = rating.Price(D("0.180000"), D("0.720000"))
    assert rating.charge(price, 7, 3) == D("0.00000342")
    assert rating.charge(price, 1, 0) == D("0.00000018")


@pytest.mark.parametrize(
    ("amount", "cents"),
    [
        ("0.005", "0.01"),
        ("0.004999999999", "0.00"),
        ("1.234999", "1.23"),
        ("1.235", "1.24"),
        ("-0.005", "-0.01"),
        ("2.675", "2.68"),  # a float would say 2.67
    ],
)
def test_rounding_is_half_up_to_the_cent(amount, cents):
    assert rating.round_cents(D(amount)) == D(cents)


def test_the_margin_in_force_at_completion_applies():
    t0 = 1_000_000.0
    book = rating.PriceBook(
        costs={"d": rating.Price(D("1"), D("2"))},
        margins={1: [(t0, D("30")), (t0 + 100, D("20"))]},
    )
    before = book.rate(
        org_id=1, deployment="d", model="m", at=t0 + 99.9, input_tokens=10**6, output_tokens=0
    )
    after = book.rate(
        org_id=1, deployment="d", model="m", at=t0 + 100, input_tokens=10**6, output_tokens=0
    )
    assert (before.amount, after.amount) == (D("1.3"), D("1.2"))
    # Usage of the instant before the account's first row still gets its first tier.
    early = book.rate(
        org_id=1, deployment="d", model="m", at=t0 - 1, input_tokens=10**6, output_tokens=0
    )
    assert early.amount == D("1.3")


def test_a_list_price_replaces_cost_and_margin_from_when_it_is_set():
    t0 = 1_000_000.0
    book = rating.PriceBook(
        costs={"d": rating.Price(D("1"), D("2"))},
        margins={1: [(0.0, D("30"))]},
        list_prices={"m": [(t0, rating.Price(D("5"), D("7")))]},
    )
    assert book.rate(
        org_id=1, deployment="d", model="m", at=t0 - 1, input_tokens=10**6, output_tokens=10**6
    ).amount == D("3.9")
    listed = book.rate(
        org_id=1, deployment="d", model="m", at=t0, input_tokens=10**6, output_tokens=10**6
    )
    assert (listed.amount, listed.basis) == (D("12"), "list")


def test_nothing_served_is_charged_nothing():
    book = rating.PriceBook(costs={"d": rating.Price(D("1"), D("2"))})
    charged = book.rate(org_id=1, deployment="", model="m", at=0.0, input_tokens=0, output_tokens=0)
    assert (charged.amount, charged.price) == (D(0), None)


# --------------------------------------------------------------------------- in the drain


@pytest.fixture
def world(db):
    demo_world_load()


@pytest.fixture
def deployment(world) -> Deployment:
    return (
        Deployment.objects.select_related("model", "cluster__region", "chip")
        .filter(price_input_per_mtok__gt=0)
        .order_by("slug")
        .first()
    )


def test_the_drain_stores_each_request_s_charge_at_the_tier_price_of_its_completion(
    acme, deployment
):
    now = datetime.now(UTC)
    record(usage(acme, at=now + timedelta(minutes=1), deployment=deployment, request_id="early"))
    subscriptions.tier_change(
        org=acme, tier=SlaTier.objects.get(slug="pro"), at=now + timedelta(minutes=5)
    )
    record(usage(acme, at=now + timedelta(minutes=10), deployment=deployment, request_id="late"))

    early, late = (
        UsageEvent.objects.get(request_id="early"),
        UsageEvent.objects.get(request_id="late"),
    )
    cost_in, cost_out = deployment.price_input_per_mtok, deployment.price_output_per_mtok
    assert early.price_input_per_mtok_usd == (cost_in * D("1.30")).quantize(D("1e-6"))
    assert late.price_output_per_mtok_usd == (cost_out * D("1.20")).quantize(D("1e-6"))
    assert (
        late.charge_usd
        == (1000 * late.price_input_per_mtok_usd + 200 * late.price_output_per_mtok_usd) / 10**6
    )
    assert early.charge_usd > late.charge_usd > early.cost_usd


def test_a_later_price_change_never_rewrites_a_stored_charge(acme, deployment):
    record(usage(acme, at=datetime.now(UTC), deployment=deployment, request_id="r"))
    before = UsageEvent.objects.get(request_id="r").charge_usd
    SlaTier.objects.filter(slug="free").update(price_margin_pct=D("90"))
    ListPrice.objects.create(
        model=deployment.model.slug, input_per_mtok_usd=D("99"), output_per_mtok_usd=D("99")
    )
    record(usage(acme, at=datetime.now(UTC), deployment=deployment, request_id="r"))  # replayed
    assert UsageEvent.objects.get(request_id="r").charge_usd == before


def test_a_failed_or_cancelled_request_is_charged_only_for_the_tokens_produced(acme, deployment):
    now = datetime.now(UTC)
    record(
        usage(
            acme,
            at=now,
            deployment=deployment,
            status="error",
            input_tokens=0,
            output_tokens=0,
            request_id="failed-early",
        ),
        usage(
            acme,
            at=now,
            deployment=deployment,
            status="cancelled",
            input_tokens=500,
            output_tokens=17,
            request_id="cancelled",
        ),
    )
    assert UsageEvent.objects.get(request_id="failed-early").charge_usd == 0
    cancelled = UsageEvent.objects.get(request_id="cancelled")
    assert cancelled.charge_usd == rating.charge(
        rating.Price(cancelled.price_input_per_mtok_usd, cancelled.price_output_per_mtok_usd),
        500,
        17,
    )
    assert cancelled.charge_usd > 0


def test_a_deployment_gone_from_the_catalog_is_rated_from_the_gateway_s_recorded_cost(
    acme, deployment
):
    gone = usage(acme, at=datetime.now(UTC), deployment=deployment, request_id="gone")
    import msgspec

    record(msgspec.structs.replace(gone, deployment="retired-deployment"))
    event = UsageEvent.objects.get(request_id="gone")
    assert event.price_input_per_mtok_usd is None
    assert event.charge_usd == (event.cost_usd * D("1.3")).quantize(D("1e-12"))
