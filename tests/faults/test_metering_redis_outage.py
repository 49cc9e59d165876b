"""Redis goes away and comes back: no usage is lost, none is doubled, and while usage
cannot be recorded new requests get a 503 that says why, before any backend is called.

A real `redis-server` (AOF, fsync always, as the README asks of production) that the
test starts on a free port, kills with SIGKILL mid-traffic and restarts on the same
data; the real simulator; a real gateway whose usage stream is on that Redis. Requests
run before the crash, across it (streams and whole answers in flight when Redis dies),
during the outage and after the restart. Every request answered 200 must be in the
database exactly once after draining; every other answer must be a 503
`metering_unavailable` with Retry-After, and must not have reached a backend. A whole
answer in flight that was to be admitted once served, with its record
(`Admission.defer`), is served when Redis cannot answer its admission, its record
spooled: a client is never billed for an answer it did not get.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from billing.models import UsageEvent
from routing.gateway import observability
from routing.gateway.app import GatewayApp
from tests.faults.metering_gateway import (
    Site,
    api_key_for_acme,
    chat,
    gateway_app,
    serve_gateway,
    simulator_server,  # noqa: F401 (a fixture)
    site_for,
)
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs redis-server on PATH"
)


class RedisServer:
    """A private redis-server with an append-only file that fsyncs every write."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--protected-mode", "no", "--loglevel", "warning",
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def crash(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def spool_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spool")


@pytest.fixture(scope="module")
def served(redis_server, spool_dir) -> Iterator[tuple[GatewayApp, str]]:
    app = gateway_app(redis_server.url, spool_dir)
    with serve_gateway(app) as url:
        yield app, url


@pytest.fixture
def site(transactional_db, simulator_server, served, redis_server) -> Site:  # noqa: F811
    app, url = served
    return site_for(app, url, simulator_server, time_scale=1.0, redis_url=redis_server.url)


class Tally:
    """What the clients saw: request ids answered 200, and refusals."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.served: list[str] = []
        self.refused = 0

    def call(self, site: Site, key: str, *, stream: bool, max_tokens: int = 8,
             started: threading.Event | None = None) -> int:  # fmt: skip
        # (every prompt the same length, so every request's prompt tokens are the same)
        body = chat(f"count me {time.monotonic_ns():020d}", max_tokens=max_tokens, stream=stream)
        with httpx.stream(
            "POST",
            f"{site.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json=body,
            timeout=60,
        ) as response:
            if response.status_code == 200:
                request_id = response.headers["x-request-id"]
                text = ""
                for chunk in response.iter_text():
                    if started is not None:
                        started.set()
                    text += chunk
                if stream:
                    assert text.rstrip().endswith("data: [DONE]"), text[-300:]
                    assert '"error"' not in text
                else:
                    assert json.loads(text)["usage"]["completion_tokens"] == max_tokens
                with self.lock:
                    self.served.append(request_id)
                return 200
            response.read()
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "metering_unavailable"
            assert "metering" in error["message"]
            assert "127.0.0.1" not in error["message"]  # no internal address
            assert response.headers["retry-after"]
            with self.lock:
                self.refused += 1
            return 503


def deferrals() -> float:
    """Requests this process has admitted (or tried to) only once served."""
    name = "tesseract_gateway_admission_deferrals_total"
    return observability.REGISTRY.get_sample_value(name) or 0.0


def backend_prompt_tokens(site: Site) -> int:
    return sum(d.metrics.prompt_tokens for d in site.simulator.deployments.values())


def test_a_redis_crash_loses_no_usage_doubles_none_and_refuses_new_work_with_a_503(
    site, redis_server, spool_dir, served
):
    app, _ = served
    assert app._gateway is not None  # (`app.gateway` would start its listener here)
    publisher = app._gateway.usage
    key = api_key_for_acme()
    tally = Tally()

    # Before: Redis is up, everything is served.
    tokens_start = backend_prompt_tokens(site)
    with ThreadPoolExecutor(10) as pool:
        before = list(pool.map(lambda i: tally.call(site, key, stream=i % 2 == 0), range(20)))
    assert before == [200] * 20
    prompt_tokens, rest = divmod(backend_prompt_tokens(site) - tokens_start, 20)
    assert rest == 0  # every request's prompt, the same length
    assert prompt_tokens > 0

    # Across the crash: long answers, streamed and whole, are being generated when
    # Redis dies; they finish during the outage and must still be billed.
    in_flight = 10
    started = [threading.Event() for _ in range(in_flight)]
    deferrals_before = deferrals()
    tokens_across = backend_prompt_tokens(site)
    with ThreadPoolExecutor(in_flight) as pool:
        across = [
            pool.submit(
                tally.call,
                site,
                key,
                stream=i % 2 == 0,
                max_tokens=300,
                started=started[i] if i % 2 == 0 else None,
            )
            for i in range(in_flight)
        ]
        for event in started[::2]:
            assert event.wait(30), "a stream did not start"
        # Every request has passed admission (or deferred it) and reached a backend's
        # slot: a crash during a whole answer's admission would be a refusal before
        # service. (A request that has already finished still counted its prompt; one
        # the gateway gave up on and sent elsewhere counted it twice.)
        arrived = in_flight * prompt_tokens
        eventually(lambda: backend_prompt_tokens(site) - tokens_across >= arrived)
        redis_server.crash()
        still_running = sum(not f.done() for f in across)
        results = [f.result() for f in across]
        deferred = deferrals() - deferrals_before
    # Whole answers deferred to be admitted with their record, which Redis could not
    # answer, are served all the same, their records spooled (a client is never billed
    # for an answer it did not get).
    assert results == [200] * in_flight

    # During: usage cannot be recorded; new requests are refused before any backend.
    eventually(lambda: not publisher.available)
    tokens_before = backend_prompt_tokens(site)
    during = [tally.call(site, key, stream=i % 2 == 0) for i in range(20)]
    assert during == [503] * 20
    assert backend_prompt_tokens(site) == tokens_before  # no backend was called
    assert any(p.stat().st_size for p in spool_dir.iterdir())  # the spool holds the served

    # After: Redis restarts on its data; the spool is replayed; service resumes.
    redis_server.start()
    eventually(lambda: publisher.available)
    assert all(p.stat().st_size == 0 for p in spool_dir.iterdir())
    with ThreadPoolExecutor(10) as pool:
        after = list(pool.map(lambda i: tally.call(site, key, stream=i % 2 == 0), range(20)))
    assert after == [200] * 20

    events = site.drain()
    recorded = [e.request_id for e in events]
    lost = set(tally.served) - set(recorded)
    doubled = len(recorded) - len(set(recorded))
    extra = set(recorded) - set(tally.served)
    print(  # the numbers for the record (pytest -s)
        f"{still_running} of {in_flight} still running at the crash, {deferred:.0f} deferred; "
        f"served {len(tally.served)}, refused with 503 {tally.refused}, "
        f"usage rows {len(recorded)}, lost {len(lost)}, doubled {doubled}, unexpected {len(extra)}"
    )
    assert len(tally.served) == 20 + in_flight + 20
    assert tally.refused == 20
    assert not lost
    assert not doubled
    assert not extra
    assert UsageEvent.objects.filter(status="ok").count() == len(tally.served)


def test_a_whole_answer_redis_dies_under_before_its_admission_is_served_and_billed_once(
    site, redis_server, served
):
    app, _ = served
    assert app._gateway is not None
    publisher = app._gateway.usage
    eventually(lambda: publisher.available)
    key = api_key_for_acme()
    tally = Tally()
    assert tally.call(site, key, stream=False) == 200  # the key is heard of, with room
    deferred_before = deferrals()
    tokens = backend_prompt_tokens(site)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(tally.call, site, key, stream=False, max_tokens=300)
        eventually(lambda: backend_prompt_tokens(site) > tokens)  # at its backend
        redis_server.crash()
        assert answer.result() == 200  # served, though nothing could admit it
    assert deferrals() == deferred_before + 1  # alone, with room: deferred
    eventually(lambda: not publisher.available)
    redis_server.start()
    eventually(lambda: publisher.available)  # the spool is replayed
    recorded = [e.request_id for e in site.drain()]
    assert sorted(recorded) == sorted(tally.served)  # both, each once
