"""The developer dashboard's pages: who sees what, what they show, and what they cost.

alice owns Acme, bob is her developer, charlie owns Globex and must see none of Acme.
"""

from __future__ import annotations

import base64
import html
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count

import pytest
from django.utils import timezone

from accounts import services
from accounts.models import ApiKey, Role
from billing.models import ApiKeyLimits, BillingAccount, Invoice, SlaTier, UsageEvent
from tests.conftest import login

_ids = count()


def event(org, **fields) -> UsageEvent:
    defaults = {
        "request_id": f"req_{next(_ids):024d}",
        "org": org,
        "endpoint": "chat.completions",
        "model": "llama-3.3-70b-instruct",
        "served_model": "llama-3.3-70b-instruct",
        "deployment": "westeurope--h100--llama-3.3-70b-instruct",
        "region": "westeurope",
        "cluster": "weu-1",
        "chip": "h100",
        "input_tokens": 100,
        "output_tokens": 50,
        "usage_source": "upstream",
        "cost_usd": Decimal("0.0001"),
        "charge_usd": Decimal("0.0002"),
        "ttft_ms": 80.0,
        "latency_ms": 400.0,
        "network_ms": 15.0,
        "queue_ms": 5.0,
        "compute_ms": 380.0,
        "sla_met": True,
        "constraints": {"max_ttft_ms": 200, "jurisdictions": ["EU"]},
        "backend_policy": {"jurisdictions": ["EU"], "certifications": ["gdpr"]},
    }
    defaults.update(fields)
    return UsageEvent.objects.create(**defaults)


ORG_PAGES = ["", "usage/", "map/", "requests/", "explain/", "keys/", "members/", "quickstart/"]


@pytest.mark.parametrize("page", ORG_PAGES)
def test_every_org_page_opens_for_a_member(page, alice, acme):
    event(acme)
    response = login(alice).get(f"/orgs/{acme.slug}/{page}")
    assert response.status_code == 200, page
    assert b"Acme" in response.content


@pytest.mark.parametrize("page", [*ORG_PAGES, "billing/"])
def test_charlie_gets_a_404_for_every_page_of_acme(page, charlie, globex, acme):
    assert login(charlie).get(f"/orgs/{acme.slug}/{page}").status_code == 404


def test_a_signed_out_visitor_is_sent_to_sign_in(acme):
    from django.test import Client

    response = Client().get(f"/orgs/{acme.slug}/requests/")
    assert response.status_code == 302
    assert "/account/login/" in response["Location"]


def test_charlie_cannot_open_one_of_acme_s_requests_even_by_its_id(charlie, globex, acme):
    mine = event(globex)
    theirs = event(acme)
    client = login(charlie)
    assert client.get(f"/orgs/{globex.slug}/requests/{theirs.request_id}/").status_code == 404
    assert client.get(f"/orgs/{globex.slug}/requests/{mine.request_id}/").status_code == 200


def test_the_request_log_lists_only_the_org_s_own_requests(alice, acme, globex):
    ours = event(acme)
    theirs = event(globex)
    page = login(alice).get(f"/orgs/{acme.slug}/requests/").content.decode()
    assert ours.request_id in page
    assert theirs.request_id not in page


def test_the_overview_shows_this_month_s_spend_against_the_budget(alice, acme):
    BillingAccount.objects.filter(org=acme).update(monthly_budget_usd=Decimal("10.00"))
    event(acme, charge_usd=Decimal("2.50"))
    event(acme, charge_usd=Decimal("1.25"), status="error", sla_met=None)
    response = login(alice).get(f"/orgs/{acme.slug}/")
    page = response.content.decode()
    assert "$3.75" in page
    assert "of $10.00 budget" in page
    assert "50.00%" in page  # one error in two requests
    assert page.count("<svg") >= 6  # a sparkline per tile


def test_sla_attainment_counts_completed_requests_and_is_compared_to_the_tier(alice, acme):
    tier = SlaTier.objects.create(
        slug="strict",
        name="Strict",
        requests_per_minute=100,
        tokens_per_minute=100_000,
        latency_objective_pct=Decimal("99"),
        price_margin_pct=Decimal("10"),
    )
    BillingAccount.objects.filter(org=acme).update(tier=tier)
    for met in (True, True, True, False):
        event(acme, sla_met=met)
    page = login(alice).get(f"/orgs/{acme.slug}/").content.decode()
    assert "75.00%" in page
    assert "objective 99.000%" in page
    assert "tile-bad" in page


