"""`make run`: everything Tesseract needs, in the foreground, stopped by Ctrl-C.

Migrates, loads the demo world and demo accounts, then starts the backend simulator
(every demo deployment, labelled as simulated), the ASGI server (HTTP and WebSocket),
a Celery worker and Celery beat as child processes that share this process's Redis
(the embedded one unless REDIS_URL is set). Ctrl-C or SIGTERM
stops the children, then the embedded Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tesseract_web.settings")

CHILD_STOP_TIMEOUT_S = 10


def _children(host: str, port: int, var_dir: str) -> dict[str, list[str]]:
    from urllib.parse import urlsplit

    from django.conf import settings

    py = sys.executable
    simulator = urlsplit(settings.TESSERACT_SIMULATOR_URL)
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
        "web": [
            py,
            "-m",
            "uvicorn",
            "tesseract_web.asgi:application",
            "--host",
            host,
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
        ],
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


def main() -> int:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from accounts.demo import demo_accounts_ensure

    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))

    call_command("migrate", interactive=False, verbosity=0)
    call_command("load_demo_world")
    call_command("collectstatic", interactive=False, verbosity=0)
    logins = demo_accounts_ensure()

    procs: dict[str, subprocess.Popen[bytes]] = {}
    for name, cmd in _children(host, port, str(settings.VAR_DIR)).items():
        procs[name] = subprocess.Popen(cmd, env=os.environ.copy())  # noqa: S603

    url = f"http://{host}:{port}"
    database = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    billing = "Stripe" if settings.STRIPE_SECRET_KEY else "local-only (no STRIPE_SECRET_KEY)"
    print(
        f"""
  Tesseract is running: simulated global mesh, {database}, Redis at {settings.REDIS_URL}

    Dashboard   {url}/
                developer {logins.developer_email} / {logins.password}
    Operations  {url}/admin/
                operator  {logins.operator_email} / {logins.password} (2FA set-up at first sign-in)
    Health      {url}/health
    Inference   {url}/v1  (OpenAI-compatible)
    Backends    simulated at {settings.TESSERACT_SIMULATOR_URL}
    Billing     {billing}: invoices at {url}/orgs/<slug>/invoices/
    API key     {logins.api_key}
                (org "{logins.org.name}"; shown once)

  Ctrl-C stops everything.
""",
        flush=True,
    )

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    while not stopping:
        for name, proc in procs.items():
            if proc.poll() is not None:
                print(f"{name} exited with {proc.returncode}; stopping.", file=sys.stderr)
                stopping, exit_code = True, 1
        time.sleep(0.2)

    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + CHILD_STOP_TIMEOUT_S
    for proc in procs.values():
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
    print("Tesseract stopped.")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
