"""Scanning what a test captured — log lines, answers, mails — for a credential.

Every test that hands Tesseract a provider's key ends by asking `Captured` whether the
key, or the header that carried it, shows up anywhere it could leak.
"""

from __future__ import annotations

import json

import httpx
import pytest
from django.core import mail


class Captured:
    """Everything a test saw, to be scanned for `secret` at the end."""

    def __init__(self, caplog: pytest.LogCaptureFixture, secret: str) -> None:
        self.caplog = caplog
        self.secret = secret
        self.texts: list[str] = []

    def keep(self, response: httpx.Response) -> httpx.Response:
        self.texts.append(json.dumps(dict(response.headers)) + response.text)
        return response

    def assert_no_secret(self, *more: str) -> None:
        """Neither the secret nor `Bearer <secret>` in the logs (their arguments and
        tracebacks too), the kept answers, the mails sent, or `more`."""
        everything = [
            self.caplog.text,
            *more,
            *self.texts,
            *(m.subject + m.body for m in mail.outbox),
        ]
        everything += [repr(r.args) + str(r.exc_info) for r in self.caplog.records]
        assert not [t for t in everything if self.secret in t], "the credential leaked"
        assert not [t for t in everything if f"Bearer {self.secret}" in t]
