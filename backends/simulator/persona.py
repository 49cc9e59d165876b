"""Provider personas: a simulated deployment that behaves like a real provider's API.

Set per deployment through its control endpoint (`{"persona": {...}}`, `null` to
clear); every field is optional:

    {"auth_header": "authorization",  # where the credential goes: "authorization"
                                      # (as "Bearer <key>") or a named header such as
                                      # "api-key" (the bare key); absent: no auth
     "keys": ["gsk_…"],               # the credentials it accepts (replacing the list
                                      # revokes the old ones)
     "model_id": "llama-3.3-70b-versatile",  # its own id for the model: requests must
                                      # name it, answers and /v1/models carry it
     "error_style": "openai",         # "openai" {"error": {...}}, "tgi" {"error": "…",
                                      # "error_type": "…"}, or "plain" {"error": "…"}
     "ignores_include_usage": false}  # streams never carry usage, whatever is asked

The credential guards the deployment's `/metrics` as well as its API, as an
authenticating proxy in front of a server does (vLLM's own `--api-key` guards `/v1`
only), so a test can prove the scrape carries the credential. A missing or refused
credential gets 401, whose body repeats the credential it was
sent — the worst a real provider does — so tests can prove Tesseract never passes it
on. Which credential
and which model id each request carried is kept in `seen` for the tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .protocol import ApiError, invalid

STYLES = ("openai", "tgi", "plain")


@dataclass
class Persona:
    auth_header: str | None = None
    keys: frozenset[str] = frozenset()
    model_id: str | None = None
    error_style: str = "openai"
    ignores_include_usage: bool = False
    #: (credential sent or None, model id asked for or None) per request, newest last
    seen: list[tuple[str | None, str | None]] = field(default_factory=list)

    @classmethod
    def parse(cls, body: Any) -> Persona:
        if not isinstance(body, dict):
            raise invalid("'persona' must be an object or null", param="persona")
        known = {"auth_header", "keys", "model_id", "error_style", "ignores_include_usage"}
        unknown = set(body) - known
        if unknown:
            raise invalid(f"unknown persona fields: {sorted(unknown)}", param="persona")
        header = body.get("auth_header")
        if header is not None and (not isinstance(header, str) or not header.strip()):
            raise invalid("'auth_header' must be a header name", param="persona.auth_header")
        keys = body.get("keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
            raise invalid("'keys' must be a list of strings", param="persona.keys")
        model_id = body.get("model_id")
        if model_id is not None and (not isinstance(model_id, str) or not model_id):
            raise invalid("'model_id' must be a string", param="persona.model_id")
        style = body.get("error_style", "openai")
        if style not in STYLES:
            raise invalid(f"'error_style' must be one of {', '.join(STYLES)}", param="persona")
        ignores = body.get("ignores_include_usage", False)
        if not isinstance(ignores, bool):
            raise invalid("'ignores_include_usage' must be a boolean", param="persona")
        return cls(
            auth_header=header.strip().lower() if header else None,
            keys=frozenset(keys),
            model_id=model_id,
            error_style=style,
            ignores_include_usage=ignores,
        )

    def credential(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        if self.auth_header is None:
            return None
        name = self.auth_header.encode()
        for key, value in headers:
            if key.lower() == name:
                text = value.decode("latin-1").strip()
                if self.auth_header == "authorization":
                    scheme, _, token = text.partition(" ")
                    return token.strip() if scheme.lower() == "bearer" else text
                return text
        return None

    def authorize(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """The credential the request carried, or an `ApiError` (401/403) if refused."""
        credential = self.credential(headers)
        if self.auth_header is None:
            return None
        if credential is None:
            raise ApiError(
                401,
                f"Missing credential: send it in the {self.auth_header!r} header.",
                type="authentication_error",
                code="missing_api_key",
            )
        if credential not in self.keys:
            # Echoes what it was sent, as some providers do: the worst case for leaks.
            raise ApiError(
                401,
                f"Invalid API Key: {credential}",
                type="authentication_error",
                code="invalid_api_key",
            )
        return credential

    def state(self) -> dict[str, Any]:
        return {
            "auth_header": self.auth_header,
            "keys": len(self.keys),  # how many, never which
            "model_id": self.model_id,
            "error_style": self.error_style,
            "ignores_include_usage": self.ignores_include_usage,
            "requests_seen": len(self.seen),
        }


def render_error(exc: ApiError, style: str) -> bytes:
    """The error body in a provider's style."""
    if style == "tgi":
        return json.dumps({"error": exc.message, "error_type": exc.code or exc.type}).encode()
    if style == "plain":
        return json.dumps({"error": exc.message}).encode()
    return exc.body()
