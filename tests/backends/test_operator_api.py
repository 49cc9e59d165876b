"""The operator API for providers: staff with 2FA only; the credential goes in, never out."""

from __future__ import annotations

import json

import pytest

from accounts.models import User
from backends import providers, sealing
from backends.models import Provider
from backends.presets import PRESETS
from tests.conftest import login, staff_login

SECRET = "csk-live-9f8e7d6c5b4a3210QRST"
URL = "/api/v1/operator/providers"


@pytest.fixture(autouse=True)
def keys(settings):
    settings.TESSERACT_SEALING_KEYS = sealing.generate_key()


@pytest.fixture
def oscar(db):
    return staff_login("oscar@example.com")


def post(client, url: str, body: dict, method: str = "post"):
    return getattr(client, method)(url, json.dumps(body), content_type="application/json")


def test_an_operator_adds_a_provider_from_a_preset_and_the_key_never_comes_back(oscar):
    created = post(oscar, URL, {"slug": "cerebras", "name": "Cerebras", "preset": "cerebras",
                                "credential": SECRET})  # fmt: skip
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["base_url"] == PRESETS["cerebras"].base_url
    assert body["auth_style"] == "bearer"
    assert body["credential_hint"] == "…QRST"
    listed = oscar.get(URL)
    one = oscar.get(f"{URL}/cerebras")
    for response in (created, listed, one):
        assert SECRET not in response.content.decode()
        assert "credential_sealed" not in response.content.decode()
    provider = Provider.objects.get(slug="cerebras")
    assert providers.credential_reveal(provider).reveal() == SECRET


def test_a_self_hosted_server_from_its_preset_is_scraped_and_a_hosted_api_is_not(oscar):
    vllm = post(oscar, URL, {"slug": "vllm-here", "name": "vLLM", "preset": "vllm",
                             "credential": SECRET})  # fmt: skip
    groq = post(oscar, URL, {"slug": "groq", "name": "Groq", "preset": "groq",
                             "credential": SECRET})  # fmt: skip
    by_hand = post(oscar, URL, {"slug": "ours", "name": "Ours", "base_url": "http://10.0.0.7/v1",
                                "auth_style": "none", "exposes_metrics": True})  # fmt: skip
    assert (vllm.status_code, groq.status_code, by_hand.status_code) == (201, 201, 201)
    assert vllm.json()["exposes_metrics"] is True
    assert groq.json()["exposes_metrics"] is False
    assert by_hand.json()["exposes_metrics"] is True
    presets = oscar.get("/api/v1/operator/presets").json()
    scraped = {p["key"] for p in presets if p["exposes_metrics"]}
    assert scraped == {"vllm", "sglang", "tgi", "llamacpp"}


def test_a_new_credential_puts_a_misconfigured_provider_back(oscar):
    post(oscar, URL, {"slug": "groq", "name": "Groq", "preset": "groq", "credential": SECRET})
    Provider.objects.filter(slug="groq").update(status=Provider.Status.MISCONFIGURED)
    changed = post(oscar, f"{URL}/groq", {"credential": SECRET + "9"}, method="patch")
    assert changed.status_code == 200, changed.content
    assert changed.json()["status"] == "active"
    assert changed.json()["credential_hint"] == "…RST9"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"slug": "x", "name": "X", "auth_style": "bearer"}, "base_url"),
        ({"slug": "x", "name": "X", "base_url": "https://x.example/v1", "auth_style": "header"},
         "auth_header"),
        ({"slug": "x", "name": "X", "preset": "groq", "credential": "a\nb"}, "credential"),
        ({"slug": "x", "name": "X", "preset": "nope"}, "preset"),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_400_and_stores_nothing(oscar, body, param):
    response = post(oscar, URL, body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert not Provider.objects.exists()


def test_people_who_are_not_verified_staff_are_refused(db, alice, oscar):
    assert login(alice).get(URL).status_code == 403
    assert post(login(alice), URL, {"slug": "x", "name": "X", "preset": "groq"}).status_code == 403
    staff_without_2fa = login(User.objects.create_superuser("sam@example.com"))
    sent_to_2fa = post(staff_without_2fa, URL, {"slug": "x", "name": "X", "preset": "groq"})
    assert sent_to_2fa.status_code == 302
    assert sent_to_2fa["Location"].startswith("/account/2fa/setup/")
    assert not Provider.objects.exists()


def test_an_unknown_provider_is_a_404(oscar):
    assert oscar.get(f"{URL}/nope").status_code == 404


def test_presets_list_model_ids_and_prices_with_their_source(oscar):
    presets = {p["key"]: p for p in oscar.get("/api/v1/operator/presets").json()}
    groq = presets["groq"]
    assert groq["models"]["llama-3.3-70b-instruct"] == "llama-3.3-70b-versatile"
    price = groq["prices"]["llama-3.3-70b-instruct"]
    assert (price["input_per_mtok"], price["output_per_mtok"]) == ("0.59", "0.79")
    assert "groq/llama-3.3-70b-versatile" in price["source"]
    speed = groq["speeds"]["llama-3.3-70b-instruct"]
    assert speed["ttft_ms"] > 0
    assert speed["decode_tokens_per_s"] > 100  # an LPU
    assert "hw_provider_profiles.csv groq / Llama-3.1-70B-Instruct" in speed["source"]
    assert presets["deepinfra"]["speeds"] == {}  # no row: nothing is invented
    assert presets["vllm"]["prices"] == {}
    assert set(presets) >= {"cerebras", "sambanova", "together", "fireworks", "deepinfra",
                            "openai", "vllm", "sglang", "tgi", "llamacpp", "ollama"}  # fmt: skip


def test_the_operator_endpoints_are_in_the_openapi_schema(oscar):
    schema = oscar.get("/api/schema/?format=json").json()
    assert "/api/v1/operator/providers" in schema["paths"]
    assert "/api/v1/operator/providers/{slug}" in schema["paths"]
    provider = schema["components"]["schemas"]["Provider"]["properties"]
    assert provider["credential"]["writeOnly"] is True
