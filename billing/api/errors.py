"""One error shape for the management API, the same as /v1's:
`{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

API_PREFIX = "/api/"

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
}


def _first(detail: Any) -> tuple[str, str | None]:
    """The first message of a DRF error detail, and the field it is about."""
    if isinstance(detail, dict):
        field, value = next(iter(detail.items()))
        message, _ = _first(value)
        return message, None if field == "non_field_errors" else str(field)
    if isinstance(detail, list) and detail:
        return _first(detail[0])
    return str(detail), None


def handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = exception_handler(exc, context)
    if response is None:
        return None  # a bug: Django's 500 handling (and logging) applies
    if isinstance(exc, Http404):
        message, param, code = str(exc) or "Not found.", None, "not_found"
    elif isinstance(exc, exceptions.APIException):
        message, param = _first(exc.detail)
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else _first(codes)[0]
    else:
        message, param, code = "Error.", None, "error"
    response.data = _body(response.status_code, message, code, param)
    return response


def _body(http: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    """The one error shape, its type named by the HTTP status."""
    fallback = (
        "api_error" if http >= status.HTTP_500_INTERNAL_SERVER_ERROR else "invalid_request_error"
    )
    type_ = _TYPES.get(http, fallback)
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# --------------------------------------------------------------------------- outside DRF


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 404 (`handler404`): under /api/, the API's error shape, naming a
    trailing slash when the path without it is an endpoint (the API's paths end
    without one); elsewhere the site's page."""
    path = request.path
    if not path.startswith(API_PREFIX):
        return defaults.page_not_found(request, exception)
    message = f"Unknown endpoint {request.method} {path}."
    if path.endswith("/") and _resolves(path.rstrip("/")):
        message += f" Did you mean {path.rstrip('/')}? The API's paths end without a slash."
    return JsonResponse(_body(404, message, "unknown_url"), status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    """Django's 500 (`handler500`; the error is logged by Django): under /api/, the
    API's error shape; elsewhere the site's page."""
    if not request.path.startswith(API_PREFIX):
        return defaults.server_error(request)
    body = _body(500, "Internal error; it has been logged.", "internal_error")
    return JsonResponse(body, status=500)


def _resolves(path: str) -> bool:
    try:
        resolve(path)
    except Resolver404:
        return False
    return True
