"""A real Celery worker killed with SIGKILL in the middle of draining usage loses nothing
and counts nothing twice: the next worker claims what the dead one had read."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from billing import metering
from billing.models import UsageEvent
from billing.tasks import drain_usage
from tests.billing.test_usage_metering import record
from tests.waiting import eventually
from tests.workers import Workers

RECORDS = 3000
BATCH = 10  # small batches: the kill lands between commits, not after the last


@pytest.fixture
def workers(transactional_db, monkeypatch) -> Iterator[Workers]:
    w = Workers()
    monkeypatch.setattr(metering, "STREAM", w.stream)
    yield w
    w.stop()
    redis.Redis.from_url(settings.REDIS_URL).delete(w.stream)


def test_a_worker_killed_mid_drain_loses_nothing_and_counts_nothing_twice(workers, acme):
    client = redis.Redis.from_url(settings.REDIS_URL)
    ids = [uuid.uuid4().hex for _ in range(RECORDS)]
    with client.pipeline(transaction=False) as pipe:
        for request_id in ids:
            pipe.xadd(workers.stream, {b"r": metering.encode(record(acme, request_id))})
        pipe.execute()

    first = workers.start()
    workers.send(drain_usage, batch=BATCH)
    eventually(UsageEvent.objects.exists, interval_s=0.005)  # kill it mid-drain
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    recorded_at_kill = UsageEvent.objects.count()
    assert 0 < recorded_at_kill < RECORDS, "the kill must land mid-drain"

    workers.start()

    def drained() -> bool:  # as beat would, ask again until the stream is empty
        if UsageEvent.objects.count() >= RECORDS:
            return client.xpending(workers.stream, metering.GROUP)["pending"] == 0
        # the dead worker's pending records are claimed
        workers.send(drain_usage, batch=BATCH, claim_idle_ms=0)
        return False

    eventually(drained, interval_s=0.5)

    assert UsageEvent.objects.count() == RECORDS
    assert set(UsageEvent.objects.values_list("request_id", flat=True)) == set(ids)
