from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.utils import timezone

from accounts.querysets import ApiKeyQuerySet, OrganizationQuerySet, OrgOwnedQuerySet


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        if not email:
            raise ValueError("users need an email address")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.update(is_staff=True, is_superuser=True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person. Logs in by email; belongs to organizations through memberships.

    Staff are Tesseract's own operators: they use the console and the admin, and
    must use a second factor.
    """

    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150, blank=True)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    def __str__(self) -> str:
        return self.email

    def is_verified(self) -> bool:
        """Replaced per request by django_otp's OTPMiddleware; unverified until then."""
        return False

    def needs_two_factor(self) -> bool:
        """Whether this user must give a second factor to use the site.

        Staff must (TESSERACT_STAFF_REQUIRE_2FA), members of an organization that
        requires it must, and so must anyone who turned it on: an enrolled
        authenticator is asked for at every sign-in.
        """
        from django.conf import settings
        from django_otp import user_has_device

        if self.is_staff and settings.TESSERACT_STAFF_REQUIRE_2FA:
            return True
        if Organization.objects.filter(memberships__user=self, require_2fa=True).exists():
            return True
        return user_has_device(self, confirmed=True)


class Organization(models.Model):
    """The tenant. Owns API keys, usage, invoices; people join it through memberships."""

    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=60, unique=True)
    require_2fa = models.BooleanField(
        default=False, help_text="Members must use a second factor to sign in."
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrganizationQuerySet.as_manager()

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    DEVELOPER = "developer", "Developer"
    BILLING = "billing", "Billing"
    VIEWER = "viewer", "Viewer"


#: What each role may do. Owners alone manage other owners; owners and billing members
#: manage billing. Only owners grant the `manage` scope: a manage key acts for the whole
#: organization (`billing.api.auth.KEY_PERMISSIONS`), so a developer who could mint one
#: would hold more than their role.
GRANT_MANAGE_SCOPE = "grant_manage_scope"
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.OWNER: frozenset(
        {
            "view",
            "use_keys",
            "manage_keys",
            "manage_members",
            "manage_billing",
            "manage_clusters",
            GRANT_MANAGE_SCOPE,
        }
    ),
    Role.ADMIN: frozenset({"view", "use_keys", "manage_keys", "manage_members"}),
    Role.DEVELOPER: frozenset({"view", "use_keys", "manage_keys"}),
    # Finance: the bills, the tier and the budget; no keys, no members.
    Role.BILLING: frozenset({"view", "manage_billing"}),
    Role.VIEWER: frozenset({"view"}),
}


class Membership(models.Model):
    """A user's role in one organization."""

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.DEVELOPER)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrgOwnedQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["org", "user"], name="membership_unique_user_per_org"),
            models.CheckConstraint(
                condition=models.Q(role__in=Role.values), name="membership_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.org} ({self.role})"

    def can(self, permission: str) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]

    @property
    def can_manage_keys(self) -> bool:
        return self.can("manage_keys")


def _invitation_expiry() -> Any:
    return timezone.now() + timedelta(days=7)


class Invitation(models.Model):
    """An invitation to join an organization, accepted through a one-time link.

    Only a SHA-256 of the token is stored; the link is shown (or emailed) once.
    """

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.DEVELOPER)
    token_digest = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(default=_invitation_expiry)
    accepted_at = models.DateTimeField(null=True, blank=True)

    objects = OrgOwnedQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(role__in=Role.values), name="invitation_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.email} to {self.org}"


class Scope(models.TextChoices):
    INFERENCE = "inference", "Run inference (/v1 completions)"
    ROUTE = "route", "Dry-run routing decisions (/v1/route)"
    READ = "read", "Read usage, models and backends"
    MANAGE = "manage", "Manage the organization (/api/v1: keys, usage, invoices)"


#: What a key gets when none are asked for: `manage` is only ever given on purpose.
DEFAULT_SCOPES = (Scope.INFERENCE, Scope.ROUTE, Scope.READ)


def _all_scopes() -> list[str]:
    return [str(scope) for scope in DEFAULT_SCOPES]


class ApiKey(models.Model):
    """A secret that lets a program act for an organization.

    Stored as `lookup` (the 8-character prefix after `tsk_`, indexed) and `digest`
    (HMAC-SHA256 of the whole key); see `accounts.keys`. The plaintext is shown once
    at creation. The `default_*` fields apply to requests that do not say otherwise.
    """

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    created_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    name = models.CharField(max_length=100)
    lookup = models.CharField(max_length=8, unique=True)
    digest = models.CharField(max_length=64)
    scopes = models.JSONField(default=_all_scopes)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    default_regions = models.JSONField(
        default=list, blank=True, help_text="Region slugs requests may run in; empty = any."
    )
    default_compliance = models.JSONField(
        default=list, blank=True, help_text="Certifications every request requires, e.g. hipaa."
    )
    default_max_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    default_max_ttft_ms = models.PositiveIntegerField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(expires_at__isnull=True)
                | models.Q(expires_at__gt=models.F("created_at")),
                name="apikey_expires_after_creation",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.display_prefix})"

    @property
    def display_prefix(self) -> str:
        return f"tsk_{self.lookup}…"

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()


class OperatorAction(models.Model):
    """What an operator did, to what, when and why (written only by
    `accounts.operator_actions.record_operator_action`)."""

    actor = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    #: kept as written, so the entry survives the account
    actor_email = models.EmailField(blank=True)
    action = models.CharField(max_length=40)
    target = models.CharField(max_length=200)
    reason = models.TextField()
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.actor_email or 'system'}: {self.action} {self.target}"


# The audit log's models live with its code (`accounts.audit`); Django finds them here.
from accounts.audit import AuditChain, AuditEntry  # noqa: E402, F401
