"""Real providers, played by simulator personas, through the real gateway.

Groq's deployment in Sweden is given a provider (a sealed key, Groq's own model id)
and a persona that checks both; the Tesseract H100 hub in the same region is the
fallback. Every test scans what it captured — log lines, answers, /metrics, mails —
for the key: it must never appear.
"""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest
import redis
from django.conf import settings
from django.core import mail

from backends import health, livestate, providers
from backends.models import Deployment, Provider
from backends.presets import PRESETS
from tests import leaks
from tests.waiting import eventually

SEVENTY = "llama-3.3-70b-instruct"
GROQ = f"swedencentral-groq-groq-lpu--{SEVENTY}"
HUB = f"swedencentral-tesseract-nvidia-h100--{SEVENTY}"
GROQ_ID = PRESETS["groq"].models[SEVENTY]  # "llama-3.3-70b-versatile"
KEY = "gsk_test_4f1d9c2b7e8a6d5c3b2a1f0e9d8cZQ7X"
HERE = {"regions": ["swedencentral"], "client_region": "swedencentral"}
ASK = {
    "model": SEVENTY,
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 4,
    "tesseract": HERE,
}


@pytest.fixture
def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


class Captured(leaks.Captured):
    """Everything a test saw, the gateway's /metrics included, scanned for the key."""

    def assert_no_secret(self, mesh) -> None:
        super().assert_no_secret(httpx.get(f"{mesh.gateway_url}/metrics").text)


@pytest.fixture
def seen(caplog) -> Captured:
    caplog.set_level(logging.DEBUG)
    return Captured(caplog, KEY)


def attach(mesh, slugs: list[str], **persona) -> Provider:
    """Groq serves `slugs` with our sealed key; each one's persona checks it."""
    provider = Provider.objects.create(
        slug="groq", name="Groq", preset="groq", base_url="https://api.groq.com/openai/v1"
    )
    providers.credential_set(provider, KEY)
    Deployment.objects.filter(slug__in=slugs).update(
        provider=provider, provider_model_id=GROQ_ID, adapter=Deployment.Adapter.OPENAI
    )
    for slug in slugs:
        mesh.fault(
            slug,
            persona={
                "auth_header": "authorization",
                "keys": [KEY],
                "model_id": GROQ_ID,
                **persona,
            },
        )
    from routing.gateway.app import application

    application.forget_world()
    return provider


def post(mesh, key: str, body: dict, path: str = "chat/completions") -> httpx.Response:
    return httpx.post(
        f"{mesh.gateway_url}/v1/{path}",
        headers={"Authorization": f"Bearer {key}"},
        json=body,
        timeout=60,
    )


def primary(mesh, key: str) -> str | None:
    plan = post(mesh, key, ASK, "route").json()
    return plan["primary"]["backend_id"] if plan["primary"] else None


def planned(mesh, key: str) -> list[str]:
    plan = post(mesh, key, ASK, "route").json()
    return [c["backend_id"] for c in [plan["primary"], *plan["fallbacks"]] if c]


@pytest.fixture
def groq(mesh, api_key) -> Provider:
    provider = attach(mesh, [GROQ])
    assert planned(mesh, api_key)[:2] == [GROQ, HUB], "the test needs Groq first, the hub next"
    return provider


def test_the_provider_gets_its_own_model_id_and_our_key_and_the_client_its_model(
    mesh, api_key, groq, seen
):
    response = seen.keep(post(mesh, api_key, ASK))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == SEVENTY
    route = body["tesseract"]["route"]
    assert route["backend"] == GROQ
    assert (route["provider"], route["provider_model"], route["model"]) == (
        "groq",
        GROQ_ID,
        SEVENTY,
    )
    assert mesh.simulator.deployments[GROQ].persona.seen[-1] == (KEY, GROQ_ID)
    seen.assert_no_secret(mesh)


def test_a_streamed_answer_names_the_catalogs_model_in_every_chunk(mesh, api_key, groq, seen):
    models, last = [], None
    with mesh.stream(api_key, ASK) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                last = json.loads(line[6:])
                models.append(last["model"])
    assert models
    assert set(models) == {SEVENTY}
    assert last["tesseract"]["route"]["provider_model"] == GROQ_ID
    seen.assert_no_secret(mesh)


def test_a_named_header_provider_receives_the_key_in_that_header(mesh, api_key, groq, seen):
    Provider.objects.filter(pk=groq.pk).update(auth_style="header", auth_header="api-key")
    mesh.fault(GROQ, persona={"auth_header": "api-key", "keys": [KEY], "model_id": GROQ_ID})
    from routing.gateway.app import application

    application.forget_world()
    response = seen.keep(post(mesh, api_key, ASK))
    assert response.json()["tesseract"]["route"]["backend"] == GROQ
    assert mesh.simulator.deployments[GROQ].persona.seen[-1] == (KEY, GROQ_ID)
    seen.assert_no_secret(mesh)


