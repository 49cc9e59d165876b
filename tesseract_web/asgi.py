"""ASGI entry points: the gateway and the web run in separate processes.

* `tesseract_web.asgi:gateway` — the inference gateway: `/v1/*` and `/metrics` (a lean
  ASGI app, no Django request handling on the hot path), the WebSocket `/v1/stream`
  (its Channels consumer), and `/health` for the load balancer. A browser that asks
  it for anything else is redirected to the web (`TESSERACT_WEB_URL`). It loads its
  world at start-up (ASGI lifespan), before the server takes a request.
* `tesseract_web.asgi:web` — Django: dashboards, console, admin, management API,
  static files (WhiteNoise). Password hashing and page rendering happen here, so a
  storm of sign-ins cannot slow inference down.
* `tesseract_web.asgi:application` — both in one process, for the test suite and the
  benchmarks that start one server. Never deployed: it would put the two back
  together.
"""

import gc
import json
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tesseract_web.settings")
django_asgi = get_asgi_application()  # sets up Django before anything imports models

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path  # noqa: E402

from dashboards.live import ConsoleConsumer  # noqa: E402
from routing.gateway.app import application as gateway_http  # noqa: E402
from routing.gateway.app import lifespan  # noqa: E402
from routing.gateway.ws import StreamConsumer  # noqa: E402


def is_gateway_path(path: str) -> bool:
    return path.startswith("/v1/") or path == "/metrics"


async def _answer(send, status: int, body: dict, headers: list[tuple[bytes, bytes]]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _not_here(message: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": "not_found"}}  # fmt: skip


async def gateway_only_http(scope, receive, send):
    """HTTP of the gateway process: the inference API, metrics and health, nothing else."""
    if is_gateway_path(scope["path"]):
        return await gateway_http(scope, receive, send)
    if scope["path"] == "/health":
        return await django_asgi(scope, receive, send)
    web_url = settings.TESSERACT_WEB_URL.rstrip("/")
    if web_url and scope["method"] in ("GET", "HEAD"):
        target = web_url + scope["path"]
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        body = {"location": target}
        return await _answer(send, 307, body, [(b"location", target.encode("latin-1"))])
    where = f" (the web UI is at {web_url}/)" if web_url else ""
    return await _answer(send, 404, _not_here(f"This is the inference gateway{where}."), [])


async def web_only_http(scope, receive, send):
    """HTTP of the web process: everything Django serves, never the inference API."""
    if is_gateway_path(scope["path"]):
        gateway_url = settings.TESSERACT_GATEWAY_URL.rstrip("/")
        where = f": call {gateway_url}{scope['path']}" if gateway_url else ""
        message = f"The inference API is served by the gateway, not the web UI{where}."
        return await _answer(send, 404, _not_here(message), [])
    return await django_asgi(scope, receive, send)


async def combined_http(scope, receive, send):
    if is_gateway_path(scope["path"]):
        return await gateway_http(scope, receive, send)
    return await django_asgi(scope, receive, send)


# API keys authenticate the socket, not cookies, so no origin check applies.
_stream = path("v1/stream", StreamConsumer.as_asgi())
# The console's live view is signed in by the session cookie: only pages of this site
# (ALLOWED_HOSTS) may open it, or any page on the web could ride an operator's session.
_console = path(
    "console/live",
    AllowedHostsOriginValidator(AuthMiddlewareStack(ConsoleConsumer.as_asgi())),
)


async def gateway_lifespan(scope, receive, send):
    """The gateway process loads its world before it takes requests."""
    await lifespan(gateway_http, receive, send)


gateway = ProtocolTypeRouter(
    {
        "http": gateway_only_http,
        "websocket": URLRouter([_stream]),
        "lifespan": gateway_lifespan,
    }
)
web = ProtocolTypeRouter({"http": web_only_http, "websocket": URLRouter([_console])})
#: Tests and benchmarks only (see the module docstring).
application = ProtocolTypeRouter(
    {"http": combined_http, "websocket": URLRouter([_stream, _console])}
)


def _settle_heap() -> None:
    """Take what is loaded by now (Django, the apps, their modules: it lives as long as
    the process) out of the cyclic collector's sight, and collect young objects less
    often (`TESSERACT_GC_THRESHOLDS`). A gateway allocates a few hundred short-lived
    objects per request, and every live-map refresh builds a new world whose objects
    get promoted: with CPython's defaults the collector took ~10% of a busy gateway's
    CPU, most of it in full collections walking the whole heap (bench/README.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*settings.TESSERACT_GC_THRESHOLDS)


if settings.TESSERACT_GC_FREEZE:
    _settle_heap()
