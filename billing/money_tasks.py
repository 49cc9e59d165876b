"""Billing's jobs: month closing, Stripe push and reconciliation, dunning. Thin, idempotent.

Kept apart from `billing/tasks.py` (the usage drain) and imported by `BillingConfig.ready`
so that Celery registers them.
"""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from billing import alerts, dunning, invoicing, stripe_client, stripe_sync


@shared_task(time_limit=1800, ignore_result=True)
def close_month(year: int | None = None, month: int | None = None) -> int:
    """Close a month's invoices (by default the month before today, UTC). Safe to rerun."""
    if year is None or month is None:
        year, month = invoicing.previous_month(timezone.now())
    invoices = invoicing.invoices_close_month(year=year, month=month)
    if stripe_client.enabled():  # each on its own: one org's trouble does not stop others
        for invoice in invoices:
            push_invoice.delay(invoice.pk)
    return len(invoices)


@shared_task(
    time_limit=300, ignore_result=True, autoretry_for=(Exception,), retry_backoff=60, max_retries=8
)
def push_invoice(invoice_id: int) -> str:
    """Push one closed invoice to Stripe (local-only: records a skip). Idempotent."""
    from billing.models import Invoice

    return stripe_sync.invoice_push(
        invoice=Invoice.objects.select_related("org").get(pk=invoice_id)
    ).outcome


@shared_task(time_limit=1800, ignore_result=True)
def reconcile_stripe() -> int:
    """Daily: compare every recent invoice with Stripe's and repair differences."""
    return len(stripe_sync.stripe_reconcile())


@shared_task(time_limit=300, ignore_result=True)
def suspend_overdue() -> int:
    """Suspend the organizations whose failed payment outlived the grace period."""
    return len(dunning.accounts_suspend_overdue())


@shared_task(time_limit=120, ignore_result=True)
def budget_alerts() -> int:
    """Email owners whose month crossed 50/80/100% of the budget (once each per month)."""
    return len(alerts.budget_alerts_send())
