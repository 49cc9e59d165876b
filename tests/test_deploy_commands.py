"""The commands of deploy/compose.yaml start, and their own health checks pass.

No container runs here (no Docker daemon on the development machine or in CI), so each
service's `command` and `healthcheck` are taken from the file and run as local
processes against the test database and Redis: only the ports, the paths under
/var/lib/tesseract and the worker pool sizes are changed. A typo in an entry point, a
queue name or a health check fails here, which no schema would catch.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from subprocess import PIPE, STDOUT

import pytest
import yaml
from django.conf import settings

from tesseract_web.run import stop_processes
from tests.servers import free_port
from tests.workers import database_url

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose.yaml"
STARTED = ("gateway", "web", "worker-health", "worker-placement", "worker-billing", "beat")
#: Generous: on a loaded 2-core machine a worker takes a while to start, and each
#: `celery inspect ping` is a Python start plus a broadcast round trip.
HEALTHY_WITHIN_S = 300


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${NAME:-default}` and `$$`, as `docker compose` reads them."""
    text = text.replace("$$", "\0")
    text = re.sub(
        r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1)) or m.group(2) or "", text
    )
    return text.replace("\0", "$")


def localised(words: list[str], env: dict[str, str], ports: dict[str, str], var: Path) -> list[str]:
    line = interpolate(" \x1f".join(words), env)
    line = line.replace("/var/lib/tesseract", str(var))
    line = line.replace("/tmp/prometheus", str(var / "prom"))  # noqa: S108 (the file's path)
    for port, local in ports.items():
        line = line.replace(f"--port \x1f{port}", f"--port \x1f{local}")
        line = line.replace(f"localhost:{port}/", f"localhost:{local}/")
    line = re.sub(r"--concurrency \x1f\d+", "--concurrency \x1f1", line)
    line = line.replace("0.0.0.0", "127.0.0.1")  # noqa: S104 (loopback, not all interfaces)
    out = [word.strip() for word in line.split("\x1f")]
    return [sys.executable if word == "python" else word for word in out]


@pytest.fixture
def services(transactional_db, tmp_path):
    compose = yaml.safe_load(COMPOSE.read_text())
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": settings.SECRET_KEY,
        "CELERY_QUEUE": f"test-{uuid.uuid4().hex}",
        "TESSERACT_USAGE_STREAM": f"test:usage:{uuid.uuid4().hex}",
        "GATEWAY_WORKERS": "2",
        "HOSTNAME": socket.gethostname(),
        # The image's `python` is the one with Tesseract installed: so is ours, for the
        # shell health checks (`sh -c "python -m celery …"`), whatever PATH ran the tests.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    ports = {"8000": str(free_port()), "8001": str(free_port())}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    checks: dict[str, list[str]] = {}
    try:
        for name in STARTED:
            service = compose["services"][name]
            var = tmp_path / name
            (var / "beat").mkdir(parents=True)
            (var / "prom").mkdir()
            own = {**env, "TESSERACT_VAR_DIR": str(var)}
            for key, value in service.get("environment", {}).items():
                if key not in ("TESSERACT_ENV", "DATABASE_URL", "REDIS_URL"):
                    own[key] = localised([str(value)], env, ports, var)[0]
            command = localised(service["command"], env, ports, var)
            procs[name] = subprocess.Popen(command, env=own, cwd=ROOT)
            test = service["healthcheck"]["test"]
            shell = test[0] == "CMD-SHELL"
            check = localised(test[1:], env, ports, var)
            checks[name] = ["sh", "-c", " ".join(check)] if shell else check
        yield procs, checks, env
    finally:
        stop_processes(procs.values(), timeout_s=20)


def test_every_service_of_compose_starts_and_passes_its_own_health_check(services):
    procs, checks, env = services
    pending = dict(checks)
    last: dict[str, bytes] = {}
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while pending and time.monotonic() < deadline:
        for name in pending:
            assert procs[name].poll() is None, f"{name} exited with {procs[name].returncode}"
        # As compose does, every service's check runs on its own, side by side: one slow
        # check (a ping that waits for its timeout) does not hold up the others.
        running = {
            name: subprocess.Popen(check, env=env, cwd=ROOT, stdout=PIPE, stderr=STDOUT)
            for name, check in pending.items()
        }
        for name, proc in running.items():
            last[name] = proc.communicate()[0][-300:]
            if proc.returncode == 0:
                del pending[name]
        time.sleep(1)
    assert pending == {}, f"never healthy: { ({n: last.get(n) for n in sorted(pending)}) }"

    # Each worker reads the queue of its concern (the placement worker the default too,
    # the health worker its gateway region's probes).
    host, queue = env["HOSTNAME"], env["CELERY_QUEUE"]
    names = ",".join(f"{concern}@{host}" for concern in ("health", "placement", "billing"))
    asked = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tesseract_web", "inspect", "active_queues",
         "--json", "--timeout", "20", "-d", names],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    read = {
        worker: sorted(q["name"] for q in qs) for worker, qs in json.loads(asked.stdout).items()
    }
    assert read == {
        f"health@{host}": [f"{queue}.health", f"{queue}.probes.westeurope"],
        f"placement@{host}": [queue, f"{queue}.placement"],
        f"billing@{host}": [f"{queue}.billing"],
    }
