"""A developer's first hour, in a real browser: sign up, confirm the address, turn on
two-factor authentication, sign in again with a code, create a key, call the gateway
with the official `openai` SDK, and see the call on the organization's page.

Every main page on the way is checked with axe-core and photographed, light and dark.
"""

from __future__ import annotations

import re
import time
from typing import Any

import openai
from django.conf import settings
from django.core import mail
from django_otp.oath import TOTP
from playwright.sync_api import expect

from tests.e2e.conftest import Browser, in_thread

EMAIL = "dana@example.com"
PASSWORD = "a long and unusual passphrase 7"
ORG = "Dana Labs"
MODEL = "llama-3.1-8b-instruct"


def totp_code(secret_hex: str, *, after_step: int | None = None) -> str:
    """The authenticator app's code now, or for the first step after `after_step`.

    A device refuses a step it has already accepted (replay), and accepts one step
    ahead: asking again within the same 30 s uses the next step's code.
    """
    totp = TOTP(bytes.fromhex(secret_hex), step=30, t0=0, digits=6)
    now = totp.t()
    if after_step is not None and now <= after_step:
        totp.time = (after_step + 1) * 30 + 1
    return f"{totp.token():06d}"


def last_step(email: str) -> int:
    from django_otp.plugins.otp_totp.models import TOTPDevice

    return in_thread(lambda: TOTPDevice.objects.get(user__email=email, confirmed=True).last_t)


def wait_until_codes_are_taken(email: str) -> None:
    """After a wrong code django-otp refuses every code for a moment (1 s, doubling)."""
    from django_otp import devices_for_user

    from accounts.models import User

    def allowed() -> bool:
        user = User.objects.get(email=email)
        return all(d.verify_is_allowed()[0] for d in devices_for_user(user))

    deadline = time.monotonic() + 60
    while not in_thread(allowed):
        assert time.monotonic() < deadline, "the device stayed throttled"
        time.sleep(0.2)


def mailed_link(to: str, pattern: str) -> str:
    """The link matching `pattern` in the last mail to `to` (the test's outbox)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for message in reversed(mail.outbox):
            found = re.search(pattern, message.body)
            if to in message.to and found:
                return found.group(0)
        time.sleep(0.1)
    raise AssertionError(f"no mail to {to} with {pattern!r}: {[m.subject for m in mail.outbox]}")


def follow_mailed_link(browser: Browser, path_pattern: str, heading: str, name: str) -> None:
    """Open the link of the last mail to the developer; the page it opens is `heading`."""
    browser.page.goto(mailed_link(EMAIL, r"http://\S+" + path_pattern))
    expect(browser.page.get_by_role("heading", name=heading)).to_be_visible()
    browser.look(name)


def sign_up(browser: Browser) -> None:
    page = browser.page
    browser.visit("/account/login/")
    browser.look("login")
    page.get_by_role("link", name="Create an account").click()
    expect(page.get_by_role("heading", name="Create an account")).to_be_visible()
    page.get_by_label("Work email").fill("not an address")
    page.get_by_label("Organization name").fill(ORG)
    page.get_by_role("button", name="Send the confirmation link").click()
    expect(page.locator("#id_email_error")).to_contain_text("valid email")
    browser.look("signup-with-errors")

    page.get_by_label("Work email").fill(EMAIL)
    page.get_by_role("button", name="Send the confirmation link").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    browser.look("signup-sent")
    follow_mailed_link(
        browser, r"/account/signup/verify/\S+/", "Finish signing up", "signup-verify"
    )
    page.get_by_label("Your name").fill("Dana")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Create my account").click()


def enrol_totp(browser: Browser) -> tuple[str, list[str]]:
    """Turn on 2FA from the setup page; the key (hex) and the backup codes."""
    page = browser.page
    expect(page.get_by_role("heading", name="Set up two-factor authentication")).to_be_visible()
    expect(page.locator(".qr svg")).to_be_visible()
    browser.look("2fa-setup")
    page.get_by_text("Can't scan? Enter the key by hand").click()
    secret = page.get_by_test_id("totp-secret").inner_text().strip()
    page.get_by_label("Code", exact=True).fill(totp_code(secret))
    page.get_by_role("button", name="Verify and turn on").click()
    expect(page.get_by_role("heading", name="Two-factor authentication is on")).to_be_visible()
    codes = [c.strip() for c in page.locator(".codes code").all_inner_texts()]
    assert len(codes) == 10
    browser.look("2fa-backup-codes")
    page.get_by_role("link", name="Continue").click()
    return secret, codes


def sign_up_with_2fa(browser: Browser) -> tuple[str, list[str]]:
    """A new developer, signed up and enrolled, on their organization's page."""
    sign_up(browser)
    secret, codes = enrol_totp(browser)
    expect_overview(browser.page)
    return secret, codes


def sign_in_with_password(page: Any, password: str) -> None:
    """The sign-in form, up to the second factor it asks for."""
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Email", exact=True).fill(EMAIL)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Enter your code")).to_be_visible()


def sign_in_with_code(browser: Browser, secret: str) -> None:
    page = browser.page
    page.get_by_role("button", name="Sign out").click()
    sign_in_with_password(page, PASSWORD)
    browser.look("2fa-verify")
    page.get_by_label("Code", exact=True).fill("000000")
    page.get_by_role("button", name="Verify").click()
    expect(page.locator("#id_token_error")).to_contain_text("not right")
    wait_until_codes_are_taken(EMAIL)
    page.get_by_label("Code", exact=True).fill(totp_code(secret, after_step=last_step(EMAIL)))
    page.get_by_role("button", name="Verify").click()
    expect_overview(page)


