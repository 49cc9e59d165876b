"""Stripe: the only module that imports `stripe`. Stripe collects; Tesseract rates.

What goes to Stripe, and why this way:

* a **customer** per organization (its id in `metadata.tesseract_org_id`);
* a **subscription** to the organization's tier, on a $0 monthly plan named after the
  tier: it carries the plan (Stripe's portal and the `customer.subscription.*` webhooks
  speak of it) but charges nothing by itself;
* each closed month's **invoice**, line by line, as **invoice items** of the exact
  amounts Tesseract computed (usage per model × region, the base fee, negative SLA
  credits), then one invoice that includes them, finalized. The local invoice and
  Stripe's therefore agree to the cent by construction, and the reconciliation task
  checks that they still do.

Why invoice items rather than usage-based prices: Stripe's API removed legacy metered
prices and usage records (2025-03-31), and its replacement, Billing Meters, would make
Stripe rate the usage again from raw quantities, with its own rounding (per unit and
per line) and its own price table, to be kept in step with ours. Tesseract already
rates every request once, with `Decimal` and a documented rounding rule, and its
invoice has lines Stripe would not compute (SLA credits from measured attainment, the
tier's base fee). Pushing the amounts keeps one source of truth for money.

Every write carries an **idempotency key** derived from organization, period and line
(`tesseract-<org>-<YYYYMM>-<what>`), and is retried by the SDK with exponential
backoff (`max_network_retries`); besides, every push first looks at what Stripe
already has (items by metadata, invoices by metadata), so a retry days later, when the
keys have expired, still creates nothing twice.

Without `STRIPE_SECRET_KEY` billing runs local-only: nothing here is called.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import stripe
from django.conf import settings

logger = logging.getLogger(__name__)

#: Pinned: the version the pinned SDK was generated for (a test keeps them equal).
API_VERSION = "2026-10-28.endive"
MAX_NETWORK_RETRIES = 3

StripeError = stripe.StripeError
SignatureVerificationError = stripe.SignatureVerificationError


def enabled() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


#: Tests install an HTTP client here (one that records what the SDK sends).
http_client: Any = None


def client() -> stripe.StripeClient:
    if not enabled():
        raise RuntimeError("Stripe is not configured (STRIPE_SECRET_KEY): billing is local-only")
    base = {"api": settings.STRIPE_API_BASE} if settings.STRIPE_API_BASE else None
    return stripe.StripeClient(
        str(settings.STRIPE_SECRET_KEY),
        stripe_version=API_VERSION,
        base_addresses=base,  # type: ignore[arg-type]
        max_network_retries=MAX_NETWORK_RETRIES,
        http_client=http_client,
    )


def cents(amount: Decimal) -> int:
    """Dollars (already rounded to the cent) to Stripe's integer cents; refuses sub-cents."""
    value = amount * 100
    if value != value.to_integral_value():
        raise ValueError(f"{amount} is not a whole number of cents")
    return int(value)


def _opts(key: str) -> Any:
    return {"idempotency_key": key}


# --------------------------------------------------------------------------- customers


def customer_create(*, org_id: int, org_name: str, email: str) -> str:
    customer = client().v1.customers.create(
        params={"name": org_name, "email": email, "metadata": {"tesseract_org_id": str(org_id)}},
        options=_opts(f"tesseract-{org_id}-customer"),
    )
    return str(customer.id)


def plan_create(*, tier_slug: str, tier_name: str) -> str:
    """A $0 monthly plan for the tier (see the module doc): the subscription's item."""
    plan_id = f"tesseract-{tier_slug}"
    c = client()
    try:
        return str(c.v1.plans.retrieve(plan_id).id)
    except stripe.InvalidRequestError:
        pass
    plan = c.v1.plans.create(
        params={
            "id": plan_id,
            "amount": 0,
            "currency": "usd",
            "interval": "month",
            "product": {"name": f"Tesseract {tier_name}"},
            "metadata": {"tesseract_tier": tier_slug},
        },
        options=_opts(f"tesseract-plan-{tier_slug}"),
    )
    return str(plan.id)


