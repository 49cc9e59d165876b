"""The gateway's own failures: errors never reveal a backend's URL, a database outage is
a 503 while cached keys keep working, and an error after the head ends the response
instead of starting a second one."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx
import pytest
from django.db import connection

from accounts import services
from accounts.keycache import KeyCache
from backends.models import Deployment
from routing.gateway.app import GatewayApp, KeyAuth
from tests.clock import Clock
from tests.faults.input_gateway import *  # noqa: F403 (its fixtures)
from tests.faults.input_gateway import CHAT, EIGHT_B, assert_openai_error


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failed_backend_is_named_by_its_slug_never_by_its_url(site, key, usage):
    port = closed_port()
    westeurope = Deployment.objects.filter(model__slug=EIGHT_B, cluster__region__slug="westeurope")
    slugs = set(westeurope.values_list("slug", flat=True))
    westeurope.update(endpoint_url=f"http://127.0.0.1:{port}/v1")
    site.app.forget_world()
    body = {**CHAT, "tesseract": {"regions": ["westeurope"]}}
    response = site.post(key, content=json.dumps(body).encode())
    error = assert_openai_error(response, 503, "backend_unavailable")
    assert any(slug in error["message"] for slug in slugs), error["message"]
    for leak in (str(port), "127.0.0.1", "http", "/v1"):
        assert leak not in response.text, response.text
    assert [e.status for e in usage(expect=1)] == ["error"]


# -- the database goes away -------------------------------------------------------------


@pytest.fixture
def database_down(site) -> Any:
    """A callable that points every new connection at a closed port: a real refusal."""
    if connection.vendor != "postgresql":
        pytest.skip("the outage is staged against PostgreSQL")
    settings_dict = connection.settings_dict  # shared by every thread's connection
    saved = settings_dict["HOST"], settings_dict["PORT"]

    def go_down() -> None:
        settings_dict["HOST"], settings_dict["PORT"] = "127.0.0.1", str(closed_port())
        connection.close()

    yield go_down
    settings_dict["HOST"], settings_dict["PORT"] = saved
    connection.close()


def test_with_the_database_down_cached_keys_work_and_new_ones_get_a_503(
    site, alice, usage, database_down, monkeypatch
):
    org = services.organization_create(name="Acme", owner=alice)
    cached, expired, unseen = (
        services.api_key_create(org=org, name=name).plaintext
        for name in ("cached", "expired", "unseen")
    )
    clock = Clock()
    monkeypatch.setattr(site.app, "auth", KeyAuth(KeyCache(ttl_s=30, clock=clock)))
    chat = json.dumps(CHAT).encode()
    assert site.post(expired, content=chat).status_code == 200
    clock.now += 60  # `expired`'s entry is past its TTL: the next use asks the database
    assert site.post(cached, content=chat).status_code == 200
    usage(expect=2)

    database_down()
    with pytest.raises(Exception, match="connect"):
        list(Deployment.objects.all()[:1])  # the outage is real

    for plaintext in (cached, expired):
        response = site.post(plaintext, content=chat)
        assert response.status_code == 200, response.text
    error = assert_openai_error(site.post(unseen, content=chat), 503, "service_unavailable")
    assert error["type"] == "server_error"
    assert "database" in error["message"]
    assert int(site.post(unseen, content=chat).headers["retry-after"]) > 0


def test_a_world_that_cannot_be_loaded_is_a_503(site, key, usage, database_down):
    site.post(key, content=json.dumps(CHAT).encode())  # the key is cached now
    usage(expect=1)
    database_down()
    site.app.forget_world()
    response = site.post(key, content=json.dumps(CHAT).encode())
    assert_openai_error(response, 503, "service_unavailable")


# -- an error after the head ------------------------------------------------------------


async def exchange(app: GatewayApp, path: str) -> list[dict[str, Any]]:
    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}
    sent: list[dict[str, Any]] = []
    requests = iter([{"type": "http.request", "body": b"{}", "more_body": False}])

    async def receive() -> dict[str, Any]:
        return next(requests, None) or await asyncio.Event().wait()  # type: ignore[return-value]

    async def send(message: dict[str, Any]) -> None:
        ended = any(m["type"] == "http.response.body" and not m.get("more_body") for m in sent)
        assert not ended, f"a message after the response ended: {message}"
        if message["type"] == "http.response.start":
            assert "http.response.start" not in [m["type"] for m in sent], "a second head"
        sent.append(message)

    await app(scope, receive, send)
    return sent


def failing_after_the_head(content_type: bytes, error: Exception) -> GatewayApp:
    app = GatewayApp(gateway=object())  # type: ignore[arg-type]

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        start = {"type": "http.response.start", "status": 200}
        await send({**start, "headers": [(b"content-type", content_type)]})
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        raise error

    app.routes["/v1/boom"] = ("POST", handler)
    return app


@pytest.mark.parametrize(
    "error",
    [RuntimeError("a bug after the head"), TimeoutError()],
    ids=["a bug", "a timeout"],
)
def test_an_error_after_the_head_ends_the_stream_with_an_error_event(error):
    app = failing_after_the_head(b"text/event-stream", error)
    sent = asyncio.run(exchange(app, "/v1/boom"))
    assert [m["type"] for m in sent].count("http.response.start") == 1
    tail = sent[-1]
    assert tail["type"] == "http.response.body"
    assert not tail.get("more_body")
    events = [line[6:] for line in tail["body"].decode().split("\n\n") if line]
    assert events[-1] == "[DONE]"
    assert json.loads(events[0])["error"]["type"] == "server_error"


def test_an_error_after_the_head_of_a_whole_body_just_ends_it():
    app = failing_after_the_head(b"application/json", RuntimeError("a bug"))
    sent = asyncio.run(exchange(app, "/v1/boom"))
    assert [m["type"] for m in sent].count("http.response.start") == 1
    assert sent[-1] == {"type": "http.response.body", "body": b""}


def test_the_gateway_answers_an_error_at_the_door_with_one_whole_response():
    sent = asyncio.run(exchange(GatewayApp(gateway=object()), "/v1/nowhere"))  # type: ignore[arg-type]
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 404
    assert httpx.Response(404, content=sent[1]["body"]).json()["error"]["code"] == "unknown_url"
