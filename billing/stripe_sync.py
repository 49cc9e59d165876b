"""Writes that keep Stripe in step with the local books (see `billing.stripe_client`).

Every function here is safe to run twice and records what it did in
`StripeSyncRecord`. Without a Stripe key they do nothing (billing is local-only).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.models import Membership, Organization, Role
from billing import stripe_client as sc
from billing.models import BillingAccount, Invoice, SlaTier, StripeSyncRecord
from billing.selectors import billing_account, invoice_lines

logger = logging.getLogger(__name__)

#: How far back the daily reconciliation looks.
RECONCILE_WINDOW = timedelta(days=120)


def _record(
    action: str,
    outcome: str,
    *,
    org: Organization | None,
    invoice: Invoice | None = None,
    **detail: Any,
) -> StripeSyncRecord:
    return StripeSyncRecord.objects.create(
        org=org, invoice=invoice, action=action, outcome=outcome, detail=detail
    )


def owner_emails(org: Organization) -> list[str]:
    return list(
        Membership.objects.for_org(org)
        .filter(role=Role.OWNER, user__is_active=True)
        .order_by("created_at")
        .values_list("user__email", flat=True)
    )


def tier_plan(tier: SlaTier) -> str:
    if not tier.stripe_plan_id:
        plan_id = sc.plan_create(tier_slug=tier.slug, tier_name=tier.name)
        SlaTier.objects.filter(pk=tier.pk).update(stripe_plan_id=plan_id)
        tier.stripe_plan_id = plan_id
    return tier.stripe_plan_id


def stripe_setup(*, org: Organization) -> BillingAccount:
    """Customer and subscription for the org, created once; the subscription follows
    the org's tier (checked at every push, and so daily by the reconciliation)."""
    account = billing_account(org=org)
    if not sc.enabled():
        return account
    changed = []
    if not account.stripe_customer_id:
        emails = owner_emails(org)
        account.stripe_customer_id = sc.customer_create(
            org_id=org.pk, org_name=org.name, email=emails[0] if emails else ""
        )
        changed.append("stripe_customer_id")
    plan = tier_plan(account.tier)
    if not account.stripe_subscription_id:
        account.stripe_subscription_id = sc.subscription_create(
            org_id=org.pk, customer_id=account.stripe_customer_id, plan_id=plan
        )
        changed.append("stripe_subscription_id")
    elif sc.subscription_plan_set(subscription_id=account.stripe_subscription_id, plan_id=plan):
        _record("setup", "plan changed", org=org, plan=plan)
    if changed:
        BillingAccount.objects.filter(pk=account.pk).update(
            **{name: getattr(account, name) for name in changed}
        )
        _record("setup", "created", org=org, fields=changed)
    return account


def _period(invoice: Invoice) -> str:
    return f"{invoice.period_start:%Y%m}"


def invoice_push(*, invoice: Invoice, attempt: int = 0) -> StripeSyncRecord:
    """Put the invoice in Stripe (missing lines as invoice items, then the invoice,
    finalized) and check that Stripe's total is ours, to the cent.

    `attempt` > 0 when reconciliation re-creates an invoice Stripe lost or that was
    wrong: its idempotency keys must differ from the first push's."""
    if not sc.enabled():
        return _record("push", "skipped", org=invoice.org, invoice=invoice, reason="local-only")
    org = invoice.org
    account = stripe_setup(org=org)
    customer, period = account.stripe_customer_id, _period(invoice)
    if attempt:
        period = f"{period}-r{attempt}"
    found = sc.invoice_retrieve(invoice.stripe_invoice_id) if invoice.stripe_invoice_id else None
    if found is None:  # also finds one created by a push that died before saving its id
        found = sc.invoice_find(customer_id=customer, number=invoice.number)
    created_lines = []
    if found is None:
        waiting = sc.pending_item_positions(customer_id=customer, number=invoice.number)
        for line in invoice_lines(invoice=invoice):
            if line.amount_usd == 0 or line.position in waiting:
                continue
            sc.invoice_item_create(
                org_id=org.pk,
                period=period,
                customer_id=customer,
                number=invoice.number,
                line=sc.Line(line.position, sc.cents(line.amount_usd), line.description),
            )
            created_lines.append(line.position)
        found = sc.invoice_create(
            org_id=org.pk, period=period, customer_id=customer, number=invoice.number
        )
    if found.status == "draft":
        found = sc.invoice_finalize(invoice_id=found.id, org_id=org.pk, period=period)
    Invoice.objects.filter(pk=invoice.pk).update(
        stripe_invoice_id=found.id, stripe_synced_at=timezone.now()
    )
    invoice.stripe_invoice_id = found.id
    ours = sc.cents(invoice.total_usd)
    outcome = "agreed" if found.total_cents == ours else "mismatch"
    if outcome == "mismatch":
        logger.error(
            "Stripe invoice %s totals %s cents, ours %s", found.id, found.total_cents, ours
        )
    return _record(
        "push",
        outcome,
        org=org,
        invoice=invoice,
        stripe_invoice=found.id,
        stripe_total_cents=found.total_cents,
        local_total_cents=ours,
        lines_created=created_lines,
    )


