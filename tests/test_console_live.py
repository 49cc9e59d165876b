"""The console's live view: a health change reaches an open console over its WebSocket."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import User
from backends import health
from backends.demo import demo_world_load
from tests.conftest import PASSWORD, login, verified

SLUG = "westeurope-tesseract-nvidia-h100--llama-3.1-8b-instruct"


@pytest.fixture
def world(db):
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(match="tesseract:*"):
        client.delete(key)
    return demo_world_load()


def socket_headers(user: User, *, verify: bool) -> list[tuple[bytes, bytes]]:
    client = verified(user) if verify else login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    return [
        (b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()),
        (b"origin", b"http://testserver"),
        (b"host", b"testserver"),
    ]


def web_socket(headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
    from tesseract_web.asgi import web

    return WebsocketCommunicator(web, "/console/live", headers=headers)


async def until(socket: WebsocketCommunicator, wanted: Any, limit: int = 50) -> list[dict]:
    seen: list[dict] = []
    for _ in range(limit):
        try:
            message = await socket.receive_json_from(timeout=10)
        except TimeoutError:
            raise AssertionError(f"nothing more came; saw {[m['type'] for m in seen]}") from None
        seen.append(message)
        if wanted(message):
            return seen
    raise AssertionError(f"never came; saw {seen}")


def test_a_health_change_is_pushed_to_an_open_console_without_a_reload(world):
    oscar = User.objects.create_user("oscar@example.com", PASSWORD, is_staff=True)
    TOTPDevice.objects.create(user=oscar, name="phone", confirmed=True)
    headers = socket_headers(oscar, verify=True)
    live = redis.Redis.from_url(settings.REDIS_URL)

    async def scenario() -> None:
        socket = web_socket(headers)
        connected, _ = await socket.connect(timeout=10)
        assert connected
        first = await socket.receive_json_from(timeout=10)
        assert first["type"] == "deployments"
        assert len(first["rows"]) == 67
        assert first["counters"]["down"] == 0
        for _ in range(health.DOWN_AFTER):
            health.observe(live, SLUG, health.FAIL, source="check", reason="test")
        seen = await until(socket, lambda m: m["type"] == "health")
        change = seen[-1]
        assert (change["slug"], change["health"]) == (SLUG, "down")
        update = next(m for m in seen if m["type"] == "deployments")
        assert [r["slug"] for r in update["rows"]] == [SLUG]
        assert update["rows"][0]["health"] == "down"
        assert update["counters"]["down"] == 1
        assert update["regions"]["westeurope"] == "down"
        await socket.disconnect()

    async_to_sync(scenario)()


@pytest.mark.django_db(transaction=True)  # the drain is announced when it commits
def test_a_drain_elsewhere_redraws_the_rows_of_an_open_console(world):
    from backends.models import Region
    from backends.services import drain_by_slug

    oscar = User.objects.create_user("oscar@example.com", PASSWORD, is_staff=True)
    TOTPDevice.objects.create(user=oscar, name="phone", confirmed=True)
    headers = socket_headers(oscar, verify=True)

    async def scenario() -> None:
        from asgiref.sync import sync_to_async

        socket = web_socket(headers)
        assert (await socket.connect(timeout=10))[0]
        await socket.receive_json_from(timeout=10)

        await sync_to_async(drain_by_slug)("region", "westeurope", drained=True)
        seen = await until(socket, lambda m: m["type"] == "deployments")
        rows = {r["slug"]: r for r in seen[-1]["rows"]}
        assert rows[SLUG]["drained"]
        assert seen[-1]["regions"]["westeurope"] == "drained"
        await socket.disconnect()

    async_to_sync(scenario)()
    assert Region.objects.get(slug="westeurope").drained


@pytest.mark.parametrize("who", ["developer", "unverified staff", "anonymous"])
def test_only_a_verified_operator_may_open_the_live_socket(world, who):
    if who == "anonymous":
        headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    else:
        user = User.objects.create_user("x@example.com", PASSWORD, is_staff=who != "developer")
        TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
        headers = socket_headers(user, verify=who == "developer")

    async def scenario() -> tuple[bool, Any]:
        socket = web_socket(headers)
        result = await socket.connect(timeout=10)
        await socket.disconnect()
        return result

    connected, code = async_to_sync(scenario)()
    assert not connected
    assert code == 4403


def test_a_socket_from_another_site_is_refused(world):
    oscar = User.objects.create_user("oscar@example.com", PASSWORD, is_staff=True)
    TOTPDevice.objects.create(user=oscar, name="phone", confirmed=True)
    headers = [h for h in socket_headers(oscar, verify=True) if h[0] != b"origin"]
    headers.append((b"origin", b"https://evil.example"))

    async def scenario() -> tuple[bool, Any]:
        socket = web_socket(headers)
        result = await socket.connect(timeout=10)
        await socket.disconnect()
        return result

    assert not async_to_sync(scenario)()[0]
