"""Poisoned usage records cannot stop the drain: the rest of everyone's usage lands.

The records are put straight into the stream (XADD), as a gateway that validated less
than it should would put them, beside 20 good records of other tenants. The database
rejects each poison on its own (PostgreSQL: a string longer than its column, a NUL in
a string or inside a JSON value; both databases: an organization that does not exist,
a negative count); some cannot even be decoded. Every good record must land once, the
poison must be kept in the dead-letter table and acknowledged, and operators told.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import services
from accounts.models import Organization, User
from accounts.services import backup_codes_regenerate
from billing import metering
from billing.models import UsageDeadLetter, UsageEvent
from billing.services import usage_events_drain
from tests.billing.test_usage_metering import record
from tests.conftest import PASSWORD, login


@pytest.fixture
def stream(monkeypatch) -> Iterator[redis.Redis]:
    name = f"test:usage:{uuid.uuid4().hex}"
    monkeypatch.setattr(metering, "STREAM", name)
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.delete(name)


@pytest.fixture
def initech(transactional_db) -> Organization:
    owner = User.objects.create_user("dana@example.com", PASSWORD, name="Dana")
    return services.organization_create(name="Initech", owner=owner)


def xadd(client: redis.Redis, data: bytes) -> str:
    return client.xadd(metering.STREAM, {b"r": data}).decode()


def good_records(client: redis.Redis, *orgs: Organization, n: int = 20) -> set[str]:
    ids = set()
    for i in range(n):
        r = record(orgs[i % len(orgs)], f"good-{i}-{uuid.uuid4().hex[:8]}")
        xadd(client, metering.encode(r))
        ids.add(r.request_id)
    return ids


def raw_record(org: Organization, request_id: str, **changes: Any) -> bytes:
    """A record as JSON, with changes msgspec would encode the same way (or would not)."""
    import json

    fields = metering.msgspec.structs.asdict(record(org, request_id))
    fields.update(changes)
    return json.dumps(fields).encode()


POSTGRES_ONLY = "SQLite stores strings of any length and NULs: there is nothing to reject"

POISONS = {
    # name: (changes to a valid record, or raw bytes; needs PostgreSQL to be rejected)
    "model longer than its column": ({"model": "m" * 200}, True),
    "NUL in a string": ({"model": "llama\x00-8b"}, True),
    "NUL inside a JSON value": ({"constraints": {"compliance": ["hipaa\x00"]}}, True),
    "organization that does not exist": ({"org_id": 2**31 - 7}, False),
    "negative token count": ({"output_tokens": -5}, False),
    "cost that is not a number": ({"cost_usd": "lots"}, False),
    "not JSON at all": (b"\xff{not json", False),
    "JSON of the wrong shape": (b'{"request_id": 7}', False),
}


@pytest.mark.parametrize("poison", POISONS, ids=list(POISONS))
def test_a_poisoned_record_goes_to_the_dead_letter_table_and_the_rest_land(
    poison, stream, acme, globex, initech, caplog, mailoutbox, settings
):
    changes, postgres_only = POISONS[poison]
    if postgres_only and connection.vendor != "postgresql":
        pytest.skip(POSTGRES_ONLY)
    settings.ADMINS = [("Ops", "ops@example.com")]
    good = good_records(stream, acme, initech, n=10)
    data = changes if isinstance(changes, bytes) else raw_record(globex, "poison", **changes)
    message_id = xadd(stream, data)
    good |= good_records(stream, initech, acme, n=10)

    with caplog.at_level(logging.ERROR, logger="billing.services"):
        assert usage_events_drain(client=stream) == 20

    assert set(UsageEvent.objects.values_list("request_id", flat=True)) == good
    assert UsageEvent.objects.count() == 20
    [dead] = UsageDeadLetter.objects.all()
    assert dead.message_id == message_id
    assert bytes(dead.raw) == data
    assert dead.reason
    assert dead.stream == metering.STREAM
    if not isinstance(changes, bytes):
        assert (dead.org_id, dead.request_id) == (changes.get("org_id", globex.pk), "poison")
    assert stream.xpending(metering.STREAM, metering.GROUP)["pending"] == 0
    # Operators hear of it: an ERROR log line and a mail to the admins.
    assert any(message_id in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert len(mailoutbox) == 1
    assert message_id in mailoutbox[0].body

    # Draining again changes nothing: no second row, no second dead letter.
    assert usage_events_drain(client=stream, claim_idle_ms=0) == 0
    assert UsageEvent.objects.count() == 20
    assert UsageDeadLetter.objects.count() == 1


def test_many_poisons_in_one_batch_each_go_to_the_dead_letter_table(stream, acme, globex, initech):
    poisons = {k: v for k, v in POISONS.items() if connection.vendor == "postgresql" or not v[1]}
    good, ids = set(), set()
    for n, (changes, _) in enumerate(poisons.values()):
        good |= good_records(stream, acme, initech, n=5)
        data = changes if isinstance(changes, bytes) else raw_record(globex, f"p{n}", **changes)
        ids.add(xadd(stream, data))
    good |= good_records(stream, acme, initech, n=5)

    assert usage_events_drain(client=stream, batch=500) == len(good)
    assert set(UsageEvent.objects.values_list("request_id", flat=True)) == good
    assert set(UsageDeadLetter.objects.values_list("message_id", flat=True)) == ids
    assert stream.xpending(metering.STREAM, metering.GROUP)["pending"] == 0


def test_a_dead_letter_is_readable_in_the_admin(stream, acme, globex, initech):
    ops = User.objects.create_superuser("ops@example.com", PASSWORD)
    TOTPDevice.objects.create(user=ops, confirmed=True)
    client = login(ops)
    client.post("/account/2fa/verify/", {"token": backup_codes_regenerate(user=ops)[0]})
    xadd(stream, b"\xff{not json\x00")
    usage_events_drain(client=stream)
    dead = UsageDeadLetter.objects.get()
    listing = client.get("/admin/billing/usagedeadletter/")
    assert listing.status_code == 200
    assert dead.message_id in listing.content.decode()
    page = client.get(f"/admin/billing/usagedeadletter/{dead.pk}/change/")
    assert page.status_code == 200
    assert "\\xff{not json\\x00" in page.content.decode()
