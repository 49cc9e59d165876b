"""The operator console: staff see the live maps and steer the mesh; nobody else does."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings

from backends import health
from backends.demo import demo_world_load
from backends.models import Region
from tests.conftest import login


@pytest.fixture
def world(db):
    return demo_world_load()


@pytest.fixture
def oscar(db):
    from accounts.models import User

    return User.objects.create_user("oscar@example.com", "pw-oscar-123", is_staff=True)


@pytest.fixture(autouse=True)
def fresh_live_maps():
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(match="tesseract:*health*"):
        client.delete(key)
    return client


def test_the_console_is_for_operators_only(world, alice):
    response = login(alice).get("/console/maps.json")
    assert response.status_code == 403
    assert login(alice).post("/console/region/westeurope/drain").status_code == 403
    assert not Region.objects.get(slug="westeurope").drained


def test_the_maps_show_live_health_from_redis(world, oscar, fresh_live_maps, settings):
    settings.TESSERACT_STAFF_REQUIRE_2FA = False
    slug = "westeurope-tesseract-nvidia-h100--llama-3.1-8b-instruct"
    for _ in range(3):
        health.observe(fresh_live_maps, slug, health.FAIL, source="check", reason="test")
    data = login(oscar).get("/console/maps.json").json()
    rows = {d["slug"]: d for d in data["deployments"]}
    assert rows[slug]["health"] == "down"
    assert rows[slug]["simulated"]
    assert len(rows) == 67
    assert login(oscar).get("/console/").status_code == 200


def test_an_operator_drains_a_region_from_the_console(world, oscar, settings):
    settings.TESSERACT_STAFF_REQUIRE_2FA = False
    response = login(oscar).post(
        "/console/region/westeurope/drain", data=b'{"drained": true, "reason": "drill"}',
        content_type="application/json",
    )  # fmt: skip
    assert response.json()["drained"] is True
    assert Region.objects.get(slug="westeurope").drained


# A real demo slug: the model's version puts a dot in every deployment's name.
DOTTED = "westeurope-tesseract-nvidia-h100--llama-3.1-8b-instruct"


@pytest.fixture
def simulated_world(db):
    """The demo world pointing at a real simulator served on loopback."""
    from backends.simulator import create_app
    from backends.world import demo_world
    from tests.servers import serve

    simulator = create_app(demo_world(), time_scale=0.05, gateway_region="westeurope")
    with serve(simulator) as url:
        demo_world_load(simulator_url=url)
        yield simulator


def test_an_operator_switches_the_fault_of_a_deployment_whose_slug_has_a_dot(
    simulated_world, oscar, settings
):
    settings.TESSERACT_STAFF_REQUIRE_2FA = False
    response = login(oscar).post(f"/console/deployments/{DOTTED}/fault", {"fault": "slow"})
    assert response.status_code == 200, response.content
    assert response.json()["fault"]["fault"] == "slow"
    assert simulated_world.deployments[DOTTED].fault.kind == "slow"


def test_a_fault_switch_for_an_unknown_deployment_is_a_404(world, oscar, settings):
    settings.TESSERACT_STAFF_REQUIRE_2FA = False
    response = login(oscar).post("/console/deployments/nowhere-1.0/fault", {"fault": "slow"})
    assert response.status_code == 404


def test_an_operator_drains_one_deployment_by_its_dotted_slug(world, oscar, settings):
    from backends.models import Deployment

    settings.TESSERACT_STAFF_REQUIRE_2FA = False
    client = login(oscar)
    response = client.post(
        f"/console/deployment/{DOTTED}/drain", data=b'{"drained": true, "reason": "drill"}',
        content_type="application/json",
    )  # fmt: skip
    assert response.status_code == 200, response.content
    assert Deployment.objects.get(slug=DOTTED).drained
    response = client.post(
        f"/console/deployment/{DOTTED}/drain", data=b'{"drained": false, "reason": "drill over"}',
        content_type="application/json",
    )  # fmt: skip
    assert response.json()["drained"] is False
    assert not Deployment.objects.get(slug=DOTTED).drained


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"drained"',
        b'{"drained": "yes", "reason": "drill"}',
        b'{"drained": true}',
        b'{"drained": true, "reason": 7}',
    ],
)
def test_a_malformed_drain_body_is_a_400_and_drains_nothing(world, oscar, settings, body):
    settings.TESSERACT_STAFF_REQUIRE_2FA = False
    response = login(oscar).post(
        "/console/region/westeurope/drain", data=body, content_type="application/json"
    )
    assert response.status_code == 400
    assert "error" in response.json()
    assert not Region.objects.get(slug="westeurope").drained


@pytest.mark.parametrize("kind", ["region", "cluster", "deployment"])
def test_draining_an_unknown_name_is_a_404(world, oscar, settings, kind):
    settings.TESSERACT_STAFF_REQUIRE_2FA = False
    response = login(oscar).post(
        f"/console/{kind}/atlantis-9.9/drain", data=b'{"drained": true, "reason": "drill"}',
        content_type="application/json",
    )  # fmt: skip
    assert response.status_code == 404
    assert "atlantis-9.9" in response.json()["error"]


def test_draining_an_unknown_kind_is_a_400(world, oscar, settings):
    settings.TESSERACT_STAFF_REQUIRE_2FA = False
    response = login(oscar).post("/console/planet/earth/drain")
    assert response.status_code == 400
