"""The operator console's pages: who may open them, what they show, what they change."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import services as account_services
from accounts.models import OperatorAction, User
from backends import health, livestate
from backends.demo import demo_world_load
from backends.models import Cluster, Deployment, LatencyProbe, PlacementAction, Region
from tests.conftest import PASSWORD, login, verified
from tests.test_console import simulated_world as _simulated_world

simulated_world = _simulated_world  # the demo world on a real simulator (a fixture)

DOTTED = "westeurope-tesseract-nvidia-h100--llama-3.1-8b-instruct"
PAGES = ["/console/", "/console/latency/", "/console/placement/", "/console/tenants/",
         "/console/audit/", f"/console/deployment/{DOTTED}/drain"]  # fmt: skip


@pytest.fixture
def world(db):
    return demo_world_load()


@pytest.fixture
def live_maps():
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(match="tesseract:*"):
        client.delete(key)
    return client


@pytest.fixture
def oscar(db) -> User:
    """An operator with a confirmed authenticator."""
    user = User.objects.create_user("oscar@example.com", PASSWORD, name="Oscar", is_staff=True)
    TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    return user


# --------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("page", PAGES)
def test_a_developer_cannot_open_any_console_page(world, alice, page):
    assert login(alice).get(page).status_code == 403


def test_a_developer_cannot_drain_or_decide_placement(world, alice, acme):
    client = login(alice)
    response = client.post("/console/region/westeurope/drain", {"drained": "true", "reason": "x"})
    assert response.status_code == 403
    assert not Region.objects.get(slug="westeurope").drained
    action = _recommendation(DOTTED)
    assert client.post(f"/console/placement/{action.pk}/dismiss").status_code == 403
    action.refresh_from_db()
    assert action.status == PlacementAction.Status.RECOMMENDED
    assert not OperatorAction.objects.exists()


@pytest.mark.parametrize("page", PAGES)
def test_staff_who_have_not_verified_their_second_factor_are_sent_to_verify(world, oscar, page):
    response = login(oscar).get(page)
    assert response.status_code == 302
    assert response["Location"].startswith("/account/2fa/verify/")


def test_staff_without_an_authenticator_are_sent_to_enrol_first(world):
    staff = User.objects.create_user("sam@example.com", PASSWORD, is_staff=True)
    response = login(staff).get("/console/")
    assert response["Location"].startswith("/account/2fa/setup/")


def test_the_console_refuses_unverified_staff_even_past_the_middleware(world, oscar):
    """`operator_only` does not rely on the middleware alone."""
    from django.contrib.auth.models import AnonymousUser
    from django.core.exceptions import PermissionDenied

    from dashboards import console

    request = RequestFactory().get("/console/tenants/")
    oscar.is_verified = lambda: False
    request.user = oscar
    with pytest.raises(PermissionDenied):
        console.tenants(request)
    oscar.is_verified = lambda: True
    assert console.tenants(request).status_code == 200
    request.user = AnonymousUser()
    assert console.tenants(request).status_code == 302  # to sign in


@pytest.mark.parametrize("page", PAGES)
def test_a_verified_operator_opens_every_console_page(world, oscar, live_maps, page):
    response = verified(oscar).get(page)
    assert response.status_code == 200
    assert b'aria-current="page"' in response.content


@pytest.mark.parametrize("page", PAGES)
def test_every_console_page_reads_in_a_few_queries_whatever_the_mesh_size(
    world, oscar, live_maps, page
):
    """67 deployments, 39 clusters, 54 regions: the count stays small (no query per row)."""
    client = verified(oscar)
    client.get(page)  # the first visit creates the control settings' row
    with CaptureQueriesContext(connection) as queries:
        assert client.get(page).status_code == 200
    assert len(queries) <= 12, [q["sql"][:80] for q in queries]


# --------------------------------------------------------------------------- the mesh


def test_the_overview_draws_the_mesh_coloured_by_health_with_each_deployment(
    world, oscar, live_maps
):
    for _ in range(3):
        health.observe(live_maps, DOTTED, health.FAIL, source="check", reason="test")
    livestate.deployment_update(live_maps, DOTTED, observed_ttft_ms=512.0, running=3, waiting=2)
    html = verified(oscar).get("/console/").content.decode()
    assert "<svg" in html
    assert 'id="mesh-map"' in html
    assert 'class="point health-down" data-key="westeurope"' in html
    assert 'class="point health-healthy" data-key="eastus"' in html
    row = html.split(f'data-slug="{DOTTED}"')[1].split("</tr>")[0]
    assert ">down<" in row
    assert "512.0 (" in row
    assert "3 / 2" in row
    assert 'data-counter="down">1<' in html


def test_the_health_timeline_draws_a_strip_for_each_deployment_that_changed(world):
    from datetime import timedelta

    from django.utils import timezone

    from backends.models import HealthEvent
    from dashboards import console_data

    now = timezone.now()
    deployment = Deployment.objects.get(slug=DOTTED)
    for minutes, previous, current in [(60, "healthy", "down"), (30, "down", "healthy")]:
        HealthEvent.objects.create(deployment=deployment, previous=previous, current=current,
                                   source="check", reason="test",
                                   created_at=now - timedelta(minutes=minutes))  # fmt: skip
    svg = console_data.health_strips(now=now, window=timedelta(hours=2))
    assert svg.count(f">{DOTTED}</text>") == 1
    states = [part.split('"')[0] for part in svg.split('class="strip health-')[1:]]
    assert states == ["healthy", "down", "healthy"]
    assert svg.index("down from") < svg.rindex("healthy from")
    assert console_data.health_strips(now=now + timedelta(hours=7)) == ""


def test_a_region_whose_deployments_are_all_drained_is_grey_on_the_map(world, oscar, live_maps):
    Region.objects.filter(slug="westeurope").update(drained=True)
    html = verified(oscar).get("/console/").content.decode()
    assert 'class="point health-drained" data-key="westeurope"' in html


def test_the_overview_needs_the_same_queries_however_many_health_events(world, oscar, live_maps):
    from backends.models import HealthEvent

    client = verified(oscar)
    deployments = list(Deployment.objects.all()[:30])

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/console/").status_code == 200
        return len(queries)

    count()  # the first visit creates the control settings' row
    before = count()
    for d in deployments:
        HealthEvent.objects.create(deployment=d, previous="healthy", current="down",
                                   source="check", reason="test")  # fmt: skip
    assert count() == before
    assert before <= 15


# --------------------------------------------------------------------------- latency map


def test_the_latency_map_shows_each_pair_against_its_physical_floor_and_marks_flagged_probes(
    world, oscar, live_maps
):
    from routing.engine.inputs import physical_rtt_floor_ms

    src, dst = Region.objects.get(slug="westeurope"), Region.objects.get(slug="eastus")
    floor = physical_rtt_floor_ms(src.latitude, src.longitude, dst.latitude, dst.longitude)
    livestate.rtt_set(live_maps, "westeurope", "eastus", floor * 3)
    cluster = Cluster.objects.filter(region=dst).order_by("slug")[0]
    LatencyProbe.objects.create(src_region=src, cluster=cluster, rtt_ms=1.0, floor_ms=floor,
                                verdict=LatencyProbe.Verdict.BELOW_FLOOR)  # fmt: skip
    html = verified(oscar).get("/console/latency/").content.decode()
    cell = html.split('title="westeurope → eastus:')[0].rsplit("<td", 1)[1]
    assert "flagged" in cell
    after = html.split('title="westeurope → eastus:')[1].split("</td>")[0]
    assert f"{floor * 3:.0f}" in after
    assert "×3.0" in after
    assert "⚠" in after
    assert "Below the speed-of-light floor" in html


def test_the_latency_matrix_colours_a_cell_by_its_ratio_to_the_floor(world, live_maps):
    from dashboards import console_data

    src, dst = Region.objects.get(slug="westeurope"), Region.objects.get(slug="eastus")
    livestate.rtt_set(live_maps, "westeurope", "eastus", 10_000.0)
    matrix = console_data.latency_matrix(livestate.read(live_maps))
    row = next(r for r in matrix["rows"] if r["src"] == "westeurope")
    cell = next(c for c in row["cells"] if c.dst == "eastus")
    assert cell.css == "worst"
    assert cell.ratio is not None
    assert cell.ratio > 4
    assert not cell.flag
    assert cell.floor_ms > 50  # the Atlantic, there and back
    same = next(c for c in row["cells"] if c.dst == "westeurope")
    assert same.css != "none"
    assert src.slug in [r["src"] for r in matrix["rows"]]
    assert dst.slug in matrix["columns"]


# --------------------------------------------------------------------------- kill switch


def test_an_operator_confirms_a_region_drain_with_a_reason_and_the_log_keeps_it(
    world, oscar, live_maps
):
    client = verified(oscar)
    page = client.get("/console/region/westeurope/drain").content.decode()
    assert "Drain region" in page
    assert 'name="reason"' in page
    assert "required" in page
    response = client.post("/console/region/westeurope/drain",
                           {"drained": "true", "reason": "fibre cut in Amsterdam"})  # fmt: skip
    assert response.status_code == 302
    assert Region.objects.get(slug="westeurope").drained
    entry = OperatorAction.objects.get()
    assert (entry.actor, entry.actor_email, entry.action, entry.target, entry.reason) == (
        oscar,
        "oscar@example.com",
        "drain",
        "region:westeurope",
        "fibre cut in Amsterdam",
    )
    assert entry.created_at is not None
    log = client.get("/console/audit/").content.decode()
    assert "fibre cut in Amsterdam" in log
    assert "oscar@example.com" in log

    client.post("/console/region/westeurope/drain", {"drained": "false", "reason": "repaired"})
    assert not Region.objects.get(slug="westeurope").drained
    assert list(OperatorAction.objects.order_by("pk").values_list("action", "reason")) == [
        ("drain", "fibre cut in Amsterdam"),
        ("undrain", "repaired"),
    ]


@pytest.mark.parametrize("reason", ["", "   ", "x" * 501])
def test_a_drain_without_a_usable_reason_changes_nothing(world, oscar, live_maps, reason):
    client = verified(oscar)
    response = client.post(f"/console/cluster/{Cluster.objects.order_by('slug')[0].slug}/drain",
                           {"drained": "true", "reason": reason})  # fmt: skip
    assert response.status_code == 302  # back to the confirmation, with the error
    assert not Cluster.objects.filter(drained=True).exists()
    assert not OperatorAction.objects.exists()
    json_response = client.post("/console/region/westeurope/drain",
                                data={"drained": True, "reason": reason},
                                content_type="application/json")  # fmt: skip
    assert json_response.status_code == 400
    assert "reason" in json_response.json()["error"]
    assert not Region.objects.get(slug="westeurope").drained


def test_a_deployment_drain_over_json_returns_its_log_entry(world, oscar, live_maps):
    response = verified(oscar).post(
        f"/console/deployment/{DOTTED}/drain",
        data={"drained": True, "reason": "noisy neighbour"}, content_type="application/json",
    )  # fmt: skip
    assert response.status_code == 200, response.content
    assert Deployment.objects.get(slug=DOTTED).drained
    assert OperatorAction.objects.get(pk=response.json()["audit_id"]).target == (
        f"deployment:{DOTTED}"
    )


# --------------------------------------------------------------------------- placement


def _recommendation(slug: str, kind: str = "load") -> PlacementAction:
    return PlacementAction.objects.create(
        deployment=Deployment.objects.get(slug=slug), kind=kind,
        status=PlacementAction.Status.RECOMMENDED,
        reason="load it: 40 req/min from francecentral wait 30 ms more elsewhere",
        benefit=1234.0, demand={"francecentral": 40},
    )  # fmt: skip


def test_the_placement_page_lists_recommendations_with_reason_and_expected_saving(
    world, oscar, live_maps
):
    _recommendation(DOTTED)
    html = verified(oscar).get("/console/placement/").content.decode()
    assert "40 req/min from francecentral" in html
    assert "1234 ms/min per accelerator" in html
    assert "Apply" in html
    assert "Dismiss" in html


def test_an_operator_dismisses_a_recommendation_and_the_log_keeps_why(world, oscar, live_maps):
    action = _recommendation(DOTTED)
    client = verified(oscar)
    response = client.post(f"/console/placement/{action.pk}/dismiss", {"reason": "peak is over"})
    assert response.status_code == 302
    action.refresh_from_db()
    assert action.status == PlacementAction.Status.DISMISSED
    entry = OperatorAction.objects.get()
    assert (entry.action, entry.target, entry.reason) == (
        "placement.dismiss",
        f"deployment:{DOTTED}",
        "peak is over",
    )
    # Decided once: a second decision changes nothing and logs nothing.
    client.post(f"/console/placement/{action.pk}/apply", {"reason": "changed my mind"})
    action.refresh_from_db()
    assert action.status == PlacementAction.Status.DISMISSED
    assert OperatorAction.objects.count() == 1


def test_a_placement_decision_other_than_apply_or_dismiss_is_a_404(world, oscar, live_maps):
    action = _recommendation(DOTTED)
    assert verified(oscar).post(f"/console/placement/{action.pk}/ignore").status_code == 404
    action.refresh_from_db()
    assert action.status == PlacementAction.Status.RECOMMENDED
    assert not OperatorAction.objects.exists()


def test_an_operator_applies_an_unload_recommendation_through_the_backend(
    simulated_world, oscar, live_maps
):
    assert Deployment.objects.get(slug=DOTTED).loaded
    action = _recommendation(DOTTED, kind="unload")
    response = verified(oscar).post(f"/console/placement/{action.pk}/apply", {"reason": ""})
    assert response.status_code == 302
    action.refresh_from_db()
    assert action.status == PlacementAction.Status.APPLIED, action.reason
    assert action.applied_at is not None
    assert not Deployment.objects.get(slug=DOTTED).loaded
    assert "the backend reports 'unloaded'" in action.reason
    entry = OperatorAction.objects.get()
    assert entry.action == "placement.apply"
    assert entry.reason


def test_a_dismissed_recommendation_is_not_proposed_again_within_its_cooldown(world):
    from backends import placement

    action = _recommendation(DOTTED)
    placement.recommendation_dismiss(action)
    standing = placement.standing_recommendations(since=action.created_at)
    assert (DOTTED, "load") in set(standing)


# --------------------------------------------------------------------------- tenants


def test_the_tenants_page_shows_tier_usage_spend_limits_and_suspension(
    world, oscar, acme, globex, live_maps
):
    from decimal import Decimal

    from django.utils import timezone

    from billing.models import BillingAccount, UsageEvent

    for i, charge in enumerate(["0.125", "0.250"]):
        UsageEvent.objects.create(
            request_id=f"r{i}", org=acme, endpoint="chat", model="m", served_model="m",
            deployment=DOTTED, region="westeurope", cluster="c", chip="h100",
            input_tokens=10, output_tokens=5, usage_source="upstream",
            cost_usd=Decimal("0.1"), charge_usd=Decimal(charge),
        )  # fmt: skip
    BillingAccount.objects.filter(org=globex).update(
        suspended_at=timezone.now(), suspended_reason="payment failed"
    )
    html = verified(oscar).get("/console/tenants/").content.decode()
    acme_row = html.split("Acme")[1].split("</tr>")[0]
    assert "Free" in acme_row
    assert "active" in acme_row
    assert ">2<" in acme_row
    assert ">30<" in acme_row
    assert "0.38" in acme_row
    assert ">60<" in acme_row  # the Free tier's requests per minute
    globex_row = html.split("Globex")[1].split("</tr>")[0]
    assert "suspended" in globex_row
    assert "payment failed" in globex_row


def test_the_tenants_page_says_whether_billing_runs_through_stripe_or_local_only(
    world, oscar, settings
):
    settings.STRIPE_SECRET_KEY = ""
    local = verified(oscar).get("/console/tenants/").content.decode()
    assert "<strong>local-only</strong>" in local
    assert "nothing is charged" in local
    settings.STRIPE_SECRET_KEY = "sk_test_123"
    stripe = verified(oscar).get("/console/tenants/").content.decode()
    assert "through Stripe" in stripe
    assert "local-only" not in stripe


def test_the_tenants_page_needs_the_same_queries_however_many_tenants(world, oscar, charlie):
    client = verified(oscar)

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/console/tenants/").status_code == 200
        return len(queries)

    before = count()
    for n in range(5):
        account_services.organization_create(name=f"Tenant {n}", owner=charlie)
    assert count() == before


def test_the_operator_log_needs_the_same_queries_however_many_entries(world, oscar):
    from accounts.operator_actions import record_operator_action

    client = verified(oscar)

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/console/audit/").status_code == 200
        return len(queries)

    record_operator_action(oscar, "drain", "region:westeurope", "drill")
    before = count()
    for n in range(10):
        record_operator_action(oscar, "drain", f"cluster:c{n}", "drill")
    assert count() == before


def test_an_operator_action_needs_an_action_and_a_target(db, oscar):
    from accounts.operator_actions import record_operator_action

    with pytest.raises(ValueError, match="needs an action and a target"):
        record_operator_action(oscar, "", "region:westeurope", "why")
    with pytest.raises(ValueError, match="needs an action and a target"):
        record_operator_action(oscar, "drain", " ", "why")
    assert not OperatorAction.objects.exists()


def test_the_kill_switch_thrown_elsewhere_is_in_the_operator_log_too(world, oscar):
    from django.core.management import call_command

    call_command("drain", "region", "westeurope", "--reason", "maintenance window")
    call_command("drain", "region", "westeurope", "--undo")
    oscar.is_superuser = True
    oscar.save()
    response = verified(oscar).post(
        "/admin/backends/cluster/",
        {"action": "drain", "_selected_action": [Cluster.objects.order_by("slug")[0].pk]},
    )
    assert response.status_code == 302, response.content[:300]
    log = list(OperatorAction.objects.order_by("pk").values_list("actor", "action", "reason"))
    assert log == [
        (None, "drain", "maintenance window"),
        (None, "undrain", "manage.py drain (no reason given)"),
        (oscar.pk, "drain", "from the admin (no reason asked)"),
    ]
    assert Cluster.objects.filter(drained=True).count() == 1
