"""Stripe's webhook events, and dunning: what happens when a payment fails.

* `invoice.payment_failed`: the org's owners are warned by email (Django's email
  framework) and the dunning clock starts (`BillingAccount.payment_failed_at`, kept
  at the first failure until a payment succeeds).
* After the tier's `dunning_grace_days`, `accounts_suspend_overdue` (a Celery task,
  hourly) suspends the org: `suspended_at` is set, and every gateway process is told
  to reload the org's keys (the key cache's pub/sub), so the suspension reaches them
  within a second (the resolved key carries it: `billing.limits.Limits.suspended_reason`).
* `invoice.paid` (and localstripe's `invoice.payment_succeeded`): the invoice is paid,
  dunning ends and a suspension is lifted at once.
* `customer.subscription.updated`: the org moves to the tier of the subscription's
  plan, if that is another; `customer.subscription.deleted`: back to Free.

Each event id is handled once (`StripeEvent.event_id` is unique); its outcome is kept
and shown in the admin.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Organization
from billing import limits
from billing.models import BillingAccount, Invoice, SlaTier, StripeEvent
from billing.subscriptions import tier_change, tier_default

logger = logging.getLogger(__name__)


def _keys_changed(org_id: int) -> None:
    """After commit: every gateway drops the org's keys and reloads them (with the flag)."""
    limits.keys_changed(org_id=org_id)


def _owners(org: Organization) -> list[str]:
    from billing.stripe_sync import owner_emails

    return owner_emails(org)


def account_restore(*, account: BillingAccount) -> bool:
    """A payment succeeded: dunning ends, a suspension is lifted now. Returns whether
    the org was suspended."""
    was_suspended = account.suspended_at is not None
    BillingAccount.objects.filter(pk=account.pk).update(
        payment_failed_at=None, suspended_at=None, suspended_reason=""
    )
    if was_suspended:
        _keys_changed(account.org_id)
    return was_suspended


def invoice_mark_paid(*, invoice: Invoice, at: datetime | None = None) -> None:
    Invoice.objects.filter(pk=invoice.pk).exclude(status=Invoice.Status.PAID).update(
        status=Invoice.Status.PAID, paid_at=at or timezone.now()
    )
    account = BillingAccount.objects.get(org_id=invoice.org_id)
    account_restore(account=account)


def account_payment_failed(*, account: BillingAccount, invoice_number: str, at: datetime) -> None:
    """Start (or continue) dunning and warn the owners."""
    BillingAccount.objects.filter(pk=account.pk, payment_failed_at__isnull=True).update(
        payment_failed_at=at
    )
    account.refresh_from_db()
    assert account.payment_failed_at is not None
    deadline = account.payment_failed_at + timedelta(days=account.tier.dunning_grace_days)
    org = account.org
    send_mail(
        subject=f"Tesseract: payment failed for {org.name}",
        message=(
            f"The payment of invoice {invoice_number} for {org.name} failed.\n\n"
            f"Please update the payment method. If the invoice is still unpaid on "
            f"{deadline:%Y-%m-%d %H:%M} UTC, the organization's API keys will be "
            f"suspended until it is paid."
        ),
        from_email=None,
        recipient_list=_owners(org),
    )


def accounts_suspend_overdue(*, now: datetime | None = None) -> list[int]:
    """Suspend every org whose failed payment is older than its tier's grace period.
    Returns the org ids suspended by this call (safe to run twice)."""
    now = now or timezone.now()
    suspended = []
    candidates = BillingAccount.objects.filter(
        payment_failed_at__isnull=False, suspended_at__isnull=True
    ).select_related("tier")
    for account in candidates:
        assert account.payment_failed_at is not None
        if account.payment_failed_at + timedelta(days=account.tier.dunning_grace_days) > now:
            continue
        with transaction.atomic():
            reason = (
                f"Payment failed on {account.payment_failed_at:%Y-%m-%d} and is still "
                f"outstanding after the {account.tier.dunning_grace_days}-day grace period."
            )
            updated = BillingAccount.objects.filter(
                pk=account.pk, suspended_at__isnull=True, payment_failed_at__isnull=False
            ).update(suspended_at=now, suspended_reason=reason)
            if updated:
                _keys_changed(account.org_id)
                suspended.append(account.org_id)
    return suspended


# --------------------------------------------------------------------------- events


