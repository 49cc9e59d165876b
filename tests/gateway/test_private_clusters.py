"""Private clusters end to end: the real gateway, the simulator, the management API.

The cast, each in an organization of their own: alice (Acme) registers a private
cluster; bob (Initech) and charlie (Globex) are other tenants. Alice's cluster gets
alice's traffic and none of bob's; charlie cannot list, read, change or route to it
by any URL or API, nor learn that it (or a model only it serves) exists.

Alice's cluster is played by a simulator of its own, which counts what reaches it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis
from django.conf import settings
from django.utils import timezone

from accounts import services
from backends.models import AIModel
from backends.simulator import create_app
from backends.world import DeploymentSpec, WorldSpec
from billing import limits
from billing.models import SlaTier
from billing.subscriptions import budget_set, tier_change
from billing.tiers import ENTERPRISE
from routing.gateway.app import application
from tests import tiers
from tests.conftest import login
from tests.gateway.conftest import TIME_SCALE
from tests.servers import serve

BOX, SECRET_BOX = "alice-box", "alice-secret"
SECRET_MODEL = "acme-secret-7b"


class Counting:
    """An ASGI app in front of another that counts the requests reaching each path."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.hits: Counter[str] = Counter()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            self.hits[scope["path"]] += 1
        await self.app(scope, receive, send)


def _template(spec: WorldSpec) -> DeploymentSpec:
    """A demo deployment in the gateway's own region, whose cluster the box shares."""
    for d in sorted(spec.deployments.values(), key=lambda d: d.slug):
        if spec.clusters[d.cluster].region == "westeurope":
            return d
    raise AssertionError("no deployment in westeurope")


@pytest.fixture
def box(world_spec) -> Iterator[tuple[Counting, str, DeploymentSpec]]:
    """Alice's own server: a simulator serving one model, faster than anything public."""
    template = _template(world_spec)
    p = template.profile
    fast = replace(
        p,
        ttft_ms=p.ttft_ms / 10,
        prefill_tokens_per_s=p.prefill_tokens_per_s * 10,
        decode_tokens_per_s=p.decode_tokens_per_s * 10,
    )
    deployment = replace(template, slug=BOX, profile=fast, concurrency_slots=64)
    secret = replace(deployment, slug=SECRET_BOX, model=SECRET_MODEL)
    base = world_spec.models[template.model]
    spec = replace(
        world_spec,
        models={**world_spec.models, SECRET_MODEL: replace(base, slug=SECRET_MODEL)},
        deployments={BOX: deployment, SECRET_BOX: secret},
    )
    counting = Counting(create_app(spec, time_scale=TIME_SCALE, gateway_region="westeurope"))
    with serve(counting) as url:
        yield counting, url, deployment


@dataclass
class Tenant:
    user: Any
    org: Any
    key: str


def _tenant(user: Any, name: str) -> Tenant:
    org = services.organization_create(name=name, owner=user)
    tiers.unlimited(org)
    return Tenant(user, org, services.api_key_create(org=org, name="tests").plaintext)


@pytest.fixture
def cast(mesh, alice, bob, charlie) -> dict[str, Tenant]:
    return {
        "alice": _tenant(alice, "Acme"),
        "bob": _tenant(bob, "Initech"),
        "charlie": _tenant(charlie, "Globex"),
    }


def _profile(d: DeploymentSpec) -> dict[str, Any]:
    p = d.profile
    return {
        "concurrency_slots": d.concurrency_slots,
        "ttft_ms": p.ttft_ms,
        "reference_prompt_tokens": p.reference_prompt_tokens,
        "prefill_tokens_per_s": p.prefill_tokens_per_s,
        "decode_tokens_per_s": p.decode_tokens_per_s,
    }


