from __future__ import annotations

import time

from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import User
from tests.conftest import PASSWORD, login


def current_code(device: TOTPDevice) -> str:
    code = totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits)
    return f"{code:0{device.digits}d}"


def staff(db) -> User:
    return User.objects.create_user("ops@example.com", PASSWORD, is_staff=True, is_superuser=True)


def test_staff_without_a_device_are_sent_to_enrol_before_anything_else(db):
    client = login(staff(db))
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/account/2fa/setup/")


def test_enrolment_shows_a_qr_code_and_a_first_code_turns_it_on(db):
    user = staff(db)
    client = login(user)
    page = client.get("/account/2fa/setup/")
    assert page.status_code == 200
    assert "<svg" in page.content.decode()
    device = TOTPDevice.objects.get(user=user, confirmed=False)

    response = client.post("/account/2fa/setup/?next=/admin/", {"token": current_code(device)})
    assert response.status_code == 200
    codes = response.context["codes"]
    assert len(codes) == 10
    device.refresh_from_db()
    assert device.confirmed
    assert client.get("/admin/").status_code == 200


def test_a_wrong_first_code_leaves_the_device_unconfirmed(db):
    user = staff(db)
    client = login(user)
    client.get("/account/2fa/setup/")
    response = client.post("/account/2fa/setup/", {"token": "000000"})
    assert response.status_code == 200
    assert "not right" in response.content.decode()
    assert not TOTPDevice.objects.get(user=user).confirmed
    assert client.get("/admin/").status_code == 302


def test_an_enrolled_staff_member_must_verify_at_each_sign_in(db):
    user = staff(db)
    device = TOTPDevice.objects.create(user=user, confirmed=True)
    client = login(user)
    response = client.get("/admin/")
    assert response["Location"].startswith("/account/2fa/verify/")
    response = client.post("/account/2fa/verify/?next=/admin/", {"token": current_code(device)})
    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_a_backup_code_works_once(db):
    user = staff(db)
    TOTPDevice.objects.create(user=user, confirmed=True)
    enrol = login(user)
    from accounts.services import backup_codes_regenerate

    code = backup_codes_regenerate(user=user)[0]
    assert enrol.post("/account/2fa/verify/", {"token": code}).status_code == 302

    again = login(user)
    response = again.post("/account/2fa/verify/", {"token": code})
    assert response.status_code == 200
    assert StaticToken.objects.filter(token=code).count() == 0


def test_a_verify_redirect_never_leaves_the_site(db):
    user = staff(db)
    device = TOTPDevice.objects.create(user=user, confirmed=True)
    client = login(user)
    response = client.post(
        "/account/2fa/verify/?next=https://evil.example/", {"token": current_code(device)}
    )
    assert response["Location"] == "/"


def test_developers_need_no_second_factor_unless_their_org_requires_it(alice, acme):
    client = login(alice)
    assert client.get(f"/orgs/{acme.slug}/").status_code == 200
    acme.require_2fa = True
    acme.save()
    response = client.get(f"/orgs/{acme.slug}/")
    assert response.status_code == 302
    assert response["Location"].startswith("/account/2fa/setup/")


def test_an_org_that_requires_2fa_binds_all_its_members(acme, bob):
    acme.require_2fa = True
    acme.save()
    assert bob.needs_two_factor()


def test_the_totp_window_is_standard_thirty_seconds(db):
    device = TOTPDevice.objects.create(user=staff(db), confirmed=True)
    assert device.step == 30
    assert device.digits == 6
    assert abs(device.t0) < time.time()


def test_the_admin_sign_in_is_the_one_sign_in_page(client, db):
    response = client.get("/admin/")
    assert response.status_code == 302
    response = client.get(response["Location"])
    assert response.status_code == 302
    assert response["Location"].startswith("/account/login/?next=/admin/")


def test_a_signed_in_developer_is_not_an_operator(alice):
    response = login(alice).get("/admin/", follow=True)
    assert response.status_code == 403


def sign_in(email: str) -> Client:
    """A real sign-in with the password, through the form (not force_login)."""
    client = Client()
    response = client.post("/account/login/", {"username": email, "password": PASSWORD})
    assert response.status_code == 302, "the password was refused"
    return client


def test_a_developer_who_turned_2fa_on_is_asked_for_a_code_at_every_sign_in(alice, acme):
    client = sign_in("alice@example.com")
    client.get("/account/2fa/setup/")
    device = TOTPDevice.objects.get(user=alice, confirmed=False)
    client.post("/account/2fa/setup/", {"token": current_code(device)})

    later = sign_in("alice@example.com")
    response = later.get(f"/orgs/{acme.slug}/")
    assert response.status_code == 302
    assert response["Location"] == f"/account/2fa/verify/?next=/orgs/{acme.slug}/"
    assert later.post(response["Location"], {"token": "000000"}).status_code == 200
    assert later.get(f"/orgs/{acme.slug}/").status_code == 302  # a wrong code opens nothing


def test_a_backup_code_from_enrolment_signs_in_once_when_the_phone_is_lost(alice, acme):
    client = sign_in("alice@example.com")
    client.get("/account/2fa/setup/")
    device = TOTPDevice.objects.get(user=alice, confirmed=False)
    page = client.post(
        f"/account/2fa/setup/?next=/orgs/{acme.slug}/", {"token": current_code(device)}
    )
    codes = page.context["codes"]
    assert f'href="/orgs/{acme.slug}/"' in page.content.decode()  # "Continue"

    lost_phone = sign_in("alice@example.com")
    response = lost_phone.post(
        f"/account/2fa/verify/?next=/orgs/{acme.slug}/", {"token": f" {codes[3]} "}
    )
    assert response["Location"] == f"/orgs/{acme.slug}/"
    assert lost_phone.get(f"/orgs/{acme.slug}/").status_code == 200

    replay = sign_in("alice@example.com")
    assert replay.post("/account/2fa/verify/", {"token": codes[3]}).status_code == 200
    assert replay.get(f"/orgs/{acme.slug}/").status_code == 302


def test_the_backup_codes_page_continues_home_when_no_next_is_given(alice):
    client = login(alice)
    client.get("/account/2fa/setup/")
    device = TOTPDevice.objects.get(user=alice, confirmed=False)
    page = client.post("/account/2fa/setup/", {"token": current_code(device)})
    assert 'href="/"' in page.content.decode()


def test_right_after_a_wrong_code_the_page_says_to_wait_rather_than_not_right(db):
    user = staff(db)
    device = TOTPDevice.objects.create(user=user, confirmed=True)
    client = login(user)
    first = client.post("/account/2fa/verify/", {"token": "000000"})
    assert "That code is not right." in first.content.decode()
    second = client.post("/account/2fa/verify/", {"token": current_code(device)})
    assert second.status_code == 200  # throttled: even the right code waits
    assert "wait a few seconds" in second.content.decode()