def _account_for_customer(customer: str | None) -> BillingAccount | None:
    if not customer:
        return None
    return (
        BillingAccount.objects.select_related("org", "tier")
        .filter(stripe_customer_id=customer)
        .first()
    )


def _invoice_for(obj: dict[str, Any], account: BillingAccount) -> Invoice | None:
    number = (obj.get("metadata") or {}).get("tesseract_invoice")
    invoices = Invoice.objects.for_org(account.org)
    found = invoices.filter(stripe_invoice_id=obj.get("id", "")).first()
    if found is None and number:
        found = invoices.filter(number=number).first()
    return found


def _handle(event: dict[str, Any]) -> tuple[str, Organization | None]:
    kind = event.get("type", "")
    obj = (event.get("data") or {}).get("object") or {}
    account = _account_for_customer(obj.get("customer"))
    if account is None:
        return "ignored: no organization has this customer", None
    org = account.org
    at = datetime.fromtimestamp(int(event.get("created") or timezone.now().timestamp()), tz=UTC)
    if kind in ("invoice.paid", "invoice.payment_succeeded"):
        invoice = _invoice_for(obj, account)
        if invoice is not None:
            invoice_mark_paid(invoice=invoice, at=at)
        restored = account_restore(account=account)
        what = f"invoice {invoice.number} paid" if invoice else "a payment succeeded"
        return what + ("; suspension lifted" if restored else ""), org
    if kind == "invoice.payment_failed":
        invoice = _invoice_for(obj, account)
        number = invoice.number if invoice else str(obj.get("id", "?"))
        account_payment_failed(account=account, invoice_number=number, at=at)
        since = account.payment_failed_at
        return f"payment of {number} failed: owners warned, dunning since {since:%Y-%m-%d}", org
    if kind == "customer.subscription.updated":
        items = ((obj.get("items") or {}).get("data")) or []
        plan_id = (
            ((items[0].get("plan") or items[0].get("price") or {}).get("id")) if items else None
        )
        tier = SlaTier.objects.filter(stripe_plan_id=plan_id).first() if plan_id else None
        if tier is None:
            return f"subscription updated; plan {plan_id} is no tier: unchanged", org
        if tier.pk == account.tier_id:
            return f"subscription updated; still {tier.name}", org
        tier_change(org=org, tier=tier, at=at)
        return f"tier changed to {tier.name}", org
    if kind == "customer.subscription.deleted":
        BillingAccount.objects.filter(pk=account.pk).update(stripe_subscription_id="")
        free = tier_default()
        if free.pk != account.tier_id:
            tier_change(org=org, tier=free, at=at)
        return "subscription cancelled: moved to the Free tier", org
    return f"ignored: {kind} is not handled", org


FAILED = "failed: "


def stripe_event_handle(event: dict[str, Any]) -> tuple[StripeEvent, bool]:
    """Handle a verified event once. Returns (its record, whether this call handled it).

    A handler that raised leaves a record whose outcome starts with "failed: " (visible
    in the admin) and the error propagates (Stripe then retries): a retry handles it
    again. Any other outcome makes a redelivery a no-op.
    """
    event_id = str(event.get("id", ""))
    kind = str(event.get("type", ""))
    existing = StripeEvent.objects.filter(event_id=event_id).first()
    if existing is not None and not existing.outcome.startswith(FAILED):
        return existing, False
    try:
        with transaction.atomic():
            if existing is None:  # a concurrent first delivery makes this an IntegrityError
                record = StripeEvent.objects.create(
                    event_id=event_id, type=kind, outcome="handling", payload=event
                )
            else:  # a retry of a handler that failed
                record = StripeEvent.objects.select_for_update().get(pk=existing.pk)
                if not record.outcome.startswith(FAILED):
                    return record, False
            outcome, org = _handle(event)
            record.outcome, record.org = outcome[:200], org
            record.save(update_fields=["outcome", "org"])
    except IntegrityError:  # the same event, delivered twice at once: the other won
        return StripeEvent.objects.get(event_id=event_id), False
    except Exception as exc:
        StripeEvent.objects.update_or_create(
            event_id=event_id,
            defaults={"type": kind, "outcome": f"{FAILED}{exc!r}"[:200], "payload": event},
        )
        raise
    logger.info("stripe event %s %s: %s", event_id, record.type, record.outcome)
    return record, True
