"""Real Celery workers (and beat) and gateways as child processes, sharing the test
database and Redis.

Each `Workers` has its own queue (`CELERY_QUEUE`) and usage stream, so nothing else
on the machine — a `make run` beside the tests — takes its tasks, and its gateways'
usage reaches its workers' drain.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from django.conf import settings
from django.db import connection

from tesseract_web.celery import environment_queues
from tesseract_web.run import stop_processes

ROOT = Path(__file__).resolve().parents[1]


def database_url() -> str:
    """The test database, as a URL a child process can open."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    assert connection.vendor == "postgresql"
    user = db["USER"] or "postgres"
    return f"postgres://{user}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class Workers:
    def __init__(self, **env: str) -> None:
        self.queue = f"test-{uuid.uuid4().hex}"
        self.stream = f"test:usage:{uuid.uuid4().hex}"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "CELERY_QUEUE": self.queue,
            "TESSERACT_USAGE_STREAM": self.stream,
            "SECRET_KEY": settings.SECRET_KEY,
            **env,
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, *, beat: bool = False, queues: list[str] | None = None, **env: str
    ) -> subprocess.Popen[bytes]:
        """A worker on this environment's queues (or `queues`, named after this
        environment's default queue, e.g. `probes.eastus`), with `env` on top of the
        environment's; with `beat`, it also runs the beat schedule."""
        names = [f"{self.queue}.{q}" for q in queues] if queues else environment_queues(self.queue)
        command = [
            sys.executable, "-m", "celery", "-A", "tesseract_web", "worker",
            "-Q", ",".join(names),
            "--pool", "solo", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel", "WARNING",
        ]  # fmt: skip
        if beat:
            schedule = Path(settings.VAR_DIR) / f"beat-{self.queue}"
            command += ["--beat", "--schedule", str(schedule)]
        proc = subprocess.Popen(command, env={**self.env, **env}, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def start_gateway(self, *, timeout_s: float = 180, **env: str) -> str:
        """A gateway process (uvicorn, `tesseract_web.asgi:gateway`, one worker) of this
        environment, with `env` on top; returns its base URL once it answers."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [
            sys.executable, "-m", "uvicorn", "tesseract_web.asgi:gateway",
            "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        proc = subprocess.Popen(command, env={**self.env, **env}, cwd=ROOT)
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code < 500:
                    return url
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway on port {port} did not start")
            time.sleep(0.1)

    def send(self, task: object, **kwargs: object) -> None:
        task.apply_async(kwargs=kwargs, queue=self.queue)  # type: ignore[attr-defined]

    def stop(self) -> None:
        stop_processes(self.procs, timeout_s=10)
