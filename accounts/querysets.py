"""Tenancy lives here: every read of tenant-owned rows goes through `for_org`."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils import timezone

from accounts.types import Person, Tenant


class OrgOwnedQuerySet(models.QuerySet[Any]):
    def for_org(self, org: Tenant) -> OrgOwnedQuerySet:
        return self.filter(org=org)


class OrganizationQuerySet(models.QuerySet[Any]):
    def for_user(self, user: Person) -> OrganizationQuerySet:
        """Organizations the user is a member of."""
        if not user.is_authenticated:
            return self.none()
        return self.filter(memberships__user=user).distinct()


class ApiKeyQuerySet(OrgOwnedQuerySet):
    def usable(self) -> ApiKeyQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )
