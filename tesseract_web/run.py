"""`make run`: everything Tesseract needs, in the foreground, stopped by Ctrl-C.

Migrates, loads the demo world and demo accounts, then starts as child processes:
the backend simulator (every demo deployment, labelled as simulated), the gateway
(`tesseract_web.asgi:gateway`: `/v1`, `/metrics`, the WebSocket, on `PORT`), the web
(`tesseract_web.asgi:web`: dashboard, console, admin, on `WEB_PORT`), a Celery worker
and Celery beat, all sharing this process's Redis (the embedded one unless
`REDIS_URL` is set). The gateway and the web are separate processes so that a storm
of sign-ins (password hashing) cannot slow inference.

A child that dies is restarted after a back-off that doubles (1 s, 2 s, … 30 s) and
resets once the child has stayed up for a while; each restart is logged, and a child
that crashes again and again in a short window is reported loudly. Ctrl-C or SIGTERM
stops the children, stores the usage they metered after the last drain, then stops
the embedded Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tesseract_web.settings")

CHILD_STOP_TIMEOUT_S = 10
LOGINS_FILE = "make-run.txt"


# --------------------------------------------------------------------------- supervisor


@dataclass
class Child:
    name: str
    cmd: Sequence[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None  # when a crashed child is due to start again
    backoff_s: float = 0.0
    crashes: deque[float] = field(default_factory=deque)


class Supervisor:
    """Starts children, restarts the ones that die, stops them all on request.

    `poll()` does one round of bookkeeping; `run()` polls until `stop_requested`.
    The clock and the output are injectable so the tests can drive it quickly.
    """

    def __init__(
        self,
        commands: Mapping[str, Sequence[str]],
        *,
        env: Mapping[str, str] | None = None,
        out: TextIO = sys.stderr,
        clock: Callable[[], float] = time.monotonic,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 60.0,
        crash_window_s: float = 60.0,
        crash_alarm: int = 5,
    ) -> None:
        self.children = {name: Child(name, list(cmd)) for name, cmd in commands.items()}
        self.env = dict(os.environ if env is None else env)
        self.out = out
        self.clock = clock
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self.crash_window_s = crash_window_s
        self.crash_alarm = crash_alarm
        self.stop_requested = False

    def say(self, message: str) -> None:
        print(f"[make run] {message}", file=self.out, flush=True)

    def _start(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.cmd, env=self.env)  # noqa: S603
        child.started_at = self.clock()
        child.restart_at = None

    def start_all(self) -> None:
        for child in self.children.values():
            self._start(child)

    def poll(self) -> None:
        now = self.clock()
        for child in self.children.values():
            if child.restart_at is not None:
                if now >= child.restart_at and not self.stop_requested:
                    self.say(f"restarting {child.name}")
                    self._start(child)
                continue
            assert child.proc is not None
            code = child.proc.poll()
            if code is None or self.stop_requested:
                continue
            self._crashed(child, code, now)

    def _crashed(self, child: Child, code: int, now: float) -> None:
        if now - child.started_at >= self.stable_after_s:
            child.backoff_s = 0.0  # it ran fine for a while: start the back-off afresh
        child.backoff_s = min(
            self.backoff_max_s, child.backoff_s * 2 if child.backoff_s else self.backoff_initial_s
        )
        child.restart_at = now + child.backoff_s
        child.crashes.append(now)
        while child.crashes and child.crashes[0] < now - self.crash_window_s:
            child.crashes.popleft()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        self.say(f"{child.name} {how}; restarting it in {child.backoff_s:g} s")
        if len(child.crashes) >= self.crash_alarm:
            bar = "!" * 72
            self.say(
                f"\n{bar}\n  {child.name.upper()} KEEPS CRASHING: {len(child.crashes)} times in "
                f"the last {self.crash_window_s:g} s.\n  Its own output above says why. "
                f"Still retrying, every {child.backoff_s:g} s at most.\n{bar}"
            )

    def run(self, interval_s: float = 0.2) -> None:
        while not self.stop_requested:
            self.poll()
            time.sleep(interval_s)

    def stop(self, timeout_s: float = CHILD_STOP_TIMEOUT_S) -> None:
        self.stop_requested = True
        stop_processes([c.proc for c in self.children.values() if c.proc], timeout_s)


def stop_processes(procs: Iterable[subprocess.Popen[Any]], timeout_s: float) -> None:
    """SIGTERM to each still running, then, for one that has not ended `timeout_s` after,
    SIGKILL; each is reaped (for `make run`, the bench and the tests' servers)."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in running:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- make run


def _children(host: str, port: int, web_port: int, var_dir: str) -> dict[str, list[str]]:
    from urllib.parse import urlsplit

    from django.conf import settings

    py = sys.executable
    simulator = urlsplit(settings.TESSERACT_SIMULATOR_URL)

    def uvicorn(app: str, listen: int) -> list[str]:
        return [
            py, "-m", "uvicorn", app, "--host", host, "--port", str(listen),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
        ]  # fmt: skip

    return {
        "simulator": [
            py,
            "-m",
            "backends.simulator",
            "--host",
            simulator.hostname or "127.0.0.1",
            "--port",
            str(simulator.port or 8100),
            "--gateway-region",
            settings.TESSERACT_GATEWAY_REGION,
        ],
        "gateway": uvicorn("tesseract_web.asgi:gateway", port),
        "web": uvicorn("tesseract_web.asgi:web", web_port),
        # INFO for our own loggers; Celery's per-task lines are kept at
        # TESSERACT_LOG_LEVEL by the settings' LOGGING. No -Q: one worker reads every
        # queue (tesseract_web/celery.py); production runs one per queue (deploy/).
        "worker": [
            py,
            "-m",
            "celery",
            "-A",
            "tesseract_web",
            "worker",
            "--loglevel",
            "INFO",
            "--concurrency",
            "2",
            "--hostname",
            "worker@%h",
        ],
        "beat": [
            py,
            "-m",
            "celery",
            "-A",
            "tesseract_web",
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            os.path.join(var_dir, "celerybeat-schedule"),
        ],
    }


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (0600), whatever was there before."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def main() -> int:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    web_port = int(os.environ.get("WEB_PORT", str(port + 1)))
    gateway_url, web_url = f"http://{host}:{port}", f"http://{host}:{web_port}"
    # Each process points at the other: the gateway redirects browsers to the web,
    # the web tells API clients where the gateway is.
    os.environ.setdefault("TESSERACT_WEB_URL", web_url)
    os.environ.setdefault("TESSERACT_GATEWAY_URL", gateway_url)

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from accounts.demo import demo_accounts_ensure

    call_command("migrate", interactive=False, verbosity=0)
    call_command("load_demo_world")
    call_command("collectstatic", interactive=False, verbosity=0)
    logins = demo_accounts_ensure()
    sealing = (
        f"sealed with a LOCAL key generated into {Path(settings.VAR_DIR) / 'secrets.json'} "
        "(no TESSERACT_SEALING_KEYS set; set one in production)"
        if settings.TESSERACT_SEALING_KEYS_GENERATED
        else "sealed with TESSERACT_SEALING_KEYS"
    )

    supervisor = Supervisor(_children(host, port, web_port, str(settings.VAR_DIR)))
    supervisor.start_all()

    database = connection.vendor
    billing = "Stripe" if settings.STRIPE_SECRET_KEY else "local-only (no STRIPE_SECRET_KEY)"
    logins_file = Path(settings.VAR_DIR) / LOGINS_FILE
    details = f"""
    Dashboard   {web_url}/
                developer {logins.developer_email} / {logins.password}
    Operations  {web_url}/admin/  and the console at {web_url}/console/
                operator  {logins.operator_email} / {logins.password} (2FA set-up at first sign-in)
    Inference   {gateway_url}/v1  (OpenAI-compatible; WebSocket ws://{host}:{port}/v1/stream)
    Metrics     {gateway_url}/metrics
    Health      {gateway_url}/health
    Backends    simulated at {settings.TESSERACT_SIMULATOR_URL}
    Providers   credentials {sealing}
    Billing     {billing}: invoices at {web_url}/orgs/<slug>/invoices/
    API key     {logins.api_key}
                (org "{logins.org.name}"; the previous demo key is revoked)
"""
    write_private(logins_file, details.lstrip("\n"))
    print(
        f"""
  Tesseract is running: simulated global mesh, {database}, Redis at {settings.REDIS_URL}
  Gateway (inference) on port {port}, web (dashboard, console, admin) on port {web_port}.
{details}
  The logins and the key are also in {logins_file} (readable by you only).
  Ctrl-C stops everything.
""",
        flush=True,
    )

    def stop(signum: int, frame: object) -> None:
        supervisor.stop_requested = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    supervisor.run()
    # A second Ctrl-C stops at once, whatever is left to do.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    supervisor.stop()
    usage_left_over_store()
    print("Tesseract stopped.")
    return 0


def usage_left_over_store() -> None:
    """Store what the gateway metered after the last scheduled drain: the embedded
    Redis keeps nothing on disk and goes with this process. Every child has stopped,
    so records a worker read and never acknowledged are claimed at once. A Redis of
    its own (`REDIS_URL`) keeps them for the next drain if this one cannot reach it.
    A Redis that does not answer within seconds is given up on, never waited for."""
    from django.conf import settings
    from django.db import close_old_connections

    from accounts import redis_client
    from billing.services import usage_events_drain

    close_old_connections()  # the connection opened at start-up may be long stale
    try:
        client = redis_client.connect(
            settings.REDIS_URL, socket_connect_timeout=2.0, socket_timeout=10.0
        )
        stored = 0
        while moved := usage_events_drain(client=client, claim_idle_ms=0):
            stored += moved
    except Exception as exc:
        print(f"Usage left in Redis was not stored: {exc!r}", file=sys.stderr, flush=True)
        return
    if stored:
        print(f"Stored the last {stored} usage records.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
