"""Waiting on a condition in tests, never on how fast this machine happens to be."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Generous: a shared machine with a CPU hog beside the suite may take seconds over
#: what takes milliseconds on an idle one. A condition that holds returns at once.
PATIENCE_S = 60.0


def eventually(
    predicate: Callable[[], T], timeout_s: float = PATIENCE_S, interval_s: float = 0.01
) -> T:
    """`predicate()`'s first truthy value, asked every `interval_s`; fails after
    `timeout_s`."""
    started = time.monotonic()
    while not (got := predicate()):
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"did not happen within {timeout_s:g} s")
        time.sleep(interval_s)
    return got
