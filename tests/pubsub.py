"""Redis pub/sub in tests, as a busy machine delivers it: late, but in order."""

from __future__ import annotations

import time
from typing import Any


def next_message(pubsub: Any, kind: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """The next message of `kind` ("subscribe", "message") on `pubsub`, skipping others.

    Wait for the "subscribe" confirmation before publishing anything the test expects
    to hear: until Redis has run the SUBSCRIBE, a message is lost.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == kind:
            return message
    raise AssertionError(f"no {kind!r} message within {timeout_s} s")
