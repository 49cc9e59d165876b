"""Bad input gets a clear OpenAI-style error with the right status, and changes nothing."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from accounts import services
from accounts.models import ApiKey
from backends.models import Cluster, Region
from routing.gateway.parse import MAX_BODY_BYTES

EIGHT_B = "llama-3.1-8b-instruct"
CHAT = {"model": EIGHT_B, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def post(mesh, key: str | None, body: object = None, *, content: bytes | None = None, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(
        f"{mesh.gateway_url}/v1/chat/completions",
        headers={**headers, **kw.pop("headers", {})},
        json=body if content is None else None,
        content=content,
        timeout=10,
    )


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["message"]
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-tesseract-trace-id"])
    return error


@pytest.mark.parametrize(
    ("content", "code", "param"),
    [
        (b'{"model": "llama-3.1-8b-instruct", "messages": [', "invalid_json", None),
        (b"[1, 2, 3]", "invalid_json", None),
        (b'{"model": 8, "messages": []}', "invalid_value", "model"),
        (
            b'{"model": "llama-3.1-8b-instruct", "messages": [{"role": "user"}], '
            b'"max_tokens": "ten"}',
            "invalid_value",
            "max_tokens",
        ),
        (
            b'{"model": "llama-3.1-8b-instruct", "messages": [{"role": "user"}], '
            b'"tesseract": {"priority": 9}}',
            "invalid_value",
            "tesseract.priority",
        ),
    ],
    ids=["truncated JSON", "not an object", "model not a string", "max_tokens a string",
         "priority out of range"],
)  # fmt: skip
def test_a_malformed_body_is_a_400_that_names_the_field(mesh, api_key, usage, content, code, param):
    error = assert_openai_error(post(mesh, api_key, content=content), 400, code)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert usage() == []


def test_a_bad_header_requirement_is_a_400(mesh, api_key, usage):
    response = post(mesh, api_key, CHAT, headers={"X-Tesseract-Max-Ttft-Ms": "soon"})
    error = assert_openai_error(response, 400, "invalid_value")
    assert error["param"] == "X-Tesseract-Max-Ttft-Ms"
    assert "'soon'" in error["message"]
    assert usage() == []


def test_an_oversized_body_is_a_413(mesh, api_key, usage):
    huge = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * MAX_BODY_BYTES
    assert_openai_error(post(mesh, api_key, content=huge + b'"}]}'), 413, "request_too_large")
    assert usage() == []


def test_an_unknown_model_is_a_404(mesh, api_key, usage):
    error = assert_openai_error(post(mesh, api_key, {**CHAT, "model": "gpt-9"}), 404,
                                "model_not_found")  # fmt: skip
    assert error["param"] == "model"
    assert "gpt-9" in error["message"]
    assert usage() == []


@pytest.mark.parametrize(
    ("key", "code"),
    [
        (None, "missing_api_key"),
        ("tsk_notakey", "invalid_api_key"),
        ("sk-openai-style", "invalid_api_key"),
        ("tsk_" + "A" * 8 + "_" + "b" * 40, "invalid_api_key"),
    ],
    ids=["missing", "malformed", "foreign", "unknown"],
)
def test_a_missing_or_wrong_key_is_a_401(mesh, api_key, usage, key, code):
    error = assert_openai_error(post(mesh, key, CHAT), 401, code)
    assert error["type"] == "invalid_request_error"
    assert usage() == []


@pytest.mark.parametrize("key", ["tsk_notakey", "tsk_" + "A" * 40, "sk-openai-style"])
def test_a_malformed_key_is_told_what_a_key_looks_like(mesh, api_key, usage, key):
    error = assert_openai_error(post(mesh, key, CHAT), 401, "invalid_api_key")
    assert error["message"] == (
        "The API key is malformed: a Tesseract key is tsk_ followed by 40 lowercase "
        "letters and digits."
    )


def test_a_revoked_key_stops_working_at_once(mesh, api_key, usage):
    assert post(mesh, api_key, CHAT).status_code == 200  # cached in the gateway now
    services.api_key_revoke(api_key=ApiKey.objects.get())
    error = assert_openai_error(post(mesh, api_key, CHAT), 401, "invalid_api_key")
    assert "revoked" in error["message"]
    assert len(usage()) == 1  # only the request made before the revocation


def test_a_key_without_the_inference_scope_is_a_403(mesh, alice, usage):
    org = services.organization_create(name="Readers", owner=alice)
    reader = services.api_key_create(org=org, name="read only", scopes=["read"]).plaintext
    assert_openai_error(post(mesh, reader, CHAT), 403, "insufficient_scope")
    assert usage() == []


def test_an_sla_no_backend_can_meet_is_a_422_with_the_best_achievable(mesh, api_key, usage):
    response = post(mesh, api_key, {**CHAT, "tesseract": {"max_ttft_ms": 1}})
    error = assert_openai_error(response, 422, "sla_unsatisfiable")
    assert "best achievable is" in error["message"]
    assert "ms to first token" in error["message"]
    assert usage() == []


def test_a_policy_nothing_satisfies_is_a_422(mesh, api_key, usage):
    body = {**CHAT, "tesseract": {"compliance": ["hipaa"], "jurisdictions": ["EU"]}}
    assert_openai_error(post(mesh, api_key, body), 422, "policy_unsatisfiable")
    assert usage() == []


@pytest.mark.parametrize(
    ("tesseract", "param", "named", "suggested"),
    [
        ({"regions": ["westeurop"]}, "tesseract.regions", "westeurop", "westeurope"),
        ({"regions": ["westeurope", "mars-1"]}, "tesseract.regions", "mars-1", None),
        ({"client_region": "FranceCentrl"}, "tesseract.client_region", "francecentrl",
         "francecentral"),
    ],
    ids=["a typo", "one unknown beside a known one", "an unknown client region"],
)  # fmt: skip
def test_a_region_no_one_has_heard_of_is_a_400_that_names_it_not_a_policy_422(
    mesh, api_key, usage, tesseract, param, named, suggested
):
    response = post(mesh, api_key, {**CHAT, "tesseract": tesseract})
    error = assert_openai_error(response, 400, "unknown_region")
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert repr(named) in error["message"]
    if suggested is not None:
        assert f"did you mean {suggested!r}?" in error["message"]
    assert "GET /v1/models" in error["message"]
    assert usage() == []

    explained = httpx.post(
        f"{mesh.gateway_url}/v1/route",
        headers={"Authorization": f"Bearer {api_key}"},
        json={**CHAT, "tesseract": tesseract},
        timeout=10,
    )
    assert_openai_error(explained, 400, "unknown_region")


def test_a_known_region_that_serves_nothing_of_the_model_is_still_a_policy_422(
    mesh, api_key, usage
):
    serving = set(
        Region.objects.filter(clusters__deployments__model__slug=EIGHT_B).values_list(
            "slug", flat=True
        )
    )
    idle = Region.objects.exclude(slug__in=serving).values_list("slug", flat=True).first()
    assert idle is not None
    response = post(mesh, api_key, {**CHAT, "tesseract": {"regions": [idle]}})
    assert_openai_error(response, 422, "policy_unsatisfiable")
    assert usage() == []


def test_no_backend_left_to_route_to_is_a_503(mesh, api_key, usage):
    Cluster.objects.filter(deployments__model__slug=EIGHT_B).update(drained=True)
    from routing.gateway.app import application

    application.forget_world()
    response = post(mesh, api_key, CHAT)
    error = assert_openai_error(response, 503, "backend_unavailable")
    assert error["type"] == "server_error"
    assert response.headers["retry-after"] == "30"  # a drain waits for an operator
    assert usage() == []


def test_a_region_whose_only_backends_are_drained_is_a_503_with_retry_after_not_a_422(
    mesh, api_key, usage
):
    Region.objects.filter(slug="northeurope").update(drained=True)
    from routing.gateway.app import application

    application.forget_world()
    only_there = {**CHAT, "tesseract": {"regions": ["northeurope"]}}
    response = post(mesh, api_key, only_there)
    error = assert_openai_error(response, 503, "backend_unavailable")
    assert int(response.headers["retry-after"]) >= 1
    assert "every backend of llama-3.1-8b-instruct in northeurope is out" in error["message"]
    assert "drained by an operator" in error["message"]
    assert error["tesseract"]["code"] == "drained"
    assert error["tesseract"]["unavailable"] == [
        "northeurope-tesseract-nvidia-h100--llama-3.1-8b-instruct"
    ]
    assert usage() == []

    explained = httpx.post(
        f"{mesh.gateway_url}/v1/route",
        headers={"Authorization": f"Bearer {api_key}"},
        json=only_there,
        timeout=10,
    ).json()
    assert explained["status"] == "infeasible"
    assert explained["infeasible"]["code"] == "drained"
    assert "in northeurope is out" in explained["infeasible"]["detail"]


def test_a_policy_nobody_meets_is_a_422_even_while_every_backend_is_drained(mesh, api_key, usage):
    Cluster.objects.filter(deployments__model__slug=EIGHT_B).update(drained=True)
    from routing.gateway.app import application

    application.forget_world()
    body = {**CHAT, "tesseract": {"compliance": ["hipaa"], "jurisdictions": ["EU"]}}
    response = post(mesh, api_key, body)
    assert_openai_error(response, 422, "policy_unsatisfiable")
    assert "retry-after" not in response.headers
    assert usage() == []


def test_a_compliance_tag_tesseract_has_no_word_for_is_a_400_that_lists_its_own(
    mesh, api_key, usage
):
    body = {**CHAT, "tesseract": {"compliance": ["gdpr", "fedramp-high"]}}
    error = assert_openai_error(post(mesh, api_key, body), 400, "invalid_value")
    assert error["param"] == "tesseract.compliance"
    assert "'fedramp-high'" in error["message"]
    assert "gdpr, hipaa, iso27001, soc2" in error["message"]
    assert usage() == []


def test_unknown_paths_and_wrong_methods_get_json_errors(mesh, api_key):
    headers = {"Authorization": f"Bearer {api_key}"}
    assert_openai_error(httpx.get(f"{mesh.gateway_url}/v1/embeddingz", headers=headers), 404,
                        "unknown_url")  # fmt: skip
    assert_openai_error(httpx.get(f"{mesh.gateway_url}/v1/chat/completions", headers=headers),
                        400, "method_not_allowed")  # fmt: skip


def test_the_openai_sdk_raises_its_own_exception_classes(mesh, api_key):
    sdk = openai.OpenAI(base_url=f"{mesh.gateway_url}/v1", api_key=api_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.chat.completions.create(
            model=EIGHT_B,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"tesseract": {"max_ttft_ms": 1}},
        )
    bad = openai.OpenAI(base_url=f"{mesh.gateway_url}/v1", api_key="tsk_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_an_error_keeps_the_callers_trace(mesh, api_key):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = post(
        mesh, api_key, {**CHAT, "model": "gpt-9"},
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )  # fmt: skip
    assert response.status_code == 404
    assert response.headers["x-tesseract-trace-id"] == trace_id
