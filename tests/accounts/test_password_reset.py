"""Password reset: Django's signed link by mail, our pages; it tells strangers nothing."""

from __future__ import annotations

import re

from django.core import mail
from django.test import Client

from accounts.models import User
from tests.conftest import PASSWORD

LINK = re.compile(r"http://testserver(/account/password/reset/[^/\s]+/[^/\s]+/)")
NEW_PASSWORD = "a brand new passphrase 42"


def ask_reset(client: Client, email: str) -> str:
    response = client.post("/account/password/reset/", {"email": email})
    assert response.status_code == 302
    assert response["Location"] == "/account/password/reset/sent/"
    return client.get(response["Location"]).content.decode()


def test_a_known_address_gets_a_link_that_sets_a_new_password_once(alice):
    client = Client()
    ask_reset(client, "alice@example.com")
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["alice@example.com"]
    assert mail.outbox[0].subject == "Reset your Tesseract password"
    link = LINK.search(mail.outbox[0].body).group(1)

    form = client.get(link, follow=True)  # Django swaps the token for a session marker
    assert "Choose a new password" in form.content.decode()
    set_url = form.redirect_chain[-1][0]
    done = client.post(set_url, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})
    assert done["Location"] == "/account/password/reset/done/"
    alice.refresh_from_db()
    assert alice.check_password(NEW_PASSWORD)

    again = Client().get(link, follow=True)
    assert "This link does not work" in again.content.decode()


def test_an_unknown_address_gets_the_same_answer_and_a_mail_without_a_link(alice):
    known = ask_reset(Client(), "alice@example.com")
    unknown = ask_reset(Client(), "nobody@example.com")
    assert known == unknown
    # One mail each, so not even the time taken tells them apart.
    assert [m.to for m in mail.outbox] == [["alice@example.com"], ["nobody@example.com"]]
    note = mail.outbox[1]
    assert note.subject == mail.outbox[0].subject
    assert "no account signs in with this address" in note.body
    assert LINK.search(note.body) is None
    assert "http://testserver/account/signup/" in note.body


def test_a_weak_new_password_is_refused_with_a_clear_error(alice):
    client = Client()
    ask_reset(client, "alice@example.com")
    link = LINK.search(mail.outbox[0].body).group(1)
    set_url = client.get(link, follow=True).redirect_chain[-1][0]
    response = client.post(set_url, {"new_password1": "short", "new_password2": "short"})
    assert response.status_code == 200
    assert "too short" in response.content.decode()
    alice.refresh_from_db()
    assert alice.check_password(PASSWORD)


def test_the_sign_in_page_links_to_reset_and_sign_up(db):
    page = Client().get("/account/login/").content.decode()
    assert 'href="/account/password/reset/"' in page
    assert 'href="/account/signup/"' in page


def test_a_bad_address_in_the_reset_form_gets_a_clear_error(db):
    response = Client().post("/account/password/reset/", {"email": "not an address"})
    assert response.status_code == 200
    assert "valid email" in response.content.decode()
    assert mail.outbox == []
    assert not User.objects.exists()
