"""Demo tenants for the default local run (`make run`). Never in production."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from accounts import services
from accounts.models import ApiKey, Organization, Role, User

DEMO_PASSWORD = "tesseract-demo"  # noqa: S105 - a local demo, refused in production
DEVELOPER_EMAIL = "alice@example.com"
OPERATOR_EMAIL = "ops@example.com"
ORG_NAME = "Demo Org"
KEY_NAME = "make run"


@dataclass(frozen=True)
class DemoLogins:
    developer_email: str
    operator_email: str
    password: str
    org: Organization
    api_key: str


@transaction.atomic
def demo_accounts_ensure() -> DemoLogins:
    """Create (once) a developer and an operator, and issue a fresh API key every call.

    The demo keys of earlier runs are revoked: each run leaves exactly one all-scope
    demo key active, the one it printed.
    """
    if settings.PRODUCTION:
        raise RuntimeError("demo accounts are for local runs only, never in production")
    alice = User.objects.filter(email=DEVELOPER_EMAIL).first()
    if alice is None:
        alice = User.objects.create_user(DEVELOPER_EMAIL, DEMO_PASSWORD, name="Alice Developer")
    if not User.objects.filter(email=OPERATOR_EMAIL).exists():
        User.objects.create_user(
            OPERATOR_EMAIL, DEMO_PASSWORD, name="Oscar Operator", is_staff=True, is_superuser=True
        )
    org = Organization.objects.filter(memberships__user=alice, memberships__role=Role.OWNER).first()
    if org is None:
        org = services.organization_create(name=ORG_NAME, owner=alice)
    for previous in ApiKey.objects.usable().filter(org=org, name=KEY_NAME):
        services.api_key_revoke(api_key=previous)
    issued = services.api_key_create(org=org, name=KEY_NAME, created_by=alice)
    return DemoLogins(DEVELOPER_EMAIL, OPERATOR_EMAIL, DEMO_PASSWORD, org, issued.plaintext)