def test_a_revoked_key_takes_the_provider_out_alerts_and_the_client_is_served_elsewhere(
    mesh, api_key, groq, seen, client, settings
):
    settings.ADMINS = [("Ops", "ops@example.com")]
    mesh.fault(GROQ, persona={"auth_header": "authorization", "keys": ["gsk_new"],
                              "model_id": GROQ_ID})  # fmt: skip
    response = seen.keep(post(mesh, api_key, ASK))
    assert response.status_code == 200, response.text
    assert response.json()["tesseract"]["route"]["backend"] == HUB
    assert response.json()["tesseract"]["attempts"] == 2
    eventually(lambda: GROQ not in planned(mesh, api_key))
    assert any(
        r.levelno == logging.ERROR and "rejected our credential" in r.getMessage()
        for r in seen.caplog.records
    )
    assert providers.sync_rejections(client) == ["groq"]  # the control plane's round
    groq.refresh_from_db()
    assert groq.status == Provider.Status.MISCONFIGURED
    assert len(mail.outbox) == 1
    seen.assert_no_secret(mesh)


def test_a_provider_that_refuses_us_and_is_the_only_choice_is_a_503_not_a_401(
    mesh, api_key, groq, seen
):
    Deployment.objects.filter(slug=HUB).update(drained=True)
    mesh.fault(GROQ, persona={"auth_header": "authorization", "keys": ["gsk_other"]})
    from routing.gateway.app import application

    application.forget_world()
    response = seen.keep(post(mesh, api_key, ASK))
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "backend_unavailable"
    assert "misconfigured" in error["message"]
    seen.assert_no_secret(mesh)


def test_once_the_provider_is_marked_out_its_region_gets_a_503_that_says_why_not_a_422(
    mesh, api_key, groq, seen
):
    Deployment.objects.filter(slug=HUB).update(drained=True)
    mesh.fault(GROQ, persona={"auth_header": "authorization", "keys": ["gsk_other"]})
    from routing.gateway.app import application

    application.forget_world()
    assert seen.keep(post(mesh, api_key, ASK)).status_code == 503  # tried, and refused
    # Every gateway now knows the provider is out: this region has nothing left to try.
    eventually(lambda: post(mesh, api_key, ASK, "route").json()["infeasible"] is not None)
    explained = post(mesh, api_key, ASK, "route").json()
    assert explained["infeasible"]["code"] in ("provider_out", "drained")
    assert set(explained["infeasible"]["unavailable"]) == {GROQ, HUB}
    reasons = {e["backend_id"]: e["code"] for e in explained["excluded"]}
    assert reasons[GROQ] == "provider_out"
    assert reasons[HUB] == "drained"

    calls = len(mesh.simulator.deployments[GROQ].persona.seen)
    response = seen.keep(post(mesh, api_key, ASK))
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "backend_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert "in swedencentral is out" in error["message"]
    assert "provider rejected our credential" in error["message"]
    assert len(mesh.simulator.deployments[GROQ].persona.seen) == calls  # not asked again
    seen.assert_no_secret(mesh)


def test_a_region_whose_only_deployment_rests_after_a_429_gets_a_503_with_its_retry_after(
    mesh, api_key, groq, seen, client
):
    Deployment.objects.filter(slug=HUB).update(drained=True)
    from routing.gateway.app import application

    application.forget_world()
    until = time.time() + 30
    client.hset(livestate.COOLING, GROQ, f"{until:.3f}")
    livestate.announce_change(client, "cooling", [GROQ])
    eventually(lambda: post(mesh, api_key, ASK, "route").json()["infeasible"] is not None)
    explained = post(mesh, api_key, ASK, "route").json()
    reasons = {e["backend_id"]: e["code"] for e in explained["excluded"]}
    assert reasons[GROQ] == "cooling"

    response = seen.keep(post(mesh, api_key, ASK))
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "backend_unavailable"
    assert "resting after its provider's 429" in response.json()["error"]["message"]
    assert 1 <= int(response.headers["retry-after"]) <= 31
    seen.assert_no_secret(mesh)