def test_the_usage_page_splits_by_model_region_and_key(alice, acme):
    key = services.api_key_create(org=acme, name="ci").api_key
    event(acme, model="llama-3.1-8b-instruct", region="eastus", api_key=key)
    event(acme)
    client = login(alice)
    by_model = client.get(f"/orgs/{acme.slug}/usage/?by=model&period=7").content.decode()
    assert "llama-3.1-8b-instruct" in by_model
    assert "llama-3.3-70b-instruct" in by_model
    by_region = client.get(f"/orgs/{acme.slug}/usage/?by=region").content.decode()
    assert "eastus" in by_region
    assert "westeurope" in by_region
    by_key = client.get(f"/orgs/{acme.slug}/usage/?by=key").content.decode()
    assert f"ci ({key.display_prefix})" in by_key


def test_the_map_places_each_region_at_its_coordinates(alice, acme):
    from backends.models import Region

    Region.objects.create(
        slug="westeurope",
        name="West Europe",
        country_code="NL",
        country="Netherlands",
        latitude=52.37,
        longitude=4.9,
    )
    event(acme)
    event(acme, sla_met=False)
    page = login(alice).get(f"/orgs/{acme.slug}/map/").content.decode()
    assert 'cx="184.9" cy="37.6"' in page  # equirectangular: lon + 180, 90 - lat
    assert "dot-missed" in page  # one of two met: 50%
    assert "world-land-110m.svg" in page


def test_the_request_log_filters_by_status_sla_model_region_and_key(alice, acme):
    key = services.api_key_create(org=acme, name="ci").api_key
    failed = event(acme, status="error", sla_met=None)
    missed = event(acme, sla_met=False, model="other-model")
    keyed = event(acme, api_key=key, region="eastus")
    plain = event(acme)
    client = login(alice)

    def ids(query: str) -> set[str]:
        response = client.get(f"/orgs/{acme.slug}/requests/?{query}")
        assert response.status_code == 200
        return {e.request_id for e in response.context["page"].rows}

    assert ids("status=error") == {failed.request_id}
    assert ids("sla=missed") == {missed.request_id}
    assert ids("model=other-model") == {missed.request_id}
    assert ids("region=eastus") == {keyed.request_id}
    assert ids(f"key={key.pk}") == {keyed.request_id}
    assert plain.request_id in ids("sla=met")


def test_a_filter_with_an_unknown_key_is_a_clear_error(alice, acme, globex):
    other = services.api_key_create(org=globex, name="theirs").api_key
    response = login(alice).get(f"/orgs/{acme.slug}/requests/?key={other.pk}")
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()


