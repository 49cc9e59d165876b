"""localstripe (a fake but stateful Stripe server, from PyPI) on a free loopback port,
and an SDK HTTP client that records every request the official `stripe` SDK sends.

localstripe lacks some of the API Tesseract calls (see `UNSUPPORTED`): for those the
recorder answers itself, as Stripe documents the answer, after recording the request,
so tests can check the call at the HTTP boundary (method, path, parameters, idempotency
key, API version).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import stripe

from tests.servers import free_port

SECRET_KEY = "sk_test_tesseract"

_RUN = """
import sys
from aiohttp import web
from localstripe import resources
resources.Store.dump_to_disk = lambda self: None  # no shared /tmp pickle
from localstripe.server import app
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


@contextmanager
def localstripe() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/v1/customers", auth=(SECRET_KEY, ""), timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("localstripe did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class Sent:
    method: str
    path: str
    headers: dict[str, str]
    params: dict[str, Any]

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("Idempotency-Key")


#: Calls localstripe does not implement: (method, path pattern).
UNSUPPORTED = [("post", re.compile(r"^/v1/invoices/(in_\w+)/finalize$"))]


@dataclass
class Recorder(stripe.HTTPClient):
    """Forwards to localstripe, records everything; answers UNSUPPORTED calls itself;
    `fail_next[(method, path prefix)] = n` makes the next n such calls a 503."""

    sent: list[Sent] = field(default_factory=list)
    fail_next: dict[tuple[str, str], int] = field(default_factory=dict)
    name = "recorder"

    def __post_init__(self) -> None:
        super().__init__()
        self._inner = stripe.new_default_http_client()

    def request(self, method, url, headers, post_data=None, *, _usage=None):  # type: ignore[override]
        parsed = urlparse(url)
        body = post_data.decode() if isinstance(post_data, bytes) else (post_data or "")
        params = {k: v[0] if len(v) == 1 else v for k, v in parse_qs(body or parsed.query).items()}
        self.sent.append(Sent(method, parsed.path, dict(headers or {}), params))
        for (fail_method, prefix), count in list(self.fail_next.items()):
            if count and method == fail_method and parsed.path.startswith(prefix):
                self.fail_next[(fail_method, prefix)] = count - 1
                error = {"error": {"type": "api_error", "message": "injected"}}
                return json.dumps(error), 503, {}
        for unsupported_method, pattern in UNSUPPORTED:
            match = pattern.match(parsed.path)
            if method == unsupported_method and match:
                return self._finalize(url, match.group(1), headers)
        return self._inner.request(method, url, headers, post_data)

    def _finalize(self, url: str, invoice_id: str, headers: Any) -> tuple[str, int, dict[str, str]]:
        """Stripe's answer to finalize: the invoice, now `open` (and `paid` at zero)."""
        base = url.split("/v1/")[0]
        body, status, _ = self._inner.request("get", f"{base}/v1/invoices/{invoice_id}", headers)
        if status != 200:
            return body, status, {}
        invoice = json.loads(body)
        invoice["status"] = "open" if invoice.get("total", 0) > 0 else "paid"
        return json.dumps(invoice), 200, {}

    def request_stream(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        self._inner.close()

    def posts(self, prefix: str) -> list[Sent]:
        return [s for s in self.sent if s.method == "post" and s.path.startswith(prefix)]
