"""ASGI entry point.

`/v1/*` and `/metrics` go to the inference gateway (a lean ASGI app, no Django request
handling on the hot path); the WebSocket `/v1/stream` to its Channels consumer;
everything else to Django (dashboards, console, admin, management API).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tesseract_web.settings")
django_asgi = get_asgi_application()  # sets up Django before anything imports models

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import path  # noqa: E402

from routing.gateway.app import application as gateway  # noqa: E402
from routing.gateway.ws import StreamConsumer  # noqa: E402

web = ASGIStaticFilesHandler(django_asgi) if settings.SERVE_STATIC else django_asgi


async def http_app(scope, receive, send):
    if scope["path"].startswith("/v1/") or scope["path"] == "/metrics":
        return await gateway(scope, receive, send)
    return await web(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_app,
        # API keys authenticate the socket, not cookies, so no origin check applies.
        "websocket": URLRouter([path("v1/stream", StreamConsumer.as_asgi())]),
    }
)
