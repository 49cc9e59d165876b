"""Sign-up by email: a signed, expiring link, then a password; the org opens on Free.

Sign-up must not tell a stranger whether an address has an account.
"""

from __future__ import annotations

import re

import pytest
import time_machine
from django.core import mail
from django.test import Client
from django.utils import timezone

from accounts import signup
from accounts.models import Membership, Organization, Role, User
from billing.models import BillingAccount
from billing.tiers import FREE
from tests.conftest import PASSWORD

LINK = re.compile(r"http://testserver(/account/signup/verify/[^/\s]+/)")


def sign_up(client: Client, email: str = "dana@example.com", org: str = "Dana Labs") -> str:
    """Post the sign-up form; the path of the link mailed, or '' if none was."""
    mail.outbox.clear()
    response = client.post("/account/signup/", {"email": email, "org_name": org})
    assert response.status_code == 302
    assert response["Location"] == "/account/signup/sent/"
    assert len(mail.outbox) == 1
    found = LINK.search(mail.outbox[0].body)
    return found.group(1) if found else ""


def test_a_new_address_gets_a_link_and_no_account_exists_before_it_is_opened(db):
    link = sign_up(Client())
    assert link
    assert mail.outbox[0].to == ["dana@example.com"]
    assert mail.outbox[0].subject == "Confirm your Tesseract sign-up"
    assert not User.objects.filter(email="dana@example.com").exists()
    assert not Organization.objects.filter(name="Dana Labs").exists()


def test_the_link_leads_to_a_password_then_an_owned_org_on_the_free_tier_and_2fa_setup(db):
    client = Client()
    link = sign_up(client, email="Dana@Example.com ")
    page = client.get(link)
    assert page.status_code == 200
    assert "dana@example.com" in page.content.decode()
    assert not User.objects.exists()  # opening the link changes nothing (mail scanners)

    response = client.post(link, {"name": "Dana", "password1": PASSWORD, "password2": PASSWORD})
    assert response.status_code == 302
    user = User.objects.get(email="dana@example.com")
    assert user.check_password(PASSWORD)
    assert user.name == "Dana"
    membership = Membership.objects.select_related("org").get(user=user)
    assert membership.role == Role.OWNER
    assert membership.org.name == "Dana Labs"
    assert BillingAccount.objects.get(org=membership.org).tier.slug == FREE.slug
    assert response["Location"] == f"/account/2fa/setup/?next=/orgs/{membership.org.slug}/"
    # Signed in: the setup page offers to skip, and the org page opens.
    setup = client.get(response["Location"])
    assert setup.status_code == 200
    assert "Skip for now" in setup.content.decode()
    assert client.get(f"/orgs/{membership.org.slug}/").status_code == 200


def test_a_link_works_once(db):
    client = Client()
    link = sign_up(client)
    form = {"password1": PASSWORD, "password2": PASSWORD}
    assert client.post(link, form).status_code == 302
    again = Client().post(link, form)
    assert again.status_code == 400
    assert "already" in again.content.decode()
    assert Organization.objects.count() == 1


def test_an_expired_link_is_refused_and_creates_nothing(db, settings):
    settings.TESSERACT_SIGNUP_LINK_MAX_AGE_H = 48
    client = Client()
    link = sign_up(client)
    with time_machine.travel(timezone.now() + timezone.timedelta(hours=49)):
        response = client.post(link, {"password1": PASSWORD, "password2": PASSWORD})
    assert response.status_code == 400
    assert "expired" in response.content.decode()
    assert not User.objects.exists()


def test_a_forged_or_altered_link_is_refused(db):
    forged = signup.signup_token(signup.SignupClaim("eve@example.com", "Eve"))[:-3] + "abc"
    response = Client().get(f"/account/signup/verify/{forged}/")
    assert response.status_code == 400
    assert "not valid" in response.content.decode()


def test_an_address_with_an_account_gets_the_same_answer_and_a_reminder_instead(alice):
    new, known = Client(), Client()
    assert sign_up(new, email="dana@example.com")
    fresh_page = new.get("/account/signup/sent/").content.decode()

    assert sign_up(known, email="ALICE@example.com") == ""  # no link: a reminder
    reminder = mail.outbox[0]
    assert reminder.to == ["alice@example.com"]
    assert "already has an account" in reminder.body
    assert "/account/password/reset/" in reminder.body
    known_page = known.get("/account/signup/sent/").content.decode()
    # Apart from the address echoed to the one who typed it, the pages are the same.
    assert known_page.replace("alice@example.com", "X") == fresh_page.replace(
        "dana@example.com", "X"
    )
    assert User.objects.count() == 1
    assert not Organization.objects.exists()


@pytest.mark.parametrize(
    ("form", "field", "message"),
    [
        ({"email": "not-an-address", "org_name": "Dana Labs"}, "email", "valid email"),
        ({"email": "dana@example.com", "org_name": "   "}, "org_name", "required"),
        ({"email": "", "org_name": "Dana Labs"}, "email", "required"),
    ],
)
def test_bad_sign_up_input_gets_a_clear_error_and_sends_nothing(db, form, field, message):
    response = Client().post("/account/signup/", form)
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert message in " ".join(errors[field])
    assert f'id="id_{field}_error"' in response.content.decode()
    assert mail.outbox == []


@pytest.mark.parametrize(
    ("password1", "password2", "message"),
    [
        ("short", "short", "too short"),
        ("password123", "password123", "too common"),
        (PASSWORD, PASSWORD + "x", "differ"),
        ("dana-example-com", "dana-example-com", "too similar"),
    ],
)
def test_a_weak_or_mismatched_password_is_refused_and_creates_nothing(
    db, password1, password2, message
):
    client = Client()
    link = sign_up(client)
    response = client.post(link, {"password1": password1, "password2": password2})
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not User.objects.exists()


def test_a_signed_in_user_is_sent_home_from_sign_up(alice):
    from tests.conftest import login

    response = login(alice).get("/account/signup/")
    assert response.status_code == 302
