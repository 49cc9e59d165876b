"""One error shape for the management API, the same as /v1's:
`{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

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
    http = response.status_code
    response.data = {
        "error": {
            "message": message,
            "type": _TYPES.get(
                http,
                "api_error"
                if http >= status.HTTP_500_INTERNAL_SERVER_ERROR
                else "invalid_request_error",
            ),
            "param": param,
            "code": code,
        }
    }
    return response