def subscription_create(*, org_id: int, customer_id: str, plan_id: str) -> str:
    sub = client().v1.subscriptions.create(
        params={
            "customer": customer_id,
            "items": [{"plan": plan_id}],
            "metadata": {"tesseract_org_id": str(org_id)},
        },
        options=_opts(f"tesseract-{org_id}-subscription-{plan_id}"),
    )
    return str(sub.id)


def subscription_plan_set(*, subscription_id: str, plan_id: str) -> bool:
    """Move the subscription's one item to `plan_id`; returns whether it changed.
    (The plans cost $0, so there is nothing to prorate.)"""
    c = client()
    item = c.v1.subscriptions.retrieve(subscription_id).to_dict()["items"]["data"][0]
    if (item.get("plan") or item.get("price") or {}).get("id") == plan_id:
        return False
    c.v1.subscriptions.update(
        subscription_id,
        params={"items": [{"id": item["id"], "plan": plan_id}]},
    )
    return True


# --------------------------------------------------------------------------- invoices


@dataclass(frozen=True)
class Line:
    position: int
    amount_cents: int
    description: str


@dataclass(frozen=True)
class StripeInvoice:
    id: str
    status: str
    total_cents: int


def _key(org_id: int, period: str, what: str) -> str:
    return f"tesseract-{org_id}-{period}-{what}"


def pending_item_positions(*, customer_id: str, number: str) -> set[int]:
    """Positions of this invoice's lines already waiting in Stripe as invoice items."""
    items = client().v1.invoice_items.list(params={"customer": customer_id, "limit": 100})
    found = set()
    for item in items.to_dict()["data"]:
        meta = item.get("metadata") or {}
        if meta.get("tesseract_invoice") == number and not item.get("invoice"):
            found.add(int(meta["line"]))
    return found


def invoice_item_create(
    *, org_id: int, period: str, customer_id: str, number: str, line: Line
) -> None:
    client().v1.invoice_items.create(
        params={
            "customer": customer_id,
            "amount": line.amount_cents,
            "currency": "usd",
            "description": line.description,
            "metadata": {"tesseract_invoice": number, "line": str(line.position)},
        },
        options=_opts(_key(org_id, period, f"line-{line.position}")),
    )


def invoice_find(*, customer_id: str, number: str) -> StripeInvoice | None:
    invoices = client().v1.invoices.list(params={"customer": customer_id, "limit": 100})
    for inv in invoices.to_dict()["data"]:
        if (inv.get("metadata") or {}).get("tesseract_invoice") == number:
            return _invoice(inv)
    return None


def invoice_create(*, org_id: int, period: str, customer_id: str, number: str) -> StripeInvoice:
    """A draft invoice that takes every pending item of the customer (ours)."""
    inv = client().v1.invoices.create(
        params={
            "customer": customer_id,
            "description": f"Tesseract {number}",
            "metadata": {"tesseract_invoice": number, "tesseract_org_id": str(org_id)},
            "pending_invoice_items_behavior": "include",
        },
        options=_opts(_key(org_id, period, "invoice")),
    )
    return _invoice(inv.to_dict())


def invoice_finalize(*, invoice_id: str, org_id: int, period: str) -> StripeInvoice:
    """Finalize (Stripe then charges the default payment method: auto_advance)."""
    inv = client().v1.invoices.finalize_invoice(
        invoice_id,
        params={"auto_advance": True},
        options=_opts(_key(org_id, period, "finalize")),
    )
    return _invoice(inv.to_dict())


def invoice_retrieve(invoice_id: str) -> StripeInvoice | None:
    try:
        inv = client().v1.invoices.retrieve(invoice_id)
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            return None
        raise
    return _invoice(inv.to_dict())


def invoice_delete_draft(invoice_id: str) -> None:
    client().v1.invoices.delete(invoice_id)


def _invoice(data: dict[str, Any]) -> StripeInvoice:
    return StripeInvoice(
        id=str(data["id"]),
        status=str(data.get("status") or ""),
        total_cents=int(data.get("total") or 0),
    )


# --------------------------------------------------------------------------- webhooks


def webhook_event(payload: bytes, signature: str | None) -> dict[str, Any]:
    """The verified event as plain data; raises SignatureVerificationError or ValueError."""
    event = stripe.Webhook.construct_event(payload, signature, str(settings.STRIPE_WEBHOOK_SECRET))
    return event.to_dict()
