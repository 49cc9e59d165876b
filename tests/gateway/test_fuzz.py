"""Fuzzing both transports (hypothesis): whatever arrives — generated bodies, headers and
frames, near-valid or hostile — the answer is a 2xx or an OpenAI-shaped 4xx, never a
500 and never silence. A 503/504 is allowed only for what the world can legitimately
cause (no backend could take or finish the request). And every request that was
served is metered: the usage records all land.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from backends.simulator import create_app
from routing.gateway.parse import TesseractOptions

EIGHT_B = "llama-3.1-8b-instruct"
#: What the world may answer with other than 2xx/4xx: no backend could take or finish it.
WORLD_ERRORS = {503: {"backend_unavailable"}, 504: {"backend_timeout"}}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # nothing written under the repository
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- what a client might send -------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["", "\x00", "\ud7ff", "gdpr", "EU", "westeurope", EIGHT_B, "m" * 300]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
option_names = st.sampled_from(sorted(TesseractOptions.__struct_fields__))
good_options = st.fixed_dictionaries(
    {},
    optional={
        "max_ttft_ms": st.sampled_from([1, 50, 2000, 1e9, -1, 0]),
        "max_latency_ms": st.sampled_from([5, 5000, 86_400_001]),
        "regions": st.lists(st.sampled_from(["westeurope", "eastus", "x\x00", ""]), max_size=2),
        "jurisdictions": st.lists(st.sampled_from(["EU", "US", "eu"]), max_size=2),
        "compliance": st.lists(st.sampled_from(["gdpr", "hipaa", "soc2", "🙂"]), max_size=2),
        "priority": st.integers(min_value=-1, max_value=7),
        "session_id": st.text(max_size=210),
        "fallback_models": st.lists(st.sampled_from([EIGHT_B, "gpt-9", "m" * 81]), max_size=2),
        "client_region": st.sampled_from(["francecentral", "nowhere", "X" * 65]),
        "client_lat": st.floats(-100, 100),
        "client_lon": st.floats(-200, 200),
        "strategy": st.sampled_from(["deadline", "seed", "fastest-ever"]),
    },
)
tesseract = st.one_of(
    good_options, st.dictionaries(option_names, json_values, max_size=3), json_values
)
messages = st.one_of(
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system", "", "assistant"])},
            optional={"content": st.one_of(st.text(max_size=40), json_values)},
        ),
        max_size=3,
    ),
    json_values,
)
#: Anything in the fields a request has: mostly wrong.
wild_requests = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.sampled_from([EIGHT_B, "llama-3.3-70b-instruct", "gpt-9"]), scalars),
        "messages": messages,
        "prompt": st.one_of(st.text(max_size=40), json_values),
        "max_tokens": st.one_of(st.integers(min_value=-2, max_value=4), scalars),
        "stream": st.one_of(st.booleans(), scalars),
        "stream_options": st.one_of(st.just({"include_usage": True}), json_values),
        "tesseract": tesseract,
        "input_tokens": st.integers(min_value=-1, max_value=10**12),
        "endpoint": st.sampled_from(["completions", "chat.completions", "embeddings"]),
        "extra": json_values,
    },
)
#: A request that can be served, with requirements that may or may not be satisfiable:
#: the routing, streaming and metering paths get their share of the examples.
served_requests = st.builds(
    lambda text, tokens, stream, options, extra: {
        "model": EIGHT_B,
        "messages": [{"role": "user", "content": text}],
        "prompt": text,  # for /v1/completions; chat ignores it
        "max_tokens": tokens,
        "stream": stream,
        **({"tesseract": options} if options else {}),
        **extra,
    },
    st.text(max_size=40),
    st.integers(min_value=1, max_value=4),
    st.booleans(),
    good_options,
    st.dictionaries(st.sampled_from(["temperature", "user", "n", "stop"]), scalars, max_size=1),
)
request_bodies = st.one_of(served_requests, served_requests, wild_requests)


def hostile(raw: bytes, how: str) -> bytes:
    """The encoded body, made hostile in one of the ways real clients have tried."""
    if how == "nul":
        return raw.replace(b'": "', b'": "\\u0000', 1)
    if how == "bad utf-8":
        return raw.replace(b'": "', b'": "\xff\xc3', 1)
    if how == "deep" and raw.endswith(b"}"):
        return raw[:-1] + b', "deep": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    if how == "truncated":
        return raw[: len(raw) // 2]
    return raw


def encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


bodies = st.one_of(
    st.builds(
        hostile,
        request_bodies.map(encode),
        st.sampled_from(["as is", "as is", "as is", "nul", "bad utf-8", "deep", "truncated"]),
    ),
    st.binary(max_size=64),
)
header_names = st.one_of(
    option_names.map(lambda n: "X-Tesseract-" + n.replace("_", "-")),
    st.sampled_from(["X-Tesseract-", "X-Tesseract-Colour", "traceparent"]),
)
ascii_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
#: HTTP header values are bytes: anything but control characters (obs-text included).
http_headers = st.dictionaries(
    header_names,
    st.binary(max_size=20).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F).strip()),
    max_size=3,
)
#: The WebSocket client sends text headers: printable ASCII.
ws_headers = st.dictionaries(header_names, ascii_values.map(str.strip), max_size=3)


# -- how an answer must look ----------------------------------------------------------------


def assert_openai_error(error: Any, status: int | None = None) -> None:
    assert isinstance(error, dict), error
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str), error
    assert error["message"], error
    if status is None:  # a WebSocket frame carries no status: its type says enough
        assert error["type"] != "server_error" or error["code"] in set().union(
            *WORLD_ERRORS.values()
        ), error
    elif status >= 500:
        assert error["code"] in WORLD_ERRORS.get(status, set()), (status, error)


def assert_http_answer(response: httpx.Response) -> None:
    status = response.status_code
    assert 200 <= status < 300 or 400 <= status < 500 or status in WORLD_ERRORS, response.text
    if status >= 400:
        assert response.headers["content-type"].startswith("application/json")
        assert_openai_error(response.json()["error"], status)
    elif response.headers["content-type"].startswith("text/event-stream"):
        events = [e[6:] for e in response.text.split("\n\n") if e.startswith("data: ")]
        assert events[-1] == "[DONE]", response.text[-300:]
        for event in events[:-1]:
            chunk = json.loads(event)
            if "error" in chunk:
                assert_openai_error(chunk["error"])
    else:
        assert isinstance(response.json(), dict)


@pytest.fixture
def fast_mesh(mesh, simulator_server, world_spec):
    """The mesh with simulated time stopped: an answer costs no waiting."""
    simulator_server[0].app = create_app(world_spec, time_scale=0, gateway_region="westeurope")
    return mesh


def test_fuzzed_http_requests_get_a_2xx_or_an_openai_4xx(fast_mesh, api_key, usage):
    served = []
    client = httpx.Client(base_url=fast_mesh.gateway_url, timeout=30)

    @FUZZ
    @given(
        path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/route"]),
        body=bodies,
        headers=http_headers,
        authorized=st.sampled_from([True, True, True, False]),
    )
    def check(path: str, body: bytes, headers: dict[str, bytes], authorized: bool) -> None:
        auth = {"Authorization": f"Bearer {api_key}".encode()} if authorized else {}
        response = client.post(path, content=body, headers={**headers, **auth})
        assert_http_answer(response)
        if response.status_code == 200 and path != "/v1/route":
            served.append(response)

    check()
    # Every served request lands (records are published a moment after the answer),
    # and no record poisons the drain: it would raise here.
    deadline = time.monotonic() + 30
    while len(events := usage()) < len(served) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(events) >= len(served)


def read_answer(ws: Any, streamed: bool) -> list[str]:
    frames = []
    while True:
        frame = ws.recv(timeout=30)  # never silence
        frames.append(frame)
        if frame == "[DONE]" or not streamed or '"error"' in frame[:10]:
            return frames


def test_fuzzed_websocket_frames_get_chunks_or_an_openai_error_frame(fast_mesh, api_key, usage):
    ws_url = fast_mesh.gateway_url.replace("http://", "ws://") + "/v1/stream"

    @FUZZ
    @given(
        body=bodies,
        handshake=ws_headers,
        key_in=st.sampled_from(["handshake", "frame", "nowhere"]),
        binary=st.booleans(),
    )
    def check(body: bytes, handshake: dict[str, str], key_in: str, binary: bool) -> None:
        try:
            decoded = json.loads(body)
        except (ValueError, RecursionError):
            decoded = None
        if key_in == "frame" and isinstance(decoded, dict):
            body = json.dumps({**decoded, "api_key": api_key}).encode()
        if key_in == "handshake":
            handshake = {**handshake, "Authorization": f"Bearer {api_key}"}
        frame: str | bytes = body
        if not binary:
            frame = body.decode("utf-8", "replace")
        streamed = isinstance(decoded, dict) and decoded.get("stream") is True
        with connect(ws_url, additional_headers=handshake) as ws:
            ws.send(frame)
            for text in read_answer(ws, streamed):
                if text == "[DONE]":
                    continue
                answer = json.loads(text)
                assert isinstance(answer, dict), text
                if "error" in answer:
                    assert_openai_error(answer["error"])

    check()
    usage()  # the drain takes every record: none of them poisons it
