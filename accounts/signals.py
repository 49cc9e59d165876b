"""Tell every gateway when an API key disappears, as revocation does.

A key deleted anywhere — the admin's delete, a bulk delete, the cascade of an
organization's deletion — is dropped from every process's key cache as soon as the
transaction commits, instead of working on until the cache entry expires.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from accounts import audit, keycache
from accounts.models import ApiKey


@receiver(post_delete, sender=ApiKey, dispatch_uid="accounts.apikey.deleted")
def api_key_deleted(sender: type[ApiKey], instance: ApiKey, **kwargs: Any) -> None:
    # However it was deleted, the organization's audit chain says so (who is unknown here).
    audit.record(
        "key.delete", org_id=instance.org_id, key_id=instance.pk, key=instance.display_prefix,
        name=instance.name,
    )  # fmt: skip
    lookup = instance.lookup
    transaction.on_commit(lambda: keycache.publish_change(lookup), using=kwargs.get("using"))
