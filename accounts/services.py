"""Writes for accounts: organizations, members, invitations, API keys, 2FA."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import audit, keycache, keys
from accounts.models import (
    DEFAULT_SCOPES,
    ApiKey,
    Invitation,
    Membership,
    Organization,
    Role,
    Scope,
    User,
)

LAST_USED_RESOLUTION = timedelta(minutes=1)
BACKUP_CODE_COUNT = 10


class AccountsError(Exception):
    """A write was refused; the message is safe to show to the user, and `field` names
    the input at fault where one is (an API answers with it as the error's param)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------- orgs


@transaction.atomic
def organization_create(*, name: str, owner: User, require_2fa: bool = False) -> Organization:
    base = slugify(name)[:50] or "org"
    slug, n = base, 1
    while Organization.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    org = Organization.objects.create(name=name, slug=slug, require_2fa=require_2fa)
    Membership.objects.create(org=org, user=owner, role=Role.OWNER)
    return org


class LastOwnerError(AccountsError):
    """The change would leave an organization without an owner."""


def _check_owner_remains(*, org: Organization, user: User, new_role: str | None) -> None:
    """Refuse a change that would leave `org` without an owner (`new_role` None: removal).

    Call inside a transaction: it locks the organization's row first, so two owners
    demoting each other at the same moment are serialized and the second is refused.
    """
    Organization.objects.select_for_update().filter(pk=org.pk).first()
    current = Membership.objects.filter(org=org, user=user).first()
    if current is None or current.role != Role.OWNER or new_role == Role.OWNER:
        return
    if not Membership.objects.filter(org=org, role=Role.OWNER).exclude(pk=current.pk).exists():
        raise LastOwnerError(
            f"{user.email} is the last owner of {org.name}: make someone else an owner "
            "first. An organization always keeps at least one owner."
        )


@transaction.atomic
def membership_add(*, org: Organization, user: User, role: str = Role.DEVELOPER) -> Membership:
    """Add the user to the org with this role, or set the role of a member.

    The last owner is never demoted (`LastOwnerError`).
    """
    if role not in Role.values:
        raise AccountsError(f"unknown role {role!r}")
    _check_owner_remains(org=org, user=user, new_role=role)
    membership, _ = Membership.objects.update_or_create(org=org, user=user, defaults={"role": role})
    return membership


def membership_role_set(*, membership: Membership, role: str) -> Membership:
    """Change a member's role. The last owner is never demoted (`LastOwnerError`)."""
    return membership_add(org=membership.org, user=membership.user, role=role)


@transaction.atomic
def membership_remove(*, membership: Membership) -> None:
    """Take a member out of the org. The last owner is never removed (`LastOwnerError`)."""
    _check_owner_remains(org=membership.org, user=membership.user, new_role=None)
    Membership.objects.filter(pk=membership.pk).delete()


# --------------------------------------------------------------------------- invitations


@dataclass(frozen=True)
class IssuedInvitation:
    invitation: Invitation
    token: str  # shown once, in the link


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def invitation_create(
    *, org: Organization, email: str, role: str, invited_by: User | None
) -> IssuedInvitation:
    """Invite someone by email. Only owners may invite owners."""
    if role not in Role.values:
        raise AccountsError(f"unknown role {role!r}")
    if role == Role.OWNER and invited_by is not None:
        inviter = Membership.objects.filter(org=org, user=invited_by).first()
        if inviter is None or inviter.role != Role.OWNER:
            raise AccountsError("Only owners can invite owners.")
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        org=org,
        email=email.lower(),
        role=role,
        token_digest=_token_digest(token),
        invited_by=invited_by,
    )
    return IssuedInvitation(invitation=invitation, token=token)


def invitation_pending(*, token: str) -> Invitation:
    """The open invitation behind a link, or AccountsError."""
    invitation = (
        Invitation.objects.select_related("org")
        .filter(token_digest=_token_digest(token), accepted_at__isnull=True)
        .first()
    )
    if invitation is None or invitation.expires_at <= timezone.now():
        raise AccountsError("This invitation is not valid any more.")
    return invitation


@transaction.atomic
def invitation_accept(*, token: str, user: User) -> Membership:
    """Join the inviting organization. The invitation must be for this user's email."""
    invitation = (
        Invitation.objects.select_for_update()
        .filter(token_digest=_token_digest(token), accepted_at__isnull=True)
        .first()
    )
    if invitation is None or invitation.expires_at <= timezone.now():
        raise AccountsError("This invitation is not valid any more.")
    if invitation.email != user.email.lower():
        raise AccountsError("This invitation was sent to another email address.")
    current = Membership.objects.filter(org=invitation.org, user=user).first()
    if (
        current is not None
        and current.role == Role.OWNER
        and invitation.role != Role.OWNER
        and not Membership.objects.filter(
            org=invitation.org, user=invitation.invited_by, role=Role.OWNER
        ).exists()
    ):
        # Owners alone manage owners: an admin's invitation cannot demote one.
        raise AccountsError(
            f"You are an owner of {invitation.org.name}; only another owner can change that."
        )
    invitation.accepted_at = timezone.now()
    invitation.save(update_fields=["accepted_at"])
    return membership_add(org=invitation.org, user=user, role=invitation.role)


