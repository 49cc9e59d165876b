"""The embedded Redis of `make run` lives exactly as long as the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import redis

STARTER = (
    "import sys\n"
    "from tesseract_web import embedded_redis\n"
    "print(embedded_redis.start(), flush=True)\n"
    "sys.stdin.read()\n"  # until told to stop
)


def started_redis() -> tuple[subprocess.Popen[str], redis.Redis]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env=env,
    )  # fmt: skip
    assert starter.stdout is not None
    url = starter.stdout.readline().strip()
    client = redis.Redis.from_url(url, socket_timeout=2)
    assert client.ping()
    return starter, client


def gone(client: redis.Redis, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            client.ping()
        except redis.ConnectionError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize(
    "ending",
    [
        "exit",
        pytest.param(
            "SIGKILL",
            marks=pytest.mark.skipif(
                sys.platform != "linux", reason="the parent-death signal is Linux's"
            ),
        ),
    ],
)
def test_the_embedded_redis_dies_with_its_starter_however_it_ends(ending):
    starter, client = started_redis()
    if ending == "exit":
        assert starter.stdin is not None
        starter.stdin.close()
    else:
        starter.send_signal(signal.SIGKILL)
    starter.wait(30)
    assert gone(client), "the embedded redis-server outlived the process that started it"
