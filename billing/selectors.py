"""Reads for billing, each scoped to one organization (`for_org`)."""

from __future__ import annotations

from django.http import Http404

from accounts.models import Organization
from billing.models import BillingAccount, Invoice, InvoiceLine


def billing_account(*, org: Organization) -> BillingAccount:
    """The org's billing account (every org has one: `billing.signals`)."""
    account = BillingAccount.objects.for_org(org).select_related("tier").first()
    if account is None:  # an org made before billing existed, or by a raw fixture
        from billing.subscriptions import billing_account_ensure

        account = billing_account_ensure(org=org)
    return account


def org_is_suspended(*, org_id: int) -> bool:
    """Whether the org's keys must be refused (dunning). For the key cache's loader:
    one indexed query, made only when a key is loaded, never per request."""
    return BillingAccount.objects.filter(org_id=org_id, suspended_at__isnull=False).exists()


def invoice_list(*, org: Organization) -> list[Invoice]:
    return list(Invoice.objects.for_org(org).order_by("-period_start"))


def access_invoice(*, org: Organization, number: str) -> Invoice:
    """One of the org's invoices, or 404: another tenant's invoice does not exist."""
    invoice = (
        Invoice.objects.for_org(org).select_related("tier", "org").filter(number=number).first()
    )
    if invoice is None:
        raise Http404("No such invoice.")
    return invoice


def invoice_lines(*, invoice: Invoice) -> list[InvoiceLine]:
    return list(invoice.lines.order_by("position"))
