"""The organization's invoices, for the members who may manage billing."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from accounts import selectors as account_selectors
from accounts.models import Membership, User
from billing import pdf, selectors


def _billing_member(request: HttpRequest, org_slug: str) -> Membership:
    """Owners and billing members (`manage_billing`); anyone else gets 404."""
    user = request.user
    assert isinstance(user, User)
    return account_selectors.access_membership(
        user=user, org_slug=org_slug, permission="manage_billing"
    )


def _shell(membership: Membership) -> dict[str, object]:
    """What the organization's page layout needs (`dashboards/org/_layout.html`): the
    invoices are the Billing section of its navigation."""
    return {"org": membership.org, "membership": membership, "active": "billing"}


@login_required
def invoice_list(request: HttpRequest, org_slug: str) -> HttpResponse:
    membership = _billing_member(request, org_slug)
    org = membership.org
    context = {
        **_shell(membership),
        "account": selectors.billing_account(org=org),
        "invoices": selectors.invoice_list(org=org),
        "stripe_enabled": bool(settings.STRIPE_SECRET_KEY),
    }
    return render(request, "billing/invoice_list.html", context)


@login_required
def invoice_detail(request: HttpRequest, org_slug: str, number: str) -> HttpResponse:
    membership = _billing_member(request, org_slug)
    invoice = selectors.access_invoice(org=membership.org, number=number)
    context = {
        **_shell(membership),
        "invoice": invoice,
        "lines": selectors.invoice_lines(invoice=invoice),
    }
    return render(request, "billing/invoice_detail.html", context)


@login_required
def invoice_pdf(request: HttpRequest, org_slug: str, number: str) -> HttpResponse:
    org = _billing_member(request, org_slug).org
    invoice = selectors.access_invoice(org=org, number=number)
    body = pdf.invoice_pdf(invoice, selectors.invoice_lines(invoice=invoice))
    response = HttpResponse(body, content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{invoice.number}.pdf"'
    return response