def test_the_request_log_pages_by_cursor_without_gaps_or_repeats(alice, acme, monkeypatch):
    from dashboards import usage

    monkeypatch.setattr(usage, "PAGE_SIZE", 3)
    now = timezone.now()
    made = [event(acme, created_at=now - timedelta(seconds=i // 2)) for i in range(8)]
    client = login(alice)
    seen: list[str] = []
    url = f"/orgs/{acme.slug}/requests/"
    while url:
        response = client.get(url)
        page = response.context["page"]
        seen += [e.request_id for e in page.rows]
        url = f"/orgs/{acme.slug}/requests/?cursor={page.next_cursor}" if page.next_cursor else ""
    assert sorted(seen) == sorted(e.request_id for e in made)
    assert len(seen) == len(set(seen)) == 8


@pytest.mark.parametrize(
    "raw",
    [
        None,  # not base64 at all
        b"2026-03-01T00:00:00+00:00|" + b"9" * 30,  # an id past any column
        b"2026-03-01T00:00:00+00:00|\xc2\xb2",  # a digit int() reads, not an id
        b"2026-03-01T00:00:00+00:00|-4",
    ],
)
def test_a_forged_cursor_is_a_404_not_a_500(alice, acme, raw):
    cursor = "!!not-base64" if raw is None else base64.urlsafe_b64encode(raw).decode()
    response = login(alice).get(f"/orgs/{acme.slug}/requests/", {"cursor": cursor})
    assert response.status_code == 404


def test_a_request_opens_to_its_route_breakdown_constraints_and_residency(alice, acme):
    e = event(
        acme,
        tried_backends=["eastus--a100--llama", "westeurope--h100--llama-3.3-70b-instruct"],
        attempts=2,
    )
    page = login(alice).get(f"/orgs/{acme.slug}/requests/{e.request_id}/").content.decode()
    assert "network 15.0 ms" in page
    assert "compute 380.0 ms" in page
    assert "max_ttft_ms" in page
    assert "gdpr" in page
    assert "eastus--a100--llama" in page
    assert "failed before the first token" in page
    assert "Why this backend" in page


def test_members_who_may_not_manage_keys_do_not_see_the_create_form(acme, bob):
    services.membership_add(org=acme, user=bob, role=Role.VIEWER)
    page = login(bob).get(f"/orgs/{acme.slug}/keys/").content.decode()
    assert "Create a key" not in page


def test_a_viewer_cannot_create_a_key(acme, bob):
    services.membership_add(org=acme, user=bob, role=Role.VIEWER)
    response = login(bob).post(f"/orgs/{acme.slug}/keys/", {"name": "x", "scopes": ["inference"]})
    assert response.status_code == 404
    assert not ApiKey.objects.exists()


def test_a_billing_member_sees_invoices_but_cannot_create_keys(acme, bob):
    services.membership_add(org=acme, user=bob, role=Role.BILLING)
    client = login(bob)
    assert client.get(f"/orgs/{acme.slug}/billing/").status_code == 200
    assert client.get(f"/orgs/{acme.slug}/invoices/").status_code == 200
    response = client.post(f"/orgs/{acme.slug}/keys/", {"name": "x", "scopes": ["inference"]})
    assert response.status_code == 404
    assert not ApiKey.objects.exists()


def test_a_developer_cannot_mint_a_manage_key_which_would_act_for_the_whole_organization(acme, bob):
    client = login(bob)  # a developer: may create keys, not grant `manage`
    assert 'value="manage"' not in client.get(f"/orgs/{acme.slug}/keys/").content.decode()
    response = client.post(f"/orgs/{acme.slug}/keys/", {"name": "x", "scopes": ["manage"]})
    assert response.status_code == 400
    assert not ApiKey.objects.exists()


def test_an_owner_mints_a_manage_key_in_the_dashboard(alice, acme):
    client = login(alice)
    assert 'value="manage"' in client.get(f"/orgs/{acme.slug}/keys/").content.decode()
    response = client.post(f"/orgs/{acme.slug}/keys/", {"name": "ci", "scopes": ["manage"]})
    assert response.status_code == 200
    assert ApiKey.objects.get(name="ci").scopes == ["manage"]


def test_a_developer_cannot_open_billing(acme, bob):
    assert login(bob).get(f"/orgs/{acme.slug}/billing/").status_code == 404


def test_a_key_is_revealed_once_with_a_copy_button_and_its_limits(alice, acme):
    response = login(alice).post(
        f"/orgs/{acme.slug}/keys/",
        {"name": "laptop", "scopes": ["inference"], "requests_per_minute": "30"},
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    page = response.content.decode()
    plaintext = response.context["issued"].plaintext
    assert plaintext in page
    assert 'class="copy"' in page
    key = ApiKey.objects.get(name="laptop")
    assert ApiKeyLimits.objects.get(api_key=key).requests_per_minute == 30
    assert plaintext not in login(alice).get(f"/orgs/{acme.slug}/keys/").content.decode()


@pytest.mark.parametrize(
    "field",
    ["requests_per_minute", "tokens_per_minute", "default_max_latency_ms", "default_max_ttft_ms"],
)
def test_a_key_with_a_number_past_what_its_column_holds_is_refused_on_the_form(alice, acme, field):
    response = login(alice).post(
        f"/orgs/{acme.slug}/keys/", {"name": "laptop", "scopes": ["inference"], field: 2**31}
    )
    assert response.status_code == 400
    assert field in response.context["form"].errors
    assert not ApiKey.objects.filter(name="laptop").exists()


def test_a_key_expiring_in_the_past_is_refused_beside_its_field(alice, acme):
    response = login(alice).post(
        f"/orgs/{acme.slug}/keys/",
        {"name": "old", "scopes": ["inference"], "expires_at": "1999-01-01T00:00"},
    )
    assert response.status_code == 400
    assert response.context["form"].errors["expires_at"] == ["The expiry must be in the future."]
    assert not ApiKey.objects.filter(name="old").exists()


def test_a_key_s_limits_can_be_changed_and_bad_input_changes_nothing(alice, acme):
    key = services.api_key_create(org=acme, name="ci").api_key
    client = login(alice)
    url = f"/orgs/{acme.slug}/keys/{key.pk}/limits/"
    bad = client.post(url, {"monthly_budget_usd": "-5"})
    assert bad.status_code == 400
    assert not ApiKeyLimits.objects.exists()
    ok = client.post(url, {"monthly_budget_usd": "12.50", "tokens_per_minute": "1000"})
    assert ok.status_code == 302
    limits = ApiKeyLimits.objects.get(api_key=key)
    assert limits.monthly_budget_usd == Decimal("12.50")
    assert limits.tokens_per_minute == 1000


def test_a_key_s_limits_page_says_what_the_organization_s_are(alice, acme):
    """A key's own limits only tighten the organization's: the page says what those
    are, so an empty field's meaning is on the page."""
    from billing.selectors import billing_account

    account = billing_account(org=acme)
    account.monthly_budget_usd = Decimal("2500")
    account.save(update_fields=["monthly_budget_usd"])
    key = services.api_key_create(org=acme, name="ci").api_key
    page = login(alice).get(f"/orgs/{acme.slug}/keys/{key.pk}/limits/").content.decode()
    rpm, tpm = account.tier.requests_per_minute, account.tier.tokens_per_minute
    assert f"{rpm:,} requests and {tpm:,} tokens per minute" in page
    assert "$2,500.00 a month" in page


def test_charlie_cannot_set_limits_on_acme_s_key(charlie, globex, acme):
    key = services.api_key_create(org=acme, name="ci").api_key
    url = f"/orgs/{globex.slug}/keys/{key.pk}/limits/"
    assert login(charlie).post(url, {"tokens_per_minute": "1"}).status_code == 404
    assert not ApiKeyLimits.objects.exists()


def test_the_owner_changes_tier_and_budget_from_the_billing_page(alice, acme):
    pro = SlaTier.objects.exclude(pk=BillingAccount.objects.get(org=acme).tier_id).first()
    assert pro is not None
    client = login(alice)
    assert client.post(f"/orgs/{acme.slug}/billing/", {"tier": pro.pk}).status_code == 302
    assert BillingAccount.objects.get(org=acme).tier == pro
    assert (
        client.post(f"/orgs/{acme.slug}/billing/", {"monthly_budget_usd": "-1"}).status_code == 400
    )
    assert BillingAccount.objects.get(org=acme).monthly_budget_usd is None
    assert (
        client.post(f"/orgs/{acme.slug}/billing/", {"monthly_budget_usd": "40"}).status_code == 302
    )
    assert BillingAccount.objects.get(org=acme).monthly_budget_usd == Decimal("40")


def test_the_billing_page_projects_the_month_and_lists_invoices(alice, acme):
    tier = BillingAccount.objects.get(org=acme).tier
    Invoice.objects.create(
        org=acme,
        number="INV-TEST-1",
        period_start=datetime(2026, 1, 1, tzinfo=UTC),
        period_end=datetime(2026, 2, 1, tzinfo=UTC),
        tier=tier,
        subtotal_usd=Decimal("5.00"),
        total_usd=Decimal("5.00"),
    )
    event(acme, charge_usd=Decimal("3.00"))
    page = login(alice).get(f"/orgs/{acme.slug}/billing/").content.decode()
    assert "INV-TEST-1" in page
    assert "$3.00" in page
    assert "Projected month" in page


def test_the_quick_start_uses_the_org_s_base_url_and_tesseract_requirements(alice, acme):
    page = login(alice).get(f"/orgs/{acme.slug}/quickstart/").content.decode()
    assert "http://testserver/v1" in page
    assert "extra_body=" in page
    assert "baseURL" in page
    assert "max_ttft_ms" in page


def test_the_quick_start_s_curl_sends_a_body_the_gateway_reads(alice, acme):
    page = login(alice).get(f"/orgs/{acme.slug}/quickstart/").content.decode()
    payload = html.unescape(re.search(r"-d '(\{.*?\})' -i", page, re.S).group(1))
    body = json.loads(payload)
    assert body["model"]
    assert body["tesseract"]["max_ttft_ms"] > 0  # one level: not {"tesseract": {"tesseract"
    assert "tesseract" not in body["tesseract"]


def test_the_quick_start_and_a_new_key_point_at_the_gateway_not_at_the_web(alice, acme, settings):
    settings.TESSERACT_GATEWAY_URL = "https://api.tesseract.example/"
    client = login(alice)
    page = client.get(f"/orgs/{acme.slug}/quickstart/").content.decode()
    assert "https://api.tesseract.example/v1" in page
    assert "http://testserver/v1" not in page
    created = client.post(f"/orgs/{acme.slug}/keys/", {"name": "ci", "scopes": ["inference"]})
    assert "https://api.tesseract.example/v1" in created.content.decode()


def test_a_bad_explainer_request_is_a_clear_error(alice, acme):
    response = login(alice).get(
        f"/orgs/{acme.slug}/explain/?model=x&compliance=hipaa&max_ttft_ms=-3"
    )
    assert response.status_code == 400


def test_the_explainer_says_a_region_it_does_not_know_by_name_as_the_gateway_does(alice, acme):
    from backends.demo import demo_world_load

    demo_world_load()
    query = "model=llama-3.1-8b-instruct&client_region=westeurop"
    response = login(alice).get(f"/orgs/{acme.slug}/explain/?{query}")
    assert response.status_code == 400
    assert "did you mean &#x27;westeurope&#x27;?" in response.content.decode()


@pytest.mark.parametrize(
    ("field", "value", "bound"),
    [
        ("max_ttft_ms", 10**23, "86400000"),
        ("max_latency_ms", 86_400_001, "86400000"),
        ("input_tokens", 10**23, "100000000"),
        ("max_tokens", 1_000_001, "1000000"),
    ],
)
def test_an_explainer_number_past_what_the_gateway_takes_is_refused_beside_its_field(
    alice, acme, field, value, bound
):
    """The form holds the dry run's own bounds: the error says the bound under the
    field, in the form's words, not a JSON path from the gateway's parser."""
    response = login(alice).get(f"/orgs/{acme.slug}/explain/?model=x&{field}={value}")
    assert response.status_code == 400
    form = response.context["form"]
    assert list(form.errors) == [field]
    assert bound in form.errors[field][0]
    assert "$.tesseract" not in response.content.decode()


QUERY_LIMITS = {
    "": 16,
    "usage/": 16,
    "map/": 14,
    "requests/": 14,
    "keys/": 14,
    "billing/": 16,
}


@pytest.mark.parametrize(("page", "limit"), QUERY_LIMITS.items())
def test_main_pages_make_a_fixed_number_of_queries_whatever_the_volume(
    page, limit, alice, acme, django_assert_max_num_queries
):
    for i in range(3):
        key = services.api_key_create(org=acme, name=f"k{i}").api_key
        for day in range(5):
            event(
                acme,
                api_key=key,
                model=f"model-{day}",
                region=["westeurope", "eastus"][day % 2],
                created_at=timezone.now() - timedelta(days=day),
            )
    client = login(alice)
    client.get(f"/orgs/{acme.slug}/{page}")  # warm the session and caches
    with django_assert_max_num_queries(limit):
        response = client.get(f"/orgs/{acme.slug}/{page}")
    assert response.status_code == 200


def test_the_explainer_ranks_the_candidates_and_says_why_every_other_lost(alice, acme):
    from backends.demo import demo_world_load
    from backends.models import Deployment

    demo_world_load()
    query = "model=llama-3.1-8b-instruct&jurisdictions=EU&max_ttft_ms=5000"
    response = login(alice).get(f"/orgs/{acme.slug}/explain/?{query}")
    assert response.status_code == 200
    result = response.context["result"]
    eu = {
        d.slug
        for d in Deployment.objects.select_related("cluster__region", "model")
        if d.model.slug == "llama-3.1-8b-instruct" and "EU" in d.cluster.region.jurisdictions
    }
    ranked = {c["backend_id"] for c in result["ranked"]}
    assert ranked
    assert ranked <= eu
    excluded = {e["backend_id"]: e["code"] for e in result["excluded"]}
    assert "residency" in excluded.values()
    # every candidate of the model is either ranked or excluded with its reason
    everyone = {d.slug for d in Deployment.objects.filter(model__slug="llama-3.1-8b-instruct")}
    assert everyone <= ranked | set(excluded)
    page = response.content.decode()
    assert "Why the others lost" in page


def test_a_request_s_page_recomputes_its_plan_from_the_stored_constraints(alice, acme):
    from backends.demo import demo_world_load
    from backends.models import Deployment

    demo_world_load()
    eight_b = list(
        Deployment.objects.filter(model__slug="llama-3.1-8b-instruct").select_related(
            "cluster__region"
        )
    )
    inside = next(d for d in eight_b if "EU" in d.cluster.region.jurisdictions)
    outside = next(d for d in eight_b if "EU" not in d.cluster.region.jurisdictions)
    client = login(alice)
    for served, ranked in ((inside, True), (outside, False)):
        e = event(
            acme,
            model="llama-3.1-8b-instruct",
            deployment=served.slug,
            constraints={"jurisdictions": ["EU"], "max_ttft_ms": 5000},
        )
        response = client.get(f"/orgs/{acme.slug}/requests/{e.request_id}/")
        why = response.context["why"]
        assert why.plan is not None
        assert why.plan["ranked"]
        assert (why.rank is not None) is ranked
        if not ranked:
            assert "is not in today" in response.content.decode()


def test_a_late_request_s_page_recomputes_a_late_plan_not_an_impossible_one(alice, acme):
    from backends.demo import demo_world_load
    from backends.models import Deployment

    demo_world_load()
    served = Deployment.objects.filter(model__slug="llama-3.1-8b-instruct").first()
    e = event(
        acme,
        model="llama-3.1-8b-instruct",
        deployment=served.slug,
        constraints={"max_ttft_ms": 0.001, "allow_relaxed_deadline": True},
    )
    response = login(alice).get(f"/orgs/{acme.slug}/requests/{e.request_id}/")
    why = response.context["why"]
    assert why.plan is not None
    assert why.plan["status"] == "degraded"
    assert why.plan["ranked"]


def test_an_owner_changes_a_role_and_removes_a_member(alice, acme, bob):
    from accounts.models import Membership

    client = login(alice)
    bobs = Membership.objects.get(org=acme, user=bob)
    assert (
        client.post(f"/orgs/{acme.slug}/members/{bobs.pk}/role/", {"role": "billing"}).status_code
        == 302
    )
    bobs.refresh_from_db()
    assert bobs.role == Role.BILLING
    assert client.post(f"/orgs/{acme.slug}/members/{bobs.pk}/remove/").status_code == 302
    assert not Membership.objects.filter(pk=bobs.pk).exists()


def test_the_last_owner_cannot_be_demoted_and_an_unknown_role_changes_nothing(alice, acme):
    from accounts.models import Membership

    client = login(alice)
    mine = Membership.objects.get(org=acme, user=alice)
    response = client.post(f"/orgs/{acme.slug}/members/{mine.pk}/role/", {"role": "viewer"})
    assert response.status_code == 400
    assert "last owner" in response.content.decode()
    response = client.post(f"/orgs/{acme.slug}/members/{mine.pk}/role/", {"role": "emperor"})
    assert response.status_code == 400
    mine.refresh_from_db()
    assert mine.role == Role.OWNER


def test_an_admin_cannot_touch_an_owner_and_a_developer_cannot_manage_members(
    alice, acme, bob, charlie, globex
):
    from accounts.models import Membership

    services.membership_add(org=acme, user=bob, role=Role.ADMIN)
    alices = Membership.objects.get(org=acme, user=alice)
    response = login(bob).post(f"/orgs/{acme.slug}/members/{alices.pk}/remove/")
    assert response.status_code == 400
    assert "Only an owner" in response.content.decode()
    services.membership_add(org=acme, user=bob, role=Role.DEVELOPER)
    assert login(bob).post(f"/orgs/{acme.slug}/members/{alices.pk}/remove/").status_code == 404
    # charlie, through his own org's URL, cannot reach Acme's memberships either
    url = f"/orgs/{globex.slug}/members/{alices.pk}/role/"
    assert login(charlie).post(url, {"role": "viewer"}).status_code == 404
    assert Membership.objects.filter(pk=alices.pk, role=Role.OWNER).exists()


def test_a_request_s_page_shows_its_charge_to_the_nano_dollar(alice, acme):
    e = event(acme, charge_usd=Decimal("0.000001234"))
    page = login(alice).get(f"/orgs/{acme.slug}/requests/{e.request_id}/").content.decode()
    assert "$0.000001234" in page
