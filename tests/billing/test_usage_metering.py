"""One completed request = exactly one usage event, even when processes die."""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal

import pytest
import redis
import redis.asyncio
from django.conf import settings

from billing import metering
from billing.models import UsageDeadLetter, UsageEvent
from billing.services import usage_events_drain


@pytest.fixture
def stream(monkeypatch):
    name = f"test:usage:{uuid.uuid4().hex}"
    monkeypatch.setattr(metering, "STREAM", name)
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.delete(name)


def record(org, request_id: str | None = None, **changes) -> metering.UsageRecord:
    fields = {
        "request_id": request_id or uuid.uuid4().hex,
        "org_id": org.pk,
        "api_key_id": None,
        "created_at": time.time(),
        "endpoint": "chat.completions",
        "model": "llama-3.1-8b-instruct",
        "served_model": "llama-3.1-8b-instruct",
        "deployment": "westeurope-tesseract-nvidia-h100--llama-3.1-8b-instruct",
        "region": "westeurope",
        "cluster": "westeurope-tesseract-nvidia-h100",
        "chip": "nvidia-h100",
        "stream": False,
        "status": "ok",
        "input_tokens": 120,
        "output_tokens": 30,
        "usage_source": "upstream",
        "cost_usd": "0.000015",
    }
    return metering.UsageRecord(**{**fields, **changes})


def publish(*records: metering.UsageRecord) -> None:
    async def go() -> None:
        client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        for r in records:
            await metering.publish(client, r)
        await client.aclose()

    asyncio.run(go())


def test_a_published_record_becomes_one_usage_event(acme, stream):
    publish(record(acme, "req-1", input_tokens=7, output_tokens=3))
    assert usage_events_drain(client=stream) == 1
    event = UsageEvent.objects.get(request_id="req-1")
    assert (event.input_tokens, event.output_tokens) == (7, 3)
    assert event.cost_usd == Decimal("0.000015")
    assert event.org == acme


def test_a_replayed_record_changes_nothing(acme, stream):
    publish(record(acme, "req-1"), record(acme, "req-1", output_tokens=999))
    usage_events_drain(client=stream)
    usage_events_drain(client=stream)
    assert UsageEvent.objects.filter(request_id="req-1").count() == 1
    assert UsageEvent.objects.get(request_id="req-1").output_tokens == 30


def test_draining_twice_records_each_request_once(acme, stream):
    publish(*(record(acme) for _ in range(25)))
    assert usage_events_drain(client=stream, batch=10) == 25
    assert usage_events_drain(client=stream, batch=10) == 0
    assert UsageEvent.objects.count() == 25


def test_records_read_by_a_worker_that_died_are_claimed_by_the_next(acme, stream):
    publish(*(record(acme) for _ in range(5)))
    usage_events_drain(client=stream, consumer="first", batch=1, max_batches=0)  # makes the group
    # A worker reads the records, then dies before committing or acknowledging them.
    stream.xreadgroup(metering.GROUP, "doomed", {metering.STREAM: ">"}, count=5)
    assert UsageEvent.objects.count() == 0

    assert usage_events_drain(client=stream, consumer="survivor", claim_idle_ms=0) == 5
    assert UsageEvent.objects.count() == 5
    assert stream.xpending(metering.STREAM, metering.GROUP)["pending"] == 0


def test_a_worker_that_died_after_committing_but_before_acknowledging_counts_once(acme, stream):
    publish(record(acme, "req-committed"))
    usage_events_drain(client=stream, consumer="first", max_batches=0)
    entries = stream.xreadgroup(metering.GROUP, "doomed", {metering.STREAM: ">"}, count=1)
    from billing.services import usage_events_record

    usage_events_record([metering.decode(entries[0][1][0][1][b"r"])])  # committed, never acked
    usage_events_drain(client=stream, consumer="survivor", claim_idle_ms=0)
    assert UsageEvent.objects.filter(request_id="req-committed").count() == 1
    assert stream.xpending(metering.STREAM, metering.GROUP)["pending"] == 0


def test_an_unreadable_record_goes_to_the_dead_letter_table_and_does_not_block_the_rest(
    acme, stream
):
    message_id = stream.xadd(metering.STREAM, {b"r": b"{not json"}).decode()
    publish(record(acme, "req-good"))
    assert usage_events_drain(client=stream) == 1
    assert UsageEvent.objects.filter(request_id="req-good").exists()
    dead = UsageDeadLetter.objects.get()
    assert (dead.message_id, bytes(dead.raw)) == (message_id, b"{not json")
    assert dead.reason.startswith("undecodable")
    assert stream.xpending(metering.STREAM, metering.GROUP)["pending"] == 0


def test_usage_is_scoped_to_its_tenant(acme, globex, stream):
    publish(record(acme), record(globex), record(globex))
    usage_events_drain(client=stream)
    assert UsageEvent.objects.for_org(acme).count() == 1
    assert UsageEvent.objects.for_org(globex).count() == 2


# -- trimming: Redis keeps only what is not yet stored ---------------------------------


def test_stored_records_are_trimmed_from_the_stream(acme, stream):
    publish(*(record(acme) for _ in range(30)))
    assert stream.xlen(metering.STREAM) == 30
    assert usage_events_drain(client=stream, batch=7) == 30
    assert stream.xlen(metering.STREAM) == 0
    assert UsageEvent.objects.count() == 30


def test_records_another_consumer_holds_unstored_are_not_trimmed(acme, stream):
    publish(*(record(acme) for _ in range(5)))
    usage_events_drain(client=stream)
    held = [record(acme) for _ in range(3)]
    publish(*held)
    # Another worker reads these and has not stored them yet (or died doing so).
    stream.xreadgroup(metering.GROUP, "busy", {metering.STREAM: ">"}, count=3)
    publish(*(record(acme) for _ in range(4)))

    assert usage_events_drain(client=stream, consumer="other", claim_idle_ms=60_000) == 4
    remaining = stream.xrange(metering.STREAM)
    assert [metering.decode(f[b"r"]).request_id for _, f in remaining[:3]] == [
        r.request_id for r in held
    ]
    assert stream.xpending(metering.STREAM, metering.GROUP)["pending"] == 3

    assert usage_events_drain(client=stream, consumer="other", claim_idle_ms=0) == 3
    assert stream.xlen(metering.STREAM) == 0
    assert UsageEvent.objects.count() == 12


def test_records_not_yet_read_by_every_group_are_not_trimmed(acme, stream):
    publish(*(record(acme) for _ in range(4)))
    stream.xgroup_create(metering.STREAM, "audit", id="0")  # another reader, behind
    usage_events_drain(client=stream)
    assert stream.xlen(metering.STREAM) == 4
    stream.xreadgroup("audit", "a", {metering.STREAM: ">"}, count=4)
    assert metering.trim(stream) == 0  # read, but not acknowledged by the audit group
    stream.xack(metering.STREAM, "audit", *(i for i, _ in stream.xrange(metering.STREAM)))
    assert metering.trim(stream) == 4
