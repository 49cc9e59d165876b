"""The gateway's only way to the database: off the event loop, the way Django does it.

A request never waits on the catalog (keys and the world are cached), but a cache miss
or a background refresh does read it. Those reads run in a worker thread, and like
Django's own request cycle they close a connection that is broken or older than
`CONN_MAX_AGE` before and after, so a thread pool never holds dead or stale ones.

A database that cannot be reached (connection refused, dropped, timed out) becomes
`ServiceUnavailable`: a 503 that says so, never a 500. Other database errors stay
what they are (a bug is a bug).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, close_old_connections

from routing.errors import ServiceUnavailable

P = ParamSpec("P")
R = TypeVar("R")


def off_loop(fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    @wraps(fn)
    def in_thread(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            close_old_connections()
            try:
                return fn(*args, **kwargs)
            finally:
                close_old_connections()
        except (OperationalError, InterfaceError) as exc:
            raise ServiceUnavailable(
                "Tesseract cannot reach its database just now; please retry shortly.",
                retry_after_s=5,
            ) from exc

    return sync_to_async(in_thread, thread_sensitive=False)
