"""A real Celery worker killed with SIGKILL in the middle of draining usage loses nothing
and counts nothing twice: the next worker claims what the dead one had read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection

from billing import metering
from billing.models import UsageEvent
from tests.billing.test_usage_metering import record

ROOT = Path(__file__).resolve().parents[2]
RECORDS = 3000
BATCH = 10  # small batches: the kill lands between commits, not after the last


def database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    assert connection.vendor == "postgresql"
    user = db["USER"] or "postgres"
    return f"postgres://{user}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class Workers:
    """Starts real `celery worker` processes on a private queue and usage stream."""

    def __init__(self) -> None:
        self.queue = f"test-{uuid.uuid4().hex}"
        self.stream = f"test:usage:{uuid.uuid4().hex}"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "TESSERACT_USAGE_STREAM": self.stream,
            "SECRET_KEY": settings.SECRET_KEY,
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tesseract_web", "worker", "-Q", self.queue,
             "--pool", "solo", "--without-gossip", "--without-mingle", "--without-heartbeat",
             "--loglevel", "WARNING"],
            env=self.env, cwd=ROOT,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def drain(self, **kwargs: int) -> None:
        from billing.tasks import drain_usage

        drain_usage.apply_async(kwargs={"batch": BATCH, **kwargs}, queue=self.queue)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def workers(transactional_db, monkeypatch) -> Iterator[Workers]:
    w = Workers()
    monkeypatch.setattr(metering, "STREAM", w.stream)
    yield w
    w.stop()
    redis.Redis.from_url(settings.REDIS_URL).delete(w.stream)


def wait_for(predicate, timeout: float = 60.0, step: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(step)


def test_a_worker_killed_mid_drain_loses_nothing_and_counts_nothing_twice(workers, acme):
    client = redis.Redis.from_url(settings.REDIS_URL)
    ids = [uuid.uuid4().hex for _ in range(RECORDS)]
    with client.pipeline(transaction=False) as pipe:
        for request_id in ids:
            pipe.xadd(workers.stream, {b"r": metering.encode(record(acme, request_id))})
        pipe.execute()

    first = workers.start()
    workers.drain()
    wait_for(lambda: UsageEvent.objects.exists())
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    recorded_at_kill = UsageEvent.objects.count()
    assert 0 < recorded_at_kill < RECORDS, "the kill must land mid-drain"

    workers.start()

    def drained() -> bool:  # as beat would, ask again until the stream is empty
        if UsageEvent.objects.count() >= RECORDS:
            return client.xpending(workers.stream, metering.GROUP)["pending"] == 0
        workers.drain(claim_idle_ms=0)  # the dead worker's pending records are claimed
        return False

    wait_for(drained, step=0.5)

    assert UsageEvent.objects.count() == RECORDS
    assert set(UsageEvent.objects.values_list("request_id", flat=True)) == set(ids)
