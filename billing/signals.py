"""Every organization gets a billing account on the Free tier when it is created."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from accounts.models import Organization
from billing.subscriptions import billing_account_ensure


@receiver(post_save, sender=Organization, dispatch_uid="billing-account-for-new-org")
def _open_billing_account(
    sender: Any, instance: Organization, created: bool, raw: bool = False, **_: Any
) -> None:
    if created and not raw:  # fixtures (raw) bring their own accounts
        billing_account_ensure(org=instance, at=instance.created_at)
