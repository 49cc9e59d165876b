"""WebSockets that do not authenticate are closed; a failure nobody expected still gets
an error frame and a logged traceback. (Before: idle sockets stayed open for good; an
exception died in a task nobody awaited, and the client waited forever.)"""

from __future__ import annotations

import json
import logging
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.faults.input_gateway import *  # noqa: F403 (its fixtures)
from tests.faults.input_gateway import CHAT, ws_answer

#: Generous: the server must act within the timeout plus whatever a busy machine adds.
PATIENCE_S = 30


@pytest.fixture
def short_auth_timeout(settings):
    settings.TESSERACT_WS_AUTH_TIMEOUT_S = 1
    return 1


def test_a_socket_that_never_authenticates_is_told_and_closed(site, short_auth_timeout):
    started = time.monotonic()
    with connect(site.ws_url) as ws:
        error = json.loads(ws.recv(timeout=PATIENCE_S))["error"]
        assert error["code"] == "auth_timeout"
        assert error["type"] == "invalid_request_error"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=PATIENCE_S)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert time.monotonic() - started >= short_auth_timeout


def test_a_wrong_key_does_not_keep_a_socket_open(site, key, short_auth_timeout):
    with connect(site.ws_url, additional_headers={"Authorization": "Bearer tsk_wrong"}) as ws:
        assert ws_answer(ws, json.dumps(CHAT))["error"]["code"] == "invalid_api_key"
        assert json.loads(ws.recv(timeout=PATIENCE_S))["error"]["code"] == "auth_timeout"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=PATIENCE_S)


@pytest.mark.parametrize("how", ["handshake", "first frame"])
def test_an_authenticated_socket_stays_open_past_the_timeout(
    site, key, usage, short_auth_timeout, how
):
    if how == "handshake":
        headers, body = {"Authorization": f"Bearer {key}"}, CHAT
    else:
        headers, body = {}, {**CHAT, "api_key": key}
    with connect(site.ws_url, additional_headers=headers) as ws:
        if how == "first frame":
            assert ws_answer(ws, json.dumps(body))["object"] == "chat.completion"
        time.sleep(short_auth_timeout + 1)
        assert ws_answer(ws, json.dumps(body))["object"] == "chat.completion"
    served = 2 if how == "first frame" else 1
    assert len(usage(expect=served)) == served


def test_an_unexpected_failure_answers_with_a_server_error_frame_and_is_logged(
    site, key, usage, monkeypatch, caplog
):
    async def broken_world():
        raise RuntimeError("a bug in the world holder")

    holder = site.app.gateway.holder
    monkeypatch.setattr(holder, "get", broken_world)
    with (
        caplog.at_level(logging.ERROR, logger="routing.gateway.ws"),
        connect(site.ws_url, additional_headers={"Authorization": f"Bearer {key}"}) as ws,
    ):
        error = ws_answer(ws, json.dumps(CHAT))["error"]
        assert (error["type"], error["code"]) == ("server_error", "internal_error")
        assert "a bug" not in error["message"]  # the details are in the log, not the frame
        monkeypatch.delattr(holder, "get")  # the class's own again
        assert ws_answer(ws, json.dumps(CHAT))["object"] == "chat.completion"
    [record] = [r for r in caplog.records if r.name == "routing.gateway.ws"]
    assert record.exc_info is not None
    assert "a bug in the world holder" in str(record.exc_info[1])
    assert len(usage(expect=1)) == 1
