"""Who calls the management API, and for which organization.

Two ways in: the web session (a member; the organization is named by the
`X-Tesseract-Org` header or the `org` query parameter, or is the member's only one),
or an API key with the `manage` scope (`Authorization: Bearer tsk_…`), which acts for
its own organization. Anything of another organization is a 404.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import Http404
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts import keys
from accounts.models import ROLE_PERMISSIONS, ApiKey, Membership, Organization, Role, Scope, User


@dataclass(frozen=True)
class KeyPrincipal:
    """An API key acting for its organization (DRF's `request.user`)."""

    api_key: ApiKey
    is_authenticated: bool = True
    is_active: bool = True

    @property
    def org(self) -> Organization:
        return self.api_key.org


class ManageKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer tsk_…` with the `manage` scope (one indexed query)."""

    def authenticate(self, request: Request) -> tuple[KeyPrincipal, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode(errors="replace")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.startswith(keys.KEY_PREFIX):
            return None
        lookup = keys.parse_lookup(token.strip())
        row = (
            ApiKey.objects.usable().select_related("org").filter(lookup=lookup).first()
            if lookup
            else None
        )
        if row is None or not keys.matches(token.strip(), row.digest, settings.API_KEY_PEPPER):
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired API key.")
        if Scope.MANAGE not in row.scopes:
            raise exceptions.PermissionDenied("This key lacks the `manage` scope.")
        ApiKey.objects.filter(pk=row.pk).update(last_used_at=timezone.now())
        return KeyPrincipal(row), row

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


@dataclass(frozen=True)
class Caller:
    org: Organization
    permissions: frozenset[str]
    user: User | None
    api_key: ApiKey | None

    def can(self, permission: str) -> bool:
        return permission in self.permissions


#: A manage key (only an owner mints one) may do what an admin may, read billing, and
#: register the organization's private clusters (automation's main use of the API);
#: budgets, tiers and minting further manage keys stay with owners' sessions.
KEY_PERMISSIONS = ROLE_PERMISSIONS[Role.ADMIN] | {"view_billing", "manage_clusters"}
ROLE_EXTRA: dict[str, set[str]] = {Role.OWNER: {"view_billing"}}


def caller(request: Request) -> Caller:
    """The organization this request acts for, and what it may do there (or 404)."""
    principal = request.user
    if isinstance(principal, KeyPrincipal):
        return Caller(principal.org, frozenset(KEY_PERMISSIONS), None, principal.api_key)
    assert isinstance(principal, User)
    slug = request.headers.get("X-Tesseract-Org") or request.query_params.get("org")
    memberships = Membership.objects.select_related("org").filter(user=principal)
    if slug:
        memberships = memberships.filter(org__slug=slug)
    found = list(memberships[:2])
    if len(found) != 1:
        raise Http404("No such organization (name it with X-Tesseract-Org).")
    m = found[0]
    permissions = ROLE_PERMISSIONS[m.role] | ROLE_EXTRA.get(m.role, set())
    return Caller(m.org, frozenset(permissions), principal, None)


def require(request: Request, permission: str) -> Caller:
    """The caller, if it may `permission` in its organization; else 403 (it is a member)."""
    c = caller(request)
    if not c.can(permission):
        raise exceptions.PermissionDenied(f"Your role may not do this ({permission}).")
    return c


class ManageKeyScheme(OpenApiAuthenticationExtension):
    """How the OpenAPI schema names the key authentication."""

    target_class = ManageKeyAuthentication
    name = "manageKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (tsk_…) with the `manage` scope.",
        }
