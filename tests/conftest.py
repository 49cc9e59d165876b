"""The cast: alice owns Acme, bob is her teammate, charlie runs another org (Globex).

Charlie must never see anything of Acme's: where he asks, the answer is 404.
"""

from __future__ import annotations

import pytest
from django.test import Client

from accounts import services
from accounts.models import Organization, Role, User
from tests import tiers

PASSWORD = "correct horse battery staple"


@pytest.fixture
def alice(db) -> User:
    return User.objects.create_user("alice@example.com", PASSWORD, name="Alice")


@pytest.fixture
def bob(db) -> User:
    return User.objects.create_user("bob@example.com", PASSWORD, name="Bob")


@pytest.fixture
def charlie(db) -> User:
    return User.objects.create_user("charlie@example.com", PASSWORD, name="Charlie")


@pytest.fixture
def acme(alice: User, bob: User) -> Organization:
    org = services.organization_create(name="Acme", owner=alice)
    services.membership_add(org=org, user=bob, role=Role.DEVELOPER)
    return org


@pytest.fixture
def globex(charlie: User) -> Organization:
    return services.organization_create(name="Globex", owner=charlie)


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def verified(user: User) -> Client:
    """Signed in and past the second factor with the user's authenticator, as
    `django_otp.login` leaves a session (the console and the admin ask for it)."""
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    client = login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = TOTPDevice.objects.get(user=user).persistent_id
    session.save()
    return client


def staff_login(email: str) -> Client:
    """A superuser signed in and past the second factor (what the admin requires)."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    user = User.objects.create_superuser(email)
    TOTPDevice.objects.create(user=user, confirmed=True)
    client = login(user)
    client.post("/account/2fa/verify/", {"token": services.backup_codes_regenerate(user=user)[0]})
    return client


@pytest.fixture(autouse=True)
def _default_tiers(request: pytest.FixtureRequest) -> None:
    """The tiers the migrations seed, back after a transactional test flushed them.

    (A `transaction=True` test empties every table when it ends, seeded rows included.)
    """
    for name in ("transactional_db", "db"):
        if name in request.fixturenames:
            request.getfixturevalue(name)
            tiers.ensure_default_tiers()
            return