# --------------------------------------------------------------------------- api keys


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    plaintext: str  # shown to the user once; never stored


def api_key_create(
    *,
    org: Organization,
    name: str,
    created_by: User | None = None,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
    default_regions: list[str] | None = None,
    default_compliance: list[str] | None = None,
    default_max_latency_ms: int | None = None,
    default_max_ttft_ms: int | None = None,
) -> IssuedKey:
    scopes = [str(s) for s in DEFAULT_SCOPES] if scopes is None else scopes
    unknown = set(scopes) - set(Scope.values)
    if unknown or not scopes:
        raise AccountsError(
            f"scopes must be a non-empty subset of {sorted(Scope.values)}", field="scopes"
        )
    if not name.strip():
        raise AccountsError("A key needs a name.", field="name")
    if expires_at is not None and expires_at <= timezone.now():
        raise AccountsError("The expiry must be in the future.", field="expires_at")
    new = keys.generate(settings.API_KEY_PEPPER)
    with transaction.atomic():
        api_key = ApiKey.objects.create(
            org=org,
            name=name.strip(),
            created_by=created_by,
            lookup=new.lookup,
            digest=new.digest,
            scopes=sorted(set(scopes)),
            expires_at=expires_at,
            default_regions=default_regions or [],
            default_compliance=default_compliance or [],
            default_max_latency_ms=default_max_latency_ms,
            default_max_ttft_ms=default_max_ttft_ms,
        )
        audit.record(
            "key.create", org_id=org.pk, actor=created_by or "", key_id=api_key.pk,
            key=api_key.display_prefix, name=api_key.name, scopes=api_key.scopes,
            expires_at=expires_at,
        )  # fmt: skip
    # A process may hold a negative cache entry for this prefix: clear it everywhere.
    transaction.on_commit(lambda: keycache.publish_change(new.lookup))
    return IssuedKey(api_key=api_key, plaintext=new.plaintext)


def api_key_revoke(*, api_key: ApiKey, by: User | None = None, reason: str = "") -> ApiKey:
    """Revoke now. Every gateway process drops the key within a second (Redis pub/sub).
    The revocation (who, why) goes to the organization's audit chain, once."""
    if api_key.revoked_at is None:
        with transaction.atomic():
            revoked = ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(
                revoked_at=timezone.now()
            )
            if revoked:
                audit.record(
                    "key.revoke", org_id=api_key.org_id, actor=by or "", reason=reason,
                    key_id=api_key.pk, key=api_key.display_prefix, name=api_key.name,
                )  # fmt: skip
        api_key.refresh_from_db(fields=["revoked_at"])
    lookup = api_key.lookup
    transaction.on_commit(lambda: keycache.publish_change(lookup))
    return api_key


def api_key_touch(*, key_id: int, now: datetime | None = None) -> bool:
    """Record use, at most once a minute per key across all processes.

    The conditional UPDATE makes concurrent gateways write once between them.
    Returns whether this call wrote.
    """
    now = now or timezone.now()
    updated = (
        ApiKey.objects.filter(pk=key_id)
        .filter(Q(last_used_at__isnull=True) | Q(last_used_at__lte=now - LAST_USED_RESOLUTION))
        .update(last_used_at=now)
    )
    return bool(updated)


# --------------------------------------------------------------------------- 2FA


def totp_device_start(*, user: User) -> TOTPDevice:
    """The user's unconfirmed authenticator, created if needed, for enrolment."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=False)
    return device


@transaction.atomic
def totp_device_confirm(*, device: TOTPDevice, token: str) -> list[str]:
    """Confirm enrolment with a first code; returns fresh backup codes (shown once)."""
    if not device.verify_token(token):
        raise AccountsError("That code is not right. Check the clock of your device.")
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    return backup_codes_regenerate(user=device.user)


@transaction.atomic
def backup_codes_regenerate(*, user: User) -> list[str]:
    device, _ = StaticDevice.objects.get_or_create(
        user=user, name="Backup codes", defaults={"confirmed": True}
    )
    device.token_set.all().delete()
    codes = [StaticToken.random_token() for _ in range(BACKUP_CODE_COUNT)]
    StaticToken.objects.bulk_create(StaticToken(device=device, token=c) for c in codes)
    return codes
