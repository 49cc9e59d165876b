"""Writes for an organization's plan: its billing account, tier and budget."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts import audit
from accounts.models import ApiKey, Organization, User
from billing.models import ApiKeyLimits, BillingAccount, SlaTier, TierChange
from billing.tiers import FREE


class BillingError(Exception):
    """A billing write was refused; the message is safe to show to the user."""


def tier_default() -> SlaTier:
    """The Free tier, recreated from `billing.tiers` if an operator deleted it."""
    tier, _ = SlaTier.objects.get_or_create(
        slug=FREE.slug, defaults={k: v for k, v in FREE.fields().items() if k != "slug"}
    )
    return tier


@transaction.atomic
def billing_account_ensure(*, org: Organization, at: datetime | None = None) -> BillingAccount:
    """The org's billing account, created on the Free tier if it has none (idempotent)."""
    account = BillingAccount.objects.filter(org=org).select_related("tier").first()
    if account is not None:
        return account
    at = at or timezone.now()
    tier = tier_default()
    account, created = BillingAccount.objects.get_or_create(
        org=org, defaults={"tier": tier, "created_at": at}
    )
    if created:
        TierChange.objects.create(org=org, tier=tier, effective_at=at)
        audit.record(
            "tier.change", org_id=org.pk, actor="tesseract", tier=tier.slug, previous=None,
            effective_at=at,
        )  # fmt: skip
    return account


@transaction.atomic
def tier_change(
    *,
    org: Organization,
    tier: SlaTier,
    changed_by: User | None = None,
    at: datetime | None = None,
) -> BillingAccount:
    """Move the org to `tier`: its limits apply at once, its prices to requests that
    complete from `at` on (the history is kept in `TierChange`)."""
    account = billing_account_ensure(org=org)
    account = BillingAccount.objects.select_for_update().get(pk=account.pk)
    if account.tier_id == tier.pk:
        return account
    previous = account.tier.slug
    account.tier = tier
    account.save(update_fields=["tier"])
    change = TierChange.objects.create(
        org=org, tier=tier, effective_at=at or timezone.now(), changed_by=changed_by
    )
    audit.record(
        "tier.change", org_id=org.pk, actor=changed_by or "tesseract", tier=tier.slug,
        previous=previous, effective_at=change.effective_at,
    )  # fmt: skip
    return account


def budget_set(*, org: Organization, monthly_budget_usd: Decimal | None) -> BillingAccount:
    """Set the org's monthly spend cap (None: the tier's default)."""
    if monthly_budget_usd is not None and monthly_budget_usd < 0:
        raise BillingError("A budget cannot be negative.")
    account = billing_account_ensure(org=org)
    BillingAccount.objects.filter(pk=account.pk).update(monthly_budget_usd=monthly_budget_usd)
    account.monthly_budget_usd = monthly_budget_usd
    from billing.limits import keys_changed

    keys_changed(org_id=org.pk)  # the new cap applies at once, in every gateway
    return account


def key_limits_set(*, api_key: ApiKey, **limits: Any) -> ApiKeyLimits:
    """Set a key's own limits (requests/min, tokens/min, monthly budget; None: the org's)."""
    unknown = set(limits) - {"requests_per_minute", "tokens_per_minute", "monthly_budget_usd"}
    if unknown:
        raise BillingError(f"unknown limits: {sorted(unknown)}")
    row, _ = ApiKeyLimits.objects.update_or_create(
        api_key=api_key, defaults={"org_id": api_key.org_id, **limits}
    )
    return row
