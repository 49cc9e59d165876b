"""Resolve API keys on the hot path without a database query per request.

Each process keeps the keys it has seen in memory. A change to a key (revocation,
creation) is published on a Redis channel; a listener thread in every process
drops the entry within milliseconds, so a revoked key stops working everywhere in
well under a second. Entries also expire after `TESSERACT_KEY_CACHE_TTL_S`, the
backstop if a message is lost; a reconnecting listener clears the whole cache,
since it may have missed messages while away.

When the database cannot be read, a key seen before keeps working on what was last
read (a revocation still reaches the cache through Redis and removes it): the entry
is trusted for `STALE_RETRY_S` more and the database asked again after that. A key
never seen cannot be checked: the loader's error goes to the caller.

Exceptions: `KeyRejected` (with a `reason`: malformed, unknown, revoked, expired).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from accounts import keys, redis_client

logger = logging.getLogger(__name__)

CHANNEL = "tesseract:apikeys"
NEGATIVE_TTL_S = 5.0
#: While the database is unreachable, how long an expired entry is trusted again.
STALE_RETRY_S = 5.0


class KeyRejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ResolvedKey:
    """What the gateway needs to know about a key: plain data, safe to share."""

    id: int
    org_id: int
    org_slug: str
    lookup: str
    digest: str
    scopes: frozenset[str]
    expires_at: datetime | None
    revoked: bool
    default_regions: tuple[str, ...]
    default_compliance: tuple[str, ...]
    default_max_latency_ms: int | None
    default_max_ttft_ms: int | None
    #: What admission checks (rate limits, budgets, suspension): filled by the apps
    #: above accounts through `LOAD_HOOKS` (billing: `billing.limits.Limits`).
    limits: Any = None


Loader = Callable[[str], ResolvedKey | None]


#: Called on every key loaded from the database, to attach what apps above accounts
#: need per request (billing registers its limits in `ready()`): the key cache stays
#: the one place a key resolves, and it still knows nothing of billing.
LOAD_HOOKS: list[Callable[[ResolvedKey], ResolvedKey]] = []


def load_from_db(lookup: str) -> ResolvedKey | None:
    from accounts.models import ApiKey

    row = ApiKey.objects.select_related("org").filter(lookup=lookup).first()
    if row is None:
        return None
    key = ResolvedKey(
        id=row.pk,
        org_id=row.org_id,
        org_slug=row.org.slug,
        lookup=row.lookup,
        digest=row.digest,
        scopes=frozenset(row.scopes),
        expires_at=row.expires_at,
        revoked=row.revoked_at is not None,
        default_regions=tuple(row.default_regions),
        default_compliance=tuple(row.default_compliance),
        default_max_latency_ms=row.default_max_latency_ms,
        default_max_ttft_ms=row.default_max_ttft_ms,
    )
    for hook in LOAD_HOOKS:
        key = hook(key)
    return key


class KeyCache:
    def __init__(
        self,
        loader: Loader = load_from_db,
        *,
        ttl_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loader = loader
        self._ttl_s = ttl_s if ttl_s is not None else float(settings.TESSERACT_KEY_CACHE_TTL_S)
        self._clock = clock
        self._entries: dict[str, tuple[ResolvedKey | None, float]] = {}
        self._lock = threading.Lock()

    def resolve(self, plaintext: str) -> ResolvedKey:
        """The key's data, or `KeyRejected`. Queries the database only on a cache miss."""
        key = self.resolve_cached(plaintext)
        if key is not None:
            return key
        lookup = keys.parse_lookup(plaintext)
        assert lookup is not None  # resolve_cached rejected malformed keys
        try:
            loaded = self._loader(lookup)
        except DatabaseError:
            stale = self._entries.get(lookup)
            if stale is None:
                raise
            logger.warning("database unreachable; trusting the cached API key %s", lookup)
            with self._lock:
                self._entries[lookup] = (stale[0], self._clock() + STALE_RETRY_S)
            return self._check(plaintext, stale[0])
        ttl = self._ttl_s if loaded is not None else min(self._ttl_s, NEGATIVE_TTL_S)
        with self._lock:
            self._entries[lookup] = (loaded, self._clock() + ttl)
        return self._check(plaintext, loaded)

    def resolve_cached(self, plaintext: str) -> ResolvedKey | None:
        """Like `resolve`, from memory only: None when the database must be asked.

        Safe to call on an event loop: it never does I/O.
        """
        lookup = keys.parse_lookup(plaintext)
        if lookup is None:
            raise KeyRejected("malformed")
        cached = self._entries.get(lookup)
        if cached is None or cached[1] <= self._clock():
            return None
        return self._check(plaintext, cached[0])

    @staticmethod
    def _check(plaintext: str, key: ResolvedKey | None) -> ResolvedKey:
        if key is None or not keys.matches(plaintext, key.digest, settings.API_KEY_PEPPER):
            raise KeyRejected("unknown")
        if key.revoked:
            raise KeyRejected("revoked")
        if key.expires_at is not None and key.expires_at <= timezone.now():
            raise KeyRejected("expired")
        return key

    def invalidate(self, lookup: str) -> None:
        with self._lock:
            self._entries.pop(lookup, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class Listener(threading.Thread):
    """Drops keys from a cache as changes arrive on the Redis channel."""

    def __init__(self, cache: KeyCache, redis_url: str) -> None:
        super().__init__(name="apikey-listener", daemon=True)
        self.cache = cache
        self.redis_url = redis_url
        self.subscribed = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        backoff = 0.1
        while not self._halt.is_set():
            try:
                client = redis_client.connect(self.redis_url, socket_keepalive=True)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANNEL)
                self.cache.clear()  # we may have missed changes while away
                self.subscribed.set()
                backoff = 0.1
                while not self._halt.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message["type"] == "message":
                        self.cache.invalidate(message["data"].decode())
                pubsub.close()
            except Exception:
                self.subscribed.clear()
                if self._halt.is_set():
                    return
                logger.warning("API key listener lost Redis; retrying in %.1fs", backoff)
                self._halt.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def stop(self) -> None:
        self._halt.set()


_default_cache: KeyCache | None = None
_listener: Listener | None = None
_start_lock = threading.Lock()


def default_cache() -> KeyCache:
    """The process-wide cache, with its listener started on first use."""
    global _default_cache, _listener
    if _default_cache is None or _listener is None or not _listener.is_alive():
        with _start_lock:
            if _default_cache is None:
                _default_cache = KeyCache()
            if _listener is None or not _listener.is_alive():
                _listener = Listener(_default_cache, settings.REDIS_URL)
                _listener.start()
                atexit.register(_listener.stop)  # before an embedded Redis goes away
    return _default_cache


def publish_change(lookup: str) -> None:
    """Tell every process that this key changed. Also applied locally right away."""
    import redis

    if _default_cache is not None:
        _default_cache.invalidate(lookup)
    try:
        redis_client.connect(settings.REDIS_URL).publish(CHANNEL, lookup)
    except redis.RedisError:
        logger.exception(
            "could not publish API key change for %s; other processes will see it within %ss",
            lookup,
            settings.TESSERACT_KEY_CACHE_TTL_S,
        )