def _repairs(invoice: Invoice) -> int:
    return StripeSyncRecord.objects.filter(
        invoice=invoice, action="reconcile", outcome="repaired"
    ).count()


def invoice_reconcile(*, invoice: Invoice) -> StripeSyncRecord:
    """Compare one invoice with Stripe's and repair what can be repaired:
    never pushed or gone from Stripe → push; a draft with another total → delete the
    draft and push again; paid in Stripe but open here (a lost webhook) → mark paid.
    A finalized invoice with another total cannot be edited: recorded as a mismatch."""
    org = invoice.org
    if not invoice.stripe_invoice_id:
        pushed = invoice_push(invoice=invoice)
        return _record(
            "reconcile", "repaired", org=org, invoice=invoice, found="missing", push=pushed.outcome
        )
    theirs = sc.invoice_retrieve(invoice.stripe_invoice_id)
    ours = sc.cents(invoice.total_usd)
    if theirs is None:
        Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id="")
        invoice.stripe_invoice_id = ""
        pushed = invoice_push(invoice=invoice, attempt=_repairs(invoice) + 1)
        return _record(
            "reconcile", "repaired", org=org, invoice=invoice, found="gone", push=pushed.outcome
        )
    if theirs.total_cents != ours:
        if theirs.status == "draft":
            sc.invoice_delete_draft(theirs.id)
            Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id="")
            invoice.stripe_invoice_id = ""
            pushed = invoice_push(invoice=invoice, attempt=_repairs(invoice) + 1)
            return _record(
                "reconcile", "repaired", org=org, invoice=invoice, found="different draft",
                stripe_total_cents=theirs.total_cents, local_total_cents=ours, push=pushed.outcome,
            )  # fmt: skip
        return _record(
            "reconcile", "mismatch", org=org, invoice=invoice, found="different total",
            stripe_total_cents=theirs.total_cents, local_total_cents=ours,
            stripe_status=theirs.status,
        )  # fmt: skip
    if theirs.status == "paid" and invoice.status == Invoice.Status.OPEN:
        from billing.dunning import invoice_mark_paid

        invoice_mark_paid(invoice=invoice)
        return _record("reconcile", "repaired", org=org, invoice=invoice, found="paid in Stripe")
    return _record("reconcile", "agreed", org=org, invoice=invoice, total_cents=ours)


def stripe_reconcile() -> list[StripeSyncRecord]:
    """The daily check: every subscription against its org's tier, every recent invoice
    against Stripe's."""
    if not sc.enabled():
        return []
    since = timezone.now() - RECONCILE_WINDOW
    results = []
    for account in BillingAccount.objects.exclude(stripe_customer_id="").select_related("org"):
        try:
            stripe_setup(org=account.org)  # the subscription follows the tier
        except sc.StripeError as exc:
            results.append(_record("setup", "error", org=account.org, error=str(exc)[:500]))
    for invoice in (
        Invoice.objects.filter(created_at__gte=since).select_related("org").order_by("pk")
    ):
        try:
            with transaction.atomic():
                results.append(invoice_reconcile(invoice=invoice))
        except sc.StripeError as exc:
            results.append(
                _record(
                    "reconcile", "error", org=invoice.org, invoice=invoice, error=str(exc)[:500]
                )
            )
    return results
