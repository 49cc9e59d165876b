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
        "/console/region/westeurope/drain", data=b'{"drained": true}',
        content_type="application/json",
    )  # fmt: skip
    assert response.json()["drained"] is True
    assert Region.objects.get(slug="westeurope").drained
