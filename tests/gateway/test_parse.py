"""Reading requests: OpenAI bodies, Tesseract's requirements, and key defaults."""

from __future__ import annotations

import msgspec
import pytest

from accounts.keycache import ResolvedKey
from routing.errors import InvalidRequest, PayloadTooLarge
from routing.gateway.parse import MAX_BODY_BYTES, MAX_JSON_DEPTH, MODEL_MAX_LENGTH, parse


def key(**defaults) -> ResolvedKey:
    fields = {
        "id": 1,
        "org_id": 1,
        "org_slug": "acme",
        "lookup": "abcdefgh",
        "digest": "x",
        "scopes": frozenset({"inference", "route", "read"}),
        "expires_at": None,
        "revoked": False,
        "default_regions": (),
        "default_compliance": (),
        "default_max_latency_ms": None,
        "default_max_ttft_ms": None,
    }
    return ResolvedKey(**{**fields, **defaults})


def body(**extra) -> bytes:
    return msgspec.json.encode(
        {
            "model": "llama-3.1-8b-instruct",
            "messages": [{"role": "user", "content": "hi " * 40}],
            **extra,
        }
    )


def _estimate(content) -> int:
    raw = msgspec.json.encode(
        {"model": "llama-3.1-8b-instruct", "messages": [{"role": "user", "content": content}]}
    )
    return parse("chat.completions", raw, [], key()).route.input_tokens


def test_text_outside_ascii_is_estimated_denser_than_four_characters_a_token():
    # What budgets reserve and limits count: a CJK prompt is not a quarter of its length.
    assert _estimate("hi " * 40) == 120 // 4 + 4
    assert _estimate("\u4f60\u597d" * 200) == 400 + 4  # 400 CJK characters: a token each
    assert _estimate("\u043f\u0440\u0438\u0432\u0435\u0442 " * 50) == (350 + 3 * 300 // 2) // 4 + 4
    assert _estimate([{"type": "text", "text": "\u4f60\u597d" * 10}]) == 20 + 4


def test_a_plain_openai_body_routes_with_no_constraints():
    parsed = parse("chat.completions", body(max_tokens=50), [], key())
    r = parsed.route
    assert r.model == "llama-3.1-8b-instruct"
    assert r.max_output_tokens == 50
    assert r.max_ttft_ms is None
    assert r.allowed_regions is None
    assert r.compliance == frozenset()
    assert r.input_tokens == 120 // 4 + 4
    assert "tesseract" not in parsed.body


def test_requirements_ride_in_the_tesseract_object():
    parsed = parse(
        "chat.completions",
        body(
            tesseract={
                "max_ttft_ms": 50,
                "compliance": ["HIPAA"],
                "jurisdictions": ["eu"],
                "priority": 5,
                "client_region": "FranceCentral",
                "fallback_models": ["llama-3.1-8b-instruct"],
            }
        ),
        [],
        key(),
    )
    r = parsed.route
    assert r.max_ttft_ms == 50
    assert r.compliance == frozenset({"hipaa"})
    assert r.allowed_jurisdictions == frozenset({"EU"})
    assert r.priority == 5
    assert r.client_region == "francecentral"
    assert r.fallback_models == ("llama-3.1-8b-instruct",)
    assert "tesseract" not in parsed.body  # never sent upstream


def test_requirements_can_ride_in_headers_and_the_body_wins():
    headers = [
        (b"x-tesseract-max-ttft-ms", b"200"),
        (b"x-tesseract-regions", b"westeurope, francecentral"),
        (b"X-Tesseract-Prefer-Cost-Over-Latency", b"true"),
    ]
    parsed = parse("chat.completions", body(tesseract={"max_ttft_ms": 80}), headers, key())
    assert parsed.route.max_ttft_ms == 80
    assert parsed.route.allowed_regions == frozenset({"westeurope", "francecentral"})
    assert parsed.route.prefer_cost_over_latency is True


@pytest.mark.parametrize(
    ("tesseract", "param", "shown"),
    [
        ({"countries": ["DE", "Germany"]}, "tesseract.countries", "'Germany'"),
        ({"countries": ["D"]}, "tesseract.countries", "'D'"),
        ({"jurisdictions": ["EU", "MARS"]}, "tesseract.jurisdictions", "'MARS'"),
        ({"jurisdictions": ["E1"]}, "tesseract.jurisdictions", "'E1'"),
    ],
)
def test_countries_and_jurisdictions_must_be_codes_and_the_error_shows_the_bad_one(
    tesseract, param, shown
):
    with pytest.raises(InvalidRequest) as exc:
        parse("chat.completions", body(tesseract=tesseract), [], key())
    assert exc.value.param == param
    assert exc.value.code == "invalid_value"
    assert shown in exc.value.message


def test_country_and_jurisdiction_codes_are_taken_in_any_case():
    r = parse(
        "chat.completions",
        body(tesseract={"countries": ["de", "Fr"], "jurisdictions": ["eea", "us"]}),
        [(b"x-tesseract-regions", b"westeurope")],
        key(),
    ).route
    assert r.allowed_countries == frozenset({"DE", "FR"})
    assert r.allowed_jurisdictions == frozenset({"EEA", "US"})


def test_only_the_regions_a_request_names_are_held_to_the_catalog_not_its_keys_defaults():
    k = key(default_regions=("westeurope", "a-region-since-removed"))
    assert parse("chat.completions", body(), [], k).named_regions == frozenset()
    named = parse(
        "chat.completions",
        body(tesseract={"regions": ["WestEurope"], "client_region": "FranceCentral"}),
        [],
        k,
    ).named_regions
    assert named == frozenset({"westeurope", "francecentral"})


def test_key_defaults_apply_only_where_the_request_is_silent():
    k = key(default_regions=("westeurope",), default_compliance=("gdpr",), default_max_ttft_ms=300)
    silent = parse("chat.completions", body(), [], k).route
    assert silent.allowed_regions == frozenset({"westeurope"})
    assert silent.compliance == frozenset({"gdpr"})
    assert silent.max_ttft_ms == 300
    spoken = parse(
        "chat.completions", body(tesseract={"regions": ["eastus"], "max_ttft_ms": 90}), [], k
    ).route
    assert spoken.allowed_regions == frozenset({"eastus"})
    assert spoken.max_ttft_ms == 90


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}',
            "max_tokens",
        ),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', None),
        (
            b'{"model": "m", "messages": [{"role": "user"}], "tesseract": {"priority": 9}}',
            "tesseract.priority",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user"}], "tesseract": {"speed": "max"}}',
            "tesseract",
        ),
        (b'{"model": "m", "messages": [{"role": "user"}], "stream": "yes"}', "stream"),
    ],
)
def test_a_wrong_field_is_named_in_the_error(raw, param):
    with pytest.raises(InvalidRequest) as exc:
        parse("chat.completions", raw, [], key())
    assert exc.value.http_status == 400
    if param:
        assert exc.value.param == param


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b'"text"'])
def test_malformed_json_is_a_clear_400(raw):
    with pytest.raises(InvalidRequest) as exc:
        parse("chat.completions", raw, [], key())
    assert exc.value.code == "invalid_json"


