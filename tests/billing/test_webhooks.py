"""Stripe webhooks and dunning: signed, handled once, suspend after grace, restore at once."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis
from django.conf import settings as django_settings
from django.contrib import admin
from django.core import mail
from django.test import Client

from accounts import keycache
from accounts import services as account_services
from billing import dunning, selectors
from billing.models import BillingAccount, Invoice, SlaTier, StripeEvent

SECRET = "whsec_test_tesseract"
URL = "/billing/stripe/webhook"


@pytest.fixture
def webhooks_on(settings):
    settings.STRIPE_WEBHOOK_SECRET = SECRET


@pytest.fixture
def acme_customer(acme):
    BillingAccount.objects.filter(org=acme).update(stripe_customer_id="cus_acme")
    return acme


@pytest.fixture
def open_invoice(acme_customer):
    return Invoice.objects.create(
        org=acme_customer,
        number="TSR-202603-000001",
        period_start=datetime(2026, 3, 1, tzinfo=UTC),
        period_end=datetime(2026, 4, 1, tzinfo=UTC),
        tier=SlaTier.objects.get(slug="free"),
        subtotal_usd=Decimal("12.34"),
        total_usd=Decimal("12.34"),
        stripe_invoice_id="in_acme_march",
    )


def event(kind: str, obj: dict, *, event_id: str | None = None, created: int | None = None) -> dict:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:16]}",
        "object": "event",
        "type": kind,
        "created": created or int(time.time()),
        "data": {"object": obj},
    }


def deliver(payload: dict, *, secret: str = SECRET, signature: str | None = None):
    body = json.dumps(payload).encode()
    ts = int(time.time())
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return Client().post(
        URL,
        data=body,
        content_type="application/json",
        headers={"Stripe-Signature": signature or f"t={ts},v1={mac}"},
    )


def failed_payment(**kw) -> dict:
    obj = {
        "id": "in_acme_march",
        "object": "invoice",
        "customer": "cus_acme",
        "metadata": {"tesseract_invoice": "TSR-202603-000001"},
    }
    return event("invoice.payment_failed", obj, **kw)


def paid(**kw) -> dict:
    obj = {
        "id": "in_acme_march",
        "object": "invoice",
        "customer": "cus_acme",
        "status": "paid",
        "metadata": {},
    }
    return event("invoice.paid", obj, **kw)


def test_a_webhook_with_a_bad_signature_is_refused_and_changes_nothing(webhooks_on, open_invoice):
    assert deliver(failed_payment(), secret="whsec_someone_else").status_code == 400
    assert deliver(failed_payment(), signature="t=1,v1=00").status_code == 400
    assert Client().post(URL, data=b"{}", content_type="application/json").status_code == 400
    assert StripeEvent.objects.count() == 0
    assert BillingAccount.objects.get(org=open_invoice.org).payment_failed_at is None


def test_webhooks_are_off_without_a_secret(open_invoice, settings):
    settings.STRIPE_WEBHOOK_SECRET = ""
    assert deliver(failed_payment()).status_code == 404


def test_a_failed_payment_warns_the_owners_and_starts_dunning(webhooks_on, open_invoice, alice):
    response = deliver(failed_payment())
    assert response.status_code == 200
    assert response.json()["handled"] is True
    account = BillingAccount.objects.get(org=open_invoice.org)
    assert account.payment_failed_at is not None
    assert account.suspended_at is None
    [warning] = mail.outbox
    assert warning.to == [alice.email]  # the owner; bob (a developer) is not billing
    assert "TSR-202603-000001" in warning.body
    assert StripeEvent.objects.get().outcome.startswith("payment of TSR-202603-000001 failed")


def test_a_replayed_event_changes_nothing(webhooks_on, open_invoice):
    payload = failed_payment(event_id="evt_once")
    deliver(payload)
    first = BillingAccount.objects.get(org=open_invoice.org).payment_failed_at
    replay = deliver(payload)
    assert replay.status_code == 200
    assert replay.json()["handled"] is False
    assert len(mail.outbox) == 1
    assert BillingAccount.objects.get(org=open_invoice.org).payment_failed_at == first
    assert StripeEvent.objects.filter(event_id="evt_once").count() == 1


def test_the_org_is_suspended_after_the_grace_period_and_a_paid_invoice_restores_it_at_once(
    webhooks_on, open_invoice, django_capture_on_commit_callbacks
):
    org = open_invoice.org
    key = account_services.api_key_create(org=org, name="ci").api_key
    failed_at = datetime(2026, 4, 2, 8, tzinfo=UTC)
    deliver(failed_payment(created=int(failed_at.timestamp())))
    grace = SlaTier.objects.get(slug="free").dunning_grace_days

    assert (
        dunning.accounts_suspend_overdue(
            now=failed_at + timedelta(days=grace) - timedelta(seconds=1)
        )
        == []
    )
    assert not selectors.org_is_suspended(org_id=org.pk)

    listener = redis.Redis.from_url(django_settings.REDIS_URL).pubsub(
        ignore_subscribe_messages=True
    )
    listener.subscribe(keycache.CHANNEL)
    with django_capture_on_commit_callbacks(execute=True):
        assert dunning.accounts_suspend_overdue(now=failed_at + timedelta(days=grace)) == [org.pk]
    assert selectors.org_is_suspended(org_id=org.pk)
    assert "grace period" in BillingAccount.objects.get(org=org).suspended_reason
    # Every gateway is told to reload the org's keys (and so to see the suspension).
    assert _next_message(listener) == key.lookup
    assert dunning.accounts_suspend_overdue(now=failed_at + timedelta(days=grace + 1)) == []

    with django_capture_on_commit_callbacks(execute=True):
        assert (
            deliver(paid()).json()["outcome"] == "invoice TSR-202603-000001 paid; suspension lifted"
        )
    assert not selectors.org_is_suspended(org_id=org.pk)
    assert Invoice.objects.get(pk=open_invoice.pk).status == Invoice.Status.PAID
    assert BillingAccount.objects.get(org=org).payment_failed_at is None
    assert _next_message(listener) == key.lookup
    listener.close()


def _next_message(pubsub, timeout: float = 10.0) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message and message["type"] == "message":
            return message["data"].decode()
    return None


def test_subscription_changes_move_the_org_between_tiers(webhooks_on, acme_customer):
    SlaTier.objects.filter(slug="enterprise").update(stripe_plan_id="tesseract-enterprise")
    updated = {
        "id": "sub_1",
        "object": "subscription",
        "customer": "cus_acme",
        "items": {"data": [{"plan": {"id": "tesseract-enterprise"}}]},
    }
    deliver(event("customer.subscription.updated", updated))
    assert selectors.billing_account(org=acme_customer).tier.slug == "enterprise"
    deliver(event("customer.subscription.deleted", {**updated, "status": "canceled"}))
    assert selectors.billing_account(org=acme_customer).tier.slug == "free"
    outcomes = list(
        StripeEvent.objects.order_by("received_at", "pk").values_list("outcome", flat=True)
    )
    assert outcomes == [
        "tier changed to Enterprise",
        "subscription cancelled: moved to the Free tier",
    ]


def test_an_event_for_an_unknown_customer_is_recorded_and_ignored(webhooks_on, acme_customer):
    obj = {"id": "in_x", "object": "invoice", "customer": "cus_nobody"}
    assert deliver(event("invoice.payment_failed", obj)).status_code == 200
    assert StripeEvent.objects.get().outcome == "ignored: no organization has this customer"
    assert mail.outbox == []


def test_every_outcome_is_visible_to_operators_in_the_admin():
    assert admin.site.is_registered(StripeEvent)
