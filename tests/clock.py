"""A clock the test moves by hand: `clock.now += 2.5` (a `time.monotonic` stand-in)."""

from __future__ import annotations


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