def test_an_oversized_body_is_413():
    with pytest.raises(PayloadTooLarge) as exc:
        parse("chat.completions", b" " * (MAX_BODY_BYTES + 1), [], key())
    assert exc.value.http_status == 413


def test_an_unknown_tesseract_header_is_refused():
    with pytest.raises(InvalidRequest) as exc:
        parse("chat.completions", body(), [(b"x-tesseract-font-colour", b"blue")], key())
    assert exc.value.code == "unknown_parameter"
    assert exc.value.param == "X-Tesseract-Font-Colour"  # named as the other headers are
    assert str(exc.value) == "Unknown header X-Tesseract-Font-Colour."


def test_coordinates_come_in_pairs():
    with pytest.raises(InvalidRequest):
        parse("chat.completions", body(tesseract={"client_lat": 48.8}), [], key())


def test_the_route_dry_run_accepts_a_token_count_instead_of_a_prompt():
    raw = msgspec.json.encode(
        {"model": "llama-3.3-70b-instruct", "input_tokens": 2000, "max_tokens": 10}
    )
    assert parse("route", raw, [], key()).route.input_tokens == 2000


def _completion(prompt) -> bytes:
    return msgspec.json.encode({"model": "llama-3.1-8b-instruct", "prompt": prompt})


def test_a_prompt_of_token_ids_counts_its_tokens_exactly_as_openai_takes_it():
    assert parse("completions", _completion([1, 2, 3] * 100), [], key()).route.input_tokens == 300
    batch = _completion([[5] * 40, [6] * 60])  # a batch of two prompts: both are prefilled
    assert parse("completions", batch, [], key()).route.input_tokens == 100
    text = parse("completions", _completion("hi " * 40), [], key()).route.input_tokens
    assert text == 120 // 4


@pytest.mark.parametrize(
    "prompt", [["a", 1], [[1], 2], [-1, 2], [[1, "a"]], [True], [1.5], [[]], []]
)
def test_a_prompt_mixing_shapes_or_with_a_negative_token_is_refused(prompt):
    with pytest.raises(InvalidRequest) as exc:
        parse("completions", _completion(prompt), [], key())
    assert exc.value.param == "prompt"


@pytest.mark.parametrize(
    ("extra", "completions"),
    [
        ({}, 1),
        ({"n": 3}, 3),
        ({"prompt": ["a", "b", "c"], "n": 2}, 6),
        ({"prompt": [[1], [2]], "best_of": 5, "n": 2}, 10),
        ({"prompt": [1, 2, 3], "best_of": 4}, 4),
    ],
)
def test_limits_reserve_output_for_every_completion_a_request_may_generate(extra, completions):
    raw = msgspec.json.encode({"model": "llama-3.1-8b-instruct", "prompt": "hi", **extra})
    assert parse("completions", raw, [], key()).completions == completions