def test_a_provider_that_does_not_know_our_model_id_is_failed_over_not_blamed_on_the_client(
    mesh, api_key, groq, seen
):
    Deployment.objects.filter(slug=GROQ).update(provider_model_id="llama-3.3-70b-typo")
    from routing.gateway.app import application

    application.forget_world()
    response = seen.keep(post(mesh, api_key, ASK))
    assert response.status_code == 200, response.text
    assert response.json()["tesseract"]["route"]["backend"] == HUB
    assert any(
        r.levelno == logging.ERROR and "provider_model_id" in r.getMessage()
        for r in seen.caplog.records
    )
    seen.assert_no_secret(mesh)


def test_a_providers_5xx_before_the_first_token_fails_over(mesh, api_key, groq, seen):
    mesh.fault(GROQ, fault="error", error_rate=1.0)
    response = seen.keep(post(mesh, api_key, ASK))
    assert response.status_code == 200, response.text
    assert response.json()["tesseract"]["route"]["backend"] == HUB
    assert response.json()["tesseract"]["attempts"] == 2
    seen.assert_no_secret(mesh)


def test_the_providers_own_first_token_timeout_sends_a_hung_request_elsewhere(
    mesh, api_key, groq, seen
):
    Provider.objects.filter(pk=groq.pk).update(first_token_timeout_s=0.5)
    from routing.gateway.app import application

    application.forget_world()
    mesh.fault(GROQ, fault="hang")
    started = time.monotonic()
    with mesh.stream(api_key, ASK) as response:
        assert response.status_code == 200
        text = "".join(response.iter_lines())
    waited = time.monotonic() - started
    assert f'"backend":"{HUB}"' in text.replace(" ", "")
    # the global first-token timeout is 15 s: the provider's 0.5 s was used (a busy
    # machine may add seconds, never ten)
    assert 0.5 <= waited < 10


def test_a_429_rests_the_deployment_for_its_retry_after_and_traffic_returns_after(
    mesh, api_key, groq, seen, client
):
    # A 3 s rest: long enough for the next plan to be asked for on a busy machine.
    mesh.fault(GROQ, fault="rate_limited", retry_after_s=3)
    asked = time.time()
    response = seen.keep(post(mesh, api_key, ASK))
    assert response.status_code == 200, response.text
    assert response.json()["tesseract"]["route"]["backend"] == HUB
    until = float(client.hget(livestate.COOLING, GROQ) or 0)
    assert asked < until <= time.time() + 3.5
    # the gateway that saw the 429 rests it at once; the others, on the announcement
    assert GROQ not in planned(mesh, api_key)
    assert client.hget(health.COUNTERS + GROQ, "fails") is None  # rate-limited, not ill
    mesh.fault(GROQ, fault="none")
    eventually(lambda: primary(mesh, api_key) == GROQ)
    assert time.time() >= until - 0.05  # not before the rest was over
    back = seen.keep(post(mesh, api_key, ASK))
    assert back.json()["tesseract"]["route"]["backend"] == GROQ
    seen.assert_no_secret(mesh)


def test_a_server_that_ignores_include_usage_is_metered_by_estimate(mesh, api_key, usage, seen):
    attach(mesh, [GROQ], ignores_include_usage=True)
    body = {**ASK, "stream_options": {"include_usage": True}}
    with mesh.stream(api_key, body) as response:
        assert response.status_code == 200
        text = "".join(response.iter_lines())
    assert "[DONE]" in text
    events: list = []

    def drained() -> bool:
        events[:] = usage()
        return bool(events)

    eventually(drained)
    assert events[-1].deployment == GROQ
    assert events[-1].usage_source == "estimated"
    assert events[-1].output_tokens == 4
    seen.assert_no_secret(mesh)


def test_a_providers_400_about_the_request_is_relayed_in_openais_shape(mesh, api_key, seen):
    attach(mesh, [GROQ], error_style="tgi")
    response = seen.keep(post(mesh, api_key, {**ASK, "temperature": -1}))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] == "'temperature' must be at least 0"
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_value"
    seen.assert_no_secret(mesh)


def test_the_health_check_asks_the_provider_with_our_key_and_notices_a_revoked_one(
    mesh, api_key, groq, seen, client
):
    states = health.check_all(client=client, timeout_s=30)
    assert states[GROQ] == "healthy"
    assert client.hget(livestate.REJECTED_PROVIDERS, "groq") is None
    mesh.fault(GROQ, persona={"auth_header": "authorization", "keys": ["gsk_new"],
                              "model_id": GROQ_ID})  # fmt: skip
    health.check_all(client=client, timeout_s=30)
    assert client.hget(livestate.REJECTED_PROVIDERS, "groq") is not None
    groq.refresh_from_db()
    assert groq.status == Provider.Status.MISCONFIGURED
    seen.assert_no_secret(mesh)
