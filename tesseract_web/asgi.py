"""ASGI entry point: HTTP (Django, later the inference gateway) and WebSocket."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tesseract_web.settings")
django_asgi = get_asgi_application()  # sets up Django before anything imports models

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

http_app = ASGIStaticFilesHandler(django_asgi) if settings.SERVE_STATIC else django_asgi

#: WebSocket routes (the streaming inference endpoint /v1/stream joins here).
websocket_urlpatterns: list = []

application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
