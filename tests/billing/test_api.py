"""The management API (/api/v1): session or `manage` key, the caller's org only, one
error shape, cursor pagination, an OpenAPI schema."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
import pytest
from django.test import Client

from accounts import services as account_services
from accounts.models import ApiKey
from backends.demo import demo_world_load
from backends.models import Deployment
from billing import invoicing, subscriptions
from billing.models import SlaTier
from tests.billing.money import record, usage
from tests.conftest import login

MARCH = datetime(2026, 3, 1, tzinfo=UTC)


def bearer(key: str) -> Client:
    return Client(headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
def manage_key(acme) -> str:
    return account_services.api_key_create(org=acme, name="ops", scopes=["manage"]).plaintext


@pytest.fixture
def acme_usage(acme, db):
    demo_world_load()
    deployments = list(
        Deployment.objects.select_related("model", "cluster__region", "chip")
        .filter(price_input_per_mtok__gt=0)
        .order_by("slug")[:2]
    )
    key = account_services.api_key_create(org=acme, name="prod").api_key
    records = []
    for i in range(30):
        r = usage(acme, at=MARCH + timedelta(hours=5 * i), deployment=deployments[i % 2])
        records.append(msgspec.structs.replace(r, api_key_id=key.pk))
    record(*records)
    return key, deployments


def test_the_org_s_tier_limits_and_budget_by_session_and_by_manage_key(alice, acme, manage_key):
    for client in (login(alice), bearer(manage_key)):
        body = client.get("/api/v1/org").json()
        assert body["org"] == acme.slug
        assert body["tier"]["slug"] == "free"
        assert body["tier"]["requests_per_minute"] == 60
        assert Decimal(body["monthly_cap_usd"]) == Decimal("10")
        assert body["suspended"] is False


def test_only_owners_set_the_budget(alice, bob, acme, manage_key):
    response = login(bob).put(
        "/api/v1/org/budget", {"monthly_budget_usd": "99"}, content_type="application/json"
    )
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"
    assert (
        bearer(manage_key)
        .put("/api/v1/org/budget", {"monthly_budget_usd": "99"}, content_type="application/json")
        .status_code
        == 403
    )
    ok = login(alice).put(
        "/api/v1/org/budget", {"monthly_budget_usd": "250.00"}, content_type="application/json"
    )
    assert ok.status_code == 200
    assert Decimal(ok.json()["monthly_cap_usd"]) == Decimal("250")


def test_errors_have_one_shape(alice, acme):
    bad = login(alice).put(
        "/api/v1/org/budget", {"monthly_budget_usd": "-5"}, content_type="application/json"
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "monthly_budget_usd"
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"}
    anonymous = Client().get("/api/v1/org")
    assert anonymous.status_code in (401, 403)
    assert anonymous.json()["error"]["type"] in ("authentication_error", "permission_error")
    wrong = bearer("tsk_" + "a" * 40).get("/api/v1/org")
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "authentication_failed"


def test_an_unknown_api_url_answers_in_the_error_shape_and_names_a_trailing_slash(
    manage_key, client
):
    slashed = bearer(manage_key).get("/api/v1/org/")
    assert slashed.status_code == 404
    assert slashed["content-type"] == "application/json"
    error = slashed.json()["error"]
    assert error["code"] == "unknown_url"
    assert error["type"] == "not_found_error"
    assert "Did you mean /api/v1/org?" in error["message"]
    nowhere = bearer(manage_key).post("/api/v2/anything")
    assert nowhere.status_code == 404
    assert nowhere.json()["error"]["message"] == "Unknown endpoint POST /api/v2/anything."
    page = client.get("/no-such-page")  # outside the API: the site's page, as before
    assert page.status_code == 404
    assert page["content-type"].startswith("text/html")


def test_a_crash_under_the_api_answers_in_the_error_shape():
    from django.test import RequestFactory
    from django.urls import get_resolver

    from billing.api.errors import page_not_found, server_error

    assert get_resolver().resolve_error_handler(500) is server_error  # what Django calls
    assert get_resolver().resolve_error_handler(404) is page_not_found
    crashed = server_error(RequestFactory().get("/api/v1/usage"))
    assert crashed.status_code == 500
    body = msgspec.json.decode(crashed.content)
    assert body["error"]["type"] == "api_error"
    assert body["error"]["code"] == "internal_error"
    page = server_error(RequestFactory().get("/orgs/x/"))  # outside the API: the page
    assert page.status_code == 500
    assert page["content-type"].startswith("text/html")


def test_a_key_without_the_manage_scope_is_refused(acme):
    plain = account_services.api_key_create(org=acme, name="inference").plaintext
    assert "manage" not in ApiKey.objects.get(name="inference").scopes  # never by default
    response = bearer(plain).get("/api/v1/org")
    assert response.status_code == 403


def test_keys_are_created_with_a_one_time_secret_revoked_and_limited(alice, acme):
    client = login(alice)
    created = client.post(
        "/api/v1/keys", {"name": "ci", "scopes": ["inference"]}, content_type="application/json"
    )
    assert created.status_code == 201
    secret, key_id = created.json()["secret"], created.json()["id"]
    assert secret.startswith("tsk_")
    listed = client.get("/api/v1/keys").json()
    assert [k["name"] for k in listed] == ["ci"]
    assert "secret" not in listed[0]
    limited = client.put(
        f"/api/v1/keys/{key_id}/limits",
        {"requests_per_minute": 10, "monthly_budget_usd": "5.00"},
        content_type="application/json",
    )
    assert limited.json()["limits"] == {
        "requests_per_minute": 10,
        "tokens_per_minute": None,
        "monthly_budget_usd": "5.00",
    }
    revoked = client.post(f"/api/v1/keys/{key_id}/revoke")
    assert revoked.json()["active"] is False


def test_a_limit_past_what_a_counter_holds_or_an_expiry_in_the_past_is_a_400_naming_it(alice, acme):
    client = login(alice)
    past = client.post(
        "/api/v1/keys",
        {"name": "old", "expires_at": "1999-01-01T00:00:00Z"},
        content_type="application/json",
    )
    assert past.status_code == 400
    assert past.json()["error"]["param"] == "expires_at"
    key_id = client.post("/api/v1/keys", {"name": "ci"}, content_type="application/json").json()[
        "id"
    ]
    for field in ("requests_per_minute", "tokens_per_minute"):
        huge = client.put(
            f"/api/v1/keys/{key_id}/limits", {field: 2**31}, content_type="application/json"
        )
        assert huge.status_code == 400
        assert huge.json()["error"]["param"] == field
    most = client.put(
        f"/api/v1/keys/{key_id}/limits",
        {"requests_per_minute": 2**31 - 1},
        content_type="application/json",
    )
    assert most.json()["limits"]["requests_per_minute"] == 2**31 - 1


def test_only_owners_create_manage_keys(bob, acme):
    response = login(bob).post(
        "/api/v1/keys", {"name": "x", "scopes": ["manage"]}, content_type="application/json"
    )
    assert response.status_code == 403


def test_usage_filters_paginate_by_cursor_and_aggregate_by_day(alice, acme, acme_usage):
    key, deployments = acme_usage
    client = login(alice)
    first = client.get(
        "/api/v1/usage", {"limit": 10, "start": "2026-03-01", "end": "2026-04-01"}
    ).json()
    assert len(first["results"]) == 10
    seen = [r["request_id"] for r in first["results"]]
    page = first
    while page["next"]:
        page = client.get(page["next"]).json()
        seen += [r["request_id"] for r in page["results"]]
    assert len(seen) == len(set(seen)) == 30
    model = deployments[0].model.slug
    region = deployments[0].cluster.region.slug
    filtered = client.get(
        "/api/v1/usage", {"model": model, "region": region, "key": key.pk}
    ).json()["results"]
    assert filtered
    assert all(r["served_model"] == model and r["region"] == region for r in filtered)
    days = client.get("/api/v1/usage/daily", {"start": "2026-03-01", "end": "2026-04-01"}).json()
    assert sum(d["requests"] for d in days) == 30
    assert days[0]["day"] == "2026-03-01"
    assert client.get("/api/v1/usage", {"start": "yesterday"}).json()["error"]["param"] == "start"


@pytest.mark.parametrize("path", ["/api/v1/usage", "/api/v1/usage/daily"])
def test_a_date_that_does_not_exist_or_a_bad_cursor_is_a_400_that_names_it(alice, acme, path):
    client = login(alice)
    for param, value in (("start", "2026-13-01"), ("end", "2026-02-30T10:00:00")):
        bad = client.get(path, {param: value})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == param
        assert value in bad.json()["error"]["message"]
    if path == "/api/v1/usage":
        forged = base64.b64encode(b"p=not-a-date").decode()  # DRF's form, a bad position
        for cursor in ("garbage", forged):
            bad = client.get(path, {"cursor": cursor})
            assert bad.status_code == 400
            assert bad.json()["error"]["param"] == "cursor"


@pytest.mark.parametrize("key", ["abc", "\u00b2", "9" * 30, "-1"])
def test_a_key_filter_that_is_not_a_key_id_is_a_400(alice, acme, key):
    bad = login(alice).get("/api/v1/usage", {"key": key})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "key"


@pytest.mark.parametrize("limit", ["abc", "0", "-3", "1001", "2.5", "", "\u00b2"])
def test_a_page_size_outside_1_to_1000_is_a_400_not_a_silent_default(alice, acme, limit):
    bad = login(alice).get("/api/v1/usage", {"limit": limit})
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["param"] == "limit"
    assert error["message"] == "Expected a whole number from 1 to 1000."


def test_invoices_list_detail_and_pdf(alice, acme, acme_usage, manage_key):
    subscriptions.tier_change(
        org=acme, tier=SlaTier.objects.get(slug="pro"), at=MARCH - timedelta(days=1)
    )
    invoice, _ = invoicing.invoice_close_month(org=acme, year=2026, month=3)
    for client in (login(alice), bearer(manage_key)):
        [listed] = client.get("/api/v1/invoices").json()
        assert listed["number"] == invoice.number
        detail = client.get(f"/api/v1/invoices/{invoice.number}").json()
        assert Decimal(detail["total_usd"]) == invoice.total_usd
        assert len(detail["lines"]) == invoice.lines.count()
        assert client.get(f"/api/v1/invoices/{invoice.number}/pdf").content.startswith(b"%PDF-")


def test_charlie_gets_404_for_everything_of_acme(charlie, globex, acme, alice, acme_usage):
    invoice, _ = invoicing.invoice_close_month(org=acme, year=2026, month=3)
    key, _ = acme_usage
    client = login(charlie)
    headers = {"X-Tesseract-Org": acme.slug}
    for url in ["/api/v1/org", "/api/v1/keys", "/api/v1/usage", "/api/v1/invoices"]:
        assert client.get(url, headers=headers).status_code == 404, url
    # Through his own org, Acme's rows do not exist.
    assert client.get(f"/api/v1/invoices/{invoice.number}").status_code == 404
    assert client.post(f"/api/v1/keys/{key.pk}/revoke").status_code == 404
    assert client.get("/api/v1/usage").json()["results"] == []
    key.refresh_from_db()
    assert key.revoked_at is None


def test_the_openapi_schema_describes_the_api(alice):
    schema = login(alice).get("/api/schema/", {"format": "json"}).json()
    assert schema["openapi"].startswith("3.")
    assert {"/api/v1/org", "/api/v1/keys", "/api/v1/usage", "/api/v1/invoices/{number}/pdf"} <= set(
        schema["paths"]
    )
