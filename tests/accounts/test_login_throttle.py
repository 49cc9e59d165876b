"""Sign-in is throttled by account and by address (django-axes), with a clear message."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import services
from accounts.models import User
from tests.accounts.test_two_factor import current_code
from tests.conftest import PASSWORD

LOGIN = "/account/login/"


@pytest.fixture(autouse=True)
def fast_hashing(settings):
    """Hundreds of sign-ins: a cheap hasher keeps the module quick (the throttle is
    what is under test, not PBKDF2)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def sign_in(client: Client, email: str, password: str, address: str = "127.0.0.1"):
    return client.post(LOGIN, {"username": email, "password": password}, REMOTE_ADDR=address)


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_forty_wrong_passwords_then_the_right_one_does_not_sign_in(alice):
    client = Client()
    for _ in range(40):
        assert sign_in(client, alice.email, "wrong password").status_code in (200, 429)
    response = sign_in(client, alice.email, PASSWORD)
    assert response.status_code == 429
    assert not signed_in(client)
    page = response.content.decode()
    assert "Too many failed sign-ins" in page
    assert f"Wait {settings.AXES_COOLOFF_TIME.seconds // 60} minutes" in page
    assert int(response["Retry-After"]) == settings.AXES_COOLOFF_TIME.seconds


def test_after_the_cool_off_the_right_password_signs_in_again(alice, time_machine):
    time_machine.move_to(timezone.now(), tick=False)
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client, alice.email, "wrong password")
    assert sign_in(client, alice.email, PASSWORD).status_code == 429
    time_machine.shift(settings.AXES_COOLOFF_TIME - timedelta(seconds=30))
    assert sign_in(client, alice.email, PASSWORD).status_code == 429
    time_machine.shift(timedelta(seconds=31))
    response = sign_in(client, alice.email, PASSWORD)
    assert response.status_code == 302
    assert signed_in(client)


def test_an_account_is_locked_whatever_address_the_guesses_come_from(alice):
    for n in range(settings.AXES_FAILURE_LIMIT):
        sign_in(Client(), alice.email, "wrong password", address=f"10.0.0.{n + 1}")
    client = Client()
    assert sign_in(client, alice.email, PASSWORD, address="192.0.2.7").status_code == 429
    assert not signed_in(client)


def test_an_address_that_guesses_across_accounts_is_locked_and_others_are_not(alice, bob):
    for n in range(settings.AXES_FAILURE_LIMIT):
        sign_in(Client(), f"nobody{n}@example.com", "guess", address="203.0.113.9")
    locked = Client()
    assert sign_in(locked, bob.email, PASSWORD, address="203.0.113.9").status_code == 429
    elsewhere = Client()
    assert sign_in(elsewhere, bob.email, PASSWORD, address="198.51.100.1").status_code == 302
    assert signed_in(elsewhere)


def test_a_successful_sign_in_resets_the_count(alice):
    for _ in range(2):
        for _ in range(settings.AXES_FAILURE_LIMIT - 1):
            sign_in(Client(), alice.email, "wrong password")
        client = Client()
        assert sign_in(client, alice.email, PASSWORD).status_code == 302
        assert signed_in(client)


def test_the_second_factor_still_follows_a_password_sign_in(db):
    ops = User.objects.create_user("ops@example.com", PASSWORD, is_staff=True)
    device = TOTPDevice.objects.create(user=ops, confirmed=True)
    sign_in(Client(), ops.email, "wrong password")
    client = Client()
    response = sign_in(client, ops.email, PASSWORD)
    assert response.status_code == 302
    response = client.get("/admin/")
    assert response["Location"].startswith("/account/2fa/verify/")
    response = client.post("/account/2fa/verify/?next=/console/", {"token": current_code(device)})
    assert response["Location"] == "/console/"
    assert client.get("/console/").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_api_keys_keep_working_while_sign_in_is_locked_for_the_address(alice, acme):
    from tesseract_web.asgi import application
    from tests.servers import serve

    for _ in range(settings.AXES_FAILURE_LIMIT + 5):
        sign_in(Client(), alice.email, "wrong password")
    assert sign_in(Client(), alice.email, PASSWORD).status_code == 429
    key = services.api_key_create(org=acme, name="ci").plaintext
    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0
    with serve(application) as url:
        response = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text


def test_changing_the_case_of_the_address_does_not_dodge_the_account_lock(alice):
    for n in range(settings.AXES_FAILURE_LIMIT):
        spelling = alice.email.upper() if n % 2 else f" {alice.email.title()} "
        sign_in(Client(), spelling, "wrong password", address=f"10.0.1.{n + 1}")
    assert sign_in(Client(), alice.email, PASSWORD, address="192.0.2.8").status_code == 429
