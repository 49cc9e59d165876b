"""Hostile bodies: each is a 400 in the OpenAI shape, over HTTP and over the WebSocket,
and nothing is routed or metered. (Before: a 500 over HTTP, silence on the socket.)"""

from __future__ import annotations

import json

from websockets.sync.client import connect

from tests.faults.input_gateway import *  # noqa: F403 (its fixtures)
from tests.faults.input_gateway import CHAT, EIGHT_B, assert_openai_error, ws_answer

NESTED = (
    b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "x": '
    + (b"[" * 10_000 + b"]" * 10_000)
    + b"}"
)
BAD_UTF8 = (
    b'{"model": "' + EIGHT_B.encode() + b'", "messages": [{"role": "user", "content": "\xff\xfe"}]}'
)
NUL_IN_A_LIST = json.dumps({**CHAT, "tesseract": {"compliance": ["gdpr\u0000"]}}).encode()
LONG_MODEL = json.dumps(
    {**CHAT, "model": "m" * 200, "tesseract": {"fallback_models": [EIGHT_B]}}
).encode()
NUL_MODEL = json.dumps(
    {**CHAT, "model": "x\u0000", "tesseract": {"fallback_models": [EIGHT_B]}}
).encode()
TESSERACT_A_LIST = json.dumps({**CHAT, "tesseract": ["eu"]}).encode()
CHAT_BYTES = json.dumps(CHAT).encode()

#: (what, body, headers, code, param): each world-loading test costs seconds on a busy
#: machine, so one test walks all the cases.
CASES = [
    ("invalid UTF-8 in a string", BAD_UTF8, {}, "invalid_json", None),
    ("arrays nested 10,000 deep", NESTED, {}, "invalid_json", None),
    ("tesseract a list, with a header", TESSERACT_A_LIST, {"X-Tesseract-Priority": "2"},
     "invalid_value", "tesseract"),
    ("a 200-character model", LONG_MODEL, {}, "invalid_value", "model"),
    ("a NUL in the model", NUL_MODEL, {}, "invalid_value", "model"),
    ("a NUL inside a tesseract list", NUL_IN_A_LIST, {}, "invalid_value",
     "tesseract.compliance"),
    # An infinite number cannot be stored in the usage row's JSON.
    ("an infinite deadline in a header", CHAT_BYTES, {"X-Tesseract-Max-Latency-Ms": "inf"},
     "invalid_value", "tesseract.max_latency_ms"),
]  # fmt: skip


def test_each_hostile_body_over_http_is_a_400_and_nothing_is_metered(site, key, usage):
    for what, body, headers, code, param in CASES:
        error = assert_openai_error(site.post(key, content=body, headers=headers), 400, code)
        assert (error["type"], error["param"]) == ("invalid_request_error", param), what
    assert usage() == []


def test_each_hostile_frame_over_the_websocket_is_an_error_frame_and_nothing_is_metered(
    site, key, usage
):
    for what, body, headers, code, param in CASES:
        # Handshake headers ride with every request on the socket: one socket per case.
        auth = {"Authorization": f"Bearer {key}", **headers}
        with connect(site.ws_url, additional_headers=auth) as ws:
            error = ws_answer(ws, body)["error"]  # a binary frame: the bytes as given
            assert (error["type"], error["code"], error["param"]) == (
                "invalid_request_error", code, param,
            ), what  # fmt: skip
    assert usage() == []
    # The socket still serves the next request after a refusal.
    with connect(site.ws_url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        assert "error" in ws_answer(ws, NESTED)
        answer = ws_answer(ws, json.dumps(CHAT))
        assert answer["object"] == "chat.completion", answer
    [event] = usage(expect=1)
    assert event.model == EIGHT_B
