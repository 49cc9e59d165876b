"""Every organization gets a billing account on the Free tier when it is created."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from accounts.models import Organization
from billing import limits
from billing.models import ApiKeyLimits, BillingAccount, SlaTier
from billing.subscriptions import billing_account_ensure


@receiver(post_save, sender=Organization, dispatch_uid="billing-account-for-new-org")
def _open_billing_account(
    sender: Any, instance: Organization, created: bool, raw: bool = False, **_: Any
) -> None:
    if created and not raw:  # fixtures (raw) bring their own accounts
        billing_account_ensure(org=instance, at=instance.created_at)


# A tier, budget, key limit or suspension changed: every gateway reloads the keys at once.
@receiver(post_save, sender=SlaTier, dispatch_uid="limits-tier-changed")
def _tier_saved(sender: Any, instance: SlaTier, raw: bool = False, **_: Any) -> None:
    if not raw:
        limits.keys_changed(tier_id=instance.pk)


@receiver(post_save, sender=BillingAccount, dispatch_uid="limits-account-changed")
def _account_saved(sender: Any, instance: BillingAccount, raw: bool = False, **_: Any) -> None:
    if not raw:
        limits.keys_changed(org_id=instance.org_id)


@receiver(post_save, sender=ApiKeyLimits, dispatch_uid="limits-key-changed")
def _key_limits_saved(sender: Any, instance: ApiKeyLimits, raw: bool = False, **_: Any) -> None:
    if not raw:
        limits.keys_changed(org_id=instance.org_id)
