"""Reads for accounts, each scoped to what the caller may see."""

from __future__ import annotations

from django.http import Http404

from accounts.models import ApiKey, Invitation, Membership, Organization, User


def organization_list(*, user: User) -> list[Organization]:
    return list(Organization.objects.for_user(user).order_by("name"))


def access_membership(*, user: User, org_slug: str, permission: str = "view") -> Membership:
    """The user's membership of the org, or 404 — another tenant's org does not exist."""
    membership = (
        Membership.objects.select_related("org").filter(user=user, org__slug=org_slug).first()
    )
    if membership is None or not membership.can(permission):
        raise Http404("No such organization.")
    return membership


def api_key_list(*, org: Organization) -> list[ApiKey]:
    return list(ApiKey.objects.for_org(org).order_by("-created_at"))


def access_api_key(*, org: Organization, key_id: int) -> ApiKey:
    key = ApiKey.objects.for_org(org).filter(pk=key_id).first()
    if key is None:
        raise Http404("No such key.")
    return key


def member_list(*, org: Organization) -> list[Membership]:
    return list(Membership.objects.for_org(org).select_related("user").order_by("user__email"))


def access_member(*, org: Organization, membership_id: int) -> Membership:
    """One of the org's memberships, or 404."""
    member = (
        Membership.objects.for_org(org)
        .select_related("user", "org")
        .filter(pk=membership_id)
        .first()
    )
    if member is None:
        raise Http404("No such member.")
    return member


def invitation_open_list(*, org: Organization) -> list[Invitation]:
    return list(
        Invitation.objects.for_org(org).filter(accepted_at__isnull=True).order_by("-created_at")
    )
