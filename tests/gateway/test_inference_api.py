"""The inference API end to end: the official openai SDK against a live gateway and simulator."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from accounts.models import ApiKey

EIGHT_B = "llama-3.1-8b-instruct"
SEVENTY_B = "llama-3.3-70b-instruct"
LONG_ANSWER_IN_WESTEUROPE = {
    "model": EIGHT_B,
    "messages": [{"role": "user", "content": "a long answer"}],
    "max_tokens": 2000,
    "tesseract": {"regions": ["westeurope"]},
}


def client(mesh, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mesh.gateway_url}/v1", api_key=key, max_retries=0)


def test_the_openai_sdk_gets_a_completion_with_its_route_and_timing(mesh, api_key, usage):
    raw = client(mesh, api_key).chat.completions.with_raw_response.create(
        model=SEVENTY_B,
        messages=[{"role": "user", "content": "Where am I served?"}],
        max_tokens=8,
        extra_body={"tesseract": {"jurisdictions": ["EU"], "client_region": "francecentral"}},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.system_fingerprint == "tesseract-simulator"
    route = raw.headers["x-tesseract-route"]
    region = route.split("/")[0]
    assert mesh.spec.regions[region].eu_member
    assert "net;dur=" in raw.headers["server-timing"]
    assert "compute;dur=" in raw.headers["server-timing"]
    info = completion.model_extra["tesseract"]
    assert info["route"]["region"] == region
    assert info["trace_id"] == raw.headers["x-tesseract-trace-id"]

    [event] = usage()
    assert event.request_id == info["request_id"]
    assert (event.input_tokens, event.output_tokens) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert event.usage_source == "upstream"
    assert event.region == region
    assert "EU" in event.backend_policy["jurisdictions"]
    assert event.cost_usd > 0


def test_a_streamed_completion_ends_with_the_route_and_usage(mesh, api_key, usage):
    stream = client(mesh, api_key).chat.completions.create(
        model=EIGHT_B,
        messages=[{"role": "user", "content": "Stream please."}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Tesseract-Max-Ttft-Ms": "2000"},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 12
    final = chunks[-1]
    assert final.choices == []
    assert final.usage.completion_tokens == 12
    assert final.model_extra["tesseract"]["route"]["model"] == EIGHT_B
    [event] = usage()
    assert event.stream is True
    assert event.output_tokens == 12


def test_a_stream_without_include_usage_gets_no_usage_chunk_but_is_still_metered(
    mesh, api_key, usage
):
    chunks = list(
        client(mesh, api_key).chat.completions.create(
            model=EIGHT_B, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    [event] = usage()
    assert event.output_tokens == 5


def test_n_choices_come_back_whole_and_streamed_and_every_token_is_billed(mesh, api_key, usage):
    sdk = client(mesh, api_key)
    ask = {"model": EIGHT_B, "messages": [{"role": "user", "content": "two"}], "max_tokens": 5}
    whole = sdk.chat.completions.create(**ask, n=2)
    assert [c.index for c in whole.choices] == [0, 1]
    assert whole.usage.completion_tokens == 10
    chunks = list(sdk.chat.completions.create(**ask, n=3, stream=True))  # no usage asked
    texts = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices and
                     c.choices[0].index == i) for i in range(3)]  # fmt: skip
    assert all(len(text.split()) == 5 for text in texts)
    assert texts[:2] == [c.message.content for c in whole.choices]

    first, second = sorted(usage(), key=lambda e: e.created_at)
    assert (first.output_tokens, first.usage_source) == (10, "upstream")
    assert (second.output_tokens, second.usage_source) == (15, "upstream")
    assert first.cost_usd > 0
    assert second.cost_usd > 0


def test_the_completions_endpoint_works_too(mesh, api_key, usage):
    completion = client(mesh, api_key).completions.create(
        model=EIGHT_B, prompt="Once upon a time", max_tokens=4
    )
    assert completion.choices[0].text
    assert len(usage()) == 1


def test_a_prompt_of_token_ids_is_served_and_metered_by_the_backends_count(mesh, api_key, usage):
    completion = client(mesh, api_key).completions.create(
        model=EIGHT_B, prompt=[791, 4062, 14198] * 100, max_tokens=4
    )
    assert completion.usage.prompt_tokens == 300
    (event,) = usage()
    assert event.input_tokens == 300


def test_a_request_the_backend_refuses_as_malformed_is_relayed_and_metered_as_rejected(
    mesh, api_key, usage
):
    with pytest.raises(openai.BadRequestError) as caught:  # past the model's context
        client(mesh, api_key).chat.completions.create(
            model=EIGHT_B, messages=[{"role": "user", "content": "hi"}], max_tokens=900_000
        )
    assert caught.value.code == "context_length_exceeded"
    (event,) = usage()
    assert event.status == "rejected"  # the client's error, not a failure of ours
    assert event.get_status_display() == "Refused as malformed"
    assert (event.input_tokens, event.output_tokens, event.charge_usd) == (0, 0, 0)


def test_models_lists_what_the_key_may_use_and_where(mesh, api_key):
    models = {m.id: m for m in client(mesh, api_key).models.list()}
    assert set(models) == {EIGHT_B, SEVENTY_B, "llama-3.1-405b-instruct"}
    assert "westeurope" in models[SEVENTY_B].model_extra["tesseract"]["regions"]


def test_the_sdk_retrieves_one_model_and_an_unknown_one_is_model_not_found(mesh, api_key):
    sdk = client(mesh, api_key)
    model = sdk.models.retrieve(SEVENTY_B)
    listed = next(m for m in sdk.models.list() if m.id == SEVENTY_B)
    assert model.model_dump() == listed.model_dump()
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.models.retrieve("gpt-4o")
    assert caught.value.code == "model_not_found"
    assert "'gpt-4o'" in caught.value.message


def test_models_honour_the_keys_default_regions(mesh, api_key):
    ApiKey.objects.update(default_regions=["uksouth"])
    from routing.gateway.app import application

    application.auth.cache.clear()
    models = {m.id: m for m in client(mesh, api_key).models.list()}
    assert "llama-3.1-405b-instruct" not in models
    assert models[EIGHT_B].model_extra["tesseract"]["regions"] == ["uksouth"]


def test_the_dry_run_explains_every_candidate(mesh, api_key, usage):
    response = httpx.post(
        f"{mesh.gateway_url}/v1/route",
        headers={"Authorization": f"Bearer {api_key}"},
        json={
            "model": SEVENTY_B,
            "input_tokens": 1000,
            "max_tokens": 50,
            "tesseract": {"compliance": ["hipaa"], "client_region": "eastus"},
        },
    )
    assert response.status_code == 200
    plan = response.json()
    assert plan["status"] == "ok"
    hipaa = {
        slug
        for slug, d in mesh.spec.deployments.items()
        if d.model == SEVENTY_B and "hipaa" in mesh.spec.clusters[d.cluster].certifications
    }
    chosen = [plan["primary"], *plan["fallbacks"]]
    assert {c["backend_id"] for c in chosen} <= hipaa
    excluded = {e["backend_id"]: e["code"] for e in plan["excluded"]}
    assert set(excluded) == set(mesh.deployments(SEVENTY_B)) - hipaa - {
        c["backend_id"] for c in chosen
    }
    assert all(excluded[d] == "compliance" for d in mesh.deployments(SEVENTY_B, eu=True))
    assert usage() == []  # a dry run is not billed


def test_failover_moves_to_the_next_backend_before_the_first_token(mesh, api_key, usage):
    body = {"model": EIGHT_B, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    headers = {"Authorization": f"Bearer {api_key}"}
    plan = httpx.post(f"{mesh.gateway_url}/v1/route", headers=headers, json=body).json()
    primary = plan["primary"]["backend_id"]
    mesh.fault(primary, fault="error")

    response = httpx.post(f"{mesh.gateway_url}/v1/chat/completions", headers=headers, json=body)
    assert response.status_code == 200
    info = response.json()["tesseract"]
    assert info["attempts"] == 2
    assert info["route"]["backend"] == plan["fallbacks"][0]["backend_id"]
    [event] = usage()
    assert event.attempts == 2
    assert event.deployment == info["route"]["backend"]
    assert event.tried_backends == [primary, event.deployment]


def test_an_eu_only_request_fails_closed_when_every_eu_backend_fails(mesh, api_key, usage):
    for slug in mesh.deployments(EIGHT_B, eu=True):
        mesh.fault(slug, fault="error")
    response = httpx.post(
        f"{mesh.gateway_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {api_key}"},
        json={
            "model": EIGHT_B,
            "messages": [{"role": "user", "content": "stay in the EU"}],
            "tesseract": {"jurisdictions": ["EU"]},
        },
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "backend_unavailable"
    [event] = usage()
    assert event.status == "error"
    assert event.input_tokens == event.output_tokens == 0
    assert mesh.spec.regions[event.region].eu_member  # the last one tried was in the EU too


def test_a_backend_failing_midway_ends_the_stream_with_an_error_event(mesh, api_key, usage):
    for slug in mesh.deployments(EIGHT_B):
        mesh.fault(slug, error_after_tokens=3)
    body = {"model": EIGHT_B, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    with mesh.stream(api_key, body) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    assert error["error"]["code"] == "backend_stream_error"
    texts = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-2]]
    assert len([t for t in texts if t]) == 3  # the three tokens that did arrive
    [event] = usage()
    assert event.status == "error"
    assert event.output_tokens == 3  # what was served is billed, estimated from the chunks
    assert event.usage_source == "estimated"


def test_each_request_is_metered_exactly_once(mesh, api_key, usage):
    sdk = client(mesh, api_key)
    ids = set()
    for i in range(5):
        c = sdk.chat.completions.create(
            model=EIGHT_B, messages=[{"role": "user", "content": f"n{i}"}], max_tokens=2
        )
        ids.add(c.model_extra["tesseract"]["request_id"])
    events = usage()
    assert {e.request_id for e in events} == ids
    assert len(events) == 5
    assert usage() == events  # draining again adds nothing


def test_a_client_that_hangs_up_cancels_the_backend_call_and_is_billed_for_what_it_got(
    mesh, api_key, usage
):
    backend = mesh.slowed(EIGHT_B, "westeurope")
    with mesh.stream(api_key, LONG_ANSWER_IN_WESTEUROPE) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if '"content":"' in line.replace(" ", ""))
        assert backend.slots.running == 1  # a token has arrived; the backend is generating
    mesh.wait_until_idle(backend)
    [event] = usage()
    assert event.status == "cancelled"
    assert 0 < event.output_tokens < 2000
