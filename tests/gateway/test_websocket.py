"""`/v1/stream`: the same requests and the same chunks as SSE, over a WebSocket."""

from __future__ import annotations

import json

import pytest
from websockets.sync.client import connect

from tests.gateway.test_inference_api import EIGHT_B, LONG_ANSWER_IN_WESTEUROPE


def ws_url(mesh) -> str:
    return mesh.gateway_url.replace("http://", "ws://") + "/v1/stream"


def frames_until_done(ws, limit: int = 200) -> list[str]:
    out = []
    for _ in range(limit):
        frame = ws.recv(timeout=10)
        out.append(frame)
        if frame == "[DONE]" or '"error"' in frame:
            return out
    raise AssertionError("no [DONE] frame")


def test_a_streamed_request_over_a_websocket_gets_the_sse_chunks_and_is_metered(
    mesh, api_key, usage
):
    with connect(ws_url(mesh), additional_headers={"Authorization": f"Bearer {api_key}"}) as ws:
        ws.send(
            json.dumps(
                {
                    "model": EIGHT_B,
                    "messages": [{"role": "user", "content": "over a socket"}],
                    "max_tokens": 6,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "tesseract": {"jurisdictions": ["EU"]},
                }
            )
        )
        frames = frames_until_done(ws)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(text.split()) == 6
    final = chunks[-1]
    assert final["usage"]["completion_tokens"] == 6
    region = final["tesseract"]["route"]["region"]
    assert mesh.spec.regions[region].eu_member
    [event] = usage()
    assert event.request_id == final["tesseract"]["request_id"]
    assert event.stream is True


def test_one_socket_serves_requests_in_turn_and_a_key_can_ride_in_the_body(mesh, api_key, usage):
    with connect(ws_url(mesh)) as ws:
        for n in range(2):
            ws.send(
                json.dumps(
                    {
                        "api_key": api_key,
                        "endpoint": "completions",
                        "model": EIGHT_B,
                        "prompt": f"turn {n}",
                        "max_tokens": 3,
                    }
                )
            )
            body = json.loads(ws.recv(timeout=10))  # not streamed: one frame
            assert body["object"] == "text_completion"
            assert body["tesseract"]["route"]["model"] == EIGHT_B
    assert len(usage()) == 2


@pytest.mark.parametrize(
    ("headers", "message", "code"),
    [
        ({}, {"model": EIGHT_B, "messages": []}, "missing_api_key"),
        ({"Authorization": "Bearer tsk_wrong"}, {"model": EIGHT_B, "messages": []},
         "invalid_api_key"),
        (None, "not json", "invalid_json"),
        (None, {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]},
         "model_not_found"),
        (None, {"model": EIGHT_B, "messages": [{"role": "user", "content": "x"}],
                "tesseract": {"regions": ["westeurop"]}}, "unknown_region"),
    ],
    ids=["no key", "wrong key", "not JSON", "unknown model", "unknown region"],
)  # fmt: skip
def test_errors_arrive_as_openai_error_frames_and_the_socket_stays_usable(
    mesh, api_key, usage, headers, message, code
):
    if headers is None:
        headers = {"Authorization": f"Bearer {api_key}"}
    with connect(ws_url(mesh), additional_headers=headers) as ws:
        ws.send(message if isinstance(message, str) else json.dumps(message))
        error = json.loads(ws.recv(timeout=10))["error"]
        assert error["code"] == code
        assert error["message"]
        ws.send(json.dumps({"model": "gpt-9", "messages": []}))  # still answering
        assert "error" in json.loads(ws.recv(timeout=10))
    assert usage() == []


def test_closing_the_socket_cancels_the_backend_call(mesh, api_key, usage):
    backend = mesh.slowed(EIGHT_B, "westeurope")
    with connect(ws_url(mesh), additional_headers={"Authorization": f"Bearer {api_key}"}) as ws:
        ws.send(json.dumps({**LONG_ANSWER_IN_WESTEUROPE, "stream": True}))
        while '"content":"' not in ws.recv(timeout=10).replace(" ", ""):
            pass  # until a token has arrived: the backend is generating
        assert backend.slots.running == 1
    mesh.wait_until_idle(backend)
    [event] = usage()
    assert event.status == "cancelled"
    assert 0 < event.output_tokens < 2000


def test_requests_on_a_socket_continue_the_handshakes_trace(mesh, api_key, usage):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {
        "Authorization": f"Bearer {api_key}",
        "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
    }
    with connect(ws_url(mesh), additional_headers=headers) as ws:
        ws.send(json.dumps({"model": EIGHT_B, "prompt": "x", "endpoint": "completions",
                            "max_tokens": 2}))  # fmt: skip
        body = json.loads(ws.recv(timeout=10))
    assert body["tesseract"]["trace_id"] == trace_id
    [event] = usage()
    assert event.trace_id == trace_id