def expect_overview(page: Any) -> None:
    """The organization's overview: its name heads the navigation."""
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.get_by_role("navigation", name=ORG)).to_be_visible()


def create_key(browser: Browser) -> str:
    page = browser.page
    page.get_by_role("link", name="API keys").click()
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    page.locator("#id_name").fill("e2e laptop")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", name="Key created")).to_be_visible()
    key = page.locator("#new-key").inner_text().strip()
    assert key.startswith("tsk_")
    browser.look("key-created")
    page.get_by_role("link", name="Done").click()
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    return key


def call_gateway(browser: Browser, key: str) -> dict[str, Any]:
    """One chat completion through the gateway with the official SDK: where it ran."""
    client = openai.OpenAI(
        base_url=f"{browser.site.gateway_url}/v1", api_key=key, max_retries=0, timeout=120
    )
    reply = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello from the browser test"}]
    )
    completion = reply.parse()
    assert completion.choices[0].message.content
    return {
        "backend": completion.model_extra["tesseract"]["route"]["backend"],
        "route": reply.headers["x-tesseract-route"],
        "trace_id": reply.headers["x-tesseract-trace-id"],
    }


def see_the_request(browser: Browser, org_slug: str, request: dict[str, Any]) -> None:
    """The call shows in the request log, and opens to its route, its latency
    breakdown and its proof of residency."""
    import redis

    from billing.services import usage_events_drain

    page = browser.page
    # The billing worker's job, done here: the usage stream into the database.
    client = redis.Redis.from_url(settings.REDIS_URL)
    in_thread(lambda: usage_events_drain(client=client, claim_idle_ms=0))
    browser.visit(f"/orgs/{org_slug}/requests/")
    rows = page.get_by_role("row").filter(has_text=MODEL)
    expect(rows).to_have_count(1)
    browser.look("request-log")
    rows.first.get_by_role("link").first.click()
    expect(page.get_by_role("heading", name=re.compile("^Request"))).to_be_visible()
    expect(page.locator("dd code", has_text=request["backend"])).to_be_visible()
    expect(page.get_by_text(request["trace_id"])).to_be_visible()
    expect(page.get_by_role("heading", name="Latency breakdown")).to_be_visible()
    proof = page.get_by_role("link", name="Download proof of residency")
    answer = page.request.get(browser.site.web_url + (proof.get_attribute("href") or ""))
    assert answer.ok, answer.status
    assert request["backend"] in answer.text()
    browser.look("request-detail")


def test_a_developer_signs_up_turns_on_2fa_creates_a_key_and_sees_their_first_request(browser):
    browser(first_hour)


def first_hour(browser: Browser) -> None:
    page = browser.page
    secret, _codes = sign_up_with_2fa(browser)
    org_slug = page.url.rstrip("/").rsplit("/", 1)[-1]
    assert org_slug == "dana-labs"
    browser.look("org")

    sign_in_with_code(browser, secret)
    key = create_key(browser)
    request = call_gateway(browser, key)
    assert request["route"]
    see_the_request(browser, org_slug, request)
    browser.visit(f"/orgs/{org_slug}/")
    browser.look("org-with-a-first-request")
    for page_name in ("usage", "map", "explain", "keys", "billing", "quickstart", "clusters"):
        browser.visit(f"/orgs/{org_slug}/{page_name}/")
        browser.look(f"org-{page_name}")

    browser.visit(f"/orgs/{org_slug}/members/")
    browser.look("members")
    browser.visit(f"/orgs/{org_slug}/invoices/")
    browser.look("invoices")
    browser.assert_accessible()
    browser.assert_fits()


def test_a_lost_phone_is_answered_with_a_backup_code_and_a_forgotten_password_by_mail(browser):
    browser(lost_phone_and_password)


def lost_phone_and_password(browser: Browser) -> None:
    page = browser.page
    _secret, codes = sign_up_with_2fa(browser)
    page.get_by_role("button", name="Sign out").click()

    page.get_by_role("link", name="Forgot your password?").click()
    expect(page.get_by_role("heading", name="Reset your password")).to_be_visible()
    browser.look("password-reset")
    page.get_by_label("Email", exact=True).fill(EMAIL)
    page.get_by_role("button", name="Send the reset link").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    browser.look("password-reset-sent")
    follow_mailed_link(
        browser,
        r"/account/password/reset/\S+/\S+/",
        "Choose a new password",
        "password-reset-confirm",
    )
    new_password = PASSWORD + " renewed"
    page.get_by_label("New password", exact=True).fill(new_password)
    page.get_by_label("New password confirmation").fill(new_password)
    page.get_by_role("button", name="Change my password").click()
    expect(page.get_by_role("heading", name="Your password is changed")).to_be_visible()
    browser.look("password-reset-complete")

    page.get_by_role("link", name="Sign in").last.click()
    sign_in_with_password(page, new_password)
    page.get_by_label("Code", exact=True).fill(codes[0])
    page.get_by_role("button", name="Verify").click()
    expect_overview(page)
    browser.assert_accessible()
    browser.assert_fits()
