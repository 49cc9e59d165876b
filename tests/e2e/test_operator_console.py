"""An operator in a real browser: password, then the authenticator's code (staff always
need one), then the console (checked and photographed) and the admin; and the kill
switch: a drain clicked on the console shows in its live table without a reload, and
the gateway's next routes avoid the drained deployment."""

from __future__ import annotations

import re

import httpx
import openai
from django_otp.plugins.otp_totp.models import TOTPDevice
from playwright.sync_api import expect

from accounts import services
from accounts.models import User
from backends.models import Deployment
from tests.e2e.conftest import Browser, in_thread
from tests.e2e.test_developer_journey import MODEL, totp_code
from tests.gateway.test_control_plane import eventually

OPS_EMAIL = "ops@example.com"
OPS_PASSWORD = "an operator's long passphrase 9"


def test_an_operator_signs_in_with_a_code_and_sees_the_live_console(browser):
    ops = User.objects.create_user(OPS_EMAIL, OPS_PASSWORD, is_staff=True, is_superuser=True)
    secret = TOTPDevice.objects.create(user=ops, name="phone", confirmed=True).bin_key.hex()

    def console(browser: Browser) -> None:
        page = browser.page
        operator_signs_in(browser, secret)
        # The live view fills the table from maps.json without a reload.
        expect(page.locator("#deployments tbody tr").first).to_be_visible()
        browser.look("console")
        browser.visit("/admin/")  # Django's own pages: opened, not judged
        expect(page.get_by_role("heading", name="Site administration")).to_be_visible()
        browser.assert_accessible()
        browser.assert_fits()

    browser(console)


def operator_signs_in(browser: Browser, secret: str) -> None:
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


def test_a_deployment_drained_from_the_console_shows_live_and_the_next_requests_avoid_it(
    browser,
):
    ops = User.objects.create_user(OPS_EMAIL, OPS_PASSWORD, is_staff=True, is_superuser=True)
    secret = TOTPDevice.objects.create(user=ops, name="phone", confirmed=True).bin_key.hex()
    org = services.organization_create(name="Ops probes", owner=ops)
    key = services.api_key_create(org=org, name="probe").plaintext

    def backend_of_a_request(gateway_url: str) -> str:
        client = openai.OpenAI(
            base_url=f"{gateway_url}/v1", api_key=key, max_retries=0, timeout=120
        )
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        return reply.model_extra["tesseract"]["route"]["backend"]

    def planned_backend(gateway_url: str) -> str:
        response = httpx.post(
            f"{gateway_url}/v1/route",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        return response.json()["primary"]["backend_id"]

    def drain(browser: Browser) -> None:
        page = browser.page
        gateway_url = browser.site.gateway_url
        served = backend_of_a_request(gateway_url)
        region = in_region(served)
        operator_signs_in(browser, secret)
        row = page.locator(f'#deployments tr[data-slug="{served}"]')
        expect(row).not_to_have_class(re.compile(r"\bdrained\b"))
        expect(page.locator("#live-status")).to_have_class(re.compile(r"\bok\b"))  # connected
        # A second tab drains the whole region, confirmed with a reason; the first one,
        # never reloaded, shows it through the live view.
        other = page.context.new_page()
        other.goto(f"{browser.site.web_url}/console/region/{region}/drain")
        expect(other.get_by_role("heading", name=re.compile("^Drain region"))).to_be_visible()
        other.get_by_label(re.compile("^Why")).fill("e2e: the kill switch, clicked")
        other.get_by_role("button", name=re.compile("^Yes, drain")).click()
        expect(other.get_by_role("heading", name="The mesh, live")).to_be_visible()
        expect(row).to_have_class(re.compile(r"\bdrained\b"))
        browser.look("console-with-a-drained-region")
        # The gateway hears of it (announced at once; at worst at its periodic refresh),
        # and the next requests run outside the region.
        eventually(lambda: planned_backend(gateway_url) != served)
        after = backend_of_a_request(gateway_url)
        assert in_region(after) != region
        # The operator log says who, what and why; the other console pages.
        browser.visit("/console/audit/")
        expect(page.get_by_text("e2e: the kill switch, clicked")).to_be_visible()
        browser.look("console-operator-log")
        for name in ("latency", "placement", "tenants"):
            browser.visit(f"/console/{name}/")
            browser.look(f"console-{name}")
        browser.assert_accessible()
        browser.assert_fits()

    def in_region(slug: str) -> str:
        return in_thread(
            lambda: (
                Deployment.objects.select_related("cluster__region")
                .get(slug=slug)
                .cluster.region.slug
            )
        )

    browser(drain)
