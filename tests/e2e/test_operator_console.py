"""An operator's sign-in in a real browser: password, then the authenticator's code
(staff always need one), then the console (checked and photographed) and the admin."""

from __future__ import annotations

from django_otp.plugins.otp_totp.models import TOTPDevice
from playwright.sync_api import expect

from accounts.models import User
from tests.e2e.conftest import Browser
from tests.e2e.test_developer_journey import totp_code

OPS_EMAIL = "ops@example.com"
OPS_PASSWORD = "an operator's long passphrase 9"


def test_an_operator_signs_in_with_a_code_and_sees_the_live_console(browser):
    ops = User.objects.create_user(OPS_EMAIL, OPS_PASSWORD, is_staff=True, is_superuser=True)
    secret = TOTPDevice.objects.create(user=ops, name="phone", confirmed=True).bin_key.hex()

    def console(browser: Browser) -> None:
        page = browser.page
        browser.visit("/console/")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        page.get_by_label("Email", exact=True).fill(OPS_EMAIL)
        page.get_by_label("Password").fill(OPS_PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Enter your code")).to_be_visible()
        page.get_by_label("Code", exact=True).fill(totp_code(secret))
        page.get_by_role("button", name="Verify").click()

        expect(page.get_by_role("heading", name="The mesh, live")).to_be_visible()
        # The live view fills the table from maps.json without a reload.
        expect(page.locator("#deployments tbody tr").first).to_be_visible()
        browser.look("console")
        browser.visit("/admin/")  # Django's own pages: opened, not judged
        expect(page.get_by_role("heading", name="Site administration")).to_be_visible()
        browser.assert_accessible()

    browser(console)
