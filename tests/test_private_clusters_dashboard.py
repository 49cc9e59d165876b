"""Private clusters from the dashboard: an owner registers one and adds a model; a
teammate sees them but cannot change them; another tenant gets 404 everywhere."""

from __future__ import annotations

import pytest

from backends.demo import demo_world_load
from backends.models import Cluster, Deployment
from tests.conftest import login

SECRET = "sk-basement-credential-9876"


@pytest.fixture
def world(db) -> None:
    demo_world_load()


def register(client, org, **kw):
    body = {
        "name": "Basement", "region": "westeurope", "chip": "nvidia-h100", "accelerators": 8,
        "certifications": ["soc2"], "credential": SECRET, "auth_style": "bearer",
    } | kw  # fmt: skip
    return client.post(f"/orgs/{org.slug}/clusters/", body)


def test_an_owner_registers_a_cluster_and_adds_a_model_from_the_dashboard(world, alice, acme):
    client = login(alice)
    assert register(client, acme).status_code == 302
    cluster = Cluster.objects.get(organization=acme)
    assert cluster.provider.credential_hint == "…9876"
    model = Deployment.objects.values_list("model__slug", flat=True).first()
    added = client.post(
        f"/orgs/{acme.slug}/clusters/{cluster.slug}/deployments/",
        {
            "model": model, "endpoint_url": "https://gpu.acme.example/v1",
            "concurrency_slots": 8, "ttft_ms": 150, "reference_prompt_tokens": 1000,
            "prefill_tokens_per_s": 9000, "decode_tokens_per_s": 70,
        },
    )  # fmt: skip
    assert added.status_code == 302
    page = client.get(f"/orgs/{acme.slug}/clusters/").content.decode()
    assert "Basement" in page
    assert model in page
    assert "…9876" in page
    assert SECRET not in page
    assert Deployment.objects.get(cluster=cluster).provider == cluster.provider


def test_bad_input_is_a_400_that_changes_nothing(world, alice, acme):
    answer = register(login(alice), acme, region="atlantis")
    assert answer.status_code == 400
    assert SECRET not in answer.content.decode()  # the credential is never echoed back
    assert not Cluster.objects.filter(organization=acme).exists()


def test_counts_past_what_their_columns_hold_are_a_400_that_changes_nothing(world, alice, acme):
    client = login(alice)
    assert register(client, acme, accelerators=2**31).status_code == 400
    assert not Cluster.objects.filter(organization=acme).exists()
    assert register(client, acme).status_code == 302
    cluster = Cluster.objects.get(organization=acme)
    model = Deployment.objects.values_list("model__slug", flat=True).first()
    good = {
        "model": model, "endpoint_url": "https://gpu.acme.example/v1", "concurrency_slots": 8,
        "ttft_ms": 150, "reference_prompt_tokens": 1000, "prefill_tokens_per_s": 9000,
        "decode_tokens_per_s": 70,
    }  # fmt: skip
    url = f"/orgs/{acme.slug}/clusters/{cluster.slug}/deployments/"
    for field in ("concurrency_slots", "reference_prompt_tokens"):
        assert client.post(url, good | {field: 2**31}).status_code == 400
    assert not Deployment.objects.filter(cluster=cluster).exists()


def test_a_teammate_sees_the_clusters_but_only_owners_change_them(world, alice, bob, acme):
    register(login(alice), acme)
    cluster = Cluster.objects.get(organization=acme)
    teammate = login(bob)
    assert "Basement" in teammate.get(f"/orgs/{acme.slug}/clusters/").content.decode()
    # (the dashboard answers a member without the right with 404, as for its other pages)
    assert register(teammate, acme, name="Other").status_code == 404
    assert teammate.post(f"/orgs/{acme.slug}/clusters/{cluster.slug}/delete/").status_code == 404
    assert Cluster.objects.filter(organization=acme).count() == 1


def test_charlie_gets_404_on_every_page_of_acmes_clusters(world, alice, acme, charlie, globex):
    register(login(alice), acme)
    cluster = Cluster.objects.get(organization=acme)
    client = login(charlie)
    for method, url in [
        ("get", f"/orgs/{acme.slug}/clusters/"),
        ("post", f"/orgs/{acme.slug}/clusters/"),
        ("post", f"/orgs/{acme.slug}/clusters/{cluster.slug}/deployments/"),
        ("post", f"/orgs/{acme.slug}/clusters/{cluster.slug}/delete/"),
        ("post", f"/orgs/{globex.slug}/clusters/{cluster.slug}/delete/"),
    ]:
        assert getattr(client, method)(url).status_code == 404, url
    assert "Basement" not in client.get(f"/orgs/{globex.slug}/clusters/").content.decode()
    assert Cluster.objects.filter(pk=cluster.pk).exists()
