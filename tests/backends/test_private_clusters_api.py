"""The management API for private clusters: members read, owners write, bad input
changes nothing, and another organization gets the 404 of a slug that never existed.

(In this file bob is alice's teammate in Acme, as in `tests/conftest.py`.)
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from accounts import services as account_services
from backends.demo import demo_world_load
from backends.models import Cluster, Deployment
from tests.conftest import login

JSON = "application/json"


@pytest.fixture
def world(db) -> None:
    demo_world_load()


def cluster_body(**kw: Any) -> dict[str, Any]:
    return {
        "name": "Basement",
        "region": "westeurope",
        "chip": "nvidia-h100",
        "accelerators": 8,
        "certifications": ["soc2", "hipaa"],
    } | kw


def deployment_body(**kw: Any) -> dict[str, Any]:
    return {
        "model": Deployment.objects.values_list("model__slug", flat=True).first(),
        "endpoint_url": "https://gpu.acme.example/v1",
        "concurrency_slots": 16,
        "ttft_ms": 120.0,
        "prefill_tokens_per_s": 8000.0,
        "decode_tokens_per_s": 60.0,
    } | kw


@pytest.fixture
def basement(world, alice, acme) -> dict[str, Any]:
    api = login(alice)
    made = api.post("/api/v1/clusters", cluster_body(), content_type=JSON)
    assert made.status_code == 201, made.content
    slug = made.json()["slug"]
    dep = api.post(f"/api/v1/clusters/{slug}/deployments", deployment_body(), content_type=JSON)
    assert dep.status_code == 201, dep.content
    return {"slug": slug, "deployment": dep.json()["slug"]}


def test_an_owner_registers_a_private_cluster_owned_by_her_organization(acme, basement):
    cluster = Cluster.objects.get(slug=basement["slug"])
    assert cluster.organization == acme
    assert cluster.certifications == ["hipaa", "soc2"]
    d = Deployment.objects.get(slug=basement["deployment"])
    assert d.cluster == cluster
    assert d.chip_id == cluster.chip_id
    assert d.price_input_per_mtok == d.price_output_per_mtok == 0  # billed by platform fee
    assert d.endpoint_url == "https://gpu.acme.example/v1"


def test_a_teammate_reads_but_only_owners_write(bob, basement):
    api = login(bob)
    assert [c["slug"] for c in api.get("/api/v1/clusters").json()] == [basement["slug"]]
    url = f"/api/v1/clusters/{basement['slug']}"
    assert api.get(url).status_code == 200
    assert api.patch(url, {"accelerators": 2}, content_type=JSON).status_code == 403
    assert api.delete(url).status_code == 403
    assert (
        api.post("/api/v1/clusters", cluster_body(name="x"), content_type=JSON).status_code == 403
    )
    assert Cluster.objects.get(slug=basement["slug"]).accelerators == 8
    assert Cluster.objects.filter(organization__isnull=False).count() == 1


def test_an_owners_manage_key_registers_and_removes_a_cluster_like_a_terraform_run_would(
    world, alice, acme
):
    secret = account_services.api_key_create(
        org=acme, name="terraform", created_by=alice, scopes=["manage"]
    ).plaintext
    api = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    made = api.post("/api/v1/clusters", cluster_body(), content_type=JSON)
    assert made.status_code == 201, made.content
    slug = made.json()["slug"]
    dep = api.post(f"/api/v1/clusters/{slug}/deployments", deployment_body(), content_type=JSON)
    assert dep.status_code == 201, dep.content
    assert Cluster.objects.get(slug=slug).organization == acme
    assert api.delete(f"/api/v1/clusters/{slug}").status_code == 204
    assert not Cluster.objects.filter(slug=slug).exists()


def test_a_key_without_the_manage_scope_cannot_write_clusters(world, alice, acme):
    secret = account_services.api_key_create(
        org=acme, name="app", created_by=alice, scopes=["inference", "read"]
    ).plaintext
    api = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    answer = api.post("/api/v1/clusters", cluster_body(), content_type=JSON)
    assert answer.status_code == 403
    assert not Cluster.objects.filter(organization__isnull=False).exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (cluster_body(region="atlantis"), "region"),
        (cluster_body(chip="abacus"), "chip"),
        (cluster_body(certifications=["fedramp"]), "certifications"),
        (cluster_body(accelerators=0), "accelerators"),
        (cluster_body(name="!!!"), None),
    ],
)
def test_bad_cluster_input_is_a_clear_400_and_creates_nothing(world, alice, acme, body, field):
    answer = login(alice).post("/api/v1/clusters", body, content_type=JSON)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == field
    assert not Cluster.objects.filter(organization__isnull=False).exists()


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"model": "no-such-model"}, "model"),
        ({"endpoint_url": "not a url"}, "endpoint_url"),
        ({"ttft_ms": -1}, "ttft_ms"),
        ({"decode_tokens_per_s": 0}, "decode_tokens_per_s"),
        ({"concurrency_slots": 0}, "concurrency_slots"),
    ],
)
def test_bad_deployment_input_is_a_clear_400_and_creates_nothing(alice, basement, bad, field):
    url = f"/api/v1/clusters/{basement['slug']}/deployments"
    answer = login(alice).post(url, deployment_body(**bad), content_type=JSON)
    assert answer.status_code == 400, answer.content
    assert answer.json()["error"]["param"] == field
    assert Deployment.objects.filter(cluster__slug=basement["slug"]).count() == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost/v1",
        "http://[::1]:8000/v1",
        "http://0.0.0.0/v1",
    ],
)
def test_an_endpoint_on_this_machine_or_its_metadata_service_is_refused(alice, basement, url):
    api = login(alice)
    base = f"/api/v1/clusters/{basement['slug']}/deployments"
    other = Deployment.objects.exclude(model__slug=deployment_body()["model"]).first()
    made = api.post(
        base, deployment_body(model=other.model.slug, endpoint_url=url), content_type=JSON
    )
    assert made.status_code == 400
    assert "endpoint URL" in made.json()["error"]["message"]
    moved = api.patch(f"{base}/{basement['deployment']}", {"endpoint_url": url}, content_type=JSON)
    assert moved.status_code == 400
    kept = Deployment.objects.get(slug=basement["deployment"])
    assert kept.endpoint_url == "https://gpu.acme.example/v1"
    assert Deployment.objects.filter(cluster__slug=basement["slug"]).count() == 1


def test_a_second_deployment_of_the_same_model_is_refused(alice, basement):
    url = f"/api/v1/clusters/{basement['slug']}/deployments"
    answer = login(alice).post(url, deployment_body(), content_type=JSON)
    assert answer.status_code == 400
    assert "already serves" in answer.json()["error"]["message"]


def test_charlie_gets_the_404_of_a_cluster_that_never_existed(charlie, globex, basement):
    api = login(charlie)
    assert api.get("/api/v1/clusters").json() == []
    for url in (
        f"/api/v1/clusters/{basement['slug']}",
        f"/api/v1/clusters/{basement['slug']}/deployments",
        f"/api/v1/clusters/{basement['slug']}/deployments/{basement['deployment']}",
    ):
        nothing = url.replace(basement["slug"], "o0-nothing")
        for method in ("get", "delete"):
            got = getattr(api, method)(url)
            absent = getattr(api, method)(nothing)
            # 404, or the 405 of a method that URL never has: the same as for nothing
            assert got.status_code == absent.status_code, url
            assert got.status_code in (404, 405)
            assert (method, got.status_code) != ("get", 405)
            assert got.content == absent.content
    # Naming alice's organization does not help: he is not a member.
    assert api.get("/api/v1/clusters", HTTP_X_TESSERACT_ORG="acme").status_code == 404
    assert Cluster.objects.filter(slug=basement["slug"]).exists()


def test_a_public_cluster_cannot_be_read_or_changed_through_the_api(alice, basement):
    public = Cluster.objects.filter(organization=None).first()
    api = login(alice)
    assert api.get(f"/api/v1/clusters/{public.slug}").status_code == 404
    assert api.delete(f"/api/v1/clusters/{public.slug}").status_code == 404
    assert Cluster.objects.filter(pk=public.pk).exists()


def test_the_same_name_in_two_organizations_clashes_with_nothing(charlie, globex, basement):
    made = login(charlie).post("/api/v1/clusters", cluster_body(), content_type=JSON)
    assert made.status_code == 201
    assert made.json()["slug"] != basement["slug"]
    again = login(charlie).post("/api/v1/clusters", cluster_body(), content_type=JSON)
    assert again.status_code == 400  # only with his own


def test_an_owner_changes_and_removes_her_cluster(alice, basement):
    api = login(alice)
    url = f"/api/v1/clusters/{basement['slug']}"
    changed = api.patch(url, {"accelerators": 16, "drained": True}, content_type=JSON)
    assert changed.status_code == 200
    assert changed.json()["accelerators"] == 16
    assert changed.json()["drained"] is True
    moved = api.patch(url, {"region": "eastus"}, content_type=JSON)
    assert moved.status_code == 400  # a cluster does not move: register a new one
    assert "region" in moved.json()["error"]["message"]
    assert Cluster.objects.get(slug=basement["slug"]).region.slug == "westeurope"
    dep_url = f"{url}/deployments/{basement['deployment']}"
    assert api.patch(dep_url, {"ttft_ms": 90.0}, content_type=JSON).json()["ttft_ms"] == 90.0
    assert api.delete(url).status_code == 204
    assert not Cluster.objects.filter(slug=basement["slug"]).exists()
    assert not Deployment.objects.filter(slug=basement["deployment"]).exists()


def test_the_openapi_schema_describes_the_cluster_endpoints(alice, acme):
    schema = login(alice).get("/api/schema/", {"format": "json"}).json()
    assert "/api/v1/clusters" in schema["paths"]
    assert "/api/v1/clusters/{slug}/deployments/{deployment}" in schema["paths"]


SECRET = "sk-acme-never-to-be-seen-again-1234"


def test_the_credential_is_sealed_write_only_and_reaches_the_gateways_world(alice, basement):
    from backends.snapshot import load_world

    api = login(alice)
    url = f"/api/v1/clusters/{basement['slug']}"
    body = {"credential": SECRET, "auth_style": "header", "auth_header": "api-key"}
    answer = api.patch(url, body, content_type=JSON)
    assert answer.status_code == 200, answer.content
    assert answer.json()["credential_hint"] == "…1234"
    assert answer.json()["auth_style"] == "header"
    for shown in (answer, api.get(url), api.get("/api/v1/clusters")):
        assert SECRET not in shown.content.decode()
    cluster = Cluster.objects.select_related("provider").get(slug=basement["slug"])
    assert SECRET not in cluster.provider.credential_sealed  # sealed at rest
    # Every deployment of the cluster, a later one too, is reached with it.
    later = api.post(
        f"{url}/deployments",
        deployment_body(model=Deployment.objects.exclude(model__slug=deployment_body()["model"])
                        .values_list("model__slug", flat=True).first()),
        content_type=JSON,
    )  # fmt: skip
    assert later.status_code == 201
    world = load_world()
    for slug in (basement["deployment"], later.json()["slug"]):
        assert world.endpoints[slug].upstream_headers()["api-key"] == SECRET
    assert SECRET not in repr(world.endpoints)


def test_a_header_credential_without_its_header_is_refused_and_changes_nothing(alice, basement):
    url = f"/api/v1/clusters/{basement['slug']}"
    answer = login(alice).patch(
        url, {"credential": SECRET, "auth_style": "header"}, content_type=JSON
    )
    assert answer.status_code == 400
    assert "auth_header" in answer.json()["error"]["message"]
    assert SECRET not in answer.content.decode()
    assert Cluster.objects.get(slug=basement["slug"]).provider is None