@pytest.fixture
def private(mesh, cast, box, world_spec, settings) -> dict[str, Any]:
    """Alice registers her cluster and its two models through the management API."""
    settings.TESSERACT_PRIVATE_ENDPOINTS_ALLOW_LOCAL = True  # her "server" is on loopback
    _counting, url, deployment = box
    AIModel.objects.create(
        slug=SECRET_MODEL, name="Acme secret", family="acme", parameters_b=Decimal(7),
        context_length=8192,
    )  # fmt: skip
    api = login(cast["alice"].user)
    template = world_spec.clusters[deployment.cluster]
    created = api.post(
        "/api/v1/clusters",
        {
            "name": "Basement",
            "region": "westeurope",
            "chip": template.chip,
            "accelerators": 8,
            "certifications": ["soc2"],
        },
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    cluster = created.json()["slug"]
    deployments = {}
    for model, served_at in ((deployment.model, BOX), (SECRET_MODEL, SECRET_BOX)):
        made = api.post(
            f"/api/v1/clusters/{cluster}/deployments",
            {"model": model, "endpoint_url": f"{url}/d/{served_at}/v1", **_profile(deployment)},
            content_type="application/json",
        )
        assert made.status_code == 201, made.content
        deployments[model] = made.json()["slug"]
    application.forget_world()  # (the commit announced it too; don't wait for the listener)
    _wait_until_listed(mesh, cast["alice"].key, SECRET_MODEL)
    return {"cluster": cluster, "deployments": deployments, "model": deployment.model}


def _wait_until_listed(mesh, key: str, model: str, timeout_s: float = 30.0) -> None:
    """Until the gateway's world holds the new cluster (a reload begun before the
    commit may land after `forget_world`; the commit's own announcement follows)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = httpx.get(
            f"{mesh.gateway_url}/v1/models", headers={"Authorization": f"Bearer {key}"}
        )
        if any(m["id"] == model for m in listed.json()["data"]):
            return
        time.sleep(0.05)
    raise AssertionError(f"the gateway never listed {model}")


def chat(mesh, key: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{mesh.gateway_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        timeout=30,
    )


def test_alices_private_cluster_gets_alices_traffic_and_none_of_bobs(
    mesh, cast, box, private, usage
):
    counting, _, _ = box
    mine = private["deployments"][private["model"]]
    for _ in range(3):
        answer = chat(mesh, cast["alice"].key, private["model"])
        assert answer.status_code == 200, answer.text
        assert answer.json()["tesseract"]["route"]["backend"] == mine
    assert sum(counting.hits.values()) == 3
    for _ in range(3):
        answer = chat(mesh, cast["bob"].key, private["model"])
        assert answer.status_code == 200, answer.text
        assert answer.json()["tesseract"]["route"]["backend"] != mine
        assert "alice" not in answer.text
        assert private["cluster"] not in answer.text
    assert sum(counting.hits.values()) == 3  # not one of bob's reached it

    events = usage()
    by_org = {t.org.pk: name for name, t in cast.items()}
    served = Counter((by_org[e.org_id], e.deployment == mine) for e in events)
    assert served == {("alice", True): 3, ("bob", False): 3}
    alices = [e for e in events if e.deployment == mine]
    assert all(e.fee_per_request_usd is not None for e in alices)  # the platform fee
    assert all(e.backend_policy for e in alices)


def test_a_model_only_alice_serves_looks_nonexistent_to_charlie(mesh, cast, private):
    mine = chat(mesh, cast["alice"].key, SECRET_MODEL)
    assert mine.status_code == 200, mine.text
    hidden = chat(mesh, cast["charlie"].key, SECRET_MODEL)
    nothing = chat(mesh, cast["charlie"].key, "no-such-model-7b")
    assert hidden.status_code == nothing.status_code == 404
    assert hidden.json() == json.loads(nothing.text.replace("no-such-model-7b", SECRET_MODEL))


def test_charlie_sees_no_trace_of_alices_cluster_in_models_or_route_plans(mesh, cast, private):
    def models(key: str) -> dict[str, Any]:
        got = httpx.get(f"{mesh.gateway_url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert got.status_code == 200
        return {m["id"]: m for m in got.json()["data"]}

    alices, charlies = models(cast["alice"].key), models(cast["charlie"].key)
    assert SECRET_MODEL in alices
    assert SECRET_MODEL not in charlies
    assert alices[private["model"]]["tesseract"]["private_regions"] == ["westeurope"]
    assert charlies[private["model"]]["tesseract"]["private_regions"] == []
    assert set(charlies) == set(alices) - {SECRET_MODEL}

    def retrieve(key: str, model: str) -> httpx.Response:
        return httpx.get(
            f"{mesh.gateway_url}/v1/models/{model}", headers={"Authorization": f"Bearer {key}"}
        )

    assert retrieve(cast["alice"].key, SECRET_MODEL).json() == alices[SECRET_MODEL]
    hidden = retrieve(cast["charlie"].key, SECRET_MODEL)
    nothing = retrieve(cast["charlie"].key, "x")
    assert hidden.status_code == nothing.status_code == 404
    assert hidden.json() == json.loads(nothing.text.replace("'x'", f"'{SECRET_MODEL}'"))

    def plan(key: str, model: str) -> httpx.Response:
        return httpx.post(
            f"{mesh.gateway_url}/v1/route",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        )

    alice_plan = plan(cast["alice"].key, private["model"])
    assert alice_plan.json()["primary"]["backend_id"] == private["deployments"][private["model"]]
    for model in (private["model"], SECRET_MODEL):
        charlie_plan = plan(cast["charlie"].key, model)
        assert private["cluster"] not in charlie_plan.text
        assert "o{}-".format(cast["alice"].org.pk) not in charlie_plan.text


def test_charlie_gets_404_on_every_url_of_alices_cluster(mesh, cast, private):
    cluster = private["cluster"]
    deployment = private["deployments"][private["model"]]
    charlie = login(cast["charlie"].user)
    assert charlie.get("/api/v1/clusters").json() == []
    urls = [
        f"/api/v1/clusters/{cluster}",
        f"/api/v1/clusters/{cluster}/deployments",
        f"/api/v1/clusters/{cluster}/deployments/{deployment}",
    ]
    missing = [u.replace(cluster, "o999999-nothing") for u in urls]
    for method in ("get", "patch", "delete", "post"):
        for url, nothing in zip(urls, missing, strict=True):
            answer = getattr(charlie, method)(url, {}, content_type="application/json")
            absent = getattr(charlie, method)(nothing, {}, content_type="application/json")
            if answer.status_code == 405:  # no such method on that URL, for anyone
                continue
            assert answer.status_code == 404, (method, url)
            assert answer.content == absent.content, (method, url)
    # His own manage key is no better than his session.
    manage = services.api_key_create(
        org=cast["charlie"].org, name="manage", scopes=["manage", "read"]
    ).plaintext
    got = httpx.get(
        f"{mesh.gateway_url}/api/v1/clusters/{cluster}",
        headers={"Authorization": f"Bearer {manage}"},
    )
    assert got.status_code == 404
    # And nothing changed.
    alice = login(cast["alice"].user)
    mine = alice.get(f"/api/v1/clusters/{cluster}").json()
    assert mine["name"] == "Basement"
    assert len(mine["deployments"]) == 2


def test_the_control_plane_checks_and_probes_alices_cluster_like_any_other(
    mesh, cast, box, private
):
    from backends import health, probes
    from backends.models import Cluster, LatencyProbe

    client = redis.Redis.from_url(settings.REDIS_URL)
    mine = private["deployments"][private["model"]]
    assert health.check_all(client=client, timeout_s=10)[mine] == "healthy"
    _, url, _ = box
    httpx.post(f"{url}/d/{BOX}/control", json={"fault": "down"}).raise_for_status()
    for _ in range(3):  # three failed checks take it down
        states = health.check_all(client=client, timeout_s=10)
    assert states[mine] == "down"

    cluster = Cluster.objects.get(slug=private["cluster"])
    probes.probe_clusters(client=client, cluster_ids=[cluster.pk], timeout_s=10)
    assert LatencyProbe.objects.filter(cluster=cluster).exists()


ALICES_KEY = "acme-vllm-key-0123456789-wxyz"


def test_alices_credential_and_model_id_reach_her_server_and_nothing_else(
    mesh, cast, box, private, caplog
):
    counting, url, _ = box
    cluster = private["cluster"]
    mine = private["deployments"][private["model"]]
    alice = login(cast["alice"].user)
    changed = alice.patch(
        f"/api/v1/clusters/{cluster}",
        {"credential": ALICES_KEY, "auth_style": "header", "auth_header": "api-key"},
        content_type="application/json",
    )
    assert changed.status_code == 200
    assert changed.json()["credential_hint"] == "…wxyz"
    renamed = alice.patch(
        f"/api/v1/clusters/{cluster}/deployments/{mine}",
        {"provider_model_id": "acme/llama-local"},
        content_type="application/json",
    )
    assert renamed.status_code == 200
    # Her server now wants that key, in that header, and its own name for the model.
    persona = {"auth_header": "api-key", "keys": [ALICES_KEY], "model_id": "acme/llama-local"}
    control = httpx.post(f"{url}/d/{BOX}/control", json={"persona": persona})
    control.raise_for_status()
    application.forget_world()

    deadline = time.monotonic() + 30
    while True:  # until the gateway's world holds the credential (the save announced it)
        answer = chat(mesh, cast["alice"].key, private["model"])
        if answer.status_code == 200 or time.monotonic() > deadline:
            break
        application.forget_world()
        time.sleep(0.1)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == private["model"]  # the catalog's name comes back
    assert answer.json()["tesseract"]["route"]["backend"] == mine
    seen = counting.app.deployments[BOX].persona.seen
    assert seen[-1] == (ALICES_KEY, "acme/llama-local")

    before = len(seen)
    bobs = chat(mesh, cast["bob"].key, private["model"])
    assert bobs.status_code == 200
    assert len(seen) == before  # bob's request went elsewhere, and without her key
    for shown in (answer.text, bobs.text, changed.content.decode(), caplog.text):
        assert ALICES_KEY not in shown


# --------------------------------------------------------------------------- budgets


def _tier_with_fee(slug: str, *, per_request: str, per_mtok: str) -> SlaTier:
    """A tier whose limits no test reaches, with the given private-cluster platform fee."""
    fields = {
        **ENTERPRISE.fields(),
        "name": slug,
        "requests_per_minute": 1_000_000,
        "tokens_per_minute": 1_000_000_000,
        "private_cluster_fee_per_request_usd": Decimal(per_request),
        "private_cluster_fee_per_mtok_usd": Decimal(per_mtok),
    }
    fields.pop("slug")
    return SlaTier.objects.create(slug=slug, **fields)


def _org_spend_nano(org_id: int) -> int:
    month = limits.month_of(timezone.now())
    spend = limits.redis_keys(org_id=org_id, key_id=None, month=month)[2]
    return int(redis.Redis.from_url(settings.REDIS_URL).get(spend) or 0)


def test_a_private_cluster_s_platform_fee_is_reserved_so_a_budget_that_cannot_hold_it_refuses_429(
    mesh, cast, box, private, usage
):
    """Alice's own cluster costs no provider price, but each request pays her tier's
    platform fee: $0.004 a request here, against a $0.01 budget. Two fit; the third is
    refused before it reaches her cluster, as insufficient_quota."""
    counting, _, _ = box
    org = cast["alice"].org
    tier_change(org=org, tier=_tier_with_fee("tests-dear-fee", per_request="0.004", per_mtok="0"))
    budget_set(org=org, monthly_budget_usd=Decimal("0.01"))
    key = services.api_key_create(org=org, name="budget").plaintext  # loads the new limits
    before = sum(counting.hits.values())

    answers = [chat(mesh, key, SECRET_MODEL) for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 429], [a.text for a in answers]
    error = answers[2].json()["error"]
    assert error["code"] == "insufficient_quota"
    assert "could cost up to $0.004000" in error["message"]
    assert "cap $0.01" in error["message"]
    assert sum(counting.hits.values()) == before + 2  # the refused one never reached it
    events = usage()
    assert [e.charge_usd for e in events] == [Decimal("0.004")] * 2
    assert _org_spend_nano(org.pk) == limits.to_nano(Decimal("0.008"))


def test_after_a_private_cluster_s_request_the_live_spend_equals_the_stored_charge(
    mesh, cast, private, usage
):
    org = cast["alice"].org
    # Pro's fee: $0.0001 a request and $0.05 per 1M tokens (a budget: the spend is counted)
    pro_fee = _tier_with_fee("tests-pro-fee", per_request="0.0001", per_mtok="0.05")
    tier_change(org=org, tier=pro_fee)
    key = services.api_key_create(org=org, name="spend").plaintext
    for model in (SECRET_MODEL, private["model"]):
        answer = chat(mesh, key, model)
        assert answer.status_code == 200, answer.text
        assert answer.json()["tesseract"]["route"]["backend"] == private["deployments"][model]

    events = usage()
    assert len(events) == 2
    assert all(e.fee_per_request_usd == Decimal("0.0001") for e in events)
    stored = sum((e.charge_usd for e in events), Decimal(0))
    tokens = sum(e.input_tokens + e.output_tokens for e in events)
    assert stored == 2 * Decimal("0.0001") + tokens * Decimal("0.05") / 10**6
    assert _org_spend_nano(org.pk) == limits.to_nano(stored)