@pytest.mark.parametrize(
    "extra", [{"n": 0}, {"n": 129}, {"best_of": 21}, {"prompt": [2**31]}, {"n": "2"}]
)
def test_n_best_of_and_token_ids_are_held_to_openais_bounds(extra):
    raw = msgspec.json.encode({"model": "llama-3.1-8b-instruct", "prompt": "hi", **extra})
    with pytest.raises(InvalidRequest) as exc:
        parse("completions", raw, [], key())
    assert exc.value.param == next(iter(extra))


# -- what reaches the usage row must fit it ------------------------------------------------


def test_the_model_is_held_to_the_usage_columns_length():
    assert parse("chat.completions", body(model="m" * MODEL_MAX_LENGTH), [], key()).model
    with pytest.raises(InvalidRequest) as exc:
        parse("chat.completions", body(model="m" * (MODEL_MAX_LENGTH + 1)), [], key())
    assert exc.value.param == "model"
    with pytest.raises(InvalidRequest) as exc:
        parse("chat.completions", body(tesseract={"fallback_models": ["m" * 81]}), [], key())
    assert exc.value.param == "tesseract.fallback_models"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"model": "llama\x00"}, "model"),
        ({"tesseract": {"compliance": ["gdpr", "\x00"]}}, "tesseract.compliance"),
        ({"tesseract": {"regions": ["west\x00europe"]}}, "tesseract.regions"),
        ({"tesseract": {"session_id": "chat-\x00"}}, "tesseract.session_id"),
        ({"tesseract": {"client_region": "\x00"}}, "tesseract.client_region"),
        ({"tesseract": {"fallback_models": ["x\x00"]}}, "tesseract.fallback_models"),
    ],
)
def test_a_nul_in_any_stored_string_is_refused_by_name(extra, param):
    with pytest.raises(InvalidRequest) as exc:
        parse("chat.completions", body(**extra), [], key())
    assert exc.value.param == param
    assert "NUL" in exc.value.message


def test_a_nul_in_a_header_value_is_refused_too():
    with pytest.raises(InvalidRequest) as exc:
        parse("chat.completions", body(), [(b"x-tesseract-session-id", b"a\x00b")], key())
    assert exc.value.param == "X-Tesseract-Session-Id"


def test_a_nul_in_the_prompt_is_not_stored_and_goes_upstream():
    parsed = parse("chat.completions", body(messages=[{"role": "user", "content": "a\x00"}]),
                   [], key())  # fmt: skip
    assert parsed.body["messages"][0]["content"] == "a\x00"


@pytest.mark.parametrize("value", [b"inf", b"1e309", b"86400001"])
def test_a_deadline_must_be_finite_and_at_most_a_day(value):
    with pytest.raises(InvalidRequest) as exc:
        parse("chat.completions", body(), [(b"x-tesseract-max-latency-ms", value)], key())
    assert exc.value.param == "tesseract.max_latency_ms"


def test_a_tesseract_value_that_is_not_an_object_is_a_400_even_with_headers():
    headers = [(b"x-tesseract-priority", b"2")]
    for value in (["eu"], "eu", 3):
        with pytest.raises(InvalidRequest) as exc:
            parse("chat.completions", body(tesseract=value), headers, key())
        assert exc.value.param == "tesseract"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "messages": [{"role": "user", "content": "\xff"}]}',
        b'{"model": "m\xc3", "messages": []}',
    ],
)
def test_invalid_utf8_is_a_clear_400(raw):
    with pytest.raises(InvalidRequest) as exc:
        parse("chat.completions", raw, [], key())
    assert exc.value.code == "invalid_json"
    assert "UTF-8" in exc.value.message


def nested(depth: int, *, inside: bytes = b"1") -> bytes:
    """A body whose `x` nests arrays so that the whole body is `depth` levels deep."""
    arrays = depth - 1  # the body itself is one level
    return body(x=None).replace(b'"x":null', b'"x":' + b"[" * arrays + inside + b"]" * arrays)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1_000, 10_000])
def test_json_nested_past_the_limit_is_a_400(depth):
    with pytest.raises(InvalidRequest) as exc:
        parse("chat.completions", nested(depth), [], key())
    assert exc.value.code == "invalid_json"
    assert "levels deep" in exc.value.message


def test_json_at_the_limit_is_accepted_and_brackets_in_strings_do_not_count():
    parse("chat.completions", nested(MAX_JSON_DEPTH), [], key())
    brackets = msgspec.json.encode("[{" * 500 + '\\"[')
    parse("chat.completions", nested(MAX_JSON_DEPTH, inside=brackets), [], key())
