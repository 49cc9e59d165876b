"""Errors of the inference API, rendered in OpenAI's shape by one function.

    TesseractAPIError                     500 server_error
    ├── InvalidRequest                    400 invalid_request_error
    │   └── PayloadTooLarge               413
    ├── AuthenticationFailed              401 invalid_request_error / invalid_api_key
    ├── PermissionDenied                  403 invalid_request_error / permission_denied
    ├── ModelNotFound                     404 invalid_request_error / model_not_found
    ├── RouteNotFound                     404 invalid_request_error / unknown_url
    ├── SlaUnsatisfiable                  422 invalid_request_error / sla_unsatisfiable,
    │                                         policy_unsatisfiable
    ├── RateLimited                       429 rate_limit_error (Retry-After)
    ├── BudgetExceeded                    429 insufficient_quota (Retry-After)
    ├── BackendUnavailable                503 server_error / backend_unavailable
    │                                     (Retry-After: every allowed one is out, or no metering)
    ├── ServiceUnavailable                503 server_error / service_unavailable
    └── BackendTimeout                    504 server_error / backend_timeout

Whose move it is decides 422 against 503 when nothing can serve a request: 422 when
no backend of the catalog could, even healthy (its policy matches none, or its SLA is
beyond them: the client must ask differently); 503 when backends its policy allows
exist but are all out now (drained, DOWN, cooling after a provider's 429, their
provider rejected our credential, full queues: ours, and it passes). See
`routing.engine.plan` (`POLICY_CODES`, `OUTAGE_CODES`) and
`routing.gateway.core.infeasible_error`.

The status codes are the ones the OpenAI SDK maps to its exception classes, so an
unmodified client raises the exception a developer expects (`BadRequestError`,
`AuthenticationError`, `NotFoundError`, `RateLimitError`, `InternalServerError`, ...).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec


class TesseractAPIError(Exception):
    http_status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after_s = retry_after_s
        self.details = details
        #: Sent with the error (the x-ratelimit-* headers of an admitted request).
        self.extra_headers: list[tuple[bytes, bytes]] = []

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        if self.details:
            error["tesseract"] = self.details
        return {"error": error}

    def to_json(self) -> bytes:
        return msgspec.json.encode(self.to_dict())

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after_s is None:
            return list(self.extra_headers)
        return [(b"retry-after", str(self.retry_after_s).encode()), *self.extra_headers]


class InvalidRequest(TesseractAPIError):
    http_status = 400
    type = "invalid_request_error"
    default_code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    http_status = 413
    default_code = "request_too_large"


class AuthenticationFailed(TesseractAPIError):
    http_status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(TesseractAPIError):
    http_status = 403
    type = "invalid_request_error"
    default_code = "permission_denied"


class ModelNotFound(TesseractAPIError):
    http_status = 404
    type = "invalid_request_error"
    default_code = "model_not_found"


class RouteNotFound(TesseractAPIError):
    http_status = 404
    type = "invalid_request_error"
    default_code = "unknown_url"


class SlaUnsatisfiable(TesseractAPIError):
    http_status = 422
    type = "invalid_request_error"
    default_code = "sla_unsatisfiable"


class RateLimited(TesseractAPIError):
    http_status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class BudgetExceeded(TesseractAPIError):
    http_status = 429
    type = "insufficient_quota"
    default_code = "insufficient_quota"


class BackendUnavailable(TesseractAPIError):
    http_status = 503
    type = "server_error"
    default_code = "backend_unavailable"


class ServiceUnavailable(TesseractAPIError):
    """Tesseract itself cannot serve now (its database is unreachable): try again soon."""

    http_status = 503
    type = "server_error"
    default_code = "service_unavailable"


class BackendTimeout(TesseractAPIError):
    http_status = 504
    type = "server_error"
    default_code = "backend_timeout"
