"""Stripe, with the official SDK against localstripe on loopback (and, where localstripe
lacks a call, the SDK's recorded request checked at the HTTP boundary)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
import stripe

from backends.demo import demo_world_load
from backends.models import Deployment
from billing import invoicing, stripe_client, stripe_sync, subscriptions
from billing.models import BillingAccount, Invoice, SlaTier, StripeEvent, StripeSyncRecord
from tests.billing.money import record, usage
from tests.billing.stripe_server import SECRET_KEY, Recorder, localstripe
from tests.waiting import eventually

MARCH = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="session")
def localstripe_url():
    with localstripe() as url:
        yield url


@pytest.fixture
def stripe_on(settings, localstripe_url, monkeypatch):
    settings.STRIPE_SECRET_KEY = SECRET_KEY
    settings.STRIPE_API_BASE = localstripe_url
    settings.STRIPE_WEBHOOK_SECRET = "whsec_test_tesseract"
    recorder = Recorder()
    monkeypatch.setattr(stripe_client, "http_client", recorder)
    monkeypatch.setattr(stripe_client, "MAX_NETWORK_RETRIES", 3)
    yield recorder
    recorder.close()


def stripe_get(url: str, path: str, **params) -> dict:
    response = httpx.get(f"{url}{path}", params=params, auth=(SECRET_KEY, ""))
    response.raise_for_status()
    return response.json()


@pytest.fixture
def acme_march(acme, db):
    """Acme on Pro, a few requests in March 2026, the month closed."""
    demo_world_load()
    deployment = (
        Deployment.objects.select_related("model", "cluster__region", "chip")
        .filter(price_input_per_mtok__gt=0)
        .order_by("slug")
        .first()
    )
    subscriptions.tier_change(
        org=acme, tier=SlaTier.objects.get(slug="pro"), at=MARCH - timedelta(days=2)
    )
    record(
        *(
            usage(
                acme,
                at=MARCH + timedelta(hours=h),
                deployment=deployment,
                input_tokens=120_000 + h,
                output_tokens=30_000,
            )
            for h in range(50)
        ),
        usage(
            acme,
            at=MARCH + timedelta(days=3),
            deployment=deployment,
            status="error",
            output_tokens=10,
        ),
    )
    invoice, _ = invoicing.invoice_close_month(org=acme, year=2026, month=3)
    assert invoice is not None
    return invoice


def test_the_pinned_api_version_is_the_one_the_pinned_sdk_speaks():
    assert stripe.api_version == stripe_client.API_VERSION


def test_without_a_key_billing_is_local_only(acme_march, settings):
    settings.STRIPE_SECRET_KEY = ""
    assert not stripe_client.enabled()
    assert stripe_sync.invoice_push(invoice=acme_march).outcome == "skipped"
    assert stripe_sync.stripe_reconcile() == []


def test_setup_creates_one_customer_with_the_org_id_and_a_subscription_to_its_tier(
    acme, stripe_on, localstripe_url
):
    stripe_sync.stripe_setup(org=acme)
    stripe_sync.stripe_setup(org=acme)  # twice: nothing more
    account = BillingAccount.objects.get(org=acme)
    customer = stripe_get(localstripe_url, f"/v1/customers/{account.stripe_customer_id}")
    assert customer["metadata"] == {"tesseract_org_id": str(acme.pk)}
    assert customer["email"] == "alice@example.com"
    subscription = stripe_get(
        localstripe_url, f"/v1/subscriptions/{account.stripe_subscription_id}"
    )
    assert subscription["items"]["data"][0]["plan"]["id"] == "tesseract-free"
    assert len(stripe_on.posts("/v1/customers")) == 1
    assert all(s.headers["Stripe-Version"] == stripe_client.API_VERSION for s in stripe_on.sent)


def test_a_closed_invoice_is_pushed_and_stripe_agrees_to_the_cent(
    acme_march, stripe_on, localstripe_url
):
    result = stripe_sync.invoice_push(invoice=acme_march)
    assert result.outcome == "agreed"
    acme_march.refresh_from_db()
    theirs = stripe_get(localstripe_url, f"/v1/invoices/{acme_march.stripe_invoice_id}")
    assert theirs["total"] == int(acme_march.total_usd * 100)
    lines = {
        int(ln["metadata"]["line"]): ln["amount"]
        for ln in theirs["lines"]["data"]
        if "line" in ln["metadata"]  # localstripe adds the $0 subscription line itself
    }
    assert lines == {ln.position: int(ln.amount_usd * 100) for ln in acme_march.lines.all()}
    # localstripe drops an invoice's metadata: the request carried it.
    [created] = stripe_on.posts("/v1/invoices")[:1]
    assert created.params["metadata[tesseract_invoice]"] == acme_march.number
    assert created.params["pending_invoice_items_behavior"] == "include"
    # Idempotency keys name the org, the period and the line.
    keys = [s.idempotency_key for s in stripe_on.posts("/v1/invoiceitems")]
    assert keys == [f"tesseract-{acme_march.org_id}-202603-line-{p}" for p in sorted(lines)]
    # finalize_invoice (not in localstripe): the SDK's request, at the HTTP boundary.
    [finalize] = stripe_on.posts(f"/v1/invoices/{acme_march.stripe_invoice_id}/finalize")
    assert finalize.params == {"auto_advance": "true"}
    assert finalize.idempotency_key == f"tesseract-{acme_march.org_id}-202603-finalize"


def test_pushing_twice_creates_nothing_twice(acme_march, stripe_on, localstripe_url):
    stripe_sync.invoice_push(invoice=acme_march)
    stripe_sync.invoice_push(invoice=acme_march)
    customer = BillingAccount.objects.get(org=acme_march.org).stripe_customer_id
    invoices = stripe_get(localstripe_url, "/v1/invoices", customer=customer)["data"]
    # (the other one is the $0 subscription's own first invoice)
    assert [i["total"] for i in invoices if i["total"]] == [int(acme_march.total_usd * 100)]
    assert len([s for s in stripe_on.sent if (s.method, s.path) == ("post", "/v1/invoices")]) == 1
    assert len(stripe_on.posts("/v1/invoiceitems")) == acme_march.lines.count()


def test_a_failed_call_is_retried_with_the_same_idempotency_key(
    acme_march, stripe_on, localstripe_url
):
    stripe_on.fail_next[("post", "/v1/invoiceitems")] = 1
    assert stripe_sync.invoice_push(invoice=acme_march).outcome == "agreed"
    first, second = stripe_on.posts("/v1/invoiceitems")[:2]
    assert first.idempotency_key == second.idempotency_key
    assert first.params == second.params


def test_reconciliation_repairs_an_invoice_stripe_lost_and_records_what_it_found(
    acme_march, stripe_on, localstripe_url
):
    stripe_sync.invoice_push(invoice=acme_march)
    acme_march.refresh_from_db()
    lost = acme_march.stripe_invoice_id
    httpx.delete(f"{localstripe_url}/v1/invoices/{lost}", auth=(SECRET_KEY, "")).raise_for_status()

    [result] = stripe_sync.stripe_reconcile()
    assert (result.outcome, result.detail["found"], result.detail["push"]) == (
        "repaired",
        "gone",
        "agreed",
    )
    acme_march.refresh_from_db()
    assert acme_march.stripe_invoice_id not in ("", lost)
    theirs = stripe_get(localstripe_url, f"/v1/invoices/{acme_march.stripe_invoice_id}")
    assert theirs["total"] == int(acme_march.total_usd * 100)
    # The second run finds nothing to repair.
    [again] = stripe_sync.stripe_reconcile()
    assert again.outcome == "agreed"
    assert StripeSyncRecord.objects.for_org(acme_march.org).filter(action="reconcile").count() == 2


def test_reconciliation_pushes_an_invoice_that_never_reached_stripe(acme_march, stripe_on):
    [result] = stripe_sync.stripe_reconcile()
    assert (result.outcome, result.detail["found"]) == ("repaired", "missing")
    assert Invoice.objects.get(pk=acme_march.pk).stripe_invoice_id.startswith("in_")


def test_a_sub_cent_amount_never_reaches_stripe():
    assert stripe_client.cents(Decimal("12.34")) == 1234
    with pytest.raises(ValueError, match="cents"):
        stripe_client.cents(Decimal("0.001"))


def test_the_subscription_follows_the_org_s_tier(acme, stripe_on, localstripe_url):
    stripe_sync.stripe_setup(org=acme)
    subscriptions.tier_change(org=acme, tier=SlaTier.objects.get(slug="enterprise"))
    stripe_sync.stripe_reconcile()  # the daily run checks every subscription
    account = BillingAccount.objects.get(org=acme)
    subscription = stripe_get(
        localstripe_url, f"/v1/subscriptions/{account.stripe_subscription_id}"
    )
    assert subscription["items"]["data"][0]["plan"]["id"] == "tesseract-enterprise"
    assert StripeSyncRecord.objects.for_org(acme).filter(outcome="plan changed").count() == 1


# --------------------------------------------------------------------------- end to end


def _default_card(url: str, customer: str, magic: str) -> None:
    auth = (SECRET_KEY, "")
    pm = httpx.post(
        f"{url}/v1/payment_methods/{magic}/attach", data={"customer": customer}, auth=auth
    )
    pm.raise_for_status()
    httpx.post(
        f"{url}/v1/customers/{customer}",
        data={"invoice_settings[default_payment_method]": pm.json()["id"]},
        auth=auth,
    ).raise_for_status()


@pytest.mark.django_db(transaction=True)
def test_stripe_s_signed_payment_webhook_reaches_a_live_server_and_restores_a_suspended_org(
    acme_march, stripe_on, localstripe_url, live_server, settings
):
    """localstripe charges the card and delivers its signed webhook to a live server.

    (localstripe reports a declined card on an invoice's /pay silently, with no
    invoice.payment_failed event: that path is tested with signed payloads in
    test_webhooks.py.)"""
    httpx.post(
        f"{localstripe_url}/_config/webhooks/tesseract",
        json={
            "url": f"{live_server.url}/billing/stripe/webhook",
            "secret": settings.STRIPE_WEBHOOK_SECRET,
            "events": ["invoice.payment_failed", "invoice.payment_succeeded"],
        },
    ).raise_for_status()
    stripe_sync.invoice_push(invoice=acme_march)
    acme_march.refresh_from_db()
    account = BillingAccount.objects.get(org=acme_march.org)
    BillingAccount.objects.filter(pk=account.pk).update(
        payment_failed_at=MARCH + timedelta(days=32), suspended_at=MARCH + timedelta(days=40)
    )

    _default_card(localstripe_url, account.stripe_customer_id, "pm_card_visa")
    paid = httpx.post(
        f"{localstripe_url}/v1/invoices/{acme_march.stripe_invoice_id}/pay", auth=(SECRET_KEY, "")
    )
    assert paid.json()["status"] == "paid"
    eventually(lambda: Invoice.objects.get(pk=acme_march.pk).status == Invoice.Status.PAID)
    account.refresh_from_db()
    assert (account.payment_failed_at, account.suspended_at) == (None, None)
    [event] = StripeEvent.objects.filter(type="invoice.payment_succeeded")
    assert event.outcome == f"invoice {acme_march.number} paid; suspension lifted"
